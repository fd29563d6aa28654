#!/bin/bash
# Call 2 of the twenty-fifth session (carry .carry/train/b, right after call 1 = session21's a.sh with carry
# .carry/train/a). Two 20M-token runs of the twenty-second session's "kl" recipe (ADMM masks, cosine to lr/10,
# 32 x 512 per step, exploration capped at 5M tokens, 8M teacher tokens, KL alone at T = 1; there 30.96), one after
# the other in the background, that differ in the learning rate only:
#   lr2 -- LR 2e-3 (first: if the machine is lost after this call, it still compares with the 30.96 of session 22);
#   lr1 -- LR 1e-3, the recorded recipe, as the same-session baseline.
# Both train under compile_mode="reduce-overhead" (CUDA graphs: bit for bit the default mode's result on the tiny
# model, graphs_diag.txt), so their logs also time that mode on a real run. They share the teacher shard and
# Inductor's caches: the first pays the sampling and the cold compiles. Then wait.sh until both are done.
source benchmarks/results/session21_2026-12-02/assemble.sh
export PYTHONPATH=$C/repo:$C/site PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True SFCOMPILE_CACHE=$C/shared
W="--model $C/smol.gguf --wiki $C/wiki.jsonl --calib $C/corpus.jsonl --lrs= --micro-batch 32"
W="$W --budget-s 1500 --skip ablations,zeroshot --init admm --teacher-batch 2048 --main-tokens 20e6 --evals 4"
W="$W --teacher-mix 8e6 --teacher-kv-cache auto --loss-kernel triton --main-forge finalize_at=0.25 --compile"
W="$W --main-set kl_temperature=1 --main-set ce_weight=0 --main-set compile_mode=reduce-overhead"
mkdir -p $C/res
cat > $C/ab.sh <<AB
python benchmarks/train_h200.py $W --lr 2e-3 --out $C/res/lr2 --work $C/w/lr2 > $C/res/lr2.log 2>&1
python benchmarks/train_h200.py $W --lr 1e-3 --out $C/res/lr1 --work $C/w/lr1 > $C/res/lr1.log 2>&1
AB
setsid nohup bash $C/ab.sh > $C/res/ab.out 2>&1 < /dev/null &
echo "started at $(date +%T)"
bash $C/repo/benchmarks/results/session21_2026-12-02/wait.sh ${WAIT:-540}
