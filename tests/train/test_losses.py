import math
from types import SimpleNamespace

import pytest
import torch

from sfcompile.train.losses import LOGIT_CLAMP, LossWeights, distillation_loss, kl_divergence, squarehead


def _kl_by_hand(s, t, T):
    total = 0.0
    for srow, trow in zip(s.tolist(), t.tolist()):
        zs = [x / T for x in srow]
        zt = [x / T for x in trow]
        ls = math.log(sum(math.exp(x) for x in zs))
        lt = math.log(sum(math.exp(x) for x in zt))
        for a, b in zip(zs, zt):
            pt = math.exp(b - lt)
            total += pt * ((b - lt) - (a - ls))
    return total / len(s) * T * T


@pytest.mark.parametrize("T", [1.0, 2.0, 0.5])
@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_kl_matches_hand_computation(T, chunk):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(7, 5, generator=g, dtype=torch.float64) * 3
    t = torch.randn(7, 5, generator=g, dtype=torch.float64) * 3
    got = kl_divergence(s.float(), t.float(), T, chunk=chunk)
    assert got.item() == pytest.approx(_kl_by_hand(s, t, T), rel=1e-5)


def test_kl_zero_for_equal_logits_and_gradient_flows_through_chunks():
    s = torch.randn(10, 6, requires_grad=True)
    assert kl_divergence(s, s.detach(), 2.0, chunk=3).item() == pytest.approx(0.0, abs=1e-6)
    t = torch.randn(10, 6)
    kl_divergence(s, t, 2.0, chunk=3).backward()
    ref = s.detach().clone().requires_grad_(True)
    kl_divergence(ref, t, 2.0, chunk=100).backward()
    torch.testing.assert_close(s.grad, ref.grad)


def test_kl_clamps_infinite_logits_to_a_finite_loss():
    s = torch.tensor([[float("inf"), 0.0, 0.0]])
    t = torch.tensor([[0.0, 1.0, 2.0]])
    got = kl_divergence(s, t, 1.0)
    assert torch.isfinite(got)
    clamped = torch.tensor([[LOGIT_CLAMP, 0.0, 0.0]], dtype=torch.float64)
    assert got.item() == pytest.approx(_kl_by_hand(clamped, t.double(), 1.0), rel=1e-4)


def test_squarehead_by_hand():
    hs = [torch.tensor([[[1.0, 2.0]]]), torch.tensor([[[0.0, 0.0]]])]
    ht = [torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[2.0, 2.0]]])]
    # layer 0: mean((0,2)^2)=2 / mean((1,0)^2)=0.5 -> 4 ; layer 1: mean(4,4)=4 / 4 -> 1 ; mean -> 2.5
    assert squarehead(hs, ht).item() == pytest.approx(2.5)


def test_distillation_loss_weights_and_shift():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 5, (2, 4), generator=g)
    s_logits = torch.randn(2, 4, 5, generator=g)
    t_logits = torch.randn(2, 4, 5, generator=g)
    hs = tuple(torch.randn(2, 4, 3, generator=g) for _ in range(3))
    ht = tuple(torch.randn(2, 4, 3, generator=g) for _ in range(3))
    s_out = SimpleNamespace(logits=s_logits, hidden_states=hs)
    t_out = SimpleNamespace(logits=t_logits, hidden_states=ht)
    w = LossWeights(ce=0.5, kl=2.0, kl_temperature=2.0, squarehead=3.0)
    loss, parts = distillation_loss(s_out, ids, w, t_out)
    ce = torch.nn.functional.cross_entropy(s_logits[:, :-1].reshape(-1, 5), ids[:, 1:].reshape(-1))
    kl = _kl_by_hand(s_logits[:, :-1].reshape(-1, 5).double(), t_logits[:, :-1].reshape(-1, 5).double(), 2.0)
    sq = squarehead(hs[1:], ht[1:])  # embedding output (index 0) is skipped
    assert parts["ce"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert parts["kl"].item() == pytest.approx(kl, rel=1e-5)
    assert loss.item() == pytest.approx(0.5 * ce.item() + 2.0 * kl + 3.0 * sq.item(), rel=1e-5)


def test_distillation_needs_teacher_output():
    out = SimpleNamespace(logits=torch.randn(1, 3, 4))
    with pytest.raises(ValueError, match="teacher"):
        distillation_loss(out, torch.zeros(1, 3, dtype=torch.long), LossWeights(kl=1.0))
