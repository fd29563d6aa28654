"""The training loop on a tiny random llama: resume determinism, NaN guard, signals, end-of-run outputs."""

import json
import os
import signal

import pytest
import torch
from _tiny import TEXT, byte_tokenizer, tiny_llama

from sfcompile.masking.forge import ForgeConfig
from sfcompile.masking.hutchinson import spearman
from sfcompile.masking.schedule import TemperingSchedule
from sfcompile.masking.state import dense_weight, masked_sites, sparsify
from sfcompile.train import TrainConfig, train

SEQ, MB = 32, 2


def _config(tmp_path, name, steps, **kw):
    data = tmp_path / "train.txt"
    if not data.exists():
        data.write_text(TEXT)
    forge = ForgeConfig(
        schedule=TemperingSchedule(
            period_early=2, period_late=2, harden_start=0.3, harden_end=0.6, finalize_at=0.8
        ),
        tau_samples=512,
    )
    base = dict(
        tokens=SEQ * MB * 2 * steps,
        data=str(data),
        seqlen=SEQ,
        micro_batch=MB,
        grad_accum=2,
        lr=1e-3,
        warmup=2,
        forge=forge,
        out=str(tmp_path / name),
        eval_text=str(data),
        eval_windows=2,
        log_every=1,
        squarehead_weight=0.5,
        harden=False,
    )
    base.update(kw)
    return TrainConfig(**base)


def _model():
    model = tiny_llama(seed=0)
    sparsify(model, "2:4")
    return model


def _state(model):
    return {
        site.name: (
            dense_weight(module, site.param).detach().clone(),
            soft.mask.detach().clone(),
            soft.hard.detach().clone(),
        )
        for site, module, soft in masked_sites(model)
    }


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    tok = byte_tokenizer()
    straight = _model()
    r = train(straight, _config(tmp_path, "a", 10), tokenizer=tok)
    assert r.steps == 10 and r.stopped is None

    half = _model()
    cfg = _config(tmp_path, "b", 10)
    r1 = train(half, cfg, tokenizer=tok, stop_at=5)
    assert r1.steps == 5 and r1.stopped == "stop_at"
    assert (tmp_path / "b" / "checkpoints" / "step_0000005" / "model.pt").exists()
    resumed = _model()  # a fresh process would rebuild the dense model, then load the checkpoint
    r2 = train(resumed, cfg, tokenizer=tok, resume=True)
    assert r2.steps == 10

    a, b = _state(straight), _state(resumed)
    assert a.keys() == b.keys()
    for name in a:
        for x, y in zip(a[name], b[name]):
            assert torch.equal(x, y), name
    sd_a, sd_b = straight.state_dict(), resumed.state_dict()
    assert sd_a.keys() == sd_b.keys()
    for k in sd_a:
        if isinstance(sd_a[k], torch.Tensor):
            assert torch.equal(sd_a[k], sd_b[k]), k
        else:  # extra state (SoftMask.ste)
            assert sd_a[k] == sd_b[k], k
    assert r.final_loss == r2.final_loss


def test_nan_guard_skips_the_step(tmp_path, monkeypatch):
    tok = byte_tokenizer()
    model = _model()
    w_before = {}
    import sfcompile.train.loop as loop

    real = loop.distillation_loss
    calls = {"n": 0}

    def poisoned(*args, **kw):
        loss, parts = real(*args, **kw)
        calls["n"] += 1
        if calls["n"] in (3, 4):  # both micro-batches of step 1
            loss = loss * float("nan")
        return loss, parts

    monkeypatch.setattr(loop, "distillation_loss", poisoned)
    cfg = _config(tmp_path, "nan", 3, forge=None, init="magnitude")
    for site, module, _ in masked_sites(model):
        w_before[site.name] = dense_weight(module, site.param).detach().clone()
    r = train(model, cfg, tokenizer=tok)
    assert r.skipped_steps == 1
    records = [json.loads(x) for x in (tmp_path / "nan" / "log.jsonl").read_text().splitlines()]
    skips = [x for x in records if x["kind"] == "skip"]
    assert len(skips) == 1 and skips[0]["step"] == 1
    for site, module, _ in masked_sites(model):  # the other steps did train, and no NaN got in
        w = dense_weight(module, site.param)
        assert torch.isfinite(w).all()
        assert not torch.equal(w, w_before[site.name])


