import copy
import dataclasses

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from sfcompile.masking import hutchinson
from sfcompile.masking.forge import ForgeConfig, ForgeConfigError, SparseForge, kron_smooth
from sfcompile.masking.schedule import ScheduleError, TemperingSchedule
from sfcompile.masking.state import dense_weight, harden, masked_sites, sparsify

# Short schedule: 12 steps, update every step, hardening 3 -> 7, finalisation at 9.
SCHED = TemperingSchedule(sparsity_warmup=0.2, temperature_floor_at=0.3, pull_warmup=0.2, period_early=1,
                          period_late=1, harden_start=0.25, harden_end=7 / 12, finalize_at=0.75)
TOTAL = 12


@pytest.fixture(scope="module")
def _dense():
    torch.manual_seed(0)
    cfg = AutoConfig.for_model("llama", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                               num_attention_heads=2, num_key_value_heads=1, vocab_size=128)
    return AutoModelForCausalLM.from_config(cfg)


@pytest.fixture
def dense(_dense):
    return copy.deepcopy(_dense)


def _batch(step):
    return torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(1000 + step))


def _build(dense, pattern="2:4", schedule=SCHED, **cfg):
    model = copy.deepcopy(dense)
    sparsify(model, pattern)
    forge = SparseForge(model, ForgeConfig(schedule=schedule, **cfg), total_steps=TOTAL)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    return model, forge, opt


def _train(model, forge, opt, steps):
    out = []
    for step in steps:
        x = _batch(step)
        loss_fn = lambda x=x: model(x, labels=x).loss  # noqa: E731
        loss_fn().backward()
        forge.mask_grads()
        forge.observe_grads(step)
        if forge.wants_probe(step):
            forge.probe(step, loss_fn)
        opt.step()
        opt.zero_grad()
        out.append(forge.after_step(step))
    return out


@pytest.mark.parametrize("kwargs, match", [
    ({"score": "movement"}, "unknown score"),
    ({"estimator": "exact"}, "unknown estimator"),
    ({"probe_every": 0}, "probe_every"),
    ({"hessian_ema": 1.0}, "hessian_ema"),
    ({"fd_eps": 0.0}, "fd_eps"),
    ({"slorb_group": -16}, "slorb_group"),
    ({"hessian_smoothing": "median"}, "hessian_smoothing"),
    ({"schedule": "fast"}, "TemperingSchedule"),
    ({"slorb": False, "schedule": TemperingSchedule(slorb_fade_start=0.9)}, "slorb=False adds none"),
])
def test_bad_config_rejected(kwargs, match):
    with pytest.raises(ForgeConfigError, match=match):
        ForgeConfig(**kwargs)


def test_hardening_window_past_the_end_rejected():
    with pytest.raises(ScheduleError, match="past the end"):
        ForgeConfig(schedule=TemperingSchedule(harden_end=1.1))


def test_bad_construction(dense):
    with pytest.raises(ForgeConfigError, match="sparsify"):
        SparseForge(dense, ForgeConfig(), total_steps=10)
    sparsify(dense, "2:4")
    with pytest.raises(ForgeConfigError, match="total_steps"):
        SparseForge(dense, ForgeConfig(), total_steps=-5)


def test_ste_gradients_reach_pruned_weights_until_finalisation(dense):
    model, forge, opt = _build(dense, score="magnitude")
    _train(model, forge, opt, range(TOTAL - 3))  # through finalisation (at 9)
    assert forge.finalized
    site, module, soft = masked_sites(model)[0]
    pruned = soft.hard == 0
    x = _batch(99)
    assert soft.ste  # the forge leaves the graph's flag alone (a compiled model is not recompiled) ...
    model(x, labels=x).loss.backward()
    w = dense_weight(module, site.param)
    assert w.grad[pruned].abs().sum() > 0
    forge.mask_grads()  # ... and masks the gradients itself after finalisation
    assert w.grad[pruned].abs().sum() == 0 and w.grad[~pruned].abs().sum() > 0
    masked = w.grad.clone()
    w.grad = None
    soft.ste = False  # the same gradients as the graph's own masking
    model(x, labels=x).loss.backward()
    torch.testing.assert_close(w.grad, masked)


