"""Distillation losses: CE, KL(teacher ‖ student, T)·T² and SquareHead, and their weighted sum.

`token_losses` takes (N, V) logits rows with their next-token targets; `distillation_loss` makes those rows
from a micro-batch's (B, T, V) logits without copying them (every position is a row; the last of each
sequence is counted by neither loss). CE and KL are computed in fp32 whatever the autocast dtype, a chunk of
rows at a time, and by default with their gradient formed in the same pass (`_FusedLogitLoss`): against the
whole-batch fp32 loss this replaced, 0.39x the peak memory above the logits and 1.9x faster on the CPU
(fp32, 8 x 512 tokens, V = 49,152; `benchmarks/loss_memory.py`, benchmarks/README.md "Training loss memory").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# Logits are clamped to ±LOGIT_CLAMP before the KL (as the reference does). Healthy LM logits stay far inside
# this range (|z| < ~50), so the clamp never changes a normal loss; it exists because a bf16 student that
# diverges can emit ±inf logits, and log_softmax of a row holding +inf gives inf − inf = NaN, which would poison
# the whole batch's gradient instead of showing up as a large-but-finite loss the NaN guard and clip can handle.
LOGIT_CLAMP = 100.0

# Tokens per loss chunk: CE and KL are computed a chunk of tokens at a time, so their fp32 intermediates (the
# fp32 logits, both log-softmaxes, the teacher's probabilities) exist for one chunk only: for the whole batch
# only the logits themselves (the model's dtype) and their gradient remain. A chunk holds about
# LOSS_CHUNK_BYTES per (chunk, V) fp32 tensor (V = 49,152: 1,365 tokens; V = 151,936: 441 tokens).
LOSS_CHUNK_BYTES = 256 * 2**20


def loss_chunk(vocab: int) -> int:
    """Tokens per chunk for a vocabulary of ``vocab`` logits (`LOSS_CHUNK_BYTES` of fp32 per chunk)."""
    return max(1, LOSS_CHUNK_BYTES // (4 * max(vocab, 1)))


class _FusedLogitLoss(torch.autograd.Function):
    """w_ce·CE + w_kl·KL·T² and its gradient, computed together chunk by chunk in the forward.

    The gradient with respect to the logits is known in closed form, so the forward writes it into one buffer
    of the logits' shape and dtype (the dtype the gradient reaching the logits has anyway) and the backward
    only scales it: nothing is recomputed and no fp32 tensor larger than a chunk is ever kept. Per counted row
    (softmax σ, clamp C = LOGIT_CLAMP, n the number of counted rows):

        ∂(w_ce·CE)/∂s    = w_ce/n · (σ(s) − onehot(y))
        ∂(w_kl·KL·T²)/∂s = w_kl·T/n · (σ(s_C/T) − σ(t_C/T)) · [|s| ≤ C]     (s_C: s clamped to ±C)

    It has no second derivative: the exact Hessian probe uses `_checkpointed_losses` (``twice_differentiable``).
    """

    @staticmethod
    def forward(ctx, student, targets, teacher, temperature, w_ce, w_kl, chunk, kernel=False):
        n = student.shape[0]
        counted = torch.ones(n, dtype=torch.bool, device=student.device) if targets is None else targets != -100
        n_rows = counted.sum().clamp_min(1).float()
        ce_sum = student.new_zeros((), dtype=torch.float32)
        kl_sum = student.new_zeros((), dtype=torch.float32)
        if kernel:  # the same sums and gradient from one Triton kernel (two passes over each row)
            from sfcompile.train.logit_loss_kernel import logit_loss_rows

            try:
                ce_rows, kl_rows, ctx.grad = logit_loss_rows(student, targets, teacher, temperature, LOGIT_CLAMP,
                                                             w_ce, w_kl, write_grad=ctx.needs_input_grad[0])
            except Exception as err:  # Triton cannot build or launch it here: say which setting avoids it
                if not type(err).__module__.startswith("triton"):  # bad inputs, out of memory: not the kernel's
                    raise
                raise RuntimeError(
                    f"the Triton loss kernel failed on {student.device} ({type(err).__name__}: {err}); train with "
                    "loss_kernel='torch' (--loss-kernel torch: the chunked PyTorch loss, the same numbers)"
                ) from err
            ce_sum = ce_sum if ce_rows is None else ce_rows.sum()
            kl_sum = kl_sum if kl_rows is None else kl_rows.sum()
            return _FusedLogitLoss._finish(ctx, ce_sum, kl_sum, n_rows, temperature, w_ce, w_kl)
        grad = torch.empty_like(student) if ctx.needs_input_grad[0] else None
        for i in range(0, n, chunk):
            s = student[i : i + chunk].float()
            keep = counted[i : i + chunk, None].float()
            g = None  # this chunk's gradient, once a term has one
            if targets is not None:
                lse = torch.logsumexp(s, dim=-1, keepdim=True)
                y0 = targets[i : i + chunk].clamp_min(0)[:, None]
                ce_sum += ((lse - s.gather(1, y0)) * keep).sum()
                if grad is not None and w_ce:
                    g = torch.exp(s - lse).scatter_add_(1, y0, -keep).mul_(keep * (w_ce / n_rows))
            if teacher is not None:  # in place where it can: a chunk's fp32 temporaries are the peak here
                log_ps = F.log_softmax(s.clamp(-LOGIT_CLAMP, LOGIT_CLAMP).div_(temperature), dim=-1)
                t = teacher[i : i + chunk].float().clamp(-LOGIT_CLAMP, LOGIT_CLAMP).div_(temperature)  # not the input
                log_pt = F.log_softmax(t, dim=-1)
                del t
                p_t = log_pt.exp()
                kl_sum += (log_pt.sub_(log_ps).mul_(p_t).sum(-1, keepdim=True) * keep).sum()
                del log_pt
                if grad is not None and w_kl:
                    in_range = (s >= -LOGIT_CLAMP) & (s <= LOGIT_CLAMP)
                    g_kl = log_ps.exp_().sub_(p_t).mul_(in_range).mul_(keep * (w_kl * temperature / n_rows))
                    g = g_kl if g is None else g.add_(g_kl)
            if grad is not None:
                grad[i : i + chunk] = 0 if g is None else g
        ctx.grad = grad
        return _FusedLogitLoss._finish(ctx, ce_sum, kl_sum, n_rows, temperature, w_ce, w_kl)

    @staticmethod
    def _finish(ctx, ce_sum, kl_sum, n_rows, temperature, w_ce, w_kl):
        # the sums over counted rows -> (weighted total, CE mean, KL mean · T²)
        ce = ce_sum / n_rows
        kl = kl_sum / n_rows * temperature**2
        ctx.mark_non_differentiable(ce, kl)
        return _weighted(ce, kl, w_ce, w_kl), ce, kl

    @staticmethod
    def backward(ctx, g_total, _g_ce, _g_kl):
        if torch.is_grad_enabled():
            raise RuntimeError("the fused CE/KL loss has no second derivative; build the loss with "
                               "twice_differentiable=True (as the exact Hessian probe does)")
        grad, ctx.grad = ctx.grad, None
        if grad is None:
            raise RuntimeError("backward ran twice through the fused CE/KL loss (retain_graph); its gradient "
                               "buffer is used up by the first")
        return grad.mul_(g_total.to(grad.dtype)), None, None, None, None, None, None, None


def _weighted(ce: torch.Tensor, kl: torch.Tensor, w_ce: float, w_kl: float) -> torch.Tensor:
    # w_ce·CE + w_kl·KL as an fp32 scalar, a term of weight 0 left out (0 · inf would be NaN)
    total = ce.new_zeros((), dtype=torch.float32)
    if w_ce:
        total = total + w_ce * ce
    if w_kl:
        total = total + w_kl * kl
    return total


def _kl_rows(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    # s, t: (n, V) -> (n,) KL(softmax(t/T) ‖ softmax(s/T)) per row
    s = s.float().clamp(-LOGIT_CLAMP, LOGIT_CLAMP) / temperature
    t = t.float().clamp(-LOGIT_CLAMP, LOGIT_CLAMP) / temperature
    log_ps = F.log_softmax(s, dim=-1)
    log_pt = F.log_softmax(t, dim=-1)
    return (log_pt.exp() * (log_pt - log_ps)).sum(-1)


def _chunk_sums(s: torch.Tensor, targets: torch.Tensor | None, t: torch.Tensor | None, temperature: float):
    # one chunk: (CE summed over its counted rows or 0, KL summed over them or 0)
    zero = s.new_zeros((), dtype=torch.float32)
    if targets is None:
        return zero, (zero if t is None else _kl_rows(s, t, temperature).sum())
    ce = F.cross_entropy(s.float(), targets, ignore_index=-100, reduction="sum")
    return ce, (zero if t is None else (_kl_rows(s, t, temperature) * (targets != -100)).sum())


def _checkpointed_losses(student, targets, teacher, temperature, chunk):
    # the same sums through autograd, each chunk recomputed in backward: twice differentiable
    recompute = torch.is_grad_enabled() and student.requires_grad
    ce = kl = student.new_zeros((), dtype=torch.float32)
    for i in range(0, student.shape[0], chunk):
        part = slice(i, i + chunk)
        args = (student[part], None if targets is None else targets[part],
                None if teacher is None else teacher[part], temperature)
        c, k = checkpoint(_chunk_sums, *args, use_reentrant=False) if recompute else _chunk_sums(*args)
        ce, kl = ce + c, kl + k
    n_rows = student.shape[0] if targets is None else (targets != -100).sum().clamp_min(1)
    return ce / n_rows, kl / n_rows * temperature**2


def token_losses(
    student: torch.Tensor,
    targets: torch.Tensor | None,
    teacher: torch.Tensor | None = None,
    temperature: float = 2.0,
    *,
    weights: tuple[float, float] = (1.0, 1.0),
    chunk: int | None = None,
    twice_differentiable: bool = False,
    kernel: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(w_ce·CE + w_kl·KL, CE, KL)`` over the rows of ``student``, a chunk of ``chunk`` tokens at a time
    (default `loss_chunk` of V): CE the mean next-token cross-entropy, KL = KL(teacher ‖ student, T)·T² (Hinton's
    gradient-scale fix; None without ``teacher``), both means over the counted rows. Only the first output
    carries a gradient; CE and KL are for logging.

    student, teacher: (N, V) logits (teacher detached); targets: (N,), −100 = a row counted by neither loss
    (None: every row counted, CE not wanted: its weight must be 0). By default the gradient is formed in the
    forward (`_FusedLogitLoss`: no recomputation, one logits-sized buffer); ``twice_differentiable`` builds the
    same sums through autograd with each chunk recomputed in backward, for a double backward. ``kernel``: the
    fused form from one Triton kernel instead of chunked PyTorch (`sfcompile.train.logit_loss_kernel`; CPU
    tensors run it through Triton's interpreter).
    """
    n, vocab = student.shape
    if kernel and twice_differentiable:
        raise ValueError("the Triton loss kernel has no second derivative: twice_differentiable needs kernel=False")
    w_ce, w_kl = weights
    if targets is None and w_ce:
        raise ValueError(f"targets=None computes no CE, so its weight must be 0, not {w_ce}")
    if teacher is not None:
        if teacher.shape != student.shape:
            raise ValueError(
                f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ: "
                "the teacher must share the student's tokenizer/vocabulary"
            )
        teacher = teacher.detach()
    chunk = chunk or loss_chunk(vocab)
    if twice_differentiable:
        ce, kl = _checkpointed_losses(student, targets, teacher, temperature, chunk)
        total = _weighted(ce, kl, w_ce, w_kl if teacher is not None else 0.0)
    else:
        total, ce, kl = _FusedLogitLoss.apply(student, targets, teacher, float(temperature), float(w_ce),
                                              float(w_kl if teacher is not None else 0.0), int(chunk), kernel)
    return total, (None if targets is None else ce.detach()), (None if teacher is None else kl.detach())


