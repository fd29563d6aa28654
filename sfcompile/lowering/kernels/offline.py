"""Compile a kernel for a GPU this machine does not have, and read what the compiler made of it.

Triton's wheel carries the NVIDIA back end with ``ptxas`` and ``nvdisasm``, so a kernel goes from Python to a
cubin for any compute capability on a CPU-only machine (Python -> TTIR -> TTGIR -> LLVM IR -> PTX -> cubin),
and the cubin's SASS can be counted: the tests compile every kernel family this way
(tests/lowering/test_kernel_lowering.py) and ``benchmarks/sass_summary.py`` lists each config's load widths,
tensor-core instructions and spills. Nothing here runs a kernel or times one.
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import tempfile

import triton


def decode_kernels() -> dict:
    """The decode kernels: name -> (kernel, its constexpr flags as a GPU launch on an aligned bf16 x without bias
    sets them, its autotune space by rows). The tests and benchmarks/sass_summary.py compile from this table."""
    from sfcompile.lowering.kernels import block16_mma, nm24_decode, nm24_mma

    return {
        "nm24_decode": (nm24_decode._nm24_decode_kernel,
                        dict(HAS_BIAS=False, FP32_IEEE=False, USE_ASM=True, EVEN=True, PREFETCH=0),
                        nm24_decode.nm24_decode_configs),
        "nm24_mma": (nm24_mma._nm24_mma_kernel, dict(HAS_BIAS=False, USE_ASM=True, META_VEC=True, X_VEC=True, PDL=0,
                                                     GPC=0, KSUM=0), nm24_mma.nm24_mma_configs),
        "block16_mma": (block16_mma._block16_mma_kernel, dict(HAS_BIAS=False, USE_ASM=True, PDL=0, FRAG=0, BYPASS=0,
                                                            KSUM=0),
                        block16_mma.block16_mma_configs),
    }


# the pointer arguments of the kernels in this package, by name (the rest are i32 scalars or constexprs)
POINTERS = {"x_ptr": "*bf16", "v_ptr": "*bf16", "tv_ptr": "*bf16", "meta_ptr": "*i32", "row_ptr_ptr": "*i32",
            "col_ptr": "*i32", "bias_ptr": "*bf16", "offs_ptr": "*i32", "out_ptr": "*bf16", "ws_ptr": "*fp32",
            "cnt_ptr": "*i32", "px_ptr": "*bf16", "s_ptr": "*bf16"}


def compile_for(kernel, config: triton.Config, flags: dict, *, capability: int = 90, pointers=None,
                aligned: bool = True):
    """``kernel`` (a JITFunction, or an autotuner around one) compiled for ``capability`` with ``config``'s
    meta-parameters, warps and stages and the constexpr ``flags``; returns Triton's compiled kernel (its
    ``asm`` holds ttir, ttgir, llir, ptx and cubin).

    ``aligned``: specialise as a launch on layer-shaped tensors does, every pointer 16-byte aligned and every
    integer argument a multiple of 16 except those the kernel does not specialise (``do_not_specialize``, e.g.
    M); the compiler's vector widths follow from these facts (without them it cannot prove a 16-byte load
    aligned and splits it). ``aligned=False``: nothing known, as a launch on odd shapes."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    pointers = POINTERS if pointers is None else pointers
    fn = kernel
    while not hasattr(fn, "arg_names"):  # autotuner / heuristics wrappers around the JITFunction
        fn = fn.fn
    constexprs = {**flags, **config.kwargs}
    signature = {name: "constexpr" if name in constexprs else pointers.get(name, "i32") for name in fn.arg_names}
    unspecialised = set(getattr(fn, "do_not_specialize", ()))
    divisible = [i for i, name in enumerate(fn.arg_names)
                 if aligned and signature[name] != "constexpr" and name not in unspecialised]
    source = ASTSource(fn=fn, signature=signature,
                       constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()},
                       attrs={(i,): [["tt.divisibility", 16]] for i in divisible})
    return triton.compile(source, target=GPUTarget("cuda", capability, 32),
                          options={"num_warps": config.num_warps, "num_stages": config.num_stages})


def _tool(name: str) -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def resources(compiled) -> dict:
    """What ``ptxas -v`` reports for the kernel's PTX: registers per thread, spill bytes (stores + loads),
    stack frame bytes; and the shared memory Triton allocated."""
    target = re.search(r"^\.target\s+(\w+)", compiled.asm["ptx"], re.M).group(1)
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "k.ptx")
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        report = subprocess.run([_tool("ptxas"), "-v", "--gpu-name", target, ptx, "-o", os.path.join(tmp, "k.o")],
                                capture_output=True, text=True, check=True).stderr
    number = lambda pattern: int(re.search(pattern, report).group(1))  # noqa: E731
    return {"registers": number(r"Used (\d+) registers"),
            "spill_bytes": number(r"(\d+) bytes spill stores") + number(r"(\d+) bytes spill loads"),
            "stack_bytes": number(r"(\d+) bytes stack frame"), "shared_bytes": compiled.metadata.shared}


def sass(compiled) -> str:
    """The cubin's SASS, disassembled by the ``nvdisasm`` in Triton's wheel."""
    tool = _tool("nvdisasm")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        return subprocess.run([tool, "-c", path], capture_output=True, text=True, check=True).stdout


_OPCODE = re.compile(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)", re.M)


def opcode_counts(sass_text: str) -> collections.Counter:
    """Static count of each SASS opcode (with its modifiers, e.g. ``LDG.E.128``), predicates stripped."""
    return collections.Counter(_OPCODE.findall(sass_text))
