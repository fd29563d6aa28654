"""SparseGPT (Frantar & Alistarh, 2023): one-shot OBS pruning with a column sweep and weight update.

For one weight matrix W (rows × K, K-last) and the layer Hessian H = XᵀX (K × K, summed over calibration
tokens), the column sweep visits the columns of W left to right. Pruning column j's masked entries costs
w²/[U]ⱼⱼ² (U: the upper Cholesky factor of H⁻¹) and the error (w − q)/Uⱼⱼ is spread over the columns not yet
visited through row j of U (the OBS update restricted to the remaining columns). Updates are applied lazily:
within a block of ``blocksize`` columns exactly, to the rest of the matrix once per block.

How the mask is chosen, per pattern (all exact: the returned mask satisfies the pattern with its full budget):

* N:M — at the first column of every group of M columns, keep the N entries of each row with the largest
  w²/Uⱼⱼ² using the *current* (already updated) weights, as the paper does. (Scoring every choice of the
  group's pruned entries by the error it adds in the sweep, exact where this is not, gave no lower perplexity
  on SmolLM2-135M: benchmarks/README.md, "One-shot".)
* unstructured — adaptive per block, as the paper does, but per output row (our ``Unstructured`` pattern keeps
  round(density·K) per row, Wanda's comparison group): at the start of each block, each row ranks all its
  not-yet-visited columns by w²/Uⱼⱼ² on the current (updated) weights, keeps the best ones up to its remaining
  budget, and the part of that selection inside the block is fixed. Rows spend exactly their budget, and no
  per-block quota is imposed.
* block (b × b tiles over rows × K, budget per matrix) — adaptive per block like unstructured, a tile at a
  time: at the start of each block (``blocksize`` a multiple of b), every not-yet-visited tile is ranked by the
  OBS cost of zeroing it jointly, Σ over its rows of w_rCᵀ [(H⁻¹)_CC]⁻¹ w_rC over its b columns C, on the
  current (updated) weights with the inverse Hessian of the columns still to visit (rows i1: of U; their
  diagonal b × b blocks are kept up to date by subtracting each visited block's rows). The matrix's remaining
  budget goes to the best of them and the part inside the block is fixed (:func:`_tile_costs`). On SmolLM2-135M
  at 50% (benchmarks/README.md, "One-shot") this took wiki perplexity from 30,912 (tiles chosen once, up front,
  by the summed per-entry costs w²/[H⁻¹]ⱼⱼ, which ignore the correlation of a tile's columns) to 13,362
  (14,942 with the joint cost chosen up front).

Dead inputs (Hⱼⱼ = 0: the feature never fires on calibration data) are handled as in the paper: Hⱼⱼ ← 1 and
Wᵢⱼ ← 0, so they cost nothing to prune and never pull updates.
"""

from __future__ import annotations

import torch

from ...patterns import NM, Block, Pattern, Unstructured

__all__ = ["sparsegpt_prune"]


