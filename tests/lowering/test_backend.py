"""The `sparseforge` backend end to end on CPU: tiny random decoders of several families, hardened with a mix
of 2:4, block16, an unsupported pattern (4:8) and dense sites, compiled through Inductor.

Checked: logits match eager; the compiled graphs hold exactly one packed op per lowerable hardened site, or
per group of them the default ``fuse`` option runs as one (q/k/v, gate/up with one pattern; counted in the
graph the hook sees; ``fuse=False``: one per site); unsupported and non-hardened sites stay dense; greedy ``generate()``
with a static cache matches eager; registration through import and through the entry point.

Inductor's CPU compile dominates the run time: each family is compiled once (module-scoped fixture).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import sfcompile.lowering  # noqa: F401  (registers the backend)
from sfcompile.lowering.backend import ENTRY_POINT, PDL_AUTO_MAX_ROWS, PDL_AUTO_MAX_ROWS_NO_COPIES, BackendOptions
from sfcompile.passes.discover import discover
from sfcompile.passes.lower import count_packed_ops
from sfcompile.passes.site import hardened_info, mark_hardened
from sfcompile.patterns import parse_pattern

REPO = Path(__file__).resolve().parents[2]

FAMILIES = {
    "llama": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=128),
    "gpt2": dict(n_embd=64, n_layer=1, n_head=4, vocab_size=128, n_positions=64, bos_token_id=0,
                 eos_token_id=0),
    "opt": dict(hidden_size=64, ffn_dim=128, num_hidden_layers=1, num_attention_heads=4, vocab_size=128,
                word_embed_proj_dim=64, max_position_embeddings=64),
    "qwen3_moe": dict(hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_experts=4,
                      num_experts_per_tok=2, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, vocab_size=128),
}
# Site i gets PLAN[i % 4]: packed 2:4, packed block16, hardened but without a kernel (4:8), not hardened.
PLAN = ("2:4", "block16", "4:8", None)


def tiny_model(family: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(family, **FAMILIES[family])
    return AutoModelForCausalLM.from_config(cfg).eval()


def harden_mixed(model) -> dict[str, str | None]:
    """Zero each discovered site to its PLAN pattern and mark it as `harden` does; returns site -> pattern."""
    params = dict(model.named_parameters())
    plan = {}
    for i, site in enumerate(discover(model).sites):
        pattern = PLAN[i % len(PLAN)]
        plan[site.name] = pattern
        if pattern is None:
            continue
        param = params[site.name]
        with torch.no_grad():
            param.mul_(parse_pattern(pattern).project(param.abs(), site.k_dim))
        mark_hardened(param, {"pattern": pattern, "k_dim": site.k_dim, "kind": site.kind, "site": site.name})
    return plan


class Compiled:
    """A hardened tiny model generating greedily with a static cache, eager and through the backend (HF's
    generate() compiles its decode step with the `compile_config` backend), and what the hook saw."""

    def __init__(self, family: str):
        from transformers import CompileConfig

        self.model = tiny_model(family)
        self.plan = harden_mixed(self.model)
        ids = torch.randint(0, 128, (2, 5), generator=torch.Generator().manual_seed(1))
        kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False, pad_token_id=0,
                      cache_implementation="static", output_logits=True, return_dict_in_generate=True)
        self.graphs = graphs = []  # (packed op count, LowerReport) per compiled graph

        def hook(gm, report):  # a closure: CompileConfig deep-copies options (a bound method's self too)
            graphs.append((count_packed_ops(gm), report))

        config = CompileConfig(backend="sparseforge", mode=None, fullgraph=True, options={"on_lower": hook})
        config._compile_all_devices = True  # HF auto-compiles only on accelerators unless told (testing hook)
        self.eager = self.model.generate(ids, disable_compile=True, **kwargs)
        self.compiled = self.model.generate(ids, compile_config=config, **kwargs)


@pytest.fixture(scope="module", params=list(FAMILIES))
def compiled(request):
    torch._dynamo.reset()
    return Compiled(request.param)


def test_registered():
    assert "sparseforge" in torch._dynamo.list_backends()
    sfcompile.lowering.backend.register()  # idempotent
    assert "sparseforge" in torch._dynamo.list_backends()


def test_generate_matches_eager(compiled):
    assert compiled.graphs, "generate() did not go through the backend"
    assert torch.equal(compiled.compiled.sequences, compiled.eager.sequences)
    # Step 0 is the (eager) prefill; later steps ran the compiled decode graph.
    for fast, eager in zip(compiled.compiled.logits, compiled.eager.logits):
        torch.testing.assert_close(fast, eager, rtol=1e-4, atol=1e-4)


def test_one_packed_op_per_hardened_site(compiled):
    # one per site, less one per extra member of a fused group (the default fuse option: linears with the same
    # input and pattern; the mixed plan gives such groups only where neighbours drew the same pattern)
    lowerable = {s for s, p in compiled.plan.items() if p in ("2:4", "block16")}
    assert lowerable, "the plan must harden some sites"
    for count, report in compiled.graphs:  # one decode graph per compile
        assert set(report.lowered) == lowerable
        merged = sum(len(group) - 1 for group in report.fused)
        assert count == report.packed_ops == len(lowerable) - merged
        assert sum(report.lowered.values()) == count


def test_unsupported_and_plain_sites_stay_dense(compiled):
    unsupported = {s for s, p in compiled.plan.items() if p == "4:8"}
    for _, report in compiled.graphs:
        assert set(report.dense) == unsupported
        assert all("4:8" in reason for reason in report.dense.values())
    params = dict(compiled.model.named_parameters())
    assert all(hardened_info(params[s]) is None for s, p in compiled.plan.items() if p is None)


def test_options():
    assert BackendOptions.parse(None, None).cudagraphs is False
    assert BackendOptions.parse("reduce-overhead", None).cudagraphs is True
    opts = BackendOptions.parse(None, {"cudagraphs": True, "max_autotune": True})
    assert opts.config_patches(True) == {"max_autotune": True, "triton.cudagraphs": True, "triton.enable_pdl": True}
    assert opts.config_patches(False)["triton.enable_pdl"] is False
    # an explicit Inductor key wins over the backend's pdl option
    assert BackendOptions.parse(None, {"triton.enable_pdl": False}).config_patches(True)["triton.enable_pdl"] is False
    # pdl: "auto" (default) by the rows the packed ops multiply; True/False as given
    auto = BackendOptions.parse(None, None)
    assert auto.pdl == "auto"
    assert [auto.resolve_pdl(r) for r in (1, PDL_AUTO_MAX_ROWS, PDL_AUTO_MAX_ROWS + 1, 8, None)] == [
        True, True, True, True, False]
    # prefill-sized graphs keep plain launches, copies or not
    assert [auto.resolve_pdl(r) for r in (PDL_AUTO_MAX_ROWS_NO_COPIES, PDL_AUTO_MAX_ROWS_NO_COPIES + 1, 2048)] == [
        True, False, False]
    # with broadcast copies (grouped-query attention's K/V copy) only up to PDL_AUTO_MAX_ROWS rows
    assert [auto.resolve_pdl(r, copies=2) for r in (1, PDL_AUTO_MAX_ROWS, PDL_AUTO_MAX_ROWS + 1, 8, None)] == [
        True, True, False, False, False]
    assert BackendOptions.parse(None, {"pdl": True}).resolve_pdl(8) is True
    assert BackendOptions.parse(None, {"pdl": False}).resolve_pdl(1) is False
    with pytest.raises(TypeError, match="on_lower"):
        BackendOptions.parse(None, {"on_lower": 3})
    with pytest.raises(TypeError, match="pdl must be True, False or 'auto', got 'yes'"):
        BackendOptions.parse(None, {"pdl": "yes"})


@pytest.mark.parametrize("copies", [False, True])
def test_pdl_auto_follows_the_rows_of_the_packed_ops_and_the_broadcast_copies(monkeypatch, copies):
    """Each compiled graph decides by the rows its packed ops multiply and the broadcast copies it makes: one
    row (decode at batch 1) launches with programmatic dependent launch; more rows only without copies
    (measured slower at batch 8 with grouped-query attention's K/V copies, faster without)."""
    from sfcompile.lowering import backend

    torch._dynamo.reset()
    seen = []
    real = backend.BackendOptions.resolve_pdl
    monkeypatch.setattr(backend.BackendOptions, "resolve_pdl",
                        lambda self, rows, n=0: seen.append((rows, n)) or real(self, rows, n))
    import torch._inductor.compile_fx as inductor

    patches = []
    real_fx = inductor.compile_fx

    def compile_fx(gm, inputs, config_patches=None, **kw):
        if config_patches:  # the backend's call (Inductor calls itself again without patches)
            patches.append(config_patches)
        return real_fx(gm, inputs, config_patches=config_patches, **kw)

    monkeypatch.setattr(inductor, "compile_fx", compile_fx)
    m = _hardened_two_linears(0)
    if copies:
        m.__class__ = CopiesHeads
    fast = torch.compile(m, backend="sparseforge", dynamic=False)
    with torch.no_grad():
        for shape in ((1, 32), (8, 32), (2, 3, 32)):
            x = torch.randn(shape)
            torch.testing.assert_close(fast(x), m(x))
    assert seen == [(1, int(copies)), (8, int(copies)), (6, int(copies))]
    assert [p["triton.enable_pdl"] for p in patches] == ([True, False, False] if copies else [True, True, True])


def test_broadcast_copies_counts_grouped_query_attentions_kv_copies():
    """A tiny LLaMA's decode graph with a static cache: grouped-query attention copies K and V to every query
    head (two copies per layer); with as many K/V heads as query heads there is no copy."""
    from transformers import AutoConfig, AutoModelForCausalLM, StaticCache

    from sfcompile.lowering.backend import _broadcast_copies

    counts = {}
    for kv_heads in (2, 4):
        cfg = AutoConfig.for_model("llama", vocab_size=64, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=kv_heads,
                                   attn_implementation="sdpa")
        model = AutoModelForCausalLM.from_config(cfg).eval()
        graphs = []
        torch._dynamo.reset()
        ids = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(0))
        cache = StaticCache(config=cfg, max_cache_len=16)
        with torch.no_grad():
            model(ids, past_key_values=cache, use_cache=True)
            step = torch.compile(model, backend=lambda gm, ex, seen=graphs: seen.append(gm) or gm.forward)
            step(ids[:, :1], past_key_values=cache, use_cache=True, cache_position=torch.tensor([5]))
        counts[kv_heads] = sum(_broadcast_copies(g) for g in graphs)
    assert counts == {2: 4, 4: 0}


