"""Sparsity patterns: which entries of a weight may be non-zero.

A weight is grouped along its reduction dimension K (the dimension a matmul sums over: the last dim of an
``nn.Linear`` weight and of a 3-D MoE expert weight, dim 0 of a GPT-2 ``Conv1D`` weight). Every pattern
answers two questions:

* ``project(scores, k_dim) -> mask``: the exact feasible mask keeping the highest scores;
* ``verify(weight, k_dim) -> (ok, violations)``: does a (hardened) weight obey the pattern?

Patterns are parsed from strings once, at the API boundary (``parse_pattern("2:4")``); everything inside
sfcompile takes the typed object. ``str(pattern)`` gives back a string that parses to the same pattern.

Ties are broken deterministically: among equal scores, the lower index along the group is kept.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

__all__ = ["Pattern", "NM", "Block", "Unstructured", "parse_pattern", "PatternError"]


class PatternError(ValueError):
    """A pattern string or a pattern/shape combination that cannot work."""


def _keep_top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Boolean mask keeping the ``keep`` highest entries of each row of the last dim; ties → lower index."""
    m = scores.shape[-1]
    if m <= 8:
        # Small groups (N:M): the rank of each entry by pairwise comparison — entries strictly greater, plus
        # equal ones at a lower index — is the same order as a stable descending sort, in a few elementwise
        # passes instead of a segmented sort (the mask update projects every site twice).
        a, b = scores.unsqueeze(-1), scores.unsqueeze(-2)  # a: entry i, b: entry j
        lower = torch.ones(m, m, dtype=torch.bool, device=scores.device).tril(-1)  # [i, j]: j < i
        rank = ((b > a) | ((b == a) & lower)).sum(-1)
        return rank < keep
    # A stable descending sort keeps equal scores in index order, so ties resolve to the lower index.
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask.scatter_(-1, order[..., :keep], True)
    return mask


def _check_scores(scores: torch.Tensor, check_nan: bool = True) -> torch.Tensor:
    if scores.dim() < 2:
        raise PatternError(f"patterns apply to weights of 2 or more dims, got shape {tuple(scores.shape)}")
    scores = scores.detach()
    if scores.is_floating_point():
        if check_nan and torch.isnan(scores).any():  # a host sync: batched callers check once themselves
            raise PatternError("scores contain NaN; compute finite importance scores before projecting")
        return scores.float()
    return scores.to(torch.float32)


class Pattern(ABC):
    """Base class of all patterns. Subclasses are frozen dataclasses, so patterns compare and hash by value."""

    @property
    @abstractmethod
    def density(self) -> float:
        """Fraction of entries kept."""

    @abstractmethod
    def project(self, scores: torch.Tensor, k_dim: int = -1, *, check_nan: bool = True) -> torch.Tensor:
        """Boolean mask of ``scores.shape`` keeping the best entries under this pattern.

        Leading dims beyond the weight's are batch dims when ``k_dim`` is negative (one projection per
        matrix). ``check_nan=False`` skips the NaN check, a host sync, for callers that check once for many
        projections (the mask update)."""

    @abstractmethod
    def count_violations(self, weight: torch.Tensor, k_dim: int = -1) -> int:
        """Number of groups (or tiles) of ``weight`` holding more non-zeros than the pattern allows."""

    @abstractmethod
    def incompatibility(self, shape: tuple[int, ...], k_dim: int) -> str | None:
        """Why a weight of ``shape`` cannot take this pattern, or None if it can."""

    def verify(self, weight: torch.Tensor, k_dim: int = -1) -> tuple[bool, int]:
        """``(ok, violations)`` for a hardened weight: ok iff no group exceeds its non-zero budget."""
        reason = self.incompatibility(tuple(weight.shape), k_dim)
        if reason is not None:
            raise PatternError(reason)
        violations = self.count_violations(weight.detach(), k_dim)
        return violations == 0, violations

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    def __str__(self) -> str:  # overridden; keeps dataclass repr for debugging
        return self.spec

    @property
    @abstractmethod
    def spec(self) -> str:
        """The string this pattern parses from."""


