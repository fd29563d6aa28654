#!/bin/bash
# For a session with ~8 device minutes to spare (random SmolLM2-135M weights, no carry needed): does
# compile_mode="reduce-overhead" (the compiled forwards and backward replayed as CUDA graphs) remove the ~20% of
# the compiled training step the H200 sat idle (103 ms per step against ~80 ms of kernels, twentieth session)?
# First the GPU test that it trains like eager, then the same profiled run in both modes (the masks final from
# step 58; 10 profiled steps and 40 timed after them; compiles included in the wall time, not in the medians).
set -x
export PYTHONPATH=$PWD
timeout 240 python -m pytest -q tests/train/test_loop.py -k cuda_graphs 2>&1 | tail -3
for mode in default reduce-overhead; do
  timeout 330 python benchmarks/train_profile.py --what train --compile --compile-mode $mode --loss-kernel triton \
    --micro-batch 32 --seqlen 512 --out $OUT/train_$mode.jsonl --work /tmp/tp_$mode > $OUT/train_$mode.txt 2>&1
  tail -3 $OUT/train_$mode.txt | cut -c1-300
  python -c "import json,sys; r=json.loads(open(sys.argv[1]).readlines()[-1]); print(sys.argv[2], {k: r.get(k) for k in
    ('wall_ms_per_step', 'gpu_busy_ms_per_step', 'gpu_idle_share', 'kernels_per_step', 'after_window_ms_per_step',
     'exploring_ms_per_step')})" $OUT/train_$mode.jsonl $mode
done
