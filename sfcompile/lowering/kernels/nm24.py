"""2:4 sparse matmul ``y = x @ W.T (+ bias)`` with W packed as values (N, K/2) + 2-bit positions (N, K/32).

:func:`nm24_matmul` is the entry point. Up to 16 rows of x (decode, not grouped) it runs one of the two decode
kernels, which never rebuild W: the sparse-tensor-core one of :mod:`.nm24_mma` where it can run (bf16/fp16,
K % 32 == 0, sm_80+), else the CUDA-core one of :mod:`.nm24_decode` (:func:`decode_choice`).
Otherwise it runs the tile kernel of this file: each program
loads a (BLOCK_N, BLOCK_K/2) slab of values and the (BLOCK_N, BLOCK_K/32) int32 metadata words covering it,
expands them into the dense (BLOCK_N, BLOCK_K) tile with selects and feeds it to ``tl.dot`` (``DECOMP`` picks
one of three expansions; ``DECOMP`` 3 instead gathers x at each kept entry on CUDA cores, for M <= 4). K may
be split over ``SPLIT_K`` programs (:func:`.splitk.store_tile` sums the partials, no extra launches).

Measured on the H200 (benchmarks/README.md): the tile kernel runs 0.4-0.7x dense cuBLAS at decode sizes
(~50 SASS instructions per stored value: selects, index math, the register -> shared-memory trip into the
dot). Prefill goes to cuSPARSELt instead (``sfcompile.lowering.ops``); the tile kernel serves MoE experts
and CUDA tensors cuSPARSELt refuses.

The same kernel serves MoE experts (``GROUPED``): the third grid axis is the expert; expert ``e`` owns rows
``offs[e-1] .. offs[e]-1`` of x (``torch._grouped_mm``'s contract) and its own values/meta slab.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sfcompile.lowering.kernels import splitk
from sfcompile.lowering.kernels.nm24_decode import MAX_M as DECODE_MAX_M
from sfcompile.lowering.kernels.nm24_decode import nm24_decode
from sfcompile.lowering.kernels.nm24_mma import nm24_mma, nm24_mma_bypass_unsupported, nm24_mma_unsupported
from sfcompile.masking.slorb import add_bypass_

__all__ = ["nm24_matmul", "nm24_matmul_reference", "nm24_configs"]


def nm24_configs(small_m: bool) -> list[triton.Config]:
    """Autotune space: decode (BLOCK_M = 16, split-K, narrow N blocks) or prefill (square tiles), each with
    the three ways to decompress (DECOMP 0: 3-D select, 1: per-column join, 2: masked gather)."""
    if small_m:
        # Measured on the H200 (benchmarks/README.md): these kernels reach ~0.75 TB/s whatever the split,
        # tile or variant: they are bound by instruction issue (~30 SASS instructions per decompressed weight
        # element: selects, index math, the register -> shared-memory trip into the dot), not by bytes.
        space = [  # (BLOCK_N, BLOCK_K, SPLIT_K, warps, stages, DECOMP): the 3-D select (DECOMP 0) measured
            # fastest on the H200; the join (1) and masked-gather (2) variants ran 1.3-3x slower at M=8..16
            (16, 256, 1, 4, 3, 0), (16, 512, 1, 4, 2, 0), (32, 256, 1, 4, 3, 0), (32, 256, 2, 4, 3, 0),
            (64, 256, 1, 4, 3, 0), (64, 256, 2, 4, 3, 0), (64, 256, 4, 4, 3, 0), (32, 512, 2, 4, 2, 0),
            (16, 256, 4, 4, 3, 0), (64, 128, 4, 4, 4, 0), (32, 256, 8, 4, 3, 0), (32, 128, 16, 4, 3, 0),
        ]
        cuda_core = [  # (BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, warps)
            (1, 16, 256, 8, 4), (1, 32, 128, 8, 4), (1, 16, 512, 4, 4), (1, 32, 128, 16, 4),
            (1, 16, 256, 16, 4), (2, 16, 256, 8, 4), (4, 16, 128, 8, 4), (4, 16, 128, 16, 4),
        ]
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": sk, "DECOMP": d},
                              num_warps=w, num_stages=s) for bn, bk, sk, w, s, d in space] + [
            triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": sk, "DECOMP": 3},
                          num_warps=w, num_stages=2)
            for bm, bn, bk, sk, w in cuda_core]
    # (DECOMP 1 crashes Triton 3.6's TritonGPUOptimizeDotOperands at these tile sizes: 3-D select here.)
    space = [(128, 128, 64, 8, 3), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4), (128, 256, 64, 8, 3),
             (64, 64, 128, 4, 3)]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": 1, "DECOMP": 0},
                          num_warps=w, num_stages=s) for bm, bn, bk, w, s in space]


@triton.jit(do_not_specialize=["M", "M_KEY"])  # M varies per call: one compile per config
def _nm24_kernel(
    x_ptr, v_ptr, meta_ptr, bias_ptr, offs_ptr, out_ptr, ws_ptr, cnt_ptr,
    M, N, K, M_KEY,
    stride_xm, stride_ve, stride_vn, stride_me, stride_mn, stride_om,
    HAS_BIAS: tl.constexpr, GROUPED: tl.constexpr, FP32_IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
    DECOMP: tl.constexpr,
):
    G: tl.constexpr = BLOCK_K // 4     # groups of 4 per K block
    W: tl.constexpr = BLOCK_K // 32    # metadata words per K block
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    expert = tl.program_id(2)
    n_blocks = (N + BLOCK_N - 1) // BLOCK_N
    pid_m = pid // n_blocks
    pid_n = pid % n_blocks

    row_start, row_end = splitk.expert_rows(offs_ptr, expert, M, GROUPED)
    first_row = row_start + pid_m * BLOCK_M
    if first_row >= row_end:
        return

    offs_m = first_row + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < row_end
    mask_n = offs_n < N
    v_base = v_ptr + expert * stride_ve
    m_base = meta_ptr + expert * stride_me

    k_per_split = ((K + SPLIT_K - 1) // SPLIT_K + BLOCK_K - 1) // BLOCK_K * BLOCK_K
    k_lo = pid_k * k_per_split
    k_hi = tl.minimum(k_lo + k_per_split, K)
    half_k = K // 2
    words_k = (K + 31) // 32
    shifts = tl.arange(0, 8) * 4                                        # nibble offsets in a word
    pos = tl.arange(0, 4)

    # tl.full, not tl.zeros: jit helpers (tl.zeros, tl.cdiv) cannot run in the CPU interpreter
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        if DECOMP == 3:
            # CUDA cores, compressed domain: gather x at each kept entry's column (small M only)
            offs_h = k0 // 2 + tl.arange(0, BLOCK_K // 2)
            mask_h = mask_n[:, None] & (offs_h[None, :] < half_k)
            vals = tl.load(v_base + offs_n[:, None] * stride_vn + offs_h[None, :], mask=mask_h, other=0.0)
            words = tl.load(m_base + offs_n[:, None] * stride_mn + (offs_h // 16)[None, :], mask=mask_h,
                            other=0)
            shift = ((offs_h // 2) % 8) * 4 + (offs_h % 2) * 2
            cols = (offs_h // 2)[None, :] * 4 + ((words >> shift[None, :]) & 3)                 # (BN, BJ)
            xg = tl.load(x_ptr + offs_m[:, None, None] * stride_xm + cols[None, :, :],
                         mask=mask_m[:, None, None] & mask_h[None, :, :], other=0.0)     # (BM, BN, BJ)
            acc += tl.sum(xg.to(tl.float32) * vals.to(tl.float32)[None, :, :], axis=2)
        else:
            if DECOMP == 2:
                # masked gather: each dense column loads its group's word and, if kept, its one value
                words = tl.load(m_base + offs_n[:, None] * stride_mn + (offs_k // 32)[None, :],
                                mask=mask_n[:, None] & (offs_k[None, :] < K), other=0)          # (BN, BK)
                nib = (words >> (((offs_k // 4) % 8) * 4)[None, :]) & 15
                p = (offs_k % 4)[None, :]
                second = p == (nib >> 2)
                keep = (p == (nib & 3)) | second
                w_ptrs = (v_base + offs_n[:, None] * stride_vn + ((offs_k // 4) * 2)[None, :]
                          + second.to(tl.int32))
                w_tile = tl.load(w_ptrs, mask=keep & mask_n[:, None] & (offs_k[None, :] < K), other=0.0)
            else:
                # values (BN, BK/2), contiguous along K: the 2 kept entries of each group
                offs_h = k0 // 2 + tl.arange(0, BLOCK_K // 2)
                v_ptrs = v_base + offs_n[:, None] * stride_vn + offs_h[None, :]
                vals = tl.load(v_ptrs, mask=mask_n[:, None] & (offs_h[None, :] < half_k), other=0.0)
                v0, v1 = tl.split(tl.reshape(vals, (BLOCK_N, G, 2)))                              # (BN, G)
                if DECOMP == 1:
                    # per group: its word (8 groups share one), positions i0 < i1, then 4 columns joined
                    offs_g = k0 // 4 + tl.arange(0, G)
                    words = tl.load(m_base + offs_n[:, None] * stride_mn + (offs_g // 8)[None, :],
                                    mask=mask_n[:, None] & (offs_g[None, :] < K // 4), other=0)     # (BN, G)
                    nib = (words >> ((offs_g % 8) * 4)[None, :]) & 15
                    i0 = nib & 3
                    i1 = nib >> 2
                    c0 = tl.where(i0 == 0, v0, 0.0).to(vals.dtype)      # i0 < i1: column 0 is only ever i0
                    c1 = tl.where(i0 == 1, v0, tl.where(i1 == 1, v1, 0.0)).to(vals.dtype)
                    c2 = tl.where(i0 == 2, v0, tl.where(i1 == 2, v1, 0.0)).to(vals.dtype)
                    c3 = tl.where(i1 == 3, v1, 0.0).to(vals.dtype)      # ... and column 3 only i1
                    w_tile = tl.reshape(tl.join(tl.join(c0, c2), tl.join(c1, c3)), (BLOCK_N, BLOCK_K))
                else:
                    # words (BN, W) -> nibbles (BN, G) through a broadcast, dense tile through a 3-D select
                    offs_w = k0 // 32 + tl.arange(0, W)
                    w_ptrs = m_base + offs_n[:, None] * stride_mn + offs_w[None, :]
                    words = tl.load(w_ptrs, mask=mask_n[:, None] & (offs_w[None, :] < words_k), other=0)
                    nib = tl.reshape((words[:, :, None] >> shifts[None, None, :]) & 15, (BLOCK_N, G))
                    i0 = nib & 3
                    i1 = nib >> 2
                    w3 = tl.where(pos[None, None, :] == i0[:, :, None], v0[:, :, None],
                                  tl.where(pos[None, None, :] == i1[:, :, None], v1[:, :, None], 0.0))
                    w_tile = tl.reshape(w3, (BLOCK_N, BLOCK_K)).to(vals.dtype)
            # x (BM, BK)
            x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :]
            x = tl.load(x_ptrs, mask=mask_m[:, None] & (offs_k[None, :] < k_hi), other=0.0)
            if FP32_IEEE:  # fp32 weights, or bf16 in the interpreter (its bf16 dot is wrong): exact fp32 dot
                acc = tl.dot(x.to(tl.float32), tl.trans(w_tile.to(tl.float32)), acc, input_precision="ieee")
            else:
                acc = tl.dot(x, tl.trans(w_tile), acc)

    if HAS_BIAS:
        if pid_k == 0:
            acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    splitk.store_tile(acc, out_ptr, ws_ptr, cnt_ptr, offs_m, offs_n, mask_m[:, None] & mask_n[None, :], M, N,
                      stride_om, pid_k, expert * tl.num_programs(0) + pid, SPLIT_K)


_AUTOTUNED: dict[bool, object] = {}   # small M (grouped experts) or large M


def _autotuned(small_m: bool):
    """The autotuned launcher, built on first use (nothing compiles or benchmarks at import)."""
    if small_m not in _AUTOTUNED:
        _AUTOTUNED[small_m] = splitk.autotuner(_nm24_kernel, nm24_configs(small_m),
                                               prune_configs_by={"early_config_prune": _prune})
    return _AUTOTUNED[small_m]


def _prune(configs, named_args, **kwargs):
    """CUDA-core configs (DECOMP 3) only where they cover M in one block of at most 4 rows."""
    m_key = named_args["M_KEY"]
    return [c for c in configs if c.kwargs["DECOMP"] != 3 or c.kwargs["BLOCK_M"] >= m_key]


SMALL_M = 16


def _first_config(small_m: bool) -> dict:
    c = nm24_configs(small_m)[0]
    return {**c.kwargs, "num_warps": c.num_warps}


def _check(x, values, meta, bias, grouped):
    lead = 3 if grouped else 2
    if values.dim() != lead or meta.dim() != lead:
        raise ValueError(f"values {tuple(values.shape)} and meta {tuple(meta.shape)} must have {lead} dims")
    k = x.shape[-1]
    if (k % 4 or values.shape[-1] * 2 != k or meta.shape[-1] != -(-k // 32)
            or values.shape[:-1] != meta.shape[:-1]):
        raise ValueError(f"x (..., K={k}) does not match 2:4 values {tuple(values.shape)} / meta "
                         f"{tuple(meta.shape)}: expected values (..., N, K/2) and meta (..., N, ceil(K/32))")
    if meta.dtype != torch.int32:
        raise ValueError(f"meta must be int32, got {meta.dtype}")
    if x.dtype != values.dtype:
        raise ValueError(f"x dtype {x.dtype} differs from weight dtype {values.dtype}")
    if bias is not None and (bias.shape != (values.shape[-2],)):
        raise ValueError(f"bias {tuple(bias.shape)} must be ({values.shape[-2]},)")


def nm24_matmul(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None = None,
                offs: torch.Tensor | None = None, config: dict | None = None,
                bypass: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """``x @ W.T + bias`` for a packed 2:4 W; with ``offs``, the expert grouped matmul; with ``bypass``, plus a
    SLoRB bypass.

    Args:
        x: (..., K), or (T, K) sorted by expert when ``offs`` is given.
        values, meta: (N, K/2), (N, ceil(K/32)) int32; (E, N, K/2), (E, N, ceil(K/32)) for experts.
        bias: (N,) or None (not with ``offs``).
        offs: (E,) int32 cumulative row ends per expert.
        config: fixed launch config instead of autotuning (tests, the interpreter): with ``VARIANT`` (and
            ``BLOCK_N``, ``BLOCK_K``, ``SPLIT_K``), the decode kernel (:mod:`.nm24_decode`, M <= 16, not
            grouped); with ``WARPS_N`` (and ``WARPS_K``, ``CHUNKS``, ``SPLIT_K``), the sparse-tensor-core
            decode kernel (:mod:`.nm24_mma`); with ``DECOMP`` (and ``BLOCK_M``, ``BLOCK_N``, ``BLOCK_K``,
            ``SPLIT_K``), the tile kernel; optional ``num_warps``.
        bypass: (px, S), px (..., K/k) the block sums of x over groups of k, S (N, K/k): ``+ px @ S.T``, inside
            the sparse-tensor-core decode kernel where it can (:func:`.nm24_mma.nm24_mma_bypass_unsupported`),
            else as a dense matmul after the kernel (not with ``offs``). px None: the block sums of x, taken
            by the decode kernel from x's registers, by a reduction of x elsewhere.

    Returns:
        (..., N) in x.dtype.
    """
    grouped = offs is not None
    _check(x, values, meta, bias, grouped)
    k = x.shape[-1]
    n = values.shape[-2]
    x2 = x.reshape(-1, k)
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    m = x2.shape[0]
    if bypass is not None:
        bypass = _check_bypass(bypass, x2, n, grouped)
    on_cpu = x.device.type == "cpu"
    values = values.contiguous()
    meta = meta.contiguous()
    experts = values.shape[0] if grouped else 1
    out = (torch.zeros if grouped else torch.empty)((m, n), device=x.device, dtype=x.dtype)
    if m == 0:
        return out.reshape(*x.shape[:-1], n)
    decode = not grouped and m <= DECODE_MAX_M and (config is None or "VARIANT" in config or "WARPS_N" in config)
    if decode:                      # few rows: the kernels that never rebuild W (nm24_mma.py, nm24_decode.py)
        # the sparse-tensor-core kernel: a config naming its keys, or the rule of decode_choice (GPU only)
        mma = "WARPS_N" in config if config is not None else not on_cpu and decode_choice(x2, values) == "mma"
        if mma:
            inside = bypass is not None and nm24_mma_bypass_unsupported(x2, *bypass) is None
            nm24_mma(x2, values, meta, bias, out, config, bypass if inside else None)
            if inside:
                bypass = None
        else:
            if config is None and on_cpu:
                config = {"VARIANT": 6, "BLOCK_N": 16, "BLOCK_K": 64, "SPLIT_K": 1}
            nm24_decode(x2, values, meta, bias, out, config)
        if bypass is not None:
            add_bypass_(out, x2, *bypass)
        return out.reshape(*x.shape[:-1], n)
    small = m <= SMALL_M
    if config is None and on_cpu:
        config = _first_config(small)
    may_split = small if config is None else config["SPLIT_K"] > 1
    cnt = splitk.counters(x.device, m * -(-n // 16) * experts) if may_split else x  # (unused without split)
    ws = splitk.workspace(m, n, x.device) if may_split else out
    stride_ve = values.stride(0) if grouped else 0
    stride_me = meta.stride(0) if grouped else 0
    args = (x2, values, meta, bias if bias is not None else values, offs if grouped else meta, out, ws,
            cnt, m, n, k, splitk.m_key(m), x2.stride(0), stride_ve, values.stride(-2), stride_me,
            meta.stride(-2), out.stride(0))
    flags = {"HAS_BIAS": bias is not None, "GROUPED": grouped, "FP32_IEEE": splitk.ieee_dot(x.dtype, on_cpu)}

    def grid(meta_):
        tiles = triton.cdiv(m, meta_["BLOCK_M"]) * triton.cdiv(n, meta_["BLOCK_N"])
        return (tiles, meta_["SPLIT_K"], experts)

    splitk.launch(_nm24_kernel, lambda: _autotuned(small), grid, args, flags, config, on_cpu)
    if bypass is not None:
        add_bypass_(out, x2, *bypass)
    return out.reshape(*x.shape[:-1], n)


def _check_bypass(bypass, x2: torch.Tensor, n: int, grouped: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The bypass (px, S) with px as (M, K/k) rows (or None), or a ValueError naming what does not fit x2 (M, K)."""
    if grouped:
        raise ValueError("a SLoRB bypass is not supported with the expert grouped matmul (offs)")
    px, s = bypass
    m, k = x2.shape
    if s.dim() != 2 or s.shape[0] != n or s.shape[1] == 0 or k % s.shape[1]:
        raise ValueError(f"SLoRB S {tuple(s.shape)} does not fit the weight: expected ({n}, K/k) with k dividing "
                         f"K={k}")
    if px is None:   # the block sums of x: the decode kernel takes them from x's registers, others reduce x
        if s.dtype != x2.dtype:
            raise ValueError(f"bypass dtype S {s.dtype} differs from x's {x2.dtype}")
        return None, s
    if px.shape[-1] != s.shape[1] or px.numel() != m * s.shape[1]:
        raise ValueError(f"block sums {tuple(px.shape)} do not fit x ({m} rows) and S {tuple(s.shape)}: expected "
                         f"(..., {s.shape[1]})")
    if px.dtype != x2.dtype or s.dtype != x2.dtype:
        raise ValueError(f"bypass dtypes px {px.dtype}, S {s.dtype} differ from x's {x2.dtype}")
    return px.reshape(m, s.shape[1]), s


