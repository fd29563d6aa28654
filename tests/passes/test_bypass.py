"""sfcompile.passes.bypass through the backend's ``fuse_bypass``: the SLoRB bypasses of a shared input as one
matmul, or inside the packed 2:4 ops of hardened sites; the same outputs, guarded on the identity of the S it
baked."""

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

import sfcompile.lowering  # noqa: F401  (registers the backend)
from sfcompile.masking.slorb import add_slorb, set_slorb_gain
from sfcompile.passes.discover import discover
from sfcompile.passes.site import mark_bypass, mark_hardened
from sfcompile.patterns import parse_pattern


def _model(train_p: bool = False, harden: str | None = None, gain: float = 1.0, skip: str | None = None):
    """A tiny llama with a SLoRB bypass of group 16 (random S, ``gain``) on every site except those whose name
    contains ``skip``; ``harden``: every site's weight also hardened to that pattern (as `harden` marks it)."""
    torch.manual_seed(0)
    cfg = AutoConfig.for_model("llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, vocab_size=64)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    p = parse_pattern(harden or "2:4")
    params = dict(model.named_parameters())
    for site in discover(model, p).sites:
        if harden is not None:
            w = params[site.name]
            with torch.no_grad():
                w.mul_(p.project(w.abs(), site.k_dim))
            mark_hardened(w, {"pattern": str(p), "k_dim": site.k_dim, "kind": site.kind, "site": site.name})
        if skip is None or skip not in site.name:
            s = add_slorb(model.get_submodule(site.module), site.kind, site.shape, 16, train_p=train_p)[0]
            s.data.normal_(0, 0.1)
    set_slorb_gain(model.modules(), gain)
    return model


def _bypass_matmuls(gm) -> int:
    """Linears on block sums (``sum(unflatten(x), -1)``) in the graph."""
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and "linear" in str(n.target)
               and isinstance(n.args[0], torch.fx.Node) and n.args[0].target == "sum")


def _compiled(model, fuse_bypass: bool, **options):
    seen = []
    fast = torch.compile(model, backend="sparseforge", options={
        "fuse_bypass": fuse_bypass, "on_lower": lambda gm, rep: seen.append((gm, rep)), **options})
    return fast, seen


def _lowered_as_eager(model, fuse_bypass: bool = True, **options):
    """The graph and report of ``model`` compiled through the backend, after checking its logits are eager's."""
    torch._dynamo.reset()
    ids = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        eager = model(ids).logits
        fast, seen = _compiled(model, fuse_bypass, **options)
        torch.testing.assert_close(fast(ids).logits, eager, rtol=1e-5, atol=1e-5)
    (gm, report), = seen
    return gm, report


@pytest.mark.parametrize("fuse_bypass", [False, True])
def test_the_bypasses_of_a_shared_input_run_as_one_matmul_with_the_same_output(fuse_bypass):
    gm, report = _lowered_as_eager(_model(), fuse_bypass)
    if fuse_bypass:  # per layer: q/k/v as one, gate/up as one, o and down alone
        assert [len(g) for g in report.fused_bypasses] == [3, 2, 3, 2] and _bypass_matmuls(gm) == 8
    else:
        assert report.fused_bypasses == [] and _bypass_matmuls(gm) == 14


@pytest.mark.parametrize("harden,site", [(None, "layers.0.self_attn.q_proj"), ("2:4", "layers.1.self_attn.o_proj")],
                         ids=["shared-matmul", "folded"])
def test_a_new_s_is_not_read_from_the_baked_one(harden, site):
    # the S (concatenated, or folded into a packed op) is a constant of the graph; Dynamo guards on the identity
    # of each S it was built from, so a module given another S recompiles instead of computing with the old one
    torch._dynamo.reset()
    model = _model(harden=harden)
    ids = torch.randint(0, 64, (2, 7))
    fast, seen = _compiled(model, True)
    with torch.no_grad():
        fast(ids)
        module = model.model.get_submodule(site)
        module.slorb_S = nn.Parameter(torch.randn_like(module.slorb_S))
        mark_bypass(module.slorb_S, {"group": 16})
        torch.testing.assert_close(fast(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)
    assert len(seen) == 2


def test_a_bypass_of_another_shape_is_left_as_it_is():
    # a trainable P (the bypass reads x through P, not through block sums) is not this pass's pattern
    _, report = _lowered_as_eager(_model(train_p=True))
    assert report.fused_bypasses == [] and report.folded_bypasses == []


def test_the_options_are_bools():
    from sfcompile.lowering.backend import BackendOptions

    with pytest.raises(TypeError, match="fuse_bypass must be True or False, got 'yes'"):
        BackendOptions.parse(None, {"fuse_bypass": "yes"})
    with pytest.raises(TypeError, match="kernel_sums must be True or False, got 1"):
        BackendOptions.parse(None, {"kernel_sums": 1})
    assert BackendOptions.parse(None, {}).fuse_bypass is True   # on by default since it was timed (2:4)
    assert BackendOptions.parse(None, {}).kernel_sums is False  # off until it is timed


# ---- the bypass inside the packed op (hardened sites) --------------------------------------------------

def _ops(gm, name: str) -> int:
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and str(n.target) == f"sfcompile.{name}.default")


