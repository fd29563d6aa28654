"""Packed forms of hardened weights: 2:4 (values + 2-bit positions) and block-16 (non-empty tiles, CSR).

The formats are documented in :mod:`sfcompile.lowering.ops` (the op contract). In short, with the weight
moved so that its reduction dim K is last, ``(..., N, K)``:

* 2:4 — ``values (..., N, K/2)`` in the weight dtype and ``meta (..., N, ceil(K/32))`` int32, 4 bits per group
  of 4 (two 2-bit positions), 8 groups per word;
* block-16 — ``tile_values (T, 16, 16)``, ``row_ptr (R+1,)`` int32 and ``col_idx (T,)`` int32: a CSR over the
  R = (leading dims) · N/16 block rows.

>>> pw = pack(w, "2:4", k_dim=-1)       # w: a hardened (N, K) weight
>>> torch.equal(pw.unpack(), w)
True
>>> y = pw.linear(x, bias)              # torch.ops.sfcompile.linear_nm24

Packing is exact: ``pack(w).unpack()`` equals ``w`` bit for bit. A weight whose pattern does not verify is
refused with a :class:`PackError` naming it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sfcompile.patterns import NM, Block, Pattern, PatternError, parse_pattern

__all__ = ["PackError", "PackedWeight", "pack", "save_packed", "load_packed", "can_pack"]

FORMAT_VERSION = 1
_SEP = "::"  # safetensors key of a packed operand: "<name>::<operand>"


class PackError(ValueError):
    """A weight that cannot be packed, or a packed checkpoint that cannot be read."""


def can_pack(pattern: Pattern | str) -> str | None:
    """Why ``pattern`` has no packed form (the backend keeps such weights dense), or None if it has one."""
    pattern = parse_pattern(pattern)
    if isinstance(pattern, NM) and (pattern.n, pattern.m) == (2, 4):
        return None
    if isinstance(pattern, Block) and pattern.size == 16:
        return None
    return (
        f"pattern {pattern.spec} has no packed form: sfcompile packs 2:4 and block16 only "
        f"(other N:M and unstructured weights stay dense)"
    )


@dataclass
class PackedWeight:
    """A hardened weight in packed form.

    Attributes:
        format: ``"nm24"`` or ``"block16"``.
        pattern: the pattern the weight was verified against.
        shape: the original (dense) shape; ``k_dim`` the original reduction dim (non-negative).
        dtype: the weight dtype.
        data: the packed operands by name (see :meth:`tensors`).
    """

    format: str
    pattern: Pattern
    shape: tuple[int, ...]
    k_dim: int
    dtype: torch.dtype
    data: dict[str, torch.Tensor]
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    # ---- geometry -------------------------------------------------------------------------------------
    @property
    def nk_shape(self) -> tuple[int, ...]:
        """Shape with K moved last: (N, K) or (E, N, K)."""
        dims = list(self.shape)
        k = dims.pop(self.k_dim)
        return (*dims, k)

    @property
    def n(self) -> int:
        return self.nk_shape[-2]

    @property
    def k(self) -> int:
        return self.nk_shape[-1]

    @property
    def experts(self) -> int | None:
        return self.nk_shape[0] if len(self.shape) == 3 else None

    @property
    def device(self) -> torch.device:
        return next(iter(self.data.values())).device

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.data.values())

    def tensors(self) -> dict[str, torch.Tensor]:
        """The op operands by name: ``values``, ``meta`` (nm24) or ``tile_values``, ``row_ptr``,
        ``col_idx`` (block16)."""
        return dict(self.data)

    def to(self, device) -> PackedWeight:
        return PackedWeight(self.format, self.pattern, self.shape, self.k_dim, self.dtype,
                            {k: v.to(device) for k, v in self.data.items()})

    # ---- dense ----------------------------------------------------------------------------------------
    def unpack_nk(self) -> torch.Tensor:
        """The dense weight with K last, (N, K) or (E, N, K)."""
        if self.format == "nm24":
            return _unpack_nm24(self.data["values"], self.data["meta"], self.k)
        return _unpack_block16(self.data["tile_values"], self.data["row_ptr"], self.data["col_idx"],
                               self.nk_shape)

    def unpack(self) -> torch.Tensor:
        """The dense weight in its original shape and orientation (exactly the packed weight)."""
        return self.unpack_nk().movedim(-1, self.k_dim).contiguous()

    # ---- compute --------------------------------------------------------------------------------------
    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x @ W.T + bias`` with W as (N, K), through the ``sfcompile`` op. x: (..., K) -> (..., N)."""
        from sfcompile.lowering import ops

        if self.experts is not None:
            raise PackError(f"weight of shape {self.shape} holds {self.experts} experts: "
                            f"use .grouped(x, offs)")
        d = self.data
        if self.format == "nm24":
            return ops.linear_nm24(x, d["values"], d["meta"], bias)
        return ops.linear_block16(x, d["tile_values"], d["row_ptr"], d["col_idx"], self.n, self.k, bias)

    def grouped(self, x: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
        """Expert grouped matmul: x (T, K) sorted by expert, offs (E,) int32 cumulative ends -> (T, N)."""
        from sfcompile.lowering import ops

        if self.experts is None:
            raise PackError(f"weight of shape {self.shape} is 2-D: use .linear(x, bias)")
        d = self.data
        if self.format == "nm24":
            return ops.grouped_nm24(x, d["values"], d["meta"], offs)
        return ops.grouped_block16(x, d["tile_values"], d["row_ptr"], d["col_idx"], offs, self.n, self.k)

    def describe(self) -> dict:
        return {"format": self.format, "pattern": self.pattern.spec, "shape": list(self.shape),
                "k_dim": self.k_dim, "dtype": str(self.dtype).removeprefix("torch.")}


# ---- 2:4 ------------------------------------------------------------------------------------------------

def _pack_nm24(w_nk: torch.Tensor) -> dict[str, torch.Tensor]:
    *lead, n, k = w_nk.shape
    groups = w_nk.reshape(*lead, n, k // 4, 4)                      # (..., N, G, 4)
    nz = groups != 0
    pos = torch.arange(4, device=w_nk.device)
    # Non-zero positions first, then the lowest unused positions; keep 2 and order them.
    key = nz.to(torch.int64) * 8 + (3 - pos)
    idx = key.topk(2, dim=-1).indices.sort(dim=-1).values          # (..., N, G, 2)
    values = groups.gather(-1, idx).reshape(*lead, n, k // 2)
    nib = idx[..., 0] | (idx[..., 1] << 2)                          # (..., N, G) int64, 4 bits
    return {"values": values.contiguous(), "meta": _nibbles_to_words(nib)}


def _nibbles_to_words(nib: torch.Tensor) -> torch.Tensor:
    g = nib.shape[-1]
    pad = (-g) % 8
    if pad:
        nib = torch.nn.functional.pad(nib, (0, pad))
    nib = nib.reshape(*nib.shape[:-1], -1, 8)
    shifts = torch.arange(8, device=nib.device, dtype=torch.int64) * 4
    words = (nib << shifts).sum(-1)                                 # (..., W) in [0, 2^32)
    words = torch.where(words >= 2**31, words - 2**32, words)       # reinterpret as int32
    return words.to(torch.int32).contiguous()


def _words_to_nibbles(meta: torch.Tensor, groups: int) -> torch.Tensor:
    shifts = torch.arange(8, device=meta.device, dtype=torch.int32) * 4
    nib = (meta.unsqueeze(-1) >> shifts) & 0xF                      # arithmetic shift, masked: exact
    return nib.reshape(*meta.shape[:-1], -1)[..., :groups]


def _unpack_nm24(values: torch.Tensor, meta: torch.Tensor, k: int) -> torch.Tensor:
    *lead, n, _ = values.shape
    nib = _words_to_nibbles(meta, k // 4).to(torch.int64)          # (..., N, G)
    idx = torch.stack([nib & 3, nib >> 2], dim=-1)                  # (..., N, G, 2)
    dense = torch.zeros(*lead, n, k // 4, 4, dtype=values.dtype, device=values.device)
    dense.scatter_(-1, idx, values.reshape(*lead, n, k // 4, 2))
    return dense.reshape(*lead, n, k)


# ---- block-16 -------------------------------------------------------------------------------------------

def _tiles(w_nk: torch.Tensor) -> torch.Tensor:
    *lead, n, k = w_nk.shape
    r = w_nk.reshape(-1, n // 16, 16, k // 16, 16).transpose(2, 3)   # (B, N/16, K/16, 16, 16)
    return r.reshape(-1, k // 16, 16, 16)                            # (R, C, 16, 16), R = B·N/16


def _pack_block16(w_nk: torch.Tensor) -> dict[str, torch.Tensor]:
    tiles = _tiles(w_nk)
    keep = (tiles != 0).flatten(-2).any(-1)                          # (R, C)
    counts = keep.sum(-1)
    row_ptr = torch.zeros(keep.shape[0] + 1, dtype=torch.int32, device=w_nk.device)
    row_ptr[1:] = counts.cumsum(0)
    col_idx = keep.nonzero()[:, 1].to(torch.int32)                   # row-major: increasing col per row
    return {"tile_values": tiles[keep].contiguous(), "row_ptr": row_ptr, "col_idx": col_idx.contiguous()}


def _unpack_block16(tile_values, row_ptr, col_idx, nk_shape, frag: bool = False) -> torch.Tensor:
    """The dense weight of block-16 tiles; ``frag``: the tiles are in ``kernels.block16_mma.fragment_order``."""
    if frag:
        from sfcompile.lowering.kernels.block16_mma import fragment_order_inverse

        tile_values = fragment_order_inverse(tile_values)
    *lead, n, k = nk_shape
    rows = row_ptr.shape[0] - 1
    tiles = torch.zeros(rows, k // 16, 16, 16, dtype=tile_values.dtype, device=tile_values.device)
    # block row of each tile, with no data-dependent shapes (no host sync: CUDA-graph capturable)
    t = torch.arange(tile_values.shape[0], device=row_ptr.device, dtype=row_ptr.dtype)
    row_of = torch.searchsorted(row_ptr[1:].contiguous(), t, right=True)
    tiles[row_of, col_idx.long()] = tile_values
    b = rows // (n // 16)
    dense = tiles.reshape(b, n // 16, k // 16, 16, 16).transpose(2, 3).reshape(b, n, k)
    return dense.reshape(*lead, n, k)


# ---- public ---------------------------------------------------------------------------------------------

def pack(weight: torch.Tensor, pattern: Pattern | str, k_dim: int = -1, *,
         name: str = "weight") -> PackedWeight:
    """Pack a hardened weight.

    Args:
        weight: (N, K), (K, N) with ``k_dim=0`` (GPT-2 Conv1D), or 3-D experts (E, N, K) / (E, K, N).
        pattern: ``"2:4"`` or ``"block16[:density]"`` (or the Pattern). Other patterns are refused.
        k_dim: the reduction dim of ``weight``.
        name: used in error messages (the parameter's FQN).

    Returns:
        A :class:`PackedWeight` whose ``unpack()`` equals ``weight`` exactly.

    Raises:
        PackError: the pattern has no packed form, the shape does not fit it, or the weight does not verify.
    """
    pattern = parse_pattern(pattern)
    reason = can_pack(pattern)
    if reason:
        raise PackError(f"cannot pack {name}: {reason}")
    if weight.dim() not in (2, 3):
        raise PackError(f"cannot pack {name}: weights of 2 dims (linear) or 3 dims (experts) are packed, "
                        f"got shape {tuple(weight.shape)}")
    k_dim = k_dim % weight.dim()
    if weight.dim() == 3 and k_dim == 0:
        raise PackError(f"cannot pack {name}: expert weight {tuple(weight.shape)} has K on the expert dim 0")
    w = weight.detach()
    try:
        ok, violations = pattern.verify(w, k_dim)
    except PatternError as e:
        raise PackError(f"cannot pack {name} {tuple(weight.shape)}: {e}") from None
    if not ok:
        unit = "groups of 4 along K" if isinstance(pattern, NM) else "matrices"
        raise PackError(f"cannot pack {name} {tuple(weight.shape)} as {pattern.spec}: {violations} {unit} "
                        f"break the pattern; harden the model (sfcompile.harden) before packing")
    w_nk = w.movedim(k_dim, -1).contiguous()
    if isinstance(pattern, NM):
        data = _pack_nm24(w_nk)
        fmt = "nm24"
    else:
        data = _pack_block16(w_nk)
        fmt = "block16"
    return PackedWeight(fmt, pattern, tuple(weight.shape), k_dim, weight.dtype, data)


def _expected(pw_meta: dict) -> dict[str, tuple[tuple[int, ...] | None, torch.dtype | None]]:
    """Operand name -> (shape or None if data-dependent, dtype) for a packed entry's metadata."""
    shape, k_dim = pw_meta["shape"], pw_meta["k_dim"]
    dims = list(shape)
    k = dims.pop(k_dim)
    *lead, n = dims
    dtype = getattr(torch, pw_meta["dtype"])
    if pw_meta["format"] == "nm24":
        return {"values": ((*lead, n, k // 2), dtype), "meta": ((*lead, n, -(-k // 32)), torch.int32)}
    rows = (lead[0] if lead else 1) * (n // 16)
    return {"tile_values": (None, dtype), "row_ptr": ((rows + 1,), torch.int32),
            "col_idx": (None, torch.int32)}


def save_packed(state: dict[str, PackedWeight | torch.Tensor], path: str | Path) -> None:
    """Write ``{name: PackedWeight | Tensor}`` to one safetensors file (packed entries as their operands).

    A packed entry ``name`` is stored as tensors ``name::values``, ``name::meta`` (or ``::tile_values``,
    ``::row_ptr``, ``::col_idx``) plus its description in the file's metadata.
    """
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    packed: dict[str, dict] = {}
    for name, value in state.items():
        if _SEP in name:
            raise PackError(f"tensor name {name!r} contains {_SEP!r}, which packed checkpoints reserve")
        if isinstance(value, PackedWeight):
            packed[name] = value.describe()
            for op_name, t in value.data.items():
                tensors[f"{name}{_SEP}{op_name}"] = t.detach().contiguous().cpu()
        elif isinstance(value, torch.Tensor):
            tensors[name] = value.detach().contiguous().cpu()
        else:
            raise PackError(f"{name}: expected a Tensor or PackedWeight, got {type(value).__name__}")
    meta = {"sfcompile_packed": json.dumps({"format": FORMAT_VERSION, "packed": packed})}
    save_file(tensors, str(path), metadata=meta)


def _check_entry(name: str, desc: dict, ops: dict[str, torch.Tensor], path) -> None:
    for op_name, (shape, dtype) in _expected(desc).items():
        key = f"{name}{_SEP}{op_name}"
        t = ops.get(op_name)
        if t is None:
            raise PackError(f"packed checkpoint {path} is missing tensor {key!r} of {desc['format']} weight "
                            f"{name}; re-save it with sfcompile.save(..., packed=True)")
        if t.dtype != dtype or (shape is not None and tuple(t.shape) != tuple(shape)):
            raise PackError(f"packed checkpoint {path}: tensor {key!r} is corrupt: got {t.dtype} "
                            f"{tuple(t.shape)}, expected {dtype} {shape if shape else '(any)'}")
    if desc["format"] == "nm24":
        nib = _words_to_nibbles(ops["meta"], desc["shape"][desc["k_dim"]] // 4)
        if bool(((nib & 3) >= (nib >> 2)).any()):
            raise PackError(f"packed checkpoint {path}: tensor '{name}{_SEP}meta' is corrupt: "
                            f"a group's two positions are not increasing")
    else:
        row_ptr, col_idx, tv = ops["row_ptr"], ops["col_idx"], ops["tile_values"]
        cols = desc["shape"][desc["k_dim"]] // 16
        bad = (row_ptr[0] != 0 or bool((row_ptr[1:] < row_ptr[:-1]).any()) or int(row_ptr[-1]) != tv.shape[0]
               or col_idx.shape[0] != tv.shape[0] or tuple(tv.shape[1:]) != (16, 16)
               or bool(((col_idx < 0) | (col_idx >= cols)).any()))
        if bad:
            raise PackError(f"packed checkpoint {path}: block16 weight {name} is corrupt: row_ptr/col_idx/"
                            f"tile_values ({tuple(row_ptr.shape)}, {tuple(col_idx.shape)}, "
                            f"{tuple(tv.shape)}) are inconsistent")


def load_packed(path: str | Path, dense: bool = True, device: str | torch.device = "cpu"
                ) -> dict[str, PackedWeight | torch.Tensor]:
    """Read a file written by :func:`save_packed`.

    Args:
        dense: True -> every packed entry comes back as its dense weight (exact); False -> as PackedWeight.
        device: where the tensors land.

    Raises:
        PackError: unreadable file, or a missing / corrupt packed tensor (named).
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            header = f.metadata() or {}
            raw = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise PackError(f"cannot read packed checkpoint {path}: {e}") from None
    if "sfcompile_packed" not in header:
        raise PackError(f"{path} is not a packed sfcompile checkpoint (no 'sfcompile_packed' metadata)")
    info = json.loads(header["sfcompile_packed"])
    if info.get("format") != FORMAT_VERSION:
        raise PackError(f"{path}: packed format {info.get('format')!r} is not supported "
                        f"(expected {FORMAT_VERSION})")
    out: dict[str, PackedWeight | torch.Tensor] = {k: v for k, v in raw.items() if _SEP not in k}
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in raw.items():
        if _SEP in key:
            name, op_name = key.split(_SEP, 1)
            grouped.setdefault(name, {})[op_name] = t
    for name in grouped.keys() - info["packed"].keys():
        raise PackError(f"{path}: tensors of {name!r} are packed but the metadata does not describe them")
    for name, desc in info["packed"].items():
        ops = grouped.get(name, {})
        _check_entry(name, desc, ops, path)
        pw = PackedWeight(desc["format"], parse_pattern(desc["pattern"]), tuple(desc["shape"]), desc["k_dim"],
                          getattr(torch, desc["dtype"]), {k: ops[k] for k in _expected(desc)})
        out[name] = pw.unpack() if dense else pw
    return out
