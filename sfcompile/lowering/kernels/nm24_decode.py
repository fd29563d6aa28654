"""2:4 decode matmul ``y = x @ W.T (+ bias)`` for few rows of x (M <= 16), W packed as values + 2-bit positions,
on CUDA cores (and variant 5 on dense tensor cores): since run 11 the fallback for what the sparse-tensor-core
kernel :mod:`.nm24_mma` cannot run (fp32, K % 32 != 0, GPUs before sm_80), which is faster wherever it can.

Decode is bound by the weight bytes, so what matters is how many instructions each stored value costs.
The tile kernel (:mod:`.nm24`) rebuilds the dense (BLOCK_N, BLOCK_K) tile of W in registers and pushes it
through shared memory into ``tl.dot``: ~50 SASS instructions per stored value, 0.4-0.7x dense cuBLAS on the
H200. Each program here owns BLOCK_N output columns and every row of x (BLOCK_M >= M, so W is read once), walks
its share of K (``SPLIT_K`` programs per column block, whole K blocks each, summed by
:func:`.splitk.store_tile`) and, per ``VARIANT``:

* 4, select (CUDA cores): tiles (BLOCK_N, K/32 words, 16 values); x's 4 candidates of each group of 4 are loaded
  once per K block for all BLOCK_N columns and the kept ones are picked with two selects per value and row.
* 5, tensor cores: the dense (BLOCK_N, BLOCK_K) tile is built in registers as four selected (BLOCK_N, K/4)
  planes joined, with W as the dot's left operand (BLOCK_N >= 64 rows, x^T padded to 16 columns). A fixed
  cost per weight element, whatever M: the choice from 4 rows up. In the SASS for sm_90 the tile reaches
  shared memory in 16-byte stores (8 STS.128 + 16 STS.U16 per K block and thread).
* 6, byte permute (CUDA cores, bf16/fp16; fp32 inputs run as 4): tiles (BLOCK_N, K/32 words, 8 groups); a
  group's two stored values load as one 32-bit word and x's 4 candidates as two; the group's 4-bit position
  code becomes a ``prmt`` selector that moves x[i0] and x[i1] into one word in one instruction, and a bf16
  half widens to fp32 by a shift. ~9 SASS instructions per stored value in the loop against variant 4's ~12,
  and one shared-memory exchange per K block instead of two: the choice at M = 1. The Triton interpreter has
  no PTX, so on CPU (tests) the same word is built with selects (``USE_ASM``); the GPU tests run the PTX.

The autotuner picks per (M bucket, N, K); value and metadata loads are software-pipelined one K block ahead
(``PREFETCH``) in variant 5 when the loop needs no masks. Removed after losing on every shape of the decode
sweeps (benchmarks/README.md): variants 0 and 1, the per-value gather and select that loaded a metadata word
once per value (to 3 and 4, 2026-11-30), variant 3, a gather of x by each value's position with one int16
of metadata per 8 values (to 4 and 6 at M = 1, 2, run 9), and variant 2, the tensor-core decode with the tile
built by a 3-D select (80 2-byte shared-memory stores per K block; to 5 at every M >= 4, run 8: 0.46-0.84x against
0.65-0.97x dense).

Measured on the H200 (benchmarks/README.md, runs 8-9: LLaMA-2-7B / Qwen3-8B layers, vs dense cuBLAS in the
same run): 1.01-1.32x at M = 1 with variant 6 (run 9 sweep), 0.86x at M = 2, 0.65-0.97x at M = 4..16 with
variant 5: far from the 1.78x byte ceiling. At M = 1 the tall shapes (N = 11008, 12288 at K = 4096) stay at
~1.0x, where cuBLAS streams 3.1-3.3 TB/s and this kernel ~1.8.

The values are ``(N, K/2)``; the metadata ``(N, ceil(K/32))`` int32 of :mod:`sfcompile.lowering.pack` holds
value j's position in bits ``2*(j % 16) .. 2*(j % 16)+1`` of word ``j // 16``: group g's two positions
(i0 < i1) are the 4-bit code ``i0 | i1 << 2`` in bits ``4*(g % 8)..`` of word ``g // 8``.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from sfcompile.lowering.kernels import splitk

__all__ = ["nm24_decode", "nm24_decode_reference", "nm24_decode_configs", "MAX_M"]

MAX_M = 16


@functools.cache   # built once per bucket: the launcher sizes its workspace from it on every call
def nm24_decode_configs(m_bucket: int) -> list[triton.Config]:
    """Autotune space for rows of x up to ``m_bucket`` (a power of two <= 16): (VARIANT, BLOCK_N, BLOCK_K,
    SPLIT_K, num_warps). BLOCK_M is ``m_bucket`` for the CUDA-core variants, which cost per row and are
    offered up to 8 rows, and 16 (tl.dot's minimum) for the tensor-core one."""
    # Sweep of 2026-11-30 (benchmarks/decode_sweep.py, H200): the tiles shaped like the packed bytes (then 3, 4) beat
    # the per-value ones (0, 1: 0.56-0.68x dense at M = 1 against 0.96-1.09x) once a thread holds 8-16 values
    # (56-96 registers; 32 values took 157-255 and spilled). Deep splits were slow only because the split-K
    # epilogue read its partials one L2 round trip at a time (fixed in splitk.store_tile), so the space keeps
    # SPLIT_K 8-32 and several programs per SM.
    # Sweep of run 9 (2026-11-30, fourth session): variant 6 won every shape at M = 1 (1.01-1.32x dense against
    # variant 4's 0.98-1.23x) and some at M = 2; variant 3 (gather) won nowhere and is gone. The space keeps the
    # configs that won or came within 3% somewhere, and two deeper-K ones for the tall shapes.
    cuda_core = {
        1: [(6, 32, 256, 8, 4), (6, 64, 128, 8, 8), (6, 64, 64, 16, 4), (6, 32, 128, 16, 4), (6, 64, 128, 16, 8),
            (6, 32, 256, 4, 4), (6, 64, 256, 4, 8), (4, 32, 128, 16, 4), (4, 64, 128, 8, 8)],
        2: [(4, 32, 128, 16, 4), (6, 32, 128, 8, 4), (4, 32, 128, 8, 4), (6, 32, 128, 16, 4), (6, 64, 128, 8, 8)],
        4: [(4, 32, 64, 16, 8), (4, 16, 64, 32, 4), (4, 32, 128, 16, 8), (4, 16, 128, 16, 4)],
        8: [(4, 16, 64, 32, 4), (4, 32, 64, 16, 8), (4, 16, 128, 16, 8)],
    }
    # variant 5: the three configs that won some (shape, M) of run 8 (benchmarks/decode_sweep.py)
    tensor_core = [(5, 64, 128, 8, 4), (5, 64, 128, 16, 4), (5, 64, 64, 16, 4)]
    space = cuda_core.get(m_bucket, []) + tensor_core
    return [triton.Config({"VARIANT": v, "BLOCK_M": 16 if v == 5 else m_bucket, "BLOCK_N": bn, "BLOCK_K": bk,
                           "SPLIT_K": sk}, num_warps=w, num_stages=3 if v == 5 else 2)
            for v, bn, bk, sk, w in space]


@triton.jit
def _load_words(v_ptr, w_ptr, offs_n, mask_n, stride_vn, stride_wn, offs_v, offs_w, v_end, w_end,
                EVEN: tl.constexpr):
    """Values (BN, W, S) at value indices ``offs_v`` (1, W, S) and their metadata words (BN, W) at ``offs_w``
    (W,) of rows ``offs_n``; masked (values 0, words 0) past ``v_end`` / ``w_end`` and N unless EVEN."""
    v_ptrs = v_ptr + offs_n[:, None, None] * stride_vn + offs_v
    w_ptrs = w_ptr + offs_n[:, None] * stride_wn + offs_w[None, :]
    if EVEN:
        return tl.load(v_ptrs), tl.load(w_ptrs)
    vals = tl.load(v_ptrs, mask=mask_n[:, None, None] & (offs_v < v_end), other=0.0)
    words = tl.load(w_ptrs, mask=mask_n[:, None] & (offs_w < w_end)[None, :], other=0)
    return vals, words


@triton.jit
def _widen(w, IS_BF16: tl.constexpr):
    """The low and high 16-bit halves of int32 ``w`` (bf16 or fp16 patterns) as fp32."""
    if IS_BF16:   # a bf16 is the top half of the fp32 of the same value
        lo = (w << 16).to(tl.float32, bitcast=True)
        hi = (w & -65536).to(tl.float32, bitcast=True)
    else:
        lo = (w & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        hi = (w >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    return lo, hi


@triton.jit(do_not_specialize=["M"])
def _nm24_decode_kernel(
    x_ptr, v_ptr, meta_ptr, bias_ptr, out_ptr, ws_ptr, cnt_ptr,
    M, N, K, M_KEY, stride_xm, stride_vn, stride_mn, stride_om,
    HAS_BIAS: tl.constexpr, FP32_IEEE: tl.constexpr,
    USE_ASM: tl.constexpr,     # variant 6 picks x with PTX prmt (compiled); the interpreter takes the select form
    EVEN: tl.constexpr,        # N % BLOCK_N == 0 and K % BLOCK_K == 0: no masks in the loop
    PREFETCH: tl.constexpr,    # software-pipelined value/metadata loads (mask-free loop only)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
    VARIANT: tl.constexpr,
):
    BH: tl.constexpr = BLOCK_K // 2    # stored values per row per K block
    G: tl.constexpr = BLOCK_K // 4     # groups of 4 per K block
    if VARIANT < 4 or VARIANT > 6:
        tl.static_assert(False, "VARIANT must be 4 (select), 5 (tensor cores) or 6 (byte permute)")
    TC: tl.constexpr = VARIANT == 5
    # variant 6 works on the 16-bit patterns of x and W; with fp32 inputs it runs as variant 4
    PERM: tl.constexpr = VARIANT == 6 and x_ptr.dtype.element_ty.primitive_bitwidth == 16
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    rows = tl.minimum(offs_m, M - 1)   # rows past M read row M-1 (never stored): x loads need no row mask

    k_per_split = ((K + SPLIT_K - 1) // SPLIT_K + BLOCK_K - 1) // BLOCK_K * BLOCK_K
    k_lo = pid_k * k_per_split
    k_hi = tl.minimum(k_lo + k_per_split, K)

    if TC:
        acc_t = tl.full((BLOCK_N, BLOCK_M), 0.0, tl.float32)          # y^T tile: W is the left operand
    else:
        # 3, 4: tiles shaped (.., BLOCK_N, words, 8) like the packed bytes: each metadata word (int16 for 3,
        # int32 for 4) is loaded once, not once per value, and 8 or 16 values load as one 16-32 byte vector
        WPB: tl.constexpr = BLOCK_K // 32    # metadata words per K block
        if BLOCK_M == 1:
            accv = tl.full((BLOCK_N, WPB, 8), 0.0, tl.float32)
        else:
            accw = tl.full((BLOCK_M, BLOCK_N, WPB, 8), 0.0, tl.float32)
    # PREFETCH (variant 5, mask-free loop): the next block's values and metadata are loaded before this
    # block's decompression runs, so each program keeps one block of HBM reads in flight while it computes.
    # The last iteration re-reads the last block (a scalar clamp keeps the loads mask-free).
    if PREFETCH and TC:
        offs_j = tl.arange(0, BH)
        offs_wj = tl.arange(0, BLOCK_K // 32)
        v_base = v_ptr + offs_n[:, None] * stride_vn
        w_base = meta_ptr + offs_n[:, None] * stride_mn
        k_first = tl.minimum(k_lo, K - BLOCK_K)      # an empty last split must not read past the end
        nxt_v = tl.load(v_base + (k_first // 2 + offs_j)[None, :])
        nxt_w = tl.load(w_base + (k_first // 32 + offs_wj)[None, :])
    for k0 in range(k_lo, k_hi, BLOCK_K):
        if TC:
            offs_h = k0 // 2 + tl.arange(0, BH)
            offs_w = k0 // 32 + tl.arange(0, BLOCK_K // 32)
            v_ptrs = v_ptr + offs_n[:, None] * stride_vn + offs_h[None, :]
            w_ptrs = meta_ptr + offs_n[:, None] * stride_mn + offs_w[None, :]
            if PREFETCH:
                vals = nxt_v
                words = nxt_w
                k_nx = tl.minimum(k0 + BLOCK_K, k_hi - BLOCK_K)
                nxt_v = tl.load(v_base + (k_nx // 2 + offs_j)[None, :])
                nxt_w = tl.load(w_base + (k_nx // 32 + offs_wj)[None, :])
            elif EVEN:
                vals = tl.load(v_ptrs)
                words = tl.load(w_ptrs)
            else:
                vals = tl.load(v_ptrs, mask=mask_n[:, None] & (offs_h[None, :] < k_hi // 2), other=0.0)
                words = tl.load(w_ptrs, mask=mask_n[:, None] & (offs_w[None, :] < (K + 31) // 32), other=0)
            v0, v1 = tl.split(tl.reshape(vals, (BLOCK_N, G, 2)))                                # (BN, G)
            nib = tl.reshape((words[:, :, None] >> (tl.arange(0, 8) * 4)[None, None, :]) & 15, (BLOCK_N, G))
            # the group's 4 dense entries as 4 (BN, G) selects (3 per entry, not 4), joined in registers: the
            # tile then reaches shared memory in 16-byte stores (~10.5 SASS instructions per weight element)
            i0 = nib & 3                                                                     # 0..2
            i1 = nib >> 2                                                                    # 1..3
            zero = tl.zeros_like(v0)
            e0 = tl.where(i0 == 0, v0, zero)
            e1 = tl.where(i0 == 1, v0, tl.where(i1 == 1, v1, zero))
            e2 = tl.where(i0 == 2, v0, tl.where(i1 == 2, v1, zero))
            e3 = tl.where(i1 == 3, v1, zero)
            w4 = tl.join(tl.join(e0, e2), tl.join(e1, e3))             # (BN, G, 2, 2): [g, a, b] = entry 2a + b
            w_tile = tl.reshape(w4, (BLOCK_N, BLOCK_K))                                       # (BN, BK)
            offs_k = k0 + tl.arange(0, BLOCK_K)
            x_t = tl.load(x_ptr + rows[None, :] * stride_xm + tl.minimum(offs_k, K - 1)[:, None])  # (BK, BM)
            if not EVEN:
                x_t = tl.where((offs_k < k_hi)[:, None], x_t, 0.0)
            if FP32_IEEE:
                acc_t = tl.dot(w_tile.to(tl.float32), x_t.to(tl.float32), acc_t, input_precision="ieee")
            else:
                acc_t = tl.dot(w_tile, x_t, acc_t)
        elif PERM:
            # byte permute, one int32 per 8 groups: a group's two stored values are one 32-bit word (v0 low, v1
            # high) and x's 4 candidates two words (x0 x1 | x2 x3); the group's 4-bit position code becomes a
            # prmt selector that moves x[i0] and x[i1] into one word, and a bf16 half widens to fp32 by a shift
            offs_w = tl.arange(0, WPB)
            offs_g = tl.arange(0, 8)
            gi = (k0 // 4 + offs_w * 8)[:, None] + offs_g[None, :]            # (W, 8): group = value-pair index
            v_ptrs = v_ptr.to(tl.pointer_type(tl.int32)) + offs_n[:, None, None] * (stride_vn // 2) + gi[None]
            # each group's metadata word is loaded once per group (same address: one L1 transaction), so the
            # words arrive in the values' register layout without a shared-memory exchange
            w_ptrs = meta_ptr + offs_n[:, None, None] * stride_mn + (k0 // 32 + offs_w)[None, :, None] \
                + tl.zeros_like(offs_g)[None, None, :]
            if EVEN:
                pairs = tl.load(v_ptrs)                                                            # (BN, W, 8)
                word = tl.load(w_ptrs)                                                             # (BN, W, 8)
            else:
                pairs = tl.load(v_ptrs, mask=mask_n[:, None, None] & (gi < k_hi // 4)[None], other=0)
                word = tl.load(w_ptrs, mask=mask_n[:, None, None] & (k0 // 32 + offs_w < (K + 31) // 32)[None, :,
                               None], other=0)
                gi = tl.minimum(gi, K // 4 - 1)        # masked pairs are 0: any group in bounds will do
            code = word.to(tl.uint32, bitcast=True) >> (offs_g * 4).to(tl.uint32)[None, None, :]  # (BN, W, 8)
            x_g = x_ptr.to(tl.pointer_type(tl.int32)) + rows[:, None, None, None] * (stride_xm // 2) \
                + (gi * 2)[None, :, :, None] + tl.arange(0, 2)[None, None, None, :]               # (BM, W, 8, 2)
            x01, x23 = tl.split(tl.load(x_g))
            x01 = x01[:, None, :, :]                                                               # (BM, 1, W, 8)
            x23 = x23[:, None, :, :]
            if USE_ASM:
                # selector bytes (2·i0, 2·i0+1, 2·i1, 2·i1+1) of the 8 bytes x01 ∪ x23: x[i0] low, x[i1] high
                sel = (((code & 3) * 0x22) | ((code & 12) * 0x880) | 0x1010).to(tl.int32, bitcast=True)[None]
                xs = tl.inline_asm_elementwise("prmt.b32 $0, $1, $2, $3;", "=r,r,r,r",
                                               [x01 + tl.zeros_like(sel), x23 + tl.zeros_like(sel), sel],
                                               dtype=tl.int32, is_pure=True, pack=1)
            else:   # the same word by selects (the interpreter has no PTX)
                i0 = (code & 3).to(tl.int32)[None]                                                 # 0..2
                i1 = ((code >> 2) & 3).to(tl.int32)[None]                                          # 1..3
                t0 = tl.where(i0 >= 2, x23, x01)
                t0 = tl.where((i0 & 1) != 0, t0 >> 16, t0)
                t1 = tl.where(i1 >= 2, x23, x01)
                t1 = tl.where((i1 & 1) != 0, t1 >> 16, t1)
                xs = (t0 & 0xFFFF) | (t1 << 16)
            x0, x1 = _widen(xs, x_ptr.dtype.element_ty == tl.bfloat16)
            v0, v1 = _widen(pairs, x_ptr.dtype.element_ty == tl.bfloat16)
            if BLOCK_M == 1:
                accv += v0 * tl.reshape(x0, (BLOCK_N, WPB, 8))
                accv += v1 * tl.reshape(x1, (BLOCK_N, WPB, 8))
            else:
                accw += v0[None] * x0
                accw += v1[None] * x1
        else:   # variant 4, or 6 with fp32 inputs
            # select, one int32 per 8 groups: x's 4 candidates of each group are loaded once for all columns
            offs_w = tl.arange(0, WPB)
            offs_v = (k0 // 2 + offs_w * 16)[None, :, None] + tl.arange(0, 16)[None, None, :]     # (1, W, 16)
            wd = k0 // 32 + offs_w                                                                 # (W,)
            vals, word = _load_words(v_ptr, meta_ptr, offs_n, mask_n, stride_vn, stride_mn, offs_v, wd,
                                     k_hi // 2, (K + 31) // 32, EVEN)            # (BN, W, 16), (BN, W) int32
            v0, v1 = tl.split(tl.reshape(vals.to(tl.float32), (BLOCK_N, WPB, 8, 2)))              # (BN, W, 8)
            nib = (word[:, :, None] >> (tl.arange(0, 8) * 4)[None, None, :]) & 15                 # (BN, W, 8)
            i0 = nib & 3                                                                           # 0..2
            i1 = nib >> 2                                                                          # 1..3
            grp = (k0 + offs_w * 32)[:, None] + tl.arange(0, 8)[None, :] * 4                       # (W, 8)
            if not EVEN:
                grp = tl.minimum(grp, K - 4)
            if BLOCK_M == 1:
                c0 = tl.load(x_ptr + grp).to(tl.float32)[None, :, :]                               # (1, W, 8)
                c1 = tl.load(x_ptr + grp + 1).to(tl.float32)[None, :, :]
                c2 = tl.load(x_ptr + grp + 2).to(tl.float32)[None, :, :]
                c3 = tl.load(x_ptr + grp + 3).to(tl.float32)[None, :, :]
                x0 = tl.where(i0 == 0, c0, tl.where(i0 == 1, c1, c2))
                x1 = tl.where(i1 == 3, c3, tl.where(i1 == 2, c2, c1))
                accv += x0 * v0 + x1 * v1
            else:
                x_g = x_ptr + rows[:, None, None] * stride_xm + grp[None, :, :]                     # (BM, W, 8)
                c0 = tl.load(x_g).to(tl.float32)[:, None, :, :]                                     # (BM, 1, W, 8)
                c1 = tl.load(x_g + 1).to(tl.float32)[:, None, :, :]
                c2 = tl.load(x_g + 2).to(tl.float32)[:, None, :, :]
                c3 = tl.load(x_g + 3).to(tl.float32)[:, None, :, :]
                x0 = tl.where(i0[None] == 0, c0, tl.where(i0[None] == 1, c1, c2))
                x1 = tl.where(i1[None] == 3, c3, tl.where(i1[None] == 2, c2, c1))
                accw += x0 * v0[None] + x1 * v1[None]

    if TC:
        acc = tl.trans(acc_t)
    elif BLOCK_M == 1:
        acc = tl.sum(tl.sum(accv, axis=2), axis=1)[None, :]
    else:
        acc = tl.sum(tl.sum(accw, axis=3), axis=2)
    if HAS_BIAS:
        if pid_k == 0:
            acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    splitk.store_tile(acc, out_ptr, ws_ptr, cnt_ptr, offs_m, offs_n, mask_m[:, None] & mask_n[None, :], M, N,
                      stride_om, pid_k, pid_n, SPLIT_K)


def _even(n: int, k: int, config: dict) -> bool:
    # every split then covers whole K blocks (the last splits may be empty): no masks in the loop
    return n % config["BLOCK_N"] == 0 and k % config["BLOCK_K"] == 0


_AUTOTUNED: dict = {}


def _autotuned(m_bucket: int, variants: tuple[int, ...] | None = None):
    """The autotuned launcher for one M bucket (and a subset of variants: benchmarks), built on first use
    (nothing compiles or benchmarks at import)."""
    key = (m_bucket, variants)
    if key not in _AUTOTUNED:
        configs = [c for c in nm24_decode_configs(m_bucket) if variants is None or c.kwargs["VARIANT"] in variants]
        if not configs:
            raise ValueError(f"no nm24 decode config of variants {variants} for {m_bucket} rows")
        even = triton.heuristics({"EVEN": lambda a: _even(a["N"], a["K"], a),
                                  "PREFETCH": lambda a: _even(a["N"], a["K"], a),
                                  })(_nm24_decode_kernel)
        _AUTOTUNED[key] = splitk.autotuner(even, configs)
    return _AUTOTUNED[key]


def nm24_decode(x2: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None,
                out: torch.Tensor, config: dict | None = None, variants: tuple[int, ...] | None = None
                ) -> torch.Tensor:
    """``out = x2 @ W.T + bias`` for x2 (M, K) with M <= MAX_M, contiguous along K; checked by the caller
    (:func:`sfcompile.lowering.kernels.nm24.nm24_matmul`). ``config``: fixed ``VARIANT``, ``BLOCK_N``,
    ``BLOCK_K``, ``SPLIT_K`` (+ ``num_warps``) instead of autotuning; ``variants``: autotune over these
    variants only (benchmarks)."""
    m, k = x2.shape
    n = values.shape[0]
    if m > MAX_M:
        raise ValueError(f"nm24_decode takes at most {MAX_M} rows, got {m}")
    on_cpu = x2.device.type == "cpu"
    # variant 6 reads x and the values as 32-bit words (two 16-bit elements each)
    if x2.stride(0) % 2 or x2.data_ptr() % 4:
        x2 = x2.clone()
    if values.stride(0) % 2 or values.data_ptr() % 4:
        values = values.clone()
    split = splitk.split_depth(config, lambda: nm24_decode_configs(splitk.m_key(m)))
    ws, cnt = splitk.decode_buffers(m, n, out, split, meta)
    args = (x2, values, meta, bias if bias is not None else values, out, ws, cnt, m, n, k,
            splitk.m_key(m), x2.stride(0), values.stride(0), meta.stride(0), out.stride(0))
    flags = {"HAS_BIAS": bias is not None, "FP32_IEEE": splitk.ieee_dot(x2.dtype, on_cpu), "USE_ASM": not on_cpu}

    def grid(meta_):
        return (triton.cdiv(n, meta_["BLOCK_N"]), meta_["SPLIT_K"])

    if config is not None:
        if config["VARIANT"] not in (4, 5, 6):
            raise ValueError(f"nm24_decode VARIANT {config['VARIANT']} does not exist: use 4 (select), 5 (tensor "
                             "cores) or 6 (byte permute)")
        if config["BLOCK_K"] < 32 or config["BLOCK_K"] & (config["BLOCK_K"] - 1):
            raise ValueError(f"BLOCK_K must be a power of two >= 32 (one metadata word), got {config['BLOCK_K']}")
        even = _even(n, k, config)
        block_m = 16 if config["VARIANT"] == 5 else splitk.m_key(m)
        config = {"EVEN": even, "PREFETCH": even, "BLOCK_M": block_m, **config}
    splitk.launch(_nm24_decode_kernel, lambda: _autotuned(splitk.m_key(m), variants), grid, args, flags, config, on_cpu)
    return out


def nm24_decode_reference(x2: torch.Tensor, values: torch.Tensor, meta: torch.Tensor,
                          bias: torch.Tensor | None = None) -> torch.Tensor:
    """Pure-PyTorch reference of what the kernel computes, in the compressed domain (W is never rebuilt):
    ``y[m, n] = sum_j values[n, j] * x[m, 4*(j//2) + idx[n, j]] (+ bias[n])`` in fp32 (fp64 for fp64
    inputs), x2.dtype out."""
    k = x2.shape[-1]
    j = torch.arange(k // 2, device=values.device)
    words = meta[:, j // 16].to(torch.int64)                              # (N, K/2): each value's word
    idx = (words >> (2 * (j % 16))) & 3                                   # its 2-bit position in the group
    cols = 4 * (j // 2) + idx                                             # (N, K/2) dense K column
    ct = torch.float64 if x2.dtype == torch.float64 else torch.float32
    y = torch.einsum("nj,mnj->mn", values.to(ct), x2.to(ct)[:, cols])     # (M, N)
    if bias is not None:
        y = y + bias.to(ct)
    return y.to(x2.dtype)
