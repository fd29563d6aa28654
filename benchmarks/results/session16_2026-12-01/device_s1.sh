#!/bin/bash
# call 1 (sixteenth session): cache the first half of the model + wiki + gguf wheel, then the batch-8 decode
# of LLaMA-2-7B at full depth with the backend's default pdl="auto" (plain launches at 8 rows)
C=/root/cache; mkdir -p $C/site
cp .carry/train/a/smol.part0 .carry/train/a/wiki.jsonl $C/ && \
  pip install -q --no-deps --target $C/site .carry/train/a/gguf-0.19.0-py3-none-any.whl 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.used --format=csv
python benchmarks/e2e.py --model llama-2-7b --e2e-patterns 2:4,block16 --batches 8 --prefill 0 \
  --budget-s ${BUDGET:-420} --e2e-out $OUT/e2e_llama_b8 2>&1 | tail -25
