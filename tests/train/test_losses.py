import math
from types import SimpleNamespace

import pytest
import torch

from sfcompile.train.losses import LOGIT_CLAMP, LossWeights, distillation_loss, kl_divergence, squarehead, token_losses


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


@pytest.mark.parametrize("twice", [False, True])
@pytest.mark.parametrize("chunk", [1, 4, 1000])
def test_chunked_ce_and_kl_match_whole_batch_values_and_gradients(chunk, twice):
    from sfcompile.train.losses import token_losses

    g = torch.Generator().manual_seed(3)
    s = (torch.randn(11, 7, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    t = torch.randn(11, 7, generator=g, dtype=torch.float64) * 2
    t[0, 0] = 150.0  # beyond the clamp: the teacher's logit counts as 100
    s.data[1, 3] = -120.0  # beyond the clamp: no KL gradient reaches it
    targets = torch.randint(0, 7, (11,), generator=g)
    targets[[2, 5]] = -100  # rows counted by neither loss: both are means over the other 9
    s_before, t_before = s.detach().clone(), t.clone()
    total, ce, kl = token_losses(s, targets, t, 2.0, weights=(0.7, 0.5), chunk=chunk, twice_differentiable=twice)
    total.backward()
    assert torch.equal(s.detach(), s_before) and torch.equal(t, t_before)  # the inputs are not touched
    ref = s.detach().clone().requires_grad_(True)
    rows = targets != -100
    ref_ce = torch.nn.functional.cross_entropy(ref, targets, ignore_index=-100)
    log_ps = torch.log_softmax(ref.clamp(-LOGIT_CLAMP, LOGIT_CLAMP)[rows] / 2, -1)
    log_pt = torch.log_softmax(t.clamp(-LOGIT_CLAMP, LOGIT_CLAMP)[rows] / 2, -1)
    ref_kl = torch.nn.functional.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True) * 4
    (0.7 * ref_ce + 0.5 * ref_kl).backward()
    assert ce.item() == pytest.approx(ref_ce.item(), rel=1e-6)
    assert kl.item() == pytest.approx(ref_kl.item(), rel=1e-6)
    assert total.item() == pytest.approx(0.7 * ref_ce.item() + 0.5 * ref_kl.item(), rel=1e-6)
    torch.testing.assert_close(s.grad, ref.grad, rtol=1e-5, atol=1e-7)  # computed in fp32 whatever the dtype
    assert ref.grad[2].abs().max() == 0 and s.grad[2].abs().max() == 0
    nothing = token_losses(s, torch.full((11,), -100), None, twice_differentiable=twice)
    assert nothing[1].item() == 0.0  # nothing counted: 0, not NaN
    assert token_losses(s, None, t, 2.0, weights=(0.0, 1.0))[1] is None
    assert token_losses(s, targets, None)[2] is None
    with pytest.raises(ValueError, match="weight must be 0, not 1.0"):
        token_losses(s, None, t)


def test_fused_loss_refuses_a_double_backward_and_a_second_backward():
    from sfcompile.train.losses import token_losses

    s = torch.randn(6, 5, requires_grad=True)
    targets = torch.randint(0, 5, (6,))
    total, _, _ = token_losses(s, targets)
    (g,) = torch.autograd.grad(total, s, retain_graph=True)  # the first backward is fine
    with pytest.raises(RuntimeError, match="backward ran twice"):
        torch.autograd.grad(total, s)
    total, _, _ = token_losses(s, targets)
    with pytest.raises(RuntimeError, match="twice_differentiable=True"):
        torch.autograd.grad(total, s, create_graph=True)
    total, _, _ = token_losses(s, targets, twice_differentiable=True)
    (g2,) = torch.autograd.grad(total, s, create_graph=True)
    torch.testing.assert_close(g, g2)
    (hv,) = torch.autograd.grad((g2 * torch.ones_like(g2)).sum(), s)  # a double backward works there
    assert torch.isfinite(hv).all()


@pytest.mark.parametrize("twice", [False, True])
def test_no_whole_batch_fp32_tensor_is_kept_for_backward(twice):
    # Only one chunk's fp32 intermediates may exist at a time: autograd must not save a (N, V) fp32 tensor
    # (a whole-batch log-softmax) outside the chunks. The logits themselves are the model's output.
    from sfcompile.train import losses

    n, v = 64, 50
    s = torch.randn(2, n // 2 + 1, v, dtype=torch.bfloat16, requires_grad=True)
    ids = torch.randint(0, v, (2, n // 2 + 1))
    t_out = SimpleNamespace(logits=torch.randn(2, n // 2 + 1, v, dtype=torch.bfloat16))
    saved = []

    def pack(x):
        saved.append((x.dtype, x.numel()))
        return x

    original = losses.LOSS_CHUNK_BYTES
    losses.LOSS_CHUNK_BYTES = 16 * v * 4  # 16-token chunks
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            loss, _ = distillation_loss(SimpleNamespace(logits=s), ids, LossWeights(kl=1.0), t_out,
                                        twice_differentiable=twice)
    finally:
        losses.LOSS_CHUNK_BYTES = original
    loss.backward()
    assert s.grad is not None and s.grad.dtype == torch.bfloat16 and torch.isfinite(s.grad.float()).all()
    biggest_fp32 = max((numel for dtype, numel in saved if dtype == torch.float32), default=0)
    assert biggest_fp32 <= 16 * v, saved


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_loss_memory_on_cuda():
    # what `sfcompile plan` counts for the loss: the gradient buffer (1x the bf16 logits) plus at most
    # LOSS_TEMPORARIES chunk-sized fp32 tensors above the inputs
    from sfcompile.train.losses import LOSS_CHUNK_BYTES, token_losses
    from sfcompile.train.plan import LOSS_TEMPORARIES

    n, v = 8 * 512, 49152
    s = torch.randn(n, v, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    t = torch.randn(n, v, device="cuda", dtype=torch.bfloat16)
    y = torch.randint(0, v, (n,), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    held = torch.cuda.memory_allocated()
    token_losses(s, y, t, 2.0)[0].backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - held
    assert extra <= s.numel() * 2 + LOSS_TEMPORARIES * LOSS_CHUNK_BYTES + 2**24, extra / 2**20


# --- the Triton kernel (interpreted on CPU) ----------------------------------------------------------------
KERNEL_CASES = [  # (rows, V, BLOCK_V, dtype): V below, at and across blocks; a tail block
    (5, 50, 16, torch.float32),
    (4, 64, 64, torch.float32),
    (3, 70, 32, torch.bfloat16),
    (2, 33, 128, torch.float16),
]


@pytest.mark.parametrize("n,v,block,dtype", KERNEL_CASES)
@pytest.mark.parametrize("terms", ["ce+kl", "ce", "kl"])
def test_kernel_rows_and_gradient_match_float64(n, v, block, dtype, terms):
    from sfcompile.train.logit_loss_kernel import logit_loss_reference, logit_loss_rows

    g = torch.Generator().manual_seed(n * 100 + v)
    s = (torch.randn(n, v, generator=g) * 4).to(dtype)
    t = (torch.randn(n, v, generator=g) * 4).to(dtype)
    s[0, 1], s[-1, -1] = 150.0, -130.0  # beyond the clamp: no KL gradient there
    y = torch.randint(0, v, (n,), generator=g)
    y[1 % n] = -100  # counted by neither loss
    y[0] = v - 1     # a target in the tail
    targets = y if "ce" in terms else None
    teacher = t if "kl" in terms else None
    ce, kl, grad = logit_loss_rows(s, targets, teacher, 2.0, LOGIT_CLAMP, 1.0, 0.7, True, block_v=block)
    r_ce, r_kl, _, r_grad = logit_loss_reference(s, targets, teacher, 2.0, LOGIT_CLAMP, 1.0, 0.7)
    for got, ref in ((ce, r_ce), (kl, r_kl)):
        assert (got is None) == (ref is None)
        if got is not None:
            assert got.dtype == torch.float32
            if targets is not None:
                assert got[1 % n] == 0
            torch.testing.assert_close(got.double(), ref, atol=5e-5, rtol=1e-5)
    assert grad.dtype == dtype and grad.shape == s.shape
    tol = {torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    assert ((grad.double() - r_grad).abs().max() / r_grad.abs().max()).item() < tol
    if targets is not None:
        assert (grad[1 % n] == 0).all()
    if teacher is not None and targets is None:
        assert grad[0, 1] == 0  # clamped entry: the KL's gradient is cut there


def test_token_losses_kernel_equals_the_chunked_form():
    g = torch.Generator().manual_seed(3)
    n, v = 12, 96
    base = torch.randn(n, v, generator=g) * 3
    t = torch.randn(n, v, generator=g) * 3
    y = torch.randint(0, v, (n,), generator=g)
    y[5] = -100
    out = {}
    for kernel in (False, True):
        s = base.clone().requires_grad_(True)
        total, ce, kl = token_losses(s, y, t, 2.0, weights=(1.0, 0.5), chunk=5, kernel=kernel)
        total.backward()
        out[kernel] = (total.detach(), ce, kl, s.grad)
    for a, b in zip(out[False], out[True]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="no second derivative"):
        token_losses(base.clone().requires_grad_(True), y, t, kernel=True, twice_differentiable=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_kernel_on_cuda_matches_the_chunked_form_at_training_size():
    n, v = 4 * 512, 49152
    g = torch.Generator(device="cuda").manual_seed(0)
    base = (torch.randn(n, v, device="cuda", generator=g) * 3).bfloat16()
    t = (torch.randn(n, v, device="cuda", generator=g) * 3).bfloat16()
    y = torch.randint(0, v, (n,), device="cuda", generator=g)
    out = {}
    for kernel in (False, True):
        s = base.clone().requires_grad_(True)
        total, ce, kl = token_losses(s, y, t, 2.0, kernel=kernel)
        total.backward()
        out[kernel] = (total.detach(), ce, kl, s.grad.float())
    for a, b in zip(out[False][:3], out[True][:3]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert ((out[False][3] - out[True][3]).norm() / out[False][3].norm()).item() < 1e-2


def test_kernel_compiles_for_hopper_without_spills():
    # the GPU path cannot run here, but it can be compiled: Triton -> PTX -> ptxas for sm_90, each variant
    import os
    import subprocess
    import tempfile

    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from sfcompile.train import logit_loss_kernel as lk

    try:
        from triton.backends.nvidia import compiler as nvc
    except ImportError:
        pytest.skip("Triton has no NVIDIA backend here")
    ptxas = os.path.join(os.path.dirname(nvc.__file__), "bin", "ptxas")
    if not os.path.exists(ptxas):
        pytest.skip("Triton's bundled ptxas is missing")
    sig = {"s_ptr": "*bf16", "t_ptr": "*bf16", "y_ptr": "*i64", "g_ptr": "*bf16", "ce_ptr": "*fp32", "kl_ptr": "*fp32",
           "scale_ptr": "*fp32", "V": "i32", "stride_s": "i64", "stride_t": "i64", "stride_g": "i64",
           "inv_temp": "fp32", "clamp": "fp32", "w_ce": "fp32", "w_kl_t": "fp32",
           "HAS_TARGETS": "constexpr", "HAS_TEACHER": "constexpr", "WRITE_GRAD": "constexpr", "BLOCK_V": "constexpr"}
    for targets, teacher in ((True, True), (True, False), (False, True)):
        src = ASTSource(fn=lk._logit_loss_kernel, signature=sig, constexprs={
            "HAS_TARGETS": targets, "HAS_TEACHER": teacher, "WRITE_GRAD": True, "BLOCK_V": lk.BLOCK_V})
        kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": lk.NUM_WARPS})
        with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
            f.write(kernel.asm["ptx"])
        report = subprocess.run([ptxas, "-arch=sm_90a", "-v", f.name, "-o", os.devnull], capture_output=True,
                                text=True, check=True).stderr
        os.unlink(f.name)
        assert "0 bytes spill stores" in report, report


def test_a_failing_loss_kernel_names_the_setting_that_avoids_it(monkeypatch):
    # an error of Triton's (it cannot build or launch the kernel) names loss_kernel='torch'; any other error
    # (bad inputs, e.g. a tensor CUDA graphs wrote over) passes through as it was, not blamed on the kernel
    import sfcompile.train.logit_loss_kernel as lk

    class CompilationError(Exception):
        __module__ = "triton.compiler.errors"

    def broken(error):
        def rows(*args, **kwargs):
            raise error

        return rows

    s = torch.randn(4, 16, requires_grad=True)
    y = torch.randint(0, 16, (4,))
    monkeypatch.setattr(lk, "logit_loss_rows", broken(CompilationError("no kernel for this architecture")))
    with pytest.raises(RuntimeError, match="CompilationError: no kernel for this architecture.*loss_kernel='torch'"):
        token_losses(s, y, torch.randn(4, 16), 2.0, weights=(1.0, 0.5), chunk=2, kernel=True)
    monkeypatch.setattr(lk, "logit_loss_rows", broken(RuntimeError("accessing tensor output of CUDAGraphs")))
    with pytest.raises(RuntimeError, match="^accessing tensor output of CUDAGraphs$"):
        token_losses(s, y, torch.randn(4, 16), 2.0, weights=(1.0, 0.5), chunk=2, kernel=True)