def test_sigterm_checkpoints_and_returns_143(tmp_path, monkeypatch):
    tok = byte_tokenizer()
    model = _model()
    import sfcompile.train.loop as loop

    real = loop.lr_at

    def lr_then_signal(step, **kw):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-step; the step must still finish
        return real(step, **kw)

    monkeypatch.setattr(loop, "lr_at", lr_then_signal)
    cfg = _config(tmp_path, "sig", 6)
    r = train(model, cfg, tokenizer=tok)
    assert r.stopped == "SIGTERM" and r.exit_code == 143 and r.steps == 3
    assert (tmp_path / "sig" / "checkpoints" / "latest").read_text() == "step_0000003"
    assert signal.getsignal(signal.SIGTERM) is not None  # handler restored (not ours)


def test_end_of_run_outputs_and_hardened_model(tmp_path, capsys):
    tok = byte_tokenizer()
    model = _model()
    cfg = _config(tmp_path, "end", 6, harden=True)
    r = train(model, cfg, tokenizer=tok)
    # the run says when its masks freeze: finalize_at 0.8 of 6 steps (step 5) of 2 x MB x SEQ tokens
    err = capsys.readouterr().err
    assert f"masks: explored until step 5 of 6 ({5 * 2 * MB * SEQ:,} tokens, finalize_at=0.8), then frozen" in err
    assert "loss: chunked PyTorch (loss_kernel='auto')" in err  # "auto" off CUDA
    out = tmp_path / "end"
    assert r.final_path == out / "final" and (out / "final" / "sparsity.json").exists()
    assert not masked_sites(model) and model.sfcompile_manifest["pattern"] == "2:4"
    for name in ("curves.png", "summary.md", "log.jsonl", "train_config.json"):
        assert (out / name).exists(), name
    assert set(r.ppl) == {0, 6}
    q = model.model.layers[0].self_attn.q_proj.weight
    assert ((q.reshape(-1, 4) != 0).sum(-1) <= 2).all()


def test_a_faded_bypass_leaves_the_trained_model_without_one(tmp_path, capsys):
    import dataclasses

    import sfcompile
    from sfcompile.eval.perplexity import perplexity
    from sfcompile.train.runlog import read_history

    tok = byte_tokenizer()
    model = _model()
    cfg = _config(tmp_path, "fade", 10, harden=True)
    schedule = dataclasses.replace(cfg.forge.schedule, slorb_fade_start=0.8)
    cfg = dataclasses.replace(cfg, forge=dataclasses.replace(cfg.forge, schedule=schedule))
    r = train(model, cfg, tokenizer=tok)
    assert "the bypass fades from step 8 to 0 at step 10" in capsys.readouterr().err
    gains = {row["step"]: row["slorb_gain"] for row in read_history(tmp_path / "fade") if "slorb_gain" in row}
    assert gains[6] == gains[8] == 1.0 and gains[9] == 0.5 and gains[10] == 0.0  # logged by completed steps
    assert "slorb" not in model.sfcompile_manifest
    assert not any(hasattr(m, "slorb_S") for m in model.modules())
    # the model it returns (and saved) computes what the final evaluation measured with the bypass at gain 0
    ppl = perplexity(model.eval(), tok, cfg.eval_text, seqlen=SEQ, max_windows=cfg.eval_windows,
                     batch_size=MB, progress=False)
    assert ppl == pytest.approx(r.ppl[10], rel=1e-5)
    loaded, _ = sfcompile.load(r.final_path)
    assert not any(k.endswith("slorb_S") for k in loaded.state_dict())
    assert "slorb" not in loaded.sfcompile_manifest


