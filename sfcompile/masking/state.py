"""Mask state: `sparsify` installs a soft mask on every site's weight, `harden` folds it away.

Each site's weight gets a `SoftMask` parametrization (``torch.nn.utils.parametrize``), so every consumer of the
module's attribute (eager forward, ``torch.compile``, ``generate()``) computes with ``W ⊙ m_eff``::

    module.weight                 # = SoftMask(module.parametrizations.weight.original)
    m_eff = h · mask + (1 − h) · hard          # h = hardness: 1 → soft mask, 0 → hard pattern
    forward value  W ⊙ m_eff
    gradient to W  unmasked (straight-through, `ste=True`) or masked (`ste=False`, after finalisation)

With a SLoRB bypass (`sfcompile.masking.slorb`) on the module, the parametrized weight is W ⊙ m_eff + gain·S P:
the bypass is folded into the weight while the mask exists (one matmul per layer in training) and becomes a
separate small matmul again once the model is hardened.

``mask`` (soft, in [0, 1]) and ``hard`` (= ``pattern.project(mask)``) are frozen ``nn.Parameter``s of the
weight's shape: they are saved in ``state_dict`` and FSDP2 shards them with their weight.

`harden` makes the pattern exact: ``W ← W ⊙ hard``, removes the parametrization (a plain HF model again),
verifies the pattern, marks each weight for the lowering (`mark_hardened`) and records a manifest.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from sfcompile.passes.site import Site, mark_hardened
from sfcompile.patterns import Pattern, parse_pattern

MANIFEST_FORMAT = 1


class MaskStateError(ValueError):
    """The model's mask state does not allow the requested operation."""


class _StraightThrough(torch.autograd.Function):
    """W ⊙ m forward, identity backward to W (m gets no gradient): one kernel per forward and none backward,
    where ``W + (W ⊙ (m − 1)).detach()`` costs four — training steps on a GPU are kernel-launch-bound."""

    @staticmethod
    def forward(ctx, weight, m):
        return weight * m

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _GatedStraightThrough(torch.autograd.Function):
    """W ⊙ m forward; backward to W: the gradient itself where ``gate`` is 1 (straight-through), masked by m
    where it is 0. The compiled form of the ``ste`` switch: a tensor, not a Python bool, so finalisation
    (ste → False) changes a value instead of a guard and costs no recompile of the whole model."""

    @staticmethod
    def forward(ctx, weight, m, gate):
        ctx.save_for_backward(m, gate)
        return weight * m

    @staticmethod
    def backward(ctx, grad):
        m, gate = ctx.saved_tensors
        return torch.where(gate > 0, grad, grad * m), None, None