@pytest.mark.parametrize("pattern", ["2:4", "block16"])
def test_training_ends_in_the_exact_pattern(dense, pattern):
    model, forge, opt = _build(dense, pattern)
    metrics = _train(model, forge, opt, range(TOTAL))
    assert set(metrics[0]) == set(SparseForge.metrics_names)
    assert [m["finalized"] for m in metrics].index(1.0) == 8  # step count 9 = 0.75 · 12
    assert metrics[-1]["sparsity"] == pytest.approx(0.5) and metrics[-1]["hardness"] == 0.0
    assert any(m["mask_flips"] > 0 for m in metrics)
    x = _batch(123)
    with torch.no_grad():
        before = model(x).logits
    for site, module, soft in masked_sites(model):
        assert torch.equal(soft.mask, soft.hard)  # exact and frozen
        # (the dense W itself was zeroed at finalisation; SGD momentum may have moved it since, which the
        # masked forward ignores and harden() zeroes again)
        w = getattr(module, site.param).detach()
        if hasattr(module, "slorb_S"):  # the SLoRB bypass is folded into the parametrized weight in training
            from sfcompile.masking.slorb import folded_bypass

            w = w - folded_bypass(module, w.dtype)
        assert (w[soft.hard == 0] == 0).all()
        ok, _ = soft.pattern.verify(w, soft.k_dim)
        assert ok
        assert soft.ste
    harden(model)
    with torch.no_grad():
        after = model(x).logits
    torch.testing.assert_close(after, before)  # harden keeps SLoRB; nothing changes
    assert "slorb" in model.sfcompile_manifest


def test_stored_effective_mask_follows_every_write(dense):
    # The forward reads the stored m_eff; every writer (mask updates, the hardness schedule, probes, SLoRB
    # initialisation, finalisation) must leave it equal to lerp(hard, mask, hardness), or the model would
    # silently train with a stale mask.
    model, forge, opt = _build(dense, score="hessian_obd")
    seen_soft = False
    for step in range(TOTAL):
        _train(model, forge, opt, [step])
        for site, _, soft in masked_sites(model):
            expected = torch.lerp(soft.hard, soft.mask, soft.hardness)
            assert torch.equal(soft.eff, expected), (step, site.name)
            seen_soft |= 0 < float(soft.hardness) < 1
    assert seen_soft  # the window where hardness blends mask and hard was crossed
    site, module, soft = masked_sites(model)[0]
    w = dense_weight(module, site.param)
    from sfcompile.masking.slorb import folded_bypass

    with torch.no_grad():
        torch.testing.assert_close(module.weight, w * soft.hard + folded_bypass(module, w.dtype))


def test_slorb_starts_from_the_pruned_part_when_hardening_starts(dense):
    model, forge, opt = _build(dense)
    start = SCHED.harden_start_step(TOTAL)  # step count 3
    _train(model, forge, opt, range(start - 1))
    assert forge.slorb_initialised_at is None
    assert all(p.abs().sum() == 0 for p in forge.trainable_extra_parameters())
    _train(model, forge, opt, [start - 1])
    assert forge.slorb_initialised_at == start - 1
    for site, module, soft in masked_sites(model):
        w = dense_weight(module, site.param).detach()
        pruned = (w * (1 - soft.hard)).reshape(w.shape[0], -1, 16)
        torch.testing.assert_close(module.slorb_S, pruned.mean(-1))
        assert module.slorb_S.abs().sum() > 0
        assert float(module.slorb_gain) == pytest.approx(1 - float(soft.hardness))
    _train(model, forge, opt, [start])
    assert 0 < float(masked_sites(model)[0][1].slorb_gain) < 1  # blended in as hardness falls


def test_slorb_parameters_are_the_optimizer_extras(dense):
    model, forge, _ = _build(dense)
    extras = forge.trainable_extra_parameters()
    assert len(extras) == len(masked_sites(model))
    ids = {id(p) for p in model.parameters()}
    assert all(id(p) in ids and p.requires_grad for p in extras)
    _, forge_off, _ = _build(dense, slorb=False)
    assert forge_off.trainable_extra_parameters() == []


