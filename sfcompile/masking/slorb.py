"""SLoRB — the sparse low-rank bypass of SparseForge: y += S (P x).

Pruning removes W_p = W ⊙ (1 − hard). SLoRB adds back a cheap dense correction through a rank-K/k bottleneck:
P (K/k × K) sums the input over groups of k consecutive features, S (N × K/k) maps the group sums to the
outputs::

    x (..., K) ─P: block sums─▶ (..., K/k) ─S─▶ (..., N)        y = x Wᵀ_sparse + gain · S (P x)

Initialisation (at the start of hardening, from the weights being pruned at that moment — the reference
initialises while nothing is pruned, so its S always starts at 0): S[:, j] = mean over group j of W_p. With P
the block sums, S P replaces every pruned weight by its group's mean, so the bypass reproduces the pruned part
exactly for inputs that are constant within each group, and in general keeps each group's total pruned weight
(Σ over a group of (S P) = Σ over the group of W_p).

``gain`` (a non-persistent 0-dim buffer) lets training blend the bypass in as the pruned weights fade out:
SparseForge sets gain = 1 − hardness, so the forward is continuous through hardening. Outside training it is
1 (installed from a manifest, after `harden`).

Where: any Linear-like site whose input's last dim is its reduction dim K and whose output's last dim is N —
``nn.Linear`` (W: N × K, ``kind="linear"``) and GPT-2 ``Conv1D`` (W: K × N, ``kind="conv1d"``). The bypass is
a forward hook on the owning module, so it needs no per-architecture code. MoE expert weights (3-D, routed
inputs) and other matmul sites are not given a bypass; `slorb_unsupported` says why, and SparseForge reports
the skipped sites.

Parameters live on the owning module as ``slorb_S`` (and ``slorb_P`` when P is trainable), so they are in
``state_dict``, trained by the optimizer, sharded by FSDP2 with the module, kept by `harden`, described by
`slorb_manifest` and re-installed by `install_slorb` after loading.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from sfcompile.masking.state import SLORB_FOLDS, soft_masks_of, soft_name
from sfcompile.passes.site import Site, mark_bypass

__all__ = ["SLORB_KINDS", "slorb_unsupported", "add_slorb", "init_slorb_", "slorb_manifest", "install_slorb",
           "remove_slorb", "remove_all_slorb", "set_slorb_gain", "SLoRBError", "block_sum_matrix",
           "read_slorb_tensors", "folded_bypass", "block_sums", "add_bypass_"]

SLORB_KINDS = ("linear", "conv1d")
_HANDLE = "_sfcompile_slorb_handle"


class SLoRBError(ValueError):
    """A site or manifest SLoRB cannot be applied to."""


def _io_dims(kind: str, shape) -> tuple[int, int]:
    """(K, N) of a Linear-like weight."""
    if kind == "linear":
        return shape[1], shape[0]
    return shape[0], shape[1]  # conv1d: (K, N)


def slorb_unsupported(site: Site, group: int) -> str | None:
    """Why ``site`` cannot take a SLoRB bypass with group size ``group``, or None."""
    if site.kind not in SLORB_KINDS or len(site.shape) != 2:
        return (f"SLoRB applies to Linear-like sites {SLORB_KINDS}, not {site.kind!r} of shape "
                f"{tuple(site.shape)}")
    k, _ = _io_dims(site.kind, site.shape)
    if k % group:
        return f"reduction dim K={k} is not divisible by the SLoRB group size {group}; pick a divisor of it"
    return None


def block_sum_matrix(k: int, group: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """P (K/k × K): row j has ones on columns j·k … j·k + k − 1."""
    eye = torch.eye(k // group, dtype=dtype, device=device)
    return eye.repeat_interleave(group, dim=1)


def block_sums(x: torch.Tensor, groups: int) -> torch.Tensor:
    """P x with the fixed P: the sums of x (..., K) over ``groups`` groups of K / groups consecutive features, in
    x's dtype (the lowering matches this form: unflatten, then sum)."""
    return x.unflatten(-1, (groups, x.shape[-1] // groups)).sum(-1)


def add_bypass_(out: torch.Tensor, x: torch.Tensor, px: torch.Tensor | None, s: torch.Tensor) -> torch.Tensor:
    """``out += px @ S.T`` in place and returned: out (M, N), x (M, K), px its block sums (M rows in any
    leading shape) or None (then `block_sums` of x), S (N, K/k). The lowering's bypass where no kernel adds it."""
    px = block_sums(x, s.shape[-1]) if px is None else px
    return out.addmm_(px.reshape(out.shape[0], -1), s.T)


def _folded_soft(module: nn.Module):
    """The SoftMask on ``module``'s weight that folds this module's bypass into the weight, or None."""
    param = module.__dict__.get(SLORB_FOLDS)
    return None if param is None else getattr(module, soft_name(param))


def folded_bypass(module: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """gain · (S P) laid out like the module's weight ((N, K) linear, (K, N) conv1d), in ``dtype``.

    While the weight carries a soft mask (training) the bypass is added to the effective weight instead of
    being a second matmul: x·(W ⊙ m + gain·S P)ᵀ = x·(W ⊙ m)ᵀ + gain·S(P x). The gradients are the same (the
    map is linear in both), and a training step saves the skinny matmuls and their kernels."""
    info = module._sfcompile_slorb
    s = module.slorb_S
    p = getattr(module, "slorb_P", None)
    if p is None:  # each group's S entry repeated over its k inputs: a broadcast view and one copy
        n, groups = s.shape
        full = s.unsqueeze(-1).expand(n, groups, info["group"]).reshape(n, groups * info["group"])
    else:
        full = s @ p  # (N, K)
    if info["kind"] == "conv1d":
        full = full.t()
    return (module.slorb_gain.to(full.dtype) * full).to(dtype)  # .to: no-op for an fp32 weight


def _slorb_forward(module: nn.Module, args, kwargs, output):
    if _folded_soft(module) is not None:  # training: already inside the effective weight
        return None
    x = args[0] if args else next(iter(kwargs.values()))  # (..., K)
    s = module.slorb_S  # (N, K/k)
    p = getattr(module, "slorb_P", None)
    if p is not None:
        px = F.linear(x, p.to(x.dtype))  # (..., K/k)
    else:
        px = block_sums(x, s.shape[1])  # (..., K/k)
    return output + module.slorb_gain.to(output.dtype) * F.linear(px, s.to(px.dtype))


def add_slorb(module: nn.Module, kind: str, shape, group: int, *, train_p: bool = False, gain: float = 1.0,
              dtype=None, device=None) -> list[nn.Parameter]:
    """Register ``slorb_S`` (zeros: the module's output is unchanged), optionally ``slorb_P``, the
    ``slorb_gain`` buffer and the forward hook on ``module``. Returns the new trainable parameters."""
    if hasattr(module, "slorb_S"):
        raise SLoRBError(f"{type(module).__name__} already has a SLoRB bypass")
    k, n = _io_dims(kind, shape)
    if k % group:
        raise SLoRBError(f"reduction dim K={k} is not divisible by the SLoRB group size {group}")
    module.register_parameter("slorb_S", nn.Parameter(torch.zeros(n, k // group, dtype=dtype, device=device)))
    mark_bypass(module.slorb_S, {"group": group})  # (the backend fuses the bypasses of a shared input by it)
    params = [module.slorb_S]
    if train_p:
        module.register_parameter("slorb_P", nn.Parameter(block_sum_matrix(k, group, dtype, device)))
        params.append(module.slorb_P)
    module.register_buffer("slorb_gain", torch.tensor(float(gain), dtype=torch.float32, device=device),
                           persistent=False)
    module._sfcompile_slorb = {"kind": kind, "group": group, "train_p": train_p, "in_features": k,
                               "out_features": n}
    setattr(module, _HANDLE, module.register_forward_hook(_slorb_forward, with_kwargs=True))
    _link_soft_mask(module)
    return params


def _link_soft_mask(module: nn.Module) -> None:
    """Let the module's soft mask (if its weight has one) fold the bypass into the weight (`folded_bypass`)."""
    for param, soft in soft_masks_of(module):
        if soft.site.kind in SLORB_KINDS:
            module.__dict__[SLORB_FOLDS] = param  # read by the masked-weight property (masking/state.py)
            return


def remove_slorb(module: nn.Module) -> None:
    """Undo `add_slorb` (hook, parameters, buffer)."""
    module.__dict__.pop(SLORB_FOLDS, None)
    getattr(module, _HANDLE).remove()
    for name in ("slorb_S", "slorb_P", "slorb_gain", _HANDLE, "_sfcompile_slorb"):
        if hasattr(module, name):
            delattr(module, name)


@torch.no_grad()
def init_slorb_(module: nn.Module, weight: torch.Tensor, keep: torch.Tensor) -> None:
    """S ← per-group mean of the pruned part W ⊙ (1 − keep); P ← block sums (when trainable).

    Args:
        weight: the dense weight W in its stored layout ((N, K) linear, (K, N) conv1d).
        keep: the hard mask (1 = kept) of the same shape.
    """
    info = module._sfcompile_slorb
    pruned = weight.float() * (1 - keep.float())
    if info["kind"] == "conv1d":
        pruned = pruned.t()  # (N, K)
    n, k = pruned.shape
    group = info["group"]
    s = pruned.reshape(n, k // group, group).mean(-1)  # (N, K/k)
    # FSDP2: S is sharded on its rows (N) like a Linear weight, so local rows of W give local rows of S
    target = _local(module.slorb_S)
    if tuple(target.shape) != tuple(s.shape):
        raise SLoRBError(f"SLoRB S shard {tuple(target.shape)} does not match the weight's pruned group "
                         f"means {tuple(s.shape)}: shard the module along its output dim (Conv1D weights are "
                         "sharded along K and are not supported under FSDP2)")
    target.copy_(s.to(target.dtype))
    if info["train_p"]:
        p = _local(module.slorb_P)
        p.copy_(block_sum_matrix(k, group, p.dtype, p.device)[: p.shape[0]])


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def set_slorb_gain(modules: Iterable[nn.Module], gain: float) -> None:
    """The gain of every bypass among ``modules`` (e.g. ``model.modules()``, or the forge's own list, which
    spares a walk over the model on the steps of a fade) set to ``gain``: two multi-tensor kernels, not one per
    site, as a fading bypass changes it every step."""
    gains = [module.slorb_gain for module in modules if hasattr(module, "_sfcompile_slorb")]
    if gains:
        torch._foreach_zero_(gains)
        torch._foreach_add_(gains, gain)


def remove_all_slorb(model: nn.Module) -> int:
    """`remove_slorb` on every module of ``model`` that has a bypass; returns how many. For a bypass trained to
    gain 0 (`TemperingSchedule.slorb_fade_start`), which adds nothing, before hardening."""
    modules = [module for module in model.modules() if hasattr(module, "_sfcompile_slorb")]
    for module in modules:
        remove_slorb(module)
    return len(modules)


def slorb_manifest(model: nn.Module) -> dict:
    """``{module_fqn: {"kind", "group", "train_p", "in_features", "out_features"}}`` for every bypass in
    ``model`` (empty if none). The tensors are ``<module_fqn>.slorb_S`` (and ``.slorb_P``) in its state_dict;
    a lowering computes ``y += S @ (P x)`` with P the block sums over ``group`` inputs unless ``train_p``."""
    return {name: dict(module._sfcompile_slorb) for name, module in model.named_modules()
            if hasattr(module, "_sfcompile_slorb")}


def install_slorb(model: nn.Module, manifest: Mapping[str, Mapping],
                  tensors: Mapping[str, torch.Tensor] | None = None) -> list[nn.Parameter]:
    """Re-create the bypasses a manifest describes (after loading a saved model), gain 1.

    ``tensors`` maps ``"<module_fqn>.slorb_S"`` (and ``.slorb_P``) to saved values; without it the parameters
    are zeros and the caller loads them (``model.load_state_dict(sd, strict=False)``). Returns the parameters.
    """
    params = []
    for name, info in manifest.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise SLoRBError(f"SLoRB manifest names module {name!r}, which the model does not have; the "
                             "manifest belongs to another model") from None
        if hasattr(module, "slorb_S"):
            continue
        weight = getattr(module, "weight", None)
        shape = (info["out_features"], info["in_features"]) if info["kind"] == "linear" else \
            (info["in_features"], info["out_features"])
        if weight is not None and tuple(weight.shape) != shape:
            raise SLoRBError(f"SLoRB manifest says {name} is {info['kind']} of shape {shape}, but its weight "
                             f"is {tuple(weight.shape)}")
        ref = weight if weight is not None else torch.empty(0)
        new = add_slorb(module, info["kind"], shape, int(info["group"]), train_p=bool(info["train_p"]),
                        dtype=ref.dtype, device=ref.device)
        params += new
        if tensors is not None:
            for pname in ("slorb_S", "slorb_P"):
                key = f"{name}.{pname}"
                if hasattr(module, pname):
                    if key not in tensors:
                        raise SLoRBError(f"SLoRB tensor {key} is missing from the saved weights")
                    getattr(module, pname).data.copy_(tensors[key])
    return params


def read_slorb_tensors(folder) -> dict[str, torch.Tensor]:
    """The ``*.slorb_S`` / ``*.slorb_P`` tensors of a saved model folder (its ``*.safetensors`` files).

    ``from_pretrained`` drops them (the HF architecture does not declare them); pass the result to
    `install_slorb` as ``tensors`` when loading a hardened model whose manifest has a ``"slorb"`` entry.
    """
    from pathlib import Path

    from safetensors import safe_open

    found = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                if key.endswith((".slorb_S", ".slorb_P")):
                    found[key] = f.get_tensor(key)
    return found