class SoftMask(nn.Module):
    """The parametrization holding one site's mask state (see the module docstring)."""

    def __init__(self, site: Site, pattern: Pattern, dtype: torch.dtype, device=None):
        super().__init__()
        self.site = site
        self.pattern = pattern
        self.k_dim = site.k_dim
        self.mask = nn.Parameter(torch.ones(site.shape, dtype=dtype, device=device), requires_grad=False)
        self.hard = nn.Parameter(torch.ones(site.shape, dtype=dtype, device=device), requires_grad=False)
        self.register_buffer("hardness", torch.ones((), dtype=dtype, device=device))
        # `ste` as a tensor for compiled graphs (1.0 = straight-through); not saved: `ste` is in the extra state
        self.register_buffer("ste_gate", torch.ones((), dtype=dtype, device=device), persistent=False)
        self.ste = True
        self.set_mask(self.mask)

    @property
    def ste(self) -> bool:
        """Straight-through gradients to W (True until finalisation), else gradients masked by m."""
        return self._ste

    @ste.setter
    def ste(self, value: bool) -> None:
        self._ste = bool(value)
        with torch.no_grad():
            self.ste_gate.fill_(1.0 if self._ste else 0.0)

    @torch.no_grad()
    def set_mask(self, m: torch.Tensor) -> None:
        """Set the soft mask to ``m`` (values in [0, 1]) and recompute its hard projection."""
        if m is not self.mask:
            self.mask.copy_(m)
        self.hard.copy_(self.pattern.project(self.mask, self.k_dim))

    @torch.no_grad()
    def set_hardness(self, h: float) -> None:
        self.hardness.fill_(h)

    def effective(self) -> torch.Tensor:
        """m_eff = h · mask + (1 − h) · hard (one fused kernel; exactly ``hard`` at h = 0, ``mask`` at h = 1)."""
        return torch.lerp(self.hard, self.mask, self.hardness)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        m = self.effective().to(weight.dtype)
        # Forward value W ⊙ m; with ste the gradient reaches W unmasked, so pruned weights can come back.
        if torch.compiler.is_compiling():  # the switch as a value: no guard on the bool, no recompile
            w = _GatedStraightThrough.apply(weight, m, self.ste_gate)
        else:
            w = _StraightThrough.apply(weight, m) if self.ste else weight * m
        owner = self.__dict__.get("_bypass_owner")  # set by slorb.add_slorb: the SLoRB bypass, folded in
        if owner is not None:
            from sfcompile.masking.slorb import folded_bypass

            w = w + folded_bypass(owner, w.dtype)
        return w

    def get_extra_state(self):
        return {"ste": self.ste}

    def set_extra_state(self, state):
        self.ste = bool(state["ste"])

    def extra_repr(self) -> str:
        return f"pattern={self.pattern}, k_dim={self.k_dim}, shape={tuple(self.site.shape)}"


def _own_class(module: nn.Module) -> None:
    """Give a parametrized module a class of its own before removing a parametrization.

    ``parametrize`` generates one ``Parametrized<Cls>`` class per module and ``copy.deepcopy`` shares it with the
    copy; ``remove_parametrizations`` deletes the weight property from that class, which would break every
    other copy of the model (harden a deep copy and the original loses its ``weight``)."""
    cls = module.__class__
    module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))


def _soft_masks(module: nn.Module):
    if not parametrize.is_parametrized(module):
        return
    for param_name, plist in module.parametrizations.items():
        for p in plist:
            if isinstance(p, SoftMask):
                yield param_name, p


def masked_sites(model: nn.Module) -> list[tuple[Site, nn.Module, SoftMask]]:
    """Every site that carries mask state, as ``(site, owning module, SoftMask)``, in model order."""
    found = []
    for _, module in model.named_modules():
        for _, soft in _soft_masks(module):
            found.append((soft.site, module, soft))
    return found


def dense_weight(module: nn.Module, param: str) -> nn.Parameter:
    """The unmasked weight W under a SoftMask (the tensor the optimizer trains)."""
    if not parametrize.is_parametrized(module, param):
        raise MaskStateError(f"{type(module).__name__}.{param} carries no mask state; call sfcompile.sparsify first")
    return module.parametrizations[param].original


def is_sparsified(model: nn.Module) -> bool:
    return bool(masked_sites(model))


