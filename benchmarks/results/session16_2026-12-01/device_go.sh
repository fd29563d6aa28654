#!/bin/bash
# call 2 (sixteenth session): assemble the model, start run f20 (20M tokens, exploration stops at 25%); once its
# teacher shard exists start f20d (the same + SR-STE decay 0.01), which reuses the shard through the shared
# cache ($SFCOMPILE_CACHE; the shard key hashes the prompt text, not its path). Both outlive this call.
C=/root/cache
cat $C/smol.part0 .carry/train/b/smol.part1 > $C/smol.gguf || exit 1
test "$(stat -c %s $C/smol.gguf)" = 98362432 || { echo "bad gguf size"; exit 1; }
zcat .carry/train/b/corpus.jsonl.gz > $C/corpus.jsonl
rm -rf $C/repo && mkdir -p $C/repo && cp -r sfcompile benchmarks pyproject.toml $C/repo/ && cp .carry/train/b/*.sh $C/
cd $C/repo
export PYTHONPATH=$C/repo:$C/site PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True SFCOMPILE_CACHE=$C/shared
# one line: W is expanded inside the waiter's `bash -c "..."` below, where a newline ends the command (in the
# session's call 2 it did, and f20d did not start; call 3 started it by hand with the same arguments)
W="--model $C/smol.gguf --wiki $C/wiki.jsonl --calib $C/corpus.jsonl --lrs= --lr 1e-3 --micro-batch 32 --budget-s 1500"
W="$W --skip ablations,zeroshot --init admm --teacher-batch ${TB:-2048} --main-tokens 20e6 --evals 5"
W="$W --teacher-mix ${MIX:-8e6} --main-forge finalize_at=${FIN:-0.25}"
mkdir -p $C/res
start() {  # name args...
  local n=$1; shift
  setsid nohup python benchmarks/train_h200.py $W --out $C/res/$n --work $C/w/$n "$@" \
      > $C/res/$n.log 2>&1 < /dev/null &
  echo "$n pid $!"
}
start f20; A=$!
setsid nohup bash -c "while ! ls $C/shared/shards/teacher-*.json >/dev/null 2>&1; do sleep 5; \
  kill -0 $A 2>/dev/null || exit 1; done; \
  echo start f20d at \$(date +%T); cd $C/repo; python benchmarks/train_h200.py $W --out $C/res/f20d --work $C/w/f20d \
  --srste-decay ${DECAY:-0.01}" > $C/res/f20d.log 2>&1 < /dev/null &
bash $C/wait.sh ${WAIT:-520}
