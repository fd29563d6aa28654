"""Kernel benchmarks: dense cuBLAS vs cuSPARSELt vs sfcompile's Triton kernels, per layer shape and M.

Method (see /work/.library/device/METHOD.md): every implementation runs inside one CUDA graph that calls it
on R different weight copies (R · dense bytes >= 4x the 60 MB L2), so the numbers are HBM-bound like a real
decode step rather than L2-resident, and free of launch overhead; ``triton.testing.do_bench`` times graph
replays (median and 20/80% quantiles) and we divide by R. Dense and sparse run in the same process on the
same inputs; ratios are dense time / sparse time measured in this run. Ceilings come from a device copy and
a large dense GEMM measured at the start of the run.

>>> rows = kernel_table(LAYER_SHAPES, ms=[1, 16, 2048], patterns=["2:4", "block16"])
>>> print(markdown(rows))
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from functools import partial

import torch

__all__ = ["LAYER_SHAPES", "MOE_SHAPES", "kernel_table", "moe_table", "markdown", "summary", "ceilings"]

# (name, N, K): the distinct linear layer shapes of LLaMA-2-7B and Qwen3-8B (y = x @ W.T, W is N x K).
LAYER_SHAPES = [
    ("llama2-7b qkvo / qwen3-8b q,o", 4096, 4096),
    ("llama2-7b gate,up", 11008, 4096),
    ("llama2-7b down", 4096, 11008),
    ("qwen3-8b k,v", 1024, 4096),
    ("qwen3-8b gate,up", 12288, 4096),
    ("qwen3-8b down", 4096, 12288),
]
# (name, E, N, K): MoE expert projections (Qwen3-30B-A3B-like gate_up and down).
MOE_SHAPES = [("moe gate_up E=128", 128, 1536, 2048), ("moe down E=128", 128, 2048, 768)]

L2_BYTES = 60 * 2**20   # H200: 60 MB


@dataclass
class Row:
    shape: str
    n: int
    k: int
    m: int
    pattern: str
    impl: str
    us: float
    us_q20: float
    us_q80: float
    dense_us: float
    ratio: float            # dense_us / us (measured in this run)
    byte_ceiling: float     # dense bytes / this format's bytes: the best ratio when bound by memory
    floor_us: float         # max(bytes / copy bandwidth, flops / dense GEMM rate) for this format
    gbps: float             # bytes moved / us


def ceilings(device="cuda") -> dict:
    """Measured device-copy bandwidth (bytes/s, read + write) and dense bf16 GEMM rate (FLOP/s)."""
    import triton

    src = torch.empty(2**30 // 2, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    t = triton.testing.do_bench(partial(dst.copy_, src), warmup=10, rep=50, return_mode="median") * 1e-3
    bw = 2 * src.numel() * 2 / t
    src = dst = None
    x = torch.randn(8192, 8192, dtype=torch.bfloat16, device=device)
    y = torch.randn(8192, 8192, dtype=torch.bfloat16, device=device)
    t = triton.testing.do_bench(partial(torch.mm, x, y), warmup=10, rep=50, return_mode="median") * 1e-3
    return {"copy_bytes_per_s": bw, "bf16_gemm_flops": 2 * 8192**3 / t}


def _hardened(shape, pattern: str, dtype, device, seed=0):
    from sfcompile.patterns import parse_pattern

    g = torch.Generator(device=device).manual_seed(seed)
    w = torch.randn(shape, generator=g, device=device, dtype=torch.float32)
    mask = parse_pattern(pattern).project(torch.rand(shape, generator=g, device=device), -1)
    return (w * mask).to(dtype)


def _graph_time(fns, quantiles=(0.5, 0.2, 0.8)) -> tuple[float, float, float]:
    """Median, q20, q80 microseconds of one call, from a CUDA graph calling every fn once."""
    import triton

    for f in fns:          # warm up: autotuning, cuSPARSELt compression and alg search happen here
        f()
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for f in fns:
            f()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for f in fns:
            f()
    torch.cuda.synchronize()
    q = triton.testing.do_bench(graph.replay, warmup=10, rep=60, quantiles=list(quantiles))
    return tuple(v * 1e3 / len(fns) for v in q)


def _copies(dense_bytes: int) -> int:
    return max(2, min(48, math.ceil(4 * L2_BYTES / dense_bytes)))


def _bytes(pattern: str | None, n, k, m, elt=2) -> float:
    act = (m * k + m * n) * elt
    if pattern is None:
        return n * k * elt + act
    if pattern == "2:4":
        return n * k * elt / 2 + n * k / 8 + act
    density = float(pattern.split(":")[1]) if ":" in pattern else 0.5
    return density * n * k * (elt + 4 / 256) + n / 16 * 4 + act     # tiles + col_idx + row_ptr


def kernel_table(shapes=LAYER_SHAPES, ms=(1, 2, 4, 8, 16, 2048, 4096), patterns=("2:4", "block16"),
                 dtype=torch.bfloat16, with_cslt=True, log=print) -> list[Row]:
    """Time dense cuBLAS, sfcompile's ops and (for 2:4) cuSPARSELt on every (shape, M).

    Args:
        shapes: (name, N, K) triples. ms: row counts of x. patterns: "2:4" and/or "block16[:density]".
        with_cslt: also time cuSPARSELt (2:4 only), through ``ops.cslt_linear``.

    Returns:
        One :class:`Row` per (shape, M, implementation); the dense rows have ratio 1.
    """
    from sfcompile.lowering.pack import pack

    ceil = ceilings()
    log(f"measured: copy {ceil['copy_bytes_per_s'] / 1e12:.2f} TB/s, "
        f"bf16 GEMM {ceil['bf16_gemm_flops'] / 1e12:.0f} TFLOP/s")
    rows: list[Row] = []
    dev = "cuda"
    for name, n, k in shapes:
        r = _copies(n * k * 2)
        dense = [_hardened((n, k), patterns[0], dtype, dev, seed=i) for i in range(r)]
        packed = {p: [pack(_hardened((n, k), p, dtype, dev, seed=i), p, -1) for i in range(r)]
                  for p in patterns}
        for m in ms:
            rows += _shape_rows(name, n, k, m, dense, packed, ceil, dtype, with_cslt, log)
        del dense, packed
        torch.cuda.empty_cache()
    return rows


def _shape_rows(name, n, k, m, dense, packed, ceil, dtype, with_cslt, log) -> list[Row]:
    from sfcompile.lowering import ops

    x = torch.randn(m, k, device="cuda", dtype=dtype)
    flops = 2 * m * n * k

    def floor(pattern, sparse_flops=False):
        b = _bytes(pattern, n, k, m)
        f = flops / (2 if sparse_flops else 1)
        return b, max(b / ceil["copy_bytes_per_s"], f / ceil["bf16_gemm_flops"]) * 1e6

    db, dfloor = floor(None)
    d_us = _graph_time([partial(torch.nn.functional.linear, x, w) for w in dense])
    rows = [Row(name, n, k, m, "dense", "cuBLAS", *d_us, d_us[0], 1.0, 1.0, dfloor, db / d_us[0] / 1e3)]
    impls = []
    for p, pws in packed.items():
        impls.append((p, "sfcompile", [partial(pw.linear, x) for pw in pws], False))
        if p == "2:4" and with_cslt and ops.cslt_unsupported(x, pws[0].data["values"]) is None:
            fns = [partial(ops.cslt_linear, x, pw.data["values"], pw.data["meta"]) for pw in pws]
            impls.append((p, "cuSPARSELt", fns, True))
    for p, impl, fns, sparse_tc in impls:
        try:
            us = _graph_time(fns)
            err = _rel_error(fns[0](), x, packed[p][0])
        except Exception as e:  # a failing implementation is reported, the table goes on
            log(f"{name} M={m} {p} {impl}: FAILED {type(e).__name__}: {e}")
            continue
        if not err < 2e-2:
            log(f"{name} M={m} {p} {impl}: WRONG RESULT, relative error {err:.3g}; row dropped")
            continue
        b, fl = floor(p, sparse_tc)
        rows.append(Row(name, n, k, m, p, impl, *us, d_us[0], d_us[0] / us[0], db / b, fl, b / us[0] / 1e3))
    log(" | ".join(f"{r.impl}/{r.pattern} {r.us:.1f}us x{r.ratio:.2f}" for r in rows) + f"  [{name} M={m}]")
    return rows


def checked_us(label: str, calls, check, x: torch.Tensor, packed, log=print) -> float | None:
    """Median microseconds per call of ``calls`` (one CUDA graph calling each once), or None -- logged under
    ``label`` -- when ``check()`` (x times the ``packed`` weight) is more than 2e-2 off the dense product or
    anything raises: a benchmark table reports the failure and goes on."""
    try:
        err = _rel_error(check(), x, packed)
        if not err < 2e-2:
            log(f"{label}: WRONG RESULT, relative error {err:.3g}; not timed")
            return None
        return _graph_time(calls)[0]
    except Exception as e:  # noqa: BLE001
        log(f"{label}: FAILED {type(e).__name__}: {str(e)[:300]}")
        return None


def parse_configs(text: str, defaults: dict | None = None, flag: str = "--candidates") -> list[dict]:
    """Launch configs from a command line: ``'A=1,B=2;A=3,B=4'`` -> ``[{'A': 1, 'B': 2}, {'A': 3, 'B': 4}]``,
    each on top of ``defaults`` (the keys not given); a pair that is not KEY=INTEGER stops with ``flag`` named."""
    out = []
    for item in filter(None, (part.strip() for part in text.split(";"))):
        cfg = dict(defaults or {})
        for pair in item.split(","):
            key, _, value = pair.partition("=")
            if not value.strip().lstrip("-").isdigit():
                raise SystemExit(f"{flag}: {pair!r} in {item!r} is not KEY=INTEGER")
            cfg[key.strip()] = int(value)
        out.append(cfg)
    return out


def _rel_error(y: torch.Tensor, x: torch.Tensor, pw) -> float:
    ref = x.double() @ pw.unpack_nk().double().T
    return ((y.double() - ref).norm() / ref.norm()).item()


def tuned_configs() -> dict[str, str]:
    """The autotuner's choice per (kernel, tuner, N, K, M bucket) so far in this process."""
    from sfcompile.lowering.kernels import block16, block16_mma, nm24, nm24_decode, nm24_mma

    out = {}
    for mod in (nm24, nm24_decode, nm24_mma, block16, block16_mma):
        for tuner_key, tuner in mod._AUTOTUNED.items():
            for key, cfg in getattr(tuner, "cache", {}).items():
                name = mod.__name__.rsplit(".", 1)[-1]
                out[f"{name} {tuner_key} {key[:3]}"] = str(cfg)
    return out


