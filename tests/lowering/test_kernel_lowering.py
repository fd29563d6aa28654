"""The Triton kernels compiled for an H200 (sm_90) on the CPU, without a GPU (`sfcompile.lowering.kernels.offline`):
Python -> TTIR -> TTGIR -> LLVM IR -> PTX -> cubin, with the ptxas that Triton's wheel carries.

The interpreter tests (test_kernels.py) run the kernels as Python and never run Triton's compiler, so an error
that only the compiler reports would first show on a GPU (for one, a ``tl.dot`` with K < 16 runs in the
interpreter and is refused by the compiler; so are passes that fail on a tile shape and PTX that ptxas
rejects). This compiles configs the autotuners can pick, with their warps and pipeline stages: the tl.dot
kernels grouped (MoE experts) and not, and the decode kernels with their inline PTX on (``USE_ASM``, what the
GPU runs; the interpreter takes their emulated forms). The local Triton may be newer than a GPU machine's
(3.7 here, 3.6 on the H200 image).
"""

import pytest

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
def test_block16_kernel_compiles_for_sm90(rows, grouped):
    for config in block16.block16_configs(rows)[:2]:
        _check(offline.compile_for(block16._block16_kernel, config, {**DOT_FLAGS, "GROUPED": grouped}))


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


def test_the_sass_of_the_sparse_tensor_core_kernel_holds_its_instruction_and_no_spills():
    kernel, flags, space, _ = DECODE[1]
    compiled = offline.compile_for(kernel, space(1)[0], flags)
    ops = offline.opcode_counts(offline.sass(compiled))
    assert any(op.startswith("HMMA.SP") for op in ops), sorted(ops)   # mma.sp became the sparse HMMA
    assert not any(op.startswith(("LDL", "STL")) for op in ops)       # no register spills to local memory
