"""Every kernel against its pure-PyTorch reference and against the dense float64 product.

On CPU the kernels run through Triton's interpreter (the wrappers pick it for CPU tensors, so no
TRITON_INTERPRET variable is set and nothing leaks into other test modules); shapes stay small. With CUDA the
same checks run on the compiled, autotuned kernels at layer-like shapes. The tensor-core decode kernels
(`nm24_mma`, `block16_mma`) have their own module, test_kernels_mma.py; both read kernel_testing.py.
"""

import re

import pytest
import torch
from kernel_testing import DTYPES, TOL, cuda, rel, w24, wblock

from sfcompile.lowering.kernels.block16 import block16_matmul, block16_matmul_reference
from sfcompile.lowering.kernels.nm24 import nm24_matmul, nm24_matmul_reference
from sfcompile.lowering.kernels.nm24_decode import nm24_decode_reference
from sfcompile.lowering.kernels.nm24_mma import nm24_mma_reference
from sfcompile.lowering.pack import pack

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
    w = w24(n, k, dtype, g)
    pw = pack(w, "2:4", -1)
    x = torch.randn(2, m, k, generator=g).to(dtype)   # leading dims are flattened
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    y = nm24_matmul(x, pw.data["values"], pw.data["meta"], b, config=config)
    ref = nm24_matmul_reference(x, pw.data["values"], pw.data["meta"], b)
    dense = x.double() @ w.double().T + (b.double() if bias else 0)
    assert y.shape == (2, m, n) and y.dtype == dtype
    assert rel(y, ref) < TOL[dtype]
    assert rel(y, dense) < TOL[dtype]


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
    w = w24(n, k, dtype, g)
    pw = pack(w, "2:4", -1)
    x = torch.randn(m, k, generator=g).to(dtype)
    b = torch.randn(n, generator=g).to(dtype) if m % 2 else None
    cfg = dict(VARIANT=variant, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk)
    y = nm24_matmul(x, pw.data["values"], pw.data["meta"], b, config=cfg)
    dense = x.double() @ w.double().T + (b.double() if b is not None else 0)
    assert y.shape == (m, n) and y.dtype == dtype
    assert rel(y, dense) < TOL[dtype]
    ref = nm24_matmul_reference(x, pw.data["values"], pw.data["meta"], b)
    assert rel(y, ref) < TOL[dtype]
    assert rel(y, nm24_decode_reference(x, pw.data["values"], pw.data["meta"], b)) < TOL[dtype]


def test_nm24_decode_reference_is_the_dense_product():
    # the compressed-domain formula (gather x by each value's 2-bit position) equals x @ W.T exactly in fp64
    g = torch.Generator().manual_seed(11)
    w = w24(40, 100, torch.float64, g)
    pw = pack(w, "2:4", -1)
    x = torch.randn(5, 100, generator=g, dtype=torch.float64)
    y = nm24_decode_reference(x, pw.data["values"], pw.data["meta"])
    torch.testing.assert_close(y, x @ w.T, rtol=1e-12, atol=1e-12)


def test_nm24_decode_split_counters_reset_between_calls():
    # split-K's last-arriving program resets its counter: a second call on other inputs must be right too
    g = torch.Generator().manual_seed(3)
    w = w24(32, 128, torch.float32, g)
    pw = pack(w, "2:4", -1)
    cfg = dict(VARIANT=6, BLOCK_N=16, BLOCK_K=32, SPLIT_K=4)
    for _ in range(2):
        x = torch.randn(2, 128, generator=g)
        y = nm24_matmul(x, pw.data["values"], pw.data["meta"], config=cfg)
        assert rel(y, x.double() @ w.double().T) < 1e-5


@pytest.mark.parametrize("m,bm,sk", [(1, 1, 1), (3, 4, 2), (2, 2, 3)])
def test_nm24_tile_kernel_cuda_core_path_interpreter(m, bm, sk):
    # the tile kernel's CUDA-core decompression (DECOMP 3, MoE experts at few rows); tl.sum runs in process
    g = torch.Generator().manual_seed(m)
    for dtype in DTYPES:
        w = w24(48, 100, dtype, g)
        pw = pack(w, "2:4", -1)
        x = torch.randn(m, 100, generator=g).to(dtype)
        b = torch.randn(48, generator=g).to(dtype)
        cfg = dict(BLOCK_M=bm, BLOCK_N=16, BLOCK_K=32, SPLIT_K=sk, DECOMP=3)
        y = nm24_matmul(x, pw.data["values"], pw.data["meta"], b, config=cfg)
        assert rel(y, x.double() @ w.double().T + b.double()) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nm24_grouped_interpreter(dtype):
    g = torch.Generator().manual_seed(7)
    e, n, k = 3, 24, 64
    w = w24(n, k, dtype, g, experts=e)
    pw = pack(w, "2:4", -1)
    offs = torch.tensor([5, 5, 13], dtype=torch.int32)       # expert 1 gets no rows; 2 rows past the end
    x = torch.randn(15, k, generator=g).to(dtype)
    y = nm24_matmul(x, pw.data["values"], pw.data["meta"], offs=offs,
                    config=dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, SPLIT_K=2, DECOMP=1))
    ref = nm24_matmul_reference(x, pw.data["values"], pw.data["meta"], offs=offs)
    assert rel(y, ref) < TOL[dtype]
    assert torch.equal(y[13:], torch.zeros_like(y[13:]))
    assert rel(y[5:13], x[5:13].double() @ w[2].double().T) < TOL[dtype]


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
    w = wblock(n, k, dtype, g, density)
    pw = pack(w, f"block16:{density}", -1)
    d = pw.data
    x = torch.randn(m, k, generator=g).to(dtype)
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    y = block16_matmul(x, d["tile_values"], d["row_ptr"], d["col_idx"], n, k, b, config=config)
    ref = block16_matmul_reference(x, d["tile_values"], d["row_ptr"], d["col_idx"], n, k, b)
    dense = x.double() @ w.double().T + (b.double() if bias else 0)
    assert rel(y, ref) < TOL[dtype] and rel(y, dense) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("variant", [0, 1, 2])