@pytest.mark.parametrize("grad_accum,estimator", [(2, "fd"), (1, "fd_forward")])
def test_compiled_student_trains_like_eager(tmp_path, monkeypatch, grad_accum, estimator):
    # The student (and teacher) forwards and the finite-difference probe's passes go through torch.compile;
    # masks, weights and Hessian statistics end as in eager. aot_eager keeps the test fast on CPU while still
    # running Dynamo + AOTAutograd over the soft-masked weights. The default estimator ("auto") runs central
    # differences with grad_accum=2 and the one-pass "fd_forward" with grad_accum=1.
    import functools

    from torch._dynamo.backends.debugging import aot_eager

    import sfcompile.train.loop as loop

    graphs = []  # (grad enabled, nodes) of every graph compiled; tiny ones are HF's decorator frames

    def backend(gm, example_inputs):
        graphs.append((torch.is_grad_enabled(), len(gm.graph.nodes)))
        return aot_eager(gm, example_inputs)

    monkeypatch.setattr(loop.torch, "compile", functools.partial(torch.compile, backend=backend))
    # an earlier test's graphs of a same-shaped masked model pass this one's guards (the masked classes are
    # shared across instances): start from an empty cache so the graphs counted are this run's
    torch._dynamo.reset()
    tok = byte_tokenizer()
    results = {}
    hdiag = {}
    for compiled in (False, True):
        model = _model()
        r = train(model, _config(tmp_path, f"c{compiled}", 6, compile=compiled, grad_accum=grad_accum,
                                 tokens=SEQ * MB * grad_accum * 6), tokenizer=tok)
        results[compiled] = (r, _state(model))
        hdiag[compiled] = [soft.sf_hdiag.detach().clone() for _, _, soft in masked_sites(model)]
    assert results[True][0].compiled == ["student forward", "teacher forward", f"Hessian probe ({estimator})"]
    # one graph for the student (training steps, probes, finalisation) and one for the no-grad teacher:
    # the probe's m_eff writes change values, not guards, finalisation masks gradients outside the graph (no
    # ste switch), and the probe's
    # precision is told, not found by a no-grad pass of the student
    model_graphs = [grad for grad, nodes in graphs if nodes > 50]
    assert sorted(model_graphs) == [False, True], graphs
    assert results[False][0].compiled == []
    for name, (w, m, h) in results[False][1].items():
        w2, m2, h2 = results[True][1][name]
        torch.testing.assert_close(w2, w, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(m2, m, rtol=1e-4, atol=1e-5)
        assert torch.equal(h2, h)
    assert any(bool(h.abs().sum() > 0) for h in hdiag[False])  # the probes ran
    for h, h2 in zip(hdiag[False], hdiag[True]):
        torch.testing.assert_close(h2, h, rtol=1e-3, atol=1e-6)


def test_init_keep_trains_from_the_callers_masks(tmp_path):
    import copy

    import pytest

    from sfcompile.masking.oneshot import prune

    model = _model()
    dense = copy.deepcopy(model)
    with pytest.raises(ValueError, match="prune nothing"):
        train(model, _config(tmp_path, "k0", 2, init="keep", forge=None), teacher=dense, tokenizer=byte_tokenizer())
    prune(model, "magnitude")
    chosen = {site.name: soft.hard.detach().clone() for site, _, soft in masked_sites(model)}
    with pytest.raises(ValueError, match="no teacher"):
        train(model, _config(tmp_path, "k1", 2, init="keep", forge=None), tokenizer=byte_tokenizer())
    result = train(
        model, _config(tmp_path, "k2", 2, init="keep", forge=None, harden=False), teacher=dense,
        tokenizer=byte_tokenizer(),
    )
    for site, _, soft in masked_sites(model):  # fixed masks: exactly the caller's
        assert torch.equal(soft.hard, chosen[site.name])
    # without a forge the log's sparsity is counted from the masks themselves (2:4 on every site: one half)
    logged = [h["sparsity"] for h in result.history if h.get("kind") == "train"]
    assert logged and all(v == 0.5 for v in logged)


def test_training_forwards_build_no_kv_cache(tmp_path):
    # HF models build a K/V cache by default: the student, teacher, probe and evaluation forwards must not
    seen = []

    def record(module, args, kwargs):
        seen.append((torch.is_grad_enabled(), kwargs.get("use_cache")))

    model = _model()
    model.register_forward_pre_hook(record, with_kwargs=True)   # deep-copied into the teacher too
    train(model, _config(tmp_path, "nocache", 4), tokenizer=byte_tokenizer())
    grad = [u for g, u in seen if g]
    no_grad = [u for g, u in seen if not g]
    assert len(grad) >= 4 * 2 and len(no_grad) >= 4 * 2          # student and teacher, every micro-batch
    assert all(u is False for u in grad + no_grad), seen


def test_probe_rows_limits_the_probe_to_the_first_sequences(tmp_path):
    # the probe's two passes (estimator "fd") see probe_rows sequences, with the teacher logits and hidden
    # states (SquareHead is on in _config) cut to the same rows; the training forwards keep the whole batch
    shapes = []

    def record(module, args, kwargs):
        ids = args[0] if args else kwargs["input_ids"]
        shapes.append((torch.is_grad_enabled(), tuple(ids.shape)))

    model = _model()
    model.register_forward_pre_hook(record, with_kwargs=True)
    result = train(model, _config(tmp_path, "probe_rows", 4, probe_rows=1), tokenizer=byte_tokenizer())
    train_rows = [s[0] for g, s in shapes if g and s[0] == MB]
    probe_rows = [s[0] for g, s in shapes if g and s[0] == 1]
    assert len(train_rows) == 4 * 2                      # 4 steps x 2 micro-batches, whole batch each
    assert len(probe_rows) >= 2 and len(probe_rows) % 2 == 0, shapes   # two passes per probe, one row each
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history if h.get("kind") == "train")


