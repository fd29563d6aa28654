"""Block-16 decode kernels against dense cuBLAS: the tensor-core `kernels/block16_mma.py` (what `ops` dispatches
for M <= 16 on sm_80+, bf16/fp16) and the tl.dot kernel of `kernels/block16.py`, per layer shape and M, same process.

    python benchmarks/block16_decode.py --ms 1,2,4,8,16 --out block16_decode.json
    python benchmarks/block16_decode.py --impls block16_mma,block16_mma_frag --ms 1,2,4,8,16 --out frag.json
    python benchmarks/block16_decode.py --sweep --ms 1,8,16 --out block16_sweep.json   # every launch config

``block16_mma_frag`` is `block16_mma(..., frag=True)` on the same weights with their tiles put in
`fragment_order` once, when the case is built (one 16-byte load per lane and tile instead of two 8-byte ones; an
opt-in layout, not what `ops` runs); it autotunes on its own. ``--impls`` picks which implementations run.

``--sweep`` times `block16_mma` with each (WARPS, TILES, SPLIT_K) of a grid wider than its autotune space, per
shape and M, and prints per config the median ratio to the best config of each row (what to keep in the space);
with ``--frag`` the fragment-order tiles instead.

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
from sfcompile.lowering.kernels.block16_mma import block16_mma, fragment_order  # noqa: E402
from sfcompile.lowering.pack import pack  # noqa: E402

# name -> (the matmul, whether it takes the tiles in fragment_order)
IMPLS = {"block16": (block16_matmul, False), "block16_mma": (block16_mma, False),
         "block16_mma_frag": (partial(block16_mma, frag=True), True)}


def _cases(shapes, ms, fragment: bool = False):
    """Per (shape, M): (name, n, k, m, x, packed weight copies, their tiles in fragment_order or None, dense cuBLAS
    microseconds), R copies of a random block-16 weight per shape (R x dense bytes >= 4x the L2; the dense copies
    are freed before the next shape). ``fragment``: convert each copy's tiles once here, outside the timing."""
    for name, n, k in shapes:
        r = bench._copies(n * k * 2)
        dense = [bench._hardened((n, k), "block16", torch.bfloat16, "cuda", seed=i) for i in range(r)]
        packed = [pack(w, "block16", -1) for w in dense]
        frag = [fragment_order(p.data["tile_values"]) for p in packed] if fragment else None
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            d_us = bench._graph_time([partial(torch.nn.functional.linear, x, w) for w in dense])[0]
            yield name, n, k, m, x, packed, frag, d_us
        del dense, packed, frag
        torch.cuda.empty_cache()


def _calls(fn, x, packed, n, k, *extra, tiles=None):
    """One call per weight copy; ``tiles``: per copy, the tile values to pass instead of the packed ones."""
    tiles = tiles or [p.data["tile_values"] for p in packed]
    return [partial(fn, x, tv, p.data["row_ptr"], p.data["col_idx"], n, k, *extra) for p, tv in zip(packed, tiles)]


def run(shapes, ms, impls=tuple(IMPLS), log=print) -> list[dict]:
    rows = []
    for name, n, k, m, x, packed, frag, d_us in _cases(shapes, ms, fragment=any(IMPLS[i][1] for i in impls)):
        row = {"shape": name, "n": n, "k": k, "m": m, "dense_us": d_us}
        for impl in impls:
            fn, takes_frag = IMPLS[impl]
            calls = _calls(fn, x, packed, n, k, tiles=frag if takes_frag else None)
            us = bench.checked_us(f"{name} M={m} {impl}", calls, calls[0], x, packed[0], log)
            if us is not None:
                row[f"{impl}_us"] = us
                row[f"{impl} vs dense"] = d_us / us
        rows.append(row)
        log(json.dumps({key: (round(v, 3) if isinstance(v, float) else v) for key, v in row.items()}))
    return rows


SWEEP_GRID = [{"WARPS": w, "TILES": t, "SPLIT_K": sk} for w in (1, 2, 4, 8) for t in (1, 2, 4)
              for sk in (1, 2, 4, 8, 16, 32)]