def test_block16_reads_fragment_order_tiles_interpreter(dtype, variant):
    # FRAG 1: every variant of the tile kernel reads its tiles in fragment order (block16.load_tiles)
    from sfcompile.lowering.kernels.block16_mma import fragment_order

    m, n, k, density, config = BLOCK_CASES[1]
    g = torch.Generator().manual_seed(11)
    w = wblock(n, k, dtype, g, density)
    d = pack(w, f"block16:{density}", -1).data
    x = torch.randn(m, k, generator=g).to(dtype)
    b = torch.randn(n, generator=g).to(dtype)
    tiles = fragment_order(d["tile_values"])
    y = block16_matmul(x, tiles, d["row_ptr"], d["col_idx"], n, k, b, config={**config, "VARIANT": variant},
                       frag=True)
    ref = block16_matmul_reference(x, tiles, d["row_ptr"], d["col_idx"], n, k, b, frag=True)
    dense = x.double() @ w.double().T + b.double()
    assert rel(y, ref) < TOL[dtype] and rel(y, dense) < TOL[dtype]


def test_block16_empty_block_row_and_grouped_interpreter():
    g = torch.Generator().manual_seed(3)
    e, n, k = 2, 32, 48
    w = wblock(n, k, torch.float32, g, 0.5, experts=e)
    w[1, :16] = 0                                              # a block row with no tiles at all
    pw = pack(w, "block16:0.5", -1)
    d = pw.data
    offs = torch.tensor([3, 7], dtype=torch.int32)
    x = torch.randn(8, k, generator=g)
    y = block16_matmul(x, d["tile_values"], d["row_ptr"], d["col_idx"], n, k, offs=offs,
                       config=dict(BLOCK_M=16, TILES=2, SPLIT_K=2, VARIANT=1))
    assert rel(y[:3], x[:3].double() @ w[0].double().T) < 1e-6
    assert rel(y[3:7], x[3:7].double() @ w[1].double().T) < 1e-6
    assert torch.equal(y[3:7, :16], torch.zeros(4, 16)) and torch.equal(y[7], torch.zeros(n))


@pytest.mark.parametrize("density", [0.1, 0.5, 0.9])
def test_block16_unpack_interpreter(density):
    from sfcompile.lowering.kernels.block16_unpack import block16_unpack

    g = torch.Generator().manual_seed(int(density * 10))
    w = wblock(48, 160, torch.bfloat16, g, density=density)
    w[16:32] = 0                                                # a block row without any tile
    d = pack(w, f"block16:{density}", -1).data
    assert torch.equal(block16_unpack(d["tile_values"], d["row_ptr"], d["col_idx"], 48, 160), w)
    from sfcompile.lowering.kernels.block16_mma import fragment_order

    frag = fragment_order(d["tile_values"])
    assert torch.equal(block16_unpack(frag, d["row_ptr"], d["col_idx"], 48, 160, frag=True), w)


def test_wrappers_reject_mismatched_shapes():
    g = torch.Generator().manual_seed(0)
    pw = pack(w24(16, 64, torch.float32, g), "2:4", -1)
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
    w = w24(64, 64, torch.float32, g)
    pw = pack(w, "2:4", -1)
    x = torch.randn(3, 64, generator=g)
    torch.testing.assert_close(nm24_matmul(x, pw.data["values"], pw.data["meta"]), x @ w.T, rtol=1e-4, atol=1e-4)
    wb = wblock(64, 64, torch.float32, g)
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
    w = w24(n, k, dtype, g).cuda()
    pw = pack(w, "2:4", -1)
    x = torch.randn(m, k, generator=g).to(dtype).cuda()
    b = torch.randn(n, generator=g).to(dtype).cuda()
    y = nm24_matmul(x, pw.data["values"], pw.data["meta"], b)
    dense = x.double() @ w.double().T + b.double()
    assert rel(y, dense) < (5e-3 if dtype == torch.float32 else TOL[dtype])


