"""Decode kernel variants against dense cuBLAS, per layer shape and M, one variant (autotuned over its own
configs) per column: which decompression wins where. Also block-16 prefill (Triton unpack + cuBLAS).

    python benchmarks/kernel_variants.py --ms 1,2,4,8,16 --out results.json [--budget-s 200]

Method: ``sfcompile.lowering.bench`` (R weight copies per CUDA graph so weights stream from HBM, do_bench
medians of graph replays, dense in the same process). Rows are written to ``--out`` as they are measured, so
a run stopped by its time budget keeps what it measured.
"""

import argparse
import json
import time
from functools import partial

import torch

from sfcompile.lowering import bench, ops
from sfcompile.lowering.kernels.block16 import block16_matmul
from sfcompile.lowering.kernels.nm24_decode import nm24_decode
from sfcompile.lowering.pack import pack

NM24 = {"select": (4,), "tensorcore": (5,), "permute": (6,), "auto": None}
BLOCK16 = {"dot": (1,), "cudacore": (2,), "auto": None}


def _nm24(x, pw, variants):
    out = torch.empty(x.shape[0], pw.n, device=x.device, dtype=x.dtype)
    return nm24_decode(x, pw.data["values"], pw.data["meta"], None, out, variants=variants)


def _block16(x, pw, variants):
    d = pw.data
    return block16_matmul(x, d["tile_values"], d["row_ptr"], d["col_idx"], pw.n, pw.k, variants=variants)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ms", default="1,2,4,8,16")
    ap.add_argument("--prefill-ms", default="2048")
    ap.add_argument("--shapes", default="")
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget-s", type=float, default=1e9)
    args = ap.parse_args()
    t0 = time.time()
    ms = [int(v) for v in args.ms.split(",") if v]
    pms = [int(v) for v in args.prefill_ms.split(",") if v]
    shapes = [s for s in bench.LAYER_SHAPES if not args.shapes or f"{s[1]}x{s[2]}" in args.shapes.split(",")]
    rows = []
    ceil = bench.ceilings()
    print(f"copy {ceil['copy_bytes_per_s'] / 1e12:.2f} TB/s, GEMM {ceil['bf16_gemm_flops'] / 1e12:.0f} TFLOP/s",
          flush=True)

    def record(**row):
        rows.append(row)
        with open(args.out, "w") as f:
            json.dump({"ceilings": ceil, "rows": rows, "tuned": bench.tuned_configs()}, f, indent=1)

    for name, n, k in shapes:
        if time.time() - t0 > args.budget_s:
            print("budget reached", flush=True)
            break
        r = bench._copies(n * k * 2)
        dense = [bench._hardened((n, k), "2:4", torch.bfloat16, "cuda", seed=i) for i in range(r)]
        p24 = [pack(w, "2:4", -1) for w in dense]
        pb = [pack(bench._hardened((n, k), "block16", torch.bfloat16, "cuda", seed=i), "block16", -1)
              for i in range(r)]
        for m in ms + pms:
            if time.time() - t0 > args.budget_s:
                break
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            d_us = bench._graph_time([partial(torch.nn.functional.linear, x, w) for w in dense])[0]
            line = [f"{name} M={m} dense {d_us:.1f}us"]
            impls = []
            if m <= 16:
                impls += [("2:4", v, p24, partial(_nm24, variants=vs)) for v, vs in NM24.items()]
                impls += [("block16", v, pb, partial(_block16, variants=vs)) for v, vs in BLOCK16.items()]
                impls += [("2:4", "cuSPARSELt", p24, lambda x_, pw: ops.cslt_linear(x_, pw.data["values"],
                                                                                   pw.data["meta"]))]
            else:
                impls += [("block16", "unpack+cuBLAS", pb, lambda x_, pw: pw.linear(x_))]
                impls += [("2:4", "cuSPARSELt", p24, lambda x_, pw: pw.linear(x_))]
            for pat, impl, pws, fn in impls:
                try:
                    us = bench._graph_time([partial(fn, x, pw) for pw in pws])
                    err = bench._rel_error(fn(x, pws[0]), x, pws[0])
                except ValueError as e:  # no config of this variant for this many rows (by design)
                    if "no " in str(e) and "config of variants" in str(e):
                        continue
                    raise
                except Exception as e:  # a failing variant is reported, the sweep goes on
                    print(f"  {name} M={m} {pat} {impl}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
                    continue
                record(shape=name, n=n, k=k, m=m, pattern=pat, impl=impl, us=us[0], q20=us[1], q80=us[2],
                       dense_us=d_us, ratio=d_us / us[0], rel_err=err)
                line.append(f"{pat}/{impl} x{d_us / us[0]:.2f}" + ("" if err < 2e-2 else f" WRONG({err:.2g})"))
            print(" | ".join(line), flush=True)
        del dense, p24, pb
        ops.clear_cslt_cache()
        torch.cuda.empty_cache()
    print(f"done in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
