"""Decode launch-config sweep: every (variant, BLOCK_N, BLOCK_K, SPLIT_K, warps) of the 2:4 and block-16
decode kernels timed one by one against dense cuBLAS, plus a plain dense Triton GEMV with the same split-K
epilogue as a control (what this harness lets a Triton GEMV reach at all).

    python benchmarks/decode_sweep.py --out sweep.json [--ms 1,4,16] [--shapes 4096x4096,11008x4096] [--budget-s 400]
        [--kinds 2:4,2:4-candidate]

Why: the autotuned decode kernels ran at 0.75-1.4 TB/s of weight bytes where cuBLAS streams ~3.8 TB/s, whatever
the decompression (benchmarks/README.md). A program of one 4-warp block with one K block of loads in flight
keeps ~8 KB per SM in flight; HBM at ~1 us latency needs ~30 KB per SM. This sweep measures whether more
programs per SM (deep split-K, small blocks) and loads shaped like the packed bytes close that gap.

Method: ``sfcompile.lowering.bench`` (R weight copies per CUDA graph, do_bench medians of graph replays, dense
in the same process); every config's output is checked against the dense product on the first copy.
"""

import argparse
import json
import statistics
import time
from functools import partial

import torch
import triton
import triton.language as tl

from sfcompile.lowering import bench
from sfcompile.lowering.kernels import splitk
from sfcompile.lowering.kernels.block16 import block16_configs, block16_matmul
from sfcompile.lowering.kernels.nm24_decode import nm24_decode, nm24_decode_configs
from sfcompile.lowering.pack import pack