def test_moe_experts_are_sparsified_and_trained_routers_stay_dense(tmp_path, tiny_model):
    # transformers 5 grouped experts (3-D weights): soft masks, Hessian probes and mask updates per expert,
    # training moves them, hardening gives every expert exact 2:4; the router is not a site and stays dense
    model = tiny_model("qwen3_moe", vocab_size=257, max_position_embeddings=256)
    sparsify(model, "2:4")
    experts = [(site, module) for site, module, _ in masked_sites(model) if dense_weight(module, site.param).dim() == 3]
    assert len(experts) == 4, [s.name for s, _, _ in masked_sites(model)]   # gate_up and down of both layers
    assert not any(".mlp.gate." in s.name for s, _, _ in masked_sites(model))   # the router is no site
    router = model.model.layers[0].mlp.gate.weight.detach().clone()
    before = {site.name: dense_weight(module, site.param).detach().clone() for site, module in experts}
    r = train(model, _config(tmp_path, "moe", 6, harden=True, squarehead_weight=0.0), tokenizer=byte_tokenizer())
    assert r.steps == 6
    for site, module in experts:
        w = getattr(module, site.param)
        assert w.dim() == 3 and not torch.equal(w.detach(), before[site.name]), site.name
        groups = w.detach().movedim(site.k_dim, -1).reshape(-1, 4)   # groups of 4 along each expert's K
        assert ((groups != 0).sum(-1) <= 2).all(), site.name
    assert (model.model.layers[0].mlp.gate.weight != 0).float().mean() > 0.99   # dense
    assert not torch.equal(model.model.layers[0].mlp.gate.weight.detach(), router)  # ... and trained


def test_fd_forward_probes_with_one_pass_from_the_step_gradient(tmp_path):
    # estimator "fd_forward" differences against the gradient the step computed: one grad-enabled pass per
    # probe where "fd" runs two, and the Hessian EMA it builds ranks like the central one's (and the exact one's)
    passes, hdiag = {}, {}
    for estimator in ("fd", "fd_forward", "hvp"):
        grad_calls = []

        def record(module, args, kwargs, calls=grad_calls):
            calls.append(torch.is_grad_enabled())

        model = _model()
        model.register_forward_pre_hook(record, with_kwargs=True)
        forge = ForgeConfig(
            estimator=estimator,
            schedule=TemperingSchedule(period_early=2, period_late=2, harden_start=0.3, harden_end=0.6,
                                       finalize_at=0.8),
            tau_samples=512,
        )
        train(model, _config(tmp_path, estimator, 4, grad_accum=1, forge=forge), tokenizer=byte_tokenizer(),
              stop_at=1)
        passes[estimator] = sum(grad_calls) - 1  # less the one training forward
        hdiag[estimator] = torch.cat([s.sf_hdiag.reshape(-1) for _, _, s in masked_sites(model)])
    assert passes == {"fd": 2, "fd_forward": 1, "hvp": 1}
    assert hdiag["fd_forward"].abs().sum() > 0
    assert spearman(hdiag["fd_forward"], hdiag["fd"]) > 0.9
    # the exact probe differentiates the trainer's loss twice (its twice-differentiable form) and agrees
    assert spearman(hdiag["hvp"], hdiag["fd"]) > 0.9


