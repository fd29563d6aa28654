"""Run the SLoRB bypasses inside the packed ops, or as one matmul per shared input (the `sparseforge` backend's
``fuse_bypass``).

A model sfcompile trained carries a SLoRB bypass on every site (`sfcompile.masking.slorb`): ``y += S (P x)``,
P the sums of x over groups of k features. Its forward hook reaches the Dynamo graph as small dense ops beside
each packed matmul, and at decode sizes each is a kernel of its own. The lowering already runs a layer's
q/k/v (and gate/up) as one packed op on their concatenated weights; this pass does the same for their bypasses::

    %px_q : call_method[sum](%unflatten_q, -1)      # unflatten(%x, -1, (K/k, k)): the block sums of x
    %s_q  : call_method[to](%S_q, bf16)
    %b_q  : call_function[linear](%px_q, %s_q)       # ... the same for k and v, each from its own block sums

becomes::

    %s    : get_attr[_sf_bypass_0]                   # [S_q; S_k; S_v] in the linears' dtype, built once
    %b    : call_function[linear](%px_q, %s)
    %parts: split(%b, [N_q, N_k, N_v], -1)          # read where %b_q, %b_k, %b_v were

:func:`fold_bypasses` goes further where the packed op has a variant that takes the bypass (2:4: the
sparse-tensor-core decode kernel adds it on its own accumulators, `sfcompile.lowering.ops.linear_nm24_slorb`)::

    %y   : call_function[sfcompile.linear_nm24](%x, %v, %m, None)
    ...  (%px_q, %s_q, %b_q as above)
    %g   : call_method[to](%gain, bf16)                  # the hook's slorb_gain
    %out : call_function[add](%y, %g * %b_q)

becomes::

    %px  : call_method[sum](%unflatten, -1)              # placed before the packed op
    %s   : get_attr[_sf_fold_0]                          # gain * S, in x's dtype, built once
    %out : call_function[sfcompile.linear_nm24_slorb](%x, %v, %m, %px, %s, None)

and a fused q/k/v op (its output split back) takes their S concatenated, so its pieces come out with their
bypasses added: no bypass op at all is left in the layer. With ``kernel_sums`` the op gets ``None`` for %px
and the decode kernel sums x itself, so not even the block sums are left.

The S tensors are recognised by identity (`sfcompile.passes.site.bypass_info`, set by ``add_slorb``), never
by name, and S (and the gain) are baked into the graph like the packed weights: the caller guards on the
identity of the lifted inputs (``baked_inputs``); a model changed in place after compiling needs a new
compile, as for its weights. A bypass that does not have exactly this shape (a trainable P, a bias, another
reading of S) is left as it is.
"""

from __future__ import annotations

import operator
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import fx

from sfcompile.passes.lower import _LINEAR, add_constant, graph_tensors, split_back, tagged_tensor_nodes
from sfcompile.passes.site import bypass_info

__all__ = ["BypassReport", "fuse_shared_bypasses", "fold_bypasses"]

@dataclass
class BypassReport:
    """What one run of the pass did.

    Attributes:
        fused: the S nodes (by graph name) whose bypass matmuls now run as one, one tuple per matmul.
        folded: the S nodes whose bypasses now run inside their packed op, one tuple per packed op.
        baked_inputs: lifted S (and gain) inputs whose values are now baked into the graph (guard on their
            identity).
    """

    fused: list[tuple[str, ...]] = field(default_factory=list)
    folded: list[tuple[str, ...]] = field(default_factory=list)
    baked_inputs: list[fx.Node] = field(default_factory=list)


@dataclass(frozen=True)
class _Bypass:
    matmul: fx.Node      # linear(px, S [.to(dtype)])
    block_sums: fx.Node  # px
    x: fx.Node
    s_node: fx.Node      # the placeholder or get_attr holding S
    s: torch.Tensor
    dtype: torch.dtype | None  # what the graph casts S to (None: S as it is)
    dead: tuple[fx.Node, ...]  # the nodes only this bypass reads (px, its unflatten, the cast of S)


def fuse_shared_bypasses(gm: fx.GraphModule, example_inputs: Sequence) -> BypassReport:
    """Rewrite, in place, each group of two or more SLoRB bypass matmuls on the block sums of one input (same
    group width, S dtype and device) into one matmul on their concatenated S, split back. See the module
    docstring."""
    report = BypassReport()
    groups: dict[tuple, list[_Bypass]] = {}
    for node, s in tagged_tensor_nodes(gm, example_inputs, bypass_info):
        bypass = _match(node, s)
        if bypass is not None:
            key = (bypass.x, bypass.block_sums.args[0].args[2], bypass.dtype, s.dtype, s.device)
            groups.setdefault(key, []).append(bypass)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for number, members in enumerate(g for g in groups.values() if len(g) > 1):
        members.sort(key=lambda b: order[b.matmul])
        _fuse(gm, members, f"_sf_bypass_{number}")
        report.fused.append(tuple(b.s_node.name for b in members))
        report.baked_inputs += [b.s_node for b in members if b.s_node.op == "placeholder"]
    if report.fused:
        gm.graph.lint()
        gm.recompile()
    return report


