"""Packed sparse matmul ops in the ``sfcompile`` namespace (``torch.library``), seen by Dynamo and Inductor.

Every op computes ``y = x @ W.T (+ bias)`` for a hardened weight ``W`` of shape (N, K) held in a packed form
(see :mod:`sfcompile.lowering.pack`). K is the reduction dim and is always the LAST dim of the packed form:
a GPT-2 ``Conv1D`` weight (K, N) is transposed to (N, K) once, at pack time, so the backend rewrites
``addmm(bias, x, W_conv1d)`` into the same op as ``linear(x, W, bias)``.

Ops (all return a new tensor of ``x.dtype``; ``x`` may have any number of leading dims):

``torch.ops.sfcompile.linear_nm24(x[..., K], values[N, K/2], meta[N, ceil(K/32)] int32,
                                  bias[N]?) -> [..., N]``
    2:4 weight. ``values`` holds, for each group of 4 along K, its 2 kept entries in increasing K order
    (weight dtype). ``meta`` holds their positions inside the group, 2 bits each, 4 bits per group, 8 groups
    per int32 word: group ``g`` (K columns 4g..4g+3) lives in bits ``4*(g%8) .. 4*(g%8)+3`` of word ``g//8``;
    the low 2 bits are the first kept position ``i0``, the next 2 bits the second ``i1`` (``i0 < i1``).
    A group with fewer than 2 non-zeros stores a zero value at an unused position. K must be a multiple of 4.
    Bytes: 2:4 bf16 reads K/2·2 + K/8 bytes per row = 56% of dense.

``torch.ops.sfcompile.linear_nm24_slorb(x[..., K], values, meta, px[..., K/k]?, S[N, K/k], bias[N]?) -> [..., N]``
    ``linear_nm24`` plus a SLoRB bypass ``px @ S.T`` (px: the sums of x over groups of k features; S in x's
    dtype). At decode sizes the sparse-tensor-core kernel adds it in the same kernel, as dense ``mma`` on
    the same accumulators (k = 8 or 16); elsewhere it is a dense matmul after the sparse one. px None: the op
    takes the block sums itself, the decode kernel from x's registers (more dense ``mma``), other paths with
    a reduction of their own. The backend's ``fuse_bypass`` lowers a site's bypass into it
    (`sfcompile.passes.bypass`; ``kernel_sums`` passes px None).

``torch.ops.sfcompile.linear_block16_slorb(x, tile_values, row_ptr, col_idx, N, K, px, S, bias?, frag=False)``
    ``linear_block16`` plus a SLoRB bypass, the same way (the tensor-core decode kernel adds it with dense
    ``mma.m16n8k16`` over all K/k groups, any k, K/k a multiple of 4); px None: the decode kernel sums x itself
    (k = 8 or 16, sixteen more dense ``mma`` per 16 groups), other paths by a reduction of their own.

``torch.ops.sfcompile.linear_block16(x[..., K], tile_values[T, 16, 16], row_ptr[N/16+1] int32,
                                     col_idx[T] int32, N: int, K: int, bias[N]?, frag: bool = False) -> [..., N]``
    block-16 weight, any density: CSR over block rows. Block row ``r`` (output rows 16r..16r+15) owns tiles
    ``row_ptr[r] .. row_ptr[r+1]-1``; tile ``t`` covers K columns ``16*col_idx[t] .. 16*col_idx[t]+15`` and
    ``tile_values[t]`` is ``W[16r:16r+16, 16c:16c+16]`` (rows = N, cols = K). N and K multiples of 16.
    ``frag``: each tile's 256 elements are in ``kernels.block16_mma.fragment_order`` (the tensor-core decode
    kernel reads a lane's operand in one 16-byte load: 3.5% faster per call at the median of 18 decode rows on
    the H200, benchmarks/README.md, twenty-third session; a tie end to end, twenty-fourth session); every path
    of the op reads that layout.

``torch.ops.sfcompile.grouped_nm24(x[T, K], values[E, N, K/2], meta[E, N, ceil(K/32)] int32,
                                   offs[E] int32) -> [T, N]``
    MoE experts, 2:4 (the ``torch._grouped_mm(x, W.transpose(-2, -1), offs=offs)`` contract): rows of ``x``
    are sorted by expert, ``offs`` holds cumulative row ends, expert ``e`` owns rows ``offs[e-1]..offs[e]-1``
    (``offs[-1] = 0``); rows at or past ``offs[E-1]`` come out zero. Per-expert packing is ``linear_nm24``'s.

``torch.ops.sfcompile.grouped_block16(x[T, K], tile_values[Tt, 16, 16], row_ptr[E*N/16+1] int32,
                                      col_idx[Tt] int32, offs[E] int32, N: int, K: int) -> [T, N]``
    MoE experts, block-16: one CSR over the E·N/16 block rows of all experts stacked (expert ``e`` owns block
    rows ``e*N/16 .. (e+1)*N/16-1``); same row grouping as ``grouped_nm24``.

Device dispatch: the CPU implementation is the reference math (unpack, then a dense matmul in fp32 for
half dtypes: correct, not fast). The CUDA implementation dispatches on M = rows of ``x`` (numbers:
``benchmarks/README.md``):

* 2:4, M <= 16: a Triton decode kernel, the sparse tensor cores' (`kernels/nm24_mma.py`, PTX ``mma.sp``;
  bf16/fp16 with K % 32 == 0) or else the CUDA cores' (`kernels/nm24_decode.py`); M >= 17: cuSPARSELt (alg_id searched
  once per shape; 1.27-1.43x dense at M=2048), which keeps its own compressed copy of each weight it runs.
* block-16, M <= 16: the tensor cores' decode kernel (`kernels/block16_mma.py`, PTX ``mma.m16n8k16``;
  bf16/fp16, sm_80+), else the Triton tile kernel (`kernels/block16.py`), which also runs M < 256;
  M >= 256: the weight unpacked for the call (a Triton kernel, `kernels/block16_unpack.py`) + cuBLAS.
* experts: the Triton kernels (grouped by expert).

Shapes or dtypes a kernel does not support run the reference math on the device instead (one logged line
naming the reason): never a wrong answer.

Packing API (:mod:`sfcompile.lowering.pack`)::

    pw = pack(weight, pattern, k_dim)     # -> PackedWeight; refuses (PackError naming why) if the pattern
                                          #    does not verify; 2-D (N,K)/(K,N) or 3-D experts (E, N, K)
    pw.unpack() -> dense weight in its ORIGINAL orientation (exact: pack -> unpack == W)
    pw.tensors() -> dict[str, Tensor]     # the op operands by name ("values", "meta" | "tile_values",
                                          #    "row_ptr", "col_idx")
    pw.linear(x, bias=None) -> x @ W_nk.T + bias through the op above (grouped ops: pw.grouped(x, offs))
    save_packed({name: PackedWeight | Tensor}, path); load_packed(path, dense=True) -> {name: Tensor}
    load_packed(path, dense=False) -> {name: PackedWeight | Tensor}

Nothing runs at import except op registration.
"""

