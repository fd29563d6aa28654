#!/bin/bash
# call 1: cache the first half of the model + wiki + gguf wheel, then time the teacher sampler variants
C=/root/cache; mkdir -p $C/site
cp .carry/train/a/smol.part0 .carry/train/a/wiki.jsonl $C/ && \
  pip install -q --no-deps --target $C/site .carry/train/a/gguf-0.19.0-py3-none-any.whl 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.used --format=csv
python benchmarks/teacher_sampling.py --batch 1024 --seqlen 512 --reps 2 \
  --variants dynamic+bf16,dynamic,static+bf16 --budget-s ${BUDGET:-470} --out $OUT/s.jsonl 2>&1 | tail -15
cat $OUT/s.jsonl
