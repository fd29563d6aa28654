import pytest
import torch

from sfcompile.lowering.pack import pack
from sfcompile.patterns import NM, Block

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _w24(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    return (w * NM(2, 4).project(torch.rand(shape, generator=g), -1)).to(dtype)


def _wblock(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    return (w * Block(16, 0.5).project(torch.rand(shape, generator=g))).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_linear_ops_match_dense_on_cpu(dtype):
    x = torch.randn(2, 3, 64).to(dtype)
    b = torch.randn(32).to(dtype)
    for w, pat in ((_w24((32, 64), dtype), "2:4"), (_wblock((32, 64), dtype), "block16")):
        pw = pack(w, pat, -1)
        y = pw.linear(x, b)
        ref = torch.nn.functional.linear(x.double(), w.double(), b.double())
        assert y.shape == (2, 3, 32) and y.dtype == dtype
        torch.testing.assert_close(y.double(), ref, rtol=2e-2, atol=2e-2)


def test_linear_block16_reads_fragment_order_tiles_when_told():
    # frag=True: the same weight from its tiles in fragment_order; the row-major tiles read as fragment order
    # give another (wrong) product, so the flag is what makes the op read the layout
    from sfcompile.lowering import ops  # noqa: F401  (registers torch.ops.sfcompile.*)
    from sfcompile.lowering.kernels.block16_mma import fragment_order

    w = _wblock((32, 64), torch.float32, seed=4)
    d = pack(w, "block16", -1).data
    x, b = torch.randn(3, 64), torch.randn(32)
    op = torch.ops.sfcompile.linear_block16
    want = torch.nn.functional.linear(x, w, b)
    got = op(x, fragment_order(d["tile_values"]), d["row_ptr"], d["col_idx"], 32, 64, b, frag=True)
    torch.testing.assert_close(got, want)
    assert not torch.allclose(op(x, d["tile_values"], d["row_ptr"], d["col_idx"], 32, 64, b, frag=True), want)


def test_conv1d_oriented_weight_packs_to_same_op():
    w_kn = _w24((24, 64), seed=1).T.contiguous()
    pw = pack(w_kn, "2:4", 0)
    x = torch.randn(5, 64)
    torch.testing.assert_close(pw.linear(x), x @ w_kn)                 # Conv1D: x @ W (K, N)


@pytest.mark.parametrize("pat", ["2:4", "block16"])
def test_grouped_ops_match_loop_on_cpu(pat):
    e, n, k = 3, 32, 64
    w = _w24((e, n, k), seed=2) if pat == "2:4" else _wblock((e, n, k), seed=2)
    pw = pack(w, pat, -1)
    offs = torch.tensor([2, 2, 7], dtype=torch.int32)
    x = torch.randn(9, k)
    y = pw.grouped(x, offs)
    torch.testing.assert_close(y[:2], x[:2] @ w[0].T)
    torch.testing.assert_close(y[2:7], x[2:7] @ w[2].T)
    assert torch.equal(y[7:], torch.zeros(2, n))


def test_opcheck_schemas_and_fakes():
    x = torch.randn(3, 64)
    pw = pack(_w24((32, 64)), "2:4", -1)
    torch.library.opcheck(torch.ops.sfcompile.linear_nm24.default,
                          (x, pw.data["values"], pw.data["meta"], torch.randn(32)),
                          test_utils=("test_schema", "test_faketensor"))
    pb = pack(_wblock((32, 64)), "block16", -1)
    d = pb.data
    torch.library.opcheck(torch.ops.sfcompile.linear_block16.default,
                          (x, d["tile_values"], d["row_ptr"], d["col_idx"], 32, 64, None),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.sfcompile.linear_block16.default,
                          (x, d["tile_values"], d["row_ptr"], d["col_idx"], 32, 64, None), {"frag": True},
                          test_utils=("test_schema", "test_faketensor"))
    pe = pack(_w24((2, 32, 64)), "2:4", -1)
    torch.library.opcheck(torch.ops.sfcompile.grouped_nm24.default,
                          (x, pe.data["values"], pe.data["meta"], torch.tensor([1, 3], dtype=torch.int32)),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_linear_nm24_slorb_adds_the_bypass(dtype):
    from sfcompile.lowering import ops  # noqa: F401  (registers torch.ops.sfcompile.*)

    w = _w24((32, 64), dtype, seed=3)
    pw = pack(w, "2:4", -1)
    x, b = torch.randn(2, 3, 64).to(dtype), torch.randn(32).to(dtype)
    px = x.unflatten(-1, (4, 16)).sum(-1)
    s = torch.randn(32, 4).to(dtype)
    y = torch.ops.sfcompile.linear_nm24_slorb(x, pw.data["values"], pw.data["meta"], px, s, b)
    ref = torch.nn.functional.linear(x.double(), w.double(), b.double()) + px.double() @ s.double().T
    assert y.shape == (2, 3, 32) and y.dtype == dtype
    torch.testing.assert_close(y.double(), ref, rtol=2e-2, atol=5e-2)
    torch.library.opcheck(torch.ops.sfcompile.linear_nm24_slorb.default,
                          (x, pw.data["values"], pw.data["meta"], px, s, b), test_utils=("test_schema",
                                                                                          "test_faketensor"))
    # px None: the op takes the block sums of x itself (the backend's kernel_sums)
    assert torch.equal(torch.ops.sfcompile.linear_nm24_slorb(x, pw.data["values"], pw.data["meta"], None, s, b), y)
    torch.library.opcheck(torch.ops.sfcompile.linear_nm24_slorb.default,
                          (x, pw.data["values"], pw.data["meta"], None, s, b), test_utils=("test_schema",
                                                                                            "test_faketensor"))


def test_linear_block16_slorb_adds_the_bypass():
    from sfcompile.lowering import ops  # noqa: F401  (registers torch.ops.sfcompile.*)
    from sfcompile.lowering.kernels.block16_mma import fragment_order

    w = _wblock((32, 64), seed=5)
    d = pack(w, "block16", -1).data
    x, b = torch.randn(2, 3, 64), torch.randn(32)
    px = x.unflatten(-1, (4, 16)).sum(-1)
    s = torch.randn(32, 4)
    op = torch.ops.sfcompile.linear_block16_slorb
    want = torch.nn.functional.linear(x, w, b) + px @ s.T
    torch.testing.assert_close(op(x, d["tile_values"], d["row_ptr"], d["col_idx"], 32, 64, px, s, b), want)
    torch.testing.assert_close(op(x, fragment_order(d["tile_values"]), d["row_ptr"], d["col_idx"], 32, 64, px, s, b,
                                  frag=True), want)
    torch.library.opcheck(op.default, (x, d["tile_values"], d["row_ptr"], d["col_idx"], 32, 64, px, s, b),
                          test_utils=("test_schema", "test_faketensor"))
    torch.testing.assert_close(op(x, d["tile_values"], d["row_ptr"], d["col_idx"], 32, 64, None, s, b), want)


def test_ops_trace_under_torch_compile():
    pw = pack(_w24((32, 64)), "2:4", -1)
    v, m = pw.data["values"], pw.data["meta"]

    def f(x):
        return torch.ops.sfcompile.linear_nm24(x, v, m, None).relu()

    x = torch.randn(4, 64)
    y = torch.compile(f, backend="aot_eager", fullgraph=True)(x)
    torch.testing.assert_close(y, (x @ pw.unpack().T).relu())


# ---- CUDA dispatch -------------------------------------------------------------------------------------

@cuda
@pytest.mark.parametrize("m", [1, 8, 17, 1024])
def test_cuda_linear_nm24_dispatch(m):
    w = _w24((512, 1024), torch.bfloat16).cuda()
    pw = pack(w, "2:4", -1)
    x = torch.randn(m, 1024, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(512, device="cuda", dtype=torch.bfloat16)
    y = pw.linear(x, b)
    ref = torch.nn.functional.linear(x.double(), w.double(), b.double())
    assert ((y.double() - ref).norm() / ref.norm()).item() < 1e-2


@cuda
def test_cuda_unsupported_dtype_falls_back_with_log(caplog):
    w = _w24((64, 128), torch.float64).cuda()
    pw = pack(w, "2:4", -1)
    x = torch.randn(3, 128, device="cuda", dtype=torch.float64)
    with caplog.at_level("WARNING", logger="sfcompile.lowering"):
        y = pw.linear(x)
    torch.testing.assert_close(y, x @ w.T)
    assert "float64 has no sparse kernel" in caplog.text


@cuda
def test_cuda_block16_and_grouped():
    from sfcompile.lowering.kernels.block16_mma import fragment_order

    w = _wblock((512, 1024), torch.bfloat16).cuda()
    pw = pack(w, "block16", -1)
    d = pw.data
    frag = fragment_order(d["tile_values"])
    for m in (1, 40, 300):   # the tensor-core decode kernel, the tile kernel, unpack + cuBLAS
        x = torch.randn(m, 1024, device="cuda", dtype=torch.bfloat16)
        ref = x.double() @ w.double().T
        assert ((pw.linear(x).double() - ref).norm() / ref.norm()).item() < 1e-2
        y = torch.ops.sfcompile.linear_block16(x, frag, d["row_ptr"], d["col_idx"], 512, 1024, frag=True)
        assert ((y.double() - ref).norm() / ref.norm()).item() < 1e-2, m
    we = _w24((4, 256, 512), torch.bfloat16).cuda()
    pe = pack(we, "2:4", -1)
    offs = torch.tensor([3, 3, 10, 12], dtype=torch.int32, device="cuda")
    x = torch.randn(12, 512, device="cuda", dtype=torch.bfloat16)
    y = pe.grouped(x, offs)
    ref = torch.cat([x[:3].double() @ we[0].double().T, x[3:10].double() @ we[2].double().T,
                     x[10:12].double() @ we[3].double().T])
    assert ((y.double() - ref).norm() / ref.norm()).item() < 1e-2



@cuda
@pytest.mark.parametrize("sums", ["given", "summed"])
def test_cuda_slorb_ops_add_the_bypass_on_every_path(sums):
    # each path of both bypass ops on the GPU, the block sums handed in or (px None) taken by the op: the decode
    # kernels at M = 1 (the bypass inside); 2:4 from cuSPARSELt at M >= 17, block-16 from its tile kernel (40)
    # and unpack + cuBLAS (300), each with the bypass added after
    w24, wb = _w24((512, 1024), torch.bfloat16).cuda(), _wblock((512, 1024), torch.bfloat16).cuda()
    p24, pb = pack(w24, "2:4", -1).data, pack(wb, "block16", -1).data
    s = (torch.randn(512, 64, device="cuda") * 0.05).to(torch.bfloat16)
    for m in (1, 40, 300):
        x = torch.randn(m, 1024, device="cuda", dtype=torch.bfloat16)
        px = x.unflatten(-1, (64, 16)).sum(-1)
        arg = px if sums == "given" else None
        for w, y in ((w24, torch.ops.sfcompile.linear_nm24_slorb(x, p24["values"], p24["meta"], arg, s)),
                     (wb, torch.ops.sfcompile.linear_block16_slorb(x, pb["tile_values"], pb["row_ptr"],
                                                                    pb["col_idx"], 512, 1024, arg, s))):
            ref = x.double() @ w.double().T + px.double() @ s.double().T
            assert y.shape == (m, 512) and ((y.double() - ref).norm() / ref.norm()).item() < 1e-2, m



def test_cslt_cache_keeps_no_weight_alive(monkeypatch):
    # the cuSPARSELt copy dies with the packed values it was built from, and is rebuilt after an in-place write
    import gc
    import weakref

    from sfcompile.lowering import ops

    built = []
    monkeypatch.setattr(torch, "_cslt_compress", lambda dense: built.append(1) or dense.clone(), raising=False)
    monkeypatch.setattr(ops, "_CSLT", type(ops._CSLT)())
    pw = pack(_w24((32, 64)), "2:4", -1)
    values, meta = pw.data["values"], pw.data["meta"]
    first = ops._cslt_compressed(values, meta, 64)
    assert torch.equal(first, pw.unpack()) and ops._cslt_compressed(values, meta, 64) is first and built == [1]
    values.mul_(2)                                               # a new version: compressed again
    assert torch.equal(ops._cslt_compressed(values, meta, 64), 2 * first) and built == [1, 1]
    ref = weakref.ref(values)
    del values, pw, first
    gc.collect()
    assert ref() is None and len(ops._CSLT) == 0
