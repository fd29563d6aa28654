"""Synthetic layer inputs shared by the one-shot pruner tests."""

import torch


def correlated_inputs(n=4096, k=64, rank=8, seed=0):
    """Activations with low effective rank plus noise and uneven feature scales, as in LLMs."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, rank, generator=g) @ torch.randn(rank, k, generator=g)
    z = z + 0.3 * torch.randn(n, k, generator=g)
    return z * torch.exp(torch.randn(k, generator=g))