def test_the_compile_mode_reaches_torch_compile(monkeypatch):
    import sfcompile.train.loop as loop

    modes = []
    monkeypatch.setattr(loop.torch, "compile", lambda module, mode=None: modes.append(mode) or module)
    compiled = []
    module = torch.nn.Linear(2, 2)
    assert loop._compile(module, "student forward", compiled, None) is module
    assert loop._compile(module, "teacher forward", compiled, None, "reduce-overhead") is module
    assert modes == [None, "reduce-overhead"] and compiled == ["student forward", "teacher forward"]


class _GraphsLikeCompile:
    """What CUDA graphs (cudagraph trees) do to a training loop, on the CPU: every call of a "compiled" module
    writes NaN over the outputs of the call before it, and over the gradients that call's backward handed to
    ``.grad`` (autograd stores the backward's output buffer itself as ``.grad`` when it finds none)."""

    def __init__(self, model):
        import weakref

        self.ref, self.previous, self.was_none = weakref.ref, [], {}
        self.params = [p for p in model.parameters() if p.requires_grad]
        for p in self.params:
            p.register_post_accumulate_grad_hook(self._grad_written)

    def _grad_written(self, p):
        if self.was_none.get(id(p)):
            self.previous.append(self.ref(p.grad))

    def __call__(self, module, what, compiled, log, mode="default"):
        def call(*args, **kwargs):
            with torch.no_grad():
                for r in self.previous:
                    if r() is not None:
                        r().data.fill_(float("nan"))
            out = module(*args, **kwargs)
            self.was_none = {id(p): p.grad is None for p in self.params}
            tensors = [v for v in out.values() if isinstance(v, torch.Tensor)]
            tensors += [t for v in out.values() if isinstance(v, tuple) for t in v if isinstance(t, torch.Tensor)]
            self.previous = [self.ref(t) for t in tensors]
            return out

        compiled.append(what)
        return call


# accum 2: the central "fd" probe; 1: "fd_forward", which reuses the step's gradient; SquareHead: the teacher's
# hidden states, read after the student's forward, must be out of the graphs' memory too
@pytest.mark.parametrize("accum,squarehead", [(2, 0.0), (1, 0.0), (1, 1.0)])
def test_a_run_under_cuda_graph_semantics_trains_like_eager(tmp_path, monkeypatch, accum, squarehead):
    # compile_mode="reduce-overhead" on the CPU, with torch.compile replaced by _GraphsLikeCompile: the
    # teacher's outputs (overwritten by the student's forward) and the gradients (overwritten by the next
    # micro-batch's teacher and by the Hessian probe) are copied out in time, so the run ends as in eager;
    # without either copy it goes wrong (NaN steps skipped, NaN Hessian statistics: the run stops or diverges)
    import sfcompile.train.loop as loop
    from sfcompile.masking.config import ForgeConfigError
    from sfcompile.masking.scores import ScoreError

    tok = byte_tokenizer()
    eager = _model()
    train(eager, _config(tmp_path, "eager", 6, grad_accum=accum, squarehead_weight=squarehead), tokenizer=tok)

    def like_eager(name):
        model = _model()
        with monkeypatch.context() as m:
            m.setattr(loop, "_compile", _GraphsLikeCompile(model))
            if name == "no teacher copy":
                m.setattr(loop, "_out_of_graphs", lambda out: out)
            if name == "logits copied alone":
                m.setattr(loop, "_out_of_graphs", lambda out: type(out)(
                    **{k: v.clone() if k == "logits" else v for k, v in out.items()}))
            if name == "no gradient copies":
                m.setattr(loop.dist.Stepper, "_own_grads", lambda self: None)
            cfg = _config(tmp_path, name.replace(" ", "_"), 6, compile=True, grad_accum=accum,
                          squarehead_weight=squarehead)
            object.__setattr__(cfg, "compile_mode", "reduce-overhead")  # past the check that wants CUDA
            try:
                r = train(model, cfg, tokenizer=tok)
            except (ForgeConfigError, ScoreError) as err:  # every step skipped / NaN statistics: stopped loudly
                assert "needs Hessian probes" in str(err) or "gave NaN soft masks" in str(err)
                return False
        probe = "fd_forward" if accum == 1 else "fd"
        assert r.compiled == ["student forward", "teacher forward", f"Hessian probe ({probe})"]
        return all(torch.equal(a, b) for (a, *_), (b, *_) in zip(_state(model).values(), _state(eager).values()))

    assert like_eager("graphs")
    assert not like_eager("no teacher copy")
    assert not like_eager("no gradient copies")
    assert like_eager("logits copied alone") == (squarehead == 0)  # SquareHead reads the hidden states too


