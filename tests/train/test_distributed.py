"""FSDP2 on 2 CPU processes (gloo) against 1 process: same losses, masks and hardened weights; a sharded
checkpoint written by 2 ranks resumes on 1; helpers are the identity in one process; bad world sizes refused.
"""

from __future__ import annotations

import json

import pytest
import torch
from _dist import run_ranks
from _tiny import TEXT, byte_tokenizer, tiny_llama

from sfcompile.masking import shards
from sfcompile.masking.forge import ForgeConfig
from sfcompile.masking.schedule import TemperingSchedule
from sfcompile.masking.state import masked_sites, sparsify
from sfcompile.masking.tempering import sample_generator, sampled_quantile
from sfcompile.train import TrainConfig, train
from sfcompile.train import distributed as dist

SEQ, MB, STEPS = 32, 2, 8  # MB = the global micro-batch: 2 ranks read MB // 2 each


def _config(root, name, world, **kw):
    data = root / "train.txt"
    if not data.exists():
        data.write_text(TEXT)
    forge = ForgeConfig(
        schedule=TemperingSchedule(
            period_early=2, period_late=2, harden_start=0.3, harden_end=0.6, finalize_at=0.8
        ),
        score="magnitude",  # exact comparison: no finite-difference noise (see the hessian test below)
        tau_samples=512,  # below most sites' sizes: the sampled τ path runs too
    )
    base = dict(
        tokens=SEQ * MB * 2 * STEPS,
        data=str(data),
        seqlen=SEQ,
        micro_batch=MB // world,
        grad_accum=2,
        lr=1e-3,
        warmup=2,
        forge=forge,
        out=str(root / name),
        eval_text=str(data),
        eval_windows=2,
        log_every=1,
        # SquareHead normalises by the teacher's mean square over the micro-batch, so 2 ranks × b rows and
        # 1 rank × 2b rows are different losses; the comparison runs without it (see the scale report)
        squarehead_weight=0.0,
        harden=True,
        device="cpu",
        dtype="fp32",
    )
    base.update(kw)
    return TrainConfig(**base)


def _model():
    model = tiny_llama(seed=0)
    sparsify(model, "2:4")
    return model


PROBE_IDS = torch.randint(0, 257, (2, SEQ), generator=torch.Generator().manual_seed(1))


def _probe(model, ids, estimator="fd"):
    """One Hutchinson finite-difference probe of every site (the forge's generators), on ``ids``; for
    "fd_forward" after a training step's backward on ``ids`` (its gradient is g(W))."""
    from sfcompile.masking import hutchinson
    from sfcompile.masking.scores import local
    from sfcompile.masking.state import dense_weight

    entries = masked_sites(model)
    gens = [sample_generator(0, 0, 1_000 + i) for i in range(len(entries))]
    loss = lambda: model(ids, labels=ids).loss  # noqa: E731
    base = rng = None
    if estimator == "fd_forward":
        rng = hutchinson.rng_state()
        loss().backward()
        base = [local(dense_weight(m, s.param).grad) for s, m, _ in entries]
    diag = hutchinson.estimate_diag(model, entries, loss, estimator=estimator, generators=gens,
                                    base_grads=base, rng=rng)
    model.zero_grad(set_to_none=True)
    return [d.clone() for d in diag]