def _keep_per_row(scores: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Bool mask keeping the ``keep[r]`` largest entries of each row r; ties → lower index (as
    ``Pattern.project``)."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    ranked = torch.arange(scores.shape[-1], device=scores.device)[None, :] < keep[:, None]
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask.scatter_(-1, order, ranked)
    return mask


def layer_problem(who: str, weight: torch.Tensor, hessian: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 copies of a (rows, K) weight and its (K, K) Hessian, dead inputs handled (Hⱼⱼ = 0: Hⱼⱼ ← 1 and
    Wᵢⱼ ← 0, so they cost nothing to prune and never pull updates); anything else is refused, naming the caller
    and both shapes."""
    if weight.dim() != 2 or hessian.shape != (weight.shape[1], weight.shape[1]):
        raise ValueError(
            f"{who} needs a (rows, K) weight and a (K, K) Hessian, got {tuple(weight.shape)} "
            f"and {tuple(hessian.shape)}"
        )
    w = weight.detach().to(torch.float64).clone()
    h = hessian.detach().to(torch.float64).clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    return w, h


def _inverse_cholesky(hessian: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor U of (H + λI)⁻¹ with λ = percdamp·mean(diag H), in float64."""
    k = hessian.shape[0]
    damp = percdamp * torch.diagonal(hessian).mean()
    h = hessian + damp * torch.eye(k, dtype=hessian.dtype, device=hessian.device)
    lower, info = torch.linalg.cholesky_ex(h)
    if info != 0:
        raise RuntimeError(
            f"the calibration Hessian (K={k}) is not positive definite even after dampening "
            f"percdamp={percdamp}; raise percdamp (e.g. 0.1) or use more calibration samples"
        )
    h_inv = torch.cholesky_inverse(lower)
    return torch.linalg.cholesky(h_inv, upper=True)


def _hinv_blocks(u: torch.Tensor, b: int) -> torch.Tensor:
    """(C/b, b, b): the diagonal b x b blocks of UᵀU for rows of U (any number, C columns); with all of U's
    rows, those of H⁻¹ = UᵀU."""
    ub = u.reshape(u.shape[0], -1, b)
    return torch.einsum("kci,kcj->cij", ub, ub)


def _tile_costs(w: torch.Tensor, hinv_blocks: torch.Tensor, b: int) -> torch.Tensor:
    """(rows/b, C): the OBS cost of zeroing each b x b tile of ``w`` (rows, C·b) jointly, Σ over the tile's rows
    of w_rCᵀ [(H⁻¹)_CC]⁻¹ w_rC over its b columns C (``hinv_blocks``: the C diagonal blocks). Unlike the sum of
    per-entry costs w²/[H⁻¹]ⱼⱼ it counts the correlation of the tile's columns."""
    rows = w.shape[0]
    inv = torch.cholesky_inverse(torch.linalg.cholesky(hinv_blocks))
    wb = w.reshape(rows, -1, b)
    cost = torch.einsum("rci,cij,rcj->rc", wb, inv, wb)             # (rows, C)
    return cost.reshape(rows // b, b, -1).sum(1)


@torch.no_grad()
def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    pattern: Pattern,
    *,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune one weight matrix with SparseGPT.

    Args:
        weight: (rows, K) weight, K last (the reduction dim).
        hessian: (K, K) XᵀX accumulated over calibration tokens (any positive scale).
        pattern: the target pattern, applied with ``k_dim=-1`` on the (rows, K) view.
        blocksize: columns per lazy-update block; for N:M a multiple of M.
        percdamp: dampening as a fraction of mean(diag H).

    Returns:
        ``(new_weight, mask)``: the updated weight (in ``weight``'s dtype) with exact zeros where ``mask`` is
        False, and the bool mask, which satisfies ``pattern`` exactly.
    """
    w, h = layer_problem("sparsegpt_prune", weight, hessian)
    if isinstance(pattern, NM) and blocksize % pattern.m:
        raise ValueError(f"blocksize {blocksize} must be a multiple of M={pattern.m} for pattern {pattern}")
    rows, k = w.shape

    u = _inverse_cholesky(h, percdamp)  # (K, K) upper
    u_diag = torch.diagonal(u)

    if isinstance(pattern, Block):
        if blocksize % pattern.size:
            raise ValueError(f"blocksize {blocksize} must be a multiple of the tile size {pattern.size}")
        tb = pattern.size
        hinv_rest = _hinv_blocks(u, tb)          # diagonal blocks of the not-yet-visited columns' H⁻¹
        tiles_left = pattern.keep_tiles((rows // tb) * (k // tb))
    elif not isinstance(pattern, (NM, Unstructured)):
        raise TypeError(f"sparsegpt_prune does not know pattern {pattern!r}")

    starts = list(range(0, k, blocksize))
    if isinstance(pattern, Unstructured):  # per-row budget still to spend on the columns not yet visited
        budget = torch.full((rows,), pattern.keep_count(k), dtype=torch.long, device=w.device)

    mask = torch.zeros(rows, k, dtype=torch.bool, device=w.device)
    for i1 in starts:
        i2 = min(i1 + blocksize, k)
        count = i2 - i1
        w1 = w[:, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        d1 = u_diag[i1:i2]

        if isinstance(pattern, Block):
            # Rank every remaining tile by its joint OBS cost on the current (updated) weights and the inverse
            # Hessian of the remaining columns (rows i1: of U), keep the best up to the matrix's remaining
            # budget, and fix the part that falls in this block (as for unstructured, tile by tile).
            cost = _tile_costs(w[:, i1:], hinv_rest[i1 // tb:], tb)      # (rows/tb, remaining tile columns)
            budget_left = torch.tensor([tiles_left], device=w.device)
            keep = _keep_per_row(cost.reshape(1, -1), budget_left).reshape(cost.shape)[:, : count // tb]
            tiles_left -= int(keep.sum())
            mask1 = keep.repeat_interleave(tb, 0).repeat_interleave(tb, 1)
            # the columns after this block no longer have rows i1..i2 of U in their remaining problem
            hinv_rest[i2 // tb:] -= _hinv_blocks(u[i1:i2, i2:], tb)
        elif isinstance(pattern, Unstructured):
            # Rank every remaining column of each row by w²/Uⱼⱼ² on the current (updated) weights, spend the
            # row's remaining budget on the best of them, and fix the part that falls in this block.
            rest = w[:, i1:].pow(2) / u_diag[i1:].pow(2)[None, :]
            mask1 = _keep_per_row(rest, budget)[:, :count]
            budget -= mask1.sum(1)
        else:
            mask1 = torch.zeros_like(w1, dtype=torch.bool)

        for i in range(count):
            if isinstance(pattern, NM) and i % pattern.m == 0:
                sal = w1[:, i : i + pattern.m].pow(2) / d1[i : i + pattern.m].pow(2)[None, :]
                mask1[:, i : i + pattern.m] = pattern.project(sal, -1)
            col = w1[:, i]
            q = col * mask1[:, i]
            q1[:, i] = q
            e = (col - q) / d1[i]
            # (rows, 1) @ (1, count - i): spread the error over the block's remaining columns.
            w1[:, i:] -= e[:, None] * u1[i, i:][None, :]
            err1[:, i] = e

        w[:, i1:i2] = q1
        mask[:, i1:i2] = mask1
        # Lazy update of everything right of the block: (rows, count) @ (count, K - i2).
        w[:, i2:] -= err1 @ u[i1:i2, i2:]

    w = w * mask  # exact zeros (q already is; this also clears dead columns' rounding)
    return w.to(weight.dtype), mask