def moe_table(shapes=MOE_SHAPES, tokens=(8, 512), top_k=8, dtype=torch.bfloat16, log=print) -> list[Row]:
    """Grouped expert matmul: dense (``torch._grouped_mm``, else a per-expert loop) vs sfcompile 2:4."""
    from sfcompile.lowering.pack import pack

    rows = []
    dev = "cuda"
    for name, e, n, k in shapes:
        w = _hardened((e, n, k), "2:4", dtype, dev)
        pw = pack(w, "2:4", -1)
        wt = w.transpose(-2, -1)                         # (E, K, N) for grouped_mm
        for t in tokens:
            g = torch.Generator(device=dev).manual_seed(t)
            counts = torch.bincount(torch.randint(0, e, (t * top_k,), generator=g, device=dev), minlength=e)
            offs = counts.cumsum(0).to(torch.int32)
            x = torch.randn(t * top_k, k, device=dev, dtype=dtype)

            dense_fn = partial(torch._grouped_mm, x, wt, offs=offs)
            dense_impl = "torch._grouped_mm"
            try:
                dense_fn()
            except Exception:  # no grouped GEMM for this dtype/build: the per-expert loop
                from sfcompile.lowering.ops import _grouped_ref

                dense_fn, dense_impl = partial(_grouped_ref, x, w, offs), "per-expert loop"
            d_us = _graph_time([dense_fn])
            s_us = _graph_time([partial(pw.grouped, x, offs)])
            rows.append(Row(name, n, k, t * top_k, "dense", dense_impl, *d_us, d_us[0], 1.0, 1.0, 0.0, 0.0))
            rows.append(Row(name, n, k, t * top_k, "2:4", "sfcompile", *s_us, d_us[0], d_us[0] / s_us[0],
                            1 / 0.5625, 0.0, 0.0))
            log(f"[{name} rows={t * top_k}] {dense_impl} {d_us[0]:.1f}us, sfcompile 2:4 {s_us[0]:.1f}us "
                f"x{d_us[0] / s_us[0]:.2f}")
    return rows


