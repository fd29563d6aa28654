import pytest
import torch

from sfcompile.masking.tempering import (
    ema_mask,
    gate,
    pull_toward_pattern,
    sample_generator,
    sampled_quantile,
    tempered_mask,
)
from sfcompile.patterns import NM, Block


def test_quantile_exact_on_small_tensors():
    z = torch.arange(100, dtype=torch.float32).reshape(10, 10)
    assert sampled_quantile(z, 0.5, 1000) == 49.0  # half the values are <= τ
    assert sampled_quantile(z, 0.0, 1000) == 0.0
    assert sampled_quantile(z, 1.0, 1000) == 99.0


def test_quantile_sampled_is_deterministic_and_close():
    z = torch.randn(512, 512)
    a = sampled_quantile(z, 0.5, 4096, sample_generator(0, 7, 3))
    b = sampled_quantile(z, 0.5, 4096, sample_generator(0, 7, 3))
    c = sampled_quantile(z, 0.5, 4096, sample_generator(0, 8, 3))
    assert a == b and a != c
    assert abs(a - float(z.median())) < 0.06  # ~3 standard errors of a 4096-sample median


def test_gate():
    z = torch.tensor([-1.0, 0.0, 1.0])
    torch.testing.assert_close(gate(z, 0.0, 0.5), torch.sigmoid(z / 0.5), atol=1e-3, rtol=0)
    with pytest.raises(ValueError):
        gate(z, 0.0, 0.0)


def test_gate_keeps_score_order_when_saturated():
    z = torch.tensor([1.0, 2.0, 3.0, 4.0, -3.0, -4.0])
    g = gate(z, 0.0, 0.01)  # σ(z/0.01) alone is exactly 1.0 / 0.0 for all of these in float32
    assert torch.equal(g.argsort(), z.argsort())
    assert NM(2, 4).project(g[None, :4], 1).tolist() == [[False, False, True, True]]


def test_pull_by_hand():
    g = torch.tensor([[0.9, 0.6, 0.4, 0.1]])
    m = torch.tensor([[1.0, 0.2, 0.9, 0.0]])
    hard = torch.tensor([[1.0, 1.0, 0.0, 0.0]])  # top-2 of G
    out = pull_toward_pattern(g, m, NM(2, 4), 1, strength=0.5, lr=0.2)
    torch.testing.assert_close(out, (g - 0.1 * (m - hard)).clamp(0, 1))
    # where the mask disagrees with the pattern, G moves toward the pattern
    assert out[0, 1] > g[0, 1] and out[0, 2] < g[0, 2]
    assert torch.equal(pull_toward_pattern(g, m, NM(2, 4), 1, strength=0.0, lr=0.2), g)


def test_pull_stays_in_unit_interval():
    g = torch.rand(8, 16)
    m = torch.rand(8, 16)
    out = pull_toward_pattern(g, m, NM(2, 4), 1, strength=10.0, lr=1.0)
    assert out.min() >= 0 and out.max() <= 1


def test_mask_ema_converges_geometrically():
    m = torch.ones(4, 8)
    g = torch.rand(4, 8)
    for _ in range(10):
        m = ema_mask(m, g, 0.9)
    torch.testing.assert_close(m - g, (1 - g) * 0.9**10)


@pytest.mark.parametrize("pattern", [NM(2, 4), Block(16, 0.5)])
def test_repeated_updates_reach_the_pattern_of_the_scores(pattern):
    torch.manual_seed(0)
    z = torch.randn(32, 64)
    m = torch.ones_like(z)
    for _ in range(60):
        m = tempered_mask(z, m, pattern, 1, target_sparsity=0.5, temperature=0.05, pull=0.1, pull_lr=0.1,
                          momentum=0.9, n_samples=10_000)
    assert m.min() >= 0 and m.max() <= 1
    got = pattern.project(m, 1)
    if isinstance(pattern, NM):  # G is increasing in z, so each group keeps its top scores
        want = pattern.project(z, 1)
    else:  # tiles are ranked by their summed gate (how many entries clear τ), not their summed z
        want = pattern.project(gate(z, sampled_quantile(z, 0.5, 10_000), 0.05), 1)
    assert (got == want).float().mean() > 0.99
    ok, _ = pattern.verify(m * got, 1)
    assert ok
