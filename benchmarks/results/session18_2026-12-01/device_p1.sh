#!/bin/bash
# call 1 (eighteenth session): where the trainer's and the teacher sampler's time goes on the H200, and the
# fused loss's CUDA time and memory against the old loss.
nvidia-smi --query-gpu=name,memory.used --format=csv
python benchmarks/loss_memory.py --batch 32 --seqlen 512 --vocab 49152 --dtype bf16 --device cuda \
  --out $OUT/loss_memory_cuda.jsonl 2>&1 | grep -v Warning | tail -8
python benchmarks/train_profile.py --what sample --batch 2048 --seqlen 256 --out $OUT/profile.jsonl \
  --work /tmp/tp_s > $OUT/profile_sample.txt 2>&1; tail -c 2500 $OUT/profile_sample.txt
python benchmarks/train_profile.py --what train --compile --out $OUT/profile.jsonl --work /tmp/tp_c \
  > $OUT/profile_train_compiled.txt 2>&1; grep -v "it/s\]" $OUT/profile_train_compiled.txt | tail -c 4000
python benchmarks/train_profile.py --what train --out $OUT/profile.jsonl --work /tmp/tp_e \
  > $OUT/profile_train_eager.txt 2>&1; grep -v "it/s\]" $OUT/profile_train_eager.txt | tail -c 1500
