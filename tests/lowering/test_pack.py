import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sfcompile.lowering.pack import PackError, load_packed, pack, save_packed
from sfcompile.patterns import NM, Block

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _hard_24(shape, k_dim, dtype, seed, holes=True):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g).to(dtype)
    mask = NM(2, 4).project(torch.rand(shape, generator=g), k_dim)
    w = w * mask
    if holes:  # groups with fewer than 2 non-zeros must round-trip too
        w = w * (torch.rand(shape, generator=g) > 0.2)
    return w


def _hard_block(shape, density, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g).to(dtype)
    return w * Block(16, density).project(torch.rand(shape, generator=g))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 9), kg=st.integers(1, 20), dt=st.sampled_from(DTYPES), seed=st.integers(0, 2**16),
       conv1d=st.booleans())
def test_nm24_round_trip_2d(n, kg, dt, seed, conv1d):
    k = 4 * kg
    shape, k_dim = ((k, n), 0) if conv1d else ((n, k), 1)
    w = _hard_24(shape, k_dim, dt, seed)
    pw = pack(w, "2:4", k_dim)
    assert pw.data["values"].shape == (n, k // 2) and pw.data["meta"].dtype == torch.int32
    assert pw.data["meta"].shape == (n, -(-k // 32))
    assert torch.equal(pw.unpack(), w)
    assert pw.nk_shape == (n, k)


@settings(max_examples=15, deadline=None)
@given(e=st.integers(1, 4), n=st.integers(1, 6), kg=st.integers(1, 12), dt=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**16), k_mid=st.booleans())
def test_nm24_round_trip_experts(e, n, kg, dt, seed, k_mid):
    k = 4 * kg
    shape, k_dim = ((e, k, n), 1) if k_mid else ((e, n, k), 2)
    w = _hard_24(shape, k_dim, dt, seed)
    pw = pack(w, "2:4", k_dim)
    assert pw.experts == e and pw.data["values"].shape == (e, n, k // 2)
    assert torch.equal(pw.unpack(), w)


@settings(max_examples=20, deadline=None)
@given(r=st.integers(1, 4), c=st.integers(1, 5), density=st.sampled_from([0.25, 0.5, 0.75]),
       dt=st.sampled_from(DTYPES), seed=st.integers(0, 2**16), lead=st.sampled_from([(), (1,), (3,)]),
       conv1d=st.booleans())
def test_block16_round_trip(r, c, density, dt, seed, lead, conv1d):
    shape = (*lead, 16 * r, 16 * c)
    w = _hard_block(shape, density, dt, seed)
    k_dim = len(shape) - 2 if (conv1d and not lead) else len(shape) - 1
    pw = pack(w, f"block16:{density}", k_dim)
    assert torch.equal(pw.unpack(), w)
    nz_tiles = int((w.reshape(-1, r, 16, c, 16) != 0).any(-1).any(-2).sum())
    assert pw.data["tile_values"].shape == (nz_tiles, 16, 16)


def test_meta_bits_are_documented_layout():
    # group 0 keeps positions (1, 3), group 1 keeps (0, 2): nibble = i0 | i1 << 2.
    w = torch.tensor([[0.0, 1.0, 0.0, 2.0, 3.0, 0.0, 4.0, 0.0]])
    pw = pack(w, "2:4", -1)
    assert pw.data["values"].tolist() == [[1.0, 2.0, 3.0, 4.0]]
    assert pw.data["meta"].tolist() == [[(1 | 3 << 2) | ((0 | 2 << 2) << 4)]]


def test_refuses_unverified_weight_and_names_it():
    w = torch.randn(4, 8)
    with pytest.raises(PackError, match=r"model\.layers\.0\.mlp\.up_proj.*8 groups"):
        pack(w, "2:4", -1, name="model.layers.0.mlp.up_proj.weight")


def test_refuses_other_patterns_with_reason():
    w = _hard_24((4, 8), 1, torch.float32, 0)
    with pytest.raises(PackError, match="4:8 has no packed form"):
        pack(w, "4:8", -1)
    with pytest.raises(PackError, match="not a multiple of M=4"):
        pack(torch.zeros(4, 6), "2:4", -1)


def test_save_load_round_trip(tmp_path):
    w24 = _hard_24((32, 64), 1, torch.bfloat16, 1)
    wblk = _hard_block((32, 48), 0.5, torch.bfloat16, 2)
    conv = _hard_24((64, 24), 0, torch.float16, 3)
    state = {"a.weight": pack(w24, "2:4", 1), "b.weight": pack(wblk, "block16", 1),
             "c.weight": pack(conv, "2:4", 0), "ln.weight": torch.ones(32)}
    path = tmp_path / "m.safetensors"
    save_packed(state, path)
    dense = load_packed(path)
    assert torch.equal(dense["a.weight"], w24) and torch.equal(dense["b.weight"], wblk)
    assert torch.equal(dense["c.weight"], conv) and torch.equal(dense["ln.weight"], torch.ones(32))
    packed = load_packed(path, dense=False)
    assert packed["a.weight"].format == "nm24" and torch.equal(packed["c.weight"].unpack(), conv)


def test_packed_bytes_are_56_percent_for_bf16():
    w = _hard_24((256, 4096), 1, torch.bfloat16, 0, holes=False)
    ratio = pack(w, "2:4", 1).nbytes() / (w.numel() * 2)
    assert abs(ratio - 0.5625) < 1e-6


def _rewrite(path, out, drop=None, replace=None):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    t = load_file(str(path))
    if drop:
        del t[drop]
    if replace:
        t.update(replace)
    save_file(t, str(out), metadata=meta)


def test_missing_and_corrupt_tensors_are_named(tmp_path):
    path = tmp_path / "m.safetensors"
    save_packed({"a.weight": pack(_hard_24((8, 32), 1, torch.float32, 0), "2:4", 1),
                 "b.weight": pack(_hard_block((16, 32), 0.5, torch.float32, 0), "block16", 1)}, path)
    bad = tmp_path / "bad.safetensors"
    _rewrite(path, bad, drop="a.weight::meta")
    with pytest.raises(PackError, match=r"missing tensor 'a\.weight::meta'"):
        load_packed(bad)
    _rewrite(path, bad, replace={"a.weight::values": torch.zeros(8, 15)})
    with pytest.raises(PackError, match=r"'a\.weight::values' is corrupt"):
        load_packed(bad)
    _rewrite(path, bad, replace={"a.weight::meta": torch.full((8, 1), 0x7, dtype=torch.int32)})
    with pytest.raises(PackError, match=r"'a\.weight::meta' is corrupt"):
        load_packed(bad)
    _rewrite(path, bad, replace={"b.weight::col_idx": torch.tensor([0, 7], dtype=torch.int32)})
    with pytest.raises(PackError, match=r"b\.weight is corrupt"):
        load_packed(bad)
    bad.write_bytes(path.read_bytes()[:50])
    with pytest.raises(PackError, match="cannot read packed checkpoint"):
        load_packed(bad)


def test_metadata_is_json_described(tmp_path):
    from safetensors import safe_open

    path = tmp_path / "m.safetensors"
    save_packed({"a.weight": pack(_hard_24((8, 32), 1, torch.float32, 0), "2:4", 1)}, path)
    with safe_open(str(path), framework="pt") as f:
        info = json.loads(f.metadata()["sfcompile_packed"])
    assert info["packed"]["a.weight"] == {"format": "nm24", "pattern": "2:4", "shape": [8, 32], "k_dim": 1,
                                          "dtype": "float32"}
