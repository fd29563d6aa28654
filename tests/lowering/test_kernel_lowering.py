"""The Triton kernels compiled for an H200 (sm_90) on the CPU, without a GPU (`sfcompile.lowering.kernels.offline`):
Python -> TTIR -> TTGIR -> LLVM IR -> PTX -> cubin, with the ptxas that Triton's wheel carries.

The interpreter tests (test_kernels.py, test_kernels_mma.py) run the kernels as Python and never run Triton's
compiler, so an error that only the compiler reports would first show on a GPU (for one, a ``tl.dot`` with K < 16
runs in the interpreter and is refused by the compiler; so are passes that fail on a tile shape and PTX that
ptxas rejects). This compiles configs the autotuners can pick, with their warps and pipeline stages: the tl.dot
kernels grouped (MoE experts) and not, and the decode kernels with their inline PTX on (``USE_ASM``, what the
GPU runs; the interpreter takes their emulated forms). The local Triton may be newer than a GPU machine's
(3.7 here, 3.6 on the H200 image).
"""

import pytest
import triton

from sfcompile.lowering.kernels import block16, nm24

offline = pytest.importorskip("sfcompile.lowering.kernels.offline")
pytest.importorskip("triton.backends.nvidia.compiler")


def _check(compiled, marker: str = "tt.func"):
    assert compiled.asm.get("cubin"), "no cubin"
    assert marker in compiled.asm["ttir"]


DOT_FLAGS = dict(HAS_BIAS=True, FP32_IEEE=False)


@pytest.mark.parametrize("grouped", [False, True], ids=["dense-rows", "grouped"])
@pytest.mark.parametrize("small_m", [True, False], ids=["decode-space", "prefill-space"])
def test_nm24_kernel_compiles_for_sm90(small_m, grouped):
    for config in nm24.nm24_configs(small_m=small_m)[:2]:
        _check(offline.compile_for(nm24._nm24_kernel, config, {**DOT_FLAGS, "GROUPED": grouped}))


@pytest.mark.parametrize("grouped", [False, True], ids=["dense-rows", "grouped"])
@pytest.mark.parametrize("rows", [1, 2048])
@pytest.mark.parametrize("frag", [0, 1], ids=["row-major", "fragment-order"])
def test_block16_kernel_compiles_for_sm90(rows, grouped, frag):
    for config in block16.block16_configs(rows)[:2]:
        _check(offline.compile_for(block16._block16_kernel, config, {**DOT_FLAGS, "GROUPED": grouped,
                                                                     "FRAG": frag}))


# text each decode kernel's TTIR must hold; DECODE: (kernel, its flags with the bias on, space, marker)
MARKERS = {"nm24_decode": "tt.func",
           "nm24_mma": "mma.sp",      # the sparse tensor-core instruction, not the emulation
           "block16_mma": "mma.sync"}
DECODE = [(kernel, {**flags, "HAS_BIAS": True}, space, MARKERS[name])
          for name, (kernel, flags, space) in offline.decode_kernels().items()]


@pytest.mark.parametrize("rows", [1, 16])
@pytest.mark.parametrize("kernel,flags,space,marker", DECODE, ids=["nm24_decode", "nm24_mma", "block16_mma"])
def test_decode_kernels_compile_for_sm90(kernel, flags, space, marker, rows):
    for config in space(rows)[:3]:
        _check(offline.compile_for(kernel, config, flags), marker)


@pytest.mark.parametrize("kernel,flags,space,marker", DECODE[1:], ids=["nm24_mma", "block16_mma"])
def test_decode_kernels_compile_with_programmatic_dependent_launch(kernel, flags, space, marker):
    # PDL > 0 (splitk.pdl on Hopper in CUDA graphs): the kernels wait on and release their dependents
    compiled = offline.compile_for(kernel, space(1)[0], {**flags, "PDL": 1})
    _check(compiled, marker)
    assert "griddepcontrol" in compiled.asm["ptx"]


@pytest.mark.parametrize("rows", [1, 16])
@pytest.mark.parametrize("name,bypass", [("nm24_mma", {"GPC": 2}), ("nm24_mma", {"GPC": 4}),
                                         ("nm24_mma", {"GPC": 2, "EARLY": 0}), ("nm24_mma", {"GPC": 2, "KSUM": 1}),
                                         ("nm24_mma", {"GPC": 4, "KSUM": 1, "EARLY": 0}),
                                         ("block16_mma", {"BYPASS": 1}), ("block16_mma", {"BYPASS": 1, "KSUM": 16}),
                                         ("block16_mma", {"BYPASS": 1, "KSUM": 8})],
                         ids=["nm24-k16", "nm24-k8", "nm24-k16-late", "nm24-k16-sums", "nm24-k8-sums-late", "block16",
                              "block16-k16-sums", "block16-k8-sums"])
