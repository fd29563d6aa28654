"""Mask state: `sparsify` installs a soft mask on every site's weight, `harden` folds it away.

Each site's owning module gets a generated subclass whose weight attribute is a property, so every consumer of
the attribute (eager forward, ``torch.compile``, ``generate()``) computes with ``W ⊙ m_eff``::

    module.sfmask_weight_dense    # W: the dense weight the optimizer trains (`dense_weight`)
    module.sfmask_weight          # SoftMask: mask (soft, in [0, 1]), hard (= pattern.project(mask)), hardness h
    module.sfmask_weight_eff      # m_eff = h · mask + (1 − h) · hard, kept current by every writer
    module.weight                 # = W ⊙ m_eff: gradient to W unmasked (straight-through, ``ste``) or masked

W moves to a name of its own because FSDP2 (and other wrappers) read a parameter back with ``getattr``, which
must give the parameter, not the property's product.

Why not ``torch.nn.utils.parametrize`` (the first implementation): its three modules per site
(ModuleDict → ParametrizationList → SoftMask) each carry Dynamo guards, and m_eff computed in the graph is
one more saved activation per site; a compiled training step paid ~2x a dense step's host time for it
(`benchmarks/train_host_overhead.py`). Here the forward reads two tensors that sit on the owning module, W
and the stored m_eff, and the Dynamo-visible state per site is those two plus the ``ste`` flag.

With a SLoRB bypass (`sfcompile.masking.slorb`) on the module, the masked weight is W ⊙ m_eff + gain·S P: the
bypass is folded into the weight while the mask exists (one matmul per layer in training) and becomes a
separate small matmul again once the model is hardened.

``mask``, ``hard`` and ``m_eff`` are frozen ``nn.Parameter``s of the weight's shape: they are saved in
``state_dict`` and FSDP2 shards them with their weight (m_eff sits on the owning module, so ZeRO-3 gathers it
with W for the module's forward; mask and hard are gathered only by the forge's pattern work). Memory: three
weight-sized tensors of mask state per site, in ``mask_dtype``.

`harden` makes the pattern exact: ``W ← W ⊙ hard``, restores the module's own class (a plain HF model again),
verifies the pattern, marks each weight for the lowering (`mark_hardened`) and records a manifest.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from sfcompile.passes.site import Site, mark_hardened
from sfcompile.patterns import Pattern, parse_pattern

MANIFEST_FORMAT = 1
_MASKED = "_sfcompile_masked"  # on a generated class: the names of the parameters it masks
_BASE = "_sfcompile_base"  # on a generated class: the module's own class
_CLASSES: dict[tuple[type, tuple[str, ...]], type] = {}  # one generated class per (own class, masked params)
_CACHES: list[dict] = []  # innermost `cached()` scope last
SLORB_FOLDS = "_sfcompile_slorb_folds"  # on an owning module: the masked parameter its SLoRB bypass folds into


class MaskStateError(ValueError):
    """The model's mask state does not allow the requested operation."""


def soft_name(param: str) -> str:
    """Attribute of the owning module holding ``param``'s SoftMask."""
    return f"sfmask_{param}"


def eff_name(param: str) -> str:
    """Attribute of the owning module holding ``param``'s m_eff."""
    return f"sfmask_{param}_eff"


def dense_name(param: str) -> str:
    """Attribute of the owning module holding ``param``'s dense weight W while it is masked."""
    return f"sfmask_{param}_dense"


def _ste_name(param: str) -> str:
    return f"_sfmask_{param}_ste"


class _StraightThrough(torch.autograd.Function):
    """W ⊙ m forward, identity backward to W (m gets no gradient): one kernel per forward and none backward,
    where ``W + (W ⊙ (m − 1)).detach()`` costs four — training steps on a GPU are kernel-launch-bound."""

    @staticmethod
    def forward(ctx, weight, m):
        return weight * m

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def _masked_weight_property(param: str) -> property:
    dense_attr, eff_attr, ste_attr = dense_name(param), eff_name(param), _ste_name(param)

    def masked_weight(self):
        cache = _CACHES[-1] if _CACHES else None
        if cache is not None and (id(self), param) in cache:
            return cache[(id(self), param)]
        weight = self._parameters[dense_attr]
        m = self._parameters[eff_attr].to(weight.dtype)
        # Forward value W ⊙ m; with ste the gradient reaches W unmasked, so pruned weights can come back.
        # Under torch.compile the flag is a guard: flipping it recompiles (SparseForge never flips it: after
        # finalisation it masks the gradients itself, SparseForge.mask_grads).
        w = _StraightThrough.apply(weight, m) if self.__dict__[ste_attr] else weight * m
        if self.__dict__.get(SLORB_FOLDS) == param:  # set by slorb.add_slorb: the SLoRB bypass, folded in
            from sfcompile.masking.slorb import folded_bypass

            w = w + folded_bypass(self, w.dtype)
        if cache is not None:
            cache[(id(self), param)] = w
        return w

    return property(masked_weight, doc=f"{param} ⊙ m_eff (sfcompile soft mask; the dense {param} is "
                                          f"{dense_attr!r})")


