#!/bin/bash
# call 2: assemble the model, start the training runs in their own sessions (they outlive this call)
# env: KV (dynamic|static), PREC (auto|bf16|fp32), MIXA / MIXB (teacher tokens of runs A / B)
C=/root/cache
cat $C/smol.part0 .carry/train/b/smol.part1 > $C/smol.gguf || exit 1
test "$(stat -c %s $C/smol.gguf)" = 98362432 || { echo "bad gguf size"; exit 1; }
zcat .carry/train/b/corpus.jsonl.gz > $C/corpus.jsonl
rm -rf $C/repo && mkdir -p $C/repo && cp -r sfcompile benchmarks pyproject.toml $C/repo/ && cp .carry/train/b/*.sh $C/
cd $C/repo
export PYTHONPATH=$C/repo:$C/site PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
W="--model $C/smol.gguf --wiki $C/wiki.jsonl --calib $C/corpus.jsonl --lrs= --lr 1e-3 --micro-batch 32 --budget-s 1500
   --skip ablations,zeroshot --init admm --teacher-batch 1024 --teacher-kv-cache ${KV:-dynamic}
   --teacher-precision ${PREC:-auto}"
mkdir -p $C/res
start() {  # name args...
  local n=$1; shift
  setsid nohup python benchmarks/train_h200.py $W --out $C/res/$n --work $C/w/$n "$@" \
      > $C/res/$n.log 2>&1 < /dev/null &
  echo "$n pid $!"
}
start mix20 --main-tokens 20e6 --evals 5 --teacher-mix ${MIXA:-8e6}
start amix8 --main-tokens 8e6  --evals 4 --teacher-mix ${MIXB:-3e6}
bash $C/wait.sh ${WAIT:-520}
