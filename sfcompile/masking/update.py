"""The SparseForge mask update batched over sites of one shape, and the per-site reference it must equal.

One update of one site (`tempering` has the math) is ~150 small ops: statistics → scores → z-normalisation →
τ sample → gate → pull toward the pattern (one projection) → EMA → hard mask (a second projection) → flips.
On a GPU their cost is launch and dispatch, not arithmetic (SmolLM2-135M: 210 sites, 342 ms per update on an
H200 against a 125 ms training step). A transformer has only a handful of weight shapes (a LLaMA ~7), so
`plan_batches` puts the site groups of one shape (and pattern, reduction dim, dtype, device, sharding) together
and the update runs once per batch on their stacked tensors (B, *shape); what stays per site is the τ sample's
index draw (each site has its own generator: resume needs no RNG state). A batch holds at most
``ForgeConfig.update_batch_numel`` weight entries, which bounds the stacked temporaries.

Same results as `update_masks_reference`, the straightforward per-site loop (kept as the specification the
tests and ``benchmarks/mask_update.py --check`` compare against), in every bit: the element-wise passes are
the same ops in the same order on the same values; τ is the same selected sample value (a tensor now, so no
host sync); and the per-site reductions (the z-normalisation's sums, the Kronecker fit's means) stay one
reduction per site on that site's slice of the stack (contiguous, like the tensor the per-site path reduces),
because a reduction over rows of a stack may sum in another order and move a score by an ulp, enough to flip a
near-tie in a projection. That costs ~5 small ops per site, ~6 with the τ draw (SmolLM2-135M: 31,330
ops dispatched per update site by site, 2,110 batched at the GPU default batch size).
"""

from __future__ import annotations

import torch

from sfcompile.masking import shards, tempering, zero3
from sfcompile.masking.scores import local

__all__ = ["plan_batches", "update_masks_reference"]


def _batch_key(entries, group: list[int]) -> tuple:
    """What must be equal for groups to be stacked: per site of the group, its global shape, reduction dim,
    pattern, mask dtype, device and sharding."""
    key = []
    for i in group:
        site, _, soft = entries[i]
        key.append((tuple(site.shape), soft.k_dim % len(site.shape), soft.pattern, soft.mask.dtype,
                    local(soft.mask).device, shards.is_sharded(soft.mask)))
    return tuple(key)


def plan_batches(entries, groups: list[list[int]], max_numel: int) -> list[list[list[int]]]:
    """``groups`` (site indices sharing one mask) split into batches of equal `_batch_key`, in model order
    within a batch, each holding at most ``max_numel`` weight entries (a group larger than that alone).

    Decided from global shapes only, so every rank of a sharded run forms the same batches (their collectives
    pair up)."""
    by_key: dict[tuple, list[list[list[int]]]] = {}
    held: dict[tuple, int] = {}  # weight entries in the last batch of each key
    for group in groups:
        key, numel = _batch_key(entries, group), sum(_numel(entries[i][0].shape) for i in group)
        batches = by_key.setdefault(key, [[]])
        if batches[-1] and held[key] + numel > max_numel:
            batches.append([])
            held[key] = 0
        batches[-1].append(group)
        held[key] = held.get(key, 0) + numel
    return [batch for batches in by_key.values() for batch in batches]


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


@torch.no_grad()
def update_masks_reference(forge, step: int, values: dict) -> float:
    """The mask update one site group at a time, as SparseForge did before batching (the specification
    `SparseForge._update_masks` is tested against); returns the fraction of hard-mask entries that flipped.

    Two passes: τ of every group's global scores (one batched kthvalue), then, with the scores recomputed,
    each group's tempered mask and its projection, written site by site."""
    cfg, sched = forge.config, forge.config.schedule
    samples = []
    for group in forge._groups:
        gen = tempering.sample_generator(cfg.seed, step, group[0], forge._device(group[0]))
        with zero3.gathered(forge._site_tensors(group), modify=False):
            samples.append(shards.global_sample(forge._group_scores(group), forge.entries[group[0]][2].mask,
                                                cfg.tau_samples, gen))
    taus = tempering.quantiles(samples, values["target_sparsity"])
    del samples
    flips, count = None, 0
    for group, tau in zip(forge._groups, taus):
        with zero3.gathered(forge._site_tensors(group), modify=True):
            z = forge._group_scores(group)
            lead = forge.entries[group[0]][2]
            new = tempering.tempered_mask(
                z, local(lead.mask), lead.pattern, lead.k_dim, target_sparsity=values["target_sparsity"],
                temperature=values["temperature"], pull=values["pull"], pull_lr=sched.pull_lr,
                momentum=sched.mask_momentum, n_samples=cfg.tau_samples, tau=tau)
            for i in group:
                soft = forge.entries[i][2]
                before = local(soft.hard).detach().clone()
                forge._set_mask(soft, new)
                changed = (local(soft.hard) != before).sum()
                flips = changed if flips is None else flips + changed
                count += before.numel()
    if shards.is_sharded(forge.entries[0][2].mask):
        both = torch.stack([flips.double(), flips.new_tensor(count).double()])
        flips, count = shards.all_reduce_sum(both)
    return float(flips) / max(float(count), 1.0)