def sweep(shapes, ms, grid=SWEEP_GRID, frag: bool = False, log=print) -> list[dict]:
    """Each config of ``grid`` on each (shape, M): microseconds per call (None where the output is wrong);
    ``frag``: the tiles in fragment_order, ``block16_mma(..., frag=True)``."""
    rows = []
    fn = partial(block16_mma, frag=True) if frag else block16_mma
    for name, n, k, m, x, packed, frag_tiles, d_us in _cases(shapes, ms, fragment=frag):
        row = {"shape": name, "n": n, "k": k, "m": m, "dense_us": d_us, "configs": {}}
        for cfg in grid:
            calls = _calls(fn, x, packed, n, k, None, cfg, tiles=frag_tiles)
            label = ",".join(f"{key}={value}" for key, value in cfg.items())
            row["configs"][label] = bench.checked_us(f"{name} M={m} {label}", calls, calls[0], x, packed[0], log)
        best = min((v, c) for c, v in row["configs"].items() if v is not None)
        log(f"{name} M={m}: dense {d_us:.2f} us, best {best[1]} {best[0]:.2f} us ({d_us / best[0]:.3f}x)")
        rows.append(row)
    return rows


def sweep_summary(rows) -> list[tuple[str, float, float]]:
    """(config, median of best_us / config_us over rows, worst of it), best first."""
    out = []
    for key in rows[0]["configs"]:
        rel = []
        for row in rows:
            valid = [v for v in row["configs"].values() if v is not None]
            us = row["configs"][key]
            rel.append(min(valid) / us if us else 0.0)
        out.append((key, statistics.median(rel), min(rel)))
    return sorted(out, key=lambda t: -t[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ms", default="1,2,4,8,16")
    parser.add_argument("--shapes", default="all", help="'all' (the six layer shapes) or NxK,NxK,...")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--impls", default=",".join(IMPLS), help=f"which of {', '.join(IMPLS)} to time")
    parser.add_argument("--sweep", action="store_true", help="time block16_mma's launch configs instead")
    parser.add_argument("--frag", action="store_true", help="with --sweep: the fragment-order tiles (frag=True)")
    parser.add_argument("--grid", default="", help="with --sweep: these configs instead of SWEEP_GRID, "
                        "'WARPS=1,TILES=4,SPLIT_K=8,STREAM=1;...'")
    args = parser.parse_args()
    impls = [i for i in args.impls.split(",") if i]
    unknown = [i for i in impls if i not in IMPLS]
    if unknown or not impls:
        raise SystemExit(f"--impls: {', '.join(unknown) or 'none given'}; choose from {', '.join(IMPLS)}")
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/block16_decode.py needs a CUDA GPU")
    shapes = bench.LAYER_SHAPES if args.shapes == "all" else [
        (s, int(s.split("x")[0]), int(s.split("x")[1])) for s in args.shapes.split(",")]
    ms = [int(m) for m in args.ms.split(",")]
    if args.sweep:
        grid = bench.parse_configs(args.grid, flag="--grid") or SWEEP_GRID
        rows = sweep(shapes, ms, grid, frag=args.frag)
        if args.out:
            args.out.write_text(json.dumps(rows, indent=1))
        for mt, sel in (("M<=8", [r for r in rows if r["m"] <= 8]), ("M>8", [r for r in rows if r["m"] > 8])):
            if sel:
                print(f"{mt}: config, median and worst of (best config's time / this config's time) over rows")
                for key, med, worst in sweep_summary(sel)[:15]:
                    print(f"  {key}: {med:.3f} (worst {worst:.3f})")
        best = [r["dense_us"] / min(v for v in r["configs"].values() if v) for r in rows]
        print(f"best config per row: median {statistics.median(best):.3f}x dense")
        return 0
    rows = run(shapes, ms, impls)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    for impl in impls:
        vals = [r[f"{impl} vs dense"] for r in rows if f"{impl} vs dense" in r]
        if vals:
            print(f"{impl}: median {statistics.median(vals):.3f}x dense (min {min(vals):.3f}, max {max(vals):.3f}, "
                  f"{len(vals)} of {len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