def test_resume_is_exact(dense):
    model_a, forge_a, opt_a = _build(dense)
    _train(model_a, forge_a, opt_a, range(TOTAL))

    model_b, forge_b, opt_b = _build(dense)
    _train(model_b, forge_b, opt_b, range(5))
    ckpt = copy.deepcopy({"model": model_b.state_dict(), "opt": opt_b.state_dict(),
                          "forge": forge_b.state_dict()})
    del model_b, forge_b, opt_b
    model_c, forge_c, opt_c = _build(dense)
    model_c.load_state_dict(ckpt["model"])
    opt_c.load_state_dict(ckpt["opt"])
    forge_c.load_state_dict(ckpt["forge"])
    _train(model_c, forge_c, opt_c, range(5, TOTAL))
    for (_, _, sa), (_, _, sc) in zip(masked_sites(model_a), masked_sites(model_c)):
        assert torch.equal(sa.mask, sc.mask)
    for (na, pa), (nc, pc) in zip(model_a.state_dict().items(), model_c.state_dict().items()):
        assert na == nc and (pa == pc if isinstance(pa, dict) else torch.equal(pa, pc)), na


FADING = dataclasses.replace(SCHED, slorb_fade_start=0.75)  # from the finalisation (step 9) to 0 at step 12


def test_a_fading_bypass_follows_its_schedule_and_ends_adding_nothing(dense):
    from sfcompile.masking.slorb import remove_all_slorb

    model, forge, opt = _build(dense, schedule=FADING)
    metrics = _train(model, forge, opt, range(TOTAL))
    expected = [FADING.slorb_gain(t, TOTAL, finalized=t >= 9) for t in range(1, TOTAL + 1)]
    assert [m["slorb_gain"] for m in metrics] == pytest.approx(expected)
    assert expected[8] == 1.0 and 0 < expected[9] < expected[8] and expected[-1] == 0.0  # steps 9 .. 12
    assert all(float(module.slorb_gain) == 0.0 for _, module, _ in masked_sites(model))
    assert all(p.abs().sum() > 0 for p in forge.trainable_extra_parameters())  # trained, then faded out
    x = _batch(99)
    with torch.no_grad():
        ref = model(x).logits
        assert remove_all_slorb(model) == len(masked_sites(model))
        torch.testing.assert_close(model(x).logits, ref, rtol=0, atol=0)
    harden(model)
    assert "slorb" not in model.sfcompile_manifest and not hasattr(model.model.layers[0].mlp.up_proj, "slorb_S")


def test_resume_inside_the_fade_is_exact(dense):
    model_a, forge_a, opt_a = _build(dense, schedule=FADING)
    _train(model_a, forge_a, opt_a, range(TOTAL))
    model_b, forge_b, opt_b = _build(dense, schedule=FADING)
    _train(model_b, forge_b, opt_b, range(10))
    ckpt = copy.deepcopy({"model": model_b.state_dict(), "opt": opt_b.state_dict(),
                          "forge": forge_b.state_dict()})
    model_c, forge_c, opt_c = _build(dense, schedule=FADING)
    model_c.load_state_dict(ckpt["model"])
    opt_c.load_state_dict(ckpt["opt"])
    forge_c.load_state_dict(ckpt["forge"])
    gain = float(masked_sites(model_c)[0][1].slorb_gain)
    assert gain == pytest.approx(FADING.slorb_gain(10, TOTAL, finalized=True)) and 0 < gain < 1
    _train(model_c, forge_c, opt_c, range(10, TOTAL))
    for (na, pa), (nc, pc) in zip(model_a.state_dict().items(), model_c.state_dict().items()):
        assert na == nc and (pa == pc if isinstance(pa, dict) else torch.equal(pa, pc)), na


def test_a_checkpoint_from_before_the_fade_existed_resumes(dense):
    _, forge, _ = _build(dense)
    sd = copy.deepcopy(forge.state_dict())
    del sd["config"]["schedule"]["slorb_fade_start"]
    forge.load_state_dict(sd)  # no fade then: the default
    sd["config"]["schedule"]["harden_end"] = 0.5
    with pytest.raises(ForgeConfigError, match="schedule"):
        forge.load_state_dict(sd)


def test_resume_rejects_another_budget(dense):
    _, forge, _ = _build(dense)
    sd = forge.state_dict()
    sd["total_steps"] = 99
    with pytest.raises(ForgeConfigError, match="total_steps"):
        forge.load_state_dict(sd)


