import copy

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from sfcompile.masking.hutchinson import HutchinsonError, estimate_diag, rng_state, spearman
from sfcompile.masking.state import dense_weight, masked_sites, sparsify
from sfcompile.masking.tempering import sample_generator
from sfcompile.passes.site import Site


class Quadratic(nn.Module):
    """L(W) = ½ wᵀ A w + bᵀ w over the effective weight w = vec(W ⊙ m_eff): Hessian A, known diagonal."""

    def __init__(self, out=4, k=8, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.lin = nn.Linear(k, out, bias=False, dtype=torch.float64)
        n = out * k
        q = torch.randn(n, n, generator=g, dtype=torch.float64)
        d = torch.rand(n, generator=g, dtype=torch.float64) * 3
        self.register_buffer("A", q @ q.T / n + torch.diag(d))
        self.register_buffer("b", torch.randn(n, generator=g, dtype=torch.float64))

    def loss(self):
        w = self.lin.weight.reshape(-1)
        return 0.5 * w @ self.A @ w + self.b @ w


def _quadratic(masked: bool):
    model = Quadratic()
    site = Site("lin.weight", "lin", "weight", (4, 8), 1, "linear")
    sparsify(model, "2:4", sites=[site])
    if masked:  # a hard 2:4 mask: half the effective weights are 0, their curvature must still be seen
        _, _, soft = masked_sites(model)[0]
        soft.set_mask(torch.rand(4, 8, dtype=torch.float64))
        soft.set_hardness(0.0)
    return model


def _step_grads(model, loss_fn):
    """What the training step leaves for "fd_forward": the sites' gradients at the current weights and the RNG
    state the loss ran from; every .grad is cleared again."""
    rng = rng_state()
    for p in model.parameters():
        p.grad = None
    loss_fn().backward()
    grads = [dense_weight(m, s.param).grad for s, m, _ in masked_sites(model)]
    for p in model.parameters():
        p.grad = None
    return grads, rng


def _probe(model, estimator, step, loss_fn=None, fd_eps=1e-3, rng=None):
    entries = masked_sites(model)
    loss_fn = loss_fn or model.loss
    gens = [sample_generator(0, step, i) for i in range(len(entries))]
    base = None
    if estimator == "fd_forward":
        base, step_rng = _step_grads(model, loss_fn)
        rng = step_rng if rng is None else rng
    return estimate_diag(model, entries, loss_fn, estimator=estimator, generators=gens, fd_eps=fd_eps,
                         base_grads=base, rng=rng)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("estimator", ["fd", "fd_forward", "hvp"])
def test_unbiased_on_a_quadratic(estimator, masked):
    model = _quadratic(masked)
    n = 300
    est = torch.stack([_probe(model, estimator, step)[0].reshape(-1) for step in range(n)]).mean(0)
    a = model.A
    true = torch.diagonal(a)
    # Var(v_i (Av)_i) = Σ_{j≠i} A_ij²: tolerance of 5 standard errors per entry
    se = ((a.square().sum(1) - true.square()) / n).sqrt()
    assert ((est.double() - true).abs() < 5 * se).all(), (est, true)
    # and it is informative: far closer to the truth than to a constant
    assert (est.double() - true).abs().mean() < 0.5 * (true - true.mean()).abs().mean()


@pytest.mark.parametrize("estimator", ["fd", "fd_forward"])
@pytest.mark.parametrize("masked", [False, True])
def test_fd_equals_hvp_probe_by_probe_on_a_quadratic(masked, estimator):
    model = _quadratic(masked)
    for step in range(3):
        torch.testing.assert_close(_probe(model, estimator, step)[0], _probe(model, "hvp", step)[0],
                                   rtol=1e-6, atol=1e-6)


class Cubic(Quadratic):
    """A quadratic plus cubic terms: the Hessian changes along every probe, so one forward difference is off
    by (ε/2)·v ⊙ T[v, v] — a term whose mean over Rademacher probes is 0 (odd moments vanish)."""

    def __init__(self):
        super().__init__(seed=1)
        g = torch.Generator().manual_seed(2)
        self.register_buffer("c", torch.randn(32, generator=g, dtype=torch.float64) * 4)
        self.register_buffer("u", torch.randn(32, generator=g, dtype=torch.float64))
        with torch.no_grad():  # weights of RMS 1, whatever the global RNG: the step ε is relative to it
            self.lin.weight.copy_(torch.randn(4, 8, generator=g, dtype=torch.float64))

    def loss(self):
        w = self.lin.weight.reshape(-1)
        return super().loss() + (self.c * w**3).sum() / 6 + (w @ self.u) ** 3 / 6

    def diag(self):
        w = self.lin.weight.detach().reshape(-1)
        return torch.diagonal(self.A) + self.c * w + (w @ self.u) * self.u**2


def test_forward_differences_are_unbiased_though_each_probe_is_off():
    model = Cubic()
    site = Site("lin.weight", "lin", "weight", (4, 8), 1, "linear")
    sparsify(model, "2:4", sites=[site])
    n, eps = 400, 0.5  # a step large enough for the cubic terms to show in every single probe
    fwd = torch.stack([_probe(model, "fd_forward", s, fd_eps=eps)[0].reshape(-1) for s in range(n)]).double()
    exact = torch.stack([_probe(model, "hvp", s)[0].reshape(-1) for s in range(n)]).double()
    assert (fwd - exact).abs().mean() > 0.1 * exact.abs().mean()  # per probe: off by the O(ε) term
    true = model.diag()
    se = (fwd.var(0) / n).sqrt()
    assert ((fwd.mean(0) - true).abs() < 5 * se).all(), (fwd.mean(0), true)


def test_forward_differences_need_the_step_gradient_and_its_rng_state():
    torch.manual_seed(0)
    cfg = AutoConfig.for_model("llama", hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                               num_attention_heads=4, num_key_value_heads=2, vocab_size=256, attention_dropout=0.3)
    model = AutoModelForCausalLM.from_config(cfg).train()  # dropout on: the + pass must see the same masks
    sparsify(model, "2:4")
    x = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    loss_fn = lambda: model(x, labels=x).loss  # noqa: E731
    with pytest.raises(HutchinsonError, match="use estimator='fd'"):
        estimate_diag(model, masked_sites(model), loss_fn, estimator="fd_forward",
                      generators=[sample_generator(0, 0, i) for i in range(7)])
    ref = torch.cat([d.reshape(-1) for d in _probe(model, "fd", 0, loss_fn, fd_eps=1e-4)])
    same = torch.cat([d.reshape(-1) for d in _probe(model, "fd_forward", 0, loss_fn, fd_eps=1e-4)])
    assert spearman(same, ref) > 0.99
    # the + pass from another RNG state than the step's: other dropout masks, a gradient difference of O(1)
    other_state = (torch.Generator().manual_seed(7).get_state(), None)
    other = torch.cat([d.reshape(-1) for d in _probe(model, "fd_forward", 0, loss_fn, fd_eps=1e-4,
                                                     rng=other_state)])
    assert spearman(other, ref) < 0.3


@pytest.fixture(scope="module")
def _dense_tiny():
    torch.manual_seed(0)
    cfg = AutoConfig.for_model("llama", hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                               num_attention_heads=4, num_key_value_heads=2, vocab_size=256)
    return AutoModelForCausalLM.from_config(cfg)


@pytest.fixture
def tiny(_dense_tiny):
    model = copy.deepcopy(_dense_tiny)
    sparsify(model, "2:4")
    x = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    return model, (lambda: model(x, labels=x).loss)


def test_fd_matches_exact_on_a_tiny_llama(tiny):
    model, loss_fn = tiny
    # a partly pruned state, as during tempering
    for _, _, soft in masked_sites(model):
        soft.set_mask(torch.rand_like(soft.mask))
        soft.set_hardness(0.5)
    fd = torch.cat([d.reshape(-1) for d in _probe(model, "fd", 0, loss_fn, fd_eps=1e-2)])
    hvp = torch.cat([d.reshape(-1) for d in _probe(model, "hvp", 0, loss_fn)])
    rho = spearman(fd, hvp)  # same probe: only the finite-difference error separates them (measured 1e-4)
    assert rho > 0.999, rho
    assert (fd - hvp).norm() < 0.01 * hvp.norm()


def test_probe_restores_everything(tiny):
    model, loss_fn = tiny
    for _, _, soft in masked_sites(model):
        soft.set_mask(torch.rand_like(soft.mask))
        soft.set_hardness(0.3)
    loss_fn().backward()
    params = list(model.parameters())
    grads = [(p.grad, p.grad.clone()) if p.grad is not None else (None, None) for p in params]
    values = [p.detach().clone() for p in params]
    hardness = [soft.hardness.clone() for _, _, soft in masked_sites(model)]
    rng = torch.get_rng_state()
    for estimator in ("fd", "hvp"):  # ("fd_forward" differs from "fd" in the passes it runs, not in this)
        _probe(model, estimator, 0, loss_fn)
        for p, (g, gv), v in zip(params, grads, values):
            assert p.grad is g
            if g is not None:
                assert torch.equal(p.grad, gv)
            assert torch.equal(p.detach(), v)  # bit-exact weights and masks
        assert all(torch.equal(s.hardness, h) for (_, _, s), h in zip(masked_sites(model), hardness))
        assert torch.equal(torch.get_rng_state(), rng)


def test_hvp_switches_to_math_attention(tiny):
    model, loss_fn = tiny
    assert model.config._attn_implementation == "sdpa"
    site, module, _ = masked_sites(model)[0]
    w = dense_weight(module, site.param)
    # the default CPU SDPA kernel has no double backward: without the switch the exact HVP fails
    with pytest.raises(RuntimeError):
        g = torch.autograd.grad(loss_fn(), w, create_graph=True)[0]
        torch.autograd.grad(g.sum(), w)
    d = _probe(model, "hvp", 0, loss_fn)
    assert all(torch.isfinite(x).all() for x in d) and any(x.abs().sum() > 0 for x in d)
    assert model.config._attn_implementation == "sdpa"


def test_hvp_refuses_compiled_models_and_names_fd(tiny):
    model, loss_fn = tiny
    model.compile()
    with pytest.raises(HutchinsonError, match="estimator='fd'"):
        _probe(model, "hvp", 0, loss_fn)


def test_probes_are_deterministic_in_the_step():
    model = _quadratic(False)
    a, b, c = _probe(model, "fd", 5)[0], _probe(model, "fd", 5)[0], _probe(model, "fd", 6)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_spearman():
    x = torch.randn(100)
    assert spearman(x, x * 3 + 1) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert spearman(x, x**3) == pytest.approx(1.0)


def test_unknown_estimator():
    model = _quadratic(False)
    with pytest.raises(HutchinsonError, match="'fd', 'fd_forward' or 'hvp'"):
        _probe(model, "exact", 0)




class _MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(16, 32)
        self.down = nn.Linear(32, 16)

    def forward(self, x):
        return self.down(torch.tanh(self.up(x)))


def test_fd_runs_compiled_and_agrees_with_eager():
    torch.manual_seed(0)
    model = _MLP()
    sites = [Site(f"{n}.weight", n, "weight", tuple(getattr(model, n).weight.shape), 1, "linear")
             for n in ("up", "down")]
    sparsify(model, "2:4", sites=sites)
    for _, _, soft in masked_sites(model):
        soft.set_mask(torch.rand_like(soft.mask))
        soft.set_hardness(0.5)
    x, y = torch.randn(8, 16), torch.randn(8, 16)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    eager = _probe(model, "fd", 0, lambda: (model(x) - y).square().mean(), fd_eps=1e-2)
    comp = _probe(model, "fd", 0, lambda: (compiled(x) - y).square().mean(), fd_eps=1e-2)
    # the probe's in-place changes to W, mask and hardness reach the compiled graph (they are graph inputs)
    for a, b in zip(eager, comp):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert any(d.abs().sum() > 0 for d in comp)
    exact = _probe(model, "hvp", 0, lambda: (model(x) - y).square().mean())
    for a, b in zip(comp, exact):
        torch.testing.assert_close(a, b, rtol=0.05, atol=1e-4)


def test_fd_step_follows_the_compute_precision(tiny):
    from sfcompile.masking.hutchinson import auto_fd_eps, compute_dtype

    model, loss_fn = tiny
    entries = masked_sites(model)

    def bf16_loss():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return loss_fn()

    rng = torch.get_rng_state()
    assert compute_dtype(model, entries, loss_fn) == torch.float32
    assert compute_dtype(model, entries, bf16_loss) == torch.bfloat16
    assert torch.equal(torch.get_rng_state(), rng)
    assert auto_fd_eps(torch.float32) == 1e-2 and auto_fd_eps(torch.bfloat16) == 5e-2
    assert not any(m._forward_hooks for _, m, _ in entries)
