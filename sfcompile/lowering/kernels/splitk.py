"""What the sparse matmul kernels share: the split-K epilogue, its counters and workspace, and the launcher.

Split-K without extra launches: each of the ``SPLIT_K`` programs of an output tile stores its fp32 partial
sums into a workspace ``(SPLIT_K, M, N)``; the last one to arrive (an int32 counter per tile, bumped with an
acquire-release atomic) adds them up, writes y and resets the counter to zero for the next launch. The
counters are allocated once per device, so CUDA-graph capture never allocates them.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import os
from collections.abc import Callable

import torch
import triton
import triton.language as tl

__all__ = ["expert_rows", "store_tile", "store_points", "counters", "workspace", "decode_buffers", "split_depth",
           "m_key", "ieee_dot", "tuning_bench", "launch", "autotuner", "mma_unsupported", "capability", "launch_mode",
           "pdl", "pdl_begin", "pdl_end", "load_weight", "PDL_ENV"]

MAX_SPLIT_K = 64


@triton.jit
def expert_rows(offs_ptr, expert, M, GROUPED: tl.constexpr):
    """The rows [start, end) of x this program's ``expert`` multiplies: all M rows, or, grouped (MoE experts,
    rows sorted by expert), the slice that the inclusive row-offsets ``offs_ptr`` give the expert."""
    row_start = 0
    row_end = M
    if GROUPED:
        row_end = tl.load(offs_ptr + expert)
        if expert > 0:
            row_start = tl.load(offs_ptr + expert - 1)
    return row_start, row_end


@triton.jit
def store_tile(acc, out_ptr, ws_ptr, cnt_ptr, offs_m, offs_n, mask, M, N, stride_om, pid_k, tile,
               SPLIT_K: tl.constexpr):
    """Write the (BLOCK_M, BLOCK_N) fp32 tile ``acc`` to y, summing the SPLIT_K partials when K is split."""
    store_points(acc, out_ptr, ws_ptr, cnt_ptr, offs_m[:, None], offs_n[None, :], mask, M, N, stride_om, pid_k,
                 tile, SPLIT_K)


@triton.jit
def store_points(acc, out_ptr, ws_ptr, cnt_ptr, idx_m, idx_n, mask, M, N, stride_om, pid_k, tile,
                 SPLIT_K: tl.constexpr):
    """Write fp32 ``acc`` to y[idx_m, idx_n] (index tensors that broadcast to acc's shape, any layout of
    points), summing the SPLIT_K partials when K is split: ``tile`` names this program's output points for
    the arrival counter, the same for every split of them."""
    o_ptrs = out_ptr + idx_m * stride_om + idx_n
    if SPLIT_K == 1:
        tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        part = idx_m * N + idx_n
        tl.store(ws_ptr + pid_k * M * N + part, acc, mask=mask)
        tl.debug_barrier()                                          # every thread's partial is written ...
        arrived = tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel")   # ... before the release
        if arrived == SPLIT_K - 1:
            # unrolled, so the SPLIT_K loads are all in flight at once: a rolled loop waits one L2 round trip
            # per split (~0.4 us each on the H200, measured: the main fixed cost of deep splits)
            total = tl.full(acc.shape, 0.0, tl.float32)
            for s in tl.static_range(SPLIT_K):
                total += tl.load(ws_ptr + s * M * N + part, mask=mask, other=0.0, cache_modifier=".cg")
            tl.store(o_ptrs, total.to(out_ptr.dtype.element_ty), mask=mask)
            tl.atomic_xchg(cnt_ptr + tile, 0)


@triton.jit
def load_weight(ptrs, mask, other, STREAM: tl.constexpr):
    """A load of packed weights, which a decode kernel reads exactly once: ``STREAM`` 0 plain, 1 with the L1
    evict-first hint, 2 cached in L2 only (``ld.global.cg``), so they do not push x (read by every warp) out
    of L1."""
    if STREAM == 1:
        return tl.load(ptrs, mask=mask, other=other, eviction_policy="evict_first")
    elif STREAM == 2:
        return tl.load(ptrs, mask=mask, other=other, cache_modifier=".cg")
    else:
        return tl.load(ptrs, mask=mask, other=other)


@triton.jit
def pdl_begin(PDL: tl.constexpr):
    """Where a kernel launched with programmatic dependent launch (:func:`pdl`) starts to read what the kernel
    before it wrote (x) or to write what that kernel may still read (y, the split-K workspace and counters):
    it waits here until that kernel has finished and its writes are visible. Only the packed weights, which no
    kernel writes, may be read before this point. ``PDL`` 2 also lets the next kernel launch now."""
    if PDL > 0:
        tl.extra.cuda.gdc_wait()
        if PDL == 2:
            tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def pdl_end(PDL: tl.constexpr):
    """After a kernel's loop over its weights (``PDL`` 1): the next kernel may launch, its programs taking the
    SMs' free slots while this one sums and stores its results."""
    if PDL == 1:
        tl.extra.cuda.gdc_launch_dependents()


