"""Warp-wide PTX instructions on Triton tensors of one element per thread, for the tensor-core decode kernels
(:mod:`.nm24_mma`, :mod:`.block16_mma`), each with what it computes in the Triton interpreter (CPU tests).

Element i of a ``(32 * NW,)`` tensor (``tl.arange(0, 32 * num_warps)``) lives in thread i, so it is lane i % 32
of warp i // 32, and an elementwise inline-asm instruction sees every lane's registers: one element is one
lane's fragment register. The interpreter has no PTX: the ``*_emulated`` functions gather the same per-lane
registers into the warp's matrices by the fragment rules of the PTX ISA and multiply them there.

Here: the dense ``mma.m16n8k8`` / ``mma.m16n8k16`` and the sparse ``mma.sp.m16n8k32`` (fp32 accumulate), the
lane shuffle of :mod:`.nm24_mma`'s x loads, and the block sums of the SLoRB bypass as dense ``mma``
(:func:`_sum_mma`: x as A, the 0/1 group matrix as B) with the rounding of their fp32 sums to 16-bit pairs.
"""

from __future__ import annotations

import triton
import triton.language as tl

from sfcompile.lowering.kernels.nm24_decode import _widen


@triton.jit
def _lanes(src, idx, NW: tl.constexpr):
    """``src`` (NW * 32,) per-lane values, read at lanes ``idx`` (NW, L) of each warp: (NW, L)."""
    return tl.gather(tl.reshape(src, (NW, 32)), idx, axis=1)


@triton.jit
def _add_d(d, c0, c1, c2, c3, NW: tl.constexpr):
    """The lanes' D registers of an ``mma`` m16n8 product ``d`` (NW, 128) held at r * 8 + n, added to c0-c3:
    lane (g, t) holds D rows g, g + 8 at columns 2t, 2t + 1 (PTX ISA, the m16n8 f32 accumulator fragment)."""
    lane = tl.arange(0, 32)[None, :] + tl.zeros((NW, 32), tl.int32)
    g = lane // 4
    t = lane % 4
    d0 = tl.gather(d, g * 8 + 2 * t, axis=1)
    d1 = tl.gather(d, g * 8 + 2 * t + 1, axis=1)
    d2 = tl.gather(d, (g + 8) * 8 + 2 * t, axis=1)
    d3 = tl.gather(d, (g + 8) * 8 + 2 * t + 1, axis=1)
    return (c0 + tl.reshape(d0, (NW * 32,)), c1 + tl.reshape(d1, (NW * 32,)), c2 + tl.reshape(d2, (NW * 32,)),
            c3 + tl.reshape(d3, (NW * 32,)))


@triton.jit
def _word(w01, w23, u: tl.constexpr):
    """32-bit word u (0..3) of a 16-byte piece held as two int64."""
    if u == 0:
        return w01.to(tl.int32)
    elif u == 1:
        return (w01 >> 32).to(tl.int32)
    elif u == 2:
        return w23.to(tl.int32)
    else:
        return (w23 >> 32).to(tl.int32)


@triton.jit
def _zeros8(NW: tl.constexpr):
    """Eight fp32 accumulators of one element per thread: a strip's D registers for two x tiles."""
    z = tl.zeros((32 * NW,), tl.float32)
    return z, z, z, z, z, z, z, z


@triton.jit
def _swap_pairs(v, NW: tl.constexpr, USE_ASM: tl.constexpr):
    """Each lane's ``v`` (32-bit, one element per thread) from lane ``lane ^ 1`` of its warp (``shfl.sync.bfly``;
    a gather in the interpreter)."""
    if USE_ASM:
        return tl.inline_asm_elementwise("shfl.sync.bfly.b32 $0, $1, 1, 0x1f, 0xffffffff;", "=r,r", [v],
                                         dtype=tl.int32, is_pure=True, pack=1)
    else:
        idx = (tl.arange(0, 32) ^ 1)[None, :] + tl.zeros((NW, 32), tl.int32)
        return tl.reshape(tl.gather(tl.reshape(v, (NW, 32)), idx, axis=1), (NW * 32,))


@triton.jit
def _ones_where(cond, IS_BF16: tl.constexpr):
    """A 32-bit ``mma`` operand word of two 1.0 halves where ``cond``, else of two zeros."""
    if IS_BF16:
        return tl.where(cond, 0x3F803F80, 0)
    else:
        return tl.where(cond, 0x3C003C00, 0)