def test_entry_point_registration(tmp_path):
    """An installed sfcompile exposes the backend through `torch_dynamo_backends`; Dynamo loads it lazily,
    and importing sfcompile.lowering as well must not make Dynamo's registration fail."""
    dist = tmp_path / "sfcompile_ep-0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: sfcompile-ep\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text(f"[torch_dynamo_backends]\n{ENTRY_POINT}\n")
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(tmp_path)!r}, {str(REPO)!r}]
        import torch
        assert "sparseforge" in torch._dynamo.list_backends()      # discovered, not yet imported
        assert "sfcompile.lowering" not in sys.modules
        import sfcompile.lowering                                   # import after discovery
        from torch._dynamo.backends.registry import lookup_backend
        from sfcompile.lowering.backend import sparseforge
        assert lookup_backend("sparseforge") is sparseforge
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


class TwoLinears(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(32, 32, bias=False)
        self.b = torch.nn.Linear(32, 16, bias=True)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def _hardened_two_linears(seed: int) -> TwoLinears:
    torch.manual_seed(seed)
    m = TwoLinears().eval()
    for name, pattern in (("a.weight", "2:4"), ("b.weight", "block16")):
        param = m.get_parameter(name)
        with torch.no_grad():
            param.mul_(parse_pattern(pattern).project(param.abs(), 1))
        mark_hardened(param, {"pattern": pattern, "k_dim": 1, "kind": "linear", "site": name})
    return m


class CopiesHeads(TwoLinears):
    """TwoLinears whose output is copied to two "heads" by expand + reshape, as ``repeat_kv`` does."""

    def forward(self, x):
        y = super().forward(x)
        return y[..., None, :].expand(*y.shape[:-1], 2, y.shape[-1]).reshape(*y.shape[:-1], 2 * y.shape[-1])


def test_same_structure_other_weights_not_reused():
    """Dynamo would reuse a graph for another module of the same structure; its packed weights must not be."""
    torch._dynamo.reset()
    x = torch.randn(3, 32)
    with torch.no_grad():
        for seed in (0, 1):
            m = _hardened_two_linears(seed)
            torch.testing.assert_close(torch.compile(m, backend="sparseforge")(x), m(x))


def test_recompile_reuses_the_packed_weights():
    """A second graph over the same weights (another batch size) reads the same packed tensors."""
    torch._dynamo.reset()
    m = _hardened_two_linears(0)
    buffers = []

    def hook(gm, report):
        buffers.append({name: buf for name, buf in gm.named_buffers() if name.startswith("_sf_packed_")})

    fast = torch.compile(m, backend="sparseforge", dynamic=False, options={"on_lower": hook})
    with torch.no_grad():
        for rows in (3, 5):
            x = torch.randn(rows, 32)
            torch.testing.assert_close(fast(x), m(x))
    assert len(buffers) == 2 and len(buffers[0]) == 5  # 2:4 values+meta, block16 tiles+row_ptr+col_idx
    assert {id(b) for b in buffers[0].values()} == {id(b) for b in buffers[1].values()}


def test_packed_ops_warmed_before_inductor(monkeypatch):
    """Each packed op runs once at its graph shape before Inductor (CUDA ops build per-weight state on their
    first call, which must not happen inside a CUDA-graph memory pool)."""
    from sfcompile.lowering import ops

    torch._dynamo.reset()
    calls = []
    real = ops._linear_ref
    monkeypatch.setattr(ops, "_linear_ref", lambda x, w, b: calls.append(tuple(x.shape)) or real(x, w, b))
    seen_at_lowering = []
    m = _hardened_two_linears(0)
    fast = torch.compile(m, backend="sparseforge",
                         options={"on_lower": lambda gm, report: seen_at_lowering.append(len(calls))})
    with torch.no_grad():
        fast(torch.randn(3, 32))
    assert seen_at_lowering == [0]
    assert calls == [(3, 32)] * 4  # 2 ops warmed, then 2 ops in the real call


def test_direct_call_without_dynamo_refuses():
    """Outside Dynamo no identity guard can be installed on lifted weights: refuse rather than risk reuse."""
    from sfcompile.lowering.backend import sparseforge

    torch._dynamo.reset()
    m = _hardened_two_linears(0)
    captured = []

    def capture(gm, example_inputs):
        captured.append((gm, list(example_inputs)))
        return gm.forward

    with torch.no_grad():
        torch.compile(m, backend=capture)(torch.randn(3, 32))
    gm, ex = captured[0]
    with pytest.raises(RuntimeError, match="guard on their identity"):
        sparseforge(gm, ex)


def _harden_all(model, pattern: str) -> None:
    params = dict(model.named_parameters())
    for site in discover(model).sites:
        param = params[site.name]
        with torch.no_grad():
            param.mul_(parse_pattern(pattern).project(param.abs(), site.k_dim))
        mark_hardened(param, {"pattern": pattern, "k_dim": site.k_dim, "kind": site.kind, "site": site.name})


@pytest.mark.parametrize("family,pattern", [("llama", "2:4"), ("llama", "block16"), ("qwen2", "2:4")])
def test_fuse_runs_linears_on_one_input_as_one_packed_op(family, pattern):
    # the fuse option (default on): q/k/v and gate/up of each layer read one input: one packed op each (Qwen2's
    # q/k/v biases concatenated too), the output split back; logits as eager. fuse=False: one op per site.
    torch._dynamo.reset()
    cfg = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=128)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(family, **cfg)).eval()
    _harden_all(model, pattern)
    ids = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        eager = model(ids).logits
    seen = []
    fast = torch.compile(model, backend="sparseforge", fullgraph=True,
                         options={"fuse": True, "on_lower": lambda gm, report: seen.append((count_packed_ops(gm),
                                                                                            report))})
    with torch.no_grad():
        got = fast(ids).logits
    torch.testing.assert_close(got, eager, rtol=1e-4, atol=1e-4)
    (count, report), = seen
    assert count == 2 * 4  # per layer: q/k/v, o, gate/up, down
    short = {tuple(s.split(".")[-2] for s in group) for group in report.fused}
    assert short == {("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")} and len(report.fused) == 4
    assert not report.dense and len(report.lowered) == 2 * 7

    torch._dynamo.reset()
    seen.clear()
    separate = torch.compile(model, backend="sparseforge", fullgraph=True,
                             options={"fuse": False, "on_lower": lambda gm, report: seen.append(
                                 (count_packed_ops(gm), report))})
    with torch.no_grad():
        torch.testing.assert_close(separate(ids).logits, eager, rtol=1e-4, atol=1e-4)
    (count, report), = seen
    assert count == 2 * 7 and not report.fused and report.lowered == {s: 1 for s in report.lowered}


