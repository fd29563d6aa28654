#!/bin/bash
# (Edited after this session's run for the next: FIN and BUDGET defaults now follow TOK; the run above used
# FIN=0.125 = 5M / 40M and --budget-s 1100, and call 1's sampler choice, packed-graph.)
# call 2 (twentieth session; carry .carry/train/b, right after call 1): assemble the model and start a compiled
# run in the background (it outlives the call), with the sampler that call 1 measured fastest (steady tokens/s
# at 2048 x 512, bf16 teacher; without call 1's file: the trainer's "auto") and the loss kernel TRAIN_LOSS
# (default triton); then wait and report. The next session: call next_a.sh (carry .carry/train/a), then right
# after it TOK=80e6 WAIT=560 bash run.sh (carry .carry/train/b), then device_wait.sh 560 until it is done.
# The recipe is the eighteenth session's (ADMM masks, LR 1e-3 cosine, 32 x 512 per step, exploration capped at
# 5M tokens), with more teacher text: TEACH tokens (default 0.4 x TOK, the trainer's teacher_data_tokens="auto").
C=/root/cache
test -f $C/smol.part0 || { echo "no smol.part0: the machine went cold after call 1"; exit 1; }
cat $C/smol.part0 .carry/train/b/smol.part1 > $C/smol.gguf || exit 1
test "$(stat -c %s $C/smol.gguf)" = 98362432 || { echo "bad gguf size"; exit 1; }
zcat .carry/train/b/corpus.jsonl.gz > $C/corpus.jsonl
rm -rf $C/repo && mkdir -p $C/repo && cp -r sfcompile benchmarks pyproject.toml $C/repo/
cd $C/repo
SAMPLER=auto  # the trainer's default; this session's call 1 measured the samplers, and its fastest is taken
test -f $C/m1/sampling.jsonl && SAMPLER=$(python - <<'PY'
import json
rows = [json.loads(l) for l in open("/root/cache/m1/sampling.jsonl")]
rows = [r for r in rows if "steady_tok_s" in r]
best = max(rows, key=lambda r: r["steady_tok_s"]) if rows else {"variant": "dynamic+half"}
print(best["variant"].split("+")[0])
PY
)
TOK=${TOK:-40e6}; TEACH=${TEACH:-$(python -c "print(0.4 * $TOK)")}
echo "sampler $SAMPLER, loss kernel ${TRAIN_LOSS:-triton}, $TOK tokens, $TEACH teacher tokens"
export PYTHONPATH=$C/repo:$C/site PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True SFCOMPILE_CACHE=$C/shared
W="--model $C/smol.gguf --wiki $C/wiki.jsonl --calib $C/corpus.jsonl --lrs= --lr 1e-3 --micro-batch 32"
W="$W --budget-s ${BUDGET:-1800} --skip ablations,zeroshot --init admm --teacher-batch 2048 --main-tokens $TOK"
W="$W --evals ${EVALS:-4} --teacher-mix $TEACH --teacher-kv-cache $SAMPLER --loss-kernel ${TRAIN_LOSS:-triton}"
FIN=${FIN:-$(python -c "print(min(0.6, 5e6 / $TOK))")}  # exploration capped at 5M tokens, the trainer's default
W="$W --main-forge finalize_at=$FIN --compile"
mkdir -p $C/res
setsid nohup python benchmarks/train_h200.py $W --out $C/res/r50 --work $C/w/r50 > $C/res/r50.log 2>&1 < /dev/null &
echo "started pid $! at $(date +%T)"
bash $C/repo/benchmarks/results/session18_2026-12-01/device_wait.sh ${WAIT:-540}
