"""One-shot pruners: exact masks, hand-computed Wanda, SparseGPT reconstruction, families, bad input."""

import shutil
import warnings

import pytest
import torch
from _layer_inputs import correlated_inputs
from torch import nn

import sfcompile
from sfcompile.masking.oneshot import prune
from sfcompile.masking.oneshot.calibrate import MatmulInputRecorder
from sfcompile.masking.oneshot.sparsegpt import sparsegpt_prune
from sfcompile.masking.oneshot.wanda import wanda_mask
from sfcompile.masking.state import MaskStateError, dense_weight, masked_sites
from sfcompile.passes.site import Site
from sfcompile.patterns import Block, parse_pattern

PATTERNS = ["2:4", "4:8", "unstructured:0.5", "block16"]


# ---------------------------------------------------------------------------------------------- toy model
class _Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.lin = nn.Linear(d, d, bias=False)

    def forward(self, h):
        return torch.tanh(self.lin(h))


class _ToyLM(nn.Module):
    """Embedding + a ModuleList of Linear+tanh blocks; called like an HF model."""

    def __init__(self, vocab=40, d=32, n=2):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList([_Block(d) for _ in range(n)])

    def forward(self, input_ids, use_cache=False):
        h = self.emb(input_ids)
        for block in self.layers:
            h = block(h)
        return h


def _toy(pattern, seed=0, n=2, d=32):
    torch.manual_seed(seed)
    model = _ToyLM(d=d, n=n).eval()
    sites = [Site(f"layers.{i}.lin.weight", f"layers.{i}.lin", "weight", (d, d), 1, "linear")
             for i in range(n)]
    return sfcompile.sparsify(model, pattern, sites=sites)