def test_block16_frag_option_runs_the_tiles_in_fragment_order():
    # block16_frag=True: every block-16 op (fused or not) reads tiles permuted into fragment_order, told so by
    # its frag keyword; logits as eager (the CPU op undoes the permutation, as every CUDA path reads it)
    from sfcompile.lowering.kernels.block16_mma import fragment_order
    from sfcompile.lowering.pack import pack

    torch._dynamo.reset()
    cfg = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=128)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **cfg)).eval()
    _harden_all(model, "block16")
    ids = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        eager = model(ids).logits
    for fuse in (True, False):
        torch._dynamo.reset()
        graphs = []
        opts = {"block16_frag": True, "fuse": fuse, "on_lower": lambda gm, r, g=graphs: g.append(gm)}
        fast = torch.compile(model, backend="sparseforge", fullgraph=True, options=opts)
        with torch.no_grad():
            torch.testing.assert_close(fast(ids).logits, eager, rtol=1e-4, atol=1e-4)
        (gm,) = graphs
        calls = [n for n in gm.graph.nodes if n.target is torch.ops.sfcompile.linear_block16.default]
        assert len(calls) == (4 if fuse else 7) and all(n.kwargs == {"frag": True} for n in calls)
    # the o_proj's tiles as the graph holds them: its packed row-major tiles, permuted
    o = model.model.layers[0].self_attn.o_proj.weight
    tiles = [getattr(gm, n.args[1].target) for n in calls if n.args[4] == 64 and n.args[5] == 64]
    row_major = pack(o.detach(), "block16", 1).data["tile_values"]
    assert any(torch.equal(t, fragment_order(row_major)) for t in tiles)
    assert not any(torch.equal(t, row_major) for t in tiles)
    with pytest.raises(TypeError, match="block16_frag"):
        BackendOptions.parse(None, {"block16_frag": 1})


