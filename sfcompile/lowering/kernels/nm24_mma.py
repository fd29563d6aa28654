"""2:4 decode matmul ``y = x @ W.T (+ bias)`` on the sparse tensor cores (PTX ``mma.sp``), W packed as values
+ 2-bit positions, for few rows of x (M <= 16, bf16/fp16, K a multiple of 32).

The decode kernels of :mod:`.nm24_decode` rebuild W's kept entries next to x in registers: 9-50 SASS
instructions per stored value, so they stream packed bytes at 1.2-2.3 TB/s where cuBLAS streams dense ones at
~3. Here the hardware does the decompression: ``mma.sp.m16n8k32`` takes a 16 x 32 block of W as its 16 x 16
kept values plus 4 bits of positions per group of 4, and x^T as the 32 x 8 dense operand (the rows of x are
its 8 columns; 16 rows take two). What is left per weight element is the load of its bytes.

Each warp owns 16 output columns (rows of W) and a share of K, walked in spans of 4 chunks of 32 (one ``mma``
per chunk's worth of values). The fragments are read straight from the packed layout of
:mod:`sfcompile.lowering.pack`, with no second copy of W: an ``mma`` may take any 8 groups of 4 as its K, in
any order, as long as its x rows follow the same order. A row's span is 128 bytes of values = eight 16-byte
pieces; lane t of a quad loads pieces t and 4 + t of its two rows, so a quad reads 64 contiguous bytes of a
row per load and no sector is fetched twice. ``mma`` u of the span takes 32-bit word u of each piece:
logical group L (0..7) is packed group 4 (L % 2) + u of chunk c + L // 2, for the values, the metadata
nibbles (:func:`_span_meta`) and x alike. x's registers of lane t are then the words of t's parity among 8
contiguous ones of a chunk, so lanes t and t ^ 1 load 4 of them each (one 16-byte load per chunk and x tile)
and swap the two the other needs with ``shfl`` (:func:`_x_chunk`, ``XSHFL``).

Measured on the H200 against dense cuBLAS, autotuned (benchmarks/README.md, run 18): 1.34x at the median over
the six LLaMA-2-7B / Qwen3-8B layer shapes and M = 1..16 (0.98-1.41x); per M 1.35x / 1.36x / 1.35x / 1.31x /
1.02x. Against two x loads per lane, the best config per row with the shuffle gained -0.05 to +0.09x at M = 1,
+0.02 to +0.12x at M = 8 and -0.01 to +0.13x at M = 16 (run 14: 1.27x, 0.84-0.98x at M = 16). The weights stream
at ~2.8 TB/s where cuBLAS streams ~3.7 (least-squares over the six shapes, run 12; both pay ~5 us per call
besides), bound by memory latency at 22 warps per SM (registers); at M = 8-16 the x loads kept L1 84-88% busy
before the shuffle. For scale: a Triton kernel that only streams the same packed bytes, no math, reaches
1.62-1.73x of dense cuBLAS in the same harness (``benchmarks/stream_probe.py``, run 18). The layout of pieces and
the 16-byte x loads (run 12) replaced one where lane t loaded all of chunk c + t (every sector read by two
instructions; x as 16 scalar loads per span): +0.05-0.12x at M = 8, +0.1-0.2x at M = 16.

Triton has no sparse dot, so the ``mma`` is inline PTX on 1-D tensors of exactly one element per thread
(``tl.arange(0, 32 * num_warps)``: element i lives in thread i, so each element is one lane's fragment and
the warp-wide instruction sees every lane's registers; :mod:`.warp_mma`). The Triton interpreter has no PTX:
on CPU (tests) :func:`.warp_mma._mma_sp_emulated` computes the same warp-wide product from the same per-lane
registers.

Split-K across programs goes through :func:`.splitk.store_points`; ``WARPS_K`` warps of a program split its
K range further and are summed in the program.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from sfcompile.lowering.kernels import splitk
from sfcompile.lowering.kernels.nm24_decode import nm24_decode_reference
from sfcompile.lowering.kernels.warp_mma import (
    _k8,
    _mma_sp,
    _mma_sp_emulated,
    _pack_round,
    _sum_mma,
    _swap_pairs,
    _word,
    _zeros8,
)

__all__ = ["nm24_mma", "nm24_mma_reference", "nm24_mma_configs", "nm24_mma_unsupported", "nm24_mma_bypass_unsupported",
           "BYPASS_GROUPS", "MAX_M", "CONFIG_KEYS", "CONFIG_DEFAULTS"]

MAX_M = 16
# the launch choices a config names (MT follows from M); a fixed config may add num_warps, num_stages, maxnreg
CONFIG_KEYS = ("WARPS_N", "WARPS_K", "CHUNKS", "SPLIT_K", "PREFETCH", "STRIPS", "STAGES", "STREAM", "XSHFL", "EARLY")
# what a fixed config omits
CONFIG_DEFAULTS = {"PREFETCH": 0, "STRIPS": 1, "STAGES": 1, "STREAM": 0, "XSHFL": 1, "EARLY": 1}
# groups past N or K: positions (0, 1) with zero values (a code of 0b0000 is undefined in PTX)
_MASKED_META = tl.constexpr(0x44444444)


@functools.cache
def nm24_mma_configs(m_bucket: int) -> list[triton.Config]:
    """Autotune space: (WARPS_N, WARPS_K, CHUNKS, SPLIT_K, STRIPS, STREAM), all with the x shuffle (XSHFL 1)
    and no L2 prefetch; num_warps = WARPS_N * WARPS_K; CHUNKS 4 or 8 (one or two spans per warp and step, every
    load of the step issued before its first mma); STRIPS the 16-row strips of W per warp; STREAM the weight
    loads' cache hint (:func:`.splitk.load_weight`)."""
    # mma_decode sweeps 3-6 (H200, 2026-11-30; benchmarks/README.md runs 11-13): the configs that were best for
    # some (LLaMA-2-7B / Qwen3-8B layer shape, M <= 16), plus neighbours. L2 prefetch one step ahead won only
    # where K per program is long (LLaMA-2-7B down, 4096 x 11008: +0.05-0.09x) and on Qwen3-8B k,v (+0.02x);
    # it lost up to 0.23x elsewhere, and two steps ahead never won: only those two configs prefetch. Sweep 6
    # (run 13): two strips per warp (x's registers serve 32 rows of W) won only at M = 16 on the gate/up shapes
    # (11008 / 12288 x 4096: +0.07x with (4, 1, 8, 4)) and lost 0.2-0.7x at M = 1 and 8: it joins the space
    # of the two-x-tile bucket alone. Pipelined loops (STAGES = 2, 3: cp.async into shared memory) lost
    # 0.2-0.9x everywhere and a 64-register cap (maxnreg) 0.03-0.6x: neither is in the space. (8, 1, 8, 4) and
    # (2, 2, 4, 8) were never the best of sweeps 4-6 and left it. Tuned by splitk.tuning_bench (run 14), the
    # autotuner no longer picks a prefetch config anywhere: right on Qwen3-8B down (where do_bench's timing
    # picked one, 0.03-0.07x slower), a miss on LLaMA-2-7B down (-0.04-0.07x at M <= 8)
    # Sweep 7 (run 18): with the x shuffle (XSHFL 1) the best config per row gained -0.05 to +0.09x at M = 1,
    # +0.02 to +0.12x at M = 8 and -0.01 to +0.13x at M = 16 over the best with two x loads per lane; config by
    # config it was as fast or faster nearly everywhere, so every config of the space uses it (one space for
    # both would double the autotuning); with it the prefetch configs won no row (they left), nor did
    # (4, 1, 8, 4) with one strip. (8, 1, 4, 4) stays for the gate/up shapes at M <= 8, (2, 2, 8, 8) for Qwen3-8B
    # k,v; the two-strip config with the evict-first hint for gate/up at M = 16. Of 18 more two-strip configs at
    # M = 16 (sweep 8), only (2, 1, 8, 8) with the hint won a row (LLaMA-2-7B down, +0.05x); left out, so that
    # this space is the one the kernel table of run 18 measured.
    space = [(2, 2, 4, 4, 1, 0), (4, 1, 4, 8, 1, 0), (4, 1, 8, 8, 1, 0), (2, 2, 8, 8, 1, 0)]
    if m_bucket > 8:
        space += [(4, 1, 8, 4, 2, 1)]
    else:
        space += [(8, 1, 4, 4, 1, 0)]
    return [triton.Config({**CONFIG_DEFAULTS, "WARPS_N": wn, "WARPS_K": wk, "CHUNKS": ch, "SPLIT_K": sk,
                           "STRIPS": st, "STREAM": hint, "XSHFL": 1, "MT": 2 if m_bucket > 8 else 1},
                          num_warps=wn * wk, num_stages=1)
            for wn, wk, ch, sk, st, hint in space]


