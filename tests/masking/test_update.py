"""The batched mask update (`SparseForge._update_masks`) against the per-site reference it replaced."""

import copy
import math

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from sfcompile.masking import update
from sfcompile.masking.forge import ForgeConfig, SparseForge, kron_smooth
from sfcompile.masking.schedule import TemperingSchedule
from sfcompile.masking.scores import ScoreError
from sfcompile.masking.state import dense_weight, sparsify
from sfcompile.opcount import OpCount

# every step updates the masks; hardening starts late, so the update steps below all go through tempering
SCHED = TemperingSchedule(sparsity_warmup=0.2, temperature_floor_at=0.3, pull_warmup=0.2, period_early=1,
                          period_late=1, harden_start=0.5, harden_end=0.7, finalize_at=0.75)
TOTAL = 12


@pytest.fixture(scope="module")
def _dense():
    torch.manual_seed(0)
    cfg = AutoConfig.for_model("llama", hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                               num_attention_heads=2, num_key_value_heads=1, vocab_size=128)
    return AutoModelForCausalLM.from_config(cfg)


def _build(dense, pattern="2:4", **cfg):
    model = copy.deepcopy(dense)
    sparsify(model, pattern, mask_dtype=torch.float32)
    forge = SparseForge(model, ForgeConfig(schedule=SCHED, **cfg), total_steps=TOTAL)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    return model, forge, opt


def _batch(step):
    return torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(1000 + step))


def _train_step(model, forge, opt, step):
    x = _batch(step)
    loss_fn = lambda: model(x, labels=x).loss  # noqa: E731
    loss_fn().backward()
    forge.observe_grads(step)
    if forge.wants_probe(step):
        forge.probe(step, loss_fn)
    opt.step()
    opt.zero_grad()


def _snapshot(forge):
    return [(s.mask.detach().clone(), s.hard.detach().clone()) for _, _, s in forge.entries]


def _restore(forge, state):
    for (_, _, s), (m, h) in zip(forge.entries, state):
        s.mask.copy_(m)
        s.hard.copy_(h)
        s.refresh()


def _both_updates(forge, step):
    """(batched result, reference result), each [(mask, hard)] per site and the flip fraction, from the same
    state; leaves the forge in the reference's state."""
    values = forge.config.schedule.values(step + 1, forge.total_steps, forge.final_sparsity)
    start = _snapshot(forge)
    flips, _ = forge._update_masks(step, values)
    got = _snapshot(forge)
    _restore(forge, start)
    ref_flips = update.update_masks_reference(forge, step, values)
    return (got, flips), (_snapshot(forge), ref_flips)


def _assert_same(got, ref):
    (masks, flips), (ref_masks, ref_flips) = got, ref
    for (m, h), (rm, rh) in zip(masks, ref_masks):
        assert torch.equal(m, rm) and torch.equal(h, rh)  # bit-identical soft and hard masks
    assert flips == ref_flips


@pytest.mark.parametrize("score", ["magnitude", "wanda", "fisher", "hessian_obd", "hessian_ratio"])
@pytest.mark.parametrize("pattern", ["2:4", "block16"])
def test_batched_update_equals_the_per_site_reference(_dense, score, pattern):
    model, forge, opt = _build(_dense, pattern, score=score)
    for step in range(4):  # several updates, so masks, pull and the EMA are all past their first state
        _train_step(model, forge, opt, step)
        got, ref = _both_updates(forge, step)
        _assert_same(got, ref)
        forge.after_step(step, measure=False)  # (the update again, then hardness/SLoRB as in training)


@pytest.mark.parametrize("cfg", [{"joint_input_groups": True}, {"update_batch_numel": 1},
                                 {"update_batch_numel": 5_000}, {"hessian_smoothing": "none"}])
def test_batching_variants_equal_the_reference(_dense, cfg):
    model, forge, opt = _build(_dense, **cfg)
    for step in range(3):
        _train_step(model, forge, opt, step)
        got, ref = _both_updates(forge, step)
        _assert_same(got, ref)


def test_batches_group_sites_by_shape_and_respect_the_size_cap(_dense):
    _, forge, _ = _build(_dense)
    shapes = lambda batch: {tuple(forge.entries[i][0].shape) for g in batch for i in g}  # noqa: E731
    batches = update.plan_batches(forge.entries, forge._groups, 2**26)
    assert len(batches) == len({tuple(site.shape) for site, _, _ in forge.entries}) == 4  # q/o, k/v, gate/up, down
    assert all(len(shapes(b)) == 1 for b in batches)
    assert sorted(i for b in batches for g in b for i in g) == list(range(len(forge.entries)))
    small = update.plan_batches(forge.entries, forge._groups, 4096)  # a 64x32 gate_proj is 2048 entries
    assert max(sum(math.prod(forge.entries[i][0].shape) for g in b for i in g) for b in small) <= 4096
    assert len(update.plan_batches(forge.entries, forge._groups, 1)) == len(forge.entries)


def test_batched_update_dispatches_far_fewer_ops(_dense):
    cfg = copy.deepcopy(_dense.config)
    cfg.num_hidden_layers = 8  # 56 sites of 4 shapes: per site only the τ draw and 5 small reductions remain
    model, forge, opt = _build(AutoModelForCausalLM.from_config(cfg))
    _train_step(model, forge, opt, 0)
    values = SCHED.values(1, TOTAL, forge.final_sparsity)
    with torch.no_grad(), OpCount() as batched:
        forge._update_masks(0, values)
    with torch.no_grad(), OpCount() as reference:
        update.update_masks_reference(forge, 0, values)
    assert reference.n >= 8 * batched.n, (reference.n, batched.n)  # measured: 5,830 -> 591


def test_nan_scores_raise_naming_the_site(_dense):
    model, forge, opt = _build(_dense, score="magnitude")
    site, module, _ = forge.entries[4]
    with torch.no_grad():
        dense_weight(module, site.param)[0, 0] = float("nan")
    with pytest.raises(ScoreError, match=site.name.replace(".", r"\.")):
        forge.after_step(0)


def test_resume_accepts_a_checkpoint_without_or_with_another_batch_size(_dense):
    _, forge, _ = _build(_dense)
    sd = forge.state_dict()
    sd["config"] = {k: v for k, v in sd["config"].items() if k != "update_batch_numel"}  # an older checkpoint
    forge.load_state_dict(sd)
    sd["config"]["update_batch_numel"] = 7
    forge.load_state_dict(sd)


@pytest.mark.parametrize("k_dim", [0, 1])
def test_kron_smoothing_of_a_stack_fits_each_site(k_dim):
    h = torch.randn(3, 16, 24, generator=torch.Generator().manual_seed(0)) + 0.5
    stacked = kron_smooth(h, k_dim, h[0], batched=True)
    for b in range(3):
        torch.testing.assert_close(stacked[b], kron_smooth(h[b], k_dim, h[b]), rtol=1e-6, atol=0)



def test_batch_size_must_be_positive_or_none():
    from sfcompile.masking.forge import ForgeConfigError

    assert ForgeConfig(update_batch_numel=None).update_batch_numel is None
    with pytest.raises(ForgeConfigError, match="update_batch_numel"):
        ForgeConfig(update_batch_numel=0)