@triton.jit
def _pack_round(lo, hi, IS_BF16: tl.constexpr):
    """fp32 ``lo`` and ``hi`` rounded to the nearest bf16/fp16 (ties to even) as one 32-bit word, lo in the low
    half (bf16 by hand: the interpreter's conversion truncates)."""
    if IS_BF16:
        a = lo.to(tl.int32, bitcast=True)
        b = hi.to(tl.int32, bitcast=True)
        a = ((a + 0x7FFF + ((a >> 16) & 1)) >> 16) & 0xFFFF
        b = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    else:
        a = lo.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
        b = hi.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32)
    return a | (b << 16)


@triton.jit
def _mma_sp(a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, e, IS_BF16: tl.constexpr):
    """One warp-wide ``mma.sp::ordered_metadata.m16n8k32`` (fp32 accumulate) on per-lane registers: element i
    of each (T,) tensor is lane i % 32 of warp i // 32. Plain ``mma.sp`` gives the same on the H200; PTX
    advises the ordered form from sm_90 on (the positions of a group are always increasing here)."""
    if IS_BF16:
        return tl.inline_asm_elementwise(
            "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 "
            "{$0, $1, $2, $3}, {$4, $5, $6, $7}, {$8, $9, $10, $11}, {$12, $13, $14, $15}, $16, 0x0;",
            "=f,=f,=f,=f,r,r,r,r,r,r,r,r,f,f,f,f,r", [a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, e],
            dtype=(tl.float32,) * 4, is_pure=True, pack=1)
    else:
        return tl.inline_asm_elementwise(
            "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32 "
            "{$0, $1, $2, $3}, {$4, $5, $6, $7}, {$8, $9, $10, $11}, {$12, $13, $14, $15}, $16, 0x0;",
            "=f,=f,=f,=f,r,r,r,r,r,r,r,r,f,f,f,f,r", [a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, e],
            dtype=(tl.float32,) * 4, is_pure=True, pack=1)