def _match(s_node: fx.Node, s: torch.Tensor) -> _Bypass | None:
    """The bypass ``linear(sum(unflatten(x, -1, (K/k, k)), -1), S[.to(dtype)])`` that is the one reader of
    ``s_node``, or None."""
    if s.dim() != 2 or len(s_node.users) != 1:
        return None
    user = next(iter(s_node.users))
    cast, dtype = None, None
    if user.op == "call_method" and user.target == "to":
        dtype = next((a for a in (*user.args[1:], *user.kwargs.values()) if isinstance(a, torch.dtype)), None)
        extra = [a for a in (*user.args[1:], *user.kwargs.values()) if not isinstance(a, torch.dtype)]
        if dtype is None or extra or len(user.users) != 1:
            return None
        cast, user = user, next(iter(user.users))
    if user.op != "call_function" or user.target not in _LINEAR or len(user.args) < 2:
        return None
    bias = user.args[2] if len(user.args) > 2 else user.kwargs.get("bias")
    if bias is not None or user.args[1] is not (cast or s_node) or set(user.kwargs) - {"bias"}:
        return None
    px = user.args[0]
    if not (isinstance(px, fx.Node) and px.op == "call_method" and px.target == "sum" and len(px.users) == 1
            and tuple(px.args[1:]) == (-1,) and not px.kwargs):
        return None
    unflat = px.args[0]
    if not (isinstance(unflat, fx.Node) and unflat.op == "call_method" and unflat.target == "unflatten"
            and len(unflat.users) == 1 and len(unflat.args) == 3 and unflat.args[1] == -1 and not unflat.kwargs):
        return None
    groups, width = unflat.args[2]
    if not isinstance(unflat.args[0], fx.Node) or groups != s.shape[1] or width != bypass_info(s)["group"]:
        return None
    dead = (px, unflat) + ((cast,) if cast is not None else ())
    return _Bypass(user, px, unflat.args[0], s_node, s, dtype, dead)


def _fuse(gm: fx.GraphModule, members: list[_Bypass], attr: str) -> None:
    graph = gm.graph
    first = members[0]
    with torch.no_grad():
        weight = add_constant(gm, attr, torch.cat([b.s.detach().to(b.dtype or b.s.dtype) for b in members]))
    with graph.inserting_before(first.matmul):
        fused = graph.call_function(first.matmul.target, (first.block_sums, weight))
        parts = split_back(graph, fused, [int(b.s.shape[0]) for b in members], [b.matmul for b in members])
    for b, part in zip(members, parts):
        b.matmul.replace_all_uses_with(part)
        graph.erase_node(b.matmul)
    for b in members:  # the casts of S always; the block sums of all but the first (which the fused matmul reads)
        for node in b.dead if b is not first else b.dead[2:]:
            if not node.users:
                graph.erase_node(node)


# ---- folding into the packed ops ------------------------------------------------------------------------

_MUL = {operator.mul, torch.mul}
_ADD = {operator.add, torch.add}


@dataclass(frozen=True)
class _Fold:
    bypass: _Bypass
    gain: float
    gain_node: fx.Node | None   # the lifted or get_attr gain tensor (guarded on), None for a constant gain
    add: fx.Node                # piece + gain * bypass: what the fold replaces by the piece
    piece: fx.Node              # the packed op, or its getitem when the op is a fused group's
    packed: fx.Node
    dead: tuple[fx.Node, ...]   # the bypass's own nodes, erased once the fold is done


def fold_bypasses(gm: fx.GraphModule, example_inputs: Sequence, variants: Mapping,
                  kernel_sums: Collection = ()) -> BypassReport:
    """Move each SLoRB bypass that is added to a packed op's output into that op, in place: ``variants`` maps a
    packed op to its variant taking the bypass, called with the op's arguments and ``px, S`` inserted before
    the last (the bias). A fused op (split back into pieces) is folded only when every piece has a bypass. A
    variant in ``kernel_sums`` gets px None and takes the block sums of x itself (no reduction is left in the
    graph). See the module docstring."""
    report = BypassReport()
    tensors = graph_tensors(gm, example_inputs)   # (read once: the S tensors and the gains among them)
    by_op: dict[fx.Node, list[_Fold]] = {}
    for node, s in tensors.items():
        bypass = _match(node, s) if bypass_info(s) is not None else None
        fold = _match_fold(bypass, variants, tensors) if bypass is not None else None
        if fold is not None:
            by_op.setdefault(fold.packed, []).append(fold)
    for number, (packed, folds) in enumerate(by_op.items()):
        ordered = _pieces_in_order(packed, folds)
        if ordered is None:
            continue
        variant = variants[packed.target]
        _fold(gm, packed, ordered, variant, f"_sf_fold_{number}", variant in kernel_sums)
        report.folded.append(tuple(f.bypass.s_node.name for f in ordered))
        report.baked_inputs += [n for f in ordered for n in (f.bypass.s_node, f.gain_node)
                                if n is not None and n.op == "placeholder"]
    if report.folded:
        gm.graph.lint()
        gm.recompile()
    return report


