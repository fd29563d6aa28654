"""What the kernel tests share (test_kernels.py, test_kernels_mma.py): tolerances, the GPU mark, the error measure
and random weights of each pattern."""

import pytest
import torch

from sfcompile.patterns import NM, Block

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
TOL = {torch.float32: 1e-5, torch.bfloat16: 1.5e-2, torch.float16: 2e-3}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def rel(y, ref):
    """The relative error of ``y`` against ``ref`` in float64 (``y`` must be finite)."""
    assert torch.isfinite(y).all()
    return ((y.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def w24(n, k, dtype, g, experts=None):
    """A random 2:4 weight (N, K), or (E, N, K) experts."""
    shape = (experts, n, k) if experts else (n, k)
    w = torch.randn(shape, generator=g)
    return (w * NM(2, 4).project(torch.rand(shape, generator=g), -1)).to(dtype)


def wblock(n, k, dtype, g, density=0.5, experts=None):
    """A random block-16 weight keeping ``density`` of its tiles."""
    shape = (experts, n, k) if experts else (n, k)
    w = torch.randn(shape, generator=g)
    return (w * Block(16, density).project(torch.rand(shape, generator=g))).to(dtype)
