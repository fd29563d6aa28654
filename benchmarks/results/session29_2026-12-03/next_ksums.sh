#!/bin/bash
# For the next session, call 2 (carry .carry/train/b), right after call 1 = session21's a.sh with carry
# .carry/train/a; then `bash /root/cache/repo/benchmarks/results/session27_2026-12-03/wait.sh 560` the moment each
# call returns (it brings everything back as one tarball). In order, the most certain first (~28 device minutes,
# the kl arm past the budget; call 1 and call 2 back to back: a gap past the machine's 30 s idle window sends it
# back):
#   gpu  -- the GPU tests of both decode kernels taking the SLoRB block sums from x themselves (kernel_sums,
#           written after the twenty-ninth session's calls: compiled for sm_90 in CI, never run) and of the folded
#           bypasses of a tiny bf16 llama with and without it;
#   e2e  -- decode at batch 1 with a SLoRB bypass of group 16 on every site, the block sums from Inductor's
#           reductions (twenty-ninth session: 2:4 1.38x LLaMA-2-7B / 1.34x Qwen3-8B, block-16 1.53x / 1.42x)
#           against the kernels' own (+ksums); Qwen3-8B with per-kernel profiles (the twenty-ninth session's
#           showed ~3 block-sum kernels a layer);
#   g8   -- the "kl" recipe at 20M tokens with SLoRB group 8 (the untried training arm; kl with group 16 gave
#           30.96-31.05 in four sessions);
#   kl   -- the same-lease kl baseline, if the budget reaches it.
source benchmarks/results/session21_2026-12-02/assemble.sh
cp -r $OLDPWD/tests $C/repo/  # (assemble.sh copies the code alone)
export PYTHONPATH=$C/repo:$C/site PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True SFCOMPILE_CACHE=$C/shared
W="--model $C/smol.gguf --wiki $C/wiki.jsonl --calib $C/corpus.jsonl --lrs= --lr 1e-3 --micro-batch 32"
W="$W --budget-s 1500 --skip ablations,zeroshot --init admm --teacher-batch 2048 --main-tokens 20e6 --evals 4"
W="$W --teacher-kv-cache auto --loss-kernel triton --compile"
W="$W --main-set kl_temperature=1 --main-set ce_weight=0 --main-set compile_mode=reduce-overhead"
mkdir -p $C/res
cat > $C/ab.sh <<AB
python -m pytest -q -p no:cacheprovider --durations=10 tests/lowering/test_kernels_mma.py tests/passes/test_bypass.py \
  -k "(bypass_cuda and summed) or decode_kernels_on_a_gpu" > $C/res/gpu.log 2>&1
mkdir -p $C/res/e2e $C/res/prof
python benchmarks/e2e.py --model llama-2-7b --batches 1 --prefill 0 --budget-s 400 --e2e-out $C/res/e2e/llama \
  --e2e-patterns 2:4+slorb16,2:4+slorb16+ksums,block16+slorb16+ksums > $C/res/e2e.log 2>&1
python benchmarks/e2e.py --model qwen3-8b --batches 1 --prefill 0 --budget-s 500 --e2e-out $C/res/e2e/qwen \
  --e2e-patterns 2:4+slorb16,2:4+slorb16+ksums,block16+slorb16,block16+slorb16+ksums --e2e-profile $C/res/prof \
  > $C/res/e2eq.log 2>&1
python benchmarks/train_h200.py $W --teacher-mix 8e6 --main-forge finalize_at=0.25 --main-forge slorb_group=8 \
  --out $C/res/g8 --work $C/w/g8 > $C/res/g8.log 2>&1
python benchmarks/train_h200.py $W --teacher-mix 8e6 --main-forge finalize_at=0.25 --out $C/res/kl \
  --work $C/w/kl > $C/res/kl.log 2>&1
AB
setsid nohup bash $C/ab.sh > $C/res/ab.out 2>&1 < /dev/null &
echo $! > $C/ab.pid
echo "started at $(date +%T)"
bash $C/repo/benchmarks/results/session27_2026-12-03/wait.sh ${WAIT:-540}