def nm24_space(m: int) -> list[tuple]:
    """(VARIANT, BLOCK_N, BLOCK_K, SPLIT_K, num_warps): the autotuner's space for this M bucket."""
    return [(c.kwargs["VARIANT"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.kwargs["SPLIT_K"], c.num_warps)
            for c in nm24_decode_configs(splitk.m_key(m))]


def block16_space(m: int) -> list[tuple]:
    """(VARIANT, TILES, SPLIT_K, num_warps, num_stages): the autotuner's space for this M bucket."""
    return [(c.kwargs["VARIANT"], c.kwargs["TILES"], c.kwargs["SPLIT_K"], c.num_warps, c.num_stages)
            for c in block16_configs(splitk.m_key(m))]


# candidates outside the autotune space, per M bucket: variant 6 (byte permute) in the CUDA-core configs
CANDIDATES = {
    1: [(6, 32, 128, 16, 4), (6, 64, 128, 8, 8), (6, 64, 128, 16, 8), (6, 32, 128, 32, 4), (6, 64, 64, 16, 8),
        (6, 32, 64, 32, 4), (6, 64, 64, 16, 4), (6, 32, 256, 8, 4), (6, 128, 64, 8, 8)],
    2: [(6, 32, 128, 16, 4), (6, 64, 128, 8, 8), (6, 32, 64, 32, 4), (6, 32, 128, 8, 4), (6, 64, 64, 16, 8)],
    4: [(6, 32, 64, 16, 8), (6, 16, 64, 32, 4), (6, 32, 128, 16, 8), (6, 16, 128, 16, 4)],
    8: [(6, 16, 64, 32, 4), (6, 32, 64, 16, 8), (6, 16, 128, 16, 8)],
    16: [(6, 16, 64, 32, 4), (6, 16, 64, 16, 8)],
}

# dense Triton GEMV control (M = 1): (BLOCK_N, BLOCK_K, SPLIT_K, num_warps)
DENSE = [(32, 128, 16, 4), (64, 128, 8, 4), (64, 128, 16, 8)]


@triton.jit
def _dense_gemv(x_ptr, w_ptr, out_ptr, ws_ptr, cnt_ptr, N, K, stride_wn,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
    """y = x @ W.T for one row of x; N % BLOCK_N == 0 and K % BLOCK_K == 0."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    per = (K // BLOCK_K + SPLIT_K - 1) // SPLIT_K * BLOCK_K
    k_lo = pid_k * per
    k_hi = tl.minimum(k_lo + per, K)
    acc = tl.full((BLOCK_N, BLOCK_K), 0.0, tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        w = tl.load(w_ptr + offs_n[:, None] * stride_wn + (k0 + offs_k)[None, :])
        x = tl.load(x_ptr + k0 + offs_k)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
    total = tl.sum(acc, axis=1)[None, :]
    offs_m = tl.arange(0, 1)
    splitk.store_tile(total, out_ptr, ws_ptr, cnt_ptr, offs_m, offs_n, (offs_n < N)[None, :], 1, N, N, pid_k,
                      pid_n, SPLIT_K)


def dense_gemv(x, w, cfg):
    bn, bk, sk, nw = cfg
    n, k = w.shape
    out = torch.empty(1, n, device=x.device, dtype=x.dtype)
    ws = splitk.workspace(1, n, x.device, sk)
    cnt = splitk.counters(x.device, n // 16)
    _dense_gemv[(n // bn, sk)](x, w, out, ws, cnt, n, k, w.stride(0), BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk,
                               num_warps=nw)
    return out


def nm24(x, pw, cfg):
    v, bn, bk, sk, nw = cfg
    out = torch.empty(x.shape[0], pw.n, device=x.device, dtype=x.dtype)
    return nm24_decode(x, pw.data["values"], pw.data["meta"], None, out,
                       config=dict(VARIANT=v, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk, num_warps=nw))


def block16(x, pw, cfg):
    v, t, sk, nw, ns = cfg
    d = pw.data
    return block16_matmul(x, d["tile_values"], d["row_ptr"], d["col_idx"], pw.n, pw.k,
                          config=dict(BLOCK_M=16 if v == 1 else splitk.m_key(x.shape[0]), TILES=t, SPLIT_K=sk,
                                      VARIANT=v, num_warps=nw, num_stages=ns))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ms", default="1,2,4,8,16")
    ap.add_argument("--shapes", default=",".join(f"{n}x{k}" for _, n, k in bench.LAYER_SHAPES))
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget-s", type=float, default=1e9)
    ap.add_argument("--kinds", default="2:4,2:4-candidate,block16,dense-triton",
                    help="which rows to time (comma-separated)")
    args = ap.parse_args()
    t0 = time.time()
    rows = []

    def record(**row):
        rows.append(row)
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=0)

    run(args, t0, record)
    table = best_table(rows)
    for r in table:
        print(f"best {r['n']}x{r['k']} M={r['m']} {r['kind']:12s} {r['cfg']} {r['us']:.1f} us {r['ratio']:.2f}x")
    for kind in ("2:4", "2:4-candidate", "block16", "dense-triton"):
        ratios = [r["ratio"] for r in table if r["kind"] == kind]
        if ratios:
            print(f"median {kind}: {statistics.median(ratios):.2f}x over {len(ratios)} (shape, M)", flush=True)


def run(args, t0, record):
    for shape in args.shapes.split(","):
        n, k = (int(v) for v in shape.split("x"))
        r = bench._copies(n * k * 2)
        dense = [bench._hardened((n, k), "2:4", torch.bfloat16, "cuda", seed=i) for i in range(r)]
        p24 = [pack(w, "2:4", -1) for w in dense]
        wb = [bench._hardened((n, k), "block16", torch.bfloat16, "cuda", seed=i) for i in range(r)]
        pb = [pack(w, "block16", -1) for w in wb]
        for m in (int(v) for v in args.ms.split(",")):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            d_us = bench._graph_time([partial(torch.nn.functional.linear, x, w) for w in dense])[0]
            print(f"{shape} M={m} dense {d_us:.1f} us", flush=True)
            cases = [("2:4", cfg, p24, dense[0], nm24) for cfg in nm24_space(m)]
            # candidates outside the autotune space ("2:4-candidate" rows) while they are being tried (variant 5
            # was one in run 8, and then replaced variant 2 in the space)
            cases += [("2:4-candidate", cfg, p24, dense[0], nm24) for cfg in CANDIDATES.get(splitk.m_key(m), [])]
            cases += [("block16", cfg, pb, wb[0], block16) for cfg in block16_space(m)]
            if m == 1:
                cases += [("dense-triton", cfg, dense, dense[0], lambda x_, w_, c: dense_gemv(x_, w_, c))
                          for cfg in DENSE]
            kinds = set(args.kinds.split(","))
            for kind, cfg, weights, w0, fn in (c for c in cases if c[0] in kinds):
                if time.time() - t0 > args.budget_s:
                    print("budget reached", flush=True)
                    return
                try:
                    y = fn(x, weights[0], cfg)
                    ref = x.double() @ w0.double().T
                    err = ((y.double() - ref).norm() / ref.norm()).item()
                    us = bench._graph_time([partial(fn, x, w, cfg) for w in weights])[0] if err < 2e-2 else None
                except Exception as e:  # noqa: BLE001 - a config that fails to compile is a result too
                    err, us = None, None
                    print(f"  {kind} {cfg} failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
                ratio = d_us / us if us else None
                record(n=n, k=k, m=m, kind=kind, cfg=list(cfg), us=us, dense_us=d_us, ratio=ratio, err=err)
                if us:
                    print(f"  {kind:12s} {str(cfg):26s} {us:7.1f} us  {ratio:.2f}x  err {err:.1e}", flush=True)


def best_table(rows: list[dict]) -> list[dict]:
    """Per (shape, M, kind): the fastest config, i.e. what the autotuner over the same space would pick."""
    best = {}
    for r in rows:
        key = (r["n"], r["k"], r["m"], r["kind"])
        if r["us"] and (key not in best or r["us"] < best[key]["us"]):
            best[key] = r
    return [best[k] for k in sorted(best)]


if __name__ == "__main__":
    main()
