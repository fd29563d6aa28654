"""Programmatic dependent launch (PDL) of the decode kernels: plain launches against PDL modes 1 and 2, per
layer shape and M, with dense cuBLAS in the same process.

    python benchmarks/pdl.py --ms 1,8,16 --patterns 2:4,block16 --out pdl.json

Each row times one implementation the way benchmarks/kernels.py does (one CUDA graph calling it on R weight
copies back to back, median per call), for dense cuBLAS and for sfcompile's op in launch modes 0, 1 and 2
(`sfcompile.lowering.kernels.splitk.launch_mode`). In that graph every kernel follows one of its own kind,
so PDL overlaps a kernel's start (launch, L2 prefetch of its first weights) with the previous one's end: the
best case. In a model the kernel before a packed op is Inductor's (norms, rotary, activations); that case is
``--between``: one elementwise kernel writing x between every two calls, in all columns.
The autotuner picks its config in the first column (mode 0) and every later column reuses it, so the
columns differ by the launch mode alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sfcompile.lowering import bench  # noqa: E402
from sfcompile.lowering.kernels.splitk import launch_mode  # noqa: E402
from sfcompile.lowering.pack import pack  # noqa: E402

MODES = (0, 1, 2)


def _calls(fns, x, between: bool):
    if not between:
        return fns

    def with_norm(f):
        def call():
            x.mul_(1.0)     # one elementwise kernel that writes x, as a norm before a projection does
            return f()
        return call

    return [with_norm(f) for f in fns]


def run(shapes, ms, patterns, between: bool, log=print) -> list[dict]:
    rows = []
    for name, n, k in shapes:
        r = bench._copies(n * k * 2)
        dense = [bench._hardened((n, k), patterns[0], torch.bfloat16, "cuda", seed=i) for i in range(r)]
        packed = {p: [pack(bench._hardened((n, k), p, torch.bfloat16, "cuda", seed=i), p, -1) for i in range(r)]
                  for p in patterns}
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            d_us = bench._graph_time(_calls([partial(torch.nn.functional.linear, x, w) for w in dense], x,
                                            between))[0]
            row = {"shape": name, "n": n, "k": k, "m": m, "between": between, "dense_us": d_us}
            for p, pws in packed.items():
                for mode in MODES:
                    with launch_mode(mode):
                        us = bench.checked_us(f"{name} M={m} {p} pdl={mode}",
                                              _calls([partial(pw.linear, x) for pw in pws], x, between),
                                              partial(pws[0].linear, x), x, pws[0], log)
                    if us is not None:
                        row[f"{p} pdl{mode}"] = us
                        row[f"{p} pdl{mode} vs dense"] = d_us / us
            rows.append(row)
            log(json.dumps({k_: (round(v, 3) if isinstance(v, float) else v) for k_, v in row.items()}))
        del dense, packed
        torch.cuda.empty_cache()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ms", default="1,8,16")
    parser.add_argument("--patterns", default="2:4,block16")
    parser.add_argument("--shapes", default="all", help="'all' (the six layer shapes) or NxK,NxK,...")
    parser.add_argument("--between", default="0,1", help="0: kernels back to back; 1: a norm kernel between")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/pdl.py needs a CUDA GPU (sm_90 or newer for PDL)")
    shapes = bench.LAYER_SHAPES if args.shapes == "all" else [
        (s, int(s.split("x")[0]), int(s.split("x")[1])) for s in args.shapes.split(",")]
    ms = [int(m) for m in args.ms.split(",")]
    patterns = args.patterns.split(",")
    rows = []
    for between in args.between.split(","):
        rows += run(shapes, ms, patterns, between == "1")
        if args.out:
            args.out.write_text(json.dumps(rows, indent=1))
    for p in patterns:
        for mode in MODES:
            for between in (False, True):
                vals = sorted(r[f"{p} pdl{mode} vs dense"] for r in rows
                              if r["between"] == between and f"{p} pdl{mode} vs dense" in r)
                if vals:
                    print(f"{p} pdl={mode} between={int(between)}: median {vals[len(vals) // 2]:.3f}x dense "
                          f"(min {vals[0]:.3f}, max {vals[-1]:.3f}, {len(vals)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
