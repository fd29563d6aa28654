"""A fixed launch list for Nsight Compute: the sparse-tensor-core 2:4 decode kernel (``kernels/nm24_mma.py``)
at fixed configs next to dense cuBLAS on the same shapes, each launched a few times (no autotuning, so ncu
profiles exactly these). Each launch reads its own copy of W, and Nsight Compute flushes the caches before
each of its replay passes (its default ``--cache-control all``), so W comes from HBM as in decode.

    ncu --clock-control none --set full -k regex:"nm24_mma|gemv|gemm|nvjet" -o prof \
        python benchmarks/ncu_decode.py [--cases 12288x4096:1:8,1,8,4,...]

A case is ``NxK:M:WARPS_N,WARPS_K,CHUNKS,SPLIT_K``; each prints one line (shape, M, config) in launch order,
dense first, so the report's kernels can be matched to cases.
"""

import argparse

import torch

from sfcompile.lowering import bench
from sfcompile.lowering.kernels import nm24_mma
from sfcompile.lowering.pack import pack

DEFAULT = "12288x4096:1:8,1,8,4 12288x4096:8:8,1,8,4 12288x4096:16:8,1,8,4 4096x4096:1:4,1,8,8"


def parse(case: str):
    shape, m, cfg = case.split(":")
    n, k = (int(v) for v in shape.split("x"))
    return n, k, int(m), dict(zip(("WARPS_N", "WARPS_K", "CHUNKS", "SPLIT_K"), (int(v) for v in cfg.split(","))))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=DEFAULT, help="space-separated NxK:M:WARPS_N,WARPS_K,CHUNKS,SPLIT_K")
    ap.add_argument("--repeat", type=int, default=3, help="launches per kernel and case")
    args = ap.parse_args()
    for case in args.cases.split():
        n, k, m, cfg = parse(case)
        r = bench._copies(n * k * 2)
        dense = [bench._hardened((n, k), "2:4", torch.bfloat16, "cuda", seed=i) for i in range(r)]
        pws = [pack(w, "2:4", -1) for w in dense]
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        y = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
        for i in range(args.repeat):
            torch.nn.functional.linear(x, dense[i % r])
        torch.cuda.synchronize()
        print(f"dense {n}x{k} M={m}: {args.repeat} launches", flush=True)
        for i in range(args.repeat):
            d = pws[i % r].data
            nm24_mma.nm24_mma(x, d["values"], d["meta"], None, y, cfg)
        torch.cuda.synchronize()
        print(f"nm24_mma {n}x{k} M={m} {cfg}: {args.repeat} launches", flush=True)


if __name__ == "__main__":
    main()