import logging
from typing import Optional

import torch
from torch.utils.weak import WeakIdKeyDictionary

from sfcompile.masking.slorb import add_bypass_, block_sums

__all__ = ["linear_nm24", "linear_nm24_slorb", "linear_block16", "linear_block16_slorb", "grouped_nm24",
           "grouped_block16", "PREFILL_CSLT_MIN_M", "BLOCK16_DENSE_MIN_M", "cslt_linear", "clear_cslt_cache"]

log = logging.getLogger("sfcompile.lowering")

# At or above this many rows, 2:4 matmuls go to cuSPARSELt (when present) instead of the Triton kernel, and
# block-16 matmuls to cuBLAS on the weight unpacked for the call; set from the kernel table measured on the
# H200 (benchmarks/README.md): cuSPARSELt 1.3-1.45x dense at M=2048, our register-decompressing kernels
# 0.4x (prefill is FLOP-bound and Triton has no sparse tensor-core dot), block-16 tiles 0.2x.
PREFILL_CSLT_MIN_M = 17
BLOCK16_DENSE_MIN_M = 256
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_CSLT_DTYPES = (torch.float16, torch.bfloat16)
_LOGGED: set[str] = set()


def _log_once(reason: str) -> None:
    if reason not in _LOGGED:
        _LOGGED.add(reason)
        log.warning("sfcompile ops: %s; running the reference math instead", reason)