def _graphs_runs(tmp_path, modes):
    """Train the tiny model on CUDA in fp32 once per mode ("eager" or a torch.compile mode): (final state, result)."""
    tok = byte_tokenizer()
    runs = {}
    for mode in modes:
        torch._dynamo.reset()
        model = _model().cuda()
        kw = dict(compile=True, compile_mode=mode) if mode != "eager" else {}
        r = train(model, _config(tmp_path, mode, 6, device="cuda", dtype="fp32", **kw), tokenizer=tok)
        runs[mode] = (_state(model), r)
    return runs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_student_under_cuda_graphs_trains_like_eager(tmp_path):
    # compile_mode="reduce-overhead": the compiled forwards and backward replayed as CUDA graphs (soft-mask
    # updates, probes and finalisation write into the graphs' static tensors in place). Against the default
    # compile mode (the same Inductor kernels, no graphs) the run ends with the same masks and weights; against
    # eager only up to rounding: the compiled kernels round differently (the finite-difference Hessian probe
    # likely magnifies that) and entries at the selection threshold flip (H200: 98.3% of the hard masks agree after 6
    # steps, weights differ by up to 0.067), so there the check is on mask agreement and the loss
    runs = _graphs_runs(tmp_path, ("eager", "default", "reduce-overhead"))
    (graphs, r), (default, _), (eager, r_eager) = (runs[m] for m in ("reduce-overhead", "default", "eager"))
    assert r.compiled[:2] == ["student forward", "teacher forward"] and r.skipped_steps == 0
    for name, (w, m, hard) in default.items():  # bit for bit on the H200 (graphs_diag.txt, session 25)
        w2, m2, hard2 = graphs[name]
        assert torch.equal(hard2, hard) and torch.equal(m2, m) and torch.equal(w2, w), name
    agree = sum(int((graphs[n][2] == h).sum()) for n, (_, _, h) in eager.items()) / sum(
        h.numel() for _, _, h in eager.values())
    assert agree > 0.97, agree
    assert abs(r.final_loss - r_eager.final_loss) < 0.01 * r_eager.final_loss
    assert abs(r.ppl[6] - r_eager.ppl[6]) < 0.02 * r_eager.ppl[6]


def test_sfcompile_train_is_callable_however_it_was_imported(tmp_path):
    # the documented call sfcompile.train(model, config): Python binds the imported subpackage sfcompile.train
    # as the package's attribute (this file imported it), so the subpackage itself must call train
    import types

    import sfcompile
    import sfcompile.train

    assert isinstance(sfcompile.train, types.ModuleType) and callable(sfcompile.train)
    r = sfcompile.train(_model(), _config(tmp_path, "api", 4), tokenizer=byte_tokenizer())
    assert isinstance(r, sfcompile.train.TrainResult) and r.steps == 4
    assert sfcompile.TrainConfig is sfcompile.train.TrainConfig


