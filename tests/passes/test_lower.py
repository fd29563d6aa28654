"""The lowering pass on Dynamo graphs: numbers match eager, and exactly the hardened matmuls are rewritten.

The pass takes its kernel table as an argument (`lowerer`), so these tests use a tiny op library of their own
(``torch.ops.sftest.*``: dense math on a pre-transposed weight) and need no kernel code. The real packed ops
are exercised end to end in ``tests/lowering/test_backend.py``.
"""

from __future__ import annotations

import operator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sfcompile.passes.lower import LowerReport, PackedMatmul, count_packed_ops, lower_hardened_matmuls
from sfcompile.passes.site import hardened_info, mark_hardened
from sfcompile.patterns import parse_pattern


@torch.library.custom_op("sftest::linear", mutates_args=())
def _sftest_linear(x: torch.Tensor, w_nk: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x, w_nk, bias)


@_sftest_linear.register_fake
def _(x, w_nk, bias):
    return x.new_empty(*x.shape[:-1], w_nk.shape[0])


@torch.library.custom_op("sftest::grouped", mutates_args=())
def _sftest_grouped(x: torch.Tensor, w_enk: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    out = x.new_zeros(x.shape[0], w_enk.shape[1], dtype=torch.float32)
    start = 0
    for e, end in enumerate(offs.tolist()):
        out[start:end] = x[start:end].float() @ w_enk[e].float().T
        start = end
    return out.to(x.dtype)


@_sftest_grouped.register_fake
def _(x, w_enk, offs):
    return x.new_empty(x.shape[0], w_enk.shape[1])


def sftest_lowerer(weight: torch.Tensor, info: dict):
    """Stand-in kernel table: 2:4 and block16 'pack' to the (N, K) / (E, N, K) dense weight."""
    if info["pattern"] not in ("2:4", "block16"):
        return f"pattern {info['pattern']} has no packed kernel"
    k_dim = info["k_dim"] % weight.dim()
    w = weight.detach()
    if w.dim() == 2 and k_dim == 0:
        w = w.T
    return PackedMatmul(
        linear=torch.ops.sftest.linear.default if w.dim() == 2 else None,
        grouped=torch.ops.sftest.grouped.default if w.dim() == 3 else None,
        tensors=(("w", w.contiguous().clone()),),
    )


def harden_(param: nn.Parameter, pattern: str, k_dim: int, name: str) -> None:
    with torch.no_grad():
        param.mul_(parse_pattern(pattern).project(param.abs(), k_dim))
    mark_hardened(param, {"pattern": pattern, "k_dim": k_dim, "kind": "linear", "site": name})


def capture(fn, *args):
    """The (GraphModule, example_inputs) Dynamo hands a backend for ``fn(*args)``."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append((gm, list(example_inputs)))
        return gm.forward

    torch.compile(fn, backend=backend, fullgraph=True)(*args)
    assert len(graphs) == 1
    return graphs[0]


def targets(gm) -> list:
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


class Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = nn.Linear(32, 32, bias=True)
        self.k = nn.Linear(32, 16, bias=False)
        self.o = nn.Linear(32, 32, bias=False)

    def forward(self, x):
        return self.o(torch.relu(self.q(x))) + self.k(x).sum(-1, keepdim=True)


def test_linear_rewritten_and_dense_left_alone():
    torch.manual_seed(0)
    m = Attn().eval()
    harden_(m.q.weight, "2:4", 1, "q.weight")
    harden_(m.o.weight, "block16", 1, "o.weight")
    x = torch.randn(2, 3, 32)
    gm, ex = capture(m, x)
    report = lower_hardened_matmuls(gm, ex, sftest_lowerer)

    assert count_packed_ops(gm, "sftest") == 2
    assert report.lowered == {"q.weight": 1, "o.weight": 1}
    assert report.dense == {}
    assert targets(gm).count(torch._C._nn.linear) == 1  # k stays dense
    torch.testing.assert_close(gm(*ex)[0], m(x))


def test_unsupported_pattern_stays_dense_with_reason():
    torch.manual_seed(0)
    m = Attn().eval()
    harden_(m.q.weight, "4:8", 1, "q.weight")
    harden_(m.k.weight, "2:4", 1, "k.weight")
    x = torch.randn(4, 32)
    gm, ex = capture(m, x)
    report = lower_hardened_matmuls(gm, ex, sftest_lowerer)

    assert report.lowered == {"k.weight": 1}
    assert "no packed kernel" in report.dense["q.weight"]
    assert targets(gm).count(torch._C._nn.linear) == 2
    torch.testing.assert_close(gm(*ex)[0], m(x))


def test_weight_used_against_its_k_dim_stays_dense():
    torch.manual_seed(0)
    m = Attn().eval()
    harden_(m.q.weight, "2:4", 0, "q.weight")  # claims K = dim 0, but F.linear reduces over dim 1
    x = torch.randn(4, 32)
    gm, ex = capture(m, x)
    report = lower_hardened_matmuls(gm, ex, sftest_lowerer)

    assert count_packed_ops(gm, "sftest") == 0
    assert "hardened along dim 0" in report.dense["q.weight"]


def test_conv1d_addmm_rewritten():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    m = nn.Sequential(Conv1D(48, 32), nn.GELU(), Conv1D(32, 48)).eval()  # Conv1D(nf=N, nx=K): weight (K, N)
    with torch.no_grad():
        m[0].bias.normal_()
    harden_(m[0].weight, "2:4", 0, "0.weight")
    harden_(m[2].weight, "block16", 0, "2.weight")
    x = torch.randn(2, 5, 32)
    gm, ex = capture(m, x)
    assert targets(gm).count(torch.addmm) == 2
    report = lower_hardened_matmuls(gm, ex, sftest_lowerer)

    assert report.packed_ops == 2 and count_packed_ops(gm, "sftest") == 2
    assert torch.addmm not in targets(gm)
    torch.testing.assert_close(gm(*ex)[0], m(x))


class Experts(nn.Module):
    """grouped_mm experts as transformers' ``grouped_mm`` implementation calls them: W (E, N, K)."""

    def __init__(self):
        super().__init__()
        # bf16: torch._grouped_mm's meta function accepts no other dtype
        self.up = nn.Parameter(torch.randn(4, 32, 16, dtype=torch.bfloat16))
        self.down = nn.Parameter(torch.randn(4, 16, 32, dtype=torch.bfloat16))

    def forward(self, x, offs):
        h = torch._grouped_mm(x, self.up.transpose(-2, -1), offs=offs)
        return torch._grouped_mm(torch.relu(h), self.down.transpose(-2, -1), offs=offs)


def test_grouped_experts_rewritten():
    torch.manual_seed(0)
    m = Experts()
    harden_(m.up, "2:4", 2, "up")
    harden_(m.down, "block16", 2, "down")
    x = torch.randn(10, 16, dtype=torch.bfloat16)
    offs = torch.tensor([3, 3, 7, 10], dtype=torch.int32)
    with torch.no_grad():
        gm, ex = capture(m, x, offs)
        report = lower_hardened_matmuls(gm, ex, sftest_lowerer)
        assert report.lowered == {"up": 1, "down": 1}
        assert count_packed_ops(gm, "sftest") == 2
        assert not any(n.op == "call_method" and n.target == "transpose" for n in gm.graph.nodes)
        torch.testing.assert_close(gm(*ex)[0], m(x, offs), rtol=2e-2, atol=2e-2)


def test_indexed_experts_stay_dense_with_reason():
    torch.manual_seed(0)
    m = Experts()
    harden_(m.up, "2:4", 2, "up")

    def per_expert(x):
        return F.linear(x, m.up[1])

    gm, ex = capture(per_expert, torch.randn(3, 16, dtype=torch.bfloat16))
    report = lower_hardened_matmuls(gm, ex, sftest_lowerer)
    assert count_packed_ops(gm, "sftest") == 0
    assert "grouped_mm" in report.dense["up"]


class SLoRBLinear(nn.Module):
    """A hardened linear plus a SLoRB-style dense low-rank bypass (two small dense matmuls)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(32, 32, bias=False)
        self.a = nn.Linear(32, 4, bias=False)
        self.b = nn.Linear(4, 32, bias=False)

    def forward(self, x):
        return self.lin(x) + self.b(self.a(x))


def test_slorb_bypass_left_intact():
    torch.manual_seed(0)
    m = SLoRBLinear().eval()
    harden_(m.lin.weight, "2:4", 1, "lin.weight")
    x = torch.randn(3, 32)
    gm, ex = capture(m, x)
    report = lower_hardened_matmuls(gm, ex, sftest_lowerer)
    assert report.lowered == {"lin.weight": 1}
    assert count_packed_ops(gm, "sftest") == 1
    assert targets(gm).count(torch._C._nn.linear) == 2  # the bypass
    torch.testing.assert_close(gm(*ex)[0], m(x))


def test_get_attr_weights_recognised_by_identity():
    """Graphs whose parameters are get_attr nodes (not lifted inputs) are lowered too."""
    torch.manual_seed(0)
    m = Attn().eval()
    harden_(m.q.weight, "2:4", 1, "q.weight")
    class NoLeaves(torch.fx.Tracer):
        def is_leaf_module(self, module, name):
            return False

    gm = torch.fx.GraphModule(m, NoLeaves().trace(m))
    assert any(n.op == "get_attr" and n.target == "q.weight" for n in gm.graph.nodes)
    assert hardened_info(gm.q.weight) is not None  # the same Parameter object
    x = torch.randn(4, 32)
    report = lower_hardened_matmuls(gm, [x], sftest_lowerer)
    assert report.lowered == {"q.weight": 1}
    assert count_packed_ops(gm, "sftest") == 1
    torch.testing.assert_close(gm(x), m(x))


def test_same_weight_packed_once_for_two_matmuls():
    torch.manual_seed(0)
    lin = nn.Linear(32, 32, bias=False)
    harden_(lin.weight, "2:4", 1, "w")
    calls = []

    def lowerer(weight, info):
        calls.append(info["site"])
        return sftest_lowerer(weight, info)

    gm, ex = capture(lambda x: lin(lin(x)), torch.randn(2, 32))
    report = lower_hardened_matmuls(gm, ex, lowerer)
    assert calls == ["w"]
    assert report.lowered == {"w": 2}
    assert sum(1 for n in gm.graph.nodes if n.op == "get_attr") == 1


def test_nothing_hardened_is_a_no_op():
    m = Attn().eval()
    gm, ex = capture(m, torch.randn(4, 32))
    before = [(n.op, n.target) for n in gm.graph.nodes]
    report = lower_hardened_matmuls(gm, ex, sftest_lowerer)
    assert report == LowerReport()
    assert [(n.op, n.target) for n in gm.graph.nodes] == before


def test_count_packed_ops_counts_only_the_namespace():
    gm = torch.fx.symbolic_trace(lambda x: operator.add(torch.ops.sftest.linear(x, x, None), x))
    assert count_packed_ops(gm, "sftest") == 1
    assert count_packed_ops(gm, "sfcompile") == 0


@pytest.mark.parametrize("pattern", ["2:4", "block16"])
def test_inplace_cache_writes_survive(pattern):
    """Unused-result in-place ops (a static KV cache write) must not be dropped by the rewrite."""
    torch.manual_seed(0)
    lin = nn.Linear(32, 32, bias=False)
    harden_(lin.weight, pattern, 1, "w")
    cache = torch.zeros(4, 32)

    def step(x, pos):
        y = lin(x)
        cache.index_copy_(0, pos, y)
        return cache.sum()

    gm, ex = capture(step, torch.randn(1, 32), torch.tensor([2]))
    lower_hardened_matmuls(gm, ex, sftest_lowerer)
    cache.zero_()
    gm(*ex)
    assert cache[2].abs().sum() > 0