def _only_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _other(node: fx.Node, one: fx.Node):
    """The operand of binary ``node`` that is not ``one`` (None unless exactly two positional operands)."""
    if len(node.args) != 2 or node.kwargs:
        return None
    a, b = node.args
    return b if a is one else a if b is one else None


def _gain(operand, tensors: dict) -> tuple[float, fx.Node | None, tuple[fx.Node, ...]] | None:
    """(value, tensor node, nodes only it reads) of the hook's gain operand: a number, or a one-element tensor
    (lifted or get_attr), possibly cast with ``.to``; None otherwise."""
    if isinstance(operand, (int, float)):
        return float(operand), None, ()
    if not isinstance(operand, fx.Node):
        return None
    cast = ()
    if operand.op == "call_method" and operand.target == "to" and len(operand.users) == 1:
        cast, operand = (operand,), operand.args[0]
    value = tensors.get(operand) if isinstance(operand, fx.Node) else None
    if value is None or value.numel() != 1:
        return None
    return float(value.detach().float().item()), operand, cast


def _match_fold(bypass: _Bypass, variants: Mapping, tensors: dict) -> _Fold | None:
    """The fold of ``bypass`` when its output, times a constant gain, is added to a packed op of ``variants``
    (or to a piece of a fused one) that reads the same x; None otherwise."""
    out, gain, gain_node, extra = bypass.matmul, 1.0, None, ()
    user = _only_user(out)
    if user is not None and user.op == "call_function" and user.target in _MUL:
        found = _gain(_other(user, out), tensors)
        if found is None:
            return None
        gain, gain_node, extra = found
        out, user = user, _only_user(user)
    if user is None or user.op != "call_function" or user.target not in _ADD:
        return None
    piece = _other(user, out)
    if not isinstance(piece, fx.Node) or len(piece.users) != 1:
        return None
    packed = piece
    if piece.op == "call_function" and piece.target is operator.getitem:
        split = piece.args[0]
        if not (isinstance(split, fx.Node) and split.op == "call_function" and split.target is torch.split):
            return None
        packed = split.args[0]
    if not (isinstance(packed, fx.Node) and packed.op == "call_function" and packed.target in variants
            and packed.args and packed.args[0] is bypass.x):
        return None
    x_value = tensors.get(bypass.x, bypass.x.meta.get("example_value", bypass.x.meta.get("val")))
    if not isinstance(x_value, torch.Tensor) or (bypass.dtype or bypass.s.dtype) != x_value.dtype:
        return None   # (the variant takes S in x's dtype; a bypass computed in another stays as it is)
    dead = (user, *((out,) if out is not bypass.matmul else ()), bypass.matmul, *extra, *bypass.dead)
    return _Fold(bypass, gain, gain_node, user, piece, packed, dead)


def _pieces_in_order(packed: fx.Node, folds: list[_Fold]) -> list[_Fold] | None:
    """The folds of ``packed`` in the order of its output (the split's pieces), or None when some piece (or
    the op itself) has no fold, or has two, or when the pieces' bypasses differ in group width or dtype (the op
    takes one block-sum tensor and one S)."""
    by_piece = {f.piece: f for f in folds}
    shapes = {(f.bypass.block_sums.args[0].args[2], f.bypass.dtype or f.bypass.s.dtype) for f in folds}
    if len(by_piece) != len(folds) or len(shapes) != 1:
        return None
    if list(by_piece) == [packed]:
        return folds
    split = _only_user(packed)
    if split is None or split.target is not torch.split:
        return None
    pieces = sorted(split.users, key=lambda getitem: getitem.args[1])
    if len(pieces) != len(split.args[1]) or set(pieces) != set(by_piece):
        return None
    return [by_piece[p] for p in pieces]


def _fold(gm: fx.GraphModule, packed: fx.Node, folds: list[_Fold], variant, attr: str, kernel_sums: bool) -> None:
    graph = gm.graph
    first = folds[0].bypass
    dtype = first.dtype or first.s.dtype     # x's (checked by _match_fold)
    with torch.no_grad():
        s = torch.cat([(f.gain * f.bypass.s.detach().float()).to(dtype) for f in folds])
        s_node = add_constant(gm, attr, s)
    unflat = first.block_sums.args[0]
    with graph.inserting_before(packed):   # the block sums (the hook computed them after the op) before it
        px = None
        if not kernel_sums:
            new_unflat = graph.call_method("unflatten", unflat.args)
            new_unflat.meta = dict(unflat.meta)
            px = graph.call_method("sum", (new_unflat, *first.block_sums.args[1:]))
            px.meta = dict(first.block_sums.meta)
        new = graph.call_function(variant, (*packed.args[:-1], px, s_node, packed.args[-1]), dict(packed.kwargs))
    new.meta = dict(packed.meta)
    packed.replace_all_uses_with(new)
    graph.erase_node(packed)
    for f in folds:
        target = new if f.piece is packed else f.piece
        f.add.replace_all_uses_with(target)
    for f in folds:
        for node in f.dead:
            if not node.users:
                graph.erase_node(node)
