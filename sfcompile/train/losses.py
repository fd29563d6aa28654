"""Distillation losses: CE, KL(teacher ‖ student, T)·T² and SquareHead, and their weighted sum.

All functions take logits shaped ``(B, T, V)`` and next-token targets already aligned by the caller
(`distillation_loss` does the shift). Losses are computed in fp32 whatever the autocast dtype.
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

# Tokens per KL chunk: the (chunk, V) fp32 softmax intermediates are recomputed in backward (checkpoint), so
# peak memory is one chunk of them, not B·T·V·4 bytes × 3 (for V = 49152, 8×512 tokens: 800 MB → 100 MB).
KL_CHUNK = 2048


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token CE. logits (N, V), targets (N,) (−100 = ignore)."""
    return F.cross_entropy(logits.float(), targets, ignore_index=-100)


def _kl_chunk(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    # s, t: (n, V) -> sum over rows of KL(softmax(t/T) ‖ softmax(s/T))
    s = s.float().clamp(-LOGIT_CLAMP, LOGIT_CLAMP) / temperature
    t = t.float().clamp(-LOGIT_CLAMP, LOGIT_CLAMP) / temperature
    log_ps = F.log_softmax(s, dim=-1)
    log_pt = F.log_softmax(t, dim=-1)
    return (log_pt.exp() * (log_pt - log_ps)).sum()


def kl_divergence(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float = 2.0, chunk: int = KL_CHUNK
) -> torch.Tensor:
    """KL(teacher ‖ student) at temperature T, mean over tokens, times T² (Hinton's gradient-scale fix).

    student, teacher: (N, V) logits (teacher detached). Computed ``chunk`` tokens at a time.
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ: "
            "the teacher must share the student's tokenizer/vocabulary"
        )
    teacher = teacher.detach()
    n = student.shape[0]
    total = student.new_zeros((), dtype=torch.float32)
    for i in range(0, n, chunk):
        s, t = student[i : i + chunk], teacher[i : i + chunk]
        if torch.is_grad_enabled() and s.requires_grad:
            total = total + checkpoint(_kl_chunk, s, t, temperature, use_reentrant=False)
        else:
            total = total + _kl_chunk(s, t, temperature)
    return total / max(n, 1) * temperature**2


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


def distillation_loss(student_out, input_ids: torch.Tensor, weights: LossWeights, teacher_out=None):
    """Weighted CE + KL + SquareHead for one micro-batch.

    Args:
        student_out, teacher_out: model outputs with ``.logits`` (B, T, V) and, for SquareHead,
            ``.hidden_states`` (embeddings first, then one per layer; the embedding output is skipped).
        input_ids: (B, T) tokens; position t predicts token t+1.

    Returns:
        (loss, parts): the scalar loss and a dict of detached floats ``{"ce", "kl", "sq"}`` for logging.
    """
    logits = student_out.logits[:, :-1]  # (B, T-1, V)
    V = logits.shape[-1]
    flat = logits.reshape(-1, V)
    targets = input_ids[:, 1:].reshape(-1)
    loss = flat.new_zeros((), dtype=torch.float32)
    parts = {}
    ce = cross_entropy(flat, targets)
    parts["ce"] = ce.detach()
    if weights.ce > 0:
        loss = loss + weights.ce * ce
    if weights.needs_teacher:
        if teacher_out is None:
            raise ValueError("kl/squarehead weight > 0 but no teacher output was given")
    if weights.kl > 0:
        t_logits = teacher_out.logits[:, :-1].reshape(-1, V)
        kl = kl_divergence(flat, t_logits, weights.kl_temperature)
        parts["kl"] = kl.detach()
        loss = loss + weights.kl * kl
    if weights.squarehead > 0:
        sq = squarehead(student_out.hidden_states[1:], teacher_out.hidden_states[1:])
        parts["sq"] = sq.detach()
        loss = loss + weights.squarehead * sq
    return loss, parts