def kl_divergence(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float = 2.0, chunk: int | None = None
) -> torch.Tensor:
    """KL(teacher ‖ student) at temperature T, mean over tokens, times T² (Hinton's gradient-scale fix).

    student, teacher: (N, V) logits (teacher detached). Computed ``chunk`` tokens at a time (`token_losses`).
    """
    return token_losses(student, None, teacher, temperature, weights=(0.0, 1.0), chunk=chunk)[0]


def squarehead(student_hidden, teacher_hidden) -> torch.Tensor:
    """SquareHead: mean over layers of mean((h_s − h_t)²) / mean(h_t²) (each layer normalised by the teacher).

    student_hidden, teacher_hidden: sequences of (B, T, D) hidden states, one per decoder layer.
    """
    if len(student_hidden) != len(teacher_hidden):
        raise ValueError(f"student has {len(student_hidden)} hidden states, teacher {len(teacher_hidden)}")
    terms = []
    for hs, ht in zip(student_hidden, teacher_hidden):
        ht = ht.detach().float()
        terms.append(((hs.float() - ht) ** 2).mean() / ht.pow(2).mean().clamp_min(1e-12))
    return torch.stack(terms).mean()


@dataclass(frozen=True)
class LossWeights:
    ce: float = 1.0
    kl: float = 0.0
    kl_temperature: float = 2.0
    squarehead: float = 0.0

    @property
    def needs_teacher(self) -> bool:
        return self.kl > 0 or self.squarehead > 0


