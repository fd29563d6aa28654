"""What the compiler makes of each kernel config, without a GPU: compiled for sm_90 on this machine
(`sfcompile.lowering.kernels.offline`), then counted in the SASS — global load widths, shared loads, tensor-core
instructions, registers, spills. A static view for the kernel work between device sessions (a decode kernel
is bound by how its weight bytes are loaded); it times nothing, so it says where to look, not what is faster.

    python benchmarks/sass_summary.py                      # the decode kernels' autotune spaces at 1 and 16 rows
    python benchmarks/sass_summary.py --kernels nm24_mma --rows 1 --out sass.jsonl
    python benchmarks/sass_summary.py --kernels block16_mma,block16_mma_frag

``block16_mma_frag`` is block16_mma with its opt-in fragment-order tiles (``FRAG`` 1, `block16_mma(frag=True)`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sfcompile.lowering.kernels import offline


def _kernels() -> dict:
    """offline.decode_kernels(), plus block16_mma reading its tiles in fragment order (FRAG 1): not a kernel
    that ``ops`` runs, so it is listed here beside the one it would replace rather than in that table."""
    kernels = offline.decode_kernels()
    kernel, flags, space = kernels["block16_mma"]
    return {**kernels, "block16_mma_frag": (kernel, {**flags, "FRAG": 1}, space)}


KERNELS = _kernels()


def summary(name: str, rows: int, config) -> dict:
    kernel, flags, _ = KERNELS[name]
    compiled = offline.compile_for(kernel, config, flags)
    ops = offline.opcode_counts(offline.sass(compiled))
    pick = lambda *prefixes: {op: n for op, n in sorted(ops.items()) if op.startswith(prefixes)}  # noqa: E731
    return {"kernel": name, "rows": rows, "config": config.kwargs, "num_warps": config.num_warps,
            "num_stages": config.num_stages, **offline.resources(compiled),
            "instructions": sum(ops.values()), "global_loads": pick("LDG", "LDGSTS"), "shared_loads": pick("LDS"),
            "tensor_core": pick("HMMA", "HGMMA"), "local": pick("LDL", "STL")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernels", default=",".join(KERNELS))
    ap.add_argument("--rows", default="1,16", help="the M buckets whose autotune spaces are listed")
    ap.add_argument("--out", type=Path, default=None, help="also append one JSON line per config here")
    args = ap.parse_args()
    for name in args.kernels.split(","):
        if name not in KERNELS:
            raise SystemExit(f"--kernels: {name!r} is not one of {', '.join(KERNELS)}")
        for rows in map(int, args.rows.split(",")):
            for config in KERNELS[name][2](rows):
                row = summary(name, rows, config)
                print(f"{name:16s} M<={rows:<3d} regs {row['registers']:3d} spill {row['spill_bytes']:3d} "
                      f"smem {row['shared_bytes']:6d} instr {row['instructions']:5d} "
                      f"LDG {row['global_loads']} MMA {row['tensor_core']} {row['config']}")
                if args.out:
                    with args.out.open("a") as f:
                        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