def _to_last(t: torch.Tensor, k_dim: int) -> torch.Tensor:
    return t.movedim(k_dim, -1)


@dataclass(frozen=True, repr=True)
class NM(Pattern):
    """N:M: at most ``n`` non-zeros in every group of ``m`` consecutive entries along K (2:4, 4:8, 1:4, ...)."""

    n: int
    m: int

    def __post_init__(self):
        if not (isinstance(self.n, int) and isinstance(self.m, int)) or not (0 < self.n < self.m):
            raise PatternError(f'pattern "{self.n}:{self.m}" is not supported: N:M needs integers 0 < N < M')

    @property
    def density(self) -> float:
        return self.n / self.m

    @property
    def spec(self) -> str:
        return f"{self.n}:{self.m}"

    def incompatibility(self, shape, k_dim):
        k = shape[k_dim]
        if k % self.m:
            return f"reduction dim K={k} is not a multiple of M={self.m} (pattern {self.spec})"
        return None

    def _groups(self, t: torch.Tensor, k_dim: int) -> torch.Tensor:
        t = _to_last(t, k_dim)
        return t.reshape(*t.shape[:-1], t.shape[-1] // self.m, self.m)  # (..., K/M, M)

    def project(self, scores, k_dim=-1, *, check_nan=True):
        scores = _check_scores(scores, check_nan)
        reason = self.incompatibility(tuple(scores.shape), k_dim)
        if reason:
            raise PatternError(reason)
        moved = _to_last(scores, k_dim)
        keep = _keep_top(self._groups(scores, k_dim), self.n)
        return keep.reshape(moved.shape).movedim(-1, k_dim)

    def count_violations(self, weight, k_dim=-1):
        nnz = (self._groups(weight, k_dim) != 0).sum(-1)
        return int((nnz > self.n).sum())


@dataclass(frozen=True, repr=True)
class Block(Pattern):
    """Block sparsity: ``size``×``size`` tiles of the (last two dims of the) weight are kept whole or dropped;
    each matrix keeps ``round(density · tiles)`` tiles, those with the largest total score."""

    size: int = 16
    density_: float = 0.5

    def __post_init__(self):
        if not isinstance(self.size, int) or self.size < 1:
            raise PatternError(f"block size {self.size!r} is not supported: use a positive integer such as 16")
        if not (0.0 < self.density_ < 1.0):
            raise PatternError(f"block density {self.density_!r} is not supported: it must lie in (0, 1)")

    @property
    def density(self) -> float:
        return self.density_

    @property
    def spec(self) -> str:
        return f"block{self.size}:{self.density_:g}"

    def incompatibility(self, shape, k_dim):
        rows, cols = shape[-2], shape[-1]
        if rows % self.size or cols % self.size:
            return f"weight matrix {rows}x{cols} is not tiled by {self.size}x{self.size} blocks ({self.spec})"
        return None

    def keep_tiles(self, n_tiles: int) -> int:
        return max(1, round(self.density_ * n_tiles))

    def _tiles(self, t: torch.Tensor) -> torch.Tensor:
        b = self.size
        *lead, r, c = t.shape
        return t.reshape(*lead, r // b, b, c // b, b).transpose(-3, -2)  # (..., R/b, C/b, b, b)

    def project(self, scores, k_dim=-1, *, check_nan=True):
        scores = _check_scores(scores, check_nan)
        reason = self.incompatibility(tuple(scores.shape), k_dim)
        if reason:
            raise PatternError(reason)
        tiles = self._tiles(scores).sum((-1, -2))  # (..., R/b, C/b)
        flat = tiles.flatten(-2)
        keep = _keep_top(flat, self.keep_tiles(flat.shape[-1])).reshape(tiles.shape)
        b = self.size
        full = keep[..., :, None, :, None].expand(*keep.shape[:-2], keep.shape[-2], b, keep.shape[-1], b)
        return full.reshape(scores.shape)

    def count_violations(self, weight, k_dim=-1):
        nz_tiles = (self._tiles(weight) != 0).any(-1).any(-1).flatten(-2).sum(-1)  # (...,) per matrix
        n_tiles = (weight.shape[-2] // self.size) * (weight.shape[-1] // self.size)
        return int((nz_tiles - self.keep_tiles(n_tiles)).clamp(min=0).sum())


@dataclass(frozen=True, repr=True)
class Unstructured(Pattern):
    """Unstructured sparsity: every output row keeps ``round(density · K)`` entries along K (the comparison
    group Wanda uses; exact per row, so the whole matrix has exactly that density too)."""

    density_: float = 0.5

    def __post_init__(self):
        if not (0.0 < self.density_ < 1.0):
            raise PatternError(f"unstructured density {self.density_!r} is not supported: it must lie in (0, 1)")

    @property
    def density(self) -> float:
        return self.density_

    @property
    def spec(self) -> str:
        return f"unstructured:{self.density_:g}"

    def incompatibility(self, shape, k_dim):
        return None

    def keep_count(self, k: int) -> int:
        return max(1, round(self.density_ * k))

    def project(self, scores, k_dim=-1, *, check_nan=True):
        scores = _check_scores(scores, check_nan)
        moved = _to_last(scores, k_dim)
        return _keep_top(moved, self.keep_count(moved.shape[-1])).movedim(-1, k_dim)

    def count_violations(self, weight, k_dim=-1):
        moved = _to_last(weight, k_dim)
        nnz = (moved != 0).sum(-1)
        return int((nnz > self.keep_count(moved.shape[-1])).sum())


_NM_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")
_BLOCK_RE = re.compile(r"^\s*block(\d+)(?::(\S+))?\s*$")
_UNSTRUCTURED_RE = re.compile(r"^\s*unstructured(?::(\S+))?\s*$")

_HELP = 'use "N:M" (e.g. "2:4", "4:8"), "block16" or "block16:<density>", or "unstructured:<density>"'


def _density(text: str | None, spec: str) -> float:
    if text is None:
        return 0.5
    try:
        value = float(text)
    except ValueError:
        raise PatternError(f'pattern "{spec}" has density "{text}", which is not a number; {_HELP}') from None
    if not math.isfinite(value) or not 0.0 < value < 1.0:
        raise PatternError(f'pattern "{spec}" has density {value}, which must lie strictly between 0 and 1')
    return value


def parse_pattern(spec: str | Pattern) -> Pattern:
    """Parse ``"2:4"``, ``"4:8"``, ``"block16"``, ``"block16:0.5"``, ``"unstructured:0.5"`` into a Pattern.

    A Pattern passes through unchanged.

    >>> parse_pattern("2:4")
    NM(n=2, m=4)
    """
    if isinstance(spec, Pattern):
        return spec
    if not isinstance(spec, str):
        raise PatternError(f"pattern must be a string or Pattern, got {type(spec).__name__}: {spec!r}; {_HELP}")
    lowered = spec.strip().lower()
    if m := _NM_RE.match(lowered):
        n, mm = int(m.group(1)), int(m.group(2))
        if not 0 < n < mm:
            raise PatternError(f'pattern "{spec}" is not supported: N:M needs 0 < N < M; {_HELP}')
        return NM(n, mm)
    if m := _BLOCK_RE.match(lowered):
        return Block(int(m.group(1)), _density(m.group(2), spec))
    if m := _UNSTRUCTURED_RE.match(lowered):
        return Unstructured(_density(m.group(1), spec))
    raise PatternError(f'unknown pattern "{spec}"; {_HELP}')