def distillation_loss(student_out, input_ids: torch.Tensor, weights: LossWeights, teacher_out=None, *,
                      twice_differentiable: bool = False, kernel: bool = False):
    """Weighted CE + KL + SquareHead for one micro-batch.

    Args:
        student_out, teacher_out: model outputs with ``.logits`` (B, T, V) and, for SquareHead,
            ``.hidden_states`` (embeddings first, then one per layer; the embedding output is skipped).
        input_ids: (B, T) tokens; position t predicts token t+1.
        twice_differentiable: build CE and KL so that a double backward works (`token_losses`).
        kernel: CE and KL (and their gradient) from the Triton kernel (`token_losses`).

    Returns:
        (loss, parts): the scalar loss and a dict of detached floats ``{"ce", "kl", "sq"}`` for logging.
    """
    logits = student_out.logits
    B, T, V = logits.shape
    # Every position is a row (a view, no copy of the logits); the last of each sequence predicts nothing.
    targets = torch.cat([input_ids[:, 1:], input_ids.new_full((B, 1), -100)], dim=1).reshape(-1)
    if weights.needs_teacher and teacher_out is None:
        raise ValueError("kl/squarehead weight > 0 but no teacher output was given")
    t_logits = teacher_out.logits.reshape(-1, V) if weights.kl > 0 else None
    loss, ce, kl = token_losses(logits.reshape(-1, V), targets, t_logits, weights.kl_temperature,
                                weights=(weights.ce, weights.kl), twice_differentiable=twice_differentiable,
                                kernel=kernel)
    parts = {"ce": ce}
    if kl is not None:
        parts["kl"] = kl
    if weights.squarehead > 0:
        sq = squarehead(student_out.hidden_states[1:], teacher_out.hidden_states[1:])
        parts["sq"] = sq.detach()
        loss = loss + weights.squarehead * sq
    return loss, parts
