"""Every kernel against its pure-PyTorch reference and against the dense float64 product.

On CPU the kernels run through Triton's interpreter (the wrappers pick it for CPU tensors, so no
TRITON_INTERPRET variable is set and nothing leaks into other test modules); shapes stay small. With CUDA the
same checks run on the compiled, autotuned kernels at layer-like shapes.
"""

import pytest
import torch

from sfcompile.lowering.kernels.block16 import block16_matmul, block16_matmul_reference
from sfcompile.lowering.kernels.nm24 import nm24_matmul, nm24_matmul_reference
from sfcompile.lowering.pack import pack
from sfcompile.patterns import NM, Block

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
TOL = {torch.float32: 1e-5, torch.bfloat16: 1.5e-2, torch.float16: 2e-3}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _rel(y, ref):
    assert torch.isfinite(y).all()
    return ((y.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def _w24(n, k, dtype, g, experts=None):
    shape = (experts, n, k) if experts else (n, k)
    w = torch.randn(shape, generator=g)
    return (w * NM(2, 4).project(torch.rand(shape, generator=g), -1)).to(dtype)


def _wblock(n, k, dtype, g, density=0.5, experts=None):
    shape = (experts, n, k) if experts else (n, k)
    w = torch.randn(shape, generator=g)
    return (w * Block(16, density).project(torch.rand(shape, generator=g))).to(dtype)


NM_CASES = [  # (M, N, K, config)
    (1, 16, 64, dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, SPLIT_K=1)),
    (3, 48, 96, dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=64, SPLIT_K=2)),    # N, K not block multiples
    (7, 32, 100, dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, SPLIT_K=3)),   # K % 32 != 0: partial meta word
    (19, 24, 128, dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=64, SPLIT_K=1)),  # M over one block
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m,n,k,config", NM_CASES)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("decomp", [0, 1, 2])
def test_nm24_interpreter(dtype, m, n, k, config, bias, decomp):
    config = {**config, "DECOMP": decomp}
    g = torch.Generator().manual_seed(m * 1000 + n + k)
    w = _w24(n, k, dtype, g)
    pw = pack(w, "2:4", -1)
    x = torch.randn(2, m, k, generator=g).to(dtype)   # leading dims are flattened
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    y = nm24_matmul(x, pw.data["values"], pw.data["meta"], b, config=config)
    ref = nm24_matmul_reference(x, pw.data["values"], pw.data["meta"], b)
    dense = x.double() @ w.double().T + (b.double() if bias else 0)
    assert y.shape == (2, m, n) and y.dtype == dtype
    assert _rel(y, ref) < TOL[dtype]
    assert _rel(y, dense) < TOL[dtype]


_CUDA_CORE_SCRIPT = """
import torch
from sfcompile.lowering.kernels.nm24 import nm24_matmul
from sfcompile.lowering.pack import pack
from sfcompile.patterns import NM
g = torch.Generator().manual_seed(0)
for dtype in (torch.float32, torch.bfloat16, torch.float16):
    for m, n, k, bm, sk in ((1, 16, 64, 1, 1), (3, 48, 96, 4, 2), (2, 32, 100, 2, 3)):
        w = torch.randn(n, k, generator=g)
        w = (w * NM(2, 4).project(torch.rand(n, k, generator=g), -1)).to(dtype)
        pw = pack(w, "2:4", -1)
        x = torch.randn(m, k, generator=g).to(dtype)
        b = torch.randn(n, generator=g).to(dtype)
        cfg = dict(BLOCK_M=bm, BLOCK_N=16, BLOCK_K=32, SPLIT_K=sk, DECOMP=3)
        y = nm24_matmul(x, pw.data["values"], pw.data["meta"], b, config=cfg).double()
        ref = x.double() @ w.double().T + b.double()
        err = ((y - ref).norm() / ref.norm()).item()
        assert err < 1e-2, (dtype, m, n, k, err)
print("ok")
"""


