"""How fast can a Triton kernel stream a decode matmul's packed bytes on this GPU, with no math at all?

The decode kernels (`kernels/nm24_mma.py`, `kernels/block16_mma.py`) stream their packed weights at ~2.3-2.8 TB/s
where cuBLAS streams dense ones at ~3.1-3.7 (benchmarks/README.md, runs 12-17). This probe separates the load
structure from the rest: it reads a buffer of exactly the packed bytes of a layer shape (2:4: values + 2-bit
positions = 1.125 K bytes per row; block-16 at 50%: K bytes per row) and XORs it into a register, nothing else,
with two load structures:

- ``plain``: per-thread vector loads of a (ROWS, BK) block of 32-bit words per step (the decode kernels' kind);
- ``tma``: the same blocks through a host-side tensor descriptor (TMA into shared memory), pipelined ``STAGES``
  steps deep by Triton's loop pipeliner, so bytes in flight do not cost registers.

Each config's time is set against dense cuBLAS (`F.linear`, M = 1) on the dense weight of the same shape, timed in
the same process: "ratio" = dense time / streaming time is the best a decode kernel with that load structure could
reach against dense (the byte ceiling is 1.78x for 2:4, ~2x for block-16).

    python benchmarks/stream_probe.py --out stream_probe.json
    python benchmarks/stream_probe.py --quick            # a few configs per structure

Method: `sfcompile.lowering.bench._graph_time` -- one CUDA graph calling the kernel on R buffer copies
(R x dense bytes >= 4x the L2), median per call.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from functools import partial
from pathlib import Path

import torch
import triton
import triton.language as tl

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sfcompile.lowering import bench  # noqa: E402


@triton.jit
def _stream_plain(src, out, N, KW, ROWS: tl.constexpr, BK: tl.constexpr, SPLIT: tl.constexpr,
                  HINT: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    per = tl.cdiv(tl.cdiv(KW, SPLIT), BK) * BK
    rows = pid_n * ROWS + tl.arange(0, ROWS)
    acc = tl.zeros((ROWS, BK), tl.int32)
    lo = pid_k * per
    hi = tl.minimum(lo + per, KW)
    for k0 in range(lo, hi, BK):
        cols = k0 + tl.arange(0, BK)
        ptrs = src + rows[:, None].to(tl.int64) * KW + cols[None, :]
        if HINT:
            v = tl.load(ptrs, mask=(cols < hi)[None, :] & (rows < N)[:, None], other=0, eviction_policy="evict_first")
        else:
            v = tl.load(ptrs, mask=(cols < hi)[None, :] & (rows < N)[:, None], other=0)
        acc ^= v
    tl.store(out + pid_n * SPLIT + pid_k, tl.xor_sum(tl.xor_sum(acc, 1), 0))


@triton.jit
def _stream_tma(desc, out, KW, ROWS: tl.constexpr, BK: tl.constexpr, SPLIT: tl.constexpr, STAGES: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    per = tl.cdiv(tl.cdiv(KW, SPLIT), BK) * BK
    acc = tl.zeros((ROWS, BK), tl.int32)
    lo = pid_k * per
    hi = tl.minimum(lo + per, KW)
    for k0 in tl.range(lo, hi, BK, num_stages=STAGES):
        acc ^= desc.load([pid_n * ROWS, k0])       # (TMA fills past the tensor's edge with zeros)
    tl.store(out + pid_n * SPLIT + pid_k, tl.xor_sum(tl.xor_sum(acc, 1), 0))


def _words(pattern: str, k: int) -> int:
    """32-bit words per row of the packed weight."""
    return (k * 9 // 8) // 4 if pattern == "2:4" else k // 4


def _plain(buf, out, rows, bk, split, warps, hint):
    n, kw = buf.shape
    _stream_plain[(triton.cdiv(n, rows), split)](buf, out, n, kw, ROWS=rows, BK=bk, SPLIT=split, HINT=hint,
                                                 num_warps=warps)


def _tma(desc, out, n, kw, rows, bk, split, warps, stages):
    _stream_tma[(triton.cdiv(n, rows), split)](desc, out, kw, ROWS=rows, BK=bk, SPLIT=split, STAGES=stages,
                                               num_warps=warps, num_stages=stages)


def configs(quick: bool):
    if quick:
        plain = [(16, 128, 8, 4, 0), (32, 64, 8, 4, 1), (64, 64, 4, 4, 0)]
        tma = [(32, 128, 4, 4, 4), (64, 64, 4, 4, 4), (16, 256, 8, 4, 3)]
        return plain, tma
    plain = [c for c in itertools.product((16, 32, 64), (64, 128, 256), (2, 4, 8), (4, 8), (0,))
             if c[0] * c[1] <= 8192]
    tma = [c for c in itertools.product((16, 32, 64, 128), (64, 128, 256), (2, 4, 8), (4,), (2, 3, 4))
           if c[0] * c[1] <= 8192 and c[0] * c[1] * 4 * c[4] <= 160 * 1024]
    return plain, tma


def run(shapes, pattern, quick, log=print) -> list[dict]:
    from triton.tools.tensor_descriptor import TensorDescriptor

    plain_cfgs, tma_cfgs = configs(quick)
    rows_out = []
    for name, n, k in shapes:
        r = bench._copies(n * k * 2)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        dense = [w.clone() for _ in range(r)]
        d_us = bench._graph_time([partial(torch.nn.functional.linear, x, d) for d in dense])[0]
        del dense, w
        kw = _words(pattern, k)
        bufs = [torch.randint(-2**30, 2**30, (n, kw), device="cuda", dtype=torch.int32) for _ in range(r)]
        out = torch.empty(4096 * 64, device="cuda", dtype=torch.int32)
        packed_bytes = n * kw * 4
        log(f"{name}: dense cuBLAS {d_us:.2f} us ({n * k * 2 / d_us / 1e6:.2f} TB/s); "
            f"{pattern} bytes {packed_bytes / (n * k * 2):.3f}x dense")
        best = {}
        for kind, cfgs in (("plain", plain_cfgs), ("tma", tma_cfgs)):
            for cfg in cfgs:
                if kind == "plain":
                    rows, bk, split, warps, hint = cfg
                    fns = [partial(_plain, b, out, rows, bk, split, warps, hint) for b in bufs]
                else:
                    rows, bk, split, warps, stages = cfg
                    descs = [TensorDescriptor.from_tensor(b, [rows, bk]) for b in bufs]
                    fns = [partial(_tma, d, out, n, kw, rows, bk, split, warps, stages) for d in descs]
                try:
                    us = bench._graph_time(fns)[0]
                except Exception as e:   # noqa: BLE001 -- a config the compiler refuses is reported, not fatal
                    log(f"  {kind} {cfg}: failed: {type(e).__name__}: {str(e)[:120]}")
                    continue
                row = {"shape": name, "pattern": pattern, "kind": kind, "config": list(cfg), "us": us,
                       "dense_us": d_us, "ratio": d_us / us, "tb_s": packed_bytes / us / 1e6,
                       "dense_tb_s": n * k * 2 / d_us / 1e6}
                rows_out.append(row)
                if kind not in best or us < best[kind]["us"]:
                    best[kind] = row
        for kind, row in best.items():
            log(f"  best {kind:5s} {row['config']}: {row['us']:.2f} us, {row['tb_s']:.2f} TB/s, "
                f"ratio {row['ratio']:.2f}x")
        del bufs
        torch.cuda.empty_cache()
    return rows_out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default="all", help="'all' (the six layer shapes of the kernel table) or NxK,NxK,...")
    p.add_argument("--pattern", choices=("2:4", "block16"), default="2:4")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out")
    a = p.parse_args(argv)
    dims = [(n, k) for _, n, k in bench.LAYER_SHAPES] if a.shapes == "all" else [
        tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]
    shapes = [(f"{n}x{k}", n, k) for n, k in dims]
    rows = run(shapes, a.pattern, a.quick)
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
