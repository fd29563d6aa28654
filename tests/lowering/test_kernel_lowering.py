"""The tl.dot kernels lowered to Triton IR for an H200 (sm_90), on the CPU, without a GPU.

The interpreter tests (test_kernels.py) run the kernels as Python and never run Triton's compiler, so an
error that only its front end reports would first show on a GPU. This runs that front end (Python AST -> TTIR)
for configs the autotuners can pick: the tl.dot kernels grouped (MoE experts) and not, and the decode kernels
with their inline PTX on (``USE_ASM``, what the GPU runs; the interpreter takes their emulated forms).
"""

import pytest
import triton

from sfcompile.lowering.kernels import block16, block16_mma, nm24, nm24_decode, nm24_mma

nvidia = pytest.importorskip("triton.backends.nvidia.compiler")


def _ttir(kernel, pointers: dict[str, str], constexprs: dict) -> str:
    from triton._C import libtriton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = kernel
    while not hasattr(fn, "arg_names"):  # autotuner / heuristics wrappers around the JITFunction
        fn = fn.fn
    signature = {name: "constexpr" if name in constexprs else pointers.get(name, "i32") for name in fn.arg_names}
    source = ASTSource(fn=fn, signature=signature,
                       constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()})
    backend = nvidia.CUDABackend(GPUTarget("cuda", 90, 32))
    options = backend.parse_options({})
    context = libtriton.ir.context()
    libtriton.ir.load_dialects(context)
    backend.load_dialects(context)
    module = source.make_ir(backend.target, options, backend.get_codegen_implementation(options),
                            backend.get_module_map(), context)
    return str(module)


FLAGS = dict(HAS_BIAS=True, FP32_IEEE=False)
NM24_POINTERS = {"x_ptr": "*bf16", "v_ptr": "*bf16", "meta_ptr": "*i32", "bias_ptr": "*bf16", "offs_ptr": "*i32",
                 "out_ptr": "*bf16", "ws_ptr": "*fp32", "cnt_ptr": "*i32"}
BLOCK16_POINTERS = {"x_ptr": "*bf16", "tv_ptr": "*bf16", "row_ptr_ptr": "*i32", "col_ptr": "*i32",
                    "bias_ptr": "*bf16", "offs_ptr": "*i32", "out_ptr": "*bf16", "ws_ptr": "*fp32", "cnt_ptr": "*i32"}


def _configs(configs: list[triton.Config]) -> list[dict]:
    return [dict(c.kwargs) for c in configs]


@pytest.mark.parametrize("grouped", [False, True], ids=["dense-rows", "grouped"])
@pytest.mark.parametrize("config", _configs(nm24.nm24_configs(small_m=True)[:2] + nm24.nm24_configs(small_m=False)[:2]),
                         ids=str)
def test_nm24_kernel_lowers_for_sm90(config, grouped):
    ir = _ttir(nm24._nm24_kernel, NM24_POINTERS, {**FLAGS, "GROUPED": grouped, **config})
    assert "tt.func" in ir and ("tt.dot" in ir or "tt.reduce" in ir)


@pytest.mark.parametrize("grouped", [False, True], ids=["dense-rows", "grouped"])
@pytest.mark.parametrize("config", _configs(block16.block16_configs(1)[:2] + block16.block16_configs(2048)[:2]),
                         ids=str)
def test_block16_kernel_lowers_for_sm90(config, grouped):
    ir = _ttir(block16._block16_kernel, BLOCK16_POINTERS, {**FLAGS, "GROUPED": grouped, **config})
    assert "tt.func" in ir


POINTERS = {**NM24_POINTERS, **BLOCK16_POINTERS, "v_ptr": "*bf16"}
DECODE = [  # (kernel, flags, its autotune space at 1 and at 16 rows, text its TTIR must hold)
    (nm24_decode._nm24_decode_kernel, dict(HAS_BIAS=True, FP32_IEEE=False, USE_ASM=True, EVEN=True, PREFETCH=0),
     nm24_decode.nm24_decode_configs, "tt.func"),
    (nm24_mma._nm24_mma_kernel, dict(HAS_BIAS=True, USE_ASM=True, META_VEC=True, X_VEC=True, PDL=0),
     nm24_mma.nm24_mma_configs, "mma.sp"),   # the sparse tensor-core instruction, not the emulation
    (block16_mma._block16_mma_kernel, dict(HAS_BIAS=True, USE_ASM=True, PDL=0), block16_mma.block16_mma_configs,
     "mma.sync"),
]


@pytest.mark.parametrize("rows", [1, 16])
@pytest.mark.parametrize("kernel,flags,space,marker", DECODE, ids=["nm24_decode", "nm24_mma", "block16_mma"])
def test_decode_kernels_lower_for_sm90(kernel, flags, space, marker, rows):
    for config in _configs(space(rows))[:3]:
        ir = _ttir(kernel, POINTERS, {**flags, **config})
        assert marker in ir, config
