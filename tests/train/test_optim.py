import pytest
import torch
from _tiny import tiny_llama as tiny_model

from sfcompile.masking.state import dense_weight, masked_sites, sparsify
from sfcompile.train.config import TrainConfig
from sfcompile.train.optim import MaskAwareAdamW, build_optimizer, lr_at, ramp, trainable_parameters


def test_lr_schedule_warmup_cosine_endpoints():
    kw = dict(lr=1e-3, min_lr=1e-4, warmup=10, total=100)
    lrs = [lr_at(s, **kw) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))  # warm-up rises
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # cosine falls
    assert lr_at(100, **kw) == pytest.approx(1e-4)  # reaches min_lr at the end
    assert lr_at(0, lr=1e-3, min_lr=0.0, warmup=0, total=10) == pytest.approx(1e-3)
    assert ramp(0, 2.0, 10) == 0 and ramp(5, 2.0, 10) == 1.0 and ramp(50, 2.0, 10) == 2.0


def _sparse_tiny():
    model = tiny_model()
    sparsify(model, "2:4")
    return model


def test_parameter_groups():
    model = _sparse_tiny()
    groups = trainable_parameters(model)
    decay, no_decay = groups[0]["params"], groups[1]["params"]
    ids = {id(p) for p in decay + no_decay}
    assert all(p.dim() >= 2 for p in decay) and all(p.dim() < 2 for p in no_decay)
    assert id(model.get_input_embeddings().weight) not in ids  # embeddings frozen by default
    for site, module, soft in masked_sites(model):
        assert id(dense_weight(module, site.param)) in ids
        assert id(soft.mask) not in ids and id(soft.hard) not in ids
    with_emb = trainable_parameters(_sparse_tiny(), train_embeddings=True)
    assert sum(len(g["params"]) for g in with_emb) == sum(len(g["params"]) for g in groups) + 1


def _one_site(model):
    site, module, soft = masked_sites(model)[0]
    return dense_weight(module, site.param), soft


def test_srste_decay_adds_d_w_times_pruned():
    torch.manual_seed(0)
    model = _sparse_tiny()
    w, soft = _one_site(model)
    soft.set_mask((torch.rand_like(w) > 0.5).float())
    soft.set_hardness(0.0)
    grad = torch.randn_like(w)
    expected = grad + 0.3 * w.detach() * (1 - soft.effective())
    opt = MaskAwareAdamW([{"params": [w]}], model, lr=0.0, weight_decay=0.0)
    opt.set_mask_terms(srste_decay=0.3)
    w.grad = grad.clone()
    opt.step()
    torch.testing.assert_close(w.grad, expected)


def test_cast_l1_shrinks_only_pruned_weights_and_scaling_keeps_norm():
    torch.manual_seed(0)
    for scaling in (False, True):
        model = _sparse_tiny()
        w, soft = _one_site(model)
        soft.set_mask(torch.rand_like(w))
        kept = soft.hard.bool()
        before = w.detach().clone()
        opt = MaskAwareAdamW(
            [{"params": [w]}], model, lr=1e-2, weight_decay=0.0, cast_l1=1.0, cast_weight_scaling=scaling
        )
        w.grad = torch.zeros_like(w)  # Adam's own update is 0: only the CAST terms move W
        opt.step()
        after = w.detach()
        assert (after[~kept].abs() < before[~kept].abs()).all()
        if scaling:
            assert after.norm().item() == pytest.approx(before.norm().item(), rel=1e-5)
            ratio = after[kept] / before[kept]
            torch.testing.assert_close(ratio, torch.full_like(ratio, ratio[0].item()))
            assert ratio[0] > 1
        else:
            torch.testing.assert_close(after[kept], before[kept])


def test_build_optimizer_puts_extra_in_own_groups():
    model = _sparse_tiny()
    extra = [torch.nn.Parameter(torch.zeros(3, 4)), torch.nn.Parameter(torch.zeros(3))]
    model.register_parameter("slorb_like", extra[0])  # inside the model: still goes to the extra groups
    opt = build_optimizer(model, TrainConfig(), extra=extra)
    names = [g["name"] for g in opt.param_groups]
    assert names == ["decay", "no_decay", "extra_decay", "extra_no_decay"]
    assert opt.param_groups[2]["params"][0] is extra[0]
    assert opt.param_groups[3]["weight_decay"] == 0.0


def test_fused_adam_gives_the_foreach_update_and_state():
    # adam_impl="fused" (torch's fused AdamW, here its CPU kernel) against the default, with the mask terms on:
    # same weights after several steps, same state dict layout, and a state dict of one loads into the other
    runs = {}
    for impl in ("foreach", "fused"):
        torch.manual_seed(0)
        model = _sparse_tiny()
        cfg = TrainConfig(lr=1e-2, cast_l1=0.1, cast_weight_scaling=True, adam_impl=impl)
        opt = build_optimizer(model, cfg)
        opt.set_mask_terms(srste_decay=0.05)
        params = [p for g in opt.param_groups for p in g["params"]]
        gen = torch.Generator().manual_seed(1)
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
        runs[impl] = (model, opt, params)
    (_, opt_a, a), (_, opt_b, b) = runs["foreach"], runs["fused"]
    assert opt_b.defaults["fused"] and not opt_a.defaults["fused"]
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    sa, sb = opt_a.state_dict(), opt_b.state_dict()
    assert sa["state"].keys() == sb["state"].keys()
    for k in sa["state"]:
        assert sa["state"][k].keys() == sb["state"][k].keys()
        torch.testing.assert_close(sa["state"][k]["exp_avg_sq"], sb["state"][k]["exp_avg_sq"], rtol=1e-5, atol=1e-9)
    opt_a.load_state_dict(sb)  # fused -> foreach resumes
    assert float(opt_a.state[a[0]]["step"]) == 3.0
    with pytest.raises(Exception, match="adam_impl='adamw8bit': choose one of 'foreach', 'fused'"):
        TrainConfig(adam_impl="adamw8bit")
