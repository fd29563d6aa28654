import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from sfcompile.masking.slorb import (
    SLoRBError,
    add_slorb,
    block_sum_matrix,
    init_slorb_,
    install_slorb,
    remove_slorb,
    slorb_manifest,
    slorb_unsupported,
)
from sfcompile.passes.site import Site
from sfcompile.patterns import NM

K, N, GROUP = 32, 8, 4


def _linear(kind):
    torch.manual_seed(0)
    if kind == "linear":
        return nn.Linear(K, N), (N, K), 1
    return Conv1D(N, K), (K, N), 0  # GPT-2 Conv1D: weight (K, N), K = dim 0


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_zero_bypass_leaves_output_unchanged(kind):
    mod, shape, _ = _linear(kind)
    x = torch.randn(3, 5, K)
    ref = mod(x)
    add_slorb(mod, kind, shape, GROUP)
    assert mod.slorb_S.shape == (N, K // GROUP)
    torch.testing.assert_close(mod(x), ref)


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_init_equals_the_pruned_part(kind):
    mod, shape, k_dim = _linear(kind)
    w = mod.weight.detach().clone()
    keep = NM(2, 4).project(w.abs(), k_dim)
    add_slorb(mod, kind, shape, GROUP)
    init_slorb_(mod, w, keep)
    pruned = w * ~keep
    pruned_nk = pruned if kind == "linear" else pruned.t()  # (N, K)
    group_sums = pruned_nk.reshape(N, K // GROUP, GROUP).sum(-1)
    # S P spreads each group's pruned weight evenly: its group sums equal the pruned part's group sums
    sp = mod.slorb_S @ block_sum_matrix(K, GROUP)  # (N, K)
    torch.testing.assert_close(sp.reshape(N, K // GROUP, GROUP).sum(-1), group_sums)
    torch.testing.assert_close(mod.slorb_S, group_sums / GROUP)
    assert mod.slorb_S.abs().sum() > 0  # not the reference's all-zero start


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_hardened_layer_plus_slorb_recovers_the_dense_output_on_group_constant_inputs(kind):
    mod, shape, k_dim = _linear(kind)
    x = torch.randn(6, K // GROUP).repeat_interleave(GROUP, dim=-1)  # constant within each group
    dense = mod(x)
    w = mod.weight.detach().clone()
    keep = NM(2, 4).project(w.abs(), k_dim)
    with torch.no_grad():
        mod.weight.mul_(keep)  # hardened: the pruned part is gone
    pruned_only = mod(x)
    add_slorb(mod, kind, shape, GROUP)
    init_slorb_(mod, w, keep)
    torch.testing.assert_close(mod(x), dense)
    assert (pruned_only - dense).abs().max() > 1e-3  # the bypass did the work
    # on generic inputs it still beats dropping the pruned part (its pruned-weight mean is kept)
    xr = torch.randn(256, K) + 1.0
    err_with = (mod(xr) - (xr @ (w if kind == "conv1d" else w.t()) + mod.bias)).square().mean()
    remove_slorb(mod)
    err_without = (mod(xr) - (xr @ (w if kind == "conv1d" else w.t()) + mod.bias)).square().mean()
    assert err_with < err_without


def test_gain_scales_the_bypass():
    mod, shape, k_dim = _linear("linear")
    w = mod.weight.detach().clone()
    add_slorb(mod, "linear", shape, GROUP)
    init_slorb_(mod, w, NM(2, 4).project(w.abs(), k_dim))
    x = torch.randn(4, K)
    full = mod(x)
    mod.slorb_gain.fill_(0.0)
    base = mod(x)
    mod.slorb_gain.fill_(0.25)
    torch.testing.assert_close(mod(x), base + 0.25 * (full - base))
    assert "slorb_gain" not in mod.state_dict()  # set by training; 1 outside it


def test_trainable_s_and_p():
    mod, shape, _ = _linear("linear")
    params = add_slorb(mod, "linear", shape, GROUP, train_p=True)
    assert [p.shape for p in params] == [(N, K // GROUP), (K // GROUP, K)]
    torch.testing.assert_close(mod.slorb_P, block_sum_matrix(K, GROUP))
    mod.slorb_S.data.normal_()
    mod(torch.randn(3, K)).square().sum().backward()
    assert mod.slorb_S.grad.abs().sum() > 0 and mod.slorb_P.grad.abs().sum() > 0
    assert {"slorb_S", "slorb_P"} <= set(mod.state_dict())


def test_manifest_round_trip():
    model = nn.Sequential(nn.Linear(K, N), nn.ReLU(), Conv1D(N, N))
    add_slorb(model[0], "linear", (N, K), GROUP)
    add_slorb(model[2], "conv1d", (N, N), GROUP, train_p=True)
    for p in model.parameters():
        p.data.normal_()
    manifest = slorb_manifest(model)
    assert manifest == {"0": {"kind": "linear", "group": GROUP, "train_p": False, "in_features": K,
                              "out_features": N},
                        "2": {"kind": "conv1d", "group": GROUP, "train_p": True, "in_features": N,
                              "out_features": N}}
    fresh = nn.Sequential(nn.Linear(K, N), nn.ReLU(), Conv1D(N, N))
    sd = model.state_dict()
    fresh.load_state_dict({k: v for k, v in sd.items() if "slorb" not in k})
    install_slorb(fresh, manifest, tensors=sd)
    x = torch.randn(5, K)
    torch.testing.assert_close(fresh(x), model(x))
    # or install zeros and load the state dict afterwards
    other = nn.Sequential(nn.Linear(K, N), nn.ReLU(), Conv1D(N, N))
    install_slorb(other, manifest)
    other.load_state_dict(sd)
    torch.testing.assert_close(other(x), model(x))


def test_install_rejects_mismatched_models():
    def entry(k):
        return {"kind": "linear", "group": 4, "train_p": False, "in_features": k, "out_features": N}

    with pytest.raises(SLoRBError, match="does not have"):
        install_slorb(nn.Sequential(nn.Linear(K, N)), {"3": entry(K)})
    with pytest.raises(SLoRBError, match="shape"):
        install_slorb(nn.Sequential(nn.Linear(K, N)), {"0": entry(2 * K)})
    with pytest.raises(SLoRBError, match="missing"):
        install_slorb(nn.Sequential(nn.Linear(K, N)), {"0": entry(K)}, tensors={})


def test_unsupported_sites_say_why():
    experts = Site("e.w", "e", "w", (4, N, K), 2, "experts")
    assert "Linear-like" in slorb_unsupported(experts, GROUP)
    odd = Site("l.weight", "l", "weight", (N, 30), 1, "linear")
    assert "divisible" in slorb_unsupported(odd, GROUP)
    assert slorb_unsupported(Site("l.weight", "l", "weight", (N, K), 1, "linear"), GROUP) is None


def test_saved_hardened_model_reloads_with_its_bypass(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    from sfcompile.masking.forge import ForgeConfig, SparseForge
    from sfcompile.masking.schedule import TemperingSchedule
    from sfcompile.masking.slorb import read_slorb_tensors
    from sfcompile.masking.state import harden, sparsify

    torch.manual_seed(0)
    cfg = AutoConfig.for_model("llama", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                               num_attention_heads=2, num_key_value_heads=1, vocab_size=128)
    model = AutoModelForCausalLM.from_config(cfg)
    sparsify(model, "2:4")
    sched = TemperingSchedule(period_early=1, period_late=1)
    forge = SparseForge(model, ForgeConfig(score="magnitude", schedule=sched), total_steps=8)
    for step in range(8):
        forge.after_step(step)
    harden(model)
    x = torch.randint(0, 128, (1, 8))
    with torch.no_grad():
        ref = model(x).logits
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)  # drops the slorb_* tensors it does not know
    install_slorb(loaded, model.sfcompile_manifest["slorb"], tensors=read_slorb_tensors(tmp_path))
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x).logits, ref)
