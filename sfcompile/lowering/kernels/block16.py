"""Block-16 sparse matmul ``y = x @ W.T (+ bias)``, W as non-empty 16x16 tiles in CSR over block rows.

Each program owns one block row (16 output columns of y) and BLOCK_M rows of x, and walks only that block
row's non-empty tiles, TILES at a time: it loads the tiles (contiguous, 512 bytes each in bf16), gathers the
matching 16-wide column strips of x, and issues one ``tl.dot`` of (BLOCK_M, TILES*16) x (TILES*16, 16).
Empty tiles cost nothing, so at decode sizes the time follows the bytes of the kept tiles (density · dense).
At decode the tile list of a row is split across ``SPLIT_K`` programs that add into an fp32 workspace.

With ``GROUPED`` the third grid axis is the MoE expert: expert ``e`` owns rows ``offs[e-1] .. offs[e]-1`` of x
and block rows ``e*N/16 .. (e+1)*N/16-1`` of the CSR.

``VARIANT`` 2 skips tl.dot for few rows: products of tiles and x strips are summed on CUDA cores in registers
and reduced once at the end.

For M <= 16 in bf16/fp16 on sm_80+ (not grouped, no fixed config) :func:`block16_matmul` hands the call to the
tensor-core kernel of :mod:`.block16_mma` (1.48x dense median at decode, run 18, against this kernel's 1.01x,
benchmarks/README.md, run 17); this kernel runs everything else: fp32, older GPUs, 17-255 rows, MoE experts.

Measured on the H200 (benchmarks/README.md, run 7), 50% density: 0.73-1.37x dense cuBLAS at decode (median 1.02;
M = 1: 1.03-1.37x, the CUDA-core variant with 2 tiles, one warp and SPLIT_K 32; from 4 rows up the tl.dot
one). At prefill every program re-reads its x strips for 16 output columns only (16 FLOP per byte of x at
most), so this kernel is L2-bound at 0.2x dense;
``sfcompile.lowering.ops`` sends large M to :mod:`.block16_unpack` + cuBLAS instead.

It always launches plainly: launched with programmatic dependent launch (as the 2:4 decode kernel is, see
:func:`.splitk.pdl`) it was slower, 1.16x -> 1.06x dense end to end (8 LLaMA-2-7B layers, batch 1) and
1.04x -> 0.98x per layer after a plain kernel (benchmarks/README.md, run 16).

``FRAG`` 1 (``block16_matmul(..., frag=True)``): the tiles are in :func:`.block16_mma.fragment_order` (the
layout the tensor-core decode kernel loads in 16-byte pieces), read whole and permuted in registers
(:func:`load_tiles`), so one copy of the tiles in that layout serves every M.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from sfcompile.lowering.kernels import splitk
from sfcompile.lowering.kernels.block16_mma import MAX_M as MMA_MAX_M
from sfcompile.lowering.kernels.block16_mma import block16_mma, block16_mma_unsupported

__all__ = ["block16_matmul", "block16_matmul_reference", "block16_configs"]

SMALL_M = 16


@functools.cache   # built once per bucket: the launcher sizes its workspace from it on every call
def block16_configs(m_bucket: int) -> list[triton.Config]:
    """Autotune space for rows of x up to ``m_bucket`` (M's next power of two). Decode (<= 16 rows): split over
    a row's tiles, with tl.dot on 2-D operands (VARIANT 1, BLOCK_M 16) or on CUDA cores (VARIANT 2, BLOCK_M =
    the bucket, 1-2 rows: one FMA per weight element and row, no shared-memory trip); prefill: BLOCK_M
    64/128, VARIANT 1."""
    if m_bucket <= 16:
        # (TILES, SPLIT_K, warps, stages)
        # sweep of 2026-11-30 (benchmarks/decode_sweep.py): small CUDA-core programs win at 1-2 rows
        dot = [(8, 4, 4, 3), (8, 8, 4, 3), (4, 16, 4, 2), (8, 16, 4, 3), (16, 4, 8, 3)]
        core = [(2, 32, 1, 2), (4, 16, 2, 2), (2, 64, 1, 2), (4, 4, 4, 2), (4, 32, 2, 2)]
        return [triton.Config({"BLOCK_M": 16, "TILES": t, "SPLIT_K": sk, "VARIANT": 1}, num_warps=w,
                              num_stages=s) for t, sk, w, s in dot] + [
            triton.Config({"BLOCK_M": m_bucket, "TILES": t, "SPLIT_K": sk, "VARIANT": 2}, num_warps=w,
                          num_stages=s) for t, sk, w, s in core if m_bucket <= 2]
    space = [(64, 4, 4, 3), (128, 4, 4, 3), (128, 8, 8, 3), (64, 8, 4, 3), (128, 2, 4, 4)]
    return [triton.Config({"BLOCK_M": bm, "TILES": t, "SPLIT_K": 1, "VARIANT": 1}, num_warps=w, num_stages=s)
            for bm, t, w, s in space]


@triton.jit
def load_tiles(tv_ptr, offs_t, mask_t, TILES: tl.constexpr, FRAG: tl.constexpr):
    """Tiles ``offs_t`` (masked ones 0) as (TILES, 16 i, 16 j) row-major values, read from row-major tiles or
    from tiles in ``fragment_order`` (FRAG 1: element (8h + g, 4t + u) at 32 g + 8 t + 4 h + u). Either way
    the loads are contiguous along the tile (the permutation happens in registers): gathered with the permuted
    offsets instead, the loads lost their vector width (2-byte loads in the SASS)."""
    if FRAG:
        flat = tl.load(tv_ptr + offs_t[:, None] * 256 + tl.arange(0, 256)[None, :], mask=mask_t[:, None], other=0.0)
        parts = tl.permute(tl.reshape(flat, (TILES, 8, 4, 2, 4)), (0, 3, 1, 2, 4))    # (T, h, g, t, u)
        return tl.reshape(parts, (TILES, 16, 16))
    offs = tl.arange(0, 16)
    return tl.load(tv_ptr + offs_t[:, None, None] * 256 + offs[None, :, None] * 16 + offs[None, None, :],
                   mask=mask_t[:, None, None], other=0.0)


@triton.jit(do_not_specialize=["M", "M_KEY"])  # M varies per call: one compile per config
def _block16_kernel(
    x_ptr, tv_ptr, row_ptr_ptr, col_ptr, bias_ptr, offs_ptr, out_ptr, ws_ptr, cnt_ptr,
    M, N, K, M_KEY, stride_xm, stride_om,
    HAS_BIAS: tl.constexpr, GROUPED: tl.constexpr, FP32_IEEE: tl.constexpr, FRAG: tl.constexpr,
    BLOCK_M: tl.constexpr, TILES: tl.constexpr, SPLIT_K: tl.constexpr, VARIANT: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    expert = tl.program_id(2)
    block_rows = N // 16
    pid_m = pid // block_rows
    r = pid % block_rows

    row_start, row_end = splitk.expert_rows(offs_ptr, expert, M, GROUPED)
    first_row = row_start + pid_m * BLOCK_M
    if first_row >= row_end:
        return

    offs_m = first_row + tl.arange(0, BLOCK_M)
    mask_m = offs_m < row_end
    rows = tl.minimum(offs_m, row_end - 1)      # rows past the end read the last row (never stored)
    offs_i = tl.arange(0, 16)        # output column within the block row (N direction)
    offs_j = tl.arange(0, 16)        # column within a tile (K direction)
    offs_n = r * 16 + offs_i

    grow = expert * block_rows + r
    t_begin = tl.load(row_ptr_ptr + grow)
    t_end = tl.load(row_ptr_ptr + grow + 1)
    per_split = (t_end - t_begin + SPLIT_K - 1) // SPLIT_K  # (no tl.cdiv: plain ops run in the interpreter)
    t_lo = t_begin + pid_k * per_split
    t_hi = tl.minimum(t_lo + per_split, t_end)

    acc = tl.full((BLOCK_M, 16), 0.0, tl.float32)
    if VARIANT == 2:
        acc4 = tl.full((BLOCK_M, TILES, 16, 16), 0.0, tl.float32)   # (row, tile, i, j) products, summed at the end
    offs_kk = tl.arange(0, TILES * 16)   # (tile, column) flattened: tile kk // 16, column kk % 16
    for t0 in range(t_lo, t_hi, TILES):
        if VARIANT == 2:
            # CUDA cores: tiles (TILES, 16 i, 16 j) contiguous along j, x strips (BM, TILES, 16 j)
            offs_t = t0 + tl.arange(0, TILES)
            mask_t = offs_t < t_hi
            cols = tl.load(col_ptr + offs_t, mask=mask_t, other=0)
            b = load_tiles(tv_ptr, offs_t, mask_t, TILES, FRAG)                  # (TILES, 16 i, 16 j)
            xs = tl.load(x_ptr + rows[:, None, None] * stride_xm + (cols * 16)[None, :, None]
                         + offs_j[None, None, :])                     # masked tiles are 0: any column will do
            acc4 += xs.to(tl.float32)[:, :, None, :] * b.to(tl.float32)[None, :, :, :]
        elif VARIANT == 1:
            # 2-D operands straight from memory, no reshapes: B[(t, j), i] = tile_t[i, j]
            t_of = t0 + offs_kk // 16
            mask_kk = t_of < t_hi
            cols = tl.load(col_ptr + t_of, mask=mask_kk, other=0)                                # (T*16,)
            if FRAG:   # (whole tiles in registers, see load_tiles)
                offs_t = t0 + tl.arange(0, TILES)
                b2 = tl.reshape(tl.permute(load_tiles(tv_ptr, offs_t, offs_t < t_hi, TILES, FRAG), (0, 2, 1)),
                                (TILES * 16, 16))
            else:
                b_ptrs = tv_ptr + t_of[:, None] * 256 + offs_i[None, :] * 16 + (offs_kk % 16)[:, None]
                b2 = tl.load(b_ptrs, mask=mask_kk[:, None], other=0.0)                           # (T*16, 16)
            x_ptrs = x_ptr + offs_m[:, None] * stride_xm + (cols * 16 + offs_kk % 16)[None, :]
            x2 = tl.load(x_ptrs, mask=mask_m[:, None] & mask_kk[None, :], other=0.0)             # (BM, T*16)
        else:
            offs_t = t0 + tl.arange(0, TILES)
            mask_t = offs_t < t_hi
            cols = tl.load(col_ptr + offs_t, mask=mask_t, other=0)                               # (TILES,)
            # B[(t, j), i] = tile[t][i, j]: (TILES, 16 j, 16 i)
            if FRAG:
                b = tl.permute(load_tiles(tv_ptr, offs_t, mask_t, TILES, FRAG), (0, 2, 1))
            else:
                b_ptrs = tv_ptr + offs_t[:, None, None] * 256 + offs_i[None, None, :] * 16 + offs_j[None, :, None]
                b = tl.load(b_ptrs, mask=mask_t[:, None, None], other=0.0)
            # x strips (BLOCK_M, TILES, 16 j)
            x_ptrs = (x_ptr + offs_m[:, None, None] * stride_xm + cols[None, :, None] * 16
                      + offs_j[None, None, :])
            x = tl.load(x_ptrs, mask=mask_m[:, None, None] & mask_t[None, :, None], other=0.0)
            x2 = tl.reshape(x, (BLOCK_M, TILES * 16))
            b2 = tl.reshape(b, (TILES * 16, 16))
        if VARIANT != 2:
            if FP32_IEEE:
                acc = tl.dot(x2.to(tl.float32), b2.to(tl.float32), acc, input_precision="ieee")
            else:
                acc = tl.dot(x2, b2, acc)

    if VARIANT == 2:
        acc = tl.sum(tl.sum(acc4, axis=3), axis=1)
    if HAS_BIAS:
        if pid_k == 0:
            acc += tl.load(bias_ptr + offs_n).to(tl.float32)[None, :]
    splitk.store_tile(acc, out_ptr, ws_ptr, cnt_ptr, offs_m, offs_n, mask_m[:, None] & (offs_n[None, :] < N), M,
                      N, stride_om, pid_k, expert * tl.num_programs(0) + pid, SPLIT_K)


_AUTOTUNED: dict[tuple, object] = {}


def _autotuned(m_bucket: int, variants: tuple[int, ...] | None = None, frag: bool = False):
    """The autotuned launcher for one M bucket (decode buckets 1..16, one for all prefill), a subset of
    variants (benchmarks) and a tile layout (Triton's autotuner keys on arguments, not constexpr flags), built on
    first use (nothing compiles or benchmarks at import)."""
    key = (min(m_bucket, 32), variants, frag)
    if key not in _AUTOTUNED:
        configs = [c for c in block16_configs(key[0]) if variants is None or c.kwargs["VARIANT"] in variants]
        if not configs:
            raise ValueError(f"no block16 config of variants {variants} for {m_bucket} rows")
        _AUTOTUNED[key] = splitk.autotuner(_block16_kernel, configs)
    return _AUTOTUNED[key]


def _first_config(m_bucket: int) -> dict:
    c = block16_configs(m_bucket)[0]
    return {**c.kwargs, "num_warps": c.num_warps}


def _check(x, tile_values, row_ptr, col_idx, n, k, bias, experts):
    if n % 16 or k % 16:
        raise ValueError(f"block16 needs N and K multiples of 16, got N={n}, K={k}")
    if x.shape[-1] != k:
        raise ValueError(f"x (..., {x.shape[-1]}) does not match K={k}")
    if tile_values.dim() != 3 or tuple(tile_values.shape[1:]) != (16, 16):
        raise ValueError(f"tile_values must be (T, 16, 16), got {tuple(tile_values.shape)}")
    if row_ptr.shape != (experts * n // 16 + 1,) or row_ptr.dtype != torch.int32:
        raise ValueError(f"row_ptr must be int32 ({experts * n // 16 + 1},), got {row_ptr.dtype} "
                         f"{tuple(row_ptr.shape)}")
    if col_idx.shape != (tile_values.shape[0],) or col_idx.dtype != torch.int32:
        raise ValueError(f"col_idx must be int32 ({tile_values.shape[0]},), got {col_idx.dtype} "
                         f"{tuple(col_idx.shape)}")
    if x.dtype != tile_values.dtype:
        raise ValueError(f"x dtype {x.dtype} differs from weight dtype {tile_values.dtype}")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias {tuple(bias.shape)} must be ({n},)")


def block16_matmul(x: torch.Tensor, tile_values: torch.Tensor, row_ptr: torch.Tensor, col_idx: torch.Tensor,
                   n: int, k: int, bias: torch.Tensor | None = None, offs: torch.Tensor | None = None,
                   config: dict | None = None, variants: tuple[int, ...] | None = None,
                   frag: bool = False) -> torch.Tensor:
    """``x @ W.T + bias`` for a block-16 W (CSR of tiles); with ``offs`` (E,), the expert grouped matmul.

    Args:
        x: (..., K), or (T, K) sorted by expert when ``offs`` is given.
        tile_values, row_ptr, col_idx: see :mod:`sfcompile.lowering.ops`.
        n, k: the dense (per-expert) weight is (N, K).
        config: fixed launch config (``BLOCK_M``, ``TILES``, ``SPLIT_K``, ``VARIANT``, optional ``num_warps``).
        variants: autotune over these variants only (benchmarks).
        frag: the tiles are in :func:`.block16_mma.fragment_order` (the tensor-core decode kernel's layout).

    Returns:
        (..., N) in x.dtype.
    """
    grouped = offs is not None
    experts = offs.shape[0] if grouped else 1
    _check(x, tile_values, row_ptr, col_idx, n, k, bias, experts)
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    on_cpu = x.device.type == "cpu"
    if config is None and on_cpu:
        config = _first_config(splitk.m_key(m))
    tile_values = tile_values.contiguous()
    out = (torch.zeros if grouped else torch.empty)((m, n), device=x.device, dtype=x.dtype)
    if m == 0:
        return out.reshape(*x.shape[:-1], n)
    if not grouped and config is None and not on_cpu and m <= MMA_MAX_M and block16_mma_unsupported(x2) is None:
        return block16_mma(x2, tile_values, row_ptr, col_idx, n, k, bias, frag=frag).reshape(*x.shape[:-1], n)
    may_split = m <= SMALL_M if config is None else config["SPLIT_K"] > 1
    cnt = splitk.counters(x.device, m * -(-n // 16) * experts) if may_split else x  # (unused without split)
    ws = (splitk.workspace(m, n, x.device, splitk.split_depth(config, lambda: block16_configs(splitk.m_key(m))))
          if may_split else out)
    args = (x2, tile_values, row_ptr, col_idx, bias if bias is not None else tile_values,
            offs if grouped else row_ptr, out, ws, cnt, m, n, k, splitk.m_key(m), x2.stride(0), out.stride(0))
    flags = {"HAS_BIAS": bias is not None, "GROUPED": grouped, "FP32_IEEE": splitk.ieee_dot(x.dtype, on_cpu),
             "FRAG": int(frag)}

    def grid(meta_):
        return (triton.cdiv(m, meta_["BLOCK_M"]) * (n // 16), meta_["SPLIT_K"], experts)

    splitk.launch(_block16_kernel, lambda: _autotuned(splitk.m_key(m), variants, frag), grid, args, flags, config,
                  on_cpu)
    return out.reshape(*x.shape[:-1], n)


def block16_matmul_reference(x, tile_values, row_ptr, col_idx, n, k, bias=None, offs=None, frag=False):
    """Pure-PyTorch reference: unpack W from its tiles (``frag``: in fragment order), then a matmul in fp32
    (x.dtype out)."""
    from sfcompile.lowering.pack import _unpack_block16

    experts = offs.shape[0] if offs is not None else None
    shape = (experts, n, k) if experts is not None else (n, k)
    w = _unpack_block16(tile_values, row_ptr, col_idx, shape, frag).float()
    if offs is None:
        y = x.float() @ w.T
        if bias is not None:
            y = y + bias.float()
        return y.to(x.dtype)
    y = torch.zeros(x.shape[0], n, dtype=torch.float32, device=x.device)
    start = 0
    for e, end in enumerate(offs.tolist()):
        y[start:end] = x[start:end].float() @ w[e].T
        start = end
    return y.to(x.dtype)
