#!/bin/bash
# For a later session (one call, ~8 device minutes, no carry): the backend's block16_frag option (tiles in
# fragment order, 3.5% faster per decode call in this session's kernel table) end to end before it becomes the
# default: the GPU tests of the op's three CUDA paths in that layout, then full-depth decode at batch 1 and 8
# and prefill at 2048 tokens, block16 against block16+frag with dense in the same process, both models.
export PYTHONPATH=$PWD
timeout 120 python -m pytest -q tests/lowering/test_ops.py tests/lowering/test_kernels.py -k "cuda and block16" 2>&1 | tail -2
for m in llama-2-7b qwen3-8b; do
  timeout 230 python benchmarks/e2e.py --model $m --e2e-patterns block16,block16+frag --batches 1,8 --prefill 2048 \
    --prefill-patterns block16,block16+frag --budget-s 200 --e2e-out $OUT/e2e_frag_$m 2>&1 | tail -8
done
