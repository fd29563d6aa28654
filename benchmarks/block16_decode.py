"""Block-16 decode kernels against dense cuBLAS: the shipped `kernels/block16.py` (what `ops` dispatches) and the
tensor-core `kernels/block16_mma.py` (prepared, not yet dispatched), per layer shape and M, same process.

    python benchmarks/block16_decode.py --ms 1,2,4,8,16 --out block16_decode.json

Method as benchmarks/kernels.py (`sfcompile.lowering.bench`): one CUDA graph per implementation calling it on R
weight copies (R x dense bytes >= 4x the L2), median per call; every output checked against the dense product
(rows with a relative error over 2e-2 are reported, not timed). Both kernels autotune in their first call.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from functools import partial
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sfcompile.lowering import bench  # noqa: E402
from sfcompile.lowering.kernels.block16 import block16_matmul  # noqa: E402
from sfcompile.lowering.kernels.block16_mma import block16_mma  # noqa: E402
from sfcompile.lowering.pack import pack  # noqa: E402

IMPLS = {"block16": block16_matmul, "block16_mma": block16_mma}


def run(shapes, ms, log=print) -> list[dict]:
    rows = []
    for name, n, k in shapes:
        r = bench._copies(n * k * 2)
        dense = [bench._hardened((n, k), "block16", torch.bfloat16, "cuda", seed=i) for i in range(r)]
        packed = [pack(w, "block16", -1) for w in dense]
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            d_us = bench._graph_time([partial(torch.nn.functional.linear, x, w) for w in dense])[0]
            row = {"shape": name, "n": n, "k": k, "m": m, "dense_us": d_us}
            for impl, fn in IMPLS.items():
                calls = [partial(fn, x, p.data["tile_values"], p.data["row_ptr"], p.data["col_idx"], n, k)
                         for p in packed]
                us = bench.checked_us(f"{name} M={m} {impl}", calls, calls[0], x, packed[0], log)
                if us is not None:
                    row[f"{impl}_us"] = us
                    row[f"{impl} vs dense"] = d_us / us
            rows.append(row)
            log(json.dumps({key: (round(v, 3) if isinstance(v, float) else v) for key, v in row.items()}))
        del dense, packed
        torch.cuda.empty_cache()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ms", default="1,2,4,8,16")
    parser.add_argument("--shapes", default="all", help="'all' (the six layer shapes) or NxK,NxK,...")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/block16_decode.py needs a CUDA GPU")
    shapes = bench.LAYER_SHAPES if args.shapes == "all" else [
        (s, int(s.split("x")[0]), int(s.split("x")[1])) for s in args.shapes.split(",")]
    rows = run(shapes, [int(m) for m in args.ms.split(",")])
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    for impl in IMPLS:
        vals = [r[f"{impl} vs dense"] for r in rows if f"{impl} vs dense" in r]
        if vals:
            print(f"{impl}: median {statistics.median(vals):.3f}x dense (min {min(vals):.3f}, max {max(vals):.3f}, "
                  f"{len(vals)} of {len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