def test_fuse_option_is_a_bool():
    assert BackendOptions.parse(None, {"fuse": False}).fuse is False and BackendOptions.parse(None, None).fuse is True
    with pytest.raises(TypeError, match="fuse"):
        BackendOptions.parse(None, {"fuse": "yes"})


def test_hardened_models_generate_through_the_backend(monkeypatch, tmp_path, byte_tokenizer):
    # harden (and load of a hardened folder) set generation_config.compile_config to the backend, so HF's
    # auto-compile of generate(cache_implementation="static") runs the packed ops; a config the user set stays
    from transformers import CompileConfig

    import sfcompile
    import sfcompile.passes.lower as lower

    model = tiny_model("llama")
    sfcompile.sparsify(model, pattern="2:4")
    sfcompile.prune(model, method="magnitude")
    sfcompile.harden(model)
    config = model.generation_config.compile_config
    assert (config.backend, config.mode) == ("sparseforge", "reduce-overhead")

    lowered = []
    real = lower.lower_hardened_matmuls
    monkeypatch.setattr(lower, "lower_hardened_matmuls", lambda *a, **k: lowered.append(real(*a, **k)) or lowered[-1])
    config._compile_all_devices = True     # HF auto-compiles only on accelerators unless told (testing hook)
    torch._dynamo.reset()
    ids = torch.randint(0, 128, (1, 5), generator=torch.Generator().manual_seed(0))
    kwargs = dict(max_new_tokens=3, do_sample=False, pad_token_id=0, cache_implementation="static")
    eager = model.generate(ids, disable_compile=True, **kwargs)
    fast = model.generate(ids, **kwargs)
    assert lowered and lowered[-1].packed_ops > 0, "generate() did not compile through the backend"
    assert torch.equal(fast, eager)

    sfcompile.save(model, byte_tokenizer, tmp_path / "m")
    loaded, _ = sfcompile.load(tmp_path / "m")
    assert loaded.generation_config.compile_config.backend == "sparseforge"

    other = tiny_model("llama")
    other.generation_config.compile_config = CompileConfig(backend="eager")
    sfcompile.sparsify(other, pattern="2:4")
    sfcompile.prune(other, method="magnitude")
    sfcompile.harden(other)
    assert other.generation_config.compile_config.backend == "eager"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (HF auto-compiles generate() on accelerators)")
