"""Mask-aware AdamW and the learning-rate schedule.

`MaskAwareAdamW` is `torch.optim.AdamW` (β = (0.9, 0.95), weight decay on ≥2-D parameters only) plus three
optional mask-aware terms for the dense weights W under soft masks (found through `masked_sites`):

* SR-STE decay (Zhou et al. 2021): ``grad += d · W · (1 − m_eff)`` before the Adam update — pulls the pruned
  weights toward zero so the pattern can settle; ``d`` ramps linearly from 0 to ``srste_decay``.
* CAST adaptive L1 (Huang et al. 2025, "AdamS"): a decoupled step ``W −= lr · λ · sign(W) · (1 − hard) /
  (√v̂ + ε)`` on the pruned weights, v̂ the bias-corrected Adam second moment: weights with small, noisy
  gradients shrink faster, so every pruned weight reaches zero at a similar pace. Applied in proximal form
  (|W| shrinks, clamped at 0, never crossing zero).
* CAST weight scaling: after the L1 step, each matrix's kept weights are rescaled so that the matrix's L2
  norm equals its norm before the L1 step — the decay removes magnitude from the pruned part, the kept part
  takes it back, and the pattern is untouched (our reading of CAST's scaling module as a per-matrix rule).

The state dict is AdamW's, so checkpoints stay plain.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sfcompile.masking.state import dense_weight, masked_sites


def lr_at(step: int, *, lr: float, min_lr: float, warmup: int, total: int) -> float:
    """Linear warm-up from 0 over ``warmup`` steps, then cosine from ``lr`` down to ``min_lr`` at ``total``.

    Pure function of the step; ``step`` counts from 0 (the LR used by the first optimizer step is
    ``lr_at(0)`` = lr/warmup, never exactly 0).
    """
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, max(0.0, (step - warmup) / span))
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def ramp(step: int, end_value: float, ramp_steps: int) -> float:
    """Linear 0 → ``end_value`` over ``ramp_steps`` steps, then flat."""
    if ramp_steps <= 0:
        return end_value
    return end_value * min(1.0, step / ramp_steps)


def trainable_parameters(model: nn.Module, *, train_embeddings: bool = False, exclude=()) -> list[dict]:
    """Parameter groups for the optimizer.

    Trained: every parameter that requires grad — the dense W under each soft mask (mask/hard/m_eff are frozen
    parameters and are left out), unmasked weights, norms, biases — except the input embeddings (and an
    output head tied to them) unless ``train_embeddings``, and except ``exclude``.
    Weight decay applies to ≥2-D tensors only.
    """
    frozen: set[int] = set()
    if not train_embeddings:
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        if emb is not None:
            for p in emb.parameters():
                p.requires_grad_(False)
                frozen.add(id(p))
    masks = {id(p) for _, _, soft in masked_sites(model) for p in (soft.mask, soft.hard, soft.eff)}
    seen: set[int] = {id(p) for p in exclude}
    decay, no_decay = [], []
    for p in model.parameters():
        if id(p) in seen or id(p) in masks or id(p) in frozen or not p.requires_grad:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "name": "decay"}, {"params": no_decay, "name": "no_decay", "weight_decay": 0.0}]


# MaskAwareAdamW's implementations of the Adam update (TrainConfig.adam_impl)
ADAM_IMPLS = ("foreach", "fused")


class MaskAwareAdamW(torch.optim.AdamW):
    """AdamW with SR-STE decay, CAST adaptive L1 and weight scaling on masked weights (module docstring).

    Args:
        param_groups: from `trainable_parameters`.
        model: the sparsified model; its masks are looked up through `masked_sites` at each step (so masks
            installed or finalised later are seen).
        srste_decay: the SR-STE coefficient d for this step; set per step with `set_mask_terms`.
        cast_l1, cast_weight_scaling: CAST terms (0 / False = off).
        impl: `ADAM_IMPLS`: ``"foreach"`` (torch's default: on CUDA its multi-tensor AdamW, a few kernels per
            group of tensors for each of Adam's elementwise steps; on the CPU a loop over the tensors) or
            ``"fused"`` (torch's fused AdamW: one pass over each tensor's weight, gradient and moments; on CUDA
            and CPU). The same update to float rounding and the same state dict (a checkpoint of one resumes
            with the other).
    """

    def __init__(
        self,
        param_groups,
        model: nn.Module,
        *,
        lr: float,
        betas=(0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.1,
        cast_l1: float = 0.0,
        cast_weight_scaling: bool = False,
        impl: str = "foreach",
    ):
        if impl not in ADAM_IMPLS:
            raise ValueError(f"impl={impl!r}: choose one of {', '.join(map(repr, ADAM_IMPLS))}")
        fused = impl == "fused"
        super().__init__(param_groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         foreach=None, fused=fused or None)
        self._model = model
        self.srste_decay = 0.0
        self.cast_l1 = cast_l1
        self.cast_weight_scaling = cast_weight_scaling

    def set_mask_terms(self, *, srste_decay: float) -> None:
        self.srste_decay = srste_decay

    def _masked(self):
        for site, module, soft in masked_sites(self._model):
            w = dense_weight(module, site.param)
            if w in self.state or w.grad is not None:
                yield w, soft

    @torch.no_grad()
    def step(self, closure=None):
        masked = list(self._masked()) if (self.srste_decay or self.cast_l1) else []
        if self.srste_decay:
            for w, soft in masked:
                if w.grad is not None:
                    w.grad.add_(w * (1 - soft.effective().to(w.dtype)), alpha=self.srste_decay)
        loss = super().step(closure)
        if self.cast_l1:
            self._cast_step(masked)
        return loss

    def _cast_step(self, masked) -> None:
        lr = self.param_groups[0]["lr"]
        beta2 = self.param_groups[0]["betas"][1]
        eps = self.param_groups[0]["eps"]
        for w, soft in masked:
            state = self.state.get(w)
            if not state or "exp_avg_sq" not in state:
                continue
            step = float(state["step"])
            v_hat = state["exp_avg_sq"] / (1 - beta2**step)
            pruned = 1 - soft.hard.to(w.dtype)
            norm_before = w.norm() if self.cast_weight_scaling else None
            # proximal form: shrink |W| by the step but never across zero (a tiny v̂ makes the step huge)
            shrink = lr * self.cast_l1 * pruned / (v_hat.sqrt() + eps)
            w.copy_(torch.sign(w) * (w.abs() - shrink).clamp_min(0))
            if self.cast_weight_scaling:
                kept = soft.hard.to(w.dtype)
                pruned_sq = (w * pruned).pow(2).sum()
                kept_sq = (w * kept).pow(2).sum().clamp_min(1e-30)
                scale = ((norm_before.pow(2) - pruned_sq).clamp_min(0) / kept_sq).sqrt()
                w.mul_(kept * scale + pruned)


def build_optimizer(model: nn.Module, config, extra=()) -> MaskAwareAdamW:
    """The run's optimizer. ``extra`` (the forge's parameters) always goes to separate groups, also when it
    lives inside the model, so a resumed run rebuilds exactly the group layout of its checkpoint."""
    extra = list(extra)
    groups = trainable_parameters(model, train_embeddings=config.train_embeddings, exclude=extra)
    opt = MaskAwareAdamW(
        groups,
        model,
        lr=config.lr,
        betas=config.betas,
        eps=config.eps,
        weight_decay=config.weight_decay,
        cast_l1=config.cast_l1,
        cast_weight_scaling=config.cast_weight_scaling,
        impl=config.adam_impl,
    )
    add_new_parameters(opt, extra)
    return opt


def add_new_parameters(optimizer: torch.optim.Optimizer, params) -> int:
    """Add parameters the optimizer does not hold yet (e.g. SLoRB installed mid-run); returns how many."""
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    new = [p for p in params if id(p) not in held and p.requires_grad]
    if new:
        decay = [p for p in new if p.dim() >= 2]
        no_decay = [p for p in new if p.dim() < 2]
        if decay:
            optimizer.add_param_group({"params": decay, "name": "extra_decay"})
        if no_decay:
            optimizer.add_param_group({"params": no_decay, "name": "extra_no_decay", "weight_decay": 0.0})
    return len(new)


def unmasked_dense(model: nn.Module):
    """(name, dense W) of every masked site — for logging and tests."""
    return [(site.name, dense_weight(module, site.param)) for site, module, _ in masked_sites(model)]
