#!/bin/bash
# For the next session, call 2 (carry .carry/train/b), right after call 1 = session21's a.sh with carry
# .carry/train/a; then `bash /root/cache/repo/benchmarks/results/session27_2026-12-03/wait.sh 560` the moment each
# call returns (it brings everything back as one tarball). In order, the most certain first (~31 device minutes, the last arm past the budget;
# a gap past the machine's 30 s idle window between call 1 and call 2 sends it back):
#   gpu  -- the GPU fold test of both decode kernels with its tolerance against the fp32 model (the thirtieth
#           session's run failed its 2% bound against the eager bf16 model once, at 2.6%), and both bypass ops
#           on every GPU path, the bypass added by masking.slorb.add_bypass_ where no kernel takes it (~2 minutes);
#   e2e  -- LLaMA-2-7B decode at batch 1 with a SLoRB bypass of group 8 (twice S's bytes) on every site, for
#           the price of the 1.1% that group 8 trained lower (group 16 in the same process for the ratio);
#   wd0  -- the "kl" recipe at 20M tokens without weight decay (0.1 on every matrix so far, S and the dense W
#           under the masks included: ~6.5% shrink over the 20M run's cosine LR, never ablated);
#   emb  -- the same with the input embeddings (and the tied head) trained (never tried on the GPU);
#   mb64 -- the same at micro-batch 64 (32k tokens a step, half the steps; the recipe has run at 16k);
#   kl   -- the same-lease kl baseline (30.93 in the thirtieth session, 30.96-31.05 in four before; likely cut
#           by the budget, which the four arms before it nearly fill).
source benchmarks/results/session21_2026-12-02/assemble.sh
cp -r $OLDPWD/tests $C/repo/  # (assemble.sh copies the code alone)
export PYTHONPATH=$C/repo:$C/site PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True SFCOMPILE_CACHE=$C/shared
W="--model $C/smol.gguf --wiki $C/wiki.jsonl --calib $C/corpus.jsonl --lrs= --lr 1e-3 --micro-batch 32"
W="$W --budget-s 1500 --skip ablations,zeroshot --init admm --teacher-batch 2048 --main-tokens 20e6 --evals 4"
W="$W --teacher-kv-cache auto --loss-kernel triton --compile --teacher-mix 8e6 --main-forge finalize_at=0.25"
W="$W --main-set kl_temperature=1 --main-set ce_weight=0 --main-set compile_mode=reduce-overhead"
mkdir -p $C/res
cat > $C/ab.sh <<AB
python -m pytest -q -p no:cacheprovider --durations=5 tests/passes/test_bypass.py tests/lowering/test_ops.py \
  -k "decode_kernels_on_a_gpu or every_path" > $C/res/gpu.log 2>&1
mkdir -p $C/res/e2e
python benchmarks/e2e.py --model llama-2-7b --batches 1 --prefill 0 --budget-s 300 --e2e-out $C/res/e2e/llama \
  --e2e-patterns 2:4+slorb16,2:4+slorb8,block16+slorb8 > $C/res/e2e.log 2>&1
python benchmarks/train_h200.py $W --main-set weight_decay=0 --out $C/res/wd0 --work $C/w/wd0 > $C/res/wd0.log 2>&1
python benchmarks/train_h200.py $W --main-set train_embeddings=true --out $C/res/emb --work $C/w/emb \
  > $C/res/emb.log 2>&1
python benchmarks/train_h200.py ${W/--micro-batch 32/--micro-batch 64} --out $C/res/mb64 --work $C/w/mb64 \
  > $C/res/mb64.log 2>&1
python benchmarks/train_h200.py $W --out $C/res/kl --work $C/w/kl > $C/res/kl.log 2>&1
AB
setsid nohup bash $C/ab.sh > $C/res/ab.out 2>&1 < /dev/null &
echo $! > $C/ab.pid
echo "started at $(date +%T)"
bash $C/repo/benchmarks/results/session27_2026-12-03/wait.sh ${WAIT:-540}
