"""sfcompile.passes.bypass through the backend's ``fuse_bypass``: the SLoRB bypasses of a shared input as one
matmul, the same outputs, guarded on the identity of the S it baked."""

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

import sfcompile.lowering  # noqa: F401  (registers the backend)
from sfcompile.masking.slorb import add_slorb
from sfcompile.passes.discover import discover
from sfcompile.passes.site import mark_bypass
from sfcompile.patterns import parse_pattern


def _model(train_p: bool = False):
    torch.manual_seed(0)
    cfg = AutoConfig.for_model("llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, vocab_size=64)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    for site in discover(model, parse_pattern("2:4")).sites:
        add_slorb(model.get_submodule(site.module), site.kind, site.shape, 16, train_p=train_p)[0].data.normal_(0, 0.1)
    return model


def _bypass_matmuls(gm) -> int:
    """Linears on block sums (``sum(unflatten(x), -1)``) in the graph."""
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and "linear" in str(n.target)
               and isinstance(n.args[0], torch.fx.Node) and n.args[0].target == "sum")


def _compiled(model, fuse_bypass: bool):
    seen = []
    fast = torch.compile(model, backend="sparseforge",
                         options={"fuse_bypass": fuse_bypass, "on_lower": lambda gm, rep: seen.append((gm, rep))})
    return fast, seen


@pytest.mark.parametrize("fuse_bypass", [False, True])
def test_the_bypasses_of_a_shared_input_run_as_one_matmul_with_the_same_output(fuse_bypass):
    torch._dynamo.reset()
    model = _model()
    ids = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        eager = model(ids).logits
        fast, seen = _compiled(model, fuse_bypass)
        out = fast(ids).logits
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    (gm, report), = seen
    if fuse_bypass:  # per layer: q/k/v as one, gate/up as one, o and down alone
        assert [len(g) for g in report.fused_bypasses] == [3, 2, 3, 2] and _bypass_matmuls(gm) == 8
    else:
        assert report.fused_bypasses == [] and _bypass_matmuls(gm) == 14


def test_a_new_s_is_not_read_from_the_baked_concatenation():
    # the concatenated S is a constant of the graph; Dynamo guards on the identity of each S it was built from,
    # so a module given another S recompiles instead of computing with the old one
    torch._dynamo.reset()
    model = _model()
    ids = torch.randint(0, 64, (2, 7))
    fast, seen = _compiled(model, True)
    with torch.no_grad():
        fast(ids)
        q = model.model.layers[0].self_attn.q_proj
        q.slorb_S = nn.Parameter(torch.randn_like(q.slorb_S))
        mark_bypass(q.slorb_S, {"group": 16})
        torch.testing.assert_close(fast(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)
    assert len(seen) == 2


def test_a_bypass_of_another_shape_is_left_as_it_is():
    # a trainable P (the bypass reads x through P, not through block sums) is not this pass's pattern
    torch._dynamo.reset()
    model = _model(train_p=True)
    ids = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        eager = model(ids).logits
        fast, seen = _compiled(model, True)
        torch.testing.assert_close(fast(ids).logits, eager, rtol=1e-5, atol=1e-5)
    assert seen[0][1].fused_bypasses == []


def test_the_option_is_a_bool():
    from sfcompile.lowering.backend import BackendOptions

    with pytest.raises(TypeError, match="fuse_bypass must be True or False, got 'yes'"):
        BackendOptions.parse(None, {"fuse_bypass": "yes"})
