#!/bin/bash
# For the next session (random SmolLM2-135M-shaped weights, ~4 device minutes): time the
# teacher sampler after this session's fix (K/V buffers in the autocast dtype, `sampler._stored_dtype`) as the
# trainer runs it (fp32 weights under bf16 autocast, "+bf16") against a bf16 copy of the weights ("+half",
# 110.0k tokens/s in the twentieth session; the trainer's 80M run sampled at 72.4k before the fix), at the
# batch the runs use (2048) and at the trainer's "auto" batch (1024); then profile one 2048-sequence batch to
# see where a decoding step's ~19 ms go (an estimate by bytes and FLOPs gives ~9 ms).
# Run as call 1 after a.sh, in the same command (a.sh installs the gguf wheel under /root/cache/site).
set -x
export PYTHONPATH=$PWD:/root/cache/site
python -m pytest -q tests/train/test_sampler.py -k "cuda or graph_mode" 2>&1 | tail -3  # the fix on the GPU
python benchmarks/teacher_sampling.py --batch 2048 --seqlen 512 --reps 2 \
  --variants packed-graph+bf16,packed-graph+half --out $OUT/sampling.jsonl --budget-s 200
python benchmarks/teacher_sampling.py --batch 1024 --seqlen 512 --reps 2 \
  --variants packed-graph+bf16 --out $OUT/sampling.jsonl --budget-s 100
python benchmarks/train_profile.py --what sample --kv-cache packed-graph --batch 2048 --seqlen 512 \
  --out $OUT/prof_sample.jsonl > $OUT/prof_sample.txt 2>&1; tail -40 $OUT/prof_sample.txt
cat $OUT/sampling.jsonl
