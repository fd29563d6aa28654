"""The sparse-tensor-core 2:4 decode kernel (``kernels/nm24_mma.py``) on this GPU: its products checked, then
every config of its autotune space timed against dense cuBLAS and the autotuned CUDA-core decode kernel
(``kernels/nm24_decode.py``), same process, same CUDA-graph harness as the kernel table
(``sfcompile.lowering.bench``: R weight copies per graph, do_bench medians of replays).

    python benchmarks/mma_decode.py --out mma.json [--ms 1,2,4,8,16] [--shapes all|4096x4096,...] [--budget-s 400]
        [--no-decode] [--candidates 'WARPS_N=8,WARPS_K=1,CHUNKS=4,SPLIT_K=4,maxnreg=64;...']

Every timed config's output is checked against the fp64 product on its first weight copy; a wrong one is
reported and not timed.
"""

import argparse
import json
import statistics
import time
from functools import partial

import torch

from sfcompile.lowering import bench
from sfcompile.lowering.kernels import nm24_mma, splitk
from sfcompile.lowering.kernels.nm24_decode import nm24_decode
from sfcompile.lowering.pack import pack


def _rel_err(y, x, pw):
    ref = x.double() @ pw.unpack_nk().double().T
    return ((y.double() - ref).abs().max() / ref.abs().max()).item()


def check(log) -> float:
    """Max relative error of fixed configs (bf16 and fp16, odd M and N, bias-free) against the fp64 product."""
    errs = []
    for dtype in (torch.bfloat16, torch.float16):
        for m, n, k, cfg in [(1, 64, 128, (4, 1, 4, 1)), (5, 96, 256, (2, 2, 4, 2)), (16, 128, 512, (4, 1, 8, 4)),
                             (9, 40, 96, (1, 2, 4, 1)), (3, 4096, 4096, (2, 2, 4, 8)), (9, 96, 480, (1, 1, 4, 2)),
                             (16, 4096, 4096, (4, 1, 8, 4)), (1, 4096, 11008, (4, 1, 4, 8))]:
            pw = pack(bench._hardened((n, k), "2:4", dtype, "cuda", seed=m), "2:4", -1)
            x = torch.randn(m, k, device="cuda", dtype=dtype)
            y = torch.empty(m, n, device="cuda", dtype=dtype)
            config = dict(zip(("WARPS_N", "WARPS_K", "CHUNKS", "SPLIT_K"), cfg))
            nm24_mma.nm24_mma(x, pw.data["values"], pw.data["meta"], None, y, config)
            errs.append(_rel_err(y, x, pw))
    log(f"check: max rel err {max(errs):.3g} over {len(errs)} cases")
    return max(errs)


