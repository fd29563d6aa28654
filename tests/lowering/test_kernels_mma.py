"""The tensor-core decode kernels (M <= 16) against their references and the dense float64 product: the 2:4 one on
the sparse tensor cores (`kernels/nm24_mma.py`, PTX ``mma.sp``) and the block-16 one (`kernels/block16_mma.py`,
``mma.m16n8k16``), with the SLoRB bypass each adds on its own accumulators. On CPU the Triton interpreter runs
them with the mma emulated from the same per-lane registers; with CUDA the PTX runs at layer shapes.
"""

import pytest
import torch
from kernel_testing import TOL, cuda, rel, w24, wblock

from sfcompile.lowering.kernels.block16 import block16_matmul
from sfcompile.lowering.kernels.nm24 import nm24_matmul, nm24_matmul_reference
from sfcompile.lowering.kernels.nm24_mma import nm24_mma_reference
from sfcompile.lowering.pack import pack
from sfcompile.masking.slorb import block_sums

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
    w = w24(n, k, dtype, g)
    w[1] = 0                                                    # an all-zero row: positions still valid
    pw = pack(w, "2:4", -1)
    x = torch.randn(m, k + 2 * bias, generator=g).to(dtype)[:, :k]     # with bias, a row stride x is not
    b = torch.randn(n, generator=g).to(dtype) if bias else None        # loaded 16 bytes at a time from
    y = nm24_matmul(x, pw.data["values"], pw.data["meta"], b, config=dict(WARPS_N=wn, WARPS_K=wk, CHUNKS=ch,
                                                                          SPLIT_K=sk))
    ref = nm24_mma_reference(x, pw.data["values"], pw.data["meta"], b)
    assert rel(y, ref) < TOL[dtype]
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
    w = w24(n, k, torch.bfloat16, g)
    pw = pack(w, "2:4", -1)
    x = torch.randn(m, k, generator=g).to(torch.bfloat16)
    b = torch.randn(n, generator=g).to(torch.bfloat16)
    y = nm24_matmul(x, pw.data["values"], pw.data["meta"], b,
                    config=dict(WARPS_N=wn, WARPS_K=wk, CHUNKS=ch, SPLIT_K=sk, STRIPS=2, STREAM=stream))
    assert rel(y, nm24_mma_reference(x, pw.data["values"], pw.data["meta"], b)) < TOL[torch.bfloat16]


