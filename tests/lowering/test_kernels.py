"""Every kernel against its pure-PyTorch reference and against the dense float64 product.

On CPU the kernels run through Triton's interpreter (the wrappers pick it for CPU tensors, so no
TRITON_INTERPRET variable is set and nothing leaks into other test modules); shapes stay small. With CUDA the
same checks run on the compiled, autotuned kernels at layer-like shapes.
"""

import re

import pytest
import torch

from sfcompile.lowering.kernels.block16 import block16_matmul, block16_matmul_reference
from sfcompile.lowering.kernels.nm24 import nm24_matmul, nm24_matmul_reference
from sfcompile.lowering.kernels.nm24_decode import nm24_decode_reference
from sfcompile.lowering.kernels.nm24_mma import nm24_mma_reference
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


DECODE_CASES = [  # (M, N, K, BLOCK_N, BLOCK_K, SPLIT_K): M = 1, odd M, 16 rows; EVEN and masked paths
    (1, 32, 128, 16, 64, 1),      # N, K multiples of the blocks: the mask-free loop
    (1, 48, 96, 32, 64, 2),       # N, K not block multiples
    (3, 40, 100, 16, 32, 3),      # K % 32 != 0: a partial metadata word; split K
    (7, 64, 256, 32, 64, 2),      # mask-free, split K, odd M
    (16, 24, 64, 16, 32, 1),      # 16 rows: the largest decode bucket
    (2, 64, 1024, 64, 64, 16),    # SPLIT_K 16, mask-free and pipelined
    (1, 32, 320, 16, 64, 4),      # K % (BLOCK_K * SPLIT_K) != 0: whole blocks per split, the last one empty
    (4, 32, 2048, 16, 32, 64),    # SPLIT_K 64 (the workspace's depth)
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m,n,k,bn,bk,sk", DECODE_CASES)
@pytest.mark.parametrize("variant", [4, 5, 6])
def test_nm24_decode_interpreter(dtype, m, n, k, bn, bk, sk, variant):
    # select (4), tensor-core (5) and byte-permute (6, its select form: the interpreter has no PTX; fp32 inputs
    # run it as 4) decode variants, each against the float64 dense product
    g = torch.Generator().manual_seed(m * 1000 + n + k + variant)
    w = _w24(n, k, dtype, g)
    pw = pack(w, "2:4", -1)
    x = torch.randn(m, k, generator=g).to(dtype)
    b = torch.randn(n, generator=g).to(dtype) if m % 2 else None
    cfg = dict(VARIANT=variant, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk)
    y = nm24_matmul(x, pw.data["values"], pw.data["meta"], b, config=cfg)
    dense = x.double() @ w.double().T + (b.double() if b is not None else 0)
    assert y.shape == (m, n) and y.dtype == dtype
    assert _rel(y, dense) < TOL[dtype]
    ref = nm24_matmul_reference(x, pw.data["values"], pw.data["meta"], b)
    assert _rel(y, ref) < TOL[dtype]
    assert _rel(y, nm24_decode_reference(x, pw.data["values"], pw.data["meta"], b)) < TOL[dtype]


def test_nm24_decode_reference_is_the_dense_product():
    # the compressed-domain formula (gather x by each value's 2-bit position) equals x @ W.T exactly in fp64
    g = torch.Generator().manual_seed(11)
    w = _w24(40, 100, torch.float64, g)
    pw = pack(w, "2:4", -1)
    x = torch.randn(5, 100, generator=g, dtype=torch.float64)
    y = nm24_decode_reference(x, pw.data["values"], pw.data["meta"])
    torch.testing.assert_close(y, x @ w.T, rtol=1e-12, atol=1e-12)


def test_nm24_decode_split_counters_reset_between_calls():
    # split-K's last-arriving program resets its counter: a second call on other inputs must be right too
    g = torch.Generator().manual_seed(3)
    w = _w24(32, 128, torch.float32, g)
    pw = pack(w, "2:4", -1)
    cfg = dict(VARIANT=6, BLOCK_N=16, BLOCK_K=32, SPLIT_K=4)
    for _ in range(2):
        x = torch.randn(2, 128, generator=g)
        y = nm24_matmul(x, pw.data["values"], pw.data["meta"], config=cfg)
        assert _rel(y, x.double() @ w.double().T) < 1e-5


@pytest.mark.parametrize("m,bm,sk", [(1, 1, 1), (3, 4, 2), (2, 2, 3)])
def test_nm24_tile_kernel_cuda_core_path_interpreter(m, bm, sk):
    # the tile kernel's CUDA-core decompression (DECOMP 3, MoE experts at few rows); tl.sum runs in process
    g = torch.Generator().manual_seed(m)
    for dtype in DTYPES:
        w = _w24(48, 100, dtype, g)
        pw = pack(w, "2:4", -1)
        x = torch.randn(m, 100, generator=g).to(dtype)
        b = torch.randn(48, generator=g).to(dtype)
        cfg = dict(BLOCK_M=bm, BLOCK_N=16, BLOCK_K=32, SPLIT_K=sk, DECOMP=3)
        y = nm24_matmul(x, pw.data["values"], pw.data["meta"], b, config=cfg)
        assert _rel(y, x.double() @ w.double().T + b.double()) < TOL[dtype]


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
@pytest.mark.parametrize("variant", [0, 1, 2])
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("variant", [0, 1, 2])
def test_block16_reads_fragment_order_tiles_interpreter(dtype, variant):
    # FRAG 1: every variant of the tile kernel reads its tiles in fragment order (block16.load_tiles)
    from sfcompile.lowering.kernels.block16_mma import fragment_order

    m, n, k, density, config = BLOCK_CASES[1]
    g = torch.Generator().manual_seed(11)
    w = _wblock(n, k, dtype, g, density)
    d = pack(w, f"block16:{density}", -1).data
    x = torch.randn(m, k, generator=g).to(dtype)
    b = torch.randn(n, generator=g).to(dtype)
    tiles = fragment_order(d["tile_values"])
    y = block16_matmul(x, tiles, d["row_ptr"], d["col_idx"], n, k, b, config={**config, "VARIANT": variant},
                       frag=True)
    ref = block16_matmul_reference(x, tiles, d["row_ptr"], d["col_idx"], n, k, b, frag=True)
    dense = x.double() @ w.double().T + b.double()
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


@pytest.mark.parametrize("density", [0.1, 0.5, 0.9])
def test_block16_unpack_interpreter(density):
    from sfcompile.lowering.kernels.block16_unpack import block16_unpack

    g = torch.Generator().manual_seed(int(density * 10))
    w = _wblock(48, 160, torch.bfloat16, g, density=density)
    w[16:32] = 0                                                # a block row without any tile
    d = pack(w, f"block16:{density}", -1).data
    assert torch.equal(block16_unpack(d["tile_values"], d["row_ptr"], d["col_idx"], 48, 160), w)
    from sfcompile.lowering.kernels.block16_mma import fragment_order

    frag = fragment_order(d["tile_values"])
    assert torch.equal(block16_unpack(frag, d["row_ptr"], d["col_idx"], 48, 160, frag=True), w)


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


def test_interpreted_launch_leaves_triton_language_as_it_was():
    # The interpreter patches triton.language for the jit functions an interpreted kernel calls and does not undo
    # it (Triton 3.7.1: 61 builtins of triton.language.core); a GPU kernel compiled later in the process then
    # failed ("'block_argument' object has no attribute 'dtype'"). splitk's launch restores them.
    import triton.language as tl

    objs = [tl, tl.core, tl.math, tl.core.tensor, tl.core.dtype]
    before = [dict(vars(obj)) for obj in objs]
    g = torch.Generator().manual_seed(0)
    w = _w24(64, 64, torch.float32, g)
    pw = pack(w, "2:4", -1)
    x = torch.randn(3, 64, generator=g)
    torch.testing.assert_close(nm24_matmul(x, pw.data["values"], pw.data["meta"]), x @ w.T, rtol=1e-4, atol=1e-4)
    wb = _wblock(64, 64, torch.float32, g)
    pb = pack(wb, "block16", -1)
    block16_matmul(x, pb.data["tile_values"], pb.data["row_ptr"], pb.data["col_idx"], 64, 64)
    for obj, was in zip(objs, before):
        now = vars(obj)
        changed = {k for k in was if now.get(k) is not was[k]}
        assert not changed, (obj, sorted(changed)[:8])


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
@pytest.mark.parametrize("variant", [4, 5, 6])
@pytest.mark.parametrize("m", [1, 3, 8, 16])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_nm24_decode_variants_cuda(variant, m, dtype):
    # variant 6 compiled picks x with PTX prmt: only here (on a GPU) is that path run
    g = torch.Generator().manual_seed(m)
    n, k = 4096, 4096
    w = _w24(n, k, dtype, g).cuda()
    pw = pack(w, "2:4", -1)
    x = torch.randn(m, k, generator=g).to(dtype).cuda()
    for cfg in (dict(BLOCK_N=16, BLOCK_K=64, SPLIT_K=1), dict(BLOCK_N=64, BLOCK_K=64, SPLIT_K=4),
                dict(BLOCK_N=32, BLOCK_K=128, SPLIT_K=3)):
        y = nm24_matmul(x, pw.data["values"], pw.data["meta"], config=dict(VARIANT=variant, **cfg))
        assert _rel(y, x.double() @ w.double().T) < TOL[dtype]
    x_odd = torch.randn(m, k - 36, generator=g).to(dtype).cuda()     # K % 32 != 0: masked loop, partial word
    pw_odd = pack(w[:, : k - 36].contiguous(), "2:4", -1)
    y = nm24_matmul(x_odd, pw_odd.data["values"], pw_odd.data["meta"],
                    config=dict(VARIANT=variant, BLOCK_N=32, BLOCK_K=64, SPLIT_K=2))
    assert _rel(y, x_odd.double() @ w[:, : k - 36].double().T) < TOL[dtype]


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


@pytest.mark.parametrize("variant", [0, 2, 3])
def test_nm24_decode_rejects_a_removed_variant(variant):
    g = torch.Generator().manual_seed(5)
    pw = pack(_w24(16, 64, torch.float32, g), "2:4", -1)
    with pytest.raises(ValueError, match=f"VARIANT {variant} does not exist"):
        nm24_matmul(torch.randn(1, 64), pw.data["values"], pw.data["meta"],
                    config=dict(VARIANT=variant, BLOCK_N=16, BLOCK_K=32, SPLIT_K=1))


MMA_CASES = [  # (M, N, K, WARPS_N, WARPS_K, CHUNKS, SPLIT_K): M = 1, odd M, 8 and 16 rows (two x tiles)
    (1, 16, 128, 1, 1, 4, 1),         # one span, one warp
    (3, 40, 96, 2, 2, 4, 2),          # N past the last strip; 3 chunks: a partial span, empty splits and warps
    (8, 64, 512, 4, 1, 8, 1),         # two spans per step, vector metadata loads
    (9, 48, 384, 1, 2, 4, 3),         # two x tiles, 9 rows; K split over programs and warps
    (16, 32, 320, 2, 1, 4, 2),        # 16 rows; 10 chunks: the last span has 2 (no vector metadata)
    (12, 48, 480, 1, 1, 8, 2),        # 15 chunks: the last span has 3
    (5, 32, 640, 2, 1, 4, 1),         # 5 steps in one program
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("m,n,k,wn,wk,ch,sk", MMA_CASES)
@pytest.mark.parametrize("bias", [False, True])
def test_nm24_mma_interpreter(dtype, m, n, k, wn, wk, ch, sk, bias):
    # the interpreter has no PTX: the kernel's per-lane fragments go through _mma_sp_emulated, which computes
    # what the PTX ISA says mma.sp does with them (the GPU test below runs the real instruction)
    g = torch.Generator().manual_seed(m * 1000 + n + k)
    w = _w24(n, k, dtype, g)
    w[1] = 0                                                    # an all-zero row: positions still valid
    pw = pack(w, "2:4", -1)
    x = torch.randn(m, k + 2 * bias, generator=g).to(dtype)[:, :k]     # with bias, a row stride x is not
    b = torch.randn(n, generator=g).to(dtype) if bias else None        # loaded 16 bytes at a time from
    y = nm24_matmul(x, pw.data["values"], pw.data["meta"], b, config=dict(WARPS_N=wn, WARPS_K=wk, CHUNKS=ch,
                                                                          SPLIT_K=sk))
    ref = nm24_mma_reference(x, pw.data["values"], pw.data["meta"], b)
    assert _rel(y, ref) < TOL[dtype]
    assert y[:, 1].float().abs().max() == (0 if b is None else b[1].float().abs())


@pytest.mark.parametrize("m,n,k,wn,wk,ch,sk", [
    (1, 32, 128, 1, 1, 4, 1),         # one warp, two strips
    (9, 72, 384, 2, 2, 8, 2),         # two x tiles; N ends inside a program's second strip's upper half
    (4, 40, 480, 1, 1, 4, 3),         # N ends inside the second strip's lower half; partial spans
    (16, 136, 256, 4, 1, 8, 4),       # the autotune space's two-strip config, 16 rows
])
@pytest.mark.parametrize("stream", [0, 1, 2])   # the weight loads' cache hint changes no result
def test_nm24_mma_two_strips_per_warp(m, n, k, wn, wk, ch, sk, stream):
    # STRIPS = 2: a warp's x registers serve two 16-row strips of W (rows row0 + 16, row0 + 24 as well)
    g = torch.Generator().manual_seed(m + n + k)
    w = _w24(n, k, torch.bfloat16, g)
    pw = pack(w, "2:4", -1)
    x = torch.randn(m, k, generator=g).to(torch.bfloat16)
    b = torch.randn(n, generator=g).to(torch.bfloat16)
    y = nm24_matmul(x, pw.data["values"], pw.data["meta"], b,
                    config=dict(WARPS_N=wn, WARPS_K=wk, CHUNKS=ch, SPLIT_K=sk, STRIPS=2, STREAM=stream))
    assert _rel(y, nm24_mma_reference(x, pw.data["values"], pw.data["meta"], b)) < TOL[torch.bfloat16]


@pytest.mark.parametrize("m,n,k,wn,wk,ch,sk,bias", [
    (1, 16, 128, 1, 1, 4, 1, False),  # one row: lanes of odd t swap with even t
    (5, 40, 96, 2, 2, 4, 2, True),    # odd M, partial span, x's row stride not a multiple of 8 (scalar x path)
    (16, 32, 320, 2, 1, 8, 2, False), # two x tiles, two spans per step, last span partial
])
def test_nm24_mma_x_shuffle(m, n, k, wn, wk, ch, sk, bias):
    # XSHFL = 1 (the default): lanes t and t ^ 1 each load half of x's 8 words and swap what the other needs;
    # the same product as XSHFL = 0, two loads per lane
    g = torch.Generator().manual_seed(7 * m + n + k)
    w = _w24(n, k, torch.bfloat16, g)
    pw = pack(w, "2:4", -1)
    x = torch.randn(m, k + 2 * bias, generator=g).to(torch.bfloat16)[:, :k]
    b = torch.randn(n, generator=g).to(torch.bfloat16) if bias else None
    cfg = dict(WARPS_N=wn, WARPS_K=wk, CHUNKS=ch, SPLIT_K=sk)
    y = nm24_matmul(x, pw.data["values"], pw.data["meta"], b, config={**cfg, "XSHFL": 1})
    assert _rel(y, nm24_mma_reference(x, pw.data["values"], pw.data["meta"], b)) < TOL[torch.bfloat16]
    assert torch.equal(y, nm24_matmul(x, pw.data["values"], pw.data["meta"], b, config={**cfg, "XSHFL": 0}))


BYPASS_CASES = [  # (M, N, K, WARPS_N, WARPS_K, CHUNKS, SPLIT_K, STRIPS, group)
    (1, 16, 128, 1, 1, 4, 1, 1, 16),       # one span: one k8 mma
    (3, 40, 96, 2, 2, 4, 2, 1, 16),        # N past the last strip; 3 chunks: a partial span, empty splits
    (9, 48, 384, 1, 2, 4, 3, 1, 8),        # group 8 (two k8 mma per span), two x tiles
    (16, 72, 320, 2, 1, 8, 2, 2, 16),      # two strips, two spans per step, the last span partial
    (5, 32, 480, 1, 1, 8, 2, 1, 8),        # group 8, 15 chunks
]


@pytest.mark.parametrize("early", [1, 0], ids=["early-loads", "late-loads"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("m,n,k,wn,wk,ch,sk,st,group", BYPASS_CASES)
def test_nm24_mma_adds_the_slorb_bypass_in_the_kernel(dtype, m, n, k, wn, wk, ch, sk, st, group, early):
    # the bypass px @ S.T as dense k8 mma on the sparse product's accumulators (emulated here, as mma.sp is),
    # its loads issued with the step's weight loads (EARLY 1) or after the step's mma
    from sfcompile.lowering.kernels.nm24_mma import nm24_mma

    g = torch.Generator().manual_seed(m * 100 + k + group)
    pw = pack(_w24(n, k, dtype, g), "2:4", -1)
    x = torch.randn(m, k, generator=g).to(dtype)
    px = x.unflatten(-1, (k // group, group)).sum(-1)
    s = (torch.randn(n, k // group, generator=g) * 0.3).to(dtype)
    b = torch.randn(n, generator=g).to(dtype)
    y = nm24_mma(x, pw.data["values"], pw.data["meta"], b, torch.empty(m, n, dtype=dtype),
                 dict(WARPS_N=wn, WARPS_K=wk, CHUNKS=ch, SPLIT_K=sk, STRIPS=st, EARLY=early), bypass=(px, s))
    ref = nm24_mma_reference(x, pw.data["values"], pw.data["meta"], b, (px, s))
    assert _rel(y, ref) < TOL[dtype]
    assert _rel(ref, nm24_mma_reference(x, pw.data["values"], pw.data["meta"], b)) > 0.1   # (the bypass counts)


@pytest.mark.parametrize("what", ["group 32", "dtype", "px shape"])
def test_nm24_mma_refuses_a_bypass_it_cannot_add(what):
    from sfcompile.lowering.kernels.nm24_mma import nm24_mma

    g = torch.Generator().manual_seed(0)
    pw = pack(_w24(16, 128, torch.bfloat16, g), "2:4", -1)
    x = torch.randn(2, 128, generator=g).to(torch.bfloat16)
    group = 32 if what == "group 32" else 16
    px = x.unflatten(-1, (128 // group, group)).sum(-1)
    s = torch.randn(16, 128 // group).to(torch.float16 if what == "dtype" else torch.bfloat16)
    if what == "px shape":
        px = px[:1]
    with pytest.raises(ValueError, match={"group 32": "SLoRB group 32", "dtype": "bypass dtypes",
                                          "px shape": "block sums of shape"}[what]):
        nm24_mma(x, pw.data["values"], pw.data["meta"], None, torch.empty(2, 16, dtype=torch.bfloat16),
                 dict(WARPS_N=1, WARPS_K=1, CHUNKS=4, SPLIT_K=1), bypass=(px, s))


@pytest.mark.parametrize("dtype,m,group,config", [
    (torch.bfloat16, 2, 32, dict(WARPS_N=1, WARPS_K=1, CHUNKS=4, SPLIT_K=1)),  # mma, the group it cannot add
    (torch.float32, 3, 16, None),                                             # the CUDA-core decode kernel
    (torch.bfloat16, 20, 16, None),                                           # the tile kernel (M > 16)
])
def test_nm24_matmul_adds_the_bypass_after_kernels_that_do_not_take_it(dtype, m, group, config):
    g = torch.Generator().manual_seed(m)
    pw = pack(_w24(32, 128, dtype, g), "2:4", -1)
    x = torch.randn(2, m, 128, generator=g).to(dtype)
    px = x.unflatten(-1, (128 // group, group)).sum(-1)
    s = torch.randn(32, 128 // group, generator=g).to(dtype)
    y = nm24_matmul(x, pw.data["values"], pw.data["meta"], config=config, bypass=(px, s))
    ref = nm24_matmul_reference(x, pw.data["values"], pw.data["meta"]).float() + px.float() @ s.float().T
    assert y.shape == (2, m, 32) and _rel(y, ref) < TOL[dtype]
    with pytest.raises(ValueError, match="does not fit the weight"):
        nm24_matmul(x, pw.data["values"], pw.data["meta"], config=config, bypass=(px, s[:16]))


def test_nm24_mma_autotune_space():
    # every config names each launch choice; two strips per warp only where two x tiles are (sweep 6, run 13)
    from sfcompile.lowering.kernels.nm24_mma import CONFIG_KEYS, nm24_mma_configs

    for bucket in (1, 2, 4, 8, 16):
        space = nm24_mma_configs(bucket)
        assert len(space) <= 12
        for c in space:
            assert set(CONFIG_KEYS) <= set(c.kwargs)
            assert c.num_warps == c.kwargs["WARPS_N"] * c.kwargs["WARPS_K"]
            assert c.kwargs["MT"] == (2 if bucket > 8 else 1)
            assert c.kwargs["STAGES"] == 1
        assert any(c.kwargs["STRIPS"] == 2 for c in space) == (bucket > 8)


def test_nm24_mma_register_cap_is_a_launch_option():
    # maxnreg caps registers per thread on the GPU (more warps per SM); the interpreter has none to cap
    g = torch.Generator().manual_seed(1)
    pw = pack(_w24(32, 128, torch.float16, g), "2:4", -1)
    x = torch.randn(2, 128, generator=g).to(torch.float16)
    y = nm24_matmul(x, pw.data["values"], pw.data["meta"],
                    config=dict(WARPS_N=2, WARPS_K=1, CHUNKS=4, SPLIT_K=1, maxnreg=64))
    assert _rel(y, nm24_mma_reference(x, pw.data["values"], pw.data["meta"])) < TOL[torch.float16]


def test_interpreted_launch_survives_triton_36_scalar_conversion(monkeypatch):
    # Triton 3.6's interpreter converts scalars with int(array), which NumPy >= 2.4 refuses for the one-element
    # arrays a program id gives: every range() over such a bound failed on the H200 image. Re-create that
    # strict conversion here (whatever Triton and NumPy CI has); splitk's launch must still run the kernel
    from triton.runtime import interpreter

    real = interpreter._patch_lang_tensor

    def strict_index(self):
        if self.handle.data.ndim:
            raise TypeError("only 0-dimensional arrays can be converted to Python scalars")
        return int(self.handle.data)

    def triton_36_patch(tensor, scope):
        real(tensor, scope)
        scope.set_attr(tensor, "__index__", strict_index)

    monkeypatch.setattr(interpreter, "_patch_lang_tensor", triton_36_patch)
    g = torch.Generator().manual_seed(0)
    pw = pack(_w24(32, 256, torch.bfloat16, g), "2:4", -1)
    x = torch.randn(3, 256, generator=g).to(torch.bfloat16)
    y = nm24_matmul(x, pw.data["values"], pw.data["meta"], config=dict(WARPS_N=2, WARPS_K=1, CHUNKS=4, SPLIT_K=2))
    assert _rel(y, nm24_mma_reference(x, pw.data["values"], pw.data["meta"])) < TOL[torch.bfloat16]


@pytest.mark.parametrize("dtype,k,m,reason", [(torch.float32, 64, 1, "bf16/fp16"), (torch.bfloat16, 100, 1, "K=100"),
                                              (torch.bfloat16, 64, 17, "17 rows"), (torch.bfloat16, 64, 1, "CHUNKS"),
                                              (torch.bfloat16, 64, 1, "PIPE")])
def test_nm24_mma_refuses_what_it_cannot_run(dtype, k, m, reason):
    from sfcompile.lowering.kernels.nm24_mma import nm24_mma

    g = torch.Generator().manual_seed(0)
    pw = pack(_w24(16, k, dtype, g), "2:4", -1)
    x = torch.randn(m, k, generator=g).to(dtype)
    with pytest.raises(ValueError, match=reason):
        nm24_mma(x, pw.data["values"], pw.data["meta"], None, torch.empty(m, 16, dtype=dtype),
                 dict(WARPS_N=1, WARPS_K=1, CHUNKS=2 if reason == "CHUNKS" else 4, SPLIT_K=1,
                      **({"PIPE": 1} if reason == "PIPE" else {})))


def test_decode_choice_follows_rows_dtype_and_k():
    from sfcompile.lowering.kernels.nm24 import decode_choice

    g = torch.Generator().manual_seed(0)
    for dtype, k, m, want in ((torch.bfloat16, 64, 4, "mma"), (torch.float16, 64, 1, "mma"),
                              (torch.bfloat16, 64, 16, "mma"), (torch.float32, 64, 4, "cuda-core"),
                              (torch.bfloat16, 100, 4, "cuda-core")):
        pw = pack(_w24(16, k, dtype, g), "2:4", -1)
        assert decode_choice(torch.randn(m, k, generator=g).to(dtype), pw.data["values"]) == want, (dtype, k, m)


@cuda
@pytest.mark.parametrize("m", [1, 3, 8, 9, 16])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_nm24_mma_cuda(m, dtype):
    # the PTX mma.sp path: fixed configs (masked and whole steps, split K) and the autotuned launcher
    from sfcompile.lowering.kernels.nm24_mma import nm24_mma

    g = torch.Generator().manual_seed(m)
    n, k = 4096, 4096
    w = _w24(n, k, dtype, g).cuda()
    pw = pack(w, "2:4", -1)
    x = torch.randn(m, k, generator=g).to(dtype).cuda()
    b = torch.randn(n, generator=g).to(dtype).cuda()
    ref = x.double() @ w.double().T + b.double()
    for cfg in (dict(WARPS_N=4, WARPS_K=1, CHUNKS=4, SPLIT_K=8), dict(WARPS_N=2, WARPS_K=2, CHUNKS=8, SPLIT_K=3),
                dict(WARPS_N=1, WARPS_K=1, CHUNKS=4, SPLIT_K=1), dict(WARPS_N=4, WARPS_K=1, CHUNKS=8, SPLIT_K=5),
                dict(WARPS_N=2, WARPS_K=1, CHUNKS=4, SPLIT_K=2, PREFETCH=2),
                dict(WARPS_N=8, WARPS_K=1, CHUNKS=4, SPLIT_K=4, maxnreg=64),
                dict(WARPS_N=2, WARPS_K=2, CHUNKS=8, SPLIT_K=4, STRIPS=2, PREFETCH=1),
                dict(WARPS_N=4, WARPS_K=1, CHUNKS=8, SPLIT_K=4, STRIPS=2),      # the space's two-strip config
                dict(WARPS_N=4, WARPS_K=1, CHUNKS=4, SPLIT_K=3, STAGES=3),
                dict(WARPS_N=4, WARPS_K=1, CHUNKS=8, SPLIT_K=8, STREAM=1), dict(WARPS_N=2, WARPS_K=2, CHUNKS=8,
                                                                                 SPLIT_K=8, STREAM=2),
                dict(WARPS_N=4, WARPS_K=1, CHUNKS=8, SPLIT_K=8, XSHFL=0),
                dict(WARPS_N=4, WARPS_K=1, CHUNKS=8, SPLIT_K=4, STRIPS=2, XSHFL=1, STREAM=1)):
        y = nm24_matmul(x, pw.data["values"], pw.data["meta"], b, config=cfg)
        assert _rel(y, ref) < TOL[dtype], cfg
    xs = torch.zeros(m, k + 2, dtype=dtype, device="cuda")[:, :k].copy_(x)     # x's row stride not 16-byte aligned
    assert _rel(nm24_matmul(xs, pw.data["values"], pw.data["meta"], b, config=dict(
        WARPS_N=4, WARPS_K=1, CHUNKS=8, SPLIT_K=4)), ref) < TOL[dtype]
    if m not in (1, 9):     # the autotuned launchers once per x tile count (autotuning is most of this test)
        return
    y = nm24_mma(x, pw.data["values"], pw.data["meta"], b, torch.empty(m, n, dtype=dtype, device="cuda"))
    assert _rel(y, ref) < TOL[dtype]
    y = nm24_matmul(x[:, :4000].contiguous(), pack(w[:, :4000].contiguous(), "2:4", -1).data["values"],
                    pack(w[:, :4000].contiguous(), "2:4", -1).data["meta"])     # K % 32 != 0: the other kernel
    assert _rel(y, x[:, :4000].double() @ w[:, :4000].double().T) < TOL[dtype]


@cuda
@pytest.mark.parametrize("m", [1, 4, 9, 16])
@pytest.mark.parametrize("group", [8, 16])
def test_nm24_mma_bypass_cuda(m, group):
    # the PTX mma.m16n8k8 on the bypass: fixed configs (one and two strips, split K, masked spans) and the
    # autotuned launcher, against float64
    from sfcompile.lowering.kernels.nm24_mma import nm24_mma

    g = torch.Generator().manual_seed(m + group)
    n, k = 4096, 4096
    w = _w24(n, k, torch.bfloat16, g).cuda()
    pw = pack(w, "2:4", -1)
    x = torch.randn(m, k, generator=g).to(torch.bfloat16).cuda()
    px = x.unflatten(-1, (k // group, group)).sum(-1)
    s = (torch.randn(n, k // group, generator=g) * 0.05).to(torch.bfloat16).cuda()
    ref = x.double() @ w.double().T + px.double() @ s.double().T
    for cfg in (dict(WARPS_N=4, WARPS_K=1, CHUNKS=4, SPLIT_K=8), dict(WARPS_N=2, WARPS_K=2, CHUNKS=8, SPLIT_K=3),
                dict(WARPS_N=4, WARPS_K=1, CHUNKS=8, SPLIT_K=4, STRIPS=2), dict(WARPS_N=1, WARPS_K=1, CHUNKS=4,
                                                                                 SPLIT_K=1),
                dict(WARPS_N=2, WARPS_K=2, CHUNKS=8, SPLIT_K=3, EARLY=0),
                dict(WARPS_N=4, WARPS_K=1, CHUNKS=8, SPLIT_K=4, STRIPS=2, EARLY=0)):
        y = nm24_mma(x, pw.data["values"], pw.data["meta"], None, torch.empty(m, n, dtype=torch.bfloat16,
                                                                               device="cuda"), cfg, (px, s))
        assert _rel(y, ref) < TOL[torch.bfloat16], cfg
    y = nm24_matmul(x, pw.data["values"], pw.data["meta"], bypass=(px, s))        # autotuned
    assert _rel(y, ref) < TOL[torch.bfloat16]


@cuda
@pytest.mark.parametrize("m", [1, 9, 16])
def test_block16_mma_bypass_cuda(m):
    # the PTX mma.m16n8k16 on the bypass: fixed configs and the autotuned launcher, against float64
    from sfcompile.lowering.kernels.block16_mma import block16_mma

    g = torch.Generator().manual_seed(m)
    n, k, group = 4096, 4096, 16
    w = _wblock(n, k, torch.bfloat16, g).cuda()
    d = {name: t.cuda() for name, t in pack(w.cpu(), "block16", -1).data.items()}
    x = torch.randn(m, k, generator=g).to(torch.bfloat16).cuda()
    px = x.unflatten(-1, (k // group, group)).sum(-1)
    s = (torch.randn(n, k // group, generator=g) * 0.05).to(torch.bfloat16).cuda()
    ref = x.double() @ w.double().T + px.double() @ s.double().T
    for cfg in (dict(WARPS=4, TILES=2, SPLIT_K=8), dict(WARPS=2, TILES=4, SPLIT_K=3), None):
        y = block16_mma(x, d["tile_values"], d["row_ptr"], d["col_idx"], n, k, config=cfg, bypass=(px, s))
        assert _rel(y, ref) < TOL[torch.bfloat16], cfg


@cuda
def test_tuning_bench_times_the_kernel_after_a_clean_flush():
    # the autotuners' timer: median or quantiles in ms like do_bench; a kernel twice as long times about twice
    # as long (the launch path is hidden behind the GPU sleep), and the flush leaves the L2 clean (a read)
    from sfcompile.lowering.kernels import splitk

    x = torch.randn(8 * 2**20, device="cuda")
    one = splitk.tuning_bench(lambda: x.mul(2.0))
    two = splitk.tuning_bench(lambda: (x.mul(2.0), x.mul(2.0)))
    q = splitk.tuning_bench(lambda: x.mul(2.0), quantiles=(0.5, 0.2, 0.8))
    assert isinstance(one, float) and one > 0 and len(q) == 3 and q[1] <= q[0] <= q[2]
    assert 1.5 < two / one < 2.5, (one, two)


@pytest.mark.parametrize("kernel,config", [
    ("tile", dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, SPLIT_K=1, DECOMP=0, BLOCK_KK=64)),     # misspelt
    ("tile", dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, SPLIT_K=1, DECOMP=0, HAS_BIAS=True)),  # set by the wrapper
    ("decode", dict(VARIANT=6, BLOCK_N=16, BLOCK_K=64, SPLIT_K=1, PIPE=1)),
    ("block16", dict(BLOCK_M=16, TILES=2, SPLIT_K=1, VARIANT=0, CHUNKS=4)),
])
def test_fixed_configs_with_keys_a_kernel_does_not_take_are_refused(kernel, config):
    # Triton's launcher drops keywords a kernel does not take: a misspelt key would run without its choice
    g = torch.Generator().manual_seed(0)
    bad = sorted(set(config) & {"BLOCK_KK", "HAS_BIAS", "PIPE", "CHUNKS"})
    m = 20 if kernel == "tile" else 3
    x = torch.randn(m, 64, generator=g)
    with pytest.raises(ValueError, match=re.escape(f"config keys {bad} are not launch choices")):
        if kernel == "block16":
            d = pack(_wblock(32, 64, torch.float32, g, 0.5), "block16:0.5", -1).data
            block16_matmul(x, d["tile_values"], d["row_ptr"], d["col_idx"], 32, 64, config=config)
        else:
            pw = pack(_w24(32, 64, torch.float32, g), "2:4", -1)
            nm24_matmul(x, pw.data["values"], pw.data["meta"], config=config)


# ---- programmatic dependent launch (splitk.pdl, the backend's pdl option) --------------------------------

def test_launch_mode_is_scoped_and_checked(monkeypatch):
    from sfcompile.lowering.kernels import splitk

    monkeypatch.delenv(splitk.PDL_ENV, raising=False)
    monkeypatch.setattr(splitk, "_capability", lambda index: (9, 0))
    hopper, ampere = torch.device("cuda", 0), torch.device("cuda", 1)
    assert splitk.pdl(hopper) == 0                          # plain launches outside a launch_mode block
    with splitk.launch_mode(1):
        assert splitk.pdl(hopper) == 1
        assert splitk.pdl(torch.device("cpu")) == 0          # the interpreter never
        with splitk.launch_mode(2):
            assert splitk.pdl(hopper) == 2
        assert splitk.pdl(hopper) == 1
        monkeypatch.setattr(splitk, "_capability", lambda index: (8, 0) if index == 1 else (9, 0))
        assert splitk.pdl(ampere) == 0                       # no griddepcontrol before sm_90
        monkeypatch.setattr(torch.version, "hip", "6.0")
        assert splitk.pdl(hopper) == 0                       # ROCm: no griddepcontrol
        monkeypatch.setattr(torch.version, "hip", None)
        monkeypatch.setenv(splitk.PDL_ENV, "0")              # the environment overrides
        assert splitk.pdl(hopper) == 0
        monkeypatch.setenv(splitk.PDL_ENV, "on")
        with pytest.raises(ValueError, match="SFCOMPILE_PDL='on' is not a launch mode"):
            splitk.pdl(hopper)
    monkeypatch.delenv(splitk.PDL_ENV)
    assert splitk.pdl(hopper) == 0
    with pytest.raises(ValueError, match="launch mode 3"):
        with splitk.launch_mode(3):
            pass


def test_backend_runs_its_graph_in_launch_mode_one():
    # the wrapper the backend puts around Inductor's compiled function: mode 1 inside the call only, and
    # Inductor's attributes (its boxed calling convention) kept
    from sfcompile.lowering.backend import _in_launch_mode
    from sfcompile.lowering.kernels import splitk

    def compiled(args):
        return splitk._LAUNCH_MODE.get(), list(args)

    compiled._boxed_call = True
    compiled.zero_grad = "kept"
    run = _in_launch_mode(compiled, 1)
    assert run([3]) == (1, [3]) and splitk._LAUNCH_MODE.get() == 0
    assert run._boxed_call is True and run.zero_grad == "kept"


@cuda
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_decode_kernels_with_programmatic_dependent_launch_cuda(mode):
    # chains where each kernel reads what the one before wrote (x of the next layer = y of this one), eagerly
    # and captured in a CUDA graph: the wait in pdl_begin must order them
    from sfcompile.lowering.kernels import splitk
    from sfcompile.lowering.kernels.block16_mma import block16_mma
    from sfcompile.lowering.kernels.nm24_mma import nm24_mma

    g = torch.Generator().manual_seed(mode)
    n = k = 1024
    w24 = _w24(n, k, torch.bfloat16, g).cuda() * 0.03
    wb = _wblock(n, k, torch.bfloat16, g).cuda() * 0.04
    p24, pb = pack(w24, "2:4", -1).data, pack(wb, "block16", -1).data
    x0 = torch.randn(4, k, generator=g).bfloat16().cuda()

    def chain(x):
        for _ in range(6):
            x = nm24_mma(x, p24["values"], p24["meta"], None, torch.empty_like(x),
                         config=dict(WARPS_N=4, WARPS_K=1, CHUNKS=4, SPLIT_K=4))
            x = block16_mma(x, pb["tile_values"], pb["row_ptr"], pb["col_idx"], n, k,
                            config=dict(WARPS=1, TILES=4, SPLIT_K=4, STREAM=1))
            x = block16_matmul(x, pb["tile_values"], pb["row_ptr"], pb["col_idx"], n, k,
                               config=dict(BLOCK_M=16, TILES=4, SPLIT_K=4, VARIANT=1))
        return x

    ref = x0.double()
    for _ in range(6):
        ref = (ref.bfloat16().double() @ w24.double().T).bfloat16().double() @ wb.double().T
        ref = ref.bfloat16().double() @ wb.double().T
    with splitk.launch_mode(mode):
        eager = chain(x0)
        static_x = x0.clone()
        chain(static_x)                                  # compiled and warm before capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = chain(static_x)
    graph.replay()
    torch.cuda.synchronize()
    assert _rel(eager, ref) < 2e-2 and _rel(out, ref) < 2e-2


# ---- block16_mma: the block-16 decode kernel on the tensor cores (ops dispatches it for M <= 16) ---------

def _wblock_rows(n, k, dtype, g, density=0.5):
    """A block-16 W with an empty block row (1) and a full one (2), the rest random, ``density`` of the tiles
    kept in all (what `pack` verifies)."""
    rows, cols = n // 16, k // 16
    keep = torch.zeros(rows, cols, dtype=torch.bool)
    keep[2] = True
    rest = [(i, j) for i in range(rows) if i not in (1, 2) for j in range(cols)]
    for idx in torch.randperm(len(rest), generator=g)[:round(density * rows * cols) - cols].tolist():
        keep[rest[idx]] = True
    mask = keep.repeat_interleave(16, 0).repeat_interleave(16, 1)
    return (torch.randn(n, k, generator=g) * mask).to(dtype)


@pytest.mark.parametrize("frag", [False, True], ids=["row-major", "fragment-order"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("m,n,k,config,bias", [
    (1, 64, 96, dict(WARPS=2, TILES=2, SPLIT_K=3), True),      # splits past a row's tiles: empty programs
    (3, 80, 96, dict(WARPS=4, TILES=4, SPLIT_K=1), False),     # N / 16 not a multiple of WARPS
    (8, 64, 64, dict(WARPS=1, TILES=1, SPLIT_K=2), True),
    (9, 64, 96, dict(WARPS=2, TILES=2, SPLIT_K=2), False),     # two x tiles (MT = 2)
    (16, 64, 96, dict(WARPS=4, TILES=4, SPLIT_K=4, STREAM=2), True),    # (cache hints: the same result)
    (2, 64, 64, dict(WARPS=1, TILES=2, SPLIT_K=1, STREAM=1), False),
])
def test_block16_mma_interpreter(dtype, m, n, k, config, bias, frag):
    # frag: the tiles in fragment_order, one 16-byte load per lane (FRAG 1)
    from sfcompile.lowering.kernels.block16_mma import block16_mma, block16_mma_reference, fragment_order

    g = torch.Generator().manual_seed(m * 7 + n)
    w = _wblock_rows(n, k, dtype, g)
    d = pack(w, "block16", -1).data
    tiles = fragment_order(d["tile_values"]) if frag else d["tile_values"]
    x = torch.randn(m, k, generator=g).to(dtype)
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    y = block16_mma(x, tiles, d["row_ptr"], d["col_idx"], n, k, b, config=config, frag=frag)
    ref = x.double() @ w.double().T + (b.double() if bias else 0)
    assert y.shape == (m, n) and y.dtype == dtype
    assert _rel(y, ref) < TOL[dtype]
    assert _rel(block16_mma_reference(x, d["tile_values"], d["row_ptr"], d["col_idx"], n, k, b), ref) < TOL[dtype]
    xs = torch.zeros(m, k + 2, dtype=dtype)[:, :k].copy_(x)      # row stride not a multiple of 4: copied first
    assert _rel(block16_mma(xs, tiles, d["row_ptr"], d["col_idx"], n, k, b, config=config, frag=frag), ref) < TOL[dtype]
    if frag and not bias:  # the flag reaches the kernel: row-major tiles read as fragment order are wrong
        assert _rel(block16_mma(x, d["tile_values"], d["row_ptr"], d["col_idx"], n, k, config=config, frag=True),
                    ref) > 0.5


@pytest.mark.parametrize("frag", [False, True], ids=["row-major", "fragment-order"])
@pytest.mark.parametrize("m,n,k,config,group", [
    (1, 64, 256, dict(WARPS=2, TILES=2, SPLIT_K=1), 16),     # one chunk of 16 groups
    (3, 80, 512, dict(WARPS=4, TILES=1, SPLIT_K=3), 16),     # 32 groups over 3 splits: an empty one
    (9, 64, 384, dict(WARPS=2, TILES=4, SPLIT_K=2), 8),      # 48 groups, two x tiles
    (16, 48, 160, dict(WARPS=1, TILES=2, SPLIT_K=1), 8),     # 20 groups: the last chunk has 4
])
def test_block16_mma_adds_the_slorb_bypass_in_the_kernel(m, n, k, config, group, frag):
    # the bypass px @ S.T as dense mma.m16n8k16 over the groups, on the tiles' accumulators (emulated here)
    from sfcompile.lowering.kernels.block16_mma import block16_mma, block16_mma_reference, fragment_order

    g = torch.Generator().manual_seed(m + k + group)
    w = _wblock_rows(n, k, torch.bfloat16, g)
    d = pack(w, "block16", -1).data
    tiles = fragment_order(d["tile_values"]) if frag else d["tile_values"]
    x = torch.randn(m, k, generator=g).to(torch.bfloat16)
    px = x.unflatten(-1, (k // group, group)).sum(-1)
    s = (torch.randn(n, k // group, generator=g) * 0.3).to(torch.bfloat16)
    b = torch.randn(n, generator=g).to(torch.bfloat16)
    y = block16_mma(x, tiles, d["row_ptr"], d["col_idx"], n, k, b, config=config, frag=frag, bypass=(px, s))
    ref = x.double() @ w.double().T + b.double() + px.double() @ s.double().T
    assert _rel(y, ref) < TOL[torch.bfloat16]
    assert _rel(block16_mma_reference(x, d["tile_values"], d["row_ptr"], d["col_idx"], n, k, b, (px, s)),
                ref) < TOL[torch.bfloat16]
    with pytest.raises(ValueError, match="a multiple of 4"):
        block16_mma(x, tiles, d["row_ptr"], d["col_idx"], n, k, b, config=config, frag=frag,
                    bypass=(px[:, :-2], s[:, :-2]))


def test_block16_fragment_order_puts_each_lanes_a_operand_in_16_contiguous_bytes():
    from sfcompile.lowering.kernels.block16_mma import fragment_order, fragment_order_inverse

    tv = torch.randn(5, 16, 16, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    fo = fragment_order(tv)
    assert fo.shape == tv.shape and fo.dtype == tv.dtype
    assert torch.equal(fragment_order_inverse(fo), tv)
    # worked by hand: (row 9, col 6) is g 1, h 1, t 1, j 2 -> lane 5, its second half: 5 * 8 + 4 + 2 = 46
    assert torch.equal(fo.reshape(5, 256)[:, 46], tv[:, 9, 6])
    assert torch.equal(fo.reshape(5, 256)[:, 0], tv[:, 0, 0]) and torch.equal(fo.reshape(5, 256)[:, 4], tv[:, 8, 0])
    # every lane L = 4g + t: its 8 elements are row g, columns 4t .. 4t + 3, then row g + 8, the same columns
    lanes = fo.reshape(5, 32, 8)
    for lane in range(32):
        g, t = divmod(lane, 4)
        assert torch.equal(lanes[:, lane], torch.cat([tv[:, g, 4 * t:4 * t + 4], tv[:, g + 8, 4 * t:4 * t + 4]], 1))
    assert fragment_order(torch.zeros(0, 16, 16)).shape == (0, 16, 16)
    with pytest.raises(ValueError, match=r"\(T, 16, 16\).*\(4, 256\)"):
        fragment_order(tv.reshape(5, 256)[:4])


def test_block16_mma_autotune_space():
    # every (WARPS, TILES, SPLIT_K) with and without the evict-first hint (run 17); x tiles follow the bucket
    from sfcompile.lowering.kernels.block16_mma import block16_mma_configs

    for bucket in (1, 2, 4, 8, 16):
        space = [c.kwargs for c in block16_mma_configs(bucket)]
        shapes = {(c["WARPS"], c["TILES"], c["SPLIT_K"]) for c in space}
        assert len(space) == 2 * len(shapes) and {c["STREAM"] for c in space} == {0, 1}
        assert all(c["MT"] == (2 if bucket > 8 else 1) and c["SPLIT_K"] <= 64 for c in space)


@pytest.mark.parametrize("what,x,config,match", [
    ("rows", torch.zeros(17, 32, dtype=torch.bfloat16), None, "17 rows of x"),
    ("dtype", torch.zeros(2, 32), None, "mma.m16n8k16 takes bf16/fp16"),
    ("tiles", torch.zeros(2, 32, dtype=torch.bfloat16), dict(WARPS=1, TILES=3, SPLIT_K=1), "TILES must be 1, 2 or 4"),
])
def test_block16_mma_refuses_what_it_cannot_run(what, x, config, match):
    from sfcompile.lowering.kernels.block16_mma import block16_mma

    d = pack(_wblock(32, 32, x.dtype, torch.Generator().manual_seed(0)), "block16", -1).data
    with pytest.raises(ValueError, match=match):
        block16_mma(x, d["tile_values"], d["row_ptr"], d["col_idx"], 32, 32, config=config)


@cuda
@pytest.mark.parametrize("frag", [False, True], ids=["row-major", "fragment-order"])
@pytest.mark.parametrize("m", [1, 8, 16])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_block16_mma_cuda(m, dtype, frag):
    # the PTX mma path: fixed configs and the autotuned launcher against the dense product; with frag, the
    # 16-byte tile loads (FRAG 1) of tiles in fragment_order, which the launcher tunes on their own (the
    # autotuner's cache key does not see FRAG)
    from sfcompile.lowering.kernels import block16_mma as mod
    from sfcompile.lowering.kernels import splitk
    from sfcompile.lowering.kernels.block16 import block16_matmul

    g = torch.Generator().manual_seed(m)
    n, k = 1024, 2048
    w = _wblock(n, k, dtype, g).cuda()
    d = pack(w, "block16", -1).data
    tiles = mod.fragment_order(d["tile_values"]) if frag else d["tile_values"]
    x = torch.randn(m, k, generator=g).to(dtype).cuda()
    b = torch.randn(n, generator=g).to(dtype).cuda()
    ref = x.double() @ w.double().T + b.double()
    for cfg in (dict(WARPS=4, TILES=2, SPLIT_K=8), dict(WARPS=1, TILES=1, SPLIT_K=1),
                dict(WARPS=8, TILES=4, SPLIT_K=3), dict(WARPS=1, TILES=4, SPLIT_K=16, STREAM=1),
                dict(WARPS=2, TILES=4, SPLIT_K=8, STREAM=2)):
        y = mod.block16_mma(x, tiles, d["row_ptr"], d["col_idx"], n, k, b, config=cfg, frag=frag)
        assert _rel(y, ref) < TOL[dtype], cfg
    mod._AUTOTUNED.clear()
    assert _rel(mod.block16_mma(x, tiles, d["row_ptr"], d["col_idx"], n, k, b, frag=frag), ref) < TOL[dtype]
    if frag:  # the row-major launch after it gets its own tuner
        assert _rel(mod.block16_mma(x, d["tile_values"], d["row_ptr"], d["col_idx"], n, k, b), ref) < TOL[dtype]
        assert set(mod._AUTOTUNED) == {(splitk.m_key(m), False), (splitk.m_key(m), True)}
    else:  # block16_matmul (what ops calls) hands decode to this kernel: its tuner runs for the call
        mod._AUTOTUNED.clear()
        y = block16_matmul(x[None], d["tile_values"], d["row_ptr"], d["col_idx"], n, k, b)
        assert y.shape == (1, m, n) and _rel(y[0], ref) < TOL[dtype] and mod._AUTOTUNED