def test_decode_kernels_compile_with_the_slorb_bypass(name, bypass, rows):
    # the bypass's dense mma (m16n8k8 beside mma.sp; m16n8k16 beside the tiles') through ptxas, every config
    kernel, flags, space = offline.decode_kernels()[name]
    for config in space(rows):
        config = triton.Config({**config.kwargs, **bypass}, num_warps=config.num_warps, num_stages=config.num_stages)
        compiled = offline.compile_for(kernel, config, {**flags, **bypass, "PDL": 1})
        _check(compiled, MARKERS[name])
        assert ("mma.sync.aligned.m16n8k8" if name == "nm24_mma" else "mma.sync.aligned.m16n8k16") in \
            compiled.asm["ptx"]
        if bypass.get("KSUM"):   # the block sums' dense mma beside the bypass's, and no spill at one row
            assert compiled.asm["ptx"].count("mma.sync.aligned.m16n8k16") > (0 if name == "nm24_mma" else 1)
            assert rows > 1 or offline.resources(compiled)["spill_bytes"] == 0, config


def _opcodes(kernel, config, flags):
    return offline.opcode_counts(offline.sass(offline.compile_for(kernel, config, flags)))


def test_fragment_order_tiles_keep_the_16_byte_loads_of_row_major_ones():
    # block16.load_tiles reads a fragment-order tile whole and permutes it in registers; gathered with permuted
    # offsets instead, the unpack's tile loads fell to 8 bytes and the tile kernel's to 2 (LDG.E.U16)
    from sfcompile.lowering.kernels import block16_unpack

    def global_loads(kernel, config, flags):
        return {k: v for k, v in _opcodes(kernel, config, flags).items() if k.startswith(("LDG", "LDGSTS"))}

    unpack = [global_loads(block16_unpack._unpack_kernel, triton.Config({"TILES": 8}, num_warps=4), {"FRAG": f})
              for f in (0, 1)]
    assert unpack[1] == unpack[0] and unpack[0].get("LDG.E.128", 0) > 0
    config = block16.block16_configs(64)[0]
    tile = [global_loads(block16._block16_kernel, config, {**DOT_FLAGS, "GROUPED": False, "FRAG": f}) for f in (0, 1)]
    assert tile[1] == tile[0] and tile[0].get("LDGSTS.E.BYPASS.128", 0) > 0


def test_the_sass_of_the_sparse_tensor_core_kernel_holds_its_instruction_and_no_spills():
    kernel, flags, space, _ = DECODE[1]
    ops = _opcodes(kernel, space(1)[0], flags)
    assert any(op.startswith("HMMA.SP") for op in ops), sorted(ops)   # mma.sp became the sparse HMMA
    assert not any(op.startswith(("LDL", "STL")) for op in ops)       # no register spills to local memory


def _tile_loads(ops) -> dict:
    """Global loads of 8 and 16 bytes by width (the tile loads, plain or evict-first, and x's 8-byte loads)."""
    return {width: sum(n for op, n in ops.items() if op.startswith("LDG.E.") and op.endswith(f".{width}"))
            for width in (64, 128)}


@pytest.mark.parametrize("rows", [1, 16])
def test_block16_mma_fragment_order_tiles_load_in_16_byte_pieces(rows):
    # FRAG 1 (block16_mma(frag=True)): each lane's two 8-byte tile pieces become one 16-byte load. Per step of
    # TILES tiles the row-major layout issues 2 TILES 64-bit tile loads; fragment order TILES 128-bit ones and
    # none of 64 bits, so x's loads (MT per tile, 64-bit) are all that stays 8 bytes wide; no spills either way.
    # Seen on Triton 3.7.1 (TILES 4): M <= 1 64-bit 12 -> 4, 128-bit 0 -> 4; M <= 16 64-bit 16 -> 8, 0 -> 4.
    kernel, flags, space = offline.decode_kernels()["block16_mma"]
    for config in (space(rows)[0], space(rows)[1]):     # evict-first tile loads (STREAM 1) and plain
        tiles, mt = config.kwargs["TILES"], config.kwargs["MT"]
        row_major, frag = (_opcodes(kernel, config, {**flags, "FRAG": f}) for f in (0, 1))
        assert _tile_loads(row_major) == {64: 2 * tiles + mt * tiles, 128: 0}, config.kwargs
        assert _tile_loads(frag) == {64: mt * tiles, 128: tiles}, config.kwargs
        assert frag["HMMA.16816.F32.BF16"] == row_major["HMMA.16816.F32.BF16"] == mt * tiles
        assert not any(op.startswith(("LDL", "STL")) for op in (*row_major, *frag))
