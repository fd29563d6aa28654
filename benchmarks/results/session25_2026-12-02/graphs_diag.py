"""How far apart eager, compile default and compile reduce-overhead training end (tiny llama, fp32, CUDA, 6 steps),
each mode run twice: hard-mask agreement, largest weight difference, final loss and perplexity.

Run from the repository root: PYTHONPATH=$PWD python benchmarks/results/session25_2026-12-02/graphs_diag.py DIR
"""

import sys
from pathlib import Path

import torch

sys.path[:0] = ["tests/train"]
from test_loop import _graphs_runs  # noqa: E402

modes = ("eager", "default", "reduce-overhead")
runs = {}
for k in (0, 1):
    (Path(sys.argv[1]) / str(k)).mkdir(parents=True, exist_ok=True)
    for mode, run in _graphs_runs(Path(sys.argv[1]) / str(k), modes).items():
        runs[f"{mode}#{k}"] = run


def compare(a, b):
    sa, sb = runs[a][0], runs[b][0]
    n = sum(h.numel() for _, _, h in sa.values())
    agree = sum(int((sb[k][2] == h).sum()) for k, (_, _, h) in sa.items()) / n
    dw = max(float((sb[k][0] - w).abs().max()) for k, (w, _, _) in sa.items())
    equal = all(torch.equal(sb[k][0], w) and torch.equal(sb[k][1], m) for k, (w, m, _) in sa.items())
    print(f"{a:>18} vs {b:<18} masks agree {agree:.5f}  max |dW| {dw:.3g}  bitwise {equal}")


for name, (_, r) in runs.items():
    print(f"{name:>18}: final loss {r.final_loss:.5f}  ppl {r.ppl}  skipped {r.skipped_steps}  compiled {r.compiled}")
for a, b in [("eager#0", "eager#1"), ("default#0", "default#1"), ("reduce-overhead#0", "reduce-overhead#1"),
             ("default#0", "reduce-overhead#0"), ("default#1", "reduce-overhead#1"), ("eager#0", "default#0"),
             ("eager#0", "reduce-overhead#0")]:
    compare(a, b)
