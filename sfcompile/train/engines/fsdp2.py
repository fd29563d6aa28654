"""FSDP2 (``torch.distributed.fsdp.fully_shard``): the default engine.

Works directly on soft-masked models: ``fully_shard`` registers the parameters the forward reads — the dense
W and its stored m_eff among them — as Shard(0) DTensors and all-gathers them before the block's forward,
where the masked-weight property computes W ⊙ m_eff from the gathered tensors as usual (checked on torch 2.13
on CPU/gloo; same code path on 2.11). Writing a mask update into the local shards of ``mask``, ``hard`` and
m_eff (`refresh_effective`) between steps changes what the next all-gather returns.

The SoftMask's ``mask`` and ``hard`` and the forge's statistics (``sf_hdiag``, ``sf_fisher``: one fp32 value
per weight) are not needed in the forward, so they are kept out of FSDP2 (``ignored_params``: no all-gather
each step — for a masked layer half of what its forward would otherwise gather) and row-sharded by hand with
the same chunking as their weight (``distribute_tensor(..., [Shard(0)])``): local shards of W, m_eff, mask,
hard and statistics cover the same rows. ``sf_act_sq`` (Wanda's per-input-feature norms, shape (K,)) stays replicated
and is averaged across ranks by its hook.

Layout per rank, with ``W`` ranks: every block's parameters ``1/W``; the unsharded block being computed (and
the next one, prefetched) transiently; with ``activation_checkpointing`` only block inputs are kept for the
backward. Mixed precision on CUDA: bf16 parameters for compute, fp32 gradient reduction, fp32 master weights.
"""

from __future__ import annotations

import torch
from torch import nn


def _mesh(device_type: str):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type, (torch.distributed.get_world_size(),))


def _unforwarded_params(model: nn.Module) -> tuple[list[tuple[nn.Module, str]], list[tuple[nn.Module, str]]]:
    """SoftMask tensors the forward never reads, as (owning SoftMask, name) pairs: (row-shardable — ``mask``,
    ``hard`` and the statistics —, replicated — Wanda's per-input norms)."""
    from sfcompile.masking.scores import STAT_NAMES
    from sfcompile.masking.state import masked_sites

    sharded, replicated = [], []
    for _, _, soft in masked_sites(model):
        sharded += [(soft, "mask"), (soft, "hard")]
        for kind, name in STAT_NAMES.items():
            if getattr(soft, name, None) is None:
                continue
            (replicated if kind == "act" else sharded).append((soft, name))
    return sharded, replicated


def _mixed_precision(config, device_type: str):
    from torch.distributed.fsdp import MixedPrecisionPolicy

    dtype = getattr(config, "dtype", "auto")
    if device_type == "cuda" and dtype in ("auto", "bf16"):
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if dtype == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def _reshard_after_no_grad_forward(gathered: list[nn.Module]):
    """Forward hook: reshard ``gathered`` (FSDP modules left unsharded by a forward) when no backward follows."""

    def hook(module, args, output):
        if not torch.is_grad_enabled():
            for sub in gathered:
                sub.reshard()
        return output

    return hook


def wrap(model: nn.Module, config, *, trainable: bool) -> nn.Module:
    """Shard ``model`` in place: each repeated block, then the root. ``trainable=False`` for the teacher."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard, distribute_tensor

    from sfcompile.passes.blocks import repeated_blocks

    first = next(model.parameters())
    device_type = first.device.type
    mesh = _mesh(device_type)
    mp = _mixed_precision(config, device_type) if trainable else None
    ignored: set[nn.Parameter] = set()
    if trainable:
        sharded, replicated = _unforwarded_params(model)
        for soft, name in sharded:
            stat = getattr(soft, name)
            dt = distribute_tensor(stat.detach(), mesh, [Shard(0)])
            new = nn.Parameter(dt, requires_grad=False)
            soft._parameters[name] = new
            ignored.add(new)
        ignored.update(getattr(soft, name) for soft, name in replicated)
    kwargs = {"mesh": mesh}
    if mp is not None:
        kwargs["mp_policy"] = mp
    if ignored:
        kwargs["ignored_params"] = ignored
    try:
        blocks = repeated_blocks(model)
    except ValueError as err:
        raise ValueError(
            f"FSDP2 shards a model block by block, but {type(model).__name__} has no repeated blocks ({err})"
        ) from err
    checkpointing = trainable and bool(getattr(config, "activation_checkpointing", False))
    # the teacher (no backward) always reshards: keeping its blocks would only hold memory
    keep = trainable and not getattr(config, "reshard_after_forward", True)
    for _, block in blocks:
        if checkpointing:
            from torch.distributed._composable import checkpoint

            checkpoint(block)
        fully_shard(block, **kwargs, reshard_after_forward=not keep)
    fully_shard(model, **kwargs)
    # FSDP2 keeps the root's parameters (embeddings, final norm, head) unsharded after a forward, and with
    # reshard_after_forward=False every block's too, expecting the backward to reshard them. After a no-grad
    # forward (evaluation, the probe's precision check, the teacher) no backward comes: an optimizer step or
    # the probe would then write the shards while the next forward reused the stale unsharded copy (with
    # blocks kept gathered, the probe's in-place shard writes crashed: CUDA "invalid argument", a segfault on
    # CPU). Reshard everything explicitly after every no-grad forward.
    kept = [block for _, block in blocks] if keep else []
    model.register_forward_hook(_reshard_after_no_grad_forward([model, *kept]))
    if not trainable:
        model.requires_grad_(False)
    return model
