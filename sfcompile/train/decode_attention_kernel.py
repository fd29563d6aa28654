"""One decoding step's attention over the sampler's K/V buffers, reading only the filled positions.

The sampler's graph mode (`sfcompile.train.sampler`) attends with SDPA over a whole *window* of the buffer under
a mask, because a CUDA graph needs the same shapes at every step: a step reads on average more than it needs,
and SDPA's kernels are not built for 1-token queries over a masked buffer (on the H200, at 2048 sequences x
512 tokens, the attention took 12 of a 19.5 ms decoding step with one window; with eight windows, profiled, it
still took 8.6 of the 15.3 ms of kernels per step, against ~3 ms for the bytes it must read). Here one program
owns one
(sequence, K/V head): it loads the query rows that share the head (grouped-query attention: ``G`` rows), reads
the head's keys and values block by block up to the fed position — read from a device tensor, so a replayed
graph attends over one more position each step with no mask and no re-capture — and keeps an online softmax in
fp32. Batches of thousands of sequences give thousands of programs, so no split along the sequence is needed.

``decode_attention_reference`` is the same in PyTorch, for the tests. Measured on the H200 (SmolLM2-135M, bf16,
2048 x 512, eight windows, graph mode): the sampler ran at 192.9k tokens/s with this kernel against 127.8k with
SDPA (1.51x; benchmarks/README.md, twenty-seventh session).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sfcompile.lowering.kernels.splitk import ieee_dot, launch

BLOCK_N = 64  # positions per block
NUM_WARPS = 4


def supports_head_dim(d: int) -> bool:
    """Whether the kernel takes heads of ``d`` dims (a power of 2 >= 16: `tl.arange` and `tl.dot`)."""
    return d >= 16 and not d & (d - 1)


@triton.jit
def _decode_attention_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, pos_ptr,
    H, stride_qb, stride_qh, stride_qg, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_og, scale,
    G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
):
    NEG: tl.constexpr = -1e30  # masked scores: finite, so no -inf - -inf in the rescaling
    pid = tl.program_id(0).to(tl.int64)
    b, h = pid // H, pid % H
    g = tl.arange(0, G_PAD)
    d = tl.arange(0, D)
    q = tl.load(q_ptr + b * stride_qb + h * stride_qh + g[:, None] * stride_qg + d[None, :], mask=g[:, None] < G,
                other=0.0)
    last = tl.load(pos_ptr).to(tl.int32)  # attend to positions 0 .. last (a buffer far below 2**31)
    k_head = k_ptr + b * stride_kb + h * stride_kh
    v_head = v_ptr + b * stride_vb + h * stride_vh
    m = tl.full((G_PAD,), NEG, tl.float32)
    l = tl.zeros((G_PAD,), tl.float32)
    acc = tl.zeros((G_PAD, D), tl.float32)
    for start in range(0, last + 1, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        seen = n <= last
        k = tl.load(k_head + n[:, None] * stride_kn + d[None, :], mask=seen[:, None], other=0.0)
        if IEEE:  # fp32, or bf16 in the interpreter (its bf16 dot is wrong): an exact fp32 dot
            s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        s = tl.where(seen[None, :], s * scale, NEG)
        m_new = tl.maximum(m, tl.max(s, 1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m - m_new)
        l = l * alpha + tl.sum(p, 1)
        v = tl.load(v_head + n[:, None] * stride_vn + d[None, :], mask=seen[:, None], other=0.0)
        if IEEE:
            pv = tl.dot(p, v.to(tl.float32), input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v)
        acc = acc * alpha[:, None] + pv
        m = m_new
    out = acc / l[:, None]
    tl.store(o_ptr + b * stride_ob + h * stride_oh + g[:, None] * stride_og + d[None, :],
             out.to(o_ptr.dtype.element_ty), mask=g[:, None] < G)


def decode_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, position: torch.Tensor,
                     scale: float | None = None, block_n: int = BLOCK_N) -> torch.Tensor:
    """Attention of one new token per sequence over buffer positions ``0 .. position``.

    Args:
        query: (B, H_kv, G, D), the G query heads that share each K/V head as rows (D a power of 2, >= 16).
        keys, values: (B, H_kv, N, D) buffers (N > position; a window of a larger buffer is fine: any strides
            but a unit last one).
        position: (1,) integer device tensor, the last position attended to (read by the kernel at run time).
        scale: the scores' factor (default 1/sqrt(D)).

    Returns (B, H_kv, G, D) in the query's dtype.
    """
    b, h, g, d = query.shape
    if keys.shape[:2] != (b, h) or values.shape != keys.shape or keys.shape[-1] != d:
        raise ValueError(f"query {tuple(query.shape)}, keys {tuple(keys.shape)}, values {tuple(values.shape)}: "
                         "expected (B, H, G, D) and two (B, H, N, D)")
    if not supports_head_dim(d):
        raise ValueError(f"head dim {d}: the kernel needs a power of 2 >= 16")
    if query.stride(-1) != 1 or keys.stride(-1) != 1 or values.stride(-1) != 1:
        raise ValueError("query, keys and values need a unit stride along the head dim")
    out = torch.empty_like(query)
    args = (query, keys, values, out, position, h, *query.stride()[:3], *keys.stride()[:3], *values.stride()[:3],
            *out.stride()[:3], float(scale if scale is not None else d ** -0.5))
    on_cpu = query.device.type == "cpu"
    flags = {"G": g, "G_PAD": max(16, triton.next_power_of_2(g)), "D": d, "IEEE": ieee_dot(query.dtype, on_cpu)}
    launch(_decode_attention_kernel, None, lambda cfg: (b * h,), args, flags,
           {"BLOCK_N": block_n, "num_warps": NUM_WARPS}, on_cpu)
    return out


def decode_attention_reference(query, keys, values, position: int, scale: float | None = None) -> torch.Tensor:
    """`decode_attention` in PyTorch (float64): softmax over positions ``0 .. position``."""
    q, k, v = (t.double() for t in (query, keys[:, :, : position + 1], values[:, :, : position + 1]))
    s = q @ k.transpose(-1, -2) * (scale if scale is not None else query.shape[-1] ** -0.5)
    return (torch.softmax(s, -1) @ v).to(query.dtype)
