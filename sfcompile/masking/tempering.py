"""Tempering: turning scores into soft masks, one update at a time (pure tensor functions).

One SparseForge mask update of a site, with z the z-normalised scores, s the target sparsity, T the
temperature and λ the pull strength (all from `TemperingSchedule`):

    τ  = quantile(z, s)                        estimated from a deterministic sample of the scores
    G  = σ((z − τ) / T)                        the tempered gate, in (0, 1) (see `gate` for ties)
    G ← clamp(G − η·λ·(m − hard(G)), 0, 1)     pull toward the hard pattern (η = pull_lr)
    m ← μ·m + (1 − μ)·G                        EMA of the soft mask (μ = mask_momentum)

The pull is the gradient step of (λ/2)·‖m − hard(G)‖² applied to the gate: where the current mask disagrees
with the pattern G would select, G is pushed toward the pattern, so the soft mask drifts onto a feasible
pattern before hardening makes the forward use it.
"""

from __future__ import annotations

import torch

from sfcompile.patterns import Pattern

__all__ = ["sampled_quantile", "sample_entries", "quantile_rows", "quantiles", "gate", "pull_toward_pattern",
           "ema_mask", "tempered_mask", "sample_generator"]


def sample_generator(seed: int, step: int, index: int, device=None) -> torch.Generator:
    """A generator deterministic in (seed, step, site index): resume needs no RNG state.

    ``device``: where the draws happen (the weight's device; drawing on the host and copying 100M+ probe
    entries to the GPU cost more than the probe's own passes). Streams differ between CPU and CUDA
    generators, so a run is reproducible on the same kind of device."""
    g = torch.Generator(device=device) if device is not None else torch.Generator()
    g.manual_seed((seed * 1_000_003 + step) * 65_537 + index)
    return g


@torch.no_grad()
def sample_entries(z: torch.Tensor, n_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The entries of ``z`` a quantile is estimated from (flat fp32): all of them when there are at most
    ``n_samples``, otherwise ``n_samples`` drawn uniformly with replacement (the reference samples 262,144)."""
    flat = z.detach().reshape(-1).float()
    if flat.numel() > n_samples:
        dev = generator.device if generator is not None else flat.device
        idx = torch.randint(flat.numel(), (n_samples,), generator=generator, device=dev).to(flat.device)
        flat = flat[idx]
    return flat


@torch.no_grad()
def quantile_rows(samples: torch.Tensor, q: float) -> torch.Tensor:
    """The ``q`` quantile of each row of ``samples`` (B, n) -> (B,), on their device (no host sync): the k-th
    smallest value, k = round(q · n) clamped to [1, n] (q = 0.5 on 4 values gives the 2nd smallest: half the
    values are <= τ)."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} must lie in [0, 1]")
    n = samples.shape[-1]
    k = min(n, max(1, int(round(q * n))))
    return samples.kthvalue(k, dim=-1).values if q > 0 else samples.min(dim=-1).values


@torch.no_grad()
def quantiles(samples: list[torch.Tensor], q: float) -> list[float]:
    """The ``q`` quantile of each 1-D sample (see `quantile_rows`). Samples of equal length and device are
    stacked into one ``kthvalue`` call, and all results come back in one host transfer."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} must lie in [0, 1]")
    out = [0.0] * len(samples)
    buckets: dict[tuple, list[int]] = {}
    for i, s in enumerate(samples):
        buckets.setdefault((s.numel(), s.device), []).append(i)
    for idx in buckets.values():
        vals = quantile_rows(torch.stack([samples[i] for i in idx]), q)
        for i, v in zip(idx, vals.cpu().tolist()):
            out[i] = v
    return out


@torch.no_grad()
def sampled_quantile(z: torch.Tensor, q: float, n_samples: int,
                     generator: torch.Generator | None = None) -> float:
    """The ``q`` quantile of ``z``: exact when ``z`` has at most ``n_samples`` entries, otherwise from
    ``n_samples`` entries drawn uniformly with replacement (the reference samples 262,144)."""
    return quantiles([sample_entries(z, n_samples, generator)], q)[0]


TIE_BREAK = 1e-3


def gate(z: torch.Tensor, tau: float | torch.Tensor, temperature: float) -> torch.Tensor:
    """G = (1 − δ)·σ((z − τ)/T) + δ·σ(z − τ), δ = 1e-3.

    At the low temperatures of late tempering σ((z − τ)/T) saturates to exactly 0 or 1 in float32 for most
    weights, and the pattern projection of a mask full of equal values picks by index, not by score (a flaw of
    the reference's plain σ). The small temperature-1 term keeps G strictly increasing in the score, so the
    mask keeps the scores' order within every N:M group / tile; it moves G by at most δ.

    ``tau``: a float, or a tensor broadcasting against ``z`` (one τ per site of a batch of stacked sites).
    """
    if temperature <= 0:
        raise ValueError(f"temperature {temperature} must be > 0")
    d = z - tau  # computed once, the same values both terms used; in-place passes: same ops, same rounding
    g = (d / temperature).sigmoid_().mul_(1 - TIE_BREAK)
    return g.add_(d.sigmoid_().mul_(TIE_BREAK))


def pull_toward_pattern(g: torch.Tensor, m: torch.Tensor, pattern: Pattern, k_dim: int, strength: float,
                        lr: float, check_nan: bool = True) -> torch.Tensor:
    """G ← clamp(G − lr·strength·(m − hard(G)), 0, 1), hard(G) = the pattern's projection of G."""
    if strength == 0 or lr == 0:
        return g
    hard = pattern.project(g, k_dim, check_nan=check_nan).to(g.dtype)
    step = (m.to(g.dtype) - hard).mul_(lr * strength)
    return (g - step).clamp_(0.0, 1.0)


def ema_mask(m: torch.Tensor, g: torch.Tensor, momentum: float) -> torch.Tensor:
    """m ← μ·m + (1 − μ)·G."""
    return (m.float() * momentum).add_(g * (1.0 - momentum))


@torch.no_grad()
def tempered_mask(z: torch.Tensor, m: torch.Tensor, pattern: Pattern, k_dim: int, *, target_sparsity: float,
                  temperature: float, pull: float, pull_lr: float, momentum: float, n_samples: int,
                  generator: torch.Generator | None = None, tau: float | torch.Tensor | None = None,
                  check_nan: bool = True) -> torch.Tensor:
    """One full update (see the module docstring); returns the new soft mask (fp32, m's shape).

    ``tau`` overrides the sampled quantile (used when τ is agreed across ranks); a tensor broadcasting against
    ``z`` gives each site of a batch of stacked sites (leading dim; ``k_dim`` negative) its own τ.
    ``check_nan=False`` leaves the NaN check of the pattern projection (a host sync) to the caller."""
    if tau is None:
        tau = sampled_quantile(z, target_sparsity, n_samples, generator)
    g = gate(z.float(), tau, temperature)
    g = pull_toward_pattern(g, m, pattern, k_dim, pull, pull_lr, check_nan)
    return ema_mask(m, g, momentum).clamp_(0.0, 1.0)