# ---- reference math (the CPU implementation, and the fallback on any device) ----------------------------

def _nm24_dense(values, meta, k):
    from sfcompile.lowering.pack import _unpack_nm24

    return _unpack_nm24(values, meta, k)


def _block16_dense(tile_values, row_ptr, col_idx, n, k, experts=None, frag=False):
    from sfcompile.lowering.pack import _unpack_block16

    return _unpack_block16(tile_values, row_ptr, col_idx, (experts, n, k) if experts else (n, k), frag)


def _compute_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _linear_ref(x, w, bias):
    ct = _compute_dtype(x.dtype)
    y = torch.nn.functional.linear(x.to(ct), w.to(ct), None if bias is None else bias.to(ct))
    return y.to(x.dtype)


def _bypass_ref(x, w, px, s, bias):
    ct = _compute_dtype(x.dtype)
    px = block_sums(x, s.shape[-1]) if px is None else px
    y = torch.nn.functional.linear(x.to(ct), w.to(ct), None if bias is None else bias.to(ct))
    return (y + torch.nn.functional.linear(px.to(ct), s.to(ct))).to(x.dtype)


def _grouped_ref(x, w, offs):
    ct = _compute_dtype(x.dtype)
    y = torch.zeros(x.shape[0], w.shape[-2], dtype=ct, device=x.device)
    start = 0
    for e, end in enumerate(offs.tolist()):
        if end > start:
            y[start:end] = x[start:end].to(ct) @ w[e].to(ct).T
        start = end
    return y.to(x.dtype)


# ---- op definitions ------------------------------------------------------------------------------------

@torch.library.custom_op("sfcompile::linear_nm24", mutates_args=(), device_types="cpu")
def linear_nm24(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor,
                bias: Optional[torch.Tensor] = None) -> torch.Tensor:  # noqa: UP045 (torch.library infers the schema)
    return _linear_ref(x, _nm24_dense(values, meta, x.shape[-1]), bias)


@torch.library.custom_op("sfcompile::linear_nm24_slorb", mutates_args=(), device_types="cpu")
def linear_nm24_slorb(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor,
                      px: Optional[torch.Tensor], s: torch.Tensor,  # noqa: UP045
                      bias: Optional[torch.Tensor] = None) -> torch.Tensor:  # noqa: UP045
    return _bypass_ref(x, _nm24_dense(values, meta, x.shape[-1]), px, s, bias)


@torch.library.custom_op("sfcompile::linear_block16", mutates_args=(), device_types="cpu")
def linear_block16(x: torch.Tensor, tile_values: torch.Tensor, row_ptr: torch.Tensor, col_idx: torch.Tensor,
                   n: int, k: int, bias: Optional[torch.Tensor] = None,  # noqa: UP045
                   frag: bool = False) -> torch.Tensor:
    return _linear_ref(x, _block16_dense(tile_values, row_ptr, col_idx, n, k, frag=frag), bias)