def sweep(shapes, ms, budget_s, log, candidates=(), with_decode=True, on_row=None) -> list[dict]:
    """Time every (shape, M); ``on_row(rows)`` after each row (the caller saves them: a run stopped at its time
    limit keeps what it measured)."""
    rows = []
    t_end = time.time() + budget_s
    for name, n, k in shapes:
        r = bench._copies(n * k * 2)
        dense = [bench._hardened((n, k), "2:4", torch.bfloat16, "cuda", seed=i) for i in range(r)]
        pws = [pack(w, "2:4", -1) for w in dense]
        for m in ms:
            if time.time() > t_end:
                log("budget spent; stopping")
                return rows
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            outs = [torch.empty(m, n, device="cuda", dtype=torch.bfloat16) for _ in range(r)]
            d_us = bench._graph_time([partial(torch.nn.functional.linear, x, w) for w in dense])[0]
            row = {"shape": name, "n": n, "k": k, "m": m, "dense_us": d_us, "mma": []}
            if with_decode:
                dec = [partial(nm24_decode, x, pw.data["values"], pw.data["meta"], None, o)
                       for pw, o in zip(pws, outs)]
                dec_us = bench._graph_time(dec)[0]
                row.update(decode_us=dec_us, decode_ratio=d_us / dec_us)
            best = None
            space = [{key: c.kwargs[key] for key in nm24_mma.CONFIG_KEYS}
                     for c in nm24_mma.nm24_mma_configs(splitk.m_key(m))]
            for cfg in space + [c for c in candidates if c not in space]:
                fns = [partial(nm24_mma.nm24_mma, x, pw.data["values"], pw.data["meta"], None, o, cfg)
                       for pw, o in zip(pws, outs)]
                try:
                    fns[0]()
                    err = _rel_err(outs[0], x, pws[0])
                    if not err < 2e-2:
                        log(f"{name} M={m} {cfg}: WRONG, rel err {err:.3g}")
                        continue
                    us = bench._graph_time(fns)[0]
                except Exception as e:
                    log(f"{name} M={m} {cfg}: FAILED {type(e).__name__}: {str(e)[:200]}")
                    continue
                row["mma"].append({**cfg, "us": us, "ratio": d_us / us})
                if best is None or us < best["us"]:
                    best = {**cfg, "us": us, "ratio": d_us / us}
            auto = [partial(nm24_mma.nm24_mma, x, pw.data["values"], pw.data["meta"], None, o)
                    for pw, o in zip(pws, outs)]
            try:
                row["mma_auto_us"] = bench._graph_time(auto)[0]
                row["mma_auto_ratio"] = d_us / row["mma_auto_us"]
                auto[0]()
                row["mma_auto_err"] = _rel_err(outs[0], x, pws[0])
            except Exception as e:
                log(f"{name} M={m} autotuned: FAILED {type(e).__name__}: {str(e)[:200]}")
            row["best"] = best
            rows.append(row)
            if on_row is not None:
                on_row(rows)
            best_txt = "-" if best is None else f"x{best['ratio']:.2f} {best}"
            log(f"{name} M={m}: dense {d_us:.1f}us | decode kernel x{row.get('decode_ratio', float('nan')):.2f}"
                f" | mma best {best_txt} | mma autotuned x{row.get('mma_auto_ratio', float('nan')):.2f}")
        del dense, pws
        torch.cuda.empty_cache()
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--ms", default="1,2,4,8,16")
    parser.add_argument("--shapes", default="all")
    parser.add_argument("--budget-s", type=float, default=400)
    parser.add_argument("--check-only", action="store_true")
    parser.add_argument("--candidates", default="",
                        help="configs to time besides the autotune space, ';'-separated KEY=VALUE lists, e.g. "
                             "'WARPS_N=8,WARPS_K=1,CHUNKS=4,SPLIT_K=4,maxnreg=64'")
    parser.add_argument("--no-decode", action="store_true",
                        help="skip the CUDA-core decode kernel (its autotuning takes sweep time)")
    args = parser.parse_args()
    log = partial(print, flush=True)

    def save():
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)

    result = {"check_max_rel_err": check(log)}
    if not result["check_max_rel_err"] < 2e-2:
        log("wrong products: not timing")
    elif not args.check_only:
        shapes = bench.LAYER_SHAPES if args.shapes == "all" else [
            (s, *map(int, s.split("x"))) for s in args.shapes.split(",")]
        ms = [int(v) for v in args.ms.split(",")]
        result["rows"] = []

        def on_row(rows):
            result["rows"] = rows
            save()

        candidates = bench.parse_configs(args.candidates, nm24_mma.CONFIG_DEFAULTS)
        result["rows"] = sweep(shapes, ms, args.budget_s, log, candidates, with_decode=not args.no_decode,
                               on_row=on_row)
        ratios = [r["best"]["ratio"] for r in result["rows"] if r.get("best")]
        if ratios:
            dec = [r["decode_ratio"] for r in result["rows"] if "decode_ratio" in r]
            log(f"median best-config ratio over {len(ratios)} (shape, M): {statistics.median(ratios):.2f}x"
                + (f"; decode kernel: {statistics.median(dec):.2f}x" if dec else ""))
    save()


if __name__ == "__main__":
    main()