def decode_choice(x2: torch.Tensor, values: torch.Tensor) -> str:
    """Which decode kernel runs ``x2 @ W.T``: "mma" (:mod:`.nm24_mma`) wherever the sparse tensor cores can run
    it (bf16/fp16, K % 32 == 0, sm_80 and newer, M <= 16), else "cuda-core" (:mod:`.nm24_decode`).

    Measured on the H200 (benchmarks/README.md, run 11: every config of both kernels per LLaMA-2-7B / Qwen3-8B
    layer shape, CUDA graphs), the mma kernel beat the CUDA-core one on 4 of 6 shapes at M = 1 (1.27-1.42x dense;
    1.13x against 1.34x on 4096 x 11008), on all six at M = 2..8 and on 4 of 6 at M = 16 (0.66-0.92x, within
    0.06x where it lost). A fixed rule, not a timing per shape at first call: timed outside CUDA graphs the two
    kernels differ by less than the launch gaps (such a choice picked the slower kernel on 6 of 30 (shape, M)
    in run 10)."""
    return "mma" if nm24_mma_unsupported(x2, values) is None else "cuda-core"


def nm24_matmul_reference(x, values, meta, bias=None, offs=None):
    """Pure-PyTorch reference: unpack W, then a matmul in fp32 (x.dtype out)."""
    from sfcompile.lowering.pack import _unpack_nm24

    w = _unpack_nm24(values, meta, x.shape[-1]).float()
    if offs is None:
        y = x.float() @ w.T
        if bias is not None:
            y = y + bias.float()
        return y.to(x.dtype)
    y = torch.zeros(x.shape[0], w.shape[-2], dtype=torch.float32, device=x.device)
    start = 0
    for e, end in enumerate(offs.tolist()):
        y[start:end] = x[start:end].float() @ w[e].T
        start = end
    return y.to(x.dtype)
