"""Block-16 weight -> dense (N, K) on the GPU, for prefill: ``linear`` then runs cuBLAS on the dense copy.

At prefill a block-16 matmul is bound by FLOPs, and Triton has no block-sparse tensor-core instruction: a
tile kernel re-reads x per 16 output columns and is L2-bound (0.2x dense on the H200). Instead the weight is
rebuilt for the call and handed to cuBLAS. PyTorch indexing did that at 0.41-0.53x dense (its unpack cost
more than the matmul); this kernel writes each kept tile once into a zeroed buffer (one program per block row,
16-byte stores along K), so the unpack costs about one pass over the dense bytes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sfcompile.lowering.kernels import splitk
from sfcompile.lowering.kernels.block16 import load_tiles

__all__ = ["block16_unpack", "block16_unpack_reference"]


@triton.jit
def _unpack_kernel(tv_ptr, row_ptr_ptr, col_ptr, out_ptr, K, TILES: tl.constexpr, FRAG: tl.constexpr):
    r = tl.program_id(0)
    t_begin = tl.load(row_ptr_ptr + r)
    t_end = tl.load(row_ptr_ptr + r + 1)
    offs_i = tl.arange(0, 16)
    offs_j = tl.arange(0, 16)
    for t0 in range(t_begin, t_end, TILES):
        offs_t = t0 + tl.arange(0, TILES)
        mask_t = offs_t < t_end
        cols = tl.load(col_ptr + offs_t, mask=mask_t, other=0)
        tiles = load_tiles(tv_ptr, offs_t, mask_t, TILES, FRAG)                    # (TILES, 16 i, 16 j)
        o_ptrs = (out_ptr + (r * 16 + offs_i)[None, :, None] * K + (cols * 16)[:, None, None]
                  + offs_j[None, None, :])
        tl.store(o_ptrs, tiles, mask=mask_t[:, None, None])


def block16_unpack(tile_values: torch.Tensor, row_ptr: torch.Tensor, col_idx: torch.Tensor, n: int,
                   k: int, frag: bool = False) -> torch.Tensor:
    """The dense (N, K) weight of a 2-D block-16 CSR (see :mod:`sfcompile.lowering.ops`; ``frag``: tiles in
    :func:`.block16_mma.fragment_order`); CPU tensors run in Triton's interpreter (tests)."""
    if row_ptr.shape != (n // 16 + 1,):
        raise ValueError(f"row_ptr {tuple(row_ptr.shape)} does not describe {n // 16} block rows")
    out = torch.zeros((n, k), dtype=tile_values.dtype, device=tile_values.device)
    args = (tile_values.contiguous(), row_ptr, col_idx, out, k)
    config = {"TILES": 8, "FRAG": int(frag), "num_warps": 4}
    splitk.launch(_unpack_kernel, None, lambda _: (n // 16,), args, {}, config,
                  on_cpu=out.device.type == "cpu")
    return out


def block16_unpack_reference(tile_values, row_ptr, col_idx, n, k, frag=False):
    """Pure-PyTorch reference (``pack._unpack_block16``)."""
    from sfcompile.lowering.pack import _unpack_block16

    return _unpack_block16(tile_values, row_ptr, col_idx, (n, k), frag)
