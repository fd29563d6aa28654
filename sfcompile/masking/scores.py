"""Importance scores for SparseForge mask updates, and the per-site statistics they read.

A score ranks the entries of one site's weight W (higher = keep). All are computed on the dense W (the
straight-through-trained weight, pruned entries included, so they can come back) and z-normalised per site
before the gate compares them with the quantile τ:

=================  ===============================  ==========================================================
``magnitude``      |W|
``wanda``          |W| · ‖x_k‖                      ‖x_k‖: RMS of input feature k (EMA over training batches)
``hessian_obd``    (H + ε) · W²                     OBD saliency; H = Hutchinson Hessian diagonal (EMA)
``hessian_ratio``  |W| / √(H + ε)                   the reference's LLaMA default; ranks *against* curvature
``fisher``         (F + ε) · W²                     OBD with the empirical Fisher F = EMA of g² as curvature
=================  ===============================  ==========================================================

The statistics live as frozen ``nn.Parameter``s on each site's ``SoftMask`` (``sf_hdiag``, ``sf_fisher``,
``sf_act_sq``): they are in ``model.state_dict()`` (exact resume) and FSDP2 shards them with their weight.
EMAs start at 0 and are bias-corrected by the number of observations (no arbitrary initial curvature).
"""

from __future__ import annotations

import torch
from torch import nn

from sfcompile.masking.shards import mean_across_ranks

__all__ = ["STAT_NAMES", "ensure_stat", "ema_", "compute_score", "znorm", "act_hook", "ScoreError"]

STAT_NAMES = {"hessian": "sf_hdiag", "fisher": "sf_fisher", "act": "sf_act_sq"}


class ScoreError(ValueError):
    """A score that cannot be computed with the statistics at hand."""


