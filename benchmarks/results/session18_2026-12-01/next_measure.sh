#!/bin/bash
# For the next session's first call (carry .carry/train/a: smol.part0, wiki.jsonl, the gguf wheel): cache the
# model's first part, then time what this session built but could not time (each step's output in $OUT):
# the loss kernel against the chunked loss, the packed sampler against generate, and the trainer's step
# profile with each loss. About 6-7 minutes.
C=/root/cache; mkdir -p $C/site
cp .carry/train/a/smol.part0 .carry/train/a/wiki.jsonl $C/ && \
  pip install -q --no-deps --target $C/site .carry/train/a/gguf-*.whl 2>&1 | tail -1
export PYTHONPATH=$PWD:$C/site
python -m pytest -q tests/train/test_losses.py tests/train/test_sampler.py -k "cuda or hopper" 2>&1 | tail -3
python benchmarks/loss_memory.py --batch 32 --seqlen 512 --vocab 49152 --dtype bf16 --device cuda \
  --variants whole,fused,kernel --out $OUT/loss_kernel_cuda.jsonl 2>&1 | grep -v Warning | tail -4
python benchmarks/teacher_sampling.py --batch 2048 --seqlen 512 --reps 2 --variants dynamic+half,packed+half,packed-graph+half \
  --budget-s 200 --out $OUT/sampling.jsonl 2>&1 | grep -v Warning | tail -3
for k in torch triton; do
  python benchmarks/train_profile.py --what train --compile --loss-kernel $k --out $OUT/profile.jsonl \
    --work /tmp/tp_$k > $OUT/profile_train_$k.txt 2>&1; tail -c 600 $OUT/profile_train_$k.txt
done