@torch.library.custom_op("sfcompile::linear_block16_slorb", mutates_args=(), device_types="cpu")
def linear_block16_slorb(x: torch.Tensor, tile_values: torch.Tensor, row_ptr: torch.Tensor, col_idx: torch.Tensor,
                         n: int, k: int, px: Optional[torch.Tensor], s: torch.Tensor,  # noqa: UP045
                         bias: Optional[torch.Tensor] = None, frag: bool = False) -> torch.Tensor:  # noqa: UP045
    return _bypass_ref(x, _block16_dense(tile_values, row_ptr, col_idx, n, k, frag=frag), px, s, bias)


@torch.library.custom_op("sfcompile::grouped_nm24", mutates_args=(), device_types="cpu")
def grouped_nm24(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor,
                 offs: torch.Tensor) -> torch.Tensor:
    return _grouped_ref(x, _nm24_dense(values, meta, x.shape[-1]), offs)


@torch.library.custom_op("sfcompile::grouped_block16", mutates_args=(), device_types="cpu")
def grouped_block16(x: torch.Tensor, tile_values: torch.Tensor, row_ptr: torch.Tensor, col_idx: torch.Tensor,
                    offs: torch.Tensor, n: int, k: int) -> torch.Tensor:
    return _grouped_ref(x, _block16_dense(tile_values, row_ptr, col_idx, n, k, offs.shape[0]), offs)


# ---- fake (meta) implementations: shapes only ----------------------------------------------------------

@linear_nm24.register_fake
def _(x, values, meta, bias=None):
    return x.new_empty((*x.shape[:-1], values.shape[-2]))


@linear_nm24_slorb.register_fake
def _(x, values, meta, px, s, bias=None):
    return x.new_empty((*x.shape[:-1], values.shape[-2]))


@linear_block16.register_fake
def _(x, tile_values, row_ptr, col_idx, n, k, bias=None, frag=False):
    return x.new_empty((*x.shape[:-1], n))


@linear_block16_slorb.register_fake
def _(x, tile_values, row_ptr, col_idx, n, k, px, s, bias=None, frag=False):
    return x.new_empty((*x.shape[:-1], n))


@grouped_nm24.register_fake
def _(x, values, meta, offs):
    return x.new_empty((x.shape[0], values.shape[-2]))


@grouped_block16.register_fake
def _(x, tile_values, row_ptr, col_idx, offs, n, k):
    return x.new_empty((x.shape[0], n))


# ---- CUDA implementations: Triton kernels, dispatched on M ---------------------------------------------

def _kernel_unsupported(x: torch.Tensor, weight_dtype: torch.dtype) -> str | None:
    if x.dtype not in _KERNEL_DTYPES:
        return f"dtype {x.dtype} has no sparse kernel (fp16/bf16/fp32 do)"
    if weight_dtype != x.dtype:
        return f"input dtype {x.dtype} differs from the packed weight's {weight_dtype}"
    return None


@linear_nm24.register_kernel("cuda")
def _(x, values, meta, bias=None):
    return _nm24_cuda(x, values, meta, bias, None)


@linear_nm24_slorb.register_kernel("cuda")
def _(x, values, meta, px, s, bias=None):
    return _nm24_cuda(x, values, meta, bias, (px, s))


def _nm24_cuda(x, values, meta, bias, bypass):
    reason = _kernel_unsupported(x, values.dtype)
    if reason is None and bias is not None and bias.dtype != x.dtype:
        reason = f"bias dtype {bias.dtype} differs from the input's {x.dtype}"
    if reason is None and bypass is not None and any(t is not None and t.dtype != x.dtype for t in bypass):
        reason = f"bypass dtypes {[None if t is None else t.dtype for t in bypass]} differ from the input's {x.dtype}"
    if reason:
        _log_once(f"linear_nm24 {tuple(values.shape)}: {reason}")
        if bypass is None:
            return _linear_ref(x, _nm24_dense(values, meta, x.shape[-1]), bias)
        return _bypass_ref(x, _nm24_dense(values, meta, x.shape[-1]), *bypass, bias)
    m = x.numel() // max(1, x.shape[-1])
    cslt_ok = cslt_unsupported(x, values) is None
    if m >= PREFILL_CSLT_MIN_M and cslt_ok:
        y = cslt_linear(x, values, meta, bias)
        if bypass is not None:    # prefill: a dense matmul on the block sums, small beside the sparse one
            y = add_bypass_(y.reshape(m, -1), x.reshape(m, -1), *bypass).reshape(y.shape)
        return y
    # Decode: the Triton kernel only. cuSPARSELt would need its own compressed copy of every weight (+0.56x
    # dense bytes) and ran 0.35-0.74x dense at M <= 16 on the H200 (benchmarks/README.md).
    from sfcompile.lowering.kernels.nm24 import nm24_matmul

    return nm24_matmul(x, values, meta, bias, bypass=bypass)