@cuda
@pytest.mark.parametrize("variant", [4, 5, 6])
@pytest.mark.parametrize("m", [1, 3, 8, 16])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_nm24_decode_variants_cuda(variant, m, dtype):
    # variant 6 compiled picks x with PTX prmt: only here (on a GPU) is that path run
    g = torch.Generator().manual_seed(m)
    n, k = 4096, 4096
    w = w24(n, k, dtype, g).cuda()
    pw = pack(w, "2:4", -1)
    x = torch.randn(m, k, generator=g).to(dtype).cuda()
    for cfg in (dict(BLOCK_N=16, BLOCK_K=64, SPLIT_K=1), dict(BLOCK_N=64, BLOCK_K=64, SPLIT_K=4),
                dict(BLOCK_N=32, BLOCK_K=128, SPLIT_K=3)):
        y = nm24_matmul(x, pw.data["values"], pw.data["meta"], config=dict(VARIANT=variant, **cfg))
        assert rel(y, x.double() @ w.double().T) < TOL[dtype]
    x_odd = torch.randn(m, k - 36, generator=g).to(dtype).cuda()     # K % 32 != 0: masked loop, partial word
    pw_odd = pack(w[:, : k - 36].contiguous(), "2:4", -1)
    y = nm24_matmul(x_odd, pw_odd.data["values"], pw_odd.data["meta"],
                    config=dict(VARIANT=variant, BLOCK_N=32, BLOCK_K=64, SPLIT_K=2))
    assert rel(y, x_odd.double() @ w[:, : k - 36].double().T) < TOL[dtype]


@cuda
@pytest.mark.parametrize("m", [1, 16, 300])
def test_block16_cuda(m):
    g = torch.Generator().manual_seed(m)
    n, k = 1024, 2048
    w = wblock(n, k, torch.bfloat16, g).cuda()
    pw = pack(w, "block16", -1)
    d = pw.data
    x = torch.randn(m, k, generator=g).bfloat16().cuda()
    y = block16_matmul(x, d["tile_values"], d["row_ptr"], d["col_idx"], n, k)
    assert rel(y, x.double() @ w.double().T) < TOL[torch.bfloat16]


@cuda
def test_grouped_cuda():
    g = torch.Generator().manual_seed(1)
    e, n, k = 8, 256, 512
    w = w24(n, k, torch.bfloat16, g, experts=e).cuda()
    pw = pack(w, "2:4", -1)
    counts = torch.randint(0, 40, (e,), generator=g)
    offs = counts.cumsum(0).to(torch.int32).cuda()
    x = torch.randn(int(counts.sum()), k, generator=g).bfloat16().cuda()
    y = nm24_matmul(x, pw.data["values"], pw.data["meta"], offs=offs)
    ref = nm24_matmul_reference(x, pw.data["values"], pw.data["meta"], offs=offs)
    assert rel(y, ref) < TOL[torch.bfloat16]


@pytest.mark.parametrize("variant", [0, 2, 3])
def test_nm24_decode_rejects_a_removed_variant(variant):
    g = torch.Generator().manual_seed(5)
    pw = pack(w24(16, 64, torch.float32, g), "2:4", -1)
    with pytest.raises(ValueError, match=f"VARIANT {variant} does not exist"):
        nm24_matmul(torch.randn(1, 64), pw.data["values"], pw.data["meta"],
                    config=dict(VARIANT=variant, BLOCK_N=16, BLOCK_K=32, SPLIT_K=1))


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
    pw = pack(w24(32, 256, torch.bfloat16, g), "2:4", -1)
    x = torch.randn(3, 256, generator=g).to(torch.bfloat16)
    y = nm24_matmul(x, pw.data["values"], pw.data["meta"], config=dict(WARPS_N=2, WARPS_K=1, CHUNKS=4, SPLIT_K=2))
    assert rel(y, nm24_mma_reference(x, pw.data["values"], pw.data["meta"])) < TOL[torch.bfloat16]


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
            d = pack(wblock(32, 64, torch.float32, g, 0.5), "block16:0.5", -1).data
            block16_matmul(x, d["tile_values"], d["row_ptr"], d["col_idx"], 32, 64, config=config)
        else:
            pw = pack(w24(32, 64, torch.float32, g), "2:4", -1)
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
    w2 = w24(n, k, torch.bfloat16, g).cuda() * 0.03
    wb = wblock(n, k, torch.bfloat16, g).cuda() * 0.04
    p24, pb = pack(w2, "2:4", -1).data, pack(wb, "block16", -1).data
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
        ref = (ref.bfloat16().double() @ w2.double().T).bfloat16().double() @ wb.double().T
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
    assert rel(eager, ref) < 2e-2 and rel(out, ref) < 2e-2
