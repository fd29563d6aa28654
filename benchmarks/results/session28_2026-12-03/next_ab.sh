#!/bin/bash
# Call 2 of the twenty-eighth session (carry .carry/train/b), right after call 1 = session21's a.sh with carry
# .carry/train/a; then `bash /root/cache/repo/benchmarks/results/session27_2026-12-03/wait.sh 560` the moment
# each call returns (it brings everything back as one tarball). In order, the most certain first:
#   gpu  -- the GPU tests of the SLoRB bypass inside the 2:4 decode kernel (mma.m16n8k8 on the sparse product's
#           accumulators), of the ops and of the sampler's attentions;
#   e2e  -- LLaMA-2-7B decode at batch 1: 2:4 without a bypass, with a SLoRB bypass of group 16 on every site
#           as the graph's small dense ops, with it inside the packed kernels (+fusebypass), and block-16 with
#           the bypass;
#   t16, kl, g8 -- three 20M-token arms of the "kl" recipe (ADMM masks, LR 1e-3 cosine to 1e-4, 32 x 512 per
#           step, exploration capped at 5M tokens, KL alone at T = 1, CUDA-graph trainer; 30.96 / 30.98 /
#           31.04 in three sessions with 8M teacher tokens sampled with SDPA): 16M teacher tokens; the recipe
#           itself sampled with the Triton attention (same-lease baseline); SLoRB group 8.
source benchmarks/results/session21_2026-12-02/assemble.sh
cp -r $OLDPWD/tests $C/repo/  # (assemble.sh copies the code alone)
export PYTHONPATH=$C/repo:$C/site PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True SFCOMPILE_CACHE=$C/shared
W="--model $C/smol.gguf --wiki $C/wiki.jsonl --calib $C/corpus.jsonl --lrs= --lr 1e-3 --micro-batch 32"
W="$W --budget-s 1500 --skip ablations,zeroshot --init admm --teacher-batch 2048 --main-tokens 20e6 --evals 4"
W="$W --teacher-kv-cache auto --loss-kernel triton --compile"
W="$W --main-set kl_temperature=1 --main-set ce_weight=0 --main-set compile_mode=reduce-overhead"
mkdir -p $C/res
cat > $C/ab.sh <<AB
python -m pytest -q -p no:cacheprovider tests/lowering/test_kernels.py -k "bypass or nm24_mma_cuda" \
  tests/lowering/test_ops.py tests/passes/test_bypass.py tests/train/test_sampler.py \
  tests/train/test_decode_attention_kernel.py > $C/res/gpu.log 2>&1
mkdir -p $C/res/e2e
python benchmarks/e2e.py --model llama-2-7b --e2e-patterns 2:4,2:4+slorb16,2:4+slorb16+fusebypass,block16+slorb16 \
  --batches 1 --prefill 0 --budget-s 420 --e2e-out $C/res/e2e/llama > $C/res/e2e.log 2>&1
python benchmarks/train_h200.py $W --teacher-mix 16e6 --main-forge finalize_at=0.25 --out $C/res/t16 \
  --work $C/w/t16 > $C/res/t16.log 2>&1
python benchmarks/train_h200.py $W --teacher-mix 8e6 --main-forge finalize_at=0.25 --out $C/res/kl \
  --work $C/w/kl > $C/res/kl.log 2>&1
python benchmarks/train_h200.py $W --teacher-mix 8e6 --main-forge finalize_at=0.25 --main-forge slorb_group=8 \
  --out $C/res/g8 --work $C/w/g8 > $C/res/g8.log 2>&1
AB
setsid nohup bash $C/ab.sh > $C/res/ab.out 2>&1 < /dev/null &
echo $! > $C/ab.pid
echo "started at $(date +%T)"
bash $C/repo/benchmarks/results/session27_2026-12-03/wait.sh ${WAIT:-540}