def local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (FSDP2), this rank's flat slice of a partitioned ZeRO-3 parameter
    (`zero3.local`), the tensor itself otherwise."""
    if hasattr(t, "to_local"):
        return t.to_local()
    from sfcompile.masking import zero3

    return zero3.local(t)


def ensure_stat(soft: nn.Module, name: str, shape: tuple[int, ...], device=None) -> nn.Parameter:
    """The frozen fp32 statistic ``name`` on ``soft``, registered (zeros) if missing."""
    existing = getattr(soft, name, None)
    if existing is not None:
        return existing
    param = nn.Parameter(torch.zeros(shape, dtype=torch.float32, device=device), requires_grad=False)
    soft.register_parameter(name, param)
    return param


@torch.no_grad()
def ema_(stats: list[torch.Tensor], values: list[torch.Tensor], beta: float) -> None:
    """stat ← β·stat + (1 − β)·value for every pair, in place on the local shards: two multi-tensor kernels for
    all of them (a model has hundreds of sites, and per-site kernels made the probe launch-bound)."""
    if stats:
        stats = [local(s) for s in stats]
        torch._foreach_mul_(stats, beta)
        torch._foreach_add_(stats, [local(v).float() for v in values], alpha=1.0 - beta)


def bias_corrected(stat: torch.Tensor, beta: float, count: int) -> torch.Tensor:
    """An EMA started at 0, divided by 1 − β^count."""
    if count < 1:
        raise ScoreError("the statistic has no observations yet")
    return local(stat) / (1.0 - beta**count)


def _along_k(vec: torch.Tensor, ndim: int, k_dim: int) -> torch.Tensor:
    """Reshape a (K,) vector to broadcast against a weight whose reduction dim is ``k_dim``; a (B, K) stack
    against a (B, ...) stack of weights (``k_dim`` then negative)."""
    shape = [1] * ndim
    shape[k_dim] = vec.shape[-1]
    if vec.dim() == 2:
        shape[0] = vec.shape[0]
    return vec.reshape(shape)


@torch.no_grad()
def compute_score(kind: str, weight: torch.Tensor, *, k_dim: int, eps: float = 1e-8,
                  hdiag: torch.Tensor | None = None, fisher: torch.Tensor | None = None,
                  act_sq: torch.Tensor | None = None) -> torch.Tensor:
    """The raw (not yet normalised) importance score of every entry of ``weight`` (fp32, same shape).

    Args:
        kind: "magnitude", "wanda", "hessian_obd", "hessian_ratio" or "fisher".
        weight: the dense weight W.
        k_dim: index of the reduction dimension of W (for Wanda's per-input-feature norms).
        hdiag, fisher: the (bias-corrected) Hessian / Fisher diagonal, W's shape; negative values are clamped
            to 0 (a Hutchinson EMA of an indefinite Hessian can dip below 0).
        act_sq: mean squared activation per input feature, shape (K,).

    Element-wise, so a (B, ...) stack of weights and statistics (``act_sq`` (B, K)) scores B sites at once
    (``k_dim`` negative).
    """
    w = weight.detach().float()
    if kind == "magnitude":
        return w.abs()
    if kind == "wanda":
        if act_sq is None:
            raise ScoreError("score 'wanda' needs activation statistics (no forward pass observed yet)")
        return w.abs() * _along_k(act_sq.float().clamp(min=0).sqrt(), w.dim(), k_dim)
    if kind in ("hessian_obd", "hessian_ratio"):
        if hdiag is None:
            raise ScoreError(f"score {kind!r} needs a Hessian diagonal: call SparseForge.probe before "
                             "mask updates")
        h = hdiag.float().clamp(min=0)
        return (h + eps) * w.square() if kind == "hessian_obd" else w.abs() / (h + eps).sqrt()
    if kind == "fisher":
        if fisher is None:
            raise ScoreError("score 'fisher' needs gradients: call SparseForge.observe_grads each step")
        return (fisher.float() + eps) * w.square()
    raise ScoreError(f"unknown score {kind!r}")


def znorm(scores: torch.Tensor, eps: float = 1e-12, batched: bool = False) -> torch.Tensor:
    """(s − mean) / std over the whole site (global across shards when distributed).

    ``batched``: ``scores`` is a (B, ...) stack of B sites, each normalised on its own; element-wise passes and
    the all-reduce run once for all B, the sums once per site, so that each equals the unbatched one in every
    bit (a reduction over a row of a stack may sum in another order than over a whole tensor)."""
    s = scores.float()
    if batched:  # (B,) per-site numel, sum and sum of squares
        n = torch.full((s.shape[0],), float(s[0].numel()), device=s.device)
        total, sq = torch.stack([x.sum() for x in s]), torch.stack([x.sum() for x in s.square()])
    else:
        n = torch.tensor(float(s.numel()), device=s.device)
        total, sq = s.sum(), s.square().sum()
    if _distributed():
        import torch.distributed as dist

        stats = torch.stack([n, total, sq])
        dist.all_reduce(stats)
        n, total, sq = stats
    mean = total / n
    var = (sq / n - mean.square()).clamp(min=0)
    shape = (-1,) + (1,) * (s.dim() - 1) if batched else ()
    return (s - mean.view(shape)) / (var.sqrt() + eps).view(shape)


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def act_hook(stat: torch.Tensor, beta: float, enabled):
    """A forward pre-hook accumulating the EMA of x² per input feature (last dim of the input) into ``stat``.

    ``enabled()`` gates collection (off during probes and in eval mode). The first observation replaces the
    zero initial value.
    """

    def hook(module, args, kwargs):
        if not module.training or not enabled():
            return None
        x = args[0] if args else next(iter(kwargs.values()))
        with torch.no_grad():
            x2 = x.detach().float().square().reshape(-1, x.shape[-1]).mean(0)  # (K,)
            x2 = mean_across_ranks(x2)  # replicated statistic: every rank keeps the global mean
            target = local(stat)
            if bool((target == 0).all()):
                target.copy_(x2)
            else:
                target.mul_(beta).add_(x2, alpha=1.0 - beta)
        return None

    return hook