def _two_rank_runs(rank, root):
    # the Hessian probe on FSDP2 shards: each rank its half of the batch, its rows of the probe
    model = _model()
    dist.wrap_model(model, _config(root, "probe", 2))
    rows = [shards.row_range(soft.mask) for _, _, soft in masked_sites(model)]
    torch.save({"diag": _probe(model, PROBE_IDS[rank : rank + 1]), "rows": rows}, root / f"probe{rank}.pt")
    torch.save(_probe(model, PROBE_IDS[rank : rank + 1], "fd_forward"), root / f"probe_fwd{rank}.pt")
    # a no-grad forward between backward and the update (evaluation, the probe's precision check) must not
    # leave the root's parameters gathered: the next forward has to see the updated shards
    model(PROBE_IDS[rank : rank + 1], labels=PROBE_IDS[rank : rank + 1]).loss.backward()
    with torch.no_grad():
        model(PROBE_IDS[rank : rank + 1])
        model.get_output_embeddings().weight.to_local().zero_()  # an "optimizer step" on the head's shard
        loss = float(model(PROBE_IDS[rank : rank + 1], labels=PROBE_IDS[rank : rank + 1]).loss)
    torch.save(loss, root / f"zero_head{rank}.pt")
    # blocks kept gathered from forward to backward (reshard_after_forward=False): a no-grad forward (no
    # backward follows) must not leave them gathered when the probe writes into the shards
    model = _model()
    dist.wrap_model(model, _config(root, "probe_keep", 2, reshard_after_forward=False))
    with torch.no_grad():
        model(PROBE_IDS[rank : rank + 1])
    torch.save(_probe(model, PROBE_IDS[rank : rank + 1]), root / f"probe_keep{rank}.pt")
    tok = byte_tokenizer()
    # with activation checkpointing (recomputation is exact: the 1-rank reference runs without it)
    r = train(_model(), _config(root, "two", 2, activation_checkpointing=True), tokenizer=tok)
    assert r.steps == STEPS and r.final_path is not None if rank == 0 else r.final_path is None
    # FSDP2 blocks kept gathered from forward to backward (no second all-gather): the same numbers
    train(_model(), _config(root, "keep", 2, reshard_after_forward=False), tokenizer=tok)
    # torch's fused AdamW on the FSDP2 shards (DTensor parameters): the same numbers
    train(_model(), _config(root, "fused", 2, adam_impl="fused"), tokenizer=tok)
    r = train(_model(), _config(root, "half", 2), tokenizer=tok, stop_at=STEPS // 2)
    assert r.stopped == "stop_at"


def _losses(run):
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    return [x["loss"] for x in rows if x["kind"] == "train"]


def _final(run):
    from safetensors.torch import load_file

    return load_file(str(run / "final" / "model.safetensors"))


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The 2-process runs (one spawn for all tests of this file): their root folder."""
    root = tmp_path_factory.mktemp("two_ranks")
    run_ranks(_two_rank_runs, 2, root)
    return root


def test_two_ranks_equal_one_rank_and_resume_on_one(two_ranks):
    tmp_path = two_ranks
    tok = byte_tokenizer()
    train(_model(), _config(tmp_path, "one", 1), tokenizer=tok)
    ckpt = tmp_path / "half" / "checkpoints" / f"step_{STEPS // 2:07d}"
    assert (ckpt / "dcp" / ".metadata").exists() and not (ckpt / "model.pt").exists()
    r = train(_model(), _config(tmp_path, "half", 1), tokenizer=tok, resume=True)  # 2-rank ckpt, 1 rank
    assert r.steps == STEPS

    one, two, keep = _losses(tmp_path / "one"), _losses(tmp_path / "two"), _losses(tmp_path / "keep")
    fused = _losses(tmp_path / "fused")
    assert len(one) == len(two) == len(keep) == len(fused) == STEPS
    torch.testing.assert_close(torch.tensor(fused), torch.tensor(one), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(two), torch.tensor(one), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(keep), torch.tensor(one), rtol=1e-4, atol=1e-5)
    resumed = _losses(tmp_path / "half")  # its log holds both halves
    torch.testing.assert_close(
        torch.tensor(resumed[-STEPS // 2 :]), torch.tensor(one[-STEPS // 2 :]), rtol=1e-4, atol=1e-5
    )

    a, b, c = _final(tmp_path / "one"), _final(tmp_path / "two"), _final(tmp_path / "half")
    d = _final(tmp_path / "keep")
    assert a.keys() == b.keys() == c.keys() == d.keys()
    sites = [k for k in a if k.endswith("proj.weight")]
    assert sites
    lr = 1e-3
    for other in (b, c, d):
        # Gradients agree to float rounding (one GEMM over 2b rows vs two over b, averaged); Adam turns a
        # near-zero gradient's rounding into a ±lr step, so a handful of entries differ by ~lr, the rest agree
        # to 1e-4.
        off = total = 0
        for k in a:
            diff = (other[k] - a[k]).abs()
            assert float(diff.max()) <= 2 * lr, k
            off, total = off + int((diff > 1e-4).sum()), total + diff.numel()
        assert off <= 1e-3 * total, (off, total)
    for k in sites:  # the masks: the same 2:4 zeros
        assert torch.equal(b[k] == 0, a[k] == 0), k
        assert torch.equal(c[k] == 0, a[k] == 0), k
        assert torch.equal(d[k] == 0, a[k] == 0), k
        assert float((a[k] == 0).float().mean()) == pytest.approx(0.5, abs=0.01)


def test_hessian_probe_on_two_ranks_equals_one_process(two_ranks):
    # "fd" and "fd_forward" (which reads the step's reduce-scattered gradient as g(W)) on FSDP2 shards
    root = two_ranks
    full, full_fwd = _probe(_model(), PROBE_IDS), _probe(_model(), PROBE_IDS, "fd_forward")
    for rank in (0, 1):
        got = torch.load(root / f"probe{rank}.pt")
        assert len(got["diag"]) == len(full)
        kept = torch.load(root / f"probe_keep{rank}.pt")
        fwd = torch.load(root / f"probe_fwd{rank}.pt")
        for d, k, f, (start, stop), ref, ref_f in zip(got["diag"], kept, fwd, got["rows"], full, full_fwd):
            torch.testing.assert_close(d, ref[start:stop], rtol=1e-3, atol=1e-3 * float(ref.abs().max()))
            torch.testing.assert_close(k, ref[start:stop], rtol=1e-3, atol=1e-3 * float(ref.abs().max()))
            torch.testing.assert_close(f, ref_f[start:stop], rtol=1e-3, atol=1e-3 * float(ref_f.abs().max()))


def test_updates_after_a_no_grad_forward_are_seen(two_ranks):
    import math

    for rank in (0, 1):  # a zero head gives uniform logits: loss = log(vocab)
        assert torch.load(two_ranks / f"zero_head{rank}.pt") == pytest.approx(math.log(257), rel=1e-5)


def test_helpers_are_the_identity_in_one_process():
    assert dist.world_size() == 1 and dist.rank() == 0 and dist.is_main_process()
    assert dist.all_reduce_mean(2.5) == 2.5
    t = torch.arange(4.0)
    assert dist.all_reduce_mean(t) is t
    assert dist.any_rank(True) and not dist.any_rank(False)
    model = _model()
    assert dist.wrap_model(model, _config_stub()) is model
    assert not dist.is_sharded(model)
    assert dist.full_model(model) is model
    z = torch.randn(64, 48)
    for n in (512, 10_000):  # sampled and exact paths: equal to tempering's
        assert shards.sampled_quantile(z, z, 0.5, n, sample_generator(0, 3, 1)) == sampled_quantile(
            z, 0.5, n, sample_generator(0, 3, 1)
        )
    assert shards.local_rows(z, z) is z and shards.row_range(z) == (0, 64)



def test_stepper_clips_like_torch_in_one_process():
    # the one-process path of Stepper (FSDP2's sharded one is checked by the 2-rank = 1-rank test above)
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(8, 4)) for _ in range(3)] + [torch.nn.Parameter(torch.randn(5))]
    for p in params:
        p.grad = torch.randn_like(p) * 3
    ref = [p.grad.clone() for p in params]
    norm = torch.nn.utils.get_total_norm(ref)
    expected = [g * min(1.0, 1.0 / (float(norm) + 1e-6)) for g in (p.grad.clone() for p in params)]

    class NoStep:
        def step(self):
            pass

    st = dist.Stepper(NoStep(), params)
    got = st.grad_norm()
    assert torch.allclose(got, norm)
    st.step(1.0, got)
    for p, e in zip(params, expected):
        assert torch.allclose(p.grad, e, rtol=1e-6, atol=0)
    assert float(torch.nn.utils.get_total_norm([p.grad for p in params])) < 1.0 + 1e-5

def _config_stub():
    class C:
        engine = "fsdp2"

    return C()


def test_world_sizes_that_split_groups_are_refused():
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("gpt2", n_embd=64, n_layer=1, n_head=4, vocab_size=128, n_positions=64)
    torch.manual_seed(0)
    gpt2 = AutoModelForCausalLM.from_config(cfg)
    sparsify(gpt2, "4:8")  # Conv1D: K is dim 0 (64 for c_attn/c_fc/c_proj; 256 for mlp.c_proj)
    dist.check_shardable(gpt2, 2)  # 32 rows each: whole groups of 8
    with pytest.raises(dist.DistributedError, match=r"not a multiple of 8.*ceil\(64/W\)"):
        dist.check_shardable(gpt2, 3)  # 22 rows: a 4:8 group would straddle two ranks
    llama = _model()
    dist.check_shardable(llama, 3)  # K is the last dim: any world size keeps groups whole
    blocks = tiny_llama(seed=0)
    sparsify(blocks, "block16")
    with pytest.raises(dist.DistributedError, match="not a multiple of 16"):
        dist.check_shardable(blocks, 3)
    with pytest.raises(dist.DistributedError, match="engine 'megatron' is not known"):
        dist.engine_of(type("C", (), {"engine": "megatron"})())