@pytest.mark.parametrize("m,n,k,wn,wk,ch,sk,bias", [
    (1, 16, 128, 1, 1, 4, 1, False),  # one row: lanes of odd t swap with even t
    (5, 40, 96, 2, 2, 4, 2, True),    # odd M, partial span, x's row stride not a multiple of 8 (scalar x path)
    (16, 32, 320, 2, 1, 8, 2, False), # two x tiles, two spans per step, last span partial
])
def test_nm24_mma_x_shuffle(m, n, k, wn, wk, ch, sk, bias):
    # XSHFL = 1 (the default): lanes t and t ^ 1 each load half of x's 8 words and swap what the other needs;
    # the same product as XSHFL = 0, two loads per lane
    g = torch.Generator().manual_seed(7 * m + n + k)
    w = w24(n, k, torch.bfloat16, g)
    pw = pack(w, "2:4", -1)
    x = torch.randn(m, k + 2 * bias, generator=g).to(torch.bfloat16)[:, :k]
    b = torch.randn(n, generator=g).to(torch.bfloat16) if bias else None
    cfg = dict(WARPS_N=wn, WARPS_K=wk, CHUNKS=ch, SPLIT_K=sk)
    y = nm24_matmul(x, pw.data["values"], pw.data["meta"], b, config={**cfg, "XSHFL": 1})
    assert rel(y, nm24_mma_reference(x, pw.data["values"], pw.data["meta"], b)) < TOL[torch.bfloat16]
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
    pw = pack(w24(n, k, dtype, g), "2:4", -1)
    x = torch.randn(m, k, generator=g).to(dtype)
    px = x.unflatten(-1, (k // group, group)).sum(-1)
    s = (torch.randn(n, k // group, generator=g) * 0.3).to(dtype)
    b = torch.randn(n, generator=g).to(dtype)
    y = nm24_mma(x, pw.data["values"], pw.data["meta"], b, torch.empty(m, n, dtype=dtype),
                 dict(WARPS_N=wn, WARPS_K=wk, CHUNKS=ch, SPLIT_K=sk, STRIPS=st, EARLY=early), bypass=(px, s))
    ref = nm24_mma_reference(x, pw.data["values"], pw.data["meta"], b, (px, s))
    assert rel(y, ref) < TOL[dtype]
    assert rel(ref, nm24_mma_reference(x, pw.data["values"], pw.data["meta"], b)) > 0.1   # (the bypass counts)


KSUM_CASES = [  # (M, N, K, WARPS_N, WARPS_K, CHUNKS, SPLIT_K, STRIPS, group, EARLY): spans whole and partial
    (1, 16, 128, 1, 1, 4, 1, 1, 16, 1),
    (3, 40, 96, 2, 2, 4, 2, 1, 16, 0),     # a partial span (3 chunks), empty splits; S loaded after the mma
    (9, 48, 384, 1, 2, 4, 3, 1, 8, 1),     # two x tiles: x rows 8-15 are the sums' A rows g + 8
    (16, 72, 320, 2, 1, 8, 2, 2, 16, 1),   # two strips share a span's sums; two spans per step
    (5, 32, 480, 1, 1, 8, 2, 1, 8, 0),     # groups of 8, 15 chunks, late S loads
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("m,n,k,wn,wk,ch,sk,st,group,early", KSUM_CASES)
def test_nm24_mma_takes_the_block_sums_from_x_itself(dtype, m, n, k, wn, wk, ch, sk, st, group, early):
    # px None (KSUM): eight dense mma.m16n8k16 a span sum x's registers by group (emulated here) into the bypass
    # mma's B; the same output as with the block sums handed in
    from sfcompile.lowering.kernels.nm24_mma import nm24_mma

    g = torch.Generator().manual_seed(m * 100 + k + group)
    pw = pack(w24(n, k, dtype, g), "2:4", -1)
    x = torch.randn(m, k, generator=g).to(dtype)
    s = (torch.randn(n, k // group, generator=g) * 0.3).to(dtype)
    b = torch.randn(n, generator=g).to(dtype)
    cfg = dict(WARPS_N=wn, WARPS_K=wk, CHUNKS=ch, SPLIT_K=sk, STRIPS=st, EARLY=early)
    y = nm24_mma(x, pw.data["values"], pw.data["meta"], b, torch.empty(m, n, dtype=dtype), cfg, bypass=(None, s))
    ref = nm24_mma_reference(x, pw.data["values"], pw.data["meta"], b, (block_sums(x, k // group), s))
    assert rel(y, ref) < TOL[dtype]
    assert torch.equal(ref, nm24_mma_reference(x, pw.data["values"], pw.data["meta"], b, (None, s)))
    assert rel(ref, nm24_mma_reference(x, pw.data["values"], pw.data["meta"], b)) > 0.1   # (the bypass counts)


@pytest.mark.parametrize("what", ["group 32", "dtype", "px shape"])
def test_nm24_mma_refuses_a_bypass_it_cannot_add(what):
    from sfcompile.lowering.kernels.nm24_mma import nm24_mma

    g = torch.Generator().manual_seed(0)
    pw = pack(w24(16, 128, torch.bfloat16, g), "2:4", -1)
    x = torch.randn(2, 128, generator=g).to(torch.bfloat16)
    group = 32 if what == "group 32" else 16
    px = x.unflatten(-1, (128 // group, group)).sum(-1)
    s = torch.randn(16, 128 // group).to(torch.float16 if what == "dtype" else torch.bfloat16)
    if what == "px shape":
        px = px[:1]
    match = {"group 32": "SLoRB group 32", "dtype": "bypass dtypes", "px shape": "block sums of shape"}[what]
    with pytest.raises(ValueError, match=match):
        nm24_mma(x, pw.data["values"], pw.data["meta"], None, torch.empty(2, 16, dtype=torch.bfloat16),
                 dict(WARPS_N=1, WARPS_K=1, CHUNKS=4, SPLIT_K=1), bypass=(px, s))
    if what != "px shape":   # the same refusals when the kernel would sum x itself
        with pytest.raises(ValueError, match=match):
            nm24_mma(x, pw.data["values"], pw.data["meta"], None, torch.empty(2, 16, dtype=torch.bfloat16),
                     dict(WARPS_N=1, WARPS_K=1, CHUNKS=4, SPLIT_K=1), bypass=(None, s))


@pytest.mark.parametrize("dtype,m,group,config", [
    (torch.bfloat16, 2, 32, dict(WARPS_N=1, WARPS_K=1, CHUNKS=4, SPLIT_K=1)),  # mma, the group it cannot add
    (torch.float32, 3, 16, None),                                             # the CUDA-core decode kernel
    (torch.bfloat16, 20, 16, None),                                           # the tile kernel (M > 16)
])
def test_nm24_matmul_adds_the_bypass_after_kernels_that_do_not_take_it(dtype, m, group, config):
    g = torch.Generator().manual_seed(m)
    pw = pack(w24(32, 128, dtype, g), "2:4", -1)
    x = torch.randn(2, m, 128, generator=g).to(dtype)
    px = x.unflatten(-1, (128 // group, group)).sum(-1)
    s = torch.randn(32, 128 // group, generator=g).to(dtype)
    y = nm24_matmul(x, pw.data["values"], pw.data["meta"], config=config, bypass=(px, s))
    ref = nm24_matmul_reference(x, pw.data["values"], pw.data["meta"]).float() + px.float() @ s.float().T
    assert y.shape == (2, m, 32) and rel(y, ref) < TOL[dtype]
    # px None: these kernels reduce x to its block sums themselves
    assert torch.equal(nm24_matmul(x, pw.data["values"], pw.data["meta"], config=config, bypass=(None, s)), y)
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
    pw = pack(w24(32, 128, torch.float16, g), "2:4", -1)
    x = torch.randn(2, 128, generator=g).to(torch.float16)
    y = nm24_matmul(x, pw.data["values"], pw.data["meta"],
                    config=dict(WARPS_N=2, WARPS_K=1, CHUNKS=4, SPLIT_K=1, maxnreg=64))
    assert rel(y, nm24_mma_reference(x, pw.data["values"], pw.data["meta"])) < TOL[torch.float16]


@pytest.mark.parametrize("dtype,k,m,reason", [(torch.float32, 64, 1, "bf16/fp16"), (torch.bfloat16, 100, 1, "K=100"),
                                              (torch.bfloat16, 64, 17, "17 rows"), (torch.bfloat16, 64, 1, "CHUNKS"),
                                              (torch.bfloat16, 64, 1, "PIPE")])
def test_nm24_mma_refuses_what_it_cannot_run(dtype, k, m, reason):
    from sfcompile.lowering.kernels.nm24_mma import nm24_mma

    g = torch.Generator().manual_seed(0)
    pw = pack(w24(16, k, dtype, g), "2:4", -1)
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
        pw = pack(w24(16, k, dtype, g), "2:4", -1)
        assert decode_choice(torch.randn(m, k, generator=g).to(dtype), pw.data["values"]) == want, (dtype, k, m)


@cuda
@pytest.mark.parametrize("m", [1, 3, 8, 9, 16])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_nm24_mma_cuda(m, dtype):
    # the PTX mma.sp path: fixed configs (masked and whole steps, split K) and the autotuned launcher
    from sfcompile.lowering.kernels.nm24_mma import nm24_mma

    g = torch.Generator().manual_seed(m)
    n, k = 4096, 4096
    w = w24(n, k, dtype, g).cuda()
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
        assert rel(y, ref) < TOL[dtype], cfg
    xs = torch.zeros(m, k + 2, dtype=dtype, device="cuda")[:, :k].copy_(x)     # x's row stride not 16-byte aligned
    assert rel(nm24_matmul(xs, pw.data["values"], pw.data["meta"], b, config=dict(
        WARPS_N=4, WARPS_K=1, CHUNKS=8, SPLIT_K=4)), ref) < TOL[dtype]
    if m not in (1, 9):     # the autotuned launchers once per x tile count (autotuning is most of this test)
        return
    y = nm24_mma(x, pw.data["values"], pw.data["meta"], b, torch.empty(m, n, dtype=dtype, device="cuda"))
    assert rel(y, ref) < TOL[dtype]
    y = nm24_matmul(x[:, :4000].contiguous(), pack(w[:, :4000].contiguous(), "2:4", -1).data["values"],
                    pack(w[:, :4000].contiguous(), "2:4", -1).data["meta"])     # K % 32 != 0: the other kernel
    assert rel(y, x[:, :4000].double() @ w[:, :4000].double().T) < TOL[dtype]


@cuda
@pytest.mark.parametrize("sums", ["given", "summed"])
@pytest.mark.parametrize("m", [1, 4, 9, 16])
@pytest.mark.parametrize("group", [8, 16])
def test_nm24_mma_bypass_cuda(m, group, sums):
    # the PTX mma.m16n8k8 on the bypass, its block sums handed in or (px None) summed from x's registers by the
    # PTX mma.m16n8k16: fixed configs (one and two strips, split K, masked spans) and the autotuned launcher,
    # against float64
    from sfcompile.lowering.kernels.nm24_mma import nm24_mma

    g = torch.Generator().manual_seed(m + group)
    n, k = 4096, 4096
    w = w24(n, k, torch.bfloat16, g).cuda()
    pw = pack(w, "2:4", -1)
    x = torch.randn(m, k, generator=g).to(torch.bfloat16).cuda()
    px = x.unflatten(-1, (k // group, group)).sum(-1)
    s = (torch.randn(n, k // group, generator=g) * 0.05).to(torch.bfloat16).cuda()
    ref = x.double() @ w.double().T + px.double() @ s.double().T
    bypass = (px if sums == "given" else None, s)
    for cfg in (dict(WARPS_N=4, WARPS_K=1, CHUNKS=4, SPLIT_K=8), dict(WARPS_N=2, WARPS_K=2, CHUNKS=8, SPLIT_K=3),
                dict(WARPS_N=4, WARPS_K=1, CHUNKS=8, SPLIT_K=4, STRIPS=2), dict(WARPS_N=1, WARPS_K=1, CHUNKS=4,
                                                                                 SPLIT_K=1),
                dict(WARPS_N=2, WARPS_K=2, CHUNKS=8, SPLIT_K=3, EARLY=0),
                dict(WARPS_N=4, WARPS_K=1, CHUNKS=8, SPLIT_K=4, STRIPS=2, EARLY=0)):
        y = nm24_mma(x, pw.data["values"], pw.data["meta"], None, torch.empty(m, n, dtype=torch.bfloat16,
                                                                               device="cuda"), cfg, bypass)
        assert rel(y, ref) < TOL[torch.bfloat16], cfg
    y = nm24_matmul(x, pw.data["values"], pw.data["meta"], bypass=bypass)        # autotuned
    assert rel(y, ref) < TOL[torch.bfloat16]


@cuda
@pytest.mark.parametrize("sums", ["given", "summed"])
@pytest.mark.parametrize("m,group", [(1, 16), (9, 16), (16, 16), (1, 8), (16, 8)])
def test_block16_mma_bypass_cuda(m, group, sums):
    # the PTX mma.m16n8k16 on the bypass, its block sums handed in or (px None) summed from x by more dense mma:
    # fixed configs and the autotuned launcher, against float64
    from sfcompile.lowering.kernels.block16_mma import block16_mma

    g = torch.Generator().manual_seed(m)
    n, k = 4096, 4096
    w = wblock(n, k, torch.bfloat16, g).cuda()
    d = {name: t.cuda() for name, t in pack(w.cpu(), "block16", -1).data.items()}
    x = torch.randn(m, k, generator=g).to(torch.bfloat16).cuda()
    px = x.unflatten(-1, (k // group, group)).sum(-1)
    s = (torch.randn(n, k // group, generator=g) * 0.05).to(torch.bfloat16).cuda()
    ref = x.double() @ w.double().T + px.double() @ s.double().T
    for cfg in (dict(WARPS=4, TILES=2, SPLIT_K=8), dict(WARPS=2, TILES=4, SPLIT_K=3), None):
        y = block16_mma(x, d["tile_values"], d["row_ptr"], d["col_idx"], n, k, config=cfg,
                        bypass=(px if sums == "given" else None, s))
        assert rel(y, ref) < TOL[torch.bfloat16], cfg


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
    assert rel(y, ref) < TOL[dtype]
    assert rel(block16_mma_reference(x, d["tile_values"], d["row_ptr"], d["col_idx"], n, k, b), ref) < TOL[dtype]
    xs = torch.zeros(m, k + 2, dtype=dtype)[:, :k].copy_(x)      # row stride not a multiple of 4: copied first
    assert rel(block16_mma(xs, tiles, d["row_ptr"], d["col_idx"], n, k, b, config=config, frag=frag), ref) < TOL[dtype]
    if frag and not bias:  # the flag reaches the kernel: row-major tiles read as fragment order are wrong
        assert rel(block16_mma(x, d["tile_values"], d["row_ptr"], d["col_idx"], n, k, config=config, frag=True),
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
    assert rel(y, ref) < TOL[torch.bfloat16]
    assert rel(block16_mma_reference(x, d["tile_values"], d["row_ptr"], d["col_idx"], n, k, b, (px, s)),
                ref) < TOL[torch.bfloat16]
    # px None: the kernel sums x itself (16 dense mma per 16 groups, x's elements as A, the 0/1 group map as B)
    y = block16_mma(x, tiles, d["row_ptr"], d["col_idx"], n, k, b, config=config, frag=frag, bypass=(None, s))
    assert rel(y, ref) < TOL[torch.bfloat16]
    with pytest.raises(ValueError, match="a multiple of 4"):
        block16_mma(x, tiles, d["row_ptr"], d["col_idx"], n, k, b, config=config, frag=frag,
                    bypass=(px[:, :-2], s[:, :-2]))
    if k % 128 == 0:   # groups of 32: the kernel adds their bypass from given sums but does not sum them itself
        with pytest.raises(ValueError, match="sums x itself in groups of 8 or 16"):
            block16_mma(x, tiles, d["row_ptr"], d["col_idx"], n, k, b, config=config, frag=frag,
                        bypass=(None, s[:, :k // 32]))


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

    d = pack(wblock(32, 32, x.dtype, torch.Generator().manual_seed(0)), "block16", -1).data
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

    g = torch.Generator().manual_seed(m)
    n, k = 1024, 2048
    w = wblock(n, k, dtype, g).cuda()
    d = pack(w, "block16", -1).data
    tiles = mod.fragment_order(d["tile_values"]) if frag else d["tile_values"]
    x = torch.randn(m, k, generator=g).to(dtype).cuda()
    b = torch.randn(n, generator=g).to(dtype).cuda()
    ref = x.double() @ w.double().T + b.double()
    for cfg in (dict(WARPS=4, TILES=2, SPLIT_K=8), dict(WARPS=1, TILES=1, SPLIT_K=1),
                dict(WARPS=8, TILES=4, SPLIT_K=3), dict(WARPS=1, TILES=4, SPLIT_K=16, STREAM=1),
                dict(WARPS=2, TILES=4, SPLIT_K=8, STREAM=2)):
        y = mod.block16_mma(x, tiles, d["row_ptr"], d["col_idx"], n, k, b, config=cfg, frag=frag)
        assert rel(y, ref) < TOL[dtype], cfg
    mod._AUTOTUNED.clear()
    assert rel(mod.block16_mma(x, tiles, d["row_ptr"], d["col_idx"], n, k, b, frag=frag), ref) < TOL[dtype]
    if frag:  # the row-major launch after it gets its own tuner
        assert rel(mod.block16_mma(x, d["tile_values"], d["row_ptr"], d["col_idx"], n, k, b), ref) < TOL[dtype]
        assert set(mod._AUTOTUNED) == {(splitk.m_key(m), False), (splitk.m_key(m), True)}
    else:  # block16_matmul (what ops calls) hands decode to this kernel: its tuner runs for the call
        mod._AUTOTUNED.clear()
        y = block16_matmul(x[None], d["tile_values"], d["row_ptr"], d["col_idx"], n, k, b)
        assert y.shape == (1, m, n) and rel(y[0], ref) < TOL[dtype] and mod._AUTOTUNED
