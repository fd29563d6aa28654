"""Mask state under DeepSpeed ZeRO-3: partition-local views and gathered-parameter contexts.

ZeRO-3 replaces every parameter's data by an empty tensor outside the module that uses it and keeps this
rank's slice of the FLATTENED parameter in ``param.ds_tensor`` (``ceil(numel / W)`` elements; the last rank's
slice is padded). Unlike FSDP2's Shard(0) rows, those slices may cut an N:M group or a 16×16 tile, so the
forge does its work in two ways:

* element-wise work (the finite-difference probe, the Hessian EMA, sparsity counts) runs on the flat local
  slices (`local`, `flat_slice`): W, mask, hard and the statistics of one site have the same numel, so their
  slices cover the same elements and need no communication;
* pattern work (mask update: τ, tempering and the N:M projection; SLoRB initialisation; finalisation) runs on
  the whole tensors of one site group at a time inside ``deepspeed.zero.GatheredParameters(...,
  modifier_rank=0)`` (`gathered`): every rank computes the same update, rank 0's result is re-partitioned on
  exit, and trainable tensors written there (W at finalisation, SLoRB S) also get their fp32 master partition
  in the optimizer updated (`sync_master`), or ZeRO's next step would write the old values back.

This module only reads the attributes ZeRO-3 sets on parameters (``ds_id``, ``ds_tensor``, ``ds_status``,
``ds_numel``) and imports ``deepspeed`` lazily inside `gathered` / `sync_master`: everything else in
``masking`` works without DeepSpeed installed.
"""

from __future__ import annotations

import contextlib
import weakref

import torch

_GATHERED: set[int] = set()  # ids of the parameters whole inside a `gathered` block now
_RELEASE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its engine's "release all"

__all__ = ["is_partitioned", "local", "flat_slice", "gathered", "sync_master", "any_partitioned"]


def _is_zero3(t) -> bool:
    return hasattr(t, "ds_id") and hasattr(t, "ds_tensor")


def is_partitioned(t) -> bool:
    """Whether ``t`` is a ZeRO-3 parameter to be worked on through its slice: outside a `gathered` block.

    Decided by the block, not by ZeRO's ``ds_status``: a forward/backward that ZeRO's hooks do not fully
    close (``torch.autograd.grad``, a no-grad evaluation) can leave data gathered that the next write to the
    slice would not reach; `release` drops it."""
    return _is_zero3(t) and id(t) not in _GATHERED


def set_release(model, fn) -> None:
    """Register ``fn()``, which re-partitions every parameter of ``model`` (the DeepSpeed engine's)."""
    _RELEASE[model] = fn


def release(model) -> None:
    """Drop any gathered copies of ``model``'s ZeRO-3 parameters, so the next forward gathers the slices
    as they are now (after a write to them). A no-op for models without a registered engine."""
    fn = _RELEASE.get(model)
    if fn is not None:
        fn()


def any_partitioned(tensors) -> bool:
    return any(is_partitioned(t) for t in tensors)


def _range(t) -> tuple[int, int]:
    """[start, stop) of the flattened global tensor held by this rank (padding excluded)."""
    import torch.distributed as dist

    part = t.ds_tensor.numel()
    start = min(dist.get_rank() * part, t.ds_numel)
    return start, min(start + part, t.ds_numel)


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's flat slice (a view of ``ds_tensor``, padding excluded) of a partitioned ZeRO-3 parameter;
    writes go to the partition. Any other tensor (gathered, plain, DTensor) is returned as is."""
    if not is_partitioned(t):
        return t
    start, stop = _range(t)
    return t.ds_tensor.view(-1)[: stop - start]


def flat_slice(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This rank's elements of ``full`` (a tensor of ``like``'s global shape) laid out like `local` (like)."""
    if not is_partitioned(like):
        return full
    start, stop = _range(like)
    return full.reshape(-1)[start:stop]


@contextlib.contextmanager
def gathered(params, *, modify: bool):
    """The full data of ``params`` for the duration of the block (all ranks: collective).

    ``modify=True``: rank 0's values are re-partitioned on exit (every rank computes the same update here, so
    this only fixes floating-point ties) and the fp32 master partitions of trainable parameters are set from
    them. A no-op context when none of ``params`` is a partitioned ZeRO-3 parameter.
    """
    params = [p for p in params if p is not None]
    zero = [p for p in params if _is_zero3(p)]
    if not zero:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(zero, modifier_rank=0 if modify else None):
        ids = {id(p) for p in zero} - _GATHERED
        _GATHERED.update(ids)
        try:
            yield
        finally:
            _GATHERED.difference_update(ids)
    if modify:
        sync_master([p for p in zero if p.requires_grad])


def sync_master(params) -> None:
    """Copy the (re-partitioned) model data of trainable ZeRO-3 parameters into the optimizer's fp32 master
    partitions. Parameters not attached to a ZeRO-3 optimizer yet (before ``deepspeed.initialize`` returns)
    have no master and are skipped."""
    from deepspeed.utils import safe_set_local_fp32_param

    for p in params:
        if getattr(p, "_z3_optimizer", None) is None:
            continue
        safe_set_local_fp32_param(p, p.ds_tensor.detach().float())


def full_grads(loss: torch.Tensor, weights) -> list[torch.Tensor | None]:
    """d loss / d W for ZeRO-3 parameters ``weights``, averaged over ranks, full shape.

    ``torch.autograd.grad`` with the weights as inputs runs ZeRO-3's re-gathering module hooks but not the
    parameters' gradient-accumulation nodes, so ZeRO's partitioned training gradients are left untouched
    (the probe must not add into them). Each rank differentiates its own micro-batch: the mean over ranks is
    the data-parallel gradient, the same one FSDP2's reduce-scatter gives the probe.
    """
    import torch.distributed as dist

    grads = torch.autograd.grad(loss, list(weights), allow_unused=True)
    world = dist.get_world_size() if dist.is_initialized() else 1
    out = []
    for g in grads:
        if g is not None and world > 1:
            g = g.detach().clone()
            dist.all_reduce(g)
            g /= world
        out.append(g)
    return out


def local_grad(p: torch.Tensor) -> torch.Tensor | None:
    """This rank's slice of the reduced fp32 gradient of a ZeRO-3 parameter (after the accumulation boundary's
    backward), laid out like `local` (p); None where ZeRO holds no gradient for it."""
    from deepspeed.utils import safe_get_local_grad

    g = safe_get_local_grad(p)
    if g is None:
        return None
    start, stop = _range(p)
    return g.reshape(-1)[: stop - start]
