"""One-shot pruners: magnitude, Wanda, SparseGPT, ADMM — the baselines SparseForge training must beat, and
its initializer.

``prune`` works on a sparsified model (``sfcompile.sparsify``): it chooses each site's mask under the site's
pattern, writes it into the site's `SoftMask` (``set_mask``) and sets ``hardness`` to 0, so the forward uses
the exact hard pattern from then on; SparseGPT and ADMM also write their updated weights into the dense weight.
ADMM (``admm.py``) solves the same layer-wise reconstruction problem as SparseGPT over the whole pattern
instead of in one greedy sweep: a lower error per layer for several times the time.
``sfcompile.harden`` afterwards folds the masks into the weights.

Wanda, SparseGPT and ADMM calibrate sequentially through the model's repeated blocks (see ``calibrate.py``).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from ...patterns import Block
from ..state import MaskStateError, dense_weight, masked_sites
from .admm import admm_prune
from .calibrate import SiteStats, calibrate_sequentially
from .magnitude import magnitude_mask
from .sparsegpt import sparsegpt_prune
from .wanda import wanda_mask

__all__ = ["prune", "PruneReport", "PruneConfig", "METHODS"]


@dataclass(frozen=True)
class PruneConfig:
    """Options of the calibrated pruners (validated at the API boundary)."""

    nsamples: int = 128
    seqlen: int = 512
    blocksize: int = 128
    percdamp: float = 0.01
    seed: int = 0


@dataclass
class PruneReport:
    """What ``prune`` did.

    Attributes:
        method: ``"magnitude"``, ``"wanda"``, ``"sparsegpt"`` or ``"admm"``.
        pattern: the pattern string (of the first site; sparsify installs one pattern everywhere).
        sites: number of sites pruned.
        pruned: weights masked to zero, over all sites; ``total``: weights in all sites.
        nsamples, seqlen: calibration windows used (None for magnitude).
        seconds: wall time of the pruning (calibration included).
        notes: anything the user should know (e.g. experts that received no calibration tokens).
    """

    method: str
    pattern: str
    sites: int
    pruned: int
    total: int
    nsamples: int | None
    seqlen: int | None
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def sparsity(self) -> float:
        return self.pruned / max(self.total, 1)

    def __str__(self) -> str:
        calib = f", {self.nsamples}×{self.seqlen} calibration tokens" if self.nsamples else ""
        return (f"{self.method} {self.pattern}: {self.sites} sites, sparsity {self.sparsity:.2%}{calib}, "
                f"{self.seconds:.1f} s")


def _set_site(soft, mask: torch.Tensor) -> None:
    """Install a pattern-exact bool mask and switch the forward to the hard mask."""
    soft.set_mask(mask.to(soft.mask.dtype))
    soft.set_hardness(0.0)
    if not torch.equal(soft.hard.bool(), mask):  # the mask is exact, so its projection is itself
        raise AssertionError(f"{soft.site.name}: pruner made a mask that is not exact under {soft.pattern}")


def _k_last(weight: torch.Tensor, k_dim: int) -> torch.Tensor:
    """(…, rows, K) view, with a leading expert dim of 1 for 2-D weights: (E, rows, K)."""
    w = weight.movedim(k_dim, -1)
    return w.unsqueeze(0) if w.dim() == 2 else w


def _from_k_last(w: torch.Tensor, like: torch.Tensor, k_dim: int) -> torch.Tensor:
    if like.dim() == 2:
        w = w.squeeze(0)
    return w.movedim(-1, k_dim)


class _Magnitude:
    name = "magnitude"
    calibrated = False
    want_hessian = False

    def prune_site(self, entry, stats: SiteStats | None, cfg: PruneConfig, notes: list[str]) -> None:
        site, owner, soft = entry
        _set_site(soft, magnitude_mask(dense_weight(owner, site.param), soft.pattern, site.k_dim))


class _Wanda:
    name = "wanda"
    calibrated = True
    want_hessian = False

    def prune_site(self, entry, stats, cfg, notes) -> None:
        site, owner, soft = entry
        weight = dense_weight(owner, site.param)
        sq = stats.sq_sum if weight.dim() == 3 else stats.sq_sum[0]
        _note_unrouted(site, stats, notes, "|W|·0 ties, broken by index")
        _set_site(soft, wanda_mask(weight, sq, soft.pattern, site.k_dim))


class _Reconstruct:
    """Pruners that minimise each layer's reconstruction error ‖XWᵀ − XŴᵀ‖² from its Hessian XᵀX and write
    the updated weights back: SparseGPT (one greedy column sweep) and ADMM (over the whole pattern)."""

    calibrated = True
    want_hessian = True

    def __init__(self, name: str, solve):
        self.name, self.solve = name, solve

    def prune_site(self, entry, stats, cfg, notes) -> None:
        site, owner, soft = entry
        weight = dense_weight(owner, site.param)
        wk = _k_last(weight.detach(), site.k_dim)  # (E, rows, K)
        new_w, masks = torch.empty_like(wk), torch.empty(wk.shape, dtype=torch.bool, device=wk.device)
        unrouted = _note_unrouted(site, stats, notes, "pruned by magnitude, no weight update")
        for e in range(wk.shape[0]):
            if e in unrouted:
                masks[e] = soft.pattern.project(wk[e].abs(), -1)
                new_w[e] = wk[e] * masks[e]
                continue
            h = stats.hessian[e].to(wk.device)
            new_w[e], masks[e] = self.solve(wk[e], h, soft.pattern, cfg)
        with torch.no_grad():
            weight.copy_(_from_k_last(new_w, weight, site.k_dim))
        _set_site(soft, _from_k_last(masks, weight, site.k_dim))


def _sparsegpt(w, h, pattern, cfg: PruneConfig):
    return sparsegpt_prune(w, h, pattern, blocksize=cfg.blocksize, percdamp=cfg.percdamp)


def _admm(w, h, pattern, cfg: PruneConfig):
    return admm_prune(w, h, pattern, percdamp=cfg.percdamp)


def _note_unrouted(site, stats: SiteStats, notes: list[str], what: str) -> set[int]:
    """Experts that received no calibration token (only possible for 3-D expert weights)."""
    unrouted = {e for e in range(stats.experts) if int(stats.tokens[e]) == 0}
    if unrouted:
        msg = (f"{site.name}: experts {sorted(unrouted)} received no calibration tokens ({what}); "
               "use more calibration windows to calibrate them")
        notes.append(msg)
        warnings.warn(msg, stacklevel=3)
    return unrouted


METHODS = {p.name: p for p in (_Magnitude(), _Reconstruct("sparsegpt", _sparsegpt), _Wanda(),
                               _Reconstruct("admm", _admm))}


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} is not valid: it must be a positive integer (e.g. {name}=128)")
    return value


def _config(nsamples, seqlen, blocksize, percdamp, seed) -> PruneConfig:
    _positive_int("nsamples", nsamples)
    _positive_int("seqlen", seqlen)
    _positive_int("blocksize", blocksize)
    if isinstance(percdamp, bool) or not isinstance(percdamp, (int, float)) or not math.isfinite(percdamp) \
            or percdamp < 0:
        raise ValueError(f"percdamp={percdamp!r} is not valid: it must be a finite number >= 0 (e.g. 0.01)")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed={seed!r} is not valid: it must be an integer")
    return PruneConfig(nsamples, seqlen, blocksize, float(percdamp), seed)


def _windows(calib, tok, cfg: PruneConfig, method: str) -> torch.Tensor:
    """Calibration token windows (nsamples, seqlen) from a text name (with ``tok``) or token ids."""
    if calib is None:
        raise ValueError(
            f'method "{method}" needs calibration data: pass calib="calib" (a named text) with '
            "tok=<tokenizer>, or calib=<LongTensor (n, seqlen) of token ids>; or use method=\"magnitude\""
        )
    if isinstance(calib, str):
        if tok is None:
            raise ValueError(f'calib="{calib}" is a text name: pass the tokenizer too, prune(..., tok=tok)')
        from sfcompile.eval.texts import calibration_windows

        calib = calibration_windows(tok, calib, n=cfg.nsamples, seqlen=cfg.seqlen, seed=cfg.seed)
    if isinstance(calib, (list, tuple)):
        if not calib or not all(isinstance(t, torch.Tensor) for t in calib):
            raise ValueError("calib as a list must hold token-id tensors of one length")
        calib = torch.stack([t.reshape(-1) for t in calib])
    if not isinstance(calib, torch.Tensor) or calib.dim() != 2 or calib.is_floating_point():
        raise ValueError(
            f"calib must be a text name or a 2-D integer tensor (n, seqlen) of token ids, got "
            f"{type(calib).__name__}{tuple(calib.shape) if isinstance(calib, torch.Tensor) else ''}"
        )
    n, length = calib.shape
    if n < cfg.nsamples:
        raise ValueError(f"calib has {n} windows but nsamples={cfg.nsamples}; pass more windows or lower "
                         "nsamples")
    if length < cfg.seqlen:
        raise ValueError(f"calib windows have {length} tokens but seqlen={cfg.seqlen}; pass longer "
                         "windows or lower seqlen")
    return calib[: cfg.nsamples, : cfg.seqlen].long()


def prune(
    model: nn.Module,
    method: str = "sparsegpt",
    calib=None,
    *,
    tok=None,
    nsamples: int = 128,
    seqlen: int = 512,
    blocksize: int = 128,
    percdamp: float = 0.01,
    seed: int = 0,
    progress: bool = True,
) -> PruneReport:
    """Prune a sparsified model one-shot, in place: choose every site's mask under its pattern.

    Args:
        model: a model sparsified with ``sfcompile.sparsify(model, pattern=...)``.
        method: ``"magnitude"`` (|W|), ``"wanda"`` (|W|·‖X‖₂), ``"sparsegpt"`` (OBS with weight update) or
            ``"admm"`` (the same reconstruction problem solved by ADMM over the whole pattern, then the kept
            weights refit: lower error than SparseGPT, several times its time).
        calib: calibration data for wanda/sparsegpt/admm: a text name (``"calib"``, needs ``tok``), or a (n, L)
            integer tensor of token ids (the first ``nsamples`` windows, first ``seqlen`` tokens are used).
        tok: the tokenizer, when ``calib`` is a text name.
        nsamples, seqlen: calibration windows and their length (standard protocol: 128 × seqlen, seed 0).
        blocksize: SparseGPT's lazy-update block (columns); a multiple of M for N:M patterns.
        percdamp: SparseGPT's and ADMM's dampening, as a fraction of mean(diag XᵀX).
        seed: seed for choosing the calibration windows from a named text.
        progress: show a progress bar over the blocks.

    Returns:
        A `PruneReport`. The masks now hold the pattern exactly and the forward uses them hard (hardness 0).

    Example::

        sfcompile.sparsify(model, pattern="2:4")
        report = sfcompile.prune(model, "sparsegpt", calib="calib", tok=tok)
        sfcompile.harden(model)
    """
    if method not in METHODS:
        raise ValueError(f'unknown pruning method "{method}"; use one of {", ".join(sorted(METHODS))}')
    pruner = METHODS[method]
    cfg = _config(nsamples, seqlen, blocksize, percdamp, seed)
    entries = masked_sites(model)
    if not entries:
        raise MaskStateError(f"{type(model).__name__} carries no mask state; call "
                             "sfcompile.sparsify(model, pattern=...) first, then prune")
    pattern = entries[0][2].pattern
    for site, _, soft in entries:
        m = getattr(soft.pattern, "m", None) or (soft.pattern.size if isinstance(soft.pattern, Block) else None)
        if method == "sparsegpt" and m and cfg.blocksize % m:
            what = "the tile size" if isinstance(soft.pattern, Block) else "M"
            raise ValueError(f"blocksize={cfg.blocksize} must be a multiple of {what}={m} for pattern "
                             f"{soft.pattern} (site {site.name}); use e.g. blocksize=128")

    windows = _windows(calib, tok, cfg, method) if pruner.calibrated else None
    notes: list[str] = []
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        if windows is None:
            for entry in entries:
                pruner.prune_site(entry, None, cfg, notes)
        else:
            device = next(model.parameters()).device

            def prune_entries(block_entries, stats):
                for entry in block_entries:
                    pruner.prune_site(entry, stats[entry[0].name], cfg, notes)

            calibrate_sequentially(model, entries, windows.to(device), want_hessian=pruner.want_hessian,
                                   prune_entries=prune_entries, progress=progress)
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start
    pruned = sum(int((~soft.hard.bool()).sum()) for _, _, soft in entries)
    total = sum(soft.hard.numel() for _, _, soft in entries)
    return PruneReport(method, str(pattern), len(entries), pruned, total,
                       cfg.nsamples if windows is not None else None,
                       cfg.seqlen if windows is not None else None, seconds, notes)
