import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from sfcompile.masking.state import (
    ManifestError,
    MaskStateError,
    apply_manifest,
    dense_weight,
    harden,
    masked_sites,
    sparsify,
    sparsity_report,
)
from sfcompile.passes.site import Site, hardened_info
from sfcompile.patterns import parse_pattern


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    cfg = AutoConfig.for_model("llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, vocab_size=256)
    return AutoModelForCausalLM.from_config(cfg).eval()


def linear_sites(model):
    # Hand-listed sites, so these tests do not depend on discovery.
    return [Site(f"{n}.weight", n, "weight", tuple(m.weight.shape), 1, "linear")
            for n, m in model.named_modules() if isinstance(m, nn.Linear) and "lm_head" not in n]


def prune_by_magnitude(model):
    for site, module, soft in masked_sites(model):
        soft.set_mask(soft.pattern.project(dense_weight(module, site.param).abs(), soft.k_dim).float())
        soft.set_hardness(0.0)


@pytest.fixture
def ids():
    return torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))


def test_fresh_masks_leave_the_model_unchanged(ids):
    model = tiny_llama()
    ref = model(ids).logits
    sparsify(model, "2:4", sites=linear_sites(model))
    assert len(masked_sites(model)) == 14
    torch.testing.assert_close(model(ids).logits, ref)


def test_forward_uses_weight_times_effective_mask(ids):
    model = tiny_llama()
    sparsify(model, "2:4", sites=linear_sites(model))
    site, module, soft = masked_sites(model)[0]
    w = dense_weight(module, "weight")
    soft.set_mask(torch.rand_like(w))
    soft.set_hardness(0.25)
    expected = w * (0.25 * soft.mask + 0.75 * soft.pattern.project(soft.mask, 1))
    torch.testing.assert_close(module.weight, expected)
    assert torch.equal(soft.hard, soft.pattern.project(soft.mask, 1).float())


def test_straight_through_gradient_reaches_pruned_weights(ids):
    model = tiny_llama()
    sparsify(model, "2:4", sites=linear_sites(model))
    prune_by_magnitude(model)
    model(ids).logits.square().mean().backward()
    site, module, soft = masked_sites(model)[0]
    grad = dense_weight(module, "weight").grad
    assert (grad[soft.hard == 0] != 0).float().mean() > 0.9  # pruned weights still get gradient (STE)
    for p in (soft.mask, soft.hard):
        assert not p.requires_grad and p.grad is None
    # With STE off (after finalisation) the gradient of pruned weights is exactly zero.
    model.zero_grad()
    for _, _, s in masked_sites(model):
        s.ste = False
    model(ids).logits.square().mean().backward()
    assert (dense_weight(module, "weight").grad[soft.hard == 0] == 0).all()


def test_compiled_gradients_follow_ste(ids):
    # Under torch.compile the ste flag is a guard: flipping it recompiles once and gives eager's gradients.
    # (SparseForge never flips it in training: it masks gradients itself after finalisation, `mask_grads`.)
    from torch._dynamo.testing import CompileCounterWithBackend

    model = tiny_llama()
    sparsify(model, "2:4", sites=linear_sites(model))
    prune_by_magnitude(model)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter)
    site, module, soft = masked_sites(model)[0]
    w = dense_weight(module, "weight")
    for ste in (True, False, True):
        for _, _, s in masked_sites(model):
            s.ste = ste
        grads = []
        for fn in (model, compiled):
            model.zero_grad()
            fn(ids).logits.square().mean().backward()
            grads.append(w.grad.clone())
        torch.testing.assert_close(grads[1], grads[0])
        pruned = grads[1][soft.hard == 0]
        assert (pruned != 0).float().mean() > 0.9 if ste else (pruned == 0).all()
    assert counter.frame_count == 2  # one graph per value of the flag, both kept


def test_compiled_forward_reads_two_tensors_per_site(ids):
    # The host cost of a compiled training step grows with the graph's inputs: the masked weight must read
    # W and the stored m_eff only (not mask, hard, hardness), so a masked model has 2 inputs per site where
    # the dense one has 1.
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(len(example_inputs))
        return gm.forward

    dense = tiny_llama()
    torch.compile(dense, backend=backend)(ids)
    model = tiny_llama()
    sparsify(model, "2:4", sites=linear_sites(model))
    torch.compile(model, backend=backend)(ids)
    assert graphs[1] - graphs[0] == len(masked_sites(model))


def test_compile_and_generate_see_masked_weights(ids):
    model = tiny_llama()
    sparsify(model, "2:4", sites=linear_sites(model))
    prune_by_magnitude(model)
    eager = model(ids).logits
    compiled = torch.compile(model, backend="aot_eager")
    torch.testing.assert_close(compiled(ids).logits, eager)
    out = model.generate(ids[:1, :4], max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 8)


def test_mask_state_round_trips_through_state_dict(ids):
    model = tiny_llama()
    sparsify(model, "2:4", sites=linear_sites(model))
    prune_by_magnitude(model)
    for _, _, soft in masked_sites(model):
        soft.ste = False
    sd = model.state_dict()
    # the dense W and the mask state sit beside each other on the owning module
    q = "model.layers.0.self_attn.q_proj."
    assert torch.equal(sd[q + "sfmask_weight_dense"], dense_weight(model.model.layers[0].self_attn.q_proj, "weight"))
    for key in ("sfmask_weight.mask", "sfmask_weight.hard", "sfmask_weight.hardness", "sfmask_weight_eff"):
        assert q + key in sd
    assert q + "weight" not in sd  # the masked product is not state
    other = tiny_llama(seed=5)
    sparsify(other, "2:4", sites=linear_sites(other))
    other.load_state_dict(sd)
    torch.testing.assert_close(other(ids).logits, model(ids).logits)
    assert all(not soft.ste for _, _, soft in masked_sites(other))