def test_run_reports_its_passes_over_the_data_and_warns_past_three(tmp_path, capsys):
    from sfcompile.train.data import text_shard
    from sfcompile.train.loop import DATA_PASSES_WARN

    tok = byte_tokenizer()
    cfg = _config(tmp_path, "short", 6)
    unique = len(text_shard(cfg.data, tok, tmp_path / "short" / "cache")) // SEQ * SEQ
    for name, steps in (("short", 6), ("long", -(-int(DATA_PASSES_WARN * unique) // (2 * MB * SEQ)) + 1)):
        cfg = _config(tmp_path, name, steps)
        train(_model(), cfg, tokenizer=tok, stop_at=1)
        info = [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
        row = next(r for r in info if "data_passes" in r)
        assert row["data_tokens"] == unique
        assert row["data_passes"] == pytest.approx(steps * 2 * MB * SEQ / unique)
        err = capsys.readouterr().err
        assert f"the run reads them {row['data_passes']:.2f} times" in err
        assert ("more than 3 passes" in err) == (name == "long"), err


def test_triton_loss_kernel_trains_like_the_chunked_loss(tmp_path):
    # loss_kernel="triton" (here through Triton's interpreter) gives the same losses, and so the same run
    tok = byte_tokenizer()
    runs = {}
    for kernel in ("torch", "triton"):
        cfg = _config(tmp_path, kernel, 4, loss_kernel=kernel, squarehead_weight=0.0)
        train(_model(), cfg, tokenizer=tok)
        rows = [json.loads(line) for line in (tmp_path / kernel / "log.jsonl").read_text().splitlines()]
        runs[kernel] = [(r["loss"], r["ce"], r["kl"]) for r in rows if r["kind"] == "train"]
    assert len(runs["torch"]) == len(runs["triton"]) == 4
    # the first step's loss from the same weights: equal to fp32 rounding (the KL is a small difference of logs)
    assert runs["triton"][0] == pytest.approx(runs["torch"][0], rel=1e-6, abs=1e-6)
    assert runs["triton"][1] == pytest.approx(runs["torch"][1], rel=1e-6, abs=1e-6)
    # later steps start from weights that differ by that rounding, amplified by each update: Adam's first updates
    # are ~lr * sign(g) per entry, so an entry whose gradient is at rounding level moves by lr either way, and how
    # far the runs drift depends on the CPU's rounding (CI passed at abs 1e-4; this 2-core machine's step-3 KL
    # differs by 2.4e-4). The kernel's gradient itself is checked against float64 in test_losses.py.
    for a, b in zip(runs["torch"], runs["triton"]):
        assert a[:2] == pytest.approx(b[:2], rel=1e-3)  # loss and CE
        assert a[2] == pytest.approx(b[2], abs=1e-3)  # the KL, ~0.005 by step 4


def test_fused_adam_trains_like_foreach_and_resumes_exactly(tmp_path):
    # adam_impl="fused" through the whole trainer: the same losses as the default to float rounding, and a run
    # stopped and resumed with it ends exactly where the uninterrupted one does (its step counters live on the
    # parameters' device, which the checkpoint must carry)
    tok = byte_tokenizer()
    losses = {}
    for impl in ("foreach", "fused"):
        train(_model(), _config(tmp_path, impl, 6, adam_impl=impl), tokenizer=tok)
        rows = [json.loads(line) for line in (tmp_path / impl / "log.jsonl").read_text().splitlines()]
        losses[impl] = [r["loss"] for r in rows if r["kind"] == "train"]
    assert len(losses["fused"]) == 6
    assert losses["fused"] == pytest.approx(losses["foreach"], rel=1e-3)
    cfg = _config(tmp_path, "fused_resumed", 6, adam_impl="fused")
    train(_model(), cfg, tokenizer=tok, stop_at=3)
    resumed = _model()
    r = train(resumed, cfg, tokenizer=tok, resume=True)
    rows = [json.loads(line) for line in (tmp_path / "fused_resumed" / "log.jsonl").read_text().splitlines()]
    assert r.steps == 6 and [x["loss"] for x in rows if x["kind"] == "train"][-3:] == losses["fused"][-3:]


def test_the_teacher_data_options_reach_the_sampler(tmp_path, monkeypatch):
    # teacher_data_kv_cache / _attention / _precision as the run's config says (the sampling itself, stubbed here,
    # is tested in test_data.py and test_sampler.py)
    import sfcompile.train.loop as loop

    seen = {}

    class Stop(Exception):
        pass

    def shard(teacher, tok, cache, **kw):
        seen.update(kw)
        raise Stop

    monkeypatch.setattr(loop, "teacher_shard", shard)
    cfg = _config(tmp_path, "t", 6, data="teacher", teacher_data_kv_cache="packed-graph",
                  teacher_data_attention="triton")
    with pytest.raises(Stop):
        train(_model(), cfg, tokenizer=byte_tokenizer())
    assert (seen["kv_cache"], seen["attention"], seen["bf16"]) == ("packed-graph", "triton", False)
    with pytest.raises(Stop):  # the defaults: each resolved where the sampling runs (test_data.py)
        train(_model(), _config(tmp_path, "d", 6, data="teacher"), tokenizer=byte_tokenizer())
    assert (seen["kv_cache"], seen["attention"]) == ("auto", "auto")
