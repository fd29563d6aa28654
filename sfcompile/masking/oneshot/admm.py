"""ADMM one-shot pruning: the layer-wise reconstruction problem solved over the whole pattern at once, then
the kept weights refit exactly.

For one weight matrix W₀ (rows × K, K last) and its layer Hessian H = XᵀX (damped as SparseGPT damps it, by
``percdamp`` · mean(diag H)), the pruned weight should minimise the reconstruction error

    E(W) = tr((W − W₀) H (W − W₀)ᵀ) = ‖X Wᵀ − X W₀ᵀ‖²    subject to W holding the pattern.

SparseGPT answers greedily: one sweep over the columns, each mask decision final once made, and the kept
weights only ever see the updates of the columns to their left. Here the mask and the weights are found
together by the alternating direction method of multipliers on the split W = D, D in the pattern's set:

    W ← argmin E(W) + ρ‖W − D + V‖²    = (W₀H + ρ(D − V)) (H + ρI)⁻¹     (one eigendecomposition of H, once)
    D ← the pattern's projection of W + V  (its largest entries, by square: per group for N:M, per row for
                                            unstructured, by tile energy for blocks)
    V ← V + W − D

with the penalty ρ raised every iteration (faster while the support has settled), so W and D are pulled
together and the support freezes. Early on, with ρ small, W is the dense solution nudged towards the pattern
and the support moves freely; late, ρ dominates and W is D. The support of the last D is the mask.

The mask's kept weights are then refit exactly: E restricted to the support is a separate quadratic per row,
min over w_S of (w − w₀)ᵀH(w − w₀) with w = 0 off S, solved for all rows at once by conjugate gradients with a
Jacobi preconditioner (each iteration one (rows × K)·(K × K) product, the same work as one of SparseGPT's lazy
updates), started from D.

Cost: up to ``iters`` ADMM iterations of two (rows × K)·(K × K) products and ``refine_iters`` CG iterations
of one, against SparseGPT's single sweep, so several times SparseGPT's time: the price of a better mask. What
it buys on SmolLM2-135M is in benchmarks/README.md, "One-shot".

Dead inputs (Hⱼⱼ = 0) are handled as SparseGPT handles them: Hⱼⱼ ← 1 and W₀ᵢⱼ ← 0.
"""

from __future__ import annotations

import torch

from ...patterns import Pattern
from .sparsegpt import layer_problem

__all__ = ["admm_prune", "reconstruction_error"]


def reconstruction_error(weight: torch.Tensor, pruned: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """E = tr((Ŵ − W) H (Ŵ − W)ᵀ) in float64: the squared error of the layer's outputs on the calibration
    inputs whose XᵀX is ``hessian``."""
    d = (pruned.double() - weight.double())
    return torch.einsum("rk,kl,rl->", d, hessian.double(), d)


def _refit(w0h: torch.Tensor, w: torch.Tensor, h: torch.Tensor, mask: torch.Tensor, iters: int,
           tol: float) -> torch.Tensor:
    """min over W (zero off ``mask``) of tr((W − W₀) H (W − W₀)ᵀ), by conjugate gradients per row with the
    Jacobi preconditioner diag(H), from ``w``. ``w0h`` = W₀H. The system is (W H)|mask = (W₀ H)|mask."""
    m = mask.to(w.dtype)
    inv_diag = 1.0 / torch.diagonal(h)
    x = w * m
    r = (w0h - x @ h) * m
    b_norm = (w0h * m).norm(dim=1).clamp_min(torch.finfo(w.dtype).tiny)
    z = r * inv_diag
    p = z
    rz = (r * z).sum(1)
    for _ in range(iters):
        if bool(((r.norm(dim=1) / b_norm) < tol).all()):
            break
        ap = (p @ h) * m
        pap = (p * ap).sum(1)
        alpha = torch.where(pap > 0, rz / pap.clamp_min(torch.finfo(w.dtype).tiny), torch.zeros_like(pap))
        x = x + alpha[:, None] * p
        r = r - alpha[:, None] * ap
        z = r * inv_diag
        rz_new = (r * z).sum(1)
        beta = torch.where(rz > 0, rz_new / rz.clamp_min(torch.finfo(w.dtype).tiny), torch.zeros_like(rz))
        p = z + beta[:, None] * p
        rz = rz_new
    return x * m


@torch.no_grad()
def admm_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    pattern: Pattern,
    *,
    percdamp: float = 0.01,
    iters: int = 100,
    rho: float = 0.01,
    growth: float = 1.08,
    settled_growth: float = 1.3,
    patience: int | None = 5,
    refine_iters: int = 20,
    refine_tol: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune one weight matrix by ADMM over the pattern, then refit the kept weights (see the module doc).

    Args:
        weight: (rows, K) weight, K last (the reduction dim).
        hessian: (K, K) XᵀX accumulated over calibration tokens (any positive scale).
        pattern: the target pattern, applied with ``k_dim=-1`` on the (rows, K) view.
        percdamp: dampening as a fraction of mean(diag H) (as SparseGPT's).
        iters: ADMM iterations.
        rho: the first penalty, in units of mean(diag H).
        growth, settled_growth: ρ's factor per iteration while the support still moves (more than 0.1% of
            the entries changed side in the last iteration) and once it has settled.
        patience: stop once the support has not moved for this many iterations (None: run all ``iters``).
            On 14 SmolLM2 matrices a support still for 3 iterations never moved again.
        refine_iters, refine_tol: conjugate-gradient iterations and relative residual of the refit.

    Returns:
        ``(new_weight, mask)``: the refit weight (in ``weight``'s dtype) with exact zeros where ``mask`` is
        False, and the bool mask, which satisfies ``pattern`` exactly.
    """
    w0, h = layer_problem("admm_prune", weight, hessian)
    for name, value in (("iters", iters), ("refine_iters", refine_iters)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}={value!r} must be an integer >= 0")
    if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
        raise ValueError(f"patience={patience!r} must be None or an integer >= 1")
    if not (rho > 0 and growth >= 1 and settled_growth >= 1):
        raise ValueError(f"rho={rho} must be > 0 and growth={growth}, settled_growth={settled_growth} >= 1")
    k = h.shape[0]
    # Scale H to mean diagonal 1 (E only changes by a constant factor), so rho and percdamp are unitless.
    h /= torch.diagonal(h).mean()
    h += percdamp * torch.eye(k, dtype=h.dtype, device=h.device)
    evals, q = torch.linalg.eigh(h)

    work = torch.float32  # the iterations; the eigendecomposition and the final refit stay in float64
    qw, lam = q.to(work), evals.to(work)
    w0h_eig = (w0 @ q).to(work) * lam  # W₀ H Q = W₀ Q Λ
    d = w0.to(work)
    mask = pattern.project(d.square(), -1)
    d = d * mask
    v = torch.zeros_like(d)
    still = 0
    for _ in range(iters):
        w = ((w0h_eig + rho * ((d - v) @ qw)) / (lam + rho)) @ qw.T
        wv = w + v
        new_mask = pattern.project(wv.square(), -1)
        moved = int((new_mask != mask).sum())
        mask = new_mask
        d = wv * mask
        v = v + w - d
        factor = growth if moved > 1e-3 * mask.numel() else settled_growth
        rho *= factor
        v /= factor  # the scaled dual is y / rho: keep y when rho changes
        still = still + 1 if moved == 0 else 0
        if patience is not None and still >= patience:
            break

    w = _refit(w0 @ h, d.to(torch.float64), h, mask, refine_iters, refine_tol)
    return w.to(weight.dtype), mask