def markdown(rows: list[Row]) -> str:
    head = ("| shape | N | K | M | pattern | impl | median us (q20-q80) | dense us | vs dense | byte ceiling "
            "| floor us | GB/s |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r.shape} | {r.n} | {r.k} | {r.m} | {r.pattern} | {r.impl} | {r.us:.1f} "
                     f"({r.us_q20:.1f}-{r.us_q80:.1f}) | {r.dense_us:.1f} | {r.ratio:.2f}x | "
                     f"{r.byte_ceiling:.2f}x | {r.floor_us:.1f} | {r.gbps:.0f} |")
    return "\n".join(lines)


def summary(rows: list[Row], decode_max_m=16, prefill_min_m=2048) -> dict[str, float]:
    """Median ratio vs dense per (pattern, impl) over decode rows (M <= 16) and prefill rows (M >= 2048)."""
    out = {}
    rows = [r for r in rows if not r.shape.startswith("moe")]   # layer shapes only
    for p, impl in sorted({(r.pattern, r.impl) for r in rows if r.pattern != "dense"}):
        for label, lo, hi in (("decode", 0, decode_max_m), ("prefill", prefill_min_m, 1 << 62)):
            ratios = [r.ratio for r in rows if r.pattern == p and r.impl == impl and lo <= r.m <= hi]
            if ratios:
                out[f"{p} {impl} {label} median"] = statistics.median(ratios)
                out[f"{p} {impl} {label} min"] = min(ratios)
    return out


def to_dicts(rows: list[Row]) -> list[dict]:
    return [asdict(r) for r in rows]