PDL_ENV = "SFCOMPILE_PDL"
_LAUNCH_MODE: contextvars.ContextVar[int] = contextvars.ContextVar("sfcompile_launch_mode", default=0)


@contextlib.contextmanager
def launch_mode(pdl_mode: int):
    """Within this block the packed ops launch their kernels with programmatic dependent launch mode
    ``pdl_mode`` (0: plain launches; 1, 2: :func:`pdl_begin` / :func:`pdl_end`). The ``sparseforge`` backend
    runs its compiled graphs in mode 1 (its ``pdl`` option), where Inductor's kernels launch the same way."""
    if pdl_mode not in (0, 1, 2):
        raise ValueError(f"launch mode {pdl_mode!r} is not one of 0 (plain), 1, 2 (programmatic dependent launch)")
    token = _LAUNCH_MODE.set(pdl_mode)
    try:
        yield
    finally:
        _LAUNCH_MODE.reset(token)


def pdl(device: torch.device) -> int:
    """The programmatic dependent launch mode of a kernel launched now on ``device``: the environment
    variable ``SFCOMPILE_PDL`` (0, 1, 2) when set, else :func:`launch_mode`'s (0 outside one). CPU tensors
    (the interpreter), NVIDIA GPUs before sm_90 and ROCm always get 0.

    Why not always on: a kernel launched this way waits for the kernel before it at a ``griddepcontrol.wait``,
    which costs more than it saves when that kernel is a plain launch (Inductor's, by default): full-depth
    LLaMA-2-7B decode went from 1.48x to 1.45x dense. With Inductor's kernels launched the same way
    (``triton.enable_pdl``), each launch overlaps the previous kernel's tail: 1.54x (benchmarks/README.md,
    run 16)."""
    if device.type != "cuda" or torch.version.hip or capability(device) < (9, 0):   # (ROCm: no griddepcontrol)
        return 0
    value = os.environ.get(PDL_ENV)
    if value is None:
        return _LAUNCH_MODE.get()
    if value not in ("0", "1", "2"):
        raise ValueError(f"{PDL_ENV}={value!r} is not a launch mode: use 0 (plain launches), 1 (programmatic "
                         f"dependent launch) or 2 (the same, the next kernel let in at the start)")
    return int(value)


def mma_unsupported(x2: torch.Tensor, max_m: int, instruction: str) -> str | None:
    """Why a decode kernel built on the tensor-core ``instruction`` (PTX ``mma.sp``, ``mma.m16n8k16``) cannot
    take x2 (M, K): too many rows, a dtype other than bf16/fp16, a GPU before sm_80; None when it can."""
    if x2.shape[0] > max_m:
        return f"{x2.shape[0]} rows of x (at most {max_m})"
    if x2.dtype not in (torch.bfloat16, torch.float16):
        return f"dtype {x2.dtype} ({instruction} takes bf16/fp16)"
    if x2.is_cuda and capability(x2.device) < (8, 0):
        return f"{instruction} needs compute capability 8.0 or newer"
    return None


def autotuner(kernel, configs: list, **kwargs):
    """``kernel``'s autotuned launcher over ``configs``: tuned once per (M bucket, N, K) by :func:`tuning_bench`
    (``kwargs``: more of ``triton.autotune``'s, e.g. ``prune_configs_by``)."""
    return triton.autotune(configs=configs, key=["M_KEY", "N", "K"], do_bench=tuning_bench, **kwargs)(kernel)