def _windows(n=6, seqlen=16, vocab=40, seed=1):
    return torch.randint(0, vocab, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def _hard(model):
    return {site.name: soft.hard.bool().clone() for site, _, soft in masked_sites(model)}


# ------------------------------------------------------------------------------------------ magnitude
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_magnitude_is_the_projected_top_abs_w(tiny_model, family, pattern):
    model = sfcompile.sparsify(tiny_model(family), pattern)
    dense = {site.name: dense_weight(owner, site.param).detach().clone()
             for site, owner, _ in masked_sites(model)}
    report = prune(model, "magnitude", progress=False)
    p = parse_pattern(pattern)
    for site, owner, soft in masked_sites(model):
        expected = p.project(dense[site.name].abs(), site.k_dim)
        assert torch.equal(soft.hard.bool(), expected), site.name
        assert float(soft.hardness) == 0.0
        assert torch.equal(dense_weight(owner, site.param), dense[site.name])  # magnitude never edits W
    assert report.sparsity == pytest.approx(1 - p.density, abs=1e-6)
    assert report.nsamples is None


# ---------------------------------------------------------------------------------------------- wanda
@pytest.mark.parametrize("pattern", ["2:4", "unstructured:0.5"])
def test_wanda_matches_hand_computation_and_is_sequential(pattern):
    model = _toy(pattern)
    ids = _windows()
    w0 = model.layers[0].lin.sfmask_weight_dense.detach().clone()
    w1 = model.layers[1].lin.sfmask_weight_dense.detach().clone()
    with torch.no_grad():
        x0 = model.emb(ids).reshape(-1, 32)  # (tokens, K)
    prune(model, "wanda", ids, nsamples=6, seqlen=16, progress=False)
    p = parse_pattern(pattern)
    # |W_ij| * ||X_j||_2 over all calibration tokens, per layer.
    mask0 = p.project(w0.abs() * x0.pow(2).sum(0).sqrt()[None, :], 1)
    # Block 1 is calibrated on the outputs of the *pruned* block 0 (the sequential protocol).
    x1 = torch.tanh(x0 @ (w0 * mask0).T)
    mask1 = p.project(w1.abs() * x1.pow(2).sum(0).sqrt()[None, :], 1)
    hard = _hard(model)
    assert torch.equal(hard["layers.0.lin.weight"], mask0)
    assert torch.equal(hard["layers.1.lin.weight"], mask1)
    # ...and not on the dense outputs: that mask differs here.
    x1_dense = torch.tanh(x0 @ w0.T)
    assert not torch.equal(mask1, p.project(w1.abs() * x1_dense.pow(2).sum(0).sqrt()[None, :], 1))


def test_wanda_scores_for_conv1d_and_expert_layouts():
    torch.manual_seed(0)
    w = torch.randn(8, 16)  # Conv1D layout: (K, N), K at dim 0
    sq = torch.rand(8)
    p = parse_pattern("2:4")
    expected = p.project((w.T.abs() * sq.sqrt()[None, :]), -1).T
    assert torch.equal(wanda_mask(w, sq, p, 0), expected)
    we = torch.randn(3, 4, 8)  # experts (E, N, K), one norm vector per expert
    sqe = torch.rand(3, 8)
    got = wanda_mask(we, sqe, p, 2)
    for e in range(3):
        assert torch.equal(got[e], p.project(we[e].abs() * sqe[e].sqrt()[None, :], -1))


# ------------------------------------------------------------------------------------------ sparsegpt
@pytest.mark.parametrize("pattern", PATTERNS)
def test_sparsegpt_reconstructs_a_layer_far_better_than_wanda_and_magnitude(pattern):
    x = correlated_inputs()
    w = torch.randn(48, 64, generator=torch.Generator().manual_seed(1))
    p = parse_pattern(pattern)
    h = x.T.double() @ x.double()
    new_w, mask = sparsegpt_prune(w, h, p, blocksize=32, percdamp=0.01)

    def err(w_hat):  # ||X Wᵀ − X Ŵᵀ||_F
        return float((x @ w.T - x @ w_hat.T).norm())

    mag = err(w * p.project(w.abs(), -1))
    wan = err(w * wanda_mask(w, x.pow(2).sum(0), p, -1))
    sgpt = err(new_w)
    assert sgpt < 0.6 * min(mag, wan), (sgpt, wan, mag)
    assert p.verify(new_w, -1)[0]
    assert torch.equal(new_w * mask, new_w)  # exact zeros off the mask
    assert int(mask.sum()) == round(p.density * mask.numel())  # the full budget, exactly


def _naive_obs_sweep(w, h, mask, percdamp):
    """Reference: visit columns left to right; remove each pruned weight with the OBS update restricted to the
    columns not yet visited, inverting H[j:, j:] afresh every column (SparseGPT gets this from one
    Cholesky factor)."""
    w = w.double().clone()
    h = h.double().clone()
    k = h.shape[0]
    h = h + percdamp * torch.diagonal(h).mean() * torch.eye(k, dtype=torch.float64)
    for j in range(k):
        h_inv = torch.linalg.inv(h[j:, j:])
        pruned = ~mask[:, j]
        err = w[pruned, j] / h_inv[0, 0]
        w[pruned, j:] -= err[:, None] * h_inv[0][None, :]
        w[pruned, j] = 0.0
    return w


@pytest.mark.parametrize("pattern", PATTERNS)
def test_sparsegpt_sweep_with_lazy_blocks_equals_the_naive_obs_sweep(pattern):
    x = correlated_inputs(n=512, k=32)
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    h = x.T.double() @ x.double()
    p = parse_pattern(pattern)
    blocksize = 16 if isinstance(p, Block) else 8      # (block patterns choose tiles per lazy block)
    new_w, mask = sparsegpt_prune(w, h, p, blocksize=blocksize, percdamp=0.01)
    torch.testing.assert_close(new_w, _naive_obs_sweep(w, h, mask, 0.01), rtol=1e-9, atol=1e-9)


def test_sparsegpt_tile_cost_is_the_obs_error_of_zeroing_the_whole_tile():
    # the least (w - w')ᵀ H (w - w') over w' with w'_C = 0 is w_Cᵀ (H_CC - H_CF H_FF⁻¹ H_FC) w_C: the Schur
    # complement, computed directly here, against _tile_costs from the diagonal blocks of H⁻¹
    from sfcompile.masking.oneshot.sparsegpt import _hinv_blocks, _tile_costs

    x = correlated_inputs(n=512, k=32).double()
    h = x.T @ x
    w = torch.randn(32, 32, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    u = torch.linalg.cholesky(torch.linalg.inv(h), upper=True)       # H⁻¹ = UᵀU
    costs = _tile_costs(w, _hinv_blocks(u, 16), 16)                   # (2 row tiles, 2 column tiles)
    for c in range(2):
        cols = torch.arange(16 * c, 16 * c + 16)
        free = torch.tensor([j for j in range(32) if j not in cols.tolist()])
        schur = h[cols][:, cols] - h[cols][:, free] @ torch.linalg.solve(h[free][:, free], h[free][:, cols])
        for r in range(2):
            wc = w[16 * r: 16 * r + 16][:, cols]
            want = torch.einsum("ri,ij,rj->", wc, schur, wc)
            torch.testing.assert_close(costs[r, c], want, rtol=1e-6, atol=1e-8)


def test_sparsegpt_dead_inputs_are_zeroed_and_pruned_first():
    x = correlated_inputs(k=32)
    x[:, [3, 17]] = 0  # two features never fire
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(2))
    new_w, mask = sparsegpt_prune(w, x.T @ x, parse_pattern("2:4"), blocksize=16)
    assert not mask[:, 3].any() and not mask[:, 17].any()
    assert torch.isfinite(new_w).all()


def test_prune_sparsegpt_updates_weights_exactly_on_the_mask():
    model = _toy("2:4")
    before = model.layers[0].lin.sfmask_weight_dense.detach().clone()
    prune(model, "sparsegpt", _windows(), nsamples=6, seqlen=16, blocksize=8, progress=False)
    for site, owner, soft in masked_sites(model):
        w = dense_weight(owner, site.param)
        assert torch.equal(w * soft.hard, w), site.name  # pruned entries are exact zeros
        assert float(soft.hardness) == 0.0
    kept = _hard(model)["layers.0.lin.weight"]
    after = model.layers[0].lin.sfmask_weight_dense
    assert not torch.allclose(after[kept], before[kept])  # the OBS update moved the kept weights


# ----------------------------------------------------------------------------- patterns, families, MoE
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "admm"])
def test_final_masks_verify_after_harden(tiny_model, method, pattern):
    model = sfcompile.sparsify(tiny_model("llama"), pattern)
    ids = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(0))
    prune(model, method, ids, nsamples=4, seqlen=16, blocksize=16, progress=False)
    entries = [(site, soft.pattern) for site, _, soft in masked_sites(model)]
    sfcompile.harden(model)
    params = dict(model.named_parameters())
    p = parse_pattern(pattern)
    for site, pat in entries:
        w = params[site.name]
        ok, violations = pat.verify(w, site.k_dim)
        assert ok, (site.name, violations)
        if not isinstance(p, type(parse_pattern("block16"))):
            # a group may hold a pruned-by-update zero, never more non-zeros than the budget
            assert float((w != 0).float().mean()) <= p.density + 1e-6


