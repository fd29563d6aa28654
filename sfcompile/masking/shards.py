"""Shard-aware helpers for mask state under FSDP2 (row-sharded DTensors); identity in one process.

FSDP2 shards every parameter along dim 0 (``Shard(0)``, torch.chunk sizes: ``ceil(d0 / W)`` rows per rank, the
last ranks possibly fewer or none). A site's weight, soft mask, hard mask and Hessian/Fisher EMA are sharded
the same way, so the local shards of all of them cover the same rows and element-wise work (scores, gate,
pattern projection when groups/tiles do not cross rows) needs no communication. What does need it:

* the quantile τ of a site's z-scores: `sampled_quantile` draws the SAME global sample indices on every rank
  (the generator is seeded by (seed, step, site)), each rank fills the entries it owns, one SUM all-reduce
  completes the sample — bit-identical to the one-process sample, so τ and the masks equal a 1-rank run's;
* probe vectors: `local_rows` slices this rank's rows out of a probe drawn at the global shape;
* counters (sparsity, mask flips): `all_reduce_sum`.

`sfcompile.train.distributed` (which owns process groups and wrapping) sets the sharding up; this module only
reads the DTensor layout, so `masking` keeps importing nothing from `train`.
"""

from __future__ import annotations

import torch

__all__ = ["global_shape", "is_sharded", "row_range", "local_rows", "global_sample", "global_samples",
           "sampled_quantile", "all_reduce_sum", "mean_across_ranks"]


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_sharded(t: torch.Tensor) -> bool:
    """Whether ``t`` is a DTensor (an FSDP2-managed parameter or a statistic sharded like one)."""
    return hasattr(t, "to_local") and hasattr(t, "placements")


def global_shape(t: torch.Tensor) -> torch.Size:
    """The full shape of ``t``: ZeRO-3 keeps it in ``ds_shape`` (its ``shape`` is (0,) when partitioned)."""
    return t.ds_shape if hasattr(t, "ds_shape") else t.shape


def row_range(t: torch.Tensor) -> tuple[int, int]:
    """The global rows ``[start, stop)`` of dim 0 this rank holds of ``t`` (all rows when not sharded)."""
    if not is_sharded(t):
        return 0, t.shape[0]
    from torch.distributed.tensor import Shard

    placements = tuple(t.placements)
    if len(placements) != 1 or not isinstance(placements[0], Shard) or placements[0].dim != 0:
        raise NotImplementedError(
            f"mask state sharded as {placements}: only 1-D row sharding (Shard(0), "
            "FSDP2's default) keeps N:M groups local; do not pass shard_placement_fn"
        )
    n0 = t.shape[0]
    world = t.device_mesh.size(0)
    r = t.device_mesh.get_local_rank(0)
    chunk = -(-n0 // world)
    start = min(r * chunk, n0)
    return start, min(start + chunk, n0)


def local_rows(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This rank's rows of ``full`` (a tensor of ``like``'s global shape), laid out like ``like``'s shard
    (a flat slice when ``like`` is a partitioned ZeRO-3 parameter: `zero3.flat_slice`)."""
    if not is_sharded(like):
        from sfcompile.masking import zero3

        return zero3.flat_slice(full, like)
    start, stop = row_range(like)
    return full[start:stop]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """SUM over ranks, in place; ``t`` itself in one process."""
    if _distributed():
        import torch.distributed as dist

        dist.all_reduce(t)
    return t


def mean_across_ranks(t: torch.Tensor) -> torch.Tensor:
    """MEAN over ranks (a new tensor); ``t`` itself in one process."""
    if not _distributed():
        return t
    import torch.distributed as dist

    out = t.detach().clone()
    dist.all_reduce(out)
    return out / dist.get_world_size()


@torch.no_grad()
def global_sample(
    z_local: torch.Tensor, like: torch.Tensor, n_samples: int, generator: torch.Generator | None
) -> torch.Tensor:
    """The entries of the GLOBAL score tensor (local rows ``z_local``) that `tempering.sampled_quantile`
    would use: all of them when there are at most ``n_samples``, else ``n_samples`` drawn with replacement.

    ``like`` is a tensor of the site's global shape and sharding (the soft mask). Identical on every rank and
    identical to the one-process sample: the indices come from the same generator draws, each rank fills the
    entries it owns and one SUM all-reduce completes the sample.
    """
    from sfcompile.masking.tempering import sample_entries

    if not is_sharded(like):
        return sample_entries(z_local, n_samples, generator)
    numel = like.numel()  # global
    start, stop = row_range(like)
    row = numel // max(like.shape[0], 1)
    lo, hi = start * row, stop * row
    if numel > n_samples:  # the same draw tempering.sample_entries makes
        idx = torch.randint(numel, (n_samples,), generator=generator,
                            device=generator.device if generator is not None else None)
    else:
        idx = torch.arange(numel)
    idx = idx.to(z_local.device)
    sample = torch.zeros(idx.numel(), dtype=torch.float32, device=z_local.device)
    own = (idx >= lo) & (idx < hi)
    sample[own] = z_local.detach().reshape(-1).float()[idx[own] - lo]
    all_reduce_sum(sample)  # every index is owned by exactly one rank
    return sample


@torch.no_grad()
def global_samples(
    z_local: torch.Tensor, like: torch.Tensor, n_samples: int, generators: list[torch.Generator]
) -> torch.Tensor:
    """`global_sample` of B sites at once: ``z_local`` (B, ...) stacks their local scores (all of one global
    shape and sharding, that of ``like``), ``generators`` holds each site's own; returns (B, n) fp32.

    The same values as B calls of `global_sample` (the same draws, one gather and, when sharded, one SUM
    all-reduce for all B)."""
    b = z_local.shape[0]
    flat = z_local.detach().reshape(b, -1).float()  # (B, local numel)
    numel = like.numel()  # global
    if numel <= n_samples:  # every entry, in order
        if not is_sharded(like):
            return flat
        idx = torch.arange(numel, device=flat.device).expand(b, numel)
    else:  # the draws tempering.sample_entries makes, one generator per site
        idx = torch.stack([torch.randint(numel, (n_samples,), generator=g, device=g.device) for g in generators])
        idx = idx.to(flat.device)
    if not is_sharded(like):
        return flat.gather(1, idx)
    start, stop = row_range(like)
    row = numel // max(like.shape[0], 1)
    lo, hi = start * row, stop * row
    sample = torch.zeros(idx.shape, dtype=torch.float32, device=flat.device)
    if hi > lo:  # this rank owns rows: fill the entries it holds (others stay 0 for the SUM)
        own = (idx >= lo) & (idx < hi)
        sample = torch.where(own, flat.gather(1, (idx - lo).clamp(0, hi - lo - 1)), sample)
    return all_reduce_sum(sample)  # every index is owned by exactly one rank


@torch.no_grad()
def sampled_quantile(
    z_local: torch.Tensor, like: torch.Tensor, q: float, n_samples: int, generator: torch.Generator | None
) -> float:
    """`tempering.sampled_quantile` of the GLOBAL score tensor whose local rows are ``z_local`` (see
    `global_sample`)."""
    from sfcompile.masking.tempering import quantiles

    return quantiles([global_sample(z_local, like, n_samples, generator)], q)[0]