def test_joint_input_groups_share_masks(dense):
    model, forge, opt = _build(dense, joint_input_groups=True, score="magnitude")
    _train(model, forge, opt, range(4))
    masks = {site.name.split(".")[-2]: soft.mask for site, _, soft in masked_sites(model)}
    assert torch.equal(masks["gate_proj"], masks["up_proj"])
    assert torch.equal(masks["k_proj"], masks["v_proj"])  # same shape; q_proj is larger and keeps its own
    assert not torch.equal(masks["q_proj"][: masks["k_proj"].shape[0]], masks["k_proj"])
    assert not torch.equal(masks["gate_proj"], torch.ones_like(masks["gate_proj"]))


@pytest.mark.parametrize("score", ["magnitude", "wanda", "fisher", "hessian_ratio", "hessian_obd"])
def test_every_score_drives_the_masks(dense, score):
    model, forge, opt = _build(dense, score=score)
    metrics = _train(model, forge, opt, range(3))
    assert metrics[-1]["mask_update"] == 1.0
    for _, _, soft in masked_sites(model):
        assert torch.isfinite(soft.mask).all() and soft.mask.min() < 0.95 and soft.mask.std() > 0.01
    assert forge.wants_probe(3) == score.startswith("hessian")


def test_hessian_scores_need_probes(dense):
    model, forge, opt = _build(dense)
    x = _batch(0)
    model(x, labels=x).loss.backward()
    opt.step()
    with pytest.raises(ForgeConfigError, match="probe"):
        forge.after_step(0)


def test_probe_leaves_grads_alone(dense):
    model, forge, _ = _build(dense)
    x = _batch(0)
    loss_fn = lambda: model(x, labels=x).loss  # noqa: E731
    loss_fn().backward()
    before = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    forge.probe(0, loss_fn)
    after = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert before.keys() == after.keys() and all(torch.equal(before[n], after[n]) for n in before)
    assert forge.probe_count == 1


def test_forward_differences_use_the_step_gradient(dense):
    # "fd_forward" reads g(W) from the .grad the step left (and leaves it there); it refuses to run without
    model, forge, _ = _build(dense, estimator="fd_forward")
    x = _batch(0)
    loss_fn = lambda: model(x, labels=x).loss  # noqa: E731
    with pytest.raises(ForgeConfigError, match="step_grads=True.*estimator='fd'"):
        forge.probe(0, loss_fn)
    rng = hutchinson.rng_state()
    loss_fn().backward()
    before = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    forge.probe(0, loss_fn, step_grads=True, rng_state=rng)
    assert all(torch.equal(before[n], p.grad) for n, p in model.named_parameters() if p.grad is not None)
    fwd = torch.cat([s.sf_hdiag.reshape(-1) for _, _, s in masked_sites(model)])
    other, central, _ = _build(dense)  # the same probe vectors (seeded by step and site), central differences
    central.probe(0, lambda: other(x, labels=x).loss)
    ref = torch.cat([s.sf_hdiag.reshape(-1) for _, _, s in masked_sites(other)])
    assert forge.probe_count == 1 and fwd.abs().sum() > 0
    assert hutchinson.spearman(fwd, ref) > 0.9


@pytest.mark.parametrize("estimator,step_grads,passes",
                         [("fd", False, 2), ("fd_forward", True, 1), ("auto", False, 2), ("auto", True, 1)])
def test_the_probes_bookkeeping_is_multi_tensor(estimator, step_grads, passes, dense):
    # beyond its forward+backward passes a probe dispatches a few ops per site (its per-site Rademacher draw and
    # the buffers it saves): the ±1 conversion, the perturbation, the differences and the Hessian EMA are
    # multi-tensor kernels (it was 9 ops per site: one kernel launch each on a GPU, where the probe is host-bound).
    # "auto" (the default) runs "fd_forward" when given the step's gradients, "fd" (two passes) otherwise.
    from sfcompile.opcount import OpCount

    model, forge, _ = _build(dense, estimator=estimator)
    forge.fd_eps = 1e-2
    x = _batch(0)
    loss_fn = lambda: model(x, labels=x).loss  # noqa: E731
    with OpCount() as one_pass:
        loss_fn().backward()
    rng = hutchinson.rng_state()
    loss_fn().backward()
    with OpCount() as probe:
        forge.probe(0, loss_fn, compute_dtype=torch.float32, step_grads=step_grads, rng_state=rng)
    sites = len(forge.entries)
    # measured 63 ("fd") / 53 ("fd_forward") for this model's 7 sites; 94 / 84 with per-site kernels
    assert 0 < probe.n - passes * one_pass.n <= 5 * sites + 40, (probe.n, one_pass.n, sites)


