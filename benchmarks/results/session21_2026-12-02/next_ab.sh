#!/bin/bash
# For the next session, right after a call that cached smol.part0 / wiki.jsonl / the gguf wheel (a.sh, carry
# .carry/train/a): carry .carry/train/b, assemble the model and run, one after another in the background, four
# 20M-token runs of the twenty-first session's recipe (ADMM masks, LR 1e-3 cosine, 32 x 512 per step,
# exploration capped at 5M tokens, 8M teacher tokens = the trainer's 0.4x) that differ in one setting each:
#   base  -- CE + KL at T = 2 (x T^2), the trainer's default and the reference's;
#   kt1   -- KL at T = 1 (the distribution the student is evaluated on);
#   kl    -- KL at T = 1 alone (ce_weight 0: 73% of the text, 8M of 10.9M tokens, is the teacher's own samples, whose CE is a
#            noisy copy of the KL). The third session's 1M-token ablation on real text (calib, T = 2, LR 1e-4)
#            found KL alone worse (49.37 against 45.53; results/train_h200_s3_ablations_b.jsonl);
#   tt08  -- the teacher text sampled at temperature 0.8 instead of 1.0 (more fluent, less varied text; its own
#            shard, so it samples again: last, where a short session can drop it).
# The runs share the teacher shard ($SFCOMPILE_CACHE) and Inductor's caches, so only the first pays the
# sampling and the cold compiles (~7.5 min, the others ~4 each). Then wait with wait.sh (it lists $C/res).
source benchmarks/results/session21_2026-12-02/assemble.sh
export PYTHONPATH=$C/repo:$C/site PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True SFCOMPILE_CACHE=$C/shared
W="--model $C/smol.gguf --wiki $C/wiki.jsonl --calib $C/corpus.jsonl --lrs= --lr 1e-3 --micro-batch 32"
W="$W --budget-s 1500 --skip ablations,zeroshot --init admm --teacher-batch 2048 --main-tokens 20e6 --evals 4"
W="$W --teacher-mix 8e6 --teacher-kv-cache auto --loss-kernel triton --main-forge finalize_at=0.25 --compile"
mkdir -p $C/res
cat > $C/ab.sh <<AB
python benchmarks/train_h200.py $W --out $C/res/base --work $C/w/base > $C/res/base.log 2>&1
python benchmarks/train_h200.py $W --main-set kl_temperature=1 --out $C/res/kt1 --work $C/w/kt1 > $C/res/kt1.log 2>&1
python benchmarks/train_h200.py $W --main-set kl_temperature=1 --main-set ce_weight=0 --out $C/res/kl --work $C/w/kl > $C/res/kl.log 2>&1
python benchmarks/train_h200.py $W --main-set teacher_data_temperature=0.8 --out $C/res/tt08 --work $C/w/tt08 > $C/res/tt08.log 2>&1
AB
setsid nohup bash $C/ab.sh > $C/res/ab.out 2>&1 < /dev/null &
echo "started at $(date +%T)"
bash $C/repo/benchmarks/results/session21_2026-12-02/wait.sh ${WAIT:-500}
