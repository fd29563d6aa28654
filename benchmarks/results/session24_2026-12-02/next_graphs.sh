#!/bin/bash
# For the next session (no carry; two calls of ~5 device minutes each, as the twenty-second session's
# next_graphs.sh needed up to 900 s in one call, past the 600 s limit):
#   call 1: bash benchmarks/results/session24_2026-12-02/next_graphs.sh test default
#   call 2: bash benchmarks/results/session24_2026-12-02/next_graphs.sh reduce-overhead
# "test": the GPU test that compile_mode="reduce-overhead" trains like eager (it failed in the twenty-fourth
# session: the teacher's logits overwritten by the student's CUDA graph; the trainer now copies them and each
# step's gradients out of the graphs' memory). Then the compiled step profiled in the given modes (random
# SmolLM2-135M weights; masks final from step 58; 10 profiled and 40 timed steps; compiles not in the medians).
export PYTHONPATH=$PWD
for what in "$@"; do
  if [ "$what" = test ]; then
    timeout 200 python -m pytest -q tests/train/test_loop.py -k cuda_graphs -p no:logging -p no:cacheprovider \
      -W ignore --tb=short > $OUT/graphs_test.txt 2>&1
    tail -3 $OUT/graphs_test.txt; grep "^E " $OUT/graphs_test.txt | head -5 | cut -c1-300
    continue
  fi
  timeout 280 python benchmarks/train_profile.py --what train --compile --compile-mode $what --loss-kernel triton \
    --micro-batch 32 --seqlen 512 --out $OUT/train_$what.jsonl --work /tmp/tp_$what > $OUT/train_$what.txt 2>&1
  tail -3 $OUT/train_$what.txt | cut -c1-300
  python -c "import json,sys; r=json.loads(open(sys.argv[1]).readlines()[-1]); print(sys.argv[2], {k: r.get(k) for k in
    ('wall_ms_per_step', 'gpu_busy_ms_per_step', 'gpu_idle_share', 'kernels_per_step', 'after_window_ms_per_step',
     'exploring_ms_per_step')})" $OUT/train_$what.jsonl $what
done
