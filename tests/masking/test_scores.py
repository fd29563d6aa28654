import pytest
import torch
from torch import nn

from sfcompile.masking.scores import (
    ScoreError,
    act_hook,
    bias_corrected,
    compute_score,
    ema_,
    ensure_stat,
    znorm,
)


@pytest.fixture
def w():
    return torch.tensor([[1.0, -2.0, 0.5, 0.0], [-0.1, 3.0, -1.5, 2.0]])


def test_magnitude(w):
    assert torch.equal(compute_score("magnitude", w, k_dim=1), w.abs())


def test_hessian_obd_and_ratio(w):
    h = torch.tensor([[1.0, 0.5, 4.0, 2.0], [0.0, -0.3, 1.0, 9.0]])  # a negative EMA entry is clamped to 0
    eps = 1e-3
    obd = compute_score("hessian_obd", w, k_dim=1, eps=eps, hdiag=h)
    ratio = compute_score("hessian_ratio", w, k_dim=1, eps=eps, hdiag=h)
    hc = h.clamp(min=0)
    torch.testing.assert_close(obd, (hc + eps) * w**2)
    torch.testing.assert_close(ratio, w.abs() / (hc + eps).sqrt())
    assert obd[1, 1] == pytest.approx(eps * 9.0)  # clamped curvature: only ε·W² remains


def test_fisher(w):
    f = torch.rand_like(w)
    torch.testing.assert_close(compute_score("fisher", w, k_dim=1, eps=0.0, fisher=f), f * w**2)


def test_wanda_scales_along_k(w):
    act = torch.tensor([1.0, 4.0, 9.0, 16.0])  # mean x² per input feature → norms 1, 2, 3, 4
    s = compute_score("wanda", w, k_dim=1, act_sq=act)
    torch.testing.assert_close(s, w.abs() * torch.tensor([1.0, 2.0, 3.0, 4.0]))
    # Conv1D layout: K is dim 0
    wt = w.t().contiguous()
    torch.testing.assert_close(compute_score("wanda", wt, k_dim=0, act_sq=act), s.t())


@pytest.mark.parametrize("kind, kw", [("hessian_obd", "hdiag"), ("fisher", "fisher"), ("wanda", "act_sq")])
def test_missing_statistics_raise(w, kind, kw):
    with pytest.raises(ScoreError, match=kind.split("_")[0]):
        compute_score(kind, w, k_dim=1)


def test_znorm():
    s = torch.randn(64, 32) * 5 + 3
    z = znorm(s)
    assert float(z.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(z.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)
    assert torch.equal(z.argsort(dim=-1), s.argsort(dim=-1))  # order preserved


def test_znorm_constant_is_finite():
    assert torch.isfinite(znorm(torch.ones(4, 4))).all()


def test_ema_and_bias_correction():
    stat, other = torch.zeros(3), torch.zeros(2)
    for _ in range(5):
        ema_([stat, other], [torch.tensor([2.0, 4.0, -1.0]), torch.tensor([1.0, 0.5], dtype=torch.bfloat16)], 0.9)
    torch.testing.assert_close(bias_corrected(stat, 0.9, 5), torch.tensor([2.0, 4.0, -1.0]))
    torch.testing.assert_close(bias_corrected(other, 0.9, 5), torch.tensor([1.0, 0.5]))
    torch.testing.assert_close(stat, 0.1 * sum(0.9**i for i in range(5)) * torch.tensor([2.0, 4.0, -1.0]))
    with pytest.raises(ScoreError):
        bias_corrected(stat, 0.9, 0)


def test_ensure_stat_is_a_frozen_parameter_in_state_dict():
    m = nn.Module()
    p = ensure_stat(m, "sf_hdiag", (2, 3))
    assert isinstance(p, nn.Parameter) and not p.requires_grad
    assert "sf_hdiag" in m.state_dict()
    assert ensure_stat(m, "sf_hdiag", (2, 3)) is p


def test_act_hook_tracks_mean_square():
    lin = nn.Linear(4, 2)
    stat = torch.zeros(4)
    enabled = [True]
    lin.register_forward_pre_hook(act_hook(stat, 0.5, lambda: enabled[0]), with_kwargs=True)
    x1 = torch.ones(3, 4) * 2
    lin(x1)
    torch.testing.assert_close(stat, torch.full((4,), 4.0))  # first observation replaces the zeros
    lin(torch.zeros(5, 4))
    torch.testing.assert_close(stat, torch.full((4,), 2.0))
    enabled[0] = False
    lin(x1 * 10)
    torch.testing.assert_close(stat, torch.full((4,), 2.0))
    lin.eval()
    enabled[0] = True
    lin(x1 * 10)
    torch.testing.assert_close(stat, torch.full((4,), 2.0))
