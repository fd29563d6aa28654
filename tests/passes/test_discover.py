"""Discovery on tiny random models of each family: exactly the sites a careful human would list.

The expected tables below are written by hand from each family's architecture (module names appear here,
in test data, never in discovery's logic). Each model has 2 layers, hidden 64, intermediate 128, 4 heads /
2 KV heads (so k/v are 32x64), vocabulary 256; MoE models have 4 experts.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from sfcompile.passes.discover import Discovery, DiscoveryError, NoSitesError, discover
from sfcompile.passes.site import Site
from sfcompile.patterns import NM

# (parameter name relative to the layer, shape, k_dim, kind), in execution order within a layer.
LLAMA_LIKE = [
    ("self_attn.q_proj.weight", (64, 64), 1, "linear"),
    ("self_attn.k_proj.weight", (32, 64), 1, "linear"),
    ("self_attn.v_proj.weight", (32, 64), 1, "linear"),
    ("self_attn.o_proj.weight", (64, 64), 1, "linear"),
    ("mlp.gate_proj.weight", (128, 64), 1, "linear"),
    ("mlp.up_proj.weight", (128, 64), 1, "linear"),
    ("mlp.down_proj.weight", (64, 128), 1, "linear"),
]
ATTN = LLAMA_LIKE[:4]

# family -> (layer prefix, per-layer sites, {skipped name: reason fragment})
EXPECTED = {
    "llama": ("model.layers.{}.", LLAMA_LIKE,
              {"model.embed_tokens.weight": "embedding table", "lm_head.weight": "output head;"}),
    "qwen2": ("model.layers.{}.", LLAMA_LIKE,  # q/k/v carry biases: addmm instead of mm
              {"model.embed_tokens.weight": "embedding table", "lm_head.weight": "output head;"}),
    "qwen3": ("model.layers.{}.", LLAMA_LIKE,
              {"model.embed_tokens.weight": "embedding table", "lm_head.weight": "output head;"}),
    "mistral": ("model.layers.{}.", LLAMA_LIKE,
                {"model.embed_tokens.weight": "embedding table", "lm_head.weight": "output head;"}),
    # gemma3 ties lm_head to the embedding: one parameter, reported once, as the (tied) head.
    "gemma3_text": ("model.layers.{}.", LLAMA_LIKE,
                    {"model.embed_tokens.weight": "output head (tied to the input embedding)"}),
    # GPT-2 Conv1D stores W as (K, N): K is dim 0; c_attn is one fused q/k/v site.
    "gpt2": ("transformer.h.{}.", [
        ("attn.c_attn.weight", (64, 192), 0, "conv1d"),
        ("attn.c_proj.weight", (64, 64), 0, "conv1d"),
        ("mlp.c_fc.weight", (64, 256), 0, "conv1d"),
        ("mlp.c_proj.weight", (256, 64), 0, "conv1d"),
    ], {"transformer.wpe.weight": "embedding table",
        "transformer.wte.weight": "output head (tied to the input embedding)"}),
    "opt": ("model.decoder.layers.{}.", [
        ("self_attn.q_proj.weight", (64, 64), 1, "linear"),
        ("self_attn.k_proj.weight", (64, 64), 1, "linear"),
        ("self_attn.v_proj.weight", (64, 64), 1, "linear"),
        ("self_attn.out_proj.weight", (64, 64), 1, "linear"),
        ("fc1.weight", (128, 64), 1, "linear"),
        ("fc2.weight", (64, 128), 1, "linear"),
    ], {"model.decoder.embed_positions.weight": "embedding table",
        "model.decoder.embed_tokens.weight": "output head (tied to the input embedding)"}),
    "gpt_neox": ("gpt_neox.layers.{}.", [
        ("attention.query_key_value.weight", (192, 64), 1, "linear"),
        ("attention.dense.weight", (64, 64), 1, "linear"),
        ("mlp.dense_h_to_4h.weight", (128, 64), 1, "linear"),
        ("mlp.dense_4h_to_h.weight", (64, 128), 1, "linear"),
    ], {"gpt_neox.embed_in.weight": "embedding table", "lm_head.weight": "output head;"}),
    # phi3 fuses q/k/v (64 + 2*32 rows) and gate/up (2*128 rows).
    "phi3": ("model.layers.{}.", [
        ("self_attn.qkv_proj.weight", (128, 64), 1, "linear"),
        ("self_attn.o_proj.weight", (64, 64), 1, "linear"),
        ("mlp.gate_up_proj.weight", (256, 64), 1, "linear"),
        ("mlp.down_proj.weight", (64, 128), 1, "linear"),
    ], {"model.embed_tokens.weight": "embedding table", "lm_head.weight": "output head;"}),
    # transformers 5 experts: 3-D (E, N, K) parameters, K last; the router is skipped.
    "qwen3_moe": ("model.layers.{}.", ATTN + [
        ("mlp.experts.gate_up_proj", (4, 64, 64), 2, "experts"),
        ("mlp.experts.down_proj", (4, 64, 32), 2, "experts"),
    ], {"model.embed_tokens.weight": "embedding table", "lm_head.weight": "output head;",
        "model.layers.0.mlp.gate.weight": "MoE router", "model.layers.1.mlp.gate.weight": "MoE router"}),
    "mixtral": ("model.layers.{}.", ATTN + [
        ("mlp.experts.gate_up_proj", (4, 256, 64), 2, "experts"),
        ("mlp.experts.down_proj", (4, 64, 128), 2, "experts"),
    ], {"model.embed_tokens.weight": "embedding table", "lm_head.weight": "output head;",
        "model.layers.0.mlp.gate.weight": "MoE router", "model.layers.1.mlp.gate.weight": "MoE router"}),
    # gpt-oss stores experts transposed, (E, K, N): K is dim 1. Its attention-sink softmax takes a max of
    # the q/k scores, which must not make q/k look like routers.
    "gpt_oss": ("model.layers.{}.", ATTN + [
        ("mlp.experts.gate_up_proj", (4, 64, 256), 1, "experts"),
        ("mlp.experts.down_proj", (4, 128, 64), 1, "experts"),
    ], {"model.embed_tokens.weight": "embedding table", "lm_head.weight": "output head;",
        "model.layers.0.mlp.router.weight": "MoE router", "model.layers.1.mlp.router.weight": "MoE router"}),
}

# The counts, spelled out: 2 layers each.
COUNTS = {"llama": 14, "qwen2": 14, "qwen3": 14, "mistral": 14, "gemma3_text": 14, "gpt2": 8, "opt": 12,
          "gpt_neox": 8, "phi3": 8, "qwen3_moe": 12, "mixtral": 12, "gpt_oss": 12}


@pytest.fixture(scope="module")
def found(tiny_model):
    """family -> Discovery with default arguments, computed once per module."""
    cache: dict[str, Discovery] = {}

    def get(family: str) -> Discovery:
        if family not in cache:
            cache[family] = discover(tiny_model(family))
        return cache[family]

    return get


def _rows(d: Discovery):
    return [(s.name, s.shape, s.k_dim, s.kind) for s in d]


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_sites_per_family(found, family):
    prefix, layer, skipped = EXPECTED[family]
    d = found(family)
    expected = [(prefix.format(i) + rel, shape, k, kind) for i in range(2) for rel, shape, k, kind in layer]
    assert len(d) == COUNTS[family] == len(expected)
    assert _rows(d) == expected
    for s in d:
        assert isinstance(s, Site) and s.module + "." + s.param == s.name
        assert s.k == s.shape[s.k_dim]
    assert {s.name for s in d.skipped} == set(skipped)
    for s in d.skipped:
        assert skipped[s.name] in s.reason, (s.name, s.reason)


def test_shares_input_with(found):
    by = {s.name: set(s.shares_input_with) for s in found("llama")}
    p = "model.layers.1."
    assert by[p + "self_attn.q_proj.weight"] == {p + "self_attn.k_proj.weight", p + "self_attn.v_proj.weight"}
    assert by[p + "self_attn.v_proj.weight"] == {p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight"}
    assert by[p + "mlp.gate_proj.weight"] == {p + "mlp.up_proj.weight"}
    assert by[p + "mlp.up_proj.weight"] == {p + "mlp.gate_proj.weight"}
    assert by[p + "self_attn.o_proj.weight"] == set() and by[p + "mlp.down_proj.weight"] == set()
    # Fused projections read their input alone; so do experts.
    for family in ("gpt2", "phi3", "gpt_neox"):
        assert all(s.shares_input_with == () for s in found(family)), family
    moe = {s.name: s.shares_input_with for s in found("qwen3_moe")}
    assert moe["model.layers.0.mlp.experts.gate_up_proj"] == ()
    assert len(moe["model.layers.0.self_attn.k_proj.weight"]) == 2


@pytest.mark.parametrize("impl", ["eager", "batched_mm"])
def test_moe_experts_implementations_agree(tiny_model, found, impl):
    """Per-expert loops (F.linear on W[e]) and bmm on gathered W[ids] give the same sites as grouped_mm."""
    model = tiny_model("qwen3_moe")
    if not hasattr(model, "set_experts_implementation"):
        pytest.skip("this transformers cannot switch the experts implementation")
    model.set_experts_implementation(impl)
    d = discover(model)
    assert _rows(d) == _rows(found("qwen3_moe"))
    assert sorted(s.name for s in d.skipped) == sorted(s.name for s in found("qwen3_moe").skipped)


def test_include_exclude(tiny_model):
    model = tiny_model("llama")
    mlp = discover(model, include="*.mlp.*")
    assert [s.name.split(".", 3)[-1] for s in mlp] == ["mlp.gate_proj.weight", "mlp.up_proj.weight",
                                                       "mlp.down_proj.weight"] * 2
    assert any("not selected by include='*.mlp.*'" in s.reason for s in mlp.skipped)

    d = discover(model, exclude=["*q_proj*", "model.layers.1.*"])
    assert len(d) == 6 and all(".layers.0." in s.name and "q_proj" not in s.name for s in d)
    # shares_input_with lists only kept sites.
    k_shares = d["model.layers.0.self_attn.k_proj.weight"].shares_input_with
    assert k_shares == ("model.layers.0.self_attn.v_proj.weight",)
    reasons = {s.name: s.reason for s in d.skipped}
    assert "excluded by exclude=" in reasons["model.layers.0.self_attn.q_proj.weight"]

    by_module = discover(model, exclude="model.layers.0.self_attn.o_proj")  # a module FQN
    assert len(by_module) == 13 and "model.layers.0.self_attn.o_proj.weight" not in by_module.names

    wide_k = discover(model, include=lambda s: s.k == 128)
    assert wide_k.names == ["model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"]

    with pytest.raises(TypeError, match="glob"):
        discover(model, include=[3])


def test_keep_head(tiny_model):
    d = discover(tiny_model("llama"), skip_head=False)
    assert len(d) == 15 and _rows(d)[-1] == ("lm_head.weight", (256, 64), 1, "linear")
    assert [s.name for s in d.skipped] == ["model.embed_tokens.weight"]

    tied = discover(tiny_model("gpt2"), skip_head=False)
    # The tied head reads the (V, H) embedding table as a Linear weight: K = H is dim 1.
    assert _rows(tied)[-1] == ("transformer.wte.weight", (256, 64), 1, "linear")
    assert {s.name: s.reason for s in tied.skipped} == {"transformer.wpe.weight":
                                                        "embedding table (read by a lookup, not a matmul)"}


def test_pattern_incompatible_sites_are_skipped(tiny_model):
    # hidden 48, 2 KV heads of 12: q/o 48x48, k/v 24x48, gate/up 96x48, down 48x96.
    model = tiny_model("llama", hidden_size=48, intermediate_size=96)
    assert len(discover(model, "2:4")) == 14  # every K (48, 96) is a multiple of 4

    block = discover(model, "block16")  # 24-row k/v cannot be tiled by 16x16
    assert len(block) == 10 and not any("k_proj" in n or "v_proj" in n for n in block.names)
    reasons = {s.name: s.reason for s in block.skipped}
    assert "weight matrix 24x48 is not tiled by 16x16" in reasons["model.layers.1.self_attn.v_proj.weight"]
    assert reasons["model.layers.1.self_attn.v_proj.weight"].startswith("pattern block16:0.5")

    only_down = discover(model, NM(1, 32))  # only K=96 is a multiple of 32
    assert only_down.names == ["model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"]

    with pytest.raises(NoSitesError, match=r"LlamaForCausalLM.*K=48 is not a multiple of M=64"):
        discover(model, "1:64")


def test_no_sites_error_names_model_and_reasons(tiny_model):
    with pytest.raises(NoSitesError) as err:
        discover(tiny_model("llama"), exclude="*")
    msg = str(err.value)
    assert "LlamaForCausalLM" in msg and "14 × excluded by exclude='*'" in msg and "output head" in msg


def test_non_causal_model_is_refused():
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM

    cfg = AutoConfig.for_model("bert", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64, vocab_size=64)
    with pytest.raises(DiscoveryError, match=r"BertModel is not one \(it cannot.*AutoModelForCausalLM"):
        discover(AutoModel.from_config(cfg))
    with pytest.raises(DiscoveryError, match="BertForMaskedLM is not one"):
        discover(AutoModelForMaskedLM.from_config(cfg))


def test_already_sparsified_model_is_refused(tiny_model):
    model = tiny_model("llama")
    parametrize.register_parametrization(model.model.layers[0].mlp.up_proj, "weight", nn.Identity())
    with pytest.raises(DiscoveryError, match=r"parametrized weights \(e.g. model.layers.0.mlp.up_proj"):
        discover(model)


def test_model_unchanged(tiny_model):
    model = tiny_model("qwen3_moe").train()
    model.model.layers[1].eval()  # a mixed state must come back as it was
    ids = torch.tensor([[3, 1, 4, 1, 5, 9]])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: m.training for n, m in model.named_modules()}
    model.eval()
    with torch.no_grad():
        before = model(ids).logits
    for n, m in model.named_modules():
        m.training = flags[n]
    rng = torch.get_rng_state()

    discover(model)

    assert {n: m.training for n, m in model.named_modules()} == flags
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.is_grad_enabled()
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert all(p.requires_grad for p in model.parameters())
    for m in model.modules():
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks), m
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)


def test_plain_module_and_grouped_mm_custom_op():
    """A non-HF module given example inputs; transformers' grouped_mm CPU fallback op is a matmul too."""
    import transformers.integrations.moe  # noqa: F401  (registers torch.ops.transformers.grouped_mm_fallback)

    class Experts(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(16, 16)
            self.w = nn.Parameter(torch.randn(2, 8, 16))  # (E, N, K)

        def forward(self, x, offs):
            y = self.proj(x)
            return torch.ops.transformers.grouped_mm_fallback(y, self.w.transpose(-2, -1), offs=offs)

    x, offs = torch.randn(6, 16), torch.tensor([2, 6], dtype=torch.int32)
    d = discover(Experts(), skip_head=False, example_inputs=(x, offs))
    assert _rows(d) == [("proj.weight", (16, 16), 1, "linear"), ("w", (2, 8, 16), 2, "experts")]
    # Without a declared output head, the head is the last weight matmul before the output.
    d = discover(Experts(), example_inputs=(x, offs))
    assert d.names == ["proj.weight"] and d.skipped[0].name == "w" and "output head" in d.skipped[0].reason


def test_discovery_container_and_summary(found):
    d = found("qwen3_moe")
    assert len(list(d)) == len(d) == 12
    assert d["model.layers.0.mlp.experts.down_proj"].k == 32
    with pytest.raises(KeyError, match="no site named"):
        d["nope"]
    text = d.summary()
    assert text.splitlines()[0] == "Qwen3MoeForCausalLM: 12 sites (73,728 weights)"
    assert "model.layers.1.mlp.experts.gate_up_proj  experts  4x64x64" in text
    assert "model.layers.0.mlp.gate.weight: MoE router" in text


def test_weight_contracted_over_two_dims_is_reported_not_guessed():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 8, 16))  # (H, D, N): einsum sums over H and D together
            self.lin = nn.Linear(16, 16)

        def forward(self, x):  # (B, T, H, D)
            return self.lin(torch.einsum("bthd,hdn->btn", x, self.w))

    d = discover(M(), example_inputs=torch.randn(2, 3, 4, 8), skip_head=False)
    assert d.names == ["lin.weight"]
    assert [(s.name, "no single K dim" in s.reason) for s in d.skipped] == [("w", True)]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's own, raised while importing Dynamo
def test_compiled_wrapper_is_seen_through():
    mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))
    d = discover(torch.compile(mlp), example_inputs=torch.randn(2, 8), skip_head=False)
    assert d.names == ["0.weight", "2.weight"]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_eager_attention_matmuls_are_not_sites(tiny_model, found, family):
    """With eager attention, q @ k^T and p @ v are bmm/mm ops too; neither operand is a parameter."""
    d = discover(tiny_model(family, attn_implementation="eager"))
    assert _rows(d) == _rows(found(family))
