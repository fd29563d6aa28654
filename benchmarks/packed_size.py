"""Bytes on disk of a hardened model saved compressed (``sfcompile.save(..., packed=True)``) against the same
model saved dense, and the round trip: every tensor equal after ``sfcompile.load``, perplexity unchanged.

Input: a folder written by ``sfcompile prune`` / ``sfcompile train`` (the README's first command writes one):

    python benchmarks/packed_size.py out/smollm2-2of4 --ppl-windows 8
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import sfcompile
from sfcompile.eval.perplexity import perplexity


def weight_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.suffix == ".safetensors")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", help="a hardened model folder (has sparsity.json)")
    ap.add_argument("--out", default=None, help="where to write the packed folder (default: a temporary one)")
    ap.add_argument("--ppl-windows", type=int, default=8, help="wiki windows for the perplexity check (0: skip)")
    args = ap.parse_args()
    src = Path(args.folder)
    model, tok = sfcompile.load(str(src))
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp()) / "packed"
    start = time.perf_counter()
    sfcompile.save(model, tok, out, packed=True)
    save_s = time.perf_counter() - start
    start = time.perf_counter()
    again, _ = sfcompile.load(str(out))
    load_s = time.perf_counter() - start
    before, after = model.state_dict(), again.state_dict()
    sites = set(model.sfcompile_manifest["sites"])
    params = dict(model.named_parameters())
    row = {
        "folder": str(src),
        "dense_bytes": weight_bytes(src),
        "packed_bytes": weight_bytes(out),
        "site_share": sum(params[n].numel() * params[n].element_size() for n in sites)
        / sum(p.numel() * p.element_size() for p in model.parameters()),
        "dtype": str(next(iter(params.values())).dtype),
        "save_s": round(save_s, 2),
        "load_s": round(load_s, 2),
        "tensors_equal": before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before),
    }
    row["ratio"] = row["packed_bytes"] / row["dense_bytes"]
    if args.ppl_windows:
        row["ppl_before"] = perplexity(model, tok, "wiki", max_windows=args.ppl_windows)
        row["ppl_after"] = perplexity(again, tok, "wiki", max_windows=args.ppl_windows)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
