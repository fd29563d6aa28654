export PYTHONPATH=$PWD
timeout 100 python -m pytest -q tests/lowering/test_kernels.py -k "block16_mma and cuda" 2>&1 | tail -2
timeout 150 python benchmarks/block16_decode.py --impls block16_mma,block16_mma_frag --ms 1,8,16 --out $OUT/block16_frag.json > $OUT/block16_frag.txt 2>&1; tail -30 $OUT/block16_frag.txt
timeout 60 python -m pytest -q tests/train/test_sampler.py -k "cuda or graph_mode" 2>&1 | tail -2