def sparsify(model: nn.Module, pattern: str | Pattern = "2:4", *, sites=None, include=None, exclude=None,
             mask_dtype: torch.dtype | None = None) -> nn.Module:
    """Install soft-mask state on every prunable matmul weight of ``model`` (in place).

    Args:
        model: any Hugging Face causal LM (or any module whose matmul weights `discover` can find).
        pattern: ``"2:4"``, ``"4:8"``, ``"block16"``, ``"block16:0.5"``, ``"unstructured:0.5"`` or a Pattern.
        sites: a `Discovery` or list of `Site` to use instead of running discovery.
        include, exclude: FQN globs or callables passed to `discover`.
        mask_dtype: dtype of the mask state; defaults to each weight's dtype.

    Returns:
        ``model`` itself, with ``model.weight``-style attributes now computing ``W ⊙ m_eff``.

    Example::

        model = sfcompile.sparsify(model, pattern="2:4")
    """
    pattern = parse_pattern(pattern)
    if is_sparsified(model):
        raise MaskStateError("model is already sparsified; harden it (sfcompile.harden) or reload it before "
                             "calling sparsify again")
    if getattr(model, "sfcompile_manifest", None):
        raise MaskStateError("model is already hardened (it has a sparsity manifest); load the dense model to "
                             "sparsify it again")
    if sites is None:
        from sfcompile.passes.discover import discover

        sites = discover(model, pattern, include=include, exclude=exclude).sites
    sites = list(sites)
    if not sites:
        raise MaskStateError(f"no prunable sites in {type(model).__name__}; check include/exclude filters")
    owners: dict[int, list[str]] = {}
    for mod_name, mod in model.named_modules(remove_duplicate=False):
        for p_name, p in mod.named_parameters(recurse=False, remove_duplicate=False):
            owners.setdefault(id(p), []).append(f"{mod_name}.{p_name}" if mod_name else p_name)
    for site in sites:
        tied = owners.get(id(getattr(model.get_submodule(site.module), site.param)), [])
        if len(tied) > 1:
            raise MaskStateError(f"site {site.name} is one parameter shared by {', '.join(tied)} (tied weights); "
                                 "a mask on one would not reach the others — exclude it (e.g. keep "
                                 "skip_head=True for a tied output head)")
        reason = pattern.incompatibility(site.shape, site.k_dim)
        if reason:
            raise MaskStateError(f"site {site.name} cannot take pattern {pattern}: {reason}; exclude it")
    for site in sites:  # all checked first: a refused call leaves the model untouched
        module = model.get_submodule(site.module)
        weight = getattr(module, site.param)
        soft = SoftMask(site, pattern, mask_dtype or weight.dtype, device=weight.device)
        parametrize.register_parametrization(module, site.param, soft)
    return model


def _manifest_entry(site: Site, pattern: Pattern) -> dict:
    return {"k_dim": site.k_dim, "kind": site.kind, "shape": list(site.shape), "pattern": str(pattern)}


@torch.no_grad()
def harden(model: nn.Module) -> nn.Module:
    """Fold every soft mask into its weight as exact pattern zeros and remove the mask machinery.

    The model becomes a plain HF model again (``save_pretrained`` works); each hardened weight is verified
    against its pattern and recorded in ``model.sfcompile_manifest``.

    Raises:
        MaskStateError: the model was never sparsified, or its masks were never set (all ones: nothing chose
            which weights to prune — run `sfcompile.prune` or `sfcompile.train` first).
    """
    entries = masked_sites(model)
    if not entries and getattr(model, "sfcompile_manifest", None):
        return model  # already hardened (e.g. by sfcompile.train): nothing left to fold
    if not entries:
        raise MaskStateError(f"{type(model).__name__} has no sfcompile mask state: call "
                             "sfcompile.sparsify(model, pattern=...) and then sfcompile.prune(...) or "
                             "sfcompile.train(...) before harden")
    untouched = [site.name for site, _, soft in entries if bool((soft.mask == 1).all())]
    if untouched:
        raise MaskStateError(f"{len(untouched)} site(s) still have all-ones masks (e.g. {untouched[0]}): nothing "
                             "has chosen which weights to prune. Run sfcompile.prune(model, method=...) or "
                             "sfcompile.train(...) before harden")
    manifest_sites = {}
    for site, module, soft in entries:
        hard = soft.pattern.project(soft.mask, soft.k_dim)
        original = dense_weight(module, site.param)
        _own_class(module)
        parametrize.remove_parametrizations(module, site.param, leave_parametrized=False)
        weight = getattr(module, site.param)
        assert weight is original
        weight.mul_(hard.to(weight.dtype))
        ok, violations = soft.pattern.verify(weight, soft.k_dim)
        if not ok:  # project() is exact, so this is a bug, not a user error
            raise AssertionError(f"{site.name}: {violations} groups violate {soft.pattern} after hardening")
        entry = _manifest_entry(site, soft.pattern)
        manifest_sites[site.name] = entry
        mark_hardened(weight, {**entry, "site": site.name})
    pattern = entries[0][2].pattern
    manifest = {"format": MANIFEST_FORMAT, "pattern": str(pattern), "sites": manifest_sites}
    slorb = _slorb_manifest(model)
    if slorb:
        manifest["slorb"] = slorb
    model.sfcompile_manifest = manifest
    return model


