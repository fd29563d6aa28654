#!/bin/bash
# call A (twenty-first session, nvidia-h200; carry .carry/train/a from session18's make_carry.py): cache the
# model's first part, the evaluation text and the gguf wheel under /root/cache, and show the versions the carried
# lm-eval wheels will meet. Call B must follow within the machine's idle window (30 s).
C=/root/cache; mkdir -p $C/site
cp .carry/train/a/smol.part0 $C/ && zcat .carry/train/a/wiki.jsonl.gz > $C/wiki.jsonl && \
  pip install -q --no-deps --target $C/site .carry/train/a/gguf-*.whl 2>&1 | tail -1
nvidia-smi -L; python3 -m pip show pyarrow pandas fsspec huggingface_hub 2>/dev/null | grep -E "^(Name|Version)"
ls -la $C
