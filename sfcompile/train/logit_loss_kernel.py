"""CE + KL(teacher ‖ student, T) and their gradient in one Triton kernel: two passes over each row of logits.

`_FusedLogitLoss` computes the same sums chunk by chunk in PyTorch: ~25 elementwise passes over fp32 copies of
each chunk (57.6 ms for 32 x 512 x 49,152 bf16 logits on the H200). Here one program owns one row: the first
pass reads the student's and the teacher's logits once and keeps three online log-sum-exps (the student's at
T = 1 for CE, student's and teacher's at temperature T, both clamped to ±C, for KL); the second reads them
again, adds up the row's KL and writes the row's gradient in the logits' dtype. Per row (σ softmax, n counted
rows, s_C the clamped logits):

    ce_row = lse(s) − s[y]                     ∂/∂s: w_ce/n · (σ(s) − onehot(y))
    kl_row = Σ p_t (log p_t − log p_s)         ∂/∂s: w_kl·T/n · (σ(s_C/T) − σ(t_C/T)) · [|s| ≤ C]
    p_t = σ(t_C/T), p_s = σ(s_C/T)

A row whose target is -100 counts for neither sum and gets a zero gradient. The gradient is stored in the logits'
dtype by a plain cast (round to nearest on the GPU; Triton's interpreter truncates fp32 -> bf16 instead, so on
the CPU a bf16 gradient is up to one bf16 ulp smaller in magnitude than PyTorch's). The row values come back in fp32;
the caller sums them. ``logit_loss_reference`` is the same in PyTorch (float64), for the tests.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sfcompile.lowering.kernels.splitk import launch


@triton.jit
def _online(m, l, x):
    # per-lane running max m and sum l of exp(x - m); masked lanes hold NEG, whose exp vanishes once a real
    # value sets the lane's (or, in `_lse`, the row's) max
    m_new = tl.maximum(m, x)
    return m_new, l * tl.exp(m - m_new) + tl.exp(x - m_new)


@triton.jit
def _lse(m, l):
    top = tl.max(m, 0)
    return top + tl.log(tl.sum(l * tl.exp(m - top), 0))


@triton.jit
def _logit_loss_kernel(
    s_ptr, t_ptr, y_ptr, g_ptr, ce_ptr, kl_ptr, scale_ptr,
    V, stride_s, stride_t, stride_g,
    inv_temp, clamp, w_ce, w_kl_t,
    HAS_TARGETS: tl.constexpr, HAS_TEACHER: tl.constexpr, WRITE_GRAD: tl.constexpr, BLOCK_V: tl.constexpr,
):
    NEG: tl.constexpr = -1e30  # masked lanes: finite, so no -inf - -inf
    row = tl.program_id(0).to(tl.int64)
    s_row = s_ptr + row * stride_s
    t_row = t_ptr + row * stride_t
    keep = 1.0
    y = 0
    if HAS_TARGETS:
        y = tl.load(y_ptr + row)
        keep = tl.where(y == -100, 0.0, 1.0)
        y = tl.where(y == -100, 0, y)
    offs = tl.arange(0, BLOCK_V)
    # pass 1: per-lane online log-sum-exp of s (CE), s_C/T and t_C/T (KL)
    m_ce = tl.full((BLOCK_V,), NEG, tl.float32)
    l_ce = tl.zeros((BLOCK_V,), tl.float32)
    m_s = tl.full((BLOCK_V,), NEG, tl.float32)
    l_s = tl.zeros((BLOCK_V,), tl.float32)
    m_t = tl.full((BLOCK_V,), NEG, tl.float32)
    l_t = tl.zeros((BLOCK_V,), tl.float32)
    for start in range(0, V, BLOCK_V):
        cols = start + offs
        mask = cols < V
        s = tl.load(s_row + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_TARGETS:
            m_ce, l_ce = _online(m_ce, l_ce, tl.where(mask, s, NEG))
        if HAS_TEACHER:
            t = tl.load(t_row + cols, mask=mask, other=0.0).to(tl.float32)
            m_s, l_s = _online(m_s, l_s, tl.where(mask, tl.minimum(tl.maximum(s, -clamp), clamp) * inv_temp, NEG))
            m_t, l_t = _online(m_t, l_t, tl.where(mask, tl.minimum(tl.maximum(t, -clamp), clamp) * inv_temp, NEG))
    scale = tl.load(scale_ptr) * keep  # 1 / counted rows; 0 for an uncounted row
    lse_ce = 0.0
    lse_s = 0.0
    lse_t = 0.0
    if HAS_TARGETS:
        lse_ce = _lse(m_ce, l_ce)
        s_y = tl.load(s_row + y).to(tl.float32)
        tl.store(ce_ptr + row, tl.where(keep > 0, lse_ce - s_y, 0.0))
    if HAS_TEACHER:
        lse_s = _lse(m_s, l_s)
        lse_t = _lse(m_t, l_t)
    # pass 2: the row's KL and its gradient
    kl = tl.zeros((BLOCK_V,), tl.float32)
    for start in range(0, V, BLOCK_V):
        cols = start + offs
        mask = cols < V
        s = tl.load(s_row + cols, mask=mask, other=0.0).to(tl.float32)
        grad = tl.zeros((BLOCK_V,), tl.float32)
        if HAS_TARGETS:
            grad += w_ce * (tl.exp(s - lse_ce) - tl.where(cols == y, 1.0, 0.0))
        if HAS_TEACHER:
            t = tl.load(t_row + cols, mask=mask, other=0.0).to(tl.float32)
            log_ps = tl.minimum(tl.maximum(s, -clamp), clamp) * inv_temp - lse_s
            log_pt = tl.minimum(tl.maximum(t, -clamp), clamp) * inv_temp - lse_t
            p_t = tl.exp(log_pt)
            kl += tl.where(mask, p_t * (log_pt - log_ps), 0.0)
            in_range = (s >= -clamp) & (s <= clamp)
            grad += w_kl_t * tl.where(in_range, tl.exp(log_ps) - p_t, 0.0)
        if WRITE_GRAD:
            tl.store(g_ptr + row * stride_g + cols, (grad * scale).to(g_ptr.dtype.element_ty), mask=mask)
    if HAS_TEACHER:
        tl.store(kl_ptr + row, tl.where(keep > 0, tl.sum(kl, 0), 0.0))


# Columns per block and warps per program: compiled for sm_90 on the CPU (Triton 3.7, ptxas -v), 2048 x 8 warps
# take 80 registers and no spills (3 programs per SM); 4096 x 8 take 146, 4096 x 4 spill. Not yet timed.
BLOCK_V = 2048
NUM_WARPS = 8


def logit_loss_rows(student: torch.Tensor, targets: torch.Tensor | None, teacher: torch.Tensor | None,
                    temperature: float, clamp: float, w_ce: float, w_kl: float, write_grad: bool,
                    block_v: int = BLOCK_V):
    """Per-row CE and KL (fp32, 0 for uncounted rows; None for an absent term) and, with ``write_grad``, the
    gradient of w_ce·mean(CE) + w_kl·mean(KL)·T² with respect to ``student`` (its dtype), means over the
    counted rows. ``student``, ``teacher``: (N, V), unit stride along V; ``targets``: (N,) int, -100 = uncounted.
    CPU tensors run through Triton's interpreter (tests)."""
    if student.dim() != 2 or student.stride(-1) != 1:
        raise ValueError(f"logit_loss_rows needs (N, V) logits with unit stride along V, got {tuple(student.shape)} "
                         f"with strides {student.stride()}")
    if teacher is not None and (teacher.shape != student.shape or teacher.stride(-1) != 1):
        raise ValueError(f"teacher logits {tuple(teacher.shape)} do not match the student's {tuple(student.shape)}")
    if targets is None and teacher is None:
        raise ValueError("logit_loss_rows needs targets, teacher logits or both")
    n, v = student.shape
    dev = student.device
    counted = (targets != -100).sum() if targets is not None else torch.tensor(n, device=dev)
    scale = 1.0 / counted.clamp_min(1).to(torch.float32)  # (1,) on the device: no host sync
    ce = torch.zeros(n, device=dev, dtype=torch.float32) if targets is not None else None
    kl = torch.zeros(n, device=dev, dtype=torch.float32) if teacher is not None else None
    grad = torch.empty_like(student) if write_grad else None
    dummy = student.new_empty(1)
    args = (student, teacher if teacher is not None else dummy,
            targets if targets is not None else dummy.new_empty(1, dtype=torch.int64),
            grad if grad is not None else dummy, ce if ce is not None else scale.new_empty(1),
            kl if kl is not None else scale.new_empty(1), scale.reshape(1),
            v, student.stride(0), 0 if teacher is None else teacher.stride(0), 0 if grad is None else grad.stride(0),
            1.0 / temperature, clamp, float(w_ce) if targets is not None else 0.0,
            float(w_kl) * temperature if teacher is not None else 0.0)
    flags = dict(HAS_TARGETS=targets is not None, HAS_TEACHER=teacher is not None, WRITE_GRAD=write_grad)
    launch(_logit_loss_kernel, None, lambda cfg: (n,), args, flags, {"BLOCK_V": block_v, "num_warps": NUM_WARPS},
           on_cpu=dev.type == "cpu")
    return ce, kl, grad


def logit_loss_reference(student, targets, teacher, temperature: float, clamp: float, w_ce: float, w_kl: float):
    """The rows, the weighted mean and its gradient in float64 PyTorch (autograd), for the tests."""
    s = student.detach().double().requires_grad_(True)
    keep = torch.ones(s.shape[0], dtype=torch.float64) if targets is None else (targets != -100).double()
    n = keep.sum().clamp_min(1)
    total = s.new_zeros(())
    ce = kl = None
    if targets is not None:
        lse = torch.logsumexp(s, -1)
        ce = (lse - s.gather(1, targets.clamp_min(0)[:, None])[:, 0]) * keep
        total = total + w_ce * ce.sum() / n
    if teacher is not None:
        log_ps = torch.log_softmax(s.clamp(-clamp, clamp) / temperature, -1)
        log_pt = torch.log_softmax(teacher.double().clamp(-clamp, clamp) / temperature, -1)
        kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1) * keep
        total = total + w_kl * kl.sum() / n * temperature**2
    total.backward()
    return ce, kl, total.detach(), s.grad