def _slorb_manifest(model: nn.Module) -> dict | None:
    try:
        from sfcompile.masking.slorb import slorb_manifest
    except ImportError:  # SLoRB not part of this build
        return None
    return slorb_manifest(model) or None


class ManifestError(ValueError):
    """A sparsity manifest that does not match the weights it describes."""


@torch.no_grad()
def apply_manifest(model: nn.Module, manifest: dict, folder=None) -> nn.Module:
    """Check that ``model``'s weights hold the patterns ``manifest`` claims, then mark them hardened.

    Used by `sfcompile.load` on a saved hardened model; ``folder`` (the saved model's folder) supplies the
    SLoRB tensors that ``from_pretrained`` does not load (the HF architecture does not declare them).

    Raises:
        ManifestError: a listed weight is missing, has another shape, or violates its pattern.
    """
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ManifestError(f"sparsity manifest format {manifest.get('format')!r} is not supported "
                            f"(expected {MANIFEST_FORMAT}); re-save the model with this sfcompile")
    params = dict(model.named_parameters(remove_duplicate=False))
    for name, entry in manifest["sites"].items():
        if name not in params:
            raise ManifestError(f"sparsity manifest lists {name}, which the model does not have; the manifest "
                                "belongs to another model — remove sparsity.json or re-save")
        weight = params[name]
        if list(weight.shape) != list(entry["shape"]):
            raise ManifestError(f"{name} has shape {tuple(weight.shape)} but the manifest says "
                                f"{tuple(entry['shape'])}")
        pattern = parse_pattern(entry["pattern"])
        ok, violations = pattern.verify(weight, entry["k_dim"])
        if not ok:
            raise ManifestError(f"{name}: {violations} groups violate pattern {pattern} that sparsity.json "
                                "claims; the weights were changed after hardening — re-run harden, or delete "
                                "sparsity.json to load the model as dense")
        mark_hardened(weight, {**entry, "site": name})
    if manifest.get("slorb"):
        from sfcompile.masking.slorb import install_slorb, read_slorb_tensors

        if folder is None:
            raise ManifestError("this model has a SLoRB bypass: pass the saved folder to apply_manifest so its "
                                "slorb_* tensors are loaded (sfcompile.load does this)")
        install_slorb(model, manifest["slorb"], tensors=read_slorb_tensors(folder))
    model.sfcompile_manifest = manifest
    return model


def sparsity_report(model: nn.Module) -> list[dict]:
    """Per hardened site: name, pattern, shape, achieved sparsity and whether the pattern verifies."""
    manifest = getattr(model, "sfcompile_manifest", None)
    if not manifest:
        raise ManifestError(f"{type(model).__name__} has no sparsity manifest: it was not hardened by sfcompile")
    params = dict(model.named_parameters(remove_duplicate=False))
    rows = []
    for name, entry in manifest["sites"].items():
        weight = params[name]
        pattern = parse_pattern(entry["pattern"])
        ok, violations = pattern.verify(weight, entry["k_dim"])
        rows.append({"site": name, "pattern": str(pattern), "shape": tuple(weight.shape),
                     "sparsity": float((weight == 0).float().mean()), "ok": ok, "violations": violations,
                     "numel": weight.numel()})
    return rows
