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

``torch.ops.sfcompile.linear_block16(x[..., K], tile_values[T, 16, 16], row_ptr[N/16+1] int32,
                                     col_idx[T] int32, N: int, K: int, bias[N]?) -> [..., N]``
    block-16 weight, any density: CSR over block rows. Block row ``r`` (output rows 16r..16r+15) owns tiles
    ``row_ptr[r] .. row_ptr[r+1]-1``; tile ``t`` covers K columns ``16*col_idx[t] .. 16*col_idx[t]+15`` and
    ``tile_values[t]`` is ``W[16r:16r+16, 16c:16c+16]`` (rows = N, cols = K). N and K multiples of 16.

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
half dtypes: correct, not fast). The CUDA implementation dispatches on M = rows of ``x``: small M (decode) to
the register-decompressing split-K Triton kernels, large M (prefill) to the fastest path measured on the
H200 (see ``benchmarks/README.md``). Shapes or dtypes a kernel does not support run the reference math on
the device instead (one logged line naming the reason): never a wrong answer.

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