@triton.jit
def _mma_sp_emulated(a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, e, NW: tl.constexpr, IS_BF16: tl.constexpr):
    """What :func:`_mma_sp` computes, from the same per-lane registers, for the interpreter (PTX ISA,
    "sparse mma.m16n8k32 with .f16/.bf16": A as the dense m16n8k16 A fragment of the 16 x 16 kept values,
    two per 4-group; B rows 2t + (i & 1) + 8 (i >> 1), column g; D rows g, g + 8, columns 2t, 2t + 1;
    metadata with selector 0 in lanes t = 0 (groups 0-3) and t = 1 (groups 4-7), row g in bits 0-15 and
    row g + 8 in bits 16-31, 4 bits per group with the first position in the low 2)."""
    zero = tl.zeros((NW, 256), tl.int32)
    s = tl.arange(0, 256)[None, :] + zero          # (row r, group q, half h) of A's 16 x 8 x 2 kept values
    r = s // 16
    q = (s // 2) % 8
    h = s % 2
    lane_a = (r % 8) * 4 + q % 4
    reg = (r // 8) + 2 * (q // 4)
    word = tl.where(reg == 0, _lanes(a0, lane_a, NW), tl.where(reg == 1, _lanes(a1, lane_a, NW),
                    tl.where(reg == 2, _lanes(a2, lane_a, NW), _lanes(a3, lane_a, NW))))
    lo, hi = _widen(word, IS_BF16)
    val = tl.where(h == 0, lo, hi)                                                # (NW, 256) fp32
    nib = (_lanes(e, (r % 8) * 4 + q // 4, NW) >> (4 * (q % 4) + 16 * (r // 8))) & 15
    k = 4 * q + tl.where(h == 0, nib & 3, (nib >> 2) & 3)                          # dense K column 0..31
    # B[k, col] for every kept value and column: lane 4 col + (k % 8) // 2, register k // 8, half k % 2
    kb = tl.reshape(k[:, :, None] + tl.zeros((NW, 256, 8), tl.int32), (NW, 2048))
    col = tl.reshape(tl.arange(0, 8)[None, None, :] + tl.zeros((NW, 256, 8), tl.int32), (NW, 2048))
    lane_b = col * 4 + (kb % 8) // 2
    breg = kb // 8
    bword = tl.where(breg == 0, _lanes(b0, lane_b, NW), tl.where(breg == 1, _lanes(b1, lane_b, NW),
                     tl.where(breg == 2, _lanes(b2, lane_b, NW), _lanes(b3, lane_b, NW))))
    blo, bhi = _widen(bword, IS_BF16)
    bval = tl.reshape(tl.where(kb % 2 == 0, blo, bhi), (NW, 256, 8))
    d = tl.reshape(tl.sum(tl.reshape(val[:, :, None] * bval, (NW, 16, 16, 8)), axis=2), (NW, 128))  # [r * 8 + col]
    return _add_d(d, c0, c1, c2, c3, NW)


@triton.jit
def _mma_k8(a0, a1, b0, c0, c1, c2, c3, IS_BF16: tl.constexpr):
    """One warp-wide dense ``mma.m16n8k8`` (fp32 accumulate) on per-lane registers, for the SLoRB bypass: A
    (16 x 8) in a0 (row g) and a1 (row g + 8), columns 2t, 2t + 1; B (8 x 8) in b0, rows 2t, 2t + 1 of column g;
    C/D the m16n8 fragment of :func:`_add_d` (PTX ISA, "mma.m16n8k8 with .f16/.bf16")."""
    if IS_BF16:
        return tl.inline_asm_elementwise(
            "mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32 {$0, $1, $2, $3}, {$4, $5}, {$6}, "
            "{$7, $8, $9, $10};", "=f,=f,=f,=f,r,r,r,f,f,f,f", [a0, a1, b0, c0, c1, c2, c3],
            dtype=(tl.float32,) * 4, is_pure=True, pack=1)
    else:
        return tl.inline_asm_elementwise(
            "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {$0, $1, $2, $3}, {$4, $5}, {$6}, "
            "{$7, $8, $9, $10};", "=f,=f,=f,=f,r,r,r,f,f,f,f", [a0, a1, b0, c0, c1, c2, c3],
            dtype=(tl.float32,) * 4, is_pure=True, pack=1)


@triton.jit
def _mma_k8_emulated(a0, a1, b0, c0, c1, c2, c3, NW: tl.constexpr, IS_BF16: tl.constexpr):
    """What :func:`_mma_k8` computes, from the same per-lane registers, for the interpreter: A[r, k] is half
    k % 2 of lane (r % 8) * 4 + k // 2's register r // 8, B[k, n] half k % 2 of lane n * 4 + k // 2's."""
    s = tl.arange(0, 1024)[None, :] + tl.zeros((NW, 1024), tl.int32)     # (r, n, k) = s // 64, s // 8 % 8, s % 8
    r = s // 64
    n = (s // 8) % 8
    k = s % 8
    lane_a = (r % 8) * 4 + k // 2
    alo, ahi = _widen(tl.where(r < 8, _lanes(a0, lane_a, NW), _lanes(a1, lane_a, NW)), IS_BF16)
    blo, bhi = _widen(_lanes(b0, n * 4 + k // 2, NW), IS_BF16)
    prod = tl.where(k % 2 == 0, alo, ahi) * tl.where(k % 2 == 0, blo, bhi)
    return _add_d(tl.sum(tl.reshape(prod, (NW, 128, 8)), axis=2), c0, c1, c2, c3, NW)   # d at [r * 8 + n]


@triton.jit
def _k8(a0, a1, b0, acc0, acc1, acc2, acc3, NW: tl.constexpr, IS_BF16: tl.constexpr, USE_ASM: tl.constexpr):
    """:func:`_mma_k8` on the GPU, :func:`_mma_k8_emulated` in the interpreter."""
    if USE_ASM:
        return _mma_k8(a0, a1, b0, acc0, acc1, acc2, acc3, IS_BF16)
    else:
        return _mma_k8_emulated(a0, a1, b0, acc0, acc1, acc2, acc3, NW, IS_BF16)


@triton.jit
def _mma_k16(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3, IS_BF16: tl.constexpr):
    """One warp-wide ``mma.sync.m16n8k16`` (fp32 accumulate) on per-lane registers (element i of each (T,)
    tensor is lane i % 32 of warp i // 32)."""
    if IS_BF16:
        return tl.inline_asm_elementwise(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
            "{$0, $1, $2, $3}, {$4, $5, $6, $7}, {$8, $9}, {$10, $11, $12, $13};",
            "=f,=f,=f,=f,r,r,r,r,r,r,f,f,f,f", [a0, a1, a2, a3, b0, b1, c0, c1, c2, c3],
            dtype=(tl.float32,) * 4, is_pure=True, pack=1)
    else:
        return tl.inline_asm_elementwise(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
            "{$0, $1, $2, $3}, {$4, $5, $6, $7}, {$8, $9}, {$10, $11, $12, $13};",
            "=f,=f,=f,=f,r,r,r,r,r,r,f,f,f,f", [a0, a1, a2, a3, b0, b1, c0, c1, c2, c3],
            dtype=(tl.float32,) * 4, is_pure=True, pack=1)


@triton.jit
def _mma_k16_emulated(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3, NW: tl.constexpr, IS_BF16: tl.constexpr):
    """What :func:`_mma_k16` computes, for the interpreter (PTX ISA, ``mma.m16n8k16`` with .f16/.bf16): A row r,
    column k in lane (r % 8) * 4 + (k % 8) // 2, register (r // 8) + 2 (k // 8), half k % 2; B row k, column n in
    lane 4n + (k % 8) // 2, register k // 8, half k % 2; D row g / g + 8, columns 2t, 2t + 1 in registers 0-3."""
    s = tl.arange(0, 256)[None, :] + tl.zeros((NW, 256), tl.int32)      # r * 16 + k
    r = s // 16
    k = s % 16
    lane_a = (r % 8) * 4 + (k % 8) // 2
    reg = (r // 8) + 2 * (k // 8)
    word = tl.where(reg == 0, _lanes(a0, lane_a, NW), tl.where(reg == 1, _lanes(a1, lane_a, NW),
                    tl.where(reg == 2, _lanes(a2, lane_a, NW), _lanes(a3, lane_a, NW))))
    lo, hi = _widen(word, IS_BF16)
    a = tl.reshape(tl.where(k % 2 == 0, lo, hi), (NW, 16, 16, 1))       # A[r, k]
    s2 = tl.arange(0, 128)[None, :] + tl.zeros((NW, 128), tl.int32)     # k * 8 + n
    kb = s2 // 8
    lane_b = (s2 % 8) * 4 + (kb % 8) // 2
    bword = tl.where(kb // 8 == 0, _lanes(b0, lane_b, NW), _lanes(b1, lane_b, NW))
    blo, bhi = _widen(bword, IS_BF16)
    b = tl.reshape(tl.where(kb % 2 == 0, blo, bhi), (NW, 1, 16, 8))     # B[k, n]
    d = tl.reshape(tl.sum(a * b, axis=2), (NW, 128))                   # D[r, n] at r * 8 + n
    return _add_d(d, c0, c1, c2, c3, NW)


@triton.jit
def _k16(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3, NW: tl.constexpr, IS_BF16: tl.constexpr, USE_ASM: tl.constexpr):
    """:func:`_mma_k16` on the GPU, :func:`_mma_k16_emulated` in the interpreter."""
    if USE_ASM:
        return _mma_k16(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3, IS_BF16)
    else:
        return _mma_k16_emulated(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3, NW, IS_BF16)


@triton.jit
def _sum_mma(xa, ya, xb, yb, ga, gb, g, d0, d1, d2, d3, NW: tl.constexpr, IS_BF16: tl.constexpr,
             USE_ASM: tl.constexpr):
    """One dense ``mma.m16n8k16`` of block sums, D (x rows x groups) += A B: A's rows are x's rows (g: tile 0's
    registers xa, xb; g + 8: tile 1's ya, yb), its K columns 2t, 2t + 1 the two elements lane t holds in xa and
    2t + 8, 2t + 9 those in xb (the order of K is free in a sum); B (K x 8 groups) is 1 where the element falls
    in the group: lane (g, t)'s B rows are lane t's elements, so its B words are 1.0 pairs where ``ga`` (``gb``),
    the group of lane t's xa (xb), is g."""
    b0 = _ones_where(ga == g, IS_BF16)
    b1 = _ones_where(gb == g, IS_BF16)
    return _k16(xa, ya, xb, yb, b0, b1, d0, d1, d2, d3, NW, IS_BF16, USE_ASM)
