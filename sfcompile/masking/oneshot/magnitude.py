"""Magnitude pruning: keep the entries of largest |W| under the pattern (no calibration)."""

from __future__ import annotations

import torch

from ...patterns import Pattern

__all__ = ["magnitude_mask"]


@torch.no_grad()
def magnitude_mask(weight: torch.Tensor, pattern: Pattern, k_dim: int) -> torch.Tensor:
    """Bool mask of ``weight``'s shape: ``pattern.project(|W|)`` with groups along ``k_dim``."""
    return pattern.project(weight.detach().abs(), k_dim)