def test_nm24_cuda_core_path_interpreter():
    # The CUDA-core path reduces with tl.sum, a jit helper that Triton's interpreter runs only when
    # TRITON_INTERPRET=1 is set before triton is imported: run it in a child process so the variable
    # cannot leak into this one.
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    proc = subprocess.run([sys.executable, "-c", _CUDA_CORE_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nm24_grouped_interpreter(dtype):
    g = torch.Generator().manual_seed(7)
    e, n, k = 3, 24, 64
    w = _w24(n, k, dtype, g, experts=e)
    pw = pack(w, "2:4", -1)
    offs = torch.tensor([5, 5, 13], dtype=torch.int32)       # expert 1 gets no rows; 2 rows past the end
    x = torch.randn(15, k, generator=g).to(dtype)
    y = nm24_matmul(x, pw.data["values"], pw.data["meta"], offs=offs,
                    config=dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, SPLIT_K=2, DECOMP=1))
    ref = nm24_matmul_reference(x, pw.data["values"], pw.data["meta"], offs=offs)
    assert _rel(y, ref) < TOL[dtype]
    assert torch.equal(y[13:], torch.zeros_like(y[13:]))
    assert _rel(y[5:13], x[5:13].double() @ w[2].double().T) < TOL[dtype]


BLOCK_CASES = [  # (M, N, K, density, config)
    (1, 32, 64, 0.5, dict(BLOCK_M=16, TILES=2, SPLIT_K=1)),
    (5, 48, 80, 0.25, dict(BLOCK_M=16, TILES=4, SPLIT_K=2)),
    (17, 16, 96, 0.75, dict(BLOCK_M=16, TILES=2, SPLIT_K=1)),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m,n,k,density,config", BLOCK_CASES)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("variant", [0, 1])
def test_block16_interpreter(dtype, m, n, k, density, config, bias, variant):
    config = {**config, "VARIANT": variant}
    g = torch.Generator().manual_seed(m * 100 + n + k)
    w = _wblock(n, k, dtype, g, density)
    pw = pack(w, f"block16:{density}", -1)
    d = pw.data
    x = torch.randn(m, k, generator=g).to(dtype)
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    y = block16_matmul(x, d["tile_values"], d["row_ptr"], d["col_idx"], n, k, b, config=config)
    ref = block16_matmul_reference(x, d["tile_values"], d["row_ptr"], d["col_idx"], n, k, b)
    dense = x.double() @ w.double().T + (b.double() if bias else 0)
    assert _rel(y, ref) < TOL[dtype] and _rel(y, dense) < TOL[dtype]


def test_block16_empty_block_row_and_grouped_interpreter():
    g = torch.Generator().manual_seed(3)
    e, n, k = 2, 32, 48
    w = _wblock(n, k, torch.float32, g, 0.5, experts=e)
    w[1, :16] = 0                                              # a block row with no tiles at all
    pw = pack(w, "block16:0.5", -1)
    d = pw.data
    offs = torch.tensor([3, 7], dtype=torch.int32)
    x = torch.randn(8, k, generator=g)
    y = block16_matmul(x, d["tile_values"], d["row_ptr"], d["col_idx"], n, k, offs=offs,
                       config=dict(BLOCK_M=16, TILES=2, SPLIT_K=2, VARIANT=1))
    assert _rel(y[:3], x[:3].double() @ w[0].double().T) < 1e-6
    assert _rel(y[3:7], x[3:7].double() @ w[1].double().T) < 1e-6
    assert torch.equal(y[3:7, :16], torch.zeros(4, 16)) and torch.equal(y[7], torch.zeros(n))


def test_wrappers_reject_mismatched_shapes():
    g = torch.Generator().manual_seed(0)
    pw = pack(_w24(16, 64, torch.float32, g), "2:4", -1)
    with pytest.raises(ValueError, match="does not match 2:4 values"):
        nm24_matmul(torch.randn(2, 32), pw.data["values"], pw.data["meta"])
    with pytest.raises(ValueError, match="differs from weight dtype"):
        nm24_matmul(torch.randn(2, 64).half(), pw.data["values"], pw.data["meta"])
    with pytest.raises(ValueError, match="multiples of 16"):
        block16_matmul(torch.randn(2, 40), torch.zeros(0, 16, 16), torch.zeros(2, dtype=torch.int32),
                       torch.zeros(0, dtype=torch.int32), 16, 40)


# ---- CUDA: compiled + autotuned kernels at layer-like shapes ----------------------------------------------

@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("m", [1, 5, 16, 33, 512])
def test_nm24_cuda(dtype, m):
    g = torch.Generator().manual_seed(m)
    n, k = 1024, 2080                                           # K % 32 != 0 on purpose
    w = _w24(n, k, dtype, g).cuda()
    pw = pack(w, "2:4", -1)
    x = torch.randn(m, k, generator=g).to(dtype).cuda()
    b = torch.randn(n, generator=g).to(dtype).cuda()
    y = nm24_matmul(x, pw.data["values"], pw.data["meta"], b)
    dense = x.double() @ w.double().T + b.double()
    assert _rel(y, dense) < (5e-3 if dtype == torch.float32 else TOL[dtype])


@cuda
@pytest.mark.parametrize("m", [1, 16, 300])
def test_block16_cuda(m):
    g = torch.Generator().manual_seed(m)
    n, k = 1024, 2048
    w = _wblock(n, k, torch.bfloat16, g).cuda()
    pw = pack(w, "block16", -1)
    d = pw.data
    x = torch.randn(m, k, generator=g).bfloat16().cuda()
    y = block16_matmul(x, d["tile_values"], d["row_ptr"], d["col_idx"], n, k)
    assert _rel(y, x.double() @ w.double().T) < TOL[torch.bfloat16]


@cuda
def test_grouped_cuda():
    g = torch.Generator().manual_seed(1)
    e, n, k = 8, 256, 512
    w = _w24(n, k, torch.bfloat16, g, experts=e).cuda()
    pw = pack(w, "2:4", -1)
    counts = torch.randint(0, 40, (e,), generator=g)
    offs = counts.cumsum(0).to(torch.int32).cuda()
    x = torch.randn(int(counts.sum()), k, generator=g).bfloat16().cuda()
    y = nm24_matmul(x, pw.data["values"], pw.data["meta"], offs=offs)
    ref = nm24_matmul_reference(x, pw.data["values"], pw.data["meta"], offs=offs)
    assert _rel(y, ref) < TOL[torch.bfloat16]
