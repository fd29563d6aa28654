"""ADMM one-shot pruning: exact masks, an exact refit of the kept weights, lower error than SparseGPT."""

import pytest
import torch
from _layer_inputs import correlated_inputs

from sfcompile.masking.oneshot import prune
from sfcompile.masking.oneshot.admm import _refit, admm_prune, reconstruction_error
from sfcompile.masking.oneshot.sparsegpt import sparsegpt_prune
from sfcompile.masking.state import dense_weight, masked_sites
from sfcompile.patterns import parse_pattern

PATTERNS = ["2:4", "4:8", "unstructured:0.5", "block16"]


def _problem(rows=48, k=64, seed=1):
    x = correlated_inputs(n=2048, k=k)
    w = torch.randn(rows, k, generator=torch.Generator().manual_seed(seed))
    return w, x.T.double() @ x.double()


@pytest.mark.parametrize("pattern", PATTERNS)
def test_admm_mask_is_exact_and_its_error_is_below_sparsegpts(pattern):
    w, h = _problem()
    p = parse_pattern(pattern)
    new_w, mask = admm_prune(w, h, p)
    assert p.verify(new_w, -1)[0]
    assert torch.equal(p.project(mask.double(), -1), mask)  # the mask is a pattern mask with its full budget
    assert torch.equal(new_w * mask, new_w)  # exact zeros off the mask
    assert new_w.dtype == w.dtype
    sgpt_w, _ = sparsegpt_prune(w, h, p, blocksize=32)
    admm_err, sgpt_err = reconstruction_error(w, new_w, h), reconstruction_error(w, sgpt_w, h)
    assert admm_err < 0.95 * sgpt_err, (float(admm_err), float(sgpt_err))


def test_refit_is_the_least_squares_solution_on_the_mask():
    """Conjugate gradients reach, row by row, w_S = H_SS⁻¹ (H w₀)_S (zero off S), solved directly here."""
    w, h = _problem(rows=12, k=32)
    h = h / torch.diagonal(h).mean() + 0.01 * torch.eye(32, dtype=torch.float64)
    w0 = w.double()
    mask = parse_pattern("2:4").project(torch.rand(12, 32, generator=torch.Generator().manual_seed(3)), -1)
    got = _refit(w0 @ h, w0 * mask, h, mask, iters=200, tol=1e-12)
    for r in range(12):
        s = mask[r]
        want = torch.zeros(32, dtype=torch.float64)
        want[s] = torch.linalg.solve(h[s][:, s], (h @ w0[r])[s])
        torch.testing.assert_close(got[r], want, rtol=1e-7, atol=1e-9)


def test_admm_dead_inputs_are_zeroed():
    x = correlated_inputs(n=2048, k=32)
    x[:, [3, 17]] = 0  # two features never fire
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(2))
    new_w, mask = admm_prune(w, x.T @ x, parse_pattern("2:4"))
    assert (new_w[:, [3, 17]] == 0).all()
    assert torch.isfinite(new_w).all() and parse_pattern("2:4").verify(new_w, -1)[0]


@pytest.mark.parametrize("kwargs, match", [
    (dict(iters=-1), "iters=-1"),
    (dict(refine_iters=1.5), "refine_iters=1.5"),
    (dict(rho=0.0), "rho=0.0"),
    (dict(growth=0.5), "growth=0.5"),
    (dict(patience=0), "patience=0"),
])
def test_admm_bad_numbers_are_named(kwargs, match):
    w, h = _problem(rows=8, k=16)
    with pytest.raises(ValueError, match=match):
        admm_prune(w, h, parse_pattern("2:4"), **kwargs)


def test_admm_shape_mismatch_is_named():
    with pytest.raises(ValueError, match=r"admm_prune needs a \(rows, K\) weight and a \(K, K\) Hessian"):
        admm_prune(torch.randn(4, 8), torch.eye(4), parse_pattern("2:4"))


def test_prune_admm_writes_refit_weights_exactly_on_the_mask(tiny_model):
    import sfcompile

    model = sfcompile.sparsify(tiny_model("llama"), "2:4")
    before = {site.name: dense_weight(owner, site.param).detach().clone() for site, owner, _ in masked_sites(model)}
    ids = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(0))
    report = prune(model, "admm", ids, nsamples=4, seqlen=16, progress=False)
    assert report.method == "admm" and report.sparsity == pytest.approx(0.5)
    for site, owner, soft in masked_sites(model):
        w = dense_weight(owner, site.param)
        assert torch.equal(w * soft.hard, w), site.name  # pruned entries are exact zeros
        assert float(soft.hardness) == 0.0
        kept = soft.hard.bool()
        assert not torch.allclose(w[kept], before[site.name][kept]), site.name  # the refit moved them
