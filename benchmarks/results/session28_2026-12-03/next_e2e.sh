#!/bin/bash
# For the next session, call 2 (carry .carry/train/b), right after call 1 = session21's a.sh with carry
# .carry/train/a; then `bash /root/cache/repo/benchmarks/results/session27_2026-12-03/wait.sh 560` the moment each
# call returns (it brings everything back as one tarball). In order, the most certain first (~22 device minutes;
# call 1 and call 2 back to back: a gap past the machine's 30 s idle window sends it back, as it did once in the
# twenty-eighth session):
#   gpu  -- the GPU tests of block-16's bypass inside its decode kernel (written after the twenty-eighth session's
#           calls; compiled for sm_90 in CI but never run) and of the 2:4 one again (kept short: the -k picks
#           the bypass tests alone, not the autotuning-heavy nm24_mma_cuda, which took 5 of the last call's minutes);
#   e2e  -- decode at batch 1 with a SLoRB bypass of group 16 on every site, LLaMA-2-7B: block-16 with the bypass
#           inside its kernel (the default now) and as the hook's ops, 2:4 with it inside (1.38x last time); then
#           Qwen3-8B: 2:4 without a bypass, with it inside, as the hook's ops;
#   kl, g8 -- the "kl" recipe at 20M tokens (30.96 / 30.98 / 31.04 in three sessions with SDPA-sampled teacher
#           text; 31.05 with 16M teacher tokens sampled by the Triton attention) sampled by the Triton attention
#           (the default: the same-lease baseline the last session's budget cut), then with SLoRB group 8.
source benchmarks/results/session21_2026-12-02/assemble.sh
cp -r $OLDPWD/tests $C/repo/  # (assemble.sh copies the code alone)
export PYTHONPATH=$C/repo:$C/site PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True SFCOMPILE_CACHE=$C/shared
W="--model $C/smol.gguf --wiki $C/wiki.jsonl --calib $C/corpus.jsonl --lrs= --lr 1e-3 --micro-batch 32"
W="$W --budget-s 1500 --skip ablations,zeroshot --init admm --teacher-batch 2048 --main-tokens 20e6 --evals 4"
W="$W --teacher-kv-cache auto --loss-kernel triton --compile"
W="$W --main-set kl_temperature=1 --main-set ce_weight=0 --main-set compile_mode=reduce-overhead"
mkdir -p $C/res
cat > $C/ab.sh <<AB
python -m pytest -q -p no:cacheprovider tests/lowering/test_kernels_mma.py tests/lowering/test_ops.py \
  tests/passes/test_bypass.py -k "bypass or slorb" > $C/res/gpu.log 2>&1
mkdir -p $C/res/e2e
python benchmarks/e2e.py --model llama-2-7b --batches 1 --prefill 0 --budget-s 300 --e2e-out $C/res/e2e/llama \
  --e2e-patterns block16+slorb16,block16+slorb16+nofusebypass,2:4+slorb16 > $C/res/e2e.log 2>&1
python benchmarks/e2e.py --model qwen3-8b --batches 1 --prefill 0 --budget-s 300 --e2e-out $C/res/e2e/qwen \
  --e2e-patterns 2:4,2:4+slorb16,2:4+slorb16+nofusebypass > $C/res/e2eq.log 2>&1
python benchmarks/train_h200.py $W --teacher-mix 8e6 --main-forge finalize_at=0.25 --out $C/res/kl \
  --work $C/w/kl > $C/res/kl.log 2>&1
python benchmarks/train_h200.py $W --teacher-mix 8e6 --main-forge finalize_at=0.25 --main-forge slorb_group=8 \
  --out $C/res/g8 --work $C/w/g8 > $C/res/g8.log 2>&1
AB
setsid nohup bash $C/ab.sh > $C/res/ab.out 2>&1 < /dev/null &
echo $! > $C/ab.pid
echo "started at $(date +%T)"
bash $C/repo/benchmarks/results/session27_2026-12-03/wait.sh ${WAIT:-540}
