#!/bin/bash
# For the next session, call 2 (carry .carry/train/b), right after call 1 = session21's a.sh with carry
# .carry/train/a. Three 20M-token arms of the "kl" recipe (ADMM masks, LR 1e-3 cosine to 1e-4, 32 x 512 per step,
# exploration capped at 5M tokens, KL alone at T = 1, CUDA-graph trainer; 30.96 / 30.98 / 31.04 in three
# sessions with 8M teacher tokens), one after the other, the most informative first:
#   t16 -- 16M teacher tokens instead of 8M (the run reads its text ~1.05 times instead of 1.83): is unique text
#          still the lever at this length? If so, the 100M run wants far more than 40M teacher tokens, which the
#          sampler's Triton attention (192.9k tokens/s) now makes affordable;
#   g8  -- SLoRB group 8 instead of 16 (the bypass holds 12.5% of a layer's weights instead of 6.25%): how much
#          accuracy the bypass's size buys (it costs bytes and a dense matmul at inference);
#   kl  -- the recipe itself, now sampled with the Triton decoding attention (the new default): the same-lease
#          baseline, and a check that the kernel's samples train as SDPA's did.
# Then the sampler's GPU tests again (the autocast test now runs both attentions), and the decode speed of a model
# as sfcompile's trainer leaves it: LLaMA-2-7B at batch 1, 2:4 and block-16 with and without a SLoRB bypass of
# group 16 on every site (e2e.py's new +slorb16 columns; every e2e number so far had no bypass), and with the
# backend's new fuse_bypass (q/k/v's and gate/up's bypasses as one matmul each; +fusebypass). ~23 device minutes.
# Then `bash /root/cache/repo/benchmarks/results/session27_2026-12-03/wait.sh 560` the moment each call returns;
# it brings everything back as one tarball (at most 8 files come back per call).
source benchmarks/results/session21_2026-12-02/assemble.sh
cp -r $OLDPWD/tests $C/repo/  # (assemble.sh copies the code alone)
export PYTHONPATH=$C/repo:$C/site PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True SFCOMPILE_CACHE=$C/shared
W="--model $C/smol.gguf --wiki $C/wiki.jsonl --calib $C/corpus.jsonl --lrs= --lr 1e-3 --micro-batch 32"
W="$W --budget-s 1500 --skip ablations,zeroshot --init admm --teacher-batch 2048 --main-tokens 20e6 --evals 4"
W="$W --teacher-kv-cache auto --loss-kernel triton --compile"
W="$W --main-set kl_temperature=1 --main-set ce_weight=0 --main-set compile_mode=reduce-overhead"
mkdir -p $C/res
cat > $C/ab.sh <<AB
python benchmarks/train_h200.py $W --teacher-mix 16e6 --main-forge finalize_at=0.25 --out $C/res/t16 \
  --work $C/w/t16 > $C/res/t16.log 2>&1
python benchmarks/train_h200.py $W --teacher-mix 8e6 --main-forge finalize_at=0.25 --main-forge slorb_group=8 \
  --out $C/res/g8 --work $C/w/g8 > $C/res/g8.log 2>&1
python benchmarks/train_h200.py $W --teacher-mix 8e6 --main-forge finalize_at=0.25 --out $C/res/kl \
  --work $C/w/kl > $C/res/kl.log 2>&1
python -m pytest -q tests/train/test_sampler.py tests/train/test_decode_attention_kernel.py tests/train/test_data.py \
  -p no:cacheprovider > $C/res/gpu.log 2>&1
mkdir -p $C/res/e2e
python benchmarks/e2e.py --model llama-2-7b --e2e-patterns 2:4,2:4+slorb16,2:4+slorb16+fusebypass,block16+slorb16 \
  --batches 1 --prefill 0 --budget-s 420 --e2e-out $C/res/e2e/llama > $C/res/e2e.log 2>&1
AB
setsid nohup bash $C/ab.sh > $C/res/ab.out 2>&1 < /dev/null &
echo $! > $C/ab.pid
echo "started at $(date +%T)"
bash $C/repo/benchmarks/results/session27_2026-12-03/wait.sh ${WAIT:-540}
