#!/bin/bash
# For the next session, call 2 (carry .carry/train/b, right after call 1 = session21's a.sh with carry
# .carry/train/a, ~10 s): the issue's ≤ 100M-token run with the best loss of this session's A/B. The twenty-first
# session's 80M recipe (ADMM masks, LR 1e-3 cosine, 32 x 512 per step, exploration capped at 5M tokens, Triton
# loss kernel, packed-graph sampler) at 100M tokens with KL alone at T = 1 (ce_weight 0: 1.9% better than CE + KL
# at T = 2 at 20M tokens) and 40M teacher tokens (pool ~42.9M unique tokens, read ~2.3 times). ~22 device minutes:
# ~6 min sampling (less with the windowed graphs), ~10.5 min of steps (103 ms each), ~2.5 min compiles, evals.
# Zero-shot is skipped (it needs the lm-eval carry, session21's c.sh). Then wait with
# `bash /root/cache/repo/benchmarks/results/session21_2026-12-02/wait.sh 560` until it is done, and run
# next_after.sh (GPU tests and timings of this session's sampler and block-16 changes) in what is left.
source benchmarks/results/session21_2026-12-02/assemble.sh
export PYTHONPATH=$C/repo:$C/site PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True SFCOMPILE_CACHE=$C/shared
W="--model $C/smol.gguf --wiki $C/wiki.jsonl --calib $C/corpus.jsonl --lrs= --lr 1e-3 --micro-batch 32"
W="$W --budget-s ${BUDGET:-1500} --skip ablations,zeroshot --init admm --teacher-batch 2048 --main-tokens 100e6"
W="$W --evals 10 --teacher-mix 40e6 --teacher-kv-cache auto --loss-kernel triton --main-forge finalize_at=0.05"
W="$W --compile --main-set kl_temperature=1 --main-set ce_weight=0"
mkdir -p $C/res
setsid nohup python benchmarks/train_h200.py $W --out $C/res/r100kl --work $C/w/r100kl > $C/res/r100kl.log 2>&1 \
  < /dev/null &
echo "r100kl started at $(date +%T), pid $!"
bash $C/repo/benchmarks/results/session21_2026-12-02/wait.sh ${WAIT:-500}