def test_compiled_hardened_model_generates_through_the_backend_cuda(monkeypatch):
    # the lowering issue's spelling: torch.compile(model, backend=...).generate(..., static cache) reaches
    # HF's auto-compile, which uses the compile_config harden set: packed ops under CUDA graphs, same tokens
    import sfcompile
    import sfcompile.passes.lower as lower

    torch.manual_seed(0)
    cfg = AutoConfig.for_model("llama", hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, vocab_size=256)
    model = AutoModelForCausalLM.from_config(cfg).to("cuda", torch.bfloat16).eval()
    sfcompile.sparsify(model, pattern="2:4")
    sfcompile.prune(model, method="magnitude")
    sfcompile.harden(model)
    lowered = []
    real = lower.lower_hardened_matmuls
    monkeypatch.setattr(lower, "lower_hardened_matmuls", lambda *a, **k: lowered.append(real(*a, **k)) or lowered[-1])
    torch._dynamo.reset()
    ids = torch.randint(0, 256, (1, 8), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    kwargs = dict(max_new_tokens=16, do_sample=False, pad_token_id=0, cache_implementation="static")
    eager = model.generate(ids, disable_compile=True, **kwargs)
    fast = torch.compile(model, backend="sparseforge").generate(ids, **kwargs)
    assert lowered and lowered[-1].packed_ops > 0, "generate() did not compile through the backend"
    assert (fast == eager).float().mean() > 0.9       # bf16: packed and dense kernels may round a tie apart
