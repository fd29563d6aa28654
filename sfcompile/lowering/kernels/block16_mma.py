"""Block-16 decode matmul ``y = x @ W.T (+ bias)`` on the tensor cores (PTX ``mma.m16n8k16``), W as non-empty
16x16 tiles in CSR over block rows (:mod:`sfcompile.lowering.pack`), for few rows of x (M <= 16, bf16/fp16).

What :mod:`sfcompile.lowering.ops` runs for block-16 at M <= 16 (bf16/fp16, sm_80+; elsewhere :mod:`.block16`).
On the H200 it is 1.48x dense cuBLAS per layer at decode (median over the six LLaMA-2-7B / Qwen3-8B layer shapes
and M = 1..16, 0.99-1.75x, the small Qwen3 k,v projection lowest; run 18, with the evict-first configs in the
space; 1.43x without them, run 17), where :mod:`.block16`'s ``tl.dot`` kernel was 1.01x, and 1.75x / 1.74x end
to end at batch 1 (benchmarks/README.md, run 18; run 17: 1.73x / 1.63x). Why it is
faster: the 2:4 decode kernel went from 0.79x to 1.27x dense when Triton's ``tl.dot`` (operands through shared
memory and layout conversions) gave way to one ``mma`` per lane-held fragment read straight from the packed
bytes (:mod:`.nm24_mma`); a 16x16 tile is exactly the A operand of a dense ``mma.m16n8k16``, so the same shape
of kernel applies here with no decompression at all.

Each warp owns one block row (16 output columns of y = rows of W) and walks its tiles, ``TILES`` per step with
every load of the step issued before its first ``mma``; ``SPLIT_K`` programs split a block row's tile list
(:func:`.splitk.store_points` sums them). Per tile, lane (g, t) = (lane // 4, lane % 4) loads 8 bytes of tile
rows g and g + 8 (columns 4t .. 4t + 3) and 8 bytes of x row g at the same columns of the tile's 16-wide strip.
The ``mma`` takes its K in any order as long as A and x agree: physical columns 4t .. 4t + 3 serve as logical
columns 2t, 2t + 1 (A register 0 / 1, B register 0) and 2t + 8, 2t + 9 (A register 2 / 3, B register 1), so
each lane's loads are whole 8-byte words and a warp reads each tile row's 32 bytes in one sector. x's 8 rows
are the ``mma``'s N; 9-16 rows take a second ``mma`` on the same A registers (``MT`` = 2).

``frag=True`` (constexpr ``FRAG`` 1) is an opt-in tile layout (the op's ``frag`` keyword; the backend's
``block16_frag`` option; the pack format stays row-major): each tile's 512 bytes in :func:`fragment_order`,
lane L's two 8-byte pieces side by side at bytes 16L .. 16L + 15, so a lane loads a tile in one 16-byte load
instead of two 8-byte ones. On the H200 that was 3.5% faster per call at the median of 18 decode rows (6 layer
shapes x M = 1, 8, 16; 15 rows faster; benchmarks/README.md, twenty-third session,
``benchmarks/block16_decode.py --impls block16_mma,block16_mma_frag``).

As in :mod:`.nm24_mma`, the ``mma`` is inline PTX on 1-D tensors of one element per thread (:mod:`.warp_mma`,
which holds both kernels' ``mma``), and the Triton interpreter (CPU tests) runs its emulation, the same
warp-wide product from the same registers.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from sfcompile.lowering.kernels import splitk
from sfcompile.lowering.kernels.warp_mma import _k16, _pack_round, _sum_mma, _word, _zeros8

__all__ = ["block16_mma", "block16_mma_reference", "block16_mma_configs", "block16_mma_unsupported",
           "block16_mma_bypass_unsupported", "fragment_order", "fragment_order_inverse", "MAX_M"]

MAX_M = 16


def fragment_order(tile_values: torch.Tensor) -> torch.Tensor:
    """The tiles (T, 16, 16) permuted so that each lane's A operand of ``mma.m16n8k16`` is 16 contiguous bytes:
    what ``block16_mma(..., frag=True)`` reads and every path of ``linear_block16(..., frag=True)`` (an opt-in
    layout, the backend's ``block16_frag`` option; the pack format stays row-major).

    Layout: tile element (row r, column c), with r = 8h + g (h = 0, 1; g = 0..7) and c = 4t + j (t, j = 0..3),
    goes to position 8 (4g + t) + 4h + j of the tile's flattened 256. So lane L = 4g + t finds at elements
    8L .. 8L + 7 (bytes 16L .. 16L + 15) row g, columns 4t .. 4t + 3 and then row g + 8, the same columns:
    the two 8-byte pieces that ``_load_tile`` otherwise loads from rows g and g + 8 of the row-major tile.

    Args:
        tile_values: (T, 16, 16) row-major tiles (``pack``'s ``tile_values``), T >= 0, any dtype.
    Returns:
        A new (T, 16, 16) tensor of the same dtype and device, the tiles' elements in fragment order.

    Example: ``fragment_order(tv).reshape(-1, 256)[i, 46] == tv[i, 9, 6]`` (g 1, h 1, t 1, j 2: lane 5).
    """
    _check_tiles(tile_values)
    t = tile_values.reshape(-1, 2, 8, 4, 4)                 # (T, h, g, t, j)
    return t.permute(0, 2, 3, 1, 4).reshape(-1, 16, 16)     # (T, g, t, h, j)


def fragment_order_inverse(tile_values: torch.Tensor) -> torch.Tensor:
    """The row-major tiles (T, 16, 16) back from :func:`fragment_order`'s layout (exactly: a permutation)."""
    _check_tiles(tile_values)
    t = tile_values.reshape(-1, 8, 4, 2, 4)                 # (T, g, t, h, j)
    return t.permute(0, 3, 1, 2, 4).reshape(-1, 16, 16)     # (T, h, g, t, j)


def _check_tiles(tile_values: torch.Tensor) -> None:
    if tile_values.dim() != 3 or tuple(tile_values.shape[1:]) != (16, 16):
        raise ValueError(f"tile_values must be (T, 16, 16) block-16 tiles, got shape {tuple(tile_values.shape)}")


@functools.cache
def block16_mma_configs(m_bucket: int) -> list[triton.Config]:
    """Autotune space (WARPS, TILES, SPLIT_K, STREAM): block rows per program, tiles per warp and step, programs
    per block row, the tile loads' cache hint. From a sweep of 4 x 3 x 6 configs over the six layer shapes at
    M = 1, 8, 16 on the H200 (run 17): four tiles per step won every row; one or two warps and splits of 4-16
    at up to 8 rows, two to eight warps and splits of 4-8 at 16 rows; each kept config is within 5% of the
    best on at least one row. Then the L1 evict-first hint on the tile loads (``STREAM`` 1, so x stays in L1)
    was 4-10% faster than no hint on all four rows it was tried on (4096 x 4096 and 11008 x 4096, M = 1 and 16;
    ``.cg``, STREAM 2, changed nothing): every config is in the space with and without it."""
    if m_bucket <= 8:
        space = [(1, 4, 4), (1, 4, 8), (1, 4, 16), (2, 4, 8), (2, 4, 16), (4, 4, 16)]
    else:
        space = [(2, 4, 4), (2, 4, 8), (4, 4, 4), (4, 4, 8), (8, 4, 8), (1, 4, 8)]
    return [triton.Config({"WARPS": w, "TILES": t, "SPLIT_K": sk, "MT": 2 if m_bucket > 8 else 1, "STREAM": st},
                          num_warps=w, num_stages=1) for w, t, sk in space for st in (1, 0)]


@triton.jit
def _load_tile(tv64, x64, col, ti, live, g, t, M, stride_x64, MT: tl.constexpr, STREAM: tl.constexpr,
               FRAG: tl.constexpr):
    """A's four registers and x's B registers (two per 8-row tile of x) of tile ``ti`` (x's 16-wide strip
    ``col``) for each lane; dead lanes (``live`` false) get zeros, so their ``mma`` adds nothing. ``FRAG`` 1:
    the tile is in :func:`fragment_order`, and the lane's two 8-byte pieces are one 16-byte load."""
    if FRAG:
        # lane 4g + t's 16 bytes at int64 2 (4g + t) of the tile's 64: (T, 2) int64, split into rows g, g + 8
        e2 = tl.arange(0, 2)[None, :]
        fo = tl.multiple_of((ti.to(tl.int64) * 64 + (g * 4 + t) * 2)[:, None] + e2, [1, 2])
        wa, wb = tl.split(splitk.load_weight(tv64 + fo, live[:, None], 0, STREAM))
    else:
        rows = ti.to(tl.int64) * 64 + g * 4 + t              # tile row g, columns 4t .. 4t + 3, as one int64
        wa = splitk.load_weight(tv64 + rows, live, 0, STREAM)
        wb = splitk.load_weight(tv64 + rows + 32, live, 0, STREAM)  # row g + 8
    # x row g, the same columns of the tile's strip
    return _operands(wa, wb, x64, g * stride_x64 + col * 4 + t, live, g, M, stride_x64, MT)


@triton.jit
def _operands(wa, wb, x64, xo, live, g, M, stride_x64, MT: tl.constexpr):
    """The ``mma`` registers from A's rows g, g + 8 as 8-byte words (``wa``, ``wb``) and x's (or the block sums')
    8 bytes at int64 ``xo`` of row g (and g + 8 for MT = 2): logical column pairs 2t and 2t + 8 are physical
    4t and 4t + 2, the low and high words."""
    wx = tl.load(x64 + xo, mask=live & (g < M), other=0)
    if MT == 2:
        wy = tl.load(x64 + xo + 8 * stride_x64, mask=live & (g + 8 < M), other=0)
    else:
        wy = wx
    return _word(wa, wa, 0), _word(wb, wb, 0), _word(wa, wa, 1), _word(wb, wb, 1), _word(wx, wx, 0), \
        _word(wx, wx, 1), _word(wy, wy, 0), _word(wy, wy, 1)


@triton.jit
def _load_bypass(s64, p64, s_g, j, hi, live, g, t, M, stride_s64, stride_p64, MT: tl.constexpr, KSUM: tl.constexpr):
    """The A and B registers of one dense ``mma`` of the SLoRB bypass ``S (P x)``: groups j .. j + 15 of S's rows
    g, g + 8 of the warp's block row (``s_g``: row g's first int64) and of the block sums ``px``, laid out as a
    tile and its x strip are in :func:`_load_tile` (lane t's 8 bytes: groups j + 4t .. j + 4t + 3). ``KSUM``:
    px is not read (B's registers are placeholders for :func:`_block_sums`)."""
    live = live & (j + 4 * t < hi)
    wa = tl.load(s64 + s_g + j // 4 + t, mask=live, other=0)
    wb = tl.load(s64 + s_g + 8 * stride_s64 + j // 4 + t, mask=live, other=0)
    if KSUM:
        a0 = _word(wa, wa, 0)
        return a0, _word(wb, wb, 0), _word(wa, wa, 1), _word(wb, wb, 1), a0, a0, a0, a0
    return _operands(wa, wb, p64, g * stride_p64 + j // 4 + t, live, g, M, stride_p64, MT)


@triton.jit
def _sum_round(x64, row_off, e, live, live8, c0, c1, c2, c3, col, g, NW: tl.constexpr, IS_BF16: tl.constexpr,
               USE_ASM: tl.constexpr, MT: tl.constexpr, stride_x64):
    """Two dense ``mma.m16n8k16`` of block sums (:func:`.warp_mma._sum_mma`) on lane t's 16 bytes of x at int64
    ``e`` of rows g (``row_off``) and g + 8 (masks ``live``, ``live8``): A's K columns are the lane's elements
    (2 words an ``mma``; the order of K is free in a sum), B is 1 where ``col``, the D column of the lane's
    group in the block these D registers hold (-1: another block), is g."""
    e2 = tl.arange(0, 2)[None, :]
    xa, xb = tl.split(tl.load(x64 + (row_off + e)[:, None] + e2, mask=live[:, None], other=0))
    ya, yb = xa, xb
    if MT == 2:
        ya, yb = tl.split(tl.load(x64 + (row_off + 8 * stride_x64 + e)[:, None] + e2, mask=live8[:, None], other=0))
    c0, c1, c2, c3 = _sum_mma(_word(xa, xa, 0), _word(ya, ya, 0), _word(xa, xa, 1), _word(ya, ya, 1), col, col, g,
                              c0, c1, c2, c3, NW, IS_BF16, USE_ASM)
    c0, c1, c2, c3 = _sum_mma(_word(xb, xb, 0), _word(yb, yb, 0), _word(xb, xb, 1), _word(yb, yb, 1), col, col, g,
                              c0, c1, c2, c3, NW, IS_BF16, USE_ASM)
    return c0, c1, c2, c3


@triton.jit
def _block_sums(x64, stride_x64, j, hi, g, t, M, KSUM: tl.constexpr, MT: tl.constexpr, NW: tl.constexpr,
                IS_BF16: tl.constexpr, USE_ASM: tl.constexpr):
    """B's registers of the bypass ``mma`` of groups j .. j + 15 (what :func:`_load_bypass` reads from ``px``
    otherwise), summed from x by dense ``mma`` in rounds of 32 elements: lane t loads 8 of them (its group is
    q = (32 p + 8t) // k of the 16), and D (x rows x 8 columns) gathers groups 4c' + {0, 1} in one block of
    registers ("lo", column 2c' + q % 2) and 4c' + {2, 3} in another ("hi"), so that lane (g, t) ends with
    groups 4t .. 4t + 3 of x row g: B's own layout. Groups of 16: a round's groups all fall in block p % 2 (two
    ``mma``); groups of 8: in both (four). Sixteen ``mma`` either way; sums in fp32, rounded once."""
    lo0, lo1, lo2, lo3, hi0, hi1, hi2, hi3 = _zeros8(NW)
    row_off = g * stride_x64
    for p in tl.static_range(KSUM // 2):        # 16 groups of KSUM elements, 32 a round
        q = (32 * p + 8 * t) // KSUM
        live = j + q < hi
        e = (j * KSUM + 32 * p + 8 * t) // 4    # the lane's 16 bytes (int64 offset in its row)
        col = 2 * (q // 4) + q % 2
        if KSUM == 8 or p % 2 == 0:
            in_lo = live & (q % 4 < 2)
            lo0, lo1, lo2, lo3 = _sum_round(x64, row_off, e, in_lo & (g < M), in_lo & (g + 8 < M), lo0, lo1, lo2, lo3,
                                            tl.where(q % 4 < 2, col, -1), g, NW, IS_BF16, USE_ASM, MT, stride_x64)
        if KSUM == 8 or p % 2 == 1:
            in_hi = live & (q % 4 >= 2)
            hi0, hi1, hi2, hi3 = _sum_round(x64, row_off, e, in_hi & (g < M), in_hi & (g + 8 < M), hi0, hi1, hi2, hi3,
                                            tl.where(q % 4 >= 2, col, -1), g, NW, IS_BF16, USE_ASM, MT, stride_x64)
    return (_pack_round(lo0, lo1, IS_BF16), _pack_round(hi0, hi1, IS_BF16), _pack_round(lo2, lo3, IS_BF16),
            _pack_round(hi2, hi3, IS_BF16))


@triton.jit
def _with_sums(ld, sums):
    """The registers of :func:`_load_bypass` (KSUM) with the sums of :func:`_block_sums` as B."""
    a0, a1, a2, a3, b0, b1, b2, b3 = ld
    b0, b1, b2, b3 = sums
    return a0, a1, a2, a3, b0, b1, b2, b3


@triton.jit
def _cols(col_ptr, ti, hi, TILES: tl.constexpr):
    """The x strips (col_idx) of tiles ti .. ti + TILES - 1 (0 past ``hi``; unused entries repeat the first)."""
    c0 = tl.load(col_ptr + ti, mask=ti < hi, other=0)
    c1 = c0
    c2 = c0
    c3 = c0
    if TILES >= 2:
        c1 = tl.load(col_ptr + ti + 1, mask=ti + 1 < hi, other=0)
    if TILES == 4:
        c2 = tl.load(col_ptr + ti + 2, mask=ti + 2 < hi, other=0)
        c3 = tl.load(col_ptr + ti + 3, mask=ti + 3 < hi, other=0)
    return c0, c1, c2, c3


@triton.jit
def _mma_tile(ld, acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7, NW: tl.constexpr, IS_BF16: tl.constexpr,
              USE_ASM: tl.constexpr, MT: tl.constexpr):
    a0, a1, a2, a3, b0, b1, b2, b3 = ld
    acc0, acc1, acc2, acc3 = _k16(a0, a1, a2, a3, b0, b1, acc0, acc1, acc2, acc3, NW, IS_BF16, USE_ASM)
    if MT == 2:
        acc4, acc5, acc6, acc7 = _k16(a0, a1, a2, a3, b2, b3, acc4, acc5, acc6, acc7, NW, IS_BF16, USE_ASM)
    return acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7


@triton.jit(do_not_specialize=["M"])
def _block16_mma_kernel(
    x_ptr, tv_ptr, row_ptr_ptr, col_ptr, bias_ptr, out_ptr, ws_ptr, cnt_ptr,
    M, N, K, M_KEY, stride_xm, stride_om,
    px_ptr, s_ptr, stride_pm, stride_sn, GROUPS,   # the SLoRB bypass (BYPASS): block sums (M, G), S (N, G)
    HAS_BIAS: tl.constexpr, USE_ASM: tl.constexpr,
    BYPASS: tl.constexpr,    # 1: add S (P x), G = GROUPS groups (a multiple of 4), 16 per dense mma
    KSUM: tl.constexpr,      # 8 or 16: the bypass's block sums of that many elements from x (_block_sums; 0: px)
    PDL: tl.constexpr,       # > 0: launched with programmatic dependent launch (splitk.pdl)
    WARPS: tl.constexpr,     # block rows per program, one per warp
    TILES: tl.constexpr,     # tiles per warp and step: 1, 2 or 4
    SPLIT_K: tl.constexpr,
    MT: tl.constexpr,        # 8-row tiles of x (1: M <= 8, 2: M <= 16)
    STREAM: tl.constexpr,    # cache hint of the tile loads (splitk.load_weight)
    FRAG: tl.constexpr,      # 1: tile_values in fragment_order (one 16-byte load per lane and tile)
):
    IS_BF16: tl.constexpr = x_ptr.dtype.element_ty == tl.bfloat16
    tid = tl.arange(0, 32 * WARPS)
    lane = tid % 32
    g = lane // 4
    t = lane % 4
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    block_rows = N // 16
    r = pid_n * WARPS + tid // 32                       # this warp's block row
    ok_r = r < block_rows
    rr = tl.minimum(r, block_rows - 1)
    t_begin = tl.load(row_ptr_ptr + rr)
    t_end = tl.where(ok_r, tl.load(row_ptr_ptr + rr + 1), t_begin)
    per = (t_end - t_begin + SPLIT_K - 1) // SPLIT_K
    lo = t_begin + pid_k * per
    hi = tl.minimum(lo + per, t_end)
    steps = tl.max(tl.maximum(hi - lo, 0), axis=0)     # the longest tile list among the program's warps

    tv64 = tv_ptr.to(tl.pointer_type(tl.int64))
    x64 = x_ptr.to(tl.pointer_type(tl.int64))
    stride_x64 = stride_xm // 4
    z = tl.zeros((32 * WARPS,), tl.float32)
    acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7 = z, z, z, z, z, z, z, z
    # a step's x loads need its tiles' strips: those are loaded one step ahead, so the x loads never wait for
    # an index load (the SASS of the first form issued col_idx -> x as a dependent chain every step)
    c0, c1, c2, c3 = _cols(col_ptr, lo, hi, TILES)
    splitk.pdl_begin(PDL)                               # (x is read from here on; the indices above are weights)
    for s in range(0, steps, TILES):
        ti = lo + s
        l0 = _load_tile(tv64, x64, c0, ti, ti < hi, g, t, M, stride_x64, MT, STREAM, FRAG)
        if TILES >= 2:
            l1 = _load_tile(tv64, x64, c1, ti + 1, ti + 1 < hi, g, t, M, stride_x64, MT, STREAM, FRAG)
        if TILES == 4:
            l2 = _load_tile(tv64, x64, c2, ti + 2, ti + 2 < hi, g, t, M, stride_x64, MT, STREAM, FRAG)
            l3 = _load_tile(tv64, x64, c3, ti + 3, ti + 3 < hi, g, t, M, stride_x64, MT, STREAM, FRAG)
        c0, c1, c2, c3 = _cols(col_ptr, ti + TILES, hi, TILES)
        acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7 = _mma_tile(
            l0, acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7, WARPS, IS_BF16, USE_ASM, MT)
        if TILES >= 2:
            acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7 = _mma_tile(
                l1, acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7, WARPS, IS_BF16, USE_ASM, MT)
        if TILES == 4:
            acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7 = _mma_tile(
                l2, acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7, WARPS, IS_BF16, USE_ASM, MT)
            acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7 = _mma_tile(
                l3, acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7, WARPS, IS_BF16, USE_ASM, MT)
    if BYPASS:   # the bypass: dense over all G groups, split over the programs of the block row like its tiles
        s64 = s_ptr.to(tl.pointer_type(tl.int64))
        p64 = px_ptr.to(tl.pointer_type(tl.int64))
        stride_s64 = stride_sn // 4
        s_g = (rr * 16 + g).to(tl.int64) * stride_s64
        g_per = ((GROUPS + 15) // 16 + SPLIT_K - 1) // SPLIT_K * 16
        g_lo = pid_k * g_per
        g_hi = tl.minimum(g_lo + g_per, GROUPS)
        for j in range(g_lo, g_hi, 16):
            lb = _load_bypass(s64, p64, s_g, j, g_hi, ok_r, g, t, M, stride_s64, stride_pm // 4, MT, KSUM)
            if KSUM:
                lb = _with_sums(lb, _block_sums(x64, stride_x64, j, g_hi, g, t, M, KSUM, MT, WARPS, IS_BF16, USE_ASM))
            acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7 = _mma_tile(
                lb, acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7, WARPS, IS_BF16, USE_ASM, MT)
    splitk.pdl_end(PDL)

    # D registers as columns c of (32 WARPS, 4 MT): tl.join stacks on a new last axis, so c = parity * 2 MT +
    # half * MT + tile (parity: x row 2t or 2t + 1; half: W row g or g + 8; tile: x rows 0-7 or 8-15)
    acc = tl.reshape(tl.join(tl.join(acc0, acc1), tl.join(acc2, acc3)), (32 * WARPS, 4))
    if MT == 2:
        acc = tl.reshape(tl.join(tl.join(tl.join(acc0, acc1), tl.join(acc2, acc3)),
                                 tl.join(tl.join(acc4, acc5), tl.join(acc6, acc7))), (32 * WARPS, 8))
    c = tl.arange(0, 4 * MT)[None, :]
    rows2 = r[:, None]
    idx_n = rows2 * 16 + g[:, None] + 8 * ((c // MT) % 2)
    idx_m = 2 * t[:, None] + c // (2 * MT) + 8 * (c % MT)
    mask = (rows2 < block_rows) & (idx_m < M)
    if HAS_BIAS:
        if pid_k == 0:
            acc += tl.load(bias_ptr + idx_n, mask=mask, other=0.0).to(tl.float32)
    splitk.store_points(acc, out_ptr, ws_ptr, cnt_ptr, idx_m, idx_n, mask, M, N, stride_om, pid_k, pid_n, SPLIT_K)


def block16_mma_unsupported(x2: torch.Tensor) -> str | None:
    """Why this kernel cannot run ``x2 @ W.T``, or None."""
    return splitk.mma_unsupported(x2, MAX_M, "mma.m16n8k16")


SUM_GROUPS = (8, 16)   # SLoRB group sizes whose block sums the kernel takes from x itself (px None)


def block16_mma_bypass_unsupported(x2: torch.Tensor, px: torch.Tensor | None, s: torch.Tensor) -> str | None:
    """Why this kernel cannot add the SLoRB bypass ``px @ S.T`` (px (M, G) the block sums of x2, or None: the
    kernel sums x itself; S (N, G)) itself (then the caller adds it as a matmul of its own), or None."""
    groups = s.shape[-1]
    if groups % 4:
        return f"{groups} SLoRB groups (the kernel reads them 4 at a time: a multiple of 4)"
    if px is None and (x2.shape[1] % groups or x2.shape[1] // groups not in SUM_GROUPS):
        return f"SLoRB group {x2.shape[1] / groups:g} (K={x2.shape[1]}, S {tuple(s.shape)}): the kernel sums x " \
               f"itself in groups of {' or '.join(map(str, SUM_GROUPS))}"
    if px is not None and tuple(px.shape) != (x2.shape[0], groups):
        return f"block sums of shape {tuple(px.shape)}, expected ({x2.shape[0]}, {groups})"
    if (px is not None and px.dtype != x2.dtype) or s.dtype != x2.dtype:
        return f"bypass dtypes px {None if px is None else px.dtype}, S {s.dtype} differ from x's {x2.dtype}"
    return None


_AUTOTUNED: dict = {}


def _autotuned(m_bucket: int, frag: bool = False, bypass: bool = False, ksum: int = 0):
    """The autotuned launcher of an M bucket and tile layout. One per layout, because Triton's autotuner keys
    its cache on the ``key`` arguments and the tensors' dtypes only, not on the constexpr flags: a single one
    would hand the fragment-order launch the config tuned for the row-major one (or the reverse), and the two
    are to be timed each at its own best."""
    key = (m_bucket, frag, bypass, ksum)   # (likewise the bypass and where its sums come from)
    if key not in _AUTOTUNED:
        _AUTOTUNED[key] = splitk.autotuner(_block16_mma_kernel, block16_mma_configs(m_bucket))
    return _AUTOTUNED[key]


def block16_mma(x2: torch.Tensor, tile_values: torch.Tensor, row_ptr: torch.Tensor, col_idx: torch.Tensor,
                n: int, k: int, bias: torch.Tensor | None = None, config: dict | None = None, *,
                frag: bool = False, bypass: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """``x2 @ W.T + bias`` for x2 (M, K), M <= 16, bf16/fp16, W (N, K) as block-16 tiles (:mod:`.block16`'s
    operands). ``config``: fixed ``WARPS``, ``TILES``, ``SPLIT_K`` instead of autotuning (tests, the interpreter
    on CPU). ``frag``: ``tile_values`` are already in :func:`fragment_order` (converted once, ahead of the
    calls), so each lane loads a tile's A operand in one 16-byte load instead of two 8-byte ones (the op's
    ``frag``; the pack format keeps row-major tiles). ``bypass``: (px, S), a SLoRB bypass added in the same kernel,
    ``+ px @ S.T`` (:func:`block16_mma_bypass_unsupported` says when it cannot be); px None: the block sums of
    x, which the kernel then takes itself (:func:`_block_sums`). Returns (M, N) in x2.dtype."""
    from sfcompile.lowering.kernels.block16 import _check

    reason = block16_mma_unsupported(x2)
    if reason is None and bypass is not None:
        reason = block16_mma_bypass_unsupported(x2, *bypass)
    if reason:
        raise ValueError(f"block16_mma cannot run this matmul: {reason}")
    _check(x2, tile_values, row_ptr, col_idx, n, k, bias, 1)
    m = x2.shape[0]
    on_cpu = x2.device.type == "cpu"
    if x2.stride(1) != 1 or (m > 1 and x2.stride(0) % 4) or x2.data_ptr() % 8:   # x as 8-byte words
        x2 = x2.contiguous().clone()
    tile_values = tile_values.contiguous()
    mt = 2 if m > 8 else 1
    if config is not None:
        if config["TILES"] not in (1, 2, 4):
            raise ValueError(f"TILES must be 1, 2 or 4 (tiles per warp and step), got {config['TILES']}")
        config = {"MT": mt, "num_warps": config["WARPS"], "STREAM": 0, **config}
        if config["MT"] != mt:
            raise ValueError(f"MT={config['MT']} does not fit {m} rows of x (1: up to 8, 2: up to 16)")
    out = torch.empty((m, n), device=x2.device, dtype=x2.dtype)
    split = splitk.split_depth(config, lambda: block16_mma_configs(splitk.m_key(m)))
    ws, cnt = splitk.decode_buffers(m, n, out, split, row_ptr)
    # the bypass's operands as 8-byte words (4 groups); px None: the kernel sums x (16-byte loads when aligned)
    px, s = bypass if bypass is not None else (x2, tile_values)
    s = splitk.word_aligned(s, 4)
    ksum = k // s.shape[-1] if bypass is not None and px is None else 0
    px = s if ksum else splitk.word_aligned(px, 4)
    args = (x2, tile_values, row_ptr, col_idx, bias if bias is not None else tile_values, out, ws, cnt, m, n, k,
            splitk.m_key(m), x2.stride(0), out.stride(0), px, s, px.stride(0), s.stride(0),
            s.shape[-1] if bypass is not None else 0)
    flags = {"HAS_BIAS": bias is not None, "USE_ASM": not on_cpu, "PDL": splitk.pdl(x2.device), "FRAG": int(frag),
             "BYPASS": int(bypass is not None), "KSUM": ksum}

    def grid(meta_):
        return (triton.cdiv(n // 16, meta_["WARPS"]), meta_["SPLIT_K"])

    splitk.launch(_block16_mma_kernel, lambda: _autotuned(splitk.m_key(m), frag, bypass is not None, ksum), grid,
                  args, flags, config, on_cpu)
    return out


def block16_mma_reference(x2: torch.Tensor, tile_values: torch.Tensor, row_ptr: torch.Tensor, col_idx: torch.Tensor,
                          n: int, k: int, bias: torch.Tensor | None = None,
                          bypass: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Pure-PyTorch reference of what the kernel computes: W unpacked from its tiles, an fp32 matmul, x2.dtype
    out (:func:`.block16.block16_matmul_reference`), plus the bypass ``px @ S.T`` in the same fp32 sum."""
    from sfcompile.lowering.kernels.block16 import block16_matmul_reference

    if bypass is None:
        return block16_matmul_reference(x2, tile_values, row_ptr, col_idx, n, k, bias)
    y = block16_matmul_reference(x2.float(), tile_values.float(), row_ptr, col_idx, n, k,
                                 None if bias is None else bias.float())
    px, s = bypass
    if px is None:
        from sfcompile.masking.slorb import block_sums

        px = block_sums(x2, s.shape[-1])
    return (y + px.float() @ s.float().T).to(x2.dtype)