def _masked_class(base: type, params: tuple[str, ...]) -> type:
    key = (base, tuple(sorted(params)))
    if key not in _CLASSES:
        namespace = {p: _masked_weight_property(p) for p in key[1]}
        namespace.update({_MASKED: key[1], _BASE: base, "__module__": base.__module__})
        _CLASSES[key] = type(f"SoftMasked{base.__name__}", (base,), namespace)
    return _CLASSES[key]


def _masked_params(module: nn.Module) -> tuple[str, ...]:
    return getattr(type(module), _MASKED, ())


@contextlib.contextmanager
def cached():
    """Within the block each masked weight is computed once per module: ``module.weight`` is one tensor object
    for the whole forward (what ``parametrize.cached()`` did; the one-shot calibration finds a site's matmul by
    that identity). For no-grad passes only: a cached weight is not recomputed when W or the mask changes."""
    _CACHES.append({})
    try:
        yield
    finally:
        _CACHES.pop()


class SoftMask(nn.Module):
    """One site's mask state (see the module docstring); a child of the owning module."""

    def __init__(self, site: Site, pattern: Pattern, dtype: torch.dtype, device=None):
        super().__init__()
        self.site = site
        self.pattern = pattern
        self.k_dim = site.k_dim
        self.mask = nn.Parameter(torch.ones(site.shape, dtype=dtype, device=device), requires_grad=False)
        self.hard = nn.Parameter(torch.ones(site.shape, dtype=dtype, device=device), requires_grad=False)
        self.register_buffer("hardness", torch.ones((), dtype=dtype, device=device))
        self._ste = True

    def _owner(self) -> nn.Module:
        owner = self.__dict__.get("_sfcompile_owner")
        if owner is None:
            raise MaskStateError(f"the SoftMask of {self.site.name} is not installed on a module (use sparsify)")
        return owner

    @property
    def eff(self) -> nn.Parameter:
        """The stored m_eff the forward multiplies W by (a frozen parameter of the owning module)."""
        return self._owner()._parameters[eff_name(self.site.param)]

    @property
    def ste(self) -> bool:
        """Straight-through gradients to W (True until finalisation), else gradients masked by m."""
        return self._ste

    @ste.setter
    def ste(self, value: bool) -> None:
        self._ste = bool(value)
        owner = self.__dict__.get("_sfcompile_owner")
        if owner is not None:  # mirrored on the owner, where the masked-weight property reads it
            owner.__dict__[_ste_name(self.site.param)] = self._ste

    @torch.no_grad()
    def set_mask(self, m: torch.Tensor) -> None:
        """Set the soft mask to ``m`` (values in [0, 1]) and recompute its hard projection and m_eff."""
        if m is not self.mask:
            self.mask.copy_(m)
        self.hard.copy_(self.pattern.project(self.mask, self.k_dim))
        self.refresh()

    @torch.no_grad()
    def set_hardness(self, h: float) -> None:
        self.hardness.fill_(h)
        self.refresh()

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute the stored m_eff from mask, hard and hardness (after writing any of them directly)."""
        refresh_effective([self])

    def effective(self) -> torch.Tensor:
        """m_eff = h · mask + (1 − h) · hard (stored: exactly ``hard`` at h = 0, ``mask`` at h = 1)."""
        return self.eff

    def get_extra_state(self):
        return {"ste": self.ste}

    def set_extra_state(self, state):
        self.ste = bool(state["ste"])

    def extra_repr(self) -> str:
        return f"pattern={self.pattern}, k_dim={self.k_dim}, shape={tuple(self.site.shape)}"


@torch.no_grad()
def refresh_effective(softs, hardness: float | None = None, views=None) -> None:
    """m_eff ← lerp(hard, mask, hardness) for every SoftMask in ``softs``, on each rank's local elements (FSDP2
    shards, ZeRO-3 slices: the three tensors share a shape, so their local parts line up element by element),
    as multi-tensor kernels (a model has hundreds of sites). ``hardness``: the value every one of them holds,
    when the caller knows it (one kernel per pass instead of per-site ones). ``views``: the local
    ``(hards, masks, effs)`` of ``softs`` if the caller holds them (`local_views`)."""
    softs = list(softs)
    if not softs:
        return
    hards, masks, effs = views if views is not None else local_views(softs)
    weight = hardness if hardness is not None else [s.hardness.to(s.mask.dtype) for s in softs]
    torch._foreach_copy_(effs, torch._foreach_lerp(hards, masks, weight))


def local_views(softs) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """This rank's local ``hard``, ``mask`` and m_eff of each SoftMask in ``softs`` (views: writes land in
    the parameters)."""
    from sfcompile.masking.scores import local

    softs = list(softs)
    return [local(s.hard) for s in softs], [local(s.mask) for s in softs], [local(s.eff) for s in softs]


def _rename_parameter(module: nn.Module, old: str, new: str) -> None:
    """Re-key a parameter in place (``named_parameters`` / ``state_dict`` keep their order)."""
    module._parameters = {new if k == old else k: v for k, v in module._parameters.items()}


def _install(module: nn.Module, site: Site, soft: SoftMask) -> None:
    param = site.param
    _rename_parameter(module, param, dense_name(param))
    params = _masked_params(module) + (param,)
    base = getattr(type(module), _BASE, type(module))
    module.__class__ = _masked_class(base, params)
    module.add_module(soft_name(param), soft)
    soft.__dict__["_sfcompile_owner"] = module  # a plain reference, not a submodule (no cycle in modules())
    module.register_parameter(eff_name(param), nn.Parameter(soft.mask.detach().clone(), requires_grad=False))
    soft.ste = soft.ste  # mirror the flag onto the owner


def unmask(module: nn.Module, param: str) -> nn.Parameter:
    """Remove ``param``'s mask machinery from ``module`` (nothing folded in) and return its dense weight."""
    if param not in _masked_params(module):
        raise MaskStateError(f"{type(module).__name__}.{param} carries no mask state")
    weight = module._parameters[dense_name(param)]
    soft = module._modules.pop(soft_name(param))
    soft.__dict__.pop("_sfcompile_owner", None)
    del module._parameters[eff_name(param)]
    module.__dict__.pop(_ste_name(param), None)
    if module.__dict__.get(SLORB_FOLDS) == param:
        del module.__dict__[SLORB_FOLDS]
    rest = tuple(p for p in _masked_params(module) if p != param)
    base = getattr(type(module), _BASE)
    module.__class__ = _masked_class(base, rest) if rest else base
    _rename_parameter(module, dense_name(param), param)
    return weight


