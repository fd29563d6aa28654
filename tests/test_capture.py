"""Capture: parameters are graph inputs recognized by identity, the graph replays the run exactly, and the
model is left untouched."""

from __future__ import annotations

import operator

import pytest
import torch
from torch import nn

from sfcompile.capture import CaptureError, capture, default_example_inputs

aten = torch.ops.aten


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen3_moe", "gpt_oss"])
def test_replay_matches_eager_and_params_are_the_models_own(tiny_model, family):
    model = tiny_model(family)
    cap = capture(model)
    inputs = default_example_inputs(model)
    with torch.no_grad():
        logits = model(**inputs).logits
    (replayed,) = cap.gm(*cap.example_inputs)
    torch.testing.assert_close(replayed, logits, rtol=0, atol=0)

    named = dict(model.named_parameters())
    assert set(cap.params) == set(named)  # every (deduplicated) parameter is read once the run is done
    for name, p in cap.params.items():
        assert p is named[name]
    nodes = cap.param_nodes()
    assert set(nodes) == set(named)
    placeholders = [n for n in cap.graph.nodes if n.op == "placeholder"]
    for node, value in zip(placeholders, cap.example_inputs):
        if "param" in node.meta:
            assert value is named[node.meta["param"]]
        assert node.meta["shape"] == tuple(value.shape)


def test_tied_weight_is_one_placeholder_under_its_first_name(tiny_model):
    model = tiny_model("gpt2")
    assert model.lm_head.weight is model.transformer.wte.weight
    nodes = capture(model).param_nodes()
    wte = nodes["transformer.wte.weight"]
    targets = {u.target for u in wte.users}
    assert aten.embedding.default in targets and aten.t.default in targets  # lookup and lm_head matmul
    assert "lm_head.weight" not in nodes


def test_graph_records_aten_matmuls_and_multi_output_ops(tiny_model):
    cap = capture(tiny_model("qwen3_moe"))
    targets = [n.target for n in cap.graph.nodes if n.op == "call_function"]
    assert targets.count(aten.mm.default) == 11  # 4 attention x 2 layers + 2 routers + lm_head
    assert targets.count(aten._grouped_mm.default) == 4  # gate_up and down experts, 2 layers
    topk = next(n for n in cap.graph.nodes if n.target is aten.topk.default)
    assert sorted(u.args[1] for u in topk.users if u.target is operator.getitem) == [0, 1]


def test_in_place_ops_rebind_and_input_forms():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 4))

        def forward(self, x, scale=1.0):
            y = x.clone()
            y.mul_(scale)  # in place: the matmul must read the mul_, not the clone
            return y @ self.w

    m, x = M(), torch.randn(2, 4)
    for example in (x, (x,), {"x": x, "scale": 2.0}):
        cap = capture(m, example)
        out = m(**example) if isinstance(example, dict) else m(x)
        torch.testing.assert_close(cap.gm(*cap.example_inputs)[0], out)
    mm = next(n for n in cap.graph.nodes if n.target is aten.mm.default)
    assert mm.args[0].target is aten.mul_.Tensor


def test_errors_name_the_problem():
    with pytest.raises(CaptureError, match=r"running Linear on the example input \(tensor\(2, 3\)\) failed"):
        capture(nn.Linear(4, 4), torch.randn(2, 3))
    with pytest.raises(CaptureError, match="has no config.vocab_size; pass example_inputs"):
        capture(nn.Linear(4, 4))
    with pytest.raises(CaptureError, match="example_inputs must be a tensor, a tuple"):
        capture(nn.Linear(4, 4), example_inputs=3)
    with torch.device("meta"):
        meta = nn.Linear(4, 4)
    with pytest.raises(CaptureError, match="meta device"):
        capture(meta, torch.randn(1, 4))


def test_training_flags_restored_even_on_failure():
    m = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).train()
    m[1].eval()
    with pytest.raises(CaptureError):
        capture(m, torch.randn(2, 3))
    assert m.training and m[0].training and not m[1].training
    capture(m, torch.randn(2, 4))
    assert m.training and m[0].training and not m[1].training
