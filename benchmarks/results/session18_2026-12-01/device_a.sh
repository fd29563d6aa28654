#!/bin/bash
# call A (eighteenth session): cache the model's first part, the evaluation text and the gguf wheel
C=/root/cache; mkdir -p $C/site
cp .carry/train/a/smol.part0 .carry/train/a/wiki.jsonl $C/ && \
  pip install -q --no-deps --target $C/site .carry/train/a/gguf-*.whl 2>&1 | tail -2; ls -la $C