@pytest.mark.parametrize("family", ["gpt2", "opt", "qwen3_moe", "mixtral"])
def test_calibrated_pruners_on_families(tiny_model, family):
    ids = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(0))
    for method in ("wanda", "sparsegpt", "admm"):
        model = sfcompile.sparsify(tiny_model(family), "2:4")
        kinds = {site.kind for site, _, _ in masked_sites(model)}
        report = prune(model, method, ids, nsamples=4, seqlen=16, progress=False)
        assert report.sites == len(masked_sites(model))
        with torch.no_grad():
            logits = model(input_ids=ids[:1]).logits
        assert torch.isfinite(logits).all()
        sfcompile.harden(model)
    if family in ("qwen3_moe", "mixtral"):
        assert "experts" in kinds


def test_expert_inputs_are_the_same_through_grouped_mm_and_the_eager_loop(tiny_model):
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    masks = {}
    for impl in ("grouped_mm", "eager"):
        model = tiny_model("qwen3_moe")
        model.config._experts_implementation = impl
        sfcompile.sparsify(model, "2:4")
        prune(model, "wanda", ids, nsamples=2, seqlen=16, progress=False)
        masks[impl] = {k: v for k, v in _hard(model).items() if "experts" in k}
    assert masks["grouped_mm"].keys() == masks["eager"].keys() and masks["eager"]
    for name in masks["eager"]:
        assert torch.equal(masks["grouped_mm"][name], masks["eager"][name]), name


def test_recorder_splits_grouped_mm_rows_by_offsets():
    w = torch.randn(3, 5, 4)  # (E, N, K)
    x = torch.randn(6, 4)
    offs = torch.tensor([2, 2, 6], dtype=torch.int32)  # expert 1 gets no rows
    rec = MatmulInputRecorder({"w": w})
    with rec:
        torch._grouped_mm(x, w.transpose(-2, -1), offs=offs)
    assert [(k, e, tuple(t.shape)) for k, e, t in rec.calls] == [("w", 0, (2, 4)), ("w", 2, (4, 4))]
    assert torch.equal(rec.calls[1][2], x[2:])


def test_unrouted_experts_are_reported_not_hidden(tiny_model):
    model = sfcompile.sparsify(tiny_model("qwen3_moe", num_experts=8, num_experts_per_tok=1), "2:4")
    ids = torch.tensor([[5, 5]])  # two tokens cannot reach eight experts
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = prune(model, "sparsegpt", ids, nsamples=1, seqlen=2, progress=False)
    assert any("received no calibration tokens" in note for note in report.notes)
    assert any("received no calibration tokens" in str(w.message) for w in caught)


# ------------------------------------------------------------------------------------------ bad input
def test_prune_requires_a_sparsified_model(tiny_model):
    with pytest.raises(MaskStateError, match=r"sfcompile.sparsify\(model, pattern=...\) first"):
        prune(tiny_model("llama"), "magnitude")