def strip_masks(model: nn.Module) -> nn.Module:
    """Remove every soft mask from ``model`` without applying it: the modules compute with their dense W."""
    for module in model.modules():
        for param in _masked_params(module):
            unmask(module, param)
    return model


def soft_masks_of(module: nn.Module):
    """``(param, SoftMask)`` for each masked parameter of ``module`` itself (not its children)."""
    for param in _masked_params(module):
        yield param, module._modules[soft_name(param)]


def masked_sites(model: nn.Module) -> list[tuple[Site, nn.Module, SoftMask]]:
    """Every site that carries mask state, as ``(site, owning module, SoftMask)``, in model order."""
    found = []
    for _, module in model.named_modules():
        for _, soft in soft_masks_of(module):
            found.append((soft.site, module, soft))
    return found


def dense_weight(module: nn.Module, param: str) -> nn.Parameter:
    """The unmasked weight W under a SoftMask (the tensor the optimizer trains)."""
    if param not in _masked_params(module):
        raise MaskStateError(f"{type(module).__name__}.{param} carries no mask state; call sfcompile.sparsify first")
    return module._parameters[dense_name(param)]


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
        _install(module, site, soft)
    return model


def _manifest_entry(site: Site, pattern: Pattern) -> dict:
    return {"k_dim": site.k_dim, "kind": site.kind, "shape": list(site.shape), "pattern": str(pattern)}


@torch.no_grad()
def harden(model: nn.Module) -> nn.Module:
    """Fold every soft mask into its weight as exact pattern zeros and remove the mask machinery.

    The model becomes a plain HF model again (``save_pretrained`` works); each hardened weight is verified
    against its pattern and recorded in ``model.sfcompile_manifest``. Its ``generate()`` compiles with the
    ``sparseforge`` backend (HF's ``compile_config``, unless one was set: `lowering.backend.use_for_generate`).

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
        weight = unmask(module, site.param)
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
    _use_backend_for_generate(model)
    return model


def _use_backend_for_generate(model: nn.Module) -> None:
    """HF ``generate()`` of a hardened model compiles with the ``sparseforge`` backend
    (`sfcompile.lowering.backend.use_for_generate`)."""
    from sfcompile.lowering.backend import use_for_generate

    use_for_generate(model)


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
    _use_backend_for_generate(model)
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
