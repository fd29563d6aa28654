"""Wanda (Sun et al., 2023): prune by |Wᵢⱼ|·‖Xⱼ‖₂, the weight magnitude times the L2 norm of its input feature
over all calibration tokens. No weight update. The comparison group is the pattern's: per output row for
unstructured (as the paper recommends for LLMs), per group of M along K for N:M, per matrix for blocks."""

from __future__ import annotations

import torch

from ...patterns import Pattern

__all__ = ["wanda_scores", "wanda_mask"]


@torch.no_grad()
def wanda_scores(weight: torch.Tensor, feature_sq_sum: torch.Tensor, k_dim: int) -> torch.Tensor:
    """|W|·‖X_j‖₂ in ``weight``'s own layout.

    Args:
        weight: the weight, any layout; K along ``k_dim``.
        feature_sq_sum: Σ_tokens x_j², shape (K,) — or (E, K) for a 3-D (E, ·, ·) expert weight, one row per
            expert (each expert's own routed tokens).
        k_dim: the reduction dim of ``weight``.
    """
    w = weight.detach().float().movedim(k_dim, -1)  # (..., rows, K)
    norms = feature_sq_sum.float().clamp_min(0).sqrt()
    if norms.dim() == 1:
        scale = norms
    else:  # (E, K) -> (E, 1, K) against (E, rows, K)
        scale = norms.reshape(*norms.shape[:-1], *([1] * (w.dim() - norms.dim())), norms.shape[-1])
    return (w.abs() * scale).movedim(-1, k_dim)


@torch.no_grad()
def wanda_mask(weight: torch.Tensor, feature_sq_sum: torch.Tensor, pattern: Pattern,
               k_dim: int) -> torch.Tensor:
    """Bool mask of ``weight``'s shape keeping the highest Wanda scores under ``pattern``."""
    return pattern.project(wanda_scores(weight, feature_sq_sum, k_dim), k_dim)