@pytest.mark.parametrize("gain", [1.0, 0.5])
def test_a_hardened_2of4_site_runs_its_bypass_inside_the_packed_op(gain):
    # per layer: the fused q/k/v op takes their three S concatenated, gate/up two, o and down their own: no
    # bypass matmul is left, and the logits are eager's (the gain is baked into S)
    gm, report = _lowered_as_eager(_model(harden="2:4", gain=gain))
    assert [len(f) for f in report.folded_bypasses] == [3, 1, 2, 1] * 2 and report.fused_bypasses == []
    assert _ops(gm, "linear_nm24_slorb") == 8 and _ops(gm, "linear_nm24") == 0 and _bypass_matmuls(gm) == 0
    # one block sum per op, the one it reads, of its own input (the hook's 14 are gone)
    assert sum(n.op == "call_method" and n.target == "sum" for n in gm.graph.nodes) == 8
    assert all(n.args[3].args[0].args[0] is n.args[0] for n in gm.graph.nodes
               if str(n.target) == "sfcompile.linear_nm24_slorb.default")


@pytest.mark.parametrize("pattern,op,px_arg", [("2:4", "linear_nm24_slorb", 3), ("block16", "linear_block16_slorb", 6)])
def test_kernel_sums_leave_no_block_sum_in_the_graph(pattern, op, px_arg):
    # kernel_sums: the packed ops get px None (the decode kernels sum x themselves; on CPU the op reduces x), so
    # the graph keeps neither a bypass matmul nor a block sum
    gm, report = _lowered_as_eager(_model(harden=pattern, gain=0.5), kernel_sums=True)
    assert [len(f) for f in report.folded_bypasses] == [3, 1, 2, 1] * 2 and _bypass_matmuls(gm) == 0
    ops = [n for n in gm.graph.nodes if str(n.target) == f"sfcompile.{op}.default"]
    assert len(ops) == 8 and all(n.args[px_arg] is None for n in ops)
    assert not any(n.op == "call_method" and n.target in ("sum", "unflatten") for n in gm.graph.nodes)


def test_a_fused_op_whose_pieces_lack_a_bypass_keeps_its_bypasses_apart():
    # k_proj has no bypass: the q/k/v op cannot take theirs (its pieces would need zero rows of S); q and v
    # still share one bypass matmul, and o, gate/up and down fold as before
    gm, report = _lowered_as_eager(_model(harden="2:4", skip="k_proj"))
    assert [len(f) for f in report.folded_bypasses] == [1, 2, 1] * 2
    assert [len(f) for f in report.fused_bypasses] == [2, 2]
    assert _ops(gm, "linear_nm24") == 2 and _ops(gm, "linear_nm24_slorb") == 6


def test_a_fused_op_whose_pieces_have_bypasses_of_other_groups_keeps_them_apart():
    # v_proj's bypass sums groups of 8, q's and k's of 16: one op cannot take one block-sum tensor for all three
    model = _model(harden="2:4", skip="v_proj")
    for layer in model.model.layers:
        v = layer.self_attn.v_proj
        add_slorb(v, "linear", tuple(v.weight.shape), 8)[0].data.normal_(0, 0.1)
    gm, report = _lowered_as_eager(model)
    assert [len(f) for f in report.folded_bypasses] == [1, 2, 1] * 2
    assert _ops(gm, "linear_nm24") == 2 and _ops(gm, "linear_nm24_slorb") == 6


def test_a_hardened_block16_site_runs_its_bypass_inside_the_packed_op():
    gm, report = _lowered_as_eager(_model(harden="block16", gain=0.5))
    assert [len(f) for f in report.folded_bypasses] == [3, 1, 2, 1] * 2 and report.fused_bypasses == []
    assert _ops(gm, "linear_block16_slorb") == 8 and _ops(gm, "linear_block16") == 0 and _bypass_matmuls(gm) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("pattern,kernel_sums", [("2:4", False), ("2:4", True), ("block16", False),
                                                 ("block16", True)])
def test_folded_bypasses_run_in_the_decode_kernels_on_a_gpu(pattern, kernel_sums):
    # bf16 on the GPU: the fold hands the bypass to the tensor-core decode kernels (one token: M = 1), whose
    # logits follow the fp32 model's as closely as the eager bf16 model's do, and differ from the logits without
    # the bypasses. (Against the eager bf16 logits both roundings add up: 0.8-1.7% on the CPU's emulation of the
    # kernels, and 2.6% once on the H200, which a 2% bound there failed.)
    torch._dynamo.reset()
    ref_model = _model(harden=pattern).cuda()
    model = _model(harden=pattern).cuda().to(torch.bfloat16)
    ids = torch.randint(0, 64, (1, 1), device="cuda")
    reports = []
    fast = torch.compile(model, backend="sparseforge", options={"on_lower": lambda gm, rep: reports.append(rep),
                                                                "kernel_sums": kernel_sums})
    with torch.no_grad():
        ref = ref_model(ids).logits
        eager = model(ids).logits.float()
        out = fast(ids).logits.float()
        for module in model.modules():
            if hasattr(module, "slorb_gain"):
                module.slorb_gain.fill_(0.0)
        plain = model(ids).logits.float()
    assert [len(f) for f in reports[0].folded_bypasses] == [3, 1, 2, 1] * 2

    def rel(a):
        return ((a - ref).norm() / ref.norm()).item()

    assert rel(out) < max(2 * rel(eager), 1e-2) and rel(plain) > 10 * rel(out)