@triton.jit
def _prefetch_l2(ptr):
    """Ask L2 for the line holding each element's address (PTX ``prefetch.global.L2``: a hint, no register
    waits for it); the returned zeros only give the asm a result."""
    return tl.inline_asm_elementwise("prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l", [ptr], dtype=tl.int32,
                                     is_pure=False, pack=1)


@triton.jit
def _prefetch_span(vr0, vr1, mr0, mr1, c, t, chunks):
    """L2 prefetch of span c of rows row0, row0 + 8 (value pointers vr0, vr1, metadata pointers mr0, mr1): a
    row's span is 128 bytes of values and 16 of metadata, so lanes t = 0, 1 ask for the line of its first
    byte and t = 2, 3 for that of its last (two lines when the span straddles them). Offsets are clamped to
    the row, so every address is inside the packed tensors when the rows are."""
    tail = t // 2
    vo = tl.minimum(4 * c + 15 * tail, 4 * chunks - 1)
    mo = tl.minimum(c + 3 * tail, chunks - 1)
    odd = (t % 2) == 1
    _prefetch_l2(tl.where(odd, vr1, vr0) + vo)
    _prefetch_l2(tl.where(odd, mr1, mr0) + mo)


@triton.jit
def _bypass_loads(s32, sr0, sr1, ok0, ok1, px32, stride_pw, c, c_hi, g, t, M, GPC: tl.constexpr, MT: tl.constexpr,
                  KSUM: tl.constexpr):
    """The registers of the SLoRB bypass ``S (P x)`` of span c .. c + 3: its 4 GPC groups (GPC groups per chunk of
    32) as GPC / 2 dense ``mma.m16n8k8`` u = 0, 1 (u = 1 repeats u = 0 when GPC = 2), S's rows sr0, sr1 (word
    offsets of rows row0, row0 + 8) as A and the block sums of x (``px``, (M, K / k)) as B: (A0, A1, B, B of x
    rows 8-15) per u. Lane t's two groups 8u + 2t, + 1 of the span are one 32-bit word of S and of px, and lie
    in one chunk, c + (8u + 2t) // GPC. ``KSUM``: px is not read (the B registers are placeholders for
    :func:`_span_sums`)."""
    j = c * GPC + 2 * t                           # the lane's first group of u = 0 (even: word j // 2)
    live = ((c + (2 * t) // GPC) < c_hi)
    a0 = tl.load(s32 + sr0 + j // 2, mask=live & ok0, other=0)
    a1 = tl.load(s32 + sr1 + j // 2, mask=live & ok1, other=0)
    b0 = a0
    if not KSUM:
        b0 = tl.load(px32 + g * stride_pw + j // 2, mask=live & (g < M), other=0)
    b1 = b0
    if MT == 2 and not KSUM:
        b1 = tl.load(px32 + (g + 8) * stride_pw + j // 2, mask=live & (g + 8 < M), other=0)
    e0, e1, f0, f1 = a0, a1, b0, b1
    if GPC == 4:
        live = ((c + (8 + 2 * t) // GPC) < c_hi)
        e0 = tl.load(s32 + sr0 + j // 2 + 4, mask=live & ok0, other=0)
        e1 = tl.load(s32 + sr1 + j // 2 + 4, mask=live & ok1, other=0)
        if not KSUM:
            f0 = tl.load(px32 + g * stride_pw + j // 2 + 4, mask=live & (g < M), other=0)
            f1 = f0
            if MT == 2:
                f1 = tl.load(px32 + (g + 8) * stride_pw + j // 2 + 4, mask=live & (g + 8 < M), other=0)
    return a0, a1, b0, b1, e0, e1, f0, f1


@triton.jit
def _group(i: tl.constexpr, u: tl.constexpr, t, GPC: tl.constexpr):
    """The D column (0..7) of a block-sum ``mma`` that lane t's x register i of ``mma`` u adds to: the SLoRB
    group of its elements (chunk i's 16 (t // 2) + 4u + 2 (t % 2) + {0, 1}, :func:`_x_chunk`) in the span. Groups
    of 16 (GPC 2): 2i + t // 2 of the span's 8. Groups of 8 (GPC 4): 4i + 2 (t // 2) + u // 2 of its 16, the
    ``mma`` of chunks 0, 1 taking groups 0-7 and those of chunks 2, 3 groups 8-15 (hence i % 2)."""
    if GPC == 2:
        return 2 * i + t // 2
    else:
        return 4 * (i % 2) + 2 * (t // 2) + u // 2


@triton.jit
def _chunk_sums(i: tl.constexpr, x0, x1, x2, x3, y0, y1, y2, y3, g, t, d0, d1, d2, d3, GPC: tl.constexpr,
                NW: tl.constexpr, IS_BF16: tl.constexpr, USE_ASM: tl.constexpr):
    """Chunk i's two :func:`_sum_mma` (its x registers u = 0, 1 and u = 2, 3) added to D d0-d3."""
    d0, d1, d2, d3 = _sum_mma(x0, y0, x1, y1, _group(i, 0, t, GPC), _group(i, 1, t, GPC), g, d0, d1, d2, d3,
                              NW, IS_BF16, USE_ASM)
    return _sum_mma(x2, y2, x3, y3, _group(i, 2, t, GPC), _group(i, 3, t, GPC), g, d0, d1, d2, d3,
                    NW, IS_BF16, USE_ASM)


@triton.jit
def _span_sums(xs0, xs1, g, t, GPC: tl.constexpr, NW: tl.constexpr, IS_BF16: tl.constexpr, USE_ASM: tl.constexpr):
    """The block sums of a span's SLoRB groups, from x's registers of its sparse ``mma`` (:func:`_x_tiles`): the
    bypass's B registers (B, B of x rows 8-15, for u = 0, 1) that :func:`_bypass_loads` reads from ``px``
    otherwise. Eight :func:`_sum_mma` take the 16 registers in pairs; their D (lane (g, t): x row g, groups 2t,
    2t + 1; x row g + 8 in D registers 2, 3) is already the layout of the bypass's B, so no lane exchanges
    anything. Sums in fp32, rounded once, as the graph's block sums are."""
    x00, x01, x02, x03, x10, x11, x12, x13, x20, x21, x22, x23, x30, x31, x32, x33 = xs0
    y00, y01, y02, y03, y10, y11, y12, y13, y20, y21, y22, y23, y30, y31, y32, y33 = xs1
    d0, d1, d2, d3, e0, e1, e2, e3 = _zeros8(NW)
    d0, d1, d2, d3 = _chunk_sums(0, x00, x01, x02, x03, y00, y01, y02, y03, g, t, d0, d1, d2, d3, GPC, NW,
                                 IS_BF16, USE_ASM)
    d0, d1, d2, d3 = _chunk_sums(1, x10, x11, x12, x13, y10, y11, y12, y13, g, t, d0, d1, d2, d3, GPC, NW,
                                 IS_BF16, USE_ASM)
    # chunks 2, 3: with groups of 8 the span's groups 8-15, the second bypass mma's (e); of 16, groups 4-7 (d)
    f0, f1, f2, f3 = e0, e1, e2, e3
    if GPC == 2:
        f0, f1, f2, f3 = d0, d1, d2, d3
    f0, f1, f2, f3 = _chunk_sums(2, x20, x21, x22, x23, y20, y21, y22, y23, g, t, f0, f1, f2, f3, GPC, NW,
                                 IS_BF16, USE_ASM)
    f0, f1, f2, f3 = _chunk_sums(3, x30, x31, x32, x33, y30, y31, y32, y33, g, t, f0, f1, f2, f3, GPC, NW,
                                 IS_BF16, USE_ASM)
    if GPC == 2:
        d0, d1, d2, d3 = f0, f1, f2, f3
    else:
        e0, e1, e2, e3 = f0, f1, f2, f3
    return (_pack_round(d0, d1, IS_BF16), _pack_round(d2, d3, IS_BF16), _pack_round(e0, e1, IS_BF16),
            _pack_round(e2, e3, IS_BF16))


@triton.jit
def _with_sums(ld, sums):
    """The bypass registers of :func:`_bypass_loads` (KSUM) with the block sums of :func:`_span_sums` as B."""
    a0, a1, b0, b1, e0, e1, f0, f1 = ld
    b0, b1, f0, f1 = sums
    return a0, a1, b0, b1, e0, e1, f0, f1


@triton.jit
def _bypass_mmas(ld, acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7, GPC: tl.constexpr, MT: tl.constexpr,
                 NW: tl.constexpr, IS_BF16: tl.constexpr, USE_ASM: tl.constexpr):
    """The bypass's ``mma`` of a span on registers from :func:`_bypass_loads`, into the span's D registers."""
    a0, a1, b0, b1, e0, e1, f0, f1 = ld
    acc0, acc1, acc2, acc3 = _k8(a0, a1, b0, acc0, acc1, acc2, acc3, NW, IS_BF16, USE_ASM)
    if MT == 2:
        acc4, acc5, acc6, acc7 = _k8(a0, a1, b1, acc4, acc5, acc6, acc7, NW, IS_BF16, USE_ASM)
    if GPC == 4:
        acc0, acc1, acc2, acc3 = _k8(e0, e1, f0, acc0, acc1, acc2, acc3, NW, IS_BF16, USE_ASM)
        if MT == 2:
            acc4, acc5, acc6, acc7 = _k8(e0, e1, f1, acc4, acc5, acc6, acc7, NW, IS_BF16, USE_ASM)
    return acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7


@triton.jit
def _columns4(v):
    """The 4 columns of a (T, 4) tensor as (T,) tensors."""
    a, b = tl.split(tl.reshape(v, (v.shape[0], 2, 2)))       # a: columns 0, 2; b: columns 1, 3
    c0, c2 = tl.split(a)
    c1, c3 = tl.split(b)
    return c0, c1, c2, c3


@triton.jit
def _load_span(vr0, vr1, mr0, mr1, c, c_hi, ok0, ok1, t, META_VEC: tl.constexpr, STREAM: tl.constexpr):
    """The weight operands of the 4 ``mma`` of span c .. c + 3. A row's span is 128 bytes = eight 16-byte
    pieces; lane t of a quad loads pieces t and 4 + t of rows row0 and row0 + 8, so a quad's load covers 64
    contiguous bytes of each row and a warp's 8 rows x 2 whole sectors. Piece t is half t % 2 of chunk
    c + t // 2 (its packed groups 4 (t % 2) .. 4 (t % 2) + 3), piece 4 + t the same half of chunk c + 2 + t // 2.
    The span's 4 metadata words per row come in one 16-byte load when the row stride allows (``META_VEC``);
    lane t keeps the two it gives the ``mma`` (chunks c, c + 1 for t = 0; c + 2, c + 3 for t = 1; lanes
    t = 2, 3 give none). Loads wider than 16 bytes per thread would be spread over several threads by
    Triton's layouts, so none is."""
    e2 = tl.arange(0, 2)[None, :]
    live0 = ((c + t // 2) < c_hi)[:, None]
    live1 = ((c + 2 + t // 2) < c_hi)[:, None]
    vo = tl.multiple_of((4 * c + 2 * t)[:, None] + e2, [1, 2])
    p0, p1 = tl.split(splitk.load_weight(vr0[:, None] + vo, live0 & ok0[:, None], 0, STREAM))  # (T, 2) int64
    p2, p3 = tl.split(splitk.load_weight(vr0[:, None] + vo + 8, live1 & ok0[:, None], 0, STREAM))
    q0, q1 = tl.split(splitk.load_weight(vr1[:, None] + vo, live0 & ok1[:, None], 0, STREAM))
    q2, q3 = tl.split(splitk.load_weight(vr1[:, None] + vo + 8, live1 & ok1[:, None], 0, STREAM))
    if META_VEC:
        # (K % 128 == 0 then: spans are whole, so one mask per lane and the load stays one vector)
        mo = tl.multiple_of(c[:, None] + tl.arange(0, 4)[None, :], [1, 4])
        span_live = (c < c_hi)[:, None]
        a0, a1, a2, a3 = _columns4(splitk.load_weight(mr0[:, None] + mo, span_live & ok0[:, None], _MASKED_META,
                                                      STREAM))
        b0, b1, b2, b3 = _columns4(splitk.load_weight(mr1[:, None] + mo, span_live & ok1[:, None], _MASKED_META,
                                                      STREAM))
    else:
        a0 = tl.load(mr0 + c, mask=(c < c_hi) & ok0, other=_MASKED_META)
        a1 = tl.load(mr0 + c + 1, mask=(c + 1 < c_hi) & ok0, other=_MASKED_META)
        a2 = tl.load(mr0 + c + 2, mask=(c + 2 < c_hi) & ok0, other=_MASKED_META)
        a3 = tl.load(mr0 + c + 3, mask=(c + 3 < c_hi) & ok0, other=_MASKED_META)
        b0 = tl.load(mr1 + c, mask=(c < c_hi) & ok1, other=_MASKED_META)
        b1 = tl.load(mr1 + c + 1, mask=(c + 1 < c_hi) & ok1, other=_MASKED_META)
        b2 = tl.load(mr1 + c + 2, mask=(c + 2 < c_hi) & ok1, other=_MASKED_META)
        b3 = tl.load(mr1 + c + 3, mask=(c + 3 < c_hi) & ok1, other=_MASKED_META)
    hi_pair = t == 1
    return (p0, p1, p2, p3, q0, q1, q2, q3, tl.where(hi_pair, a2, a0), tl.where(hi_pair, a3, a1),
            tl.where(hi_pair, b2, b0), tl.where(hi_pair, b3, b1))


@triton.jit
def _nibbles(w, u: tl.constexpr):
    """Nibbles u and 4 + u of metadata word w (the positions of packed groups u and 4 + u of its chunk) as
    bits 0-3 and 4-7."""
    v = (w >> (4 * u)) & 0x000F000F
    return (v | (v >> 12)) & 0xFF


@triton.jit
def _span_meta(wa0, wa1, wb0, wb1, u: tl.constexpr):
    """Metadata of ``mma`` u from lane t's two metadata words of row0 (wa0, wa1) and of row0 + 8 (wb0, wb1):
    its logical groups L = 4 (t % 2) .. + 3 are packed group 4 (L % 2) + u of chunk c + L // 2; row0 in bits
    0-15, row0 + 8 in bits 16-31."""
    lo = _nibbles(wa0, u) | (_nibbles(wa1, u) << 8)
    hi = _nibbles(wb0, u) | (_nibbles(wb1, u) << 8)
    return lo | (hi << 16)


@triton.jit
def _x_chunk(x32, stride_xw, tok, c, c_hi, t, ok_tok, i: tl.constexpr, X_VEC: tl.constexpr, XSHFL: tl.constexpr,
             NW: tl.constexpr, USE_ASM: tl.constexpr):
    """B register i of the span's 4 ``mma`` for x rows ``tok``: register i of lane t holds logical group
    2i + t // 2 = packed group 4 (t // 2) + u of chunk c + i, its K columns 2 (t % 2), 2 (t % 2) + 1 -- word
    8 (t // 2) + 2u + t % 2 of the chunk's 16: the words of lane t's parity among the 8 from 8 (t // 2).
    ``XSHFL`` 0: lane t loads all 8 (two 16-byte loads, ``X_VEC``: x's row stride allows it) and keeps its
    half. ``XSHFL`` 1: lanes t and t ^ 1 load 4 each (one 16-byte load: the even lane the first 4, the odd one
    the last 4) and swap the two words the other needs (two shuffles): half the bytes through L1."""
    odd = (t % 2) == 1
    live = (ok_tok & (c + i < c_hi))[:, None]
    # the first 16-byte load: words 0-3 of the 8 (XSHFL: the odd lane's are 4-7)
    offs = (tok * stride_xw + 16 * (c + i) + 8 * (t // 2) + XSHFL * 4 * (t % 2))[:, None] + tl.arange(0, 4)[None, :]
    if X_VEC:
        offs = tl.multiple_of(offs, [1, 4])
    w0, w1, w2, w3 = _columns4(tl.load(x32 + offs, mask=live, other=0))
    if XSHFL:
        # even lane holds words 0-3 and needs 0, 2, 4, 6; odd lane holds 4-7 and needs 1, 3, 5, 7
        r0 = _swap_pairs(tl.where(odd, w0, w1), NW, USE_ASM)
        r1 = _swap_pairs(tl.where(odd, w2, w3), NW, USE_ASM)
        return tl.where(odd, r0, w0), tl.where(odd, r1, w2), tl.where(odd, w1, r0), tl.where(odd, w3, r1)
    else:
        w4, w5, w6, w7 = _columns4(tl.load(x32 + offs + 4, mask=live, other=0))
        return tl.where(odd, w1, w0), tl.where(odd, w3, w2), tl.where(odd, w5, w4), tl.where(odd, w7, w6)


@triton.jit
def _mma_u(ld, xr0, xr1, xr2, xr3, acc0, acc1, acc2, acc3, NW: tl.constexpr, IS_BF16: tl.constexpr,
           USE_ASM: tl.constexpr, u: tl.constexpr):
    """``mma`` u of a span loaded by :func:`_load_span`, with x's registers from :func:`_x_chunk`."""
    p0, p1, p2, p3, q0, q1, q2, q3, wa0, wa1, wb0, wb1 = ld
    a0 = _word(p0, p1, u)       # row0, logical group t: piece t
    a1 = _word(q0, q1, u)       # row0 + 8, logical group t
    a2 = _word(p2, p3, u)       # row0, logical group 4 + t: piece 4 + t
    a3 = _word(q2, q3, u)
    e = _span_meta(wa0, wa1, wb0, wb1, u)
    if USE_ASM:
        return _mma_sp(a0, a1, a2, a3, xr0, xr1, xr2, xr3, acc0, acc1, acc2, acc3, e, IS_BF16)
    else:
        return _mma_sp_emulated(a0, a1, a2, a3, xr0, xr1, xr2, xr3, acc0, acc1, acc2, acc3, e, NW, IS_BF16)


@triton.jit
def _x_span(x32, stride_xw, tok, c, c_hi, t, ok_tok, X_VEC: tl.constexpr, XSHFL: tl.constexpr, NW: tl.constexpr,
            USE_ASM: tl.constexpr):
    """x's registers of the span's 4 ``mma`` for one 8-row tile of x, ordered (register 0 of mma 0..3,
    register 1 of mma 0..3, ...)."""
    x00, x01, x02, x03 = _x_chunk(x32, stride_xw, tok, c, c_hi, t, ok_tok, 0, X_VEC, XSHFL, NW, USE_ASM)
    x10, x11, x12, x13 = _x_chunk(x32, stride_xw, tok, c, c_hi, t, ok_tok, 1, X_VEC, XSHFL, NW, USE_ASM)
    x20, x21, x22, x23 = _x_chunk(x32, stride_xw, tok, c, c_hi, t, ok_tok, 2, X_VEC, XSHFL, NW, USE_ASM)
    x30, x31, x32_, x33 = _x_chunk(x32, stride_xw, tok, c, c_hi, t, ok_tok, 3, X_VEC, XSHFL, NW, USE_ASM)
    return x00, x01, x02, x03, x10, x11, x12, x13, x20, x21, x22, x23, x30, x31, x32_, x33


@triton.jit
def _mma_tile(ld, xs, acc0, acc1, acc2, acc3, NW: tl.constexpr, IS_BF16: tl.constexpr, USE_ASM: tl.constexpr):
    """The 4 ``mma`` of a span for one 8-row tile of x (registers ``xs`` from :func:`_x_span`)."""
    x00, x01, x02, x03, x10, x11, x12, x13, x20, x21, x22, x23, x30, x31, x32, x33 = xs
    acc0, acc1, acc2, acc3 = _mma_u(ld, x00, x10, x20, x30, acc0, acc1, acc2, acc3, NW, IS_BF16, USE_ASM, 0)
    acc0, acc1, acc2, acc3 = _mma_u(ld, x01, x11, x21, x31, acc0, acc1, acc2, acc3, NW, IS_BF16, USE_ASM, 1)
    acc0, acc1, acc2, acc3 = _mma_u(ld, x02, x12, x22, x32, acc0, acc1, acc2, acc3, NW, IS_BF16, USE_ASM, 2)
    acc0, acc1, acc2, acc3 = _mma_u(ld, x03, x13, x23, x33, acc0, acc1, acc2, acc3, NW, IS_BF16, USE_ASM, 3)
    return acc0, acc1, acc2, acc3


@triton.jit
def _x_tiles(x32, stride_xw, c, c_hi, g, M, t, MT: tl.constexpr, X_VEC: tl.constexpr, XSHFL: tl.constexpr,
             NW: tl.constexpr, USE_ASM: tl.constexpr):
    """x's registers of span c for rows g (and g + 8 when MT = 2; otherwise the first tile twice, unused)."""
    xs0 = _x_span(x32, stride_xw, g, c, c_hi, t, g < M, X_VEC, XSHFL, NW, USE_ASM)
    if MT == 2:
        xs1 = _x_span(x32, stride_xw, g + 8, c, c_hi, t, g + 8 < M, X_VEC, XSHFL, NW, USE_ASM)
    else:
        xs1 = xs0
    return xs0, xs1


@triton.jit
def _mma_tiles(ld, xs0, xs1, acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7, NW: tl.constexpr,
               IS_BF16: tl.constexpr, USE_ASM: tl.constexpr, MT: tl.constexpr):
    """The 4 ``mma`` (8 when MT = 2) of a span loaded by :func:`_load_span` with x's registers from
    :func:`_x_tiles`."""
    acc0, acc1, acc2, acc3 = _mma_tile(ld, xs0, acc0, acc1, acc2, acc3, NW, IS_BF16, USE_ASM)
    if MT == 2:
        acc4, acc5, acc6, acc7 = _mma_tile(ld, xs1, acc4, acc5, acc6, acc7, NW, IS_BF16, USE_ASM)
    return acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7


@triton.jit
def _d_columns(acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7, NW: tl.constexpr, MT: tl.constexpr):
    """A lane's D registers as (32 NW, 4 MT). D register j: W row row0 + 8 (j // 2), x row 2t + (j % 2) (+ 8 in
    the second x tile); join stacks on a new last axis, so the column is (j % 2) * 2 MT + (j // 2) * MT + tile."""
    if MT == 2:
        return tl.reshape(tl.join(tl.join(tl.join(acc0, acc1), tl.join(acc2, acc3)),
                                  tl.join(tl.join(acc4, acc5), tl.join(acc6, acc7))), (32 * NW, 8))
    else:
        return tl.reshape(tl.join(tl.join(acc0, acc1), tl.join(acc2, acc3)), (32 * NW, 4))


@triton.jit(do_not_specialize=["M"])
def _nm24_mma_kernel(
    x_ptr, v_ptr, meta_ptr, bias_ptr, out_ptr, ws_ptr, cnt_ptr,
    M, N, K, M_KEY, stride_xm, stride_v64, stride_mn, stride_om,
    px_ptr, s_ptr, stride_pm, stride_sn,   # the SLoRB bypass (GPC > 0): block sums of x (M, K/k), S (N, K/k)
    HAS_BIAS: tl.constexpr, USE_ASM: tl.constexpr,
    GPC: tl.constexpr,         # > 0: add the bypass S (P x), k = 32 / GPC (2: k = 16, 4: k = 8)
    EARLY: tl.constexpr,       # 1: the bypass's loads issued with the step's weight loads (0: after its mma)
    KSUM: tl.constexpr,        # 1: the bypass's block sums from x's registers (_span_sums; px_ptr unused)
    META_VEC: tl.constexpr,    # metadata row stride a multiple of 4 words and K % 128 == 0: 16-byte loads
    X_VEC: tl.constexpr,       # x's row stride a multiple of 8 elements (or one row): 16-byte loads of x
    PREFETCH: tl.constexpr,    # > 0: L2 prefetch of the weights PREFETCH steps ahead (GPU only)
    WARPS_N: tl.constexpr, WARPS_K: tl.constexpr,
    CHUNKS: tl.constexpr,      # chunks per warp and step: 4 or 8 (one or two spans of 4)
    SPLIT_K: tl.constexpr,
    MT: tl.constexpr,          # 8-row tiles of x (1: M <= 8, 2: M <= 16)
    STRIPS: tl.constexpr,      # 16-row strips of W per warp (2: x's registers serve two strips)
    STAGES: tl.constexpr,      # > 1: Triton's pipeliner copies STAGES - 1 steps ahead into shared memory
    PDL: tl.constexpr,         # > 0: launched with programmatic dependent launch (splitk.pdl)
    STREAM: tl.constexpr,      # cache hint of the weight loads (splitk.load_weight)
    XSHFL: tl.constexpr,       # 1: x's words half loaded, half shuffled from the neighbour lane (_x_chunk)
):
    NW: tl.constexpr = WARPS_N * WARPS_K
    IS_BF16: tl.constexpr = x_ptr.dtype.element_ty == tl.bfloat16
    tid = tl.arange(0, 32 * NW)          # one element per thread: element i is lane i % 32 of warp i // 32
    lane = tid % 32
    warp = tid // 32
    wn = warp % WARPS_N
    wk = warp // WARPS_N
    g = lane // 4
    t = lane % 4
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    row0 = (pid_n * WARPS_N + wn) * STRIPS * 16 + g     # this lane's A rows: row0 and row0 + 8 (strip 0),
    row1 = row0 + 8                                     # row0 + 16 and row0 + 24 (strip 1)
    ok0 = row0 < N
    ok1 = row1 < N
    ok2 = row0 + 16 < N
    ok3 = row1 + 16 < N

    chunks = K // 32
    STEP: tl.constexpr = WARPS_K * CHUNKS
    per_split = ((chunks + SPLIT_K - 1) // SPLIT_K + STEP - 1) // STEP * STEP
    c_lo = pid_k * per_split
    c_hi = tl.minimum(c_lo + per_split, chunks)

    v64 = v_ptr.to(tl.pointer_type(tl.int64))
    x32 = x_ptr.to(tl.pointer_type(tl.int32))
    stride_xw = stride_xm // 2
    # row pointers clamped into the tensor (the loads of rows past N are masked off; the L2 prefetches are not)
    vr0 = v64 + tl.minimum(row0, N - 1) * stride_v64
    vr1 = v64 + tl.minimum(row1, N - 1) * stride_v64
    ma0 = meta_ptr + tl.minimum(row0, N - 1) * stride_mn
    ma1 = meta_ptr + tl.minimum(row1, N - 1) * stride_mn
    vr2 = v64 + tl.minimum(row0 + 16, N - 1) * stride_v64
    vr3 = v64 + tl.minimum(row1 + 16, N - 1) * stride_v64
    ma2 = meta_ptr + tl.minimum(row0 + 16, N - 1) * stride_mn
    ma3 = meta_ptr + tl.minimum(row1 + 16, N - 1) * stride_mn
    # the bypass's S rows (32-bit words: two groups), clamped like the weights' rows
    s32 = s_ptr.to(tl.pointer_type(tl.int32))
    px32 = px_ptr.to(tl.pointer_type(tl.int32))
    stride_sw = stride_sn // 2
    stride_pw = stride_pm // 2
    sr0 = tl.minimum(row0, N - 1) * stride_sw
    sr1 = tl.minimum(row1, N - 1) * stride_sw
    sr2 = tl.minimum(row0 + 16, N - 1) * stride_sw
    sr3 = tl.minimum(row1 + 16, N - 1) * stride_sw
    # strip 0 (acc4-7: the second x tile, MT = 2) and strip 1 (STRIPS = 2); unused ones are dropped
    acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7 = _zeros8(NW)
    bcc0, bcc1, bcc2, bcc3, bcc4, bcc5, bcc6, bcc7 = _zeros8(NW)
    # every load of a step is issued before its first mma: a warp issues in order, so an mma waiting for its
    # operands would otherwise hold back the next chunk's loads (one chunk in flight per warp). Loading the
    # next step's weights before this step's mma as well (a prefetch: more registers, fewer warps) was slower
    # on every measured (shape, M), by 0.01-0.3x (benchmarks/README.md, run 12); an L2 prefetch costs no
    # registers (PREFETCH), and neither do the asynchronous copies to shared memory of STAGES > 1 -- which were
    # 0.2-0.9x slower than STAGES = 1 on every (shape, M) of sweep 6 (run 13)
    # (an L2 prefetch of the first steps' weights here, before the wait, made full-depth decode 0.06x slower:
    # benchmarks/README.md, run 16)
    splitk.pdl_begin(PDL)
    for cb in tl.range(c_lo, c_hi, STEP, num_stages=STAGES):
        c = cb + wk * CHUNKS                         # this warp's first chunk of the step (warps differ in wk)
        sp0 = _load_span(vr0, vr1, ma0, ma1, c, c_hi, ok0, ok1, t, META_VEC, STREAM)
        if STRIPS == 2:
            sq0 = _load_span(vr2, vr3, ma2, ma3, c, c_hi, ok2, ok3, t, META_VEC, STREAM)
        if CHUNKS == 8:
            sp1 = _load_span(vr0, vr1, ma0, ma1, c + 4, c_hi, ok0, ok1, t, META_VEC, STREAM)
            if STRIPS == 2:
                sq1 = _load_span(vr2, vr3, ma2, ma3, c + 4, c_hi, ok2, ok3, t, META_VEC, STREAM)
        if PREFETCH > 0 and USE_ASM:        # (the interpreter has no PTX; a hint changes no result)
            _prefetch_span(vr0, vr1, ma0, ma1, c + PREFETCH * STEP, t, chunks)
            if STRIPS == 2:
                _prefetch_span(vr2, vr3, ma2, ma3, c + PREFETCH * STEP, t, chunks)
            if CHUNKS == 8:
                _prefetch_span(vr0, vr1, ma0, ma1, c + PREFETCH * STEP + 4, t, chunks)
                if STRIPS == 2:
                    _prefetch_span(vr2, vr3, ma2, ma3, c + PREFETCH * STEP + 4, t, chunks)
        if GPC > 0 and EARLY:   # the bypass's S and block sums with the weights: one memory round trip a step
            bp0 = _bypass_loads(s32, sr0, sr1, ok0, ok1, px32, stride_pw, c, c_hi, g, t, M, GPC, MT, KSUM)
            if STRIPS == 2:
                bq0 = _bypass_loads(s32, sr2, sr3, ok2, ok3, px32, stride_pw, c, c_hi, g, t, M, GPC, MT, KSUM)
            if CHUNKS == 8:
                bp1 = _bypass_loads(s32, sr0, sr1, ok0, ok1, px32, stride_pw, c + 4, c_hi, g, t, M, GPC, MT, KSUM)
                if STRIPS == 2:
                    bq1 = _bypass_loads(s32, sr2, sr3, ok2, ok3, px32, stride_pw, c + 4, c_hi, g, t, M, GPC,
                                        MT, KSUM)
        # x's registers (small, from L1/L2) are loaded before the span's first mma, for the same reason
        xa0, xa1 = _x_tiles(x32, stride_xw, c, c_hi, g, M, t, MT, X_VEC, XSHFL, NW, USE_ASM)
        if GPC > 0 and KSUM:
            sa = _span_sums(xa0, xa1, g, t, GPC, NW, IS_BF16, USE_ASM)
        acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7 = _mma_tiles(
            sp0, xa0, xa1, acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7, NW, IS_BF16, USE_ASM, MT)
        if STRIPS == 2:
            bcc0, bcc1, bcc2, bcc3, bcc4, bcc5, bcc6, bcc7 = _mma_tiles(
                sq0, xa0, xa1, bcc0, bcc1, bcc2, bcc3, bcc4, bcc5, bcc6, bcc7, NW, IS_BF16, USE_ASM, MT)
        if CHUNKS == 8:
            xb0, xb1 = _x_tiles(x32, stride_xw, c + 4, c_hi, g, M, t, MT, X_VEC, XSHFL, NW, USE_ASM)
            if GPC > 0 and KSUM:
                sb = _span_sums(xb0, xb1, g, t, GPC, NW, IS_BF16, USE_ASM)
            acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7 = _mma_tiles(
                sp1, xb0, xb1, acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7, NW, IS_BF16, USE_ASM, MT)
            if STRIPS == 2:
                bcc0, bcc1, bcc2, bcc3, bcc4, bcc5, bcc6, bcc7 = _mma_tiles(
                    sq1, xb0, xb1, bcc0, bcc1, bcc2, bcc3, bcc4, bcc5, bcc6, bcc7, NW, IS_BF16, USE_ASM, MT)
        if GPC > 0:   # the bypass of the step's spans, into the same accumulators
            if not EARLY:   # (its loads here, after the step's mma: a second round trip, fewer registers)
                bp0 = _bypass_loads(s32, sr0, sr1, ok0, ok1, px32, stride_pw, c, c_hi, g, t, M, GPC, MT, KSUM)
                if STRIPS == 2:
                    bq0 = _bypass_loads(s32, sr2, sr3, ok2, ok3, px32, stride_pw, c, c_hi, g, t, M, GPC, MT, KSUM)
                if CHUNKS == 8:
                    bp1 = _bypass_loads(s32, sr0, sr1, ok0, ok1, px32, stride_pw, c + 4, c_hi, g, t, M, GPC,
                                        MT, KSUM)
                    if STRIPS == 2:
                        bq1 = _bypass_loads(s32, sr2, sr3, ok2, ok3, px32, stride_pw, c + 4, c_hi, g, t, M,
                                            GPC, MT, KSUM)
            if KSUM:   # (a span's sums serve both strips)
                bp0 = _with_sums(bp0, sa)
                if STRIPS == 2:
                    bq0 = _with_sums(bq0, sa)
                if CHUNKS == 8:
                    bp1 = _with_sums(bp1, sb)
                    if STRIPS == 2:
                        bq1 = _with_sums(bq1, sb)
            acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7 = _bypass_mmas(
                bp0, acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7, GPC, MT, NW, IS_BF16, USE_ASM)
            if STRIPS == 2:
                bcc0, bcc1, bcc2, bcc3, bcc4, bcc5, bcc6, bcc7 = _bypass_mmas(
                    bq0, bcc0, bcc1, bcc2, bcc3, bcc4, bcc5, bcc6, bcc7, GPC, MT, NW, IS_BF16, USE_ASM)
            if CHUNKS == 8:
                acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7 = _bypass_mmas(
                    bp1, acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7, GPC, MT, NW, IS_BF16, USE_ASM)
                if STRIPS == 2:
                    bcc0, bcc1, bcc2, bcc3, bcc4, bcc5, bcc6, bcc7 = _bypass_mmas(
                        bq1, bcc0, bcc1, bcc2, bcc3, bcc4, bcc5, bcc6, bcc7, GPC, MT, NW, IS_BF16, USE_ASM)

    splitk.pdl_end(PDL)
    acc = _d_columns(acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7, NW, MT)
    R: tl.constexpr = 4 * MT * STRIPS
    if STRIPS == 2:   # column j * 2 + strip
        acc = tl.reshape(tl.join(acc, _d_columns(bcc0, bcc1, bcc2, bcc3, bcc4, bcc5, bcc6, bcc7, NW, MT)),
                         (32 * NW, R))
    if WARPS_K > 1:   # the warps of one column strip split K: sum them (element order: wk major)
        acc = tl.sum(tl.reshape(acc, (WARPS_K, 32 * WARPS_N, R)), axis=0)
    p = tl.arange(0, 32 * WARPS_N)[:, None]
    jj = tl.arange(0, R)[None, :]
    j = jj // STRIPS
    pl = p % 32
    idx_n = ((pid_n * WARPS_N + p // 32) * STRIPS + jj % STRIPS) * 16 + pl // 4 + 8 * ((j // MT) % 2)
    idx_m = 2 * (pl % 4) + j // (2 * MT) + 8 * (j % MT)
    mask = (idx_n < N) & (idx_m < M)
    if HAS_BIAS:
        if pid_k == 0:
            acc += tl.load(bias_ptr + idx_n, mask=idx_n < N, other=0.0).to(tl.float32)
    splitk.store_points(acc, out_ptr, ws_ptr, cnt_ptr, idx_m, idx_n, mask, M, N, stride_om, pid_k, pid_n, SPLIT_K)


def nm24_mma_unsupported(x2: torch.Tensor, values: torch.Tensor) -> str | None:
    """Why this kernel cannot run ``x2 @ W.T`` (then the CUDA-core decode kernel does), or None."""
    k = x2.shape[1]
    if k % 32:
        return f"K={k} is not a multiple of 32 (one mma.sp chunk)"
    return splitk.mma_unsupported(x2, MAX_M, "mma.sp")


BYPASS_GROUPS = (8, 16)   # SLoRB group sizes the kernel adds itself: 2 or 4 groups per chunk of 32


def nm24_mma_bypass_unsupported(x2: torch.Tensor, px: torch.Tensor | None, s: torch.Tensor) -> str | None:
    """Why this kernel cannot add the SLoRB bypass ``px @ S.T`` (px the block sums of x2, (M, K/k), or None: the
    kernel sums x's registers itself; S (N, K/k)) itself (then the caller adds it as a matmul of its own), or
    None."""
    m, k = x2.shape
    groups = s.shape[-1]
    if groups == 0 or k % groups or k // groups not in BYPASS_GROUPS:
        return f"SLoRB group {k // groups if groups and not k % groups else '?'} (K={k}, S {tuple(s.shape)}): the " \
               f"kernel adds groups of {' or '.join(map(str, BYPASS_GROUPS))}"
    if px is not None and tuple(px.shape) != (m, groups):
        return f"block sums of shape {tuple(px.shape)}, expected ({m}, {groups})"
    if (px is not None and px.dtype != x2.dtype) or s.dtype != x2.dtype:
        return f"bypass dtypes px {None if px is None else px.dtype}, S {s.dtype} differ from x's {x2.dtype}"
    return None


_AUTOTUNED: dict = {}


def _autotuned(m_bucket: int, gpc: int, ksum: bool = False):
    """The autotuned launcher of an M bucket, without the bypass (gpc 0) or with it (tuned on its own: the
    autotuner's key does not see GPC or KSUM), whose space also holds each config with the bypass's loads issued
    after the step's mma (EARLY 0: fewer registers live; with groups of 8, EARLY 1 spills on the two-strip config
    of the 16-row bucket, by the sm_90 SASS), the two untimed against each other so far."""
    key = (m_bucket, gpc, ksum)
    if key not in _AUTOTUNED:
        space = nm24_mma_configs(m_bucket)
        if gpc:
            space = space + [triton.Config({**c.kwargs, "EARLY": 0}, num_warps=c.num_warps, num_stages=c.num_stages)
                             for c in space]
        _AUTOTUNED[key] = splitk.autotuner(_nm24_mma_kernel, space)
    return _AUTOTUNED[key]


def nm24_mma(x2: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None,
             out: torch.Tensor, config: dict | None = None,
             bypass: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """``out = x2 @ W.T + bias`` for x2 (M, K), M <= 16, bf16/fp16, K % 32 == 0 (:func:`nm24_mma_unsupported`
    says why not; the caller checks). ``config``: fixed ``WARPS_N``, ``WARPS_K``, ``CHUNKS``, ``SPLIT_K``
    instead of autotuning (tests, the interpreter on CPU). ``bypass``: (px, S), a SLoRB bypass added in the
    same kernel, ``out += px @ S.T`` (:func:`nm24_mma_bypass_unsupported` says when it cannot be); px None: the
    block sums of x over S's groups, which the kernel then takes from x's registers (:func:`_span_sums`)."""
    reason = nm24_mma_unsupported(x2, values)
    if reason is None and bypass is not None:
        reason = nm24_mma_bypass_unsupported(x2, *bypass)
    if reason:
        raise ValueError(f"nm24_mma cannot run this matmul: {reason}")
    m, k = x2.shape
    n = values.shape[0]
    on_cpu = x2.device.type == "cpu"
    # 32-bit words of x, 64-bit words of the values (4 kept values: two groups)
    x2 = splitk.word_aligned(x2, 2)
    values = splitk.word_aligned(values, 4)
    if meta.stride(1) != 1:
        meta = meta.contiguous()
    px, s = bypass if bypass is not None else (values, values)
    s = splitk.word_aligned(s, 2)
    ksum = px is None   # (the kernel sums x's registers; px_ptr is then a placeholder)
    px = s if ksum else splitk.word_aligned(px, 2)
    gpc = 32 // (k // s.shape[1]) if bypass is not None else 0
    mt = 2 if m > 8 else 1
    split = splitk.split_depth(config, lambda: nm24_mma_configs(splitk.m_key(m)))
    ws, cnt = splitk.decode_buffers(m, n, out, split, meta)
    args = (x2, values, meta, bias if bias is not None else values, out, ws, cnt, m, n, k, splitk.m_key(m),
            x2.stride(0), values.stride(0) // 4, meta.stride(0), out.stride(0), px, s, px.stride(0), s.stride(0))
    flags = {"HAS_BIAS": bias is not None, "USE_ASM": not on_cpu, "META_VEC": meta.stride(0) % 4 == 0 and k % 128 == 0,
             "X_VEC": (m == 1 or x2.stride(0) % 8 == 0) and x2.data_ptr() % 16 == 0, "PDL": splitk.pdl(x2.device),
             "GPC": gpc, "KSUM": int(ksum)}

    def grid(meta_):
        return (triton.cdiv(n, 16 * meta_["WARPS_N"] * meta_["STRIPS"]), meta_["SPLIT_K"])

    if config is not None:  # (keys the kernel does not take are refused by splitk.launch)
        if config.get("STRIPS", 1) not in (1, 2):
            raise ValueError(f"STRIPS must be 1 or 2 (16-row strips of W per warp), got {config['STRIPS']}")
        if config["CHUNKS"] not in (4, 8):
            raise ValueError(f"CHUNKS must be 4 or 8 (spans of 4 chunks), got {config['CHUNKS']}")
        config = {"MT": mt, **CONFIG_DEFAULTS, "num_warps": config["WARPS_N"] * config["WARPS_K"], **config}
        if config["MT"] != mt:
            raise ValueError(f"MT={config['MT']} does not fit {m} rows of x (1: up to 8, 2: up to 16)")
    splitk.launch(_nm24_mma_kernel, lambda: _autotuned(splitk.m_key(m), gpc, ksum), grid, args, flags, config, on_cpu)
    return out


def nm24_mma_reference(x2: torch.Tensor, values: torch.Tensor, meta: torch.Tensor,
                       bias: torch.Tensor | None = None,
                       bypass: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Pure-PyTorch reference of what the kernel computes: the same contract as the CUDA-core decode kernel's
    (:func:`.nm24_decode.nm24_decode_reference`: fp32 sums in the compressed domain, x2.dtype out), plus the
    bypass ``px @ S.T`` in the same fp32 sum."""
    if bypass is None:
        return nm24_decode_reference(x2, values, meta, bias)
    px, s = bypass
    if px is None:
        from sfcompile.masking.slorb import block_sums

        px = block_sums(x2, s.shape[-1])
    extra = px.float() @ s.float().T
    return (nm24_decode_reference(x2.float(), values.float(), meta, None if bias is None else bias.float())
            + extra).to(x2.dtype)