@pytest.mark.parametrize("kwargs, match", [
    (dict(nsamples=0), "nsamples=0"), (dict(nsamples=-2), "nsamples=-2"),
    (dict(nsamples=2.5), "nsamples=2.5"),
    (dict(nsamples=True), "nsamples=True"), (dict(seqlen=0), "seqlen=0"), (dict(seqlen="16"), "seqlen='16'"),
    (dict(blocksize=0), "blocksize=0"), (dict(percdamp=-0.1), "percdamp=-0.1"),
    (dict(percdamp=float("nan")), "percdamp=nan"),
])
def test_bad_numbers_are_rejected_by_name(kwargs, match):
    model = _toy("2:4")
    with pytest.raises(ValueError, match=match):
        prune(model, "sparsegpt", _windows(), **{"nsamples": 6, "seqlen": 16, **kwargs})


def test_bad_calibration_and_method():
    model = _toy("2:4")
    with pytest.raises(ValueError, match="needs calibration data"):
        prune(model, "wanda")
    with pytest.raises(ValueError, match="calib has 6 windows but nsamples=8"):
        prune(model, "wanda", _windows(), nsamples=8, seqlen=16)
    with pytest.raises(ValueError, match="seqlen=32"):
        prune(model, "wanda", _windows(), nsamples=6, seqlen=32)
    with pytest.raises(ValueError, match="pass the tokenizer"):
        prune(model, "wanda", "calib", nsamples=6, seqlen=16)
    with pytest.raises(ValueError, match='unknown pruning method "obs"'):
        prune(model, "obs", _windows())
    with pytest.raises(ValueError, match="multiple of M=4"):
        prune(model, "sparsegpt", _windows(), nsamples=6, seqlen=16, blocksize=6)
    assert all(bool((soft.mask == 1).all()) for _, _, soft in masked_sites(model))  # nothing half-pruned
    tiles = _toy("block16")
    with pytest.raises(ValueError, match="multiple of the tile size=16"):    # refused before calibrating
        prune(tiles, "sparsegpt", _windows(), nsamples=6, seqlen=16, blocksize=24)


# -------------------------------------------------------------------------------------------------- CLI
def _cli(*argv):
    from sfcompile.cli import main

    return main(["prune", *argv])


@pytest.mark.parametrize("extra, match", [
    (["--pattern", "3:3"], "3:3"), (["--nsamples", "0"], "--nsamples 0"), (["--seqlen", "-1"], "--seqlen -1"),
    (["--max-windows", "0"], "--max-windows 0"), (["--device", "tpu"], "--device 'tpu'"),
    (["--device", "nonsense!"], "not a device"),
] + ([(["--device", "cuda"], "CUDA is not available")] if not torch.cuda.is_available() else []))
def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, extra, match):
    out = tmp_path / "out"
    assert _cli("--model", "smollm2-135m", "--out", str(out), *extra) == 2
    assert match in capsys.readouterr().err
    assert not out.exists()


def test_cli_missing_model_exits_2(tmp_path, capsys):
    out = tmp_path / "out"
    assert _cli("--model", str(tmp_path / "no-such-model"), "--method", "magnitude", "--out", str(out)) == 2
    assert "no-such-model" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_cli_magnitude_on_smollm2_saves_a_hardened_model(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--model", "smollm2-135m", "--method", "magnitude", "--pattern", "2:4", "--device", "auto",
            "--out", str(out)]
    assert _cli(*argv) == 0
    assert (out / "sparsity.json").exists()
    printed = capsys.readouterr().out
    assert "magnitude" in printed and "50.00%" in printed
    model, _ = sfcompile.load(str(out))  # the manifest is checked against the weights on load
    assert model.sfcompile_manifest["pattern"] == "2:4"
    shutil.rmtree(out)  # 0.5 GB of fp32 weights: pytest keeps tmp_path, and CI machines have had full disks


def test_cli_packed_writes_the_compressed_folder(tmp_path, capsys, byte_tokenizer):
    from transformers import AutoConfig, AutoModelForCausalLM

    from sfcompile.export import PACKED_FILE

    torch.manual_seed(0)
    cfg = AutoConfig.for_model("llama", hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                               num_attention_heads=2, num_key_value_heads=1, vocab_size=256)
    src = tmp_path / "tiny"
    AutoModelForCausalLM.from_config(cfg).save_pretrained(src)
    byte_tokenizer.save_pretrained(src)
    out = tmp_path / "out"
    assert _cli("--model", str(src), "--method", "magnitude", "--packed", "--out", str(out)) == 0
    assert (out / PACKED_FILE).exists() and not (out / "model.safetensors").exists()
    model, _ = sfcompile.load(str(out))
    assert model.sfcompile_manifest["pattern"] == "2:4" and "50.00%" in capsys.readouterr().out