@linear_block16_slorb.register_kernel("cuda")
def _(x, tile_values, row_ptr, col_idx, n, k, px, s, bias=None, frag=False):
    from sfcompile.lowering.kernels import block16_mma as mma

    reason = _kernel_unsupported(x, tile_values.dtype)
    if reason is None and ((px is not None and px.dtype != x.dtype) or s.dtype != x.dtype
                           or (bias is not None and bias.dtype != x.dtype)):
        reason = f"bypass or bias dtypes differ from the input's {x.dtype}"
    if reason:
        _log_once(f"linear_block16_slorb ({n}, {k}): {reason}")
        return _bypass_ref(x, _block16_dense(tile_values, row_ptr, col_idx, n, k, frag=frag), px, s, bias)
    x2, px2 = x.reshape(-1, k), None if px is None else px.reshape(-1, s.shape[-1])
    if mma.block16_mma_unsupported(x2) is None:
        if mma.block16_mma_bypass_unsupported(x2, px2, s) is not None and px2 is None:
            px2 = block_sums(x2, s.shape[-1])   # (groups whose sums the kernel does not take itself)
        if mma.block16_mma_bypass_unsupported(x2, px2, s) is None:
            # decode (M <= 16): the bypass inside the tensor-core kernel
            y = mma.block16_mma(x2 if x2.is_contiguous() else x2.contiguous(), tile_values, row_ptr, col_idx, n, k,
                                bias, frag=frag, bypass=(px2, s))
            return y.reshape(*x.shape[:-1], n)
    y = _block16_cuda(x, tile_values, row_ptr, col_idx, n, k, bias, frag)
    return add_bypass_(y.reshape(-1, n), x2, px2, s).reshape(y.shape)


@linear_block16.register_kernel("cuda")
def _(x, tile_values, row_ptr, col_idx, n, k, bias=None, frag=False):
    return _block16_cuda(x, tile_values, row_ptr, col_idx, n, k, bias, frag)


def _block16_cuda(x, tile_values, row_ptr, col_idx, n, k, bias, frag):
    reason = _kernel_unsupported(x, tile_values.dtype)
    if reason is None and bias is not None and bias.dtype != x.dtype:
        reason = f"bias dtype {bias.dtype} differs from the input's {x.dtype}"
    if reason:
        _log_once(f"linear_block16 ({n}, {k}): {reason}")
        return _linear_ref(x, _block16_dense(tile_values, row_ptr, col_idx, n, k, frag=frag), bias)
    if x.numel() // max(1, k) >= BLOCK16_DENSE_MIN_M:   # prefill: unpack for this call (Triton), cuBLAS
        from sfcompile.lowering.kernels.block16_unpack import block16_unpack

        return torch.nn.functional.linear(x, block16_unpack(tile_values, row_ptr, col_idx, n, k, frag), bias)
    from sfcompile.lowering.kernels.block16 import block16_matmul

    return block16_matmul(x, tile_values, row_ptr, col_idx, n, k, bias, frag=frag)


