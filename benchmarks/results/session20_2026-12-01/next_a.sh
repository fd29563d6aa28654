#!/bin/bash
# first call of the next session (carry .carry/train/a, built by session18's make_carry.py): cache the model's first
# part, the evaluation text and the gguf wheel for run.sh, which must follow within the machine's idle window (30 s)
C=/root/cache; mkdir -p $C/site
cp .carry/train/a/smol.part0 .carry/train/a/wiki.jsonl $C/ && \
  pip install -q --no-deps --target $C/site .carry/train/a/gguf-*.whl 2>&1 | tail -1; ls -la $C