def test_harden_folds_masks_exactly(ids):
    model = tiny_llama()
    sparsify(model, "2:4", sites=linear_sites(model))
    prune_by_magnitude(model)
    before = model(ids).logits
    harden(model)
    assert masked_sites(model) == []
    torch.testing.assert_close(model(ids).logits, before)
    q = model.model.layers[0].self_attn.q_proj.weight
    assert type(q) is nn.Parameter
    assert parse_pattern("2:4").verify(q, 1) == (True, 0)
    assert hardened_info(q)["pattern"] == "2:4"
    assert model.sfcompile_manifest["pattern"] == "2:4"
    assert len(model.sfcompile_manifest["sites"]) == 14
    assert all(r["ok"] and r["sparsity"] >= 0.5 for r in sparsity_report(model))
    assert harden(model) is model  # hardening a hardened model is a no-op (train hardens at its end)
    torch.testing.assert_close(model(ids).logits, before)


def test_harden_block16():
    torch.manual_seed(0)
    cfg = AutoConfig.for_model("llama", hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                               num_attention_heads=4, num_key_value_heads=2, vocab_size=256)
    model = AutoModelForCausalLM.from_config(cfg)
    sparsify(model, "block16", sites=linear_sites(model))
    prune_by_magnitude(model)
    harden(model)
    w = model.model.layers[0].mlp.down_proj.weight
    assert parse_pattern("block16").verify(w) == (True, 0)
    assert (w == 0).float().mean().item() == pytest.approx(0.5)


def test_harden_refuses_unsparsified_and_untouched_models():
    model = tiny_llama()
    with pytest.raises(MaskStateError, match="sparsify"):
        harden(model)
    sparsify(model, "2:4", sites=linear_sites(model))
    with pytest.raises(MaskStateError, match="all-ones masks"):
        harden(model)


def test_sparsify_twice_and_incompatible_site_rejected():
    model = tiny_llama()
    sparsify(model, "2:4", sites=linear_sites(model))
    with pytest.raises(MaskStateError, match="already sparsified"):
        sparsify(model, "2:4", sites=linear_sites(model))
    other = tiny_llama()
    bad = Site("model.layers.0.mlp.down_proj.weight", "model.layers.0.mlp.down_proj", "weight", (64, 120), 1,
               "linear")
    with pytest.raises(MaskStateError, match="down_proj.weight cannot take pattern block32:0.5"):
        sparsify(other, "block32:0.5", sites=[bad])


def test_apply_manifest_rejects_weights_that_break_the_pattern():
    model = tiny_llama()
    sparsify(model, "2:4", sites=linear_sites(model))
    prune_by_magnitude(model)
    harden(model)
    manifest = model.sfcompile_manifest
    fresh = tiny_llama(seed=3)
    fresh.load_state_dict(model.state_dict())
    apply_manifest(fresh, manifest)
    assert hardened_info(fresh.model.layers[1].mlp.up_proj.weight)["kind"] == "linear"
    with torch.no_grad():
        fresh.model.layers[1].mlp.up_proj.weight.fill_(1.0)
    with pytest.raises(ManifestError, match="up_proj.weight: .* violate pattern 2:4"):
        apply_manifest(fresh, manifest)
    with pytest.raises(ManifestError, match="does not have"):
        apply_manifest(fresh, {**manifest, "sites": {"nope.weight": {"shape": [1], "k_dim": 0,
                                                                     "pattern": "2:4", "kind": "linear"}}})


def test_sparsify_discovers_sites_by_default():
    model = tiny_llama()
    sparsify(model, "2:4")
    assert len(masked_sites(model)) == 14
    assert all(site.k_dim == 1 and site.kind == "linear" for site, _, _ in masked_sites(model))


def test_tied_head_is_refused_with_a_reason():
    from sfcompile.passes.discover import discover

    torch.manual_seed(0)
    cfg = AutoConfig.for_model("llama", hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                               num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
                               tie_word_embeddings=True)
    model = AutoModelForCausalLM.from_config(cfg)
    sites = discover(model, "2:4", skip_head=False)
    with pytest.raises(MaskStateError, match="tied weights"):
        sparsify(model, "2:4", sites=sites)
    assert masked_sites(model) == []


def test_hardening_a_deep_copy_leaves_the_original_working():
    import copy

    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("llama", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                               num_attention_heads=2, num_key_value_heads=1, vocab_size=64)
    model = AutoModelForCausalLM.from_config(cfg)
    sparsify(model, "2:4")
    from sfcompile.masking.oneshot import prune

    prune(model, "magnitude")
    ids = torch.randint(0, 64, (1, 8))
    before = model(ids).logits
    twin = copy.deepcopy(model)
    harden(twin)
    assert torch.equal(model(ids).logits, before)  # the original still has its masked weights
    assert masked_sites(model) and not masked_sites(twin)