@grouped_nm24.register_kernel("cuda")
def _(x, values, meta, offs):
    reason = _kernel_unsupported(x, values.dtype)
    if reason:
        _log_once(f"grouped_nm24 {tuple(values.shape)}: {reason}")
        return _grouped_ref(x, _nm24_dense(values, meta, x.shape[-1]), offs)
    from sfcompile.lowering.kernels.nm24 import nm24_matmul

    return nm24_matmul(x, values, meta, offs=offs.to(torch.int32))


@grouped_block16.register_kernel("cuda")
def _(x, tile_values, row_ptr, col_idx, offs, n, k):
    reason = _kernel_unsupported(x, tile_values.dtype)
    if reason:
        _log_once(f"grouped_block16 ({offs.shape[0]}, {n}, {k}): {reason}")
        return _grouped_ref(x, _block16_dense(tile_values, row_ptr, col_idx, n, k, offs.shape[0]), offs)
    from sfcompile.lowering.kernels.block16 import block16_matmul

    return block16_matmul(x, tile_values, row_ptr, col_idx, n, k, offs=offs.to(torch.int32))


# ---- cuSPARSELt (prefill): a second packed form, built lazily on the GPU, alg_id searched once per shape --

# The compressed copy lives as long as the packed values it was built from, and no longer: the cache is keyed
# weakly by the values tensor (WeakIdKeyDictionary: by identity), so it never keeps a weight alive. It is
# built on the first prefill call only (decode never uses it) and costs one more 2:4 copy of the weight
# (~0.56x dense bytes) while it lives; clear_cslt_cache() drops all of them.
_CSLT: WeakIdKeyDictionary = WeakIdKeyDictionary()   # values -> (version, meta, compressed)
_CSLT_ALG: dict[tuple, int] = {}                     # (N, K, M bucket, dtype) -> alg_id


def cslt_unsupported(x: torch.Tensor, values: torch.Tensor) -> str | None:
    """Why cuSPARSELt cannot run this 2:4 matmul, or None."""
    n, k = values.shape[-2], x.shape[-1]
    if not x.is_cuda or x.dtype not in _CSLT_DTYPES:
        return f"cuSPARSELt takes CUDA fp16/bf16, got {x.device.type} {x.dtype}"
    if n % 16 or k % 16:
        return f"cuSPARSELt needs N and K multiples of 16, got N={n}, K={k}"
    if not hasattr(torch, "_cslt_compress") or not torch.backends.cusparselt.is_available():
        return "cuSPARSELt is not available in this torch build"
    return None


def _cslt_compressed(values: torch.Tensor, meta: torch.Tensor, k: int) -> torch.Tensor:
    hit = _CSLT.get(values)
    if hit is None or hit[0] != values._version or hit[1] is not meta:
        compressed = torch._cslt_compress(_nm24_dense(values, meta, k).contiguous())  # (the dense temporary
        hit = (values._version, meta, compressed)                                      #  is freed here)
        _CSLT[values] = hit
    return hit[2]


def cslt_linear(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """2:4 linear through cuSPARSELt; the first call per weight compresses it, per shape searches alg_id."""
    k = x.shape[-1]
    n = values.shape[-2]
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    pad = (-m) % 8
    if pad:
        x2 = torch.nn.functional.pad(x2, (0, 0, 0, pad))
    compressed = _cslt_compressed(values, meta, k)
    akey = (n, k, 1 << max(0, (m - 1).bit_length()), x.dtype)
    if akey not in _CSLT_ALG:
        _CSLT_ALG[akey] = int(torch._cslt_sparse_mm_search(compressed, x2.t(), bias=bias,
                                                           transpose_result=True))
    y = torch._cslt_sparse_mm(compressed, x2.t(), bias=bias, transpose_result=True, alg_id=_CSLT_ALG[akey])
    if pad:
        y = y[:m]
    return y.reshape(*x.shape[:-1], n)


def clear_cslt_cache() -> None:
    """Drop the cuSPARSELt compressed weights and the alg_id choices."""
    _CSLT.clear()
    _CSLT_ALG.clear()
