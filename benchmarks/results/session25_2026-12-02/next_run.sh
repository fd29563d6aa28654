#!/bin/bash
# For the next session, call 2 (carry .carry/train/b), right after call 1 = session21's a.sh with carry
# .carry/train/a: the issue's <= 100M-token run, as the twenty-second session's next_run.sh (ADMM masks, LR 1e-3
# cosine, 32 x 512 per step, exploration capped at 5M tokens, KL alone at T = 1, 40M teacher tokens), now in
# compile_mode="reduce-overhead" (bit for bit the default mode's result; its exploring steps 1.27x faster on the
# H200, the rest a tie: twenty-fifth session). ~20 device minutes: ~6 min sampling, ~10 min of steps, compiles,
# evals. Then, the moment each call returns, `bash /root/cache/repo/benchmarks/results/session21_2026-12-02/wait.sh
# 560` until it is done (a 30 s gap between calls releases the machine and the run with it).
source benchmarks/results/session21_2026-12-02/assemble.sh
export PYTHONPATH=$C/repo:$C/site PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True SFCOMPILE_CACHE=$C/shared
W="--model $C/smol.gguf --wiki $C/wiki.jsonl --calib $C/corpus.jsonl --lrs= --lr 1e-3 --micro-batch 32"
W="$W --budget-s ${BUDGET:-1500} --skip ablations,zeroshot --init admm --teacher-batch 2048 --main-tokens 100e6"
W="$W --evals 10 --teacher-mix 40e6 --teacher-kv-cache auto --loss-kernel triton --main-forge finalize_at=0.05"
W="$W --compile --main-set kl_temperature=1 --main-set ce_weight=0 --main-set compile_mode=reduce-overhead"
mkdir -p $C/res
setsid nohup python benchmarks/train_h200.py $W --out $C/res/r100kl --work $C/w/r100kl > $C/res/r100kl.log 2>&1 \
  < /dev/null &
echo "r100kl started at $(date +%T), pid $!"
bash $C/repo/benchmarks/results/session21_2026-12-02/wait.sh ${WAIT:-540}