def test_fd_eps_from_the_command_line_and_auto(dense):
    assert ForgeConfig(fd_eps="0.05").fd_eps == 0.05 and ForgeConfig(fd_eps="auto").fd_eps is None
    model, forge, _ = _build(dense)
    x = _batch(0)
    forge.probe(0, lambda: model(x, labels=x).loss)
    assert forge.fd_eps == 1e-2  # fp32 compute


def test_probes_happen_once_per_mask_update_by_default(dense):
    sched = TemperingSchedule(period_early=3, period_late=3, harden_start=0.5, harden_end=0.5, finalize_at=0.75)
    model = copy.deepcopy(dense)
    sparsify(model, "2:4")
    forge = SparseForge(model, ForgeConfig(schedule=sched), total_steps=TOTAL)
    probed = [s for s in range(TOTAL) if forge.wants_probe(s)]
    forge.probe_count = 1  # after the first probe, only the steps that end with an update probe
    later = [s for s in range(TOTAL) if forge.wants_probe(s)]
    assert later == [s for s in range(TOTAL) if sched.is_update(s + 1, TOTAL)] == [2, 5]
    assert probed == list(range(9 - 1))  # before any probe, every step before finalisation asks for one
    every = SparseForge(copy.deepcopy(model), ForgeConfig(schedule=sched, probe_every=2), total_steps=TOTAL)
    assert [s for s in range(TOTAL) if every.wants_probe(s)] == [0, 2, 4, 6]


@pytest.mark.parametrize("k_dim", [0, 1])
def test_kron_smoothing_is_exact_on_a_separable_diagonal_and_denoises(k_dim):
    g = torch.Generator().manual_seed(0)
    r, c = torch.rand(64, 1, generator=g) + 0.1, torch.rand(1, 128, generator=g) + 0.1
    true = r * c
    assert torch.allclose(kron_smooth(true, k_dim, true), true, rtol=1e-5)
    noisy = true + 3 * true.mean() * torch.randn(true.shape, generator=g)  # one-probe Hutchinson-like noise
    err = lambda h: float((h - true).abs().mean())  # noqa: E731
    assert err(kron_smooth(noisy, k_dim, noisy)) < 0.3 * err(noisy.clamp(min=0))  # measured: 0.24
    experts = torch.stack([true, 2 * true])  # 3-D experts: one fit per expert
    assert torch.allclose(kron_smooth(experts, 2, experts), experts, rtol=1e-5)


def test_pruned_weight_ratio_is_mean_pruned_over_mean_kept(dense):
    """On update steps the forge reports how large the pruned entries are against the kept ones (the
    straight-through gradient keeps training them): recomputed here from the weights and hard masks."""
    model, forge, opt = _build(dense, score="magnitude")
    metrics = _train(model, forge, opt, range(3))
    updates = [m for m in metrics if m["mask_update"]]
    assert updates and all("pruned_weight_ratio" in m for m in updates)
    pruned = kept = n_pruned = n_kept = 0.0
    for site, module, soft in masked_sites(model):
        w, h = dense_weight(module, site.param).detach().abs().double(), soft.hard != 0
        pruned, n_pruned = pruned + w[~h].sum().item(), n_pruned + (~h).sum().item()
        kept, n_kept = kept + w[h].sum().item(), n_kept + h.sum().item()
    # the last update ran after the last optimizer step, so the weights are the ones it measured
    assert metrics[-1]["mask_update"] == 1.0
    assert metrics[-1]["pruned_weight_ratio"] == pytest.approx((pruned / n_pruned) / (kept / n_kept), rel=1e-6)
    assert 0 < metrics[-1]["pruned_weight_ratio"] < 1  # magnitude scores prune the small entries