def capability(device: torch.device) -> tuple[int, int]:
    """The compute capability of a CUDA device (asked on every launch: looked up once per device)."""
    return _capability(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


_COUNTERS: dict = {}


def counters(device: torch.device, size: int) -> torch.Tensor:
    """Per-output-tile arrival counters, zero between launches (each launch's last split resets its tile)."""
    buf = _COUNTERS.get(device)
    if buf is None or buf.numel() < size:
        buf = torch.zeros(max(size, 1 << 16), dtype=torch.int32, device=device)
        _COUNTERS[device] = buf
    return buf


def workspace(m: int, n: int, device, split_k: int = 16) -> torch.Tensor:
    """fp32 partial sums (split_k, M, N), split_k the launch's largest SPLIT_K (<= MAX_SPLIT_K): every element
    a split reads is written by that split first."""
    if split_k > MAX_SPLIT_K:
        raise ValueError(f"SPLIT_K {split_k} is over the workspace's {MAX_SPLIT_K}")
    return torch.empty((split_k, m, n), device=device, dtype=torch.float32)


def word_aligned(t: torch.Tensor, elems: int) -> torch.Tensor:
    """2-D ``t`` readable along its rows as words of ``elems`` 16-bit elements (2: 32-bit, 4: 64-bit words): unit
    column stride, a row stride that is a multiple of ``elems`` and a start on a word boundary; a contiguous copy
    if it is not."""
    if t.stride(-1) != 1 or t.stride(0) % elems or t.data_ptr() % (2 * elems):
        return t.contiguous().clone()
    return t


def decode_buffers(m: int, n: int, out: torch.Tensor, split_k: int, unused: torch.Tensor):
    """(workspace, counters) of a decode launch over M x N with up to ``split_k`` splits and one counter per 16
    output columns; without a split neither is read, so ``out`` and ``unused`` (any tensor) stand in for them."""
    if split_k == 1:
        return out, unused
    return workspace(m, n, out.device, split_k), counters(out.device, -(-n // 16))


def split_depth(config: dict | None, space: Callable[[], list]) -> int:
    """The workspace depth a launch needs: a fixed config's SPLIT_K, else the largest of its autotune ``space``."""
    if config is not None:
        return config["SPLIT_K"]
    return max(c.kwargs["SPLIT_K"] for c in space())


def m_key(m: int) -> int:
    """Next power of two of the row count: one autotuning per M bucket."""
    return 1 << max(0, (m - 1).bit_length())


def ieee_dot(dtype: torch.dtype, interpreted: bool) -> bool:
    """fp32 dots stay exact (no tf32); the Triton interpreter computes bf16 dots wrongly (Triton 3.7, 3.8),
    so there bf16 tiles are upcast to fp32 first."""
    return dtype == torch.float32 or (dtype == torch.bfloat16 and interpreted)


_FLUSH: dict = {}  # device -> the buffer tuning_bench reads to empty the L2


def tuning_bench(fn, quantiles=None, reps: int = 50):
    """Autotuning timer shaped like decode under CUDA graphs (the harness of benchmarks/kernels.py), returning
    the median (or the given quantiles) of ``reps`` timed runs in ms, as ``triton.testing.do_bench`` does.

    Between runs the L2 is emptied by READING a 256 MB buffer, so the weights come from HBM as in decode.
    do_bench zeroes the buffer instead, which leaves the L2 full of dirty lines that the timed kernel's loads
    must first write back: a bandwidth-bound decode kernel moved up to twice its bytes, and the autotuner
    ranked configs under that load (it picked the L2-prefetch config where CUDA-graph timing has it
    0.03-0.08x slower: benchmarks/README.md, run 13). And the GPU is kept busy (``torch.cuda._sleep``) while
    the host runs the launcher, so the events time the kernel, not Python's launch path."""
    device = torch.cuda.current_device()
    if device not in _FLUSH:
        _FLUSH[device] = torch.ones(64 * 2**20, dtype=torch.int32, device="cuda")
    flush = _FLUSH[device]
    fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(-3, reps):  # three untimed warm-up runs
        torch.amax(flush)
        torch.cuda._sleep(200_000)  # ~0.1 ms at H200 clocks: longer than a launch from Python
        if i >= 0:
            starts[i].record()
        fn()
        if i >= 0:
            ends[i].record()
    torch.cuda.synchronize()
    times = torch.tensor([s.elapsed_time(e) for s, e in zip(starts, ends)])
    if quantiles is None:
        return float(times.median())
    return [float(q) for q in torch.quantile(times, torch.tensor(quantiles, dtype=times.dtype))]


@contextlib.contextmanager
def _interpreter():
    """Run ``@triton.jit`` functions called from an interpreted kernel (``tl.sum``, :func:`store_tile`)
    through the interpreter too, as TRITON_INTERPRET=1 would; without it they refuse to run outside a
    compiled kernel. Scoped to one launch, so nothing leaks into compiled kernels or other tests.

    Triton 3.6's interpreter turns a scalar into a Python int with ``int(array)``, which NumPy >= 2.4 refuses
    for its one-element arrays ("only 0-dimensional arrays can be converted"): every ``range`` over a
    program-id bound failed (237 of the lowering tests, on the H200 image: Triton 3.6, NumPy 2.5). Within
    the launch its tensors convert through ``squeeze()``, as Triton 3.7's do.

    The interpreter patches ``triton.language`` for every jit function an interpreted kernel calls and never
    unpatches those (3.7.1: 61 builtins of ``triton.language.core``, e.g. the ``add`` behind ``tensor.__add__``),
    so a GPU kernel compiled later in the same process failed ("'block_argument' object has no attribute
    'dtype'", seen in the GPU tests after the CPU ones). Everything it may patch is restored on exit."""
    from triton.runtime import interpreter
    from triton.runtime.jit import JITFunction

    original = JITFunction.__call__
    original_patch = interpreter._patch_lang_tensor

    def patch_lang_tensor(tensor, scope):
        original_patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    saved = [(obj, dict(vars(obj))) for obj in _patched_by_interpreter()]
    JITFunction.__call__ = lambda self, *args, **kwargs: interpreter.InterpretedFunction(self.fn)(*args, **kwargs)
    interpreter._patch_lang_tensor = patch_lang_tensor
    try:
        yield
    finally:
        JITFunction.__call__ = original
        interpreter._patch_lang_tensor = original_patch
        for obj, before in saved:
            _restore_vars(obj, before)


def _patched_by_interpreter() -> list:
    """The modules and classes the Triton interpreter patches (`triton.runtime.interpreter._patch_lang`)."""
    import triton.language as tl

    objs = [tl, tl.core, getattr(tl, "math", None), tl.core.tensor, tl.core.dtype,
            getattr(tl.core, "tensor_descriptor_base", None)]
    return [obj for obj in objs if obj is not None]


def _restore_vars(obj, before: dict) -> None:
    """Put back every attribute of ``obj`` that differs from ``before`` (a copy of its ``vars``); a new one is
    deleted unless it is a submodule imported meanwhile or the class's lazily created ``__annotations__``."""
    now = dict(vars(obj))
    for name, value in now.items():
        if name in before:
            if value is not before[name]:
                setattr(obj, name, before[name])
        elif not (inspect.ismodule(value) or name == "__annotations__"):
            delattr(obj, name)
    for name in before.keys() - now.keys():
        setattr(obj, name, before[name])


def _check_config_keys(kernel, cfg: dict, flags: dict) -> None:
    """A fixed config sets only the kernel's own compile-time choices: Triton's launcher drops keyword arguments
    the kernel does not take, so a misspelt or stale key would launch without the choice it names (and a key the
    wrapper sets itself, a flag, would be given twice)."""
    choices = [p.name for p in kernel.params if p.is_constexpr and p.name not in flags]
    unknown = sorted(set(cfg) - set(choices))
    if unknown:
        raise ValueError(f"config keys {unknown} are not launch choices of {kernel.__name__}: it takes "
                         f"{', '.join(choices)} (plus num_warps, num_stages, maxnreg)")


def launch(kernel, autotuned: Callable[[], object], grid: Callable[[dict], tuple], args: tuple, flags: dict,
           config: dict | None, on_cpu: bool) -> None:
    """Launch ``kernel`` with a fixed ``config`` (interpreted for CPU tensors), or its autotuned launcher.

    ``config`` holds the kernel's constexprs plus optional ``num_warps`` / ``num_stages`` / ``maxnreg`` (a
    register cap per thread, GPU only). A kernel given ``flags["PDL"] > 0`` is launched with programmatic
    dependent launch (:func:`pdl`).
    """
    launch_opts = {"launch_pdl": True} if flags.get("PDL", 0) > 0 else {}
    if config is not None:
        cfg = dict(config)
        opts = {k: cfg.pop(k) for k in ("num_warps", "num_stages", "maxnreg") if k in cfg}
        _check_config_keys(kernel, cfg, flags)
        if on_cpu:
            from triton.runtime.interpreter import InterpretedFunction

            opts.pop("maxnreg", None)       # the interpreter has no registers to cap
            with _interpreter():
                InterpretedFunction(kernel.fn)[grid(cfg)](*args, **flags, **cfg, **opts)
        else:
            kernel[grid(cfg)](*args, **flags, **cfg, **opts, **launch_opts)
    else:
        autotuned()[grid](*args, **flags, **launch_opts)
