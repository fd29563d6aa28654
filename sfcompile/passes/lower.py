"""Lower matmuls on hardened weights to packed sparse ops (the graph half of the `sparseforge` backend).

The pass runs on the graph Dynamo hands a backend. A hardened weight (``hardened_info(param)`` is set by
``harden``/``load``) reaches the graph either as a lifted input (a placeholder whose example input IS the
``nn.Parameter``, the default since torch 2.5) or as a ``get_attr`` of the GraphModule; either way it is
recognised by identity, never by its generated name. Each matmul that reads it (possibly through
transposes) is rewritten into the packed op of its pattern; the packed operands become buffers of the
GraphModule, so they are built once and held by the compiled module (never re-packed per call).

Before (a LLaMA ``q_proj`` hardened to 2:4; GPT-2 ``Conv1D`` is the ``addmm`` line)::

    %w    : placeholder[L_..._q_proj_parameters_weight_]        # (N, K), hardened 2:4
    %y    : call_function[torch._C._nn.linear](%x, %w, None)
    %c    : call_function[torch.addmm](%b, %x2, %w_conv)          # W_conv (K, N)
    %wt   : call_method[transpose](%w_experts, -2, -1)            # experts (E, N, K)
    %g    : call_function[torch._grouped_mm](%xs, %wt, offs=%offs)

After::

    %w    : placeholder[...]                                      # still an input, no longer read
    %v    : get_attr[_sf_packed_0_values]                         # (N, K/2)
    %m    : get_attr[_sf_packed_0_meta]                           # (N, K/32) int32
    %y    : call_function[sfcompile.linear_nm24](%x, %v, %m, None)
    %c    : call_function[sfcompile.linear_nm24](%x2, %v1, %m1, %b)
    %g    : call_function[sfcompile.grouped_nm24](%xs, %v2, %m2, %offs)

Everything else is left alone: dense weights, the SLoRB bypass's small dense matmuls, embeddings, and any
use of a hardened weight the pass does not recognise (that use keeps reading the dense weight, and the
site is reported with the reason).

Which packed op runs a weight is not decided here: the caller passes a ``lowerer`` (the backend's kernel
table, `sfcompile.lowering.backend`), so this module depends on no kernel code (DESIGN: ``lowering`` builds
on ``passes``, never the reverse).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import fx

from sfcompile.passes.site import hardened_info

__all__ = ["PackedMatmul", "LowerReport", "lower_hardened_matmuls", "count_packed_ops", "is_packed_op", "Fuser"]


@dataclass(frozen=True)
class PackedMatmul:
    """How one hardened weight runs packed: the ops, their tensor operands and trailing int arguments.

    The ops follow ``sfcompile.lowering.ops``: ``linear(x, *tensors, *consts, bias)`` for a 2-D weight and
    ``grouped(x, *tensors, offs, *consts)`` for 3-D experts. Either may be None when the weight has no op of
    that family. ``linear_kwargs``: keyword arguments of every linear call (the block-16 op's ``frag``).
    """

    linear: Callable | None
    grouped: Callable | None
    tensors: tuple[tuple[str, torch.Tensor], ...]
    consts: tuple[int, ...] = ()
    linear_kwargs: tuple[tuple[str, object], ...] = ()


# A lowerer maps (weight, hardened info) to its packed form, or to the reason the weight stays dense.
Lowerer = Callable[[torch.Tensor, dict], "PackedMatmul | str"]
# A fuser maps the (N_i, K) weights of linears that read one input (q/k/v, gate/up), with their hardened infos,
# to one packed form of their concatenation along N, or to the reason they run separately.
Fuser = Callable[[list, list], "PackedMatmul | str"]


@dataclass
class LowerReport:
    """What one run of the pass did.

    Attributes:
        lowered: site name -> number of matmul nodes rewritten into packed ops.
        dense: site name -> why (some of) its uses stay dense.
        baked_inputs: the placeholders (lifted weights) whose packed form is now baked into the graph: the
            compiled graph is valid only for these very tensors, so the caller must guard on their identity
            (Dynamo reuses a graph for another module of the same structure otherwise).
        fused: the sites whose linears run as one packed op (with a ``fuser``), one tuple per op; ``lowered``
            counts that op on the group's first site and 0 on the others (lowered, but no op of their own).
        fused_bypasses: the S inputs whose SLoRB bypasses run as one matmul, one tuple per matmul (filled by
            the backend's ``fuse_bypass``, `sfcompile.passes.bypass`; empty otherwise).
        folded_bypasses: the S inputs whose SLoRB bypasses run inside their packed op, one tuple per op (the
            same option).
    """

    lowered: dict[str, int] = field(default_factory=dict)
    dense: dict[str, str] = field(default_factory=dict)
    baked_inputs: list[fx.Node] = field(default_factory=list)
    fused: list[tuple[str, ...]] = field(default_factory=list)
    fused_bypasses: list[tuple[str, ...]] = field(default_factory=list)
    folded_bypasses: list[tuple[str, ...]] = field(default_factory=list)

    @property
    def packed_ops(self) -> int:
        return sum(self.lowered.values())


# ---- recognising matmul uses ----------------------------------------------------------------------------

_LINEAR = {torch._C._nn.linear, torch.nn.functional.linear, torch.ops.aten.linear.default}
_MM = {torch.mm, torch.matmul, operator.matmul, torch.ops.aten.mm.default}
_ADDMM = {torch.addmm, torch.ops.aten.addmm.default}
_TRANSPOSE = {torch.transpose, torch.ops.aten.transpose.int}
_PASSTHROUGH_METHODS = {"contiguous"}


def _grouped_targets() -> set:
    targets = {getattr(torch, "_grouped_mm", None), getattr(torch.nn.functional, "grouped_mm", None)}
    fallback = getattr(getattr(torch.ops, "transformers", None), "grouped_mm_fallback", None)
    if fallback is not None:  # transformers' opaque grouped-mm op (non-bf16 dtypes under compile)
        targets |= {fallback, fallback.default}
    return {t for t in targets if t is not None}


def _as_int(x) -> int | None:
    return x if isinstance(x, int) else None


def _view_step(node: fx.Node, src: fx.Node, dims: tuple[int, ...]) -> tuple[int, ...] | None:
    """If ``node`` is a transpose-like view of ``src``, the new order of the ORIGINAL dims; else None."""
    nd = len(dims)
    is_t = (node.op == "call_method" and node.target == "t") or (
        node.op == "call_function" and node.target is torch.t
    )
    if is_t:
        return dims[::-1] if nd == 2 else None
    if node.op == "call_method" and node.target in _PASSTHROUGH_METHODS and len(node.args) == 1:
        return dims
    is_transpose = (node.op == "call_method" and node.target == "transpose") or (
        node.op == "call_function" and node.target in _TRANSPOSE
    )
    if is_transpose and len(node.args) == 3 and node.args[0] is src:
        a, b = _as_int(node.args[1]), _as_int(node.args[2])
        if a is None or b is None:
            return None
        out = list(dims)
        out[a % nd], out[b % nd] = out[b % nd], out[a % nd]
        return tuple(out)
    if node.op == "call_function" and node.target is getattr and node.args[1] in ("T", "mT"):
        if node.args[1] == "T" and nd != 2:
            return None
        return dims[:-2] + (dims[-1], dims[-2])
    return None


@dataclass
class _Use:
    """One matmul node reading a hardened weight, normalised to ``out = x @ W_nk.T (+ bias)``."""

    node: fx.Node
    x: object
    bias: object = None
    offs: object = None
    grouped: bool = False


def _match_use(node: fx.Node, operand: fx.Node, dims: tuple[int, ...], k_dim: int) -> _Use | str | None:
    """Match a matmul ``node`` whose weight operand is ``operand`` (original dims in order ``dims``).

    Returns a `_Use`, a reason string if it is a matmul the pass cannot lower, or None if not a matmul.
    """
    target, args, kwargs = node.target, node.args, node.kwargs
    nd = len(dims)
    is_method = node.op == "call_method"
    if node.op == "call_function" and target in _LINEAR:
        if len(args) < 2 or args[1] is not operand or args[0] is operand:
            return None
        if dims[-1] != k_dim:
            return f"linear reads the weight with K at dim {dims[-1]}, but it is hardened along dim {k_dim}"
        bias = args[2] if len(args) > 2 else kwargs.get("bias")
        return _Use(node, args[0], bias=bias)
    if (node.op == "call_function" and target in _MM) or (is_method and target in ("mm", "matmul")):
        if len(args) != 2 or args[1] is not operand or args[0] is operand or kwargs:
            return None if len(args) != 2 or args[1] is not operand else "matmul with extra arguments"
        if nd != 2:
            return None
        if dims[0] != k_dim:
            return f"matmul reads the weight with K at dim {dims[0]}, but it is hardened along dim {k_dim}"
        return _Use(node, args[0])
    if node.op == "call_function" and target in _ADDMM:
        if len(args) != 3 or args[2] is not operand or args[1] is operand:
            return None
        if kwargs.get("beta", 1) != 1 or kwargs.get("alpha", 1) != 1:
            return "addmm with beta/alpha other than 1"
        if dims[0] != k_dim:
            return f"addmm reads the weight with K at dim {dims[0]}, but it is hardened along dim {k_dim}"
        bias = args[0]
        if isinstance(bias, fx.Node) and _ndim(bias) not in (None, 1):
            return "addmm with a bias that is not a vector"
        return _Use(node, args[1], bias=bias)
    if node.op == "call_function" and target in _grouped_targets():
        if len(args) < 2 or args[1] is not operand:
            return None
        offs = args[2] if len(args) > 2 else kwargs.get("offs")
        extra = {k: v for k, v in kwargs.items() if k != "offs" and v is not None}
        if offs is None or extra or len(args) > 3:
            return f"grouped matmul with unsupported arguments {sorted(extra) or 'without offs'}"
        if nd != 3 or dims[0] != 0 or dims[1] != k_dim:
            return f"grouped matmul reads the experts weight as dims {dims}, expected (E, K={k_dim}, N)"
        return _Use(node, args[0], offs=offs, grouped=True)
    return None


def _ndim(node: fx.Node) -> int | None:
    val = _fake_value(node)
    return val.dim() if isinstance(val, torch.Tensor) else None


def _fake_value(node: fx.Node):
    return node.meta.get("example_value", node.meta.get("val")) if isinstance(node, fx.Node) else None


def _collect_uses(
    weight_node: fx.Node, ndim: int, k_dim: int
) -> tuple[list[_Use], list[str], list[fx.Node]]:
    """All matmul uses of a weight node (through transposes), reasons for uses that stay dense, the views."""
    uses, problems, views = [], [], []
    stack = [(weight_node, tuple(range(ndim)))]
    while stack:
        src, dims = stack.pop()
        for user in list(src.users):
            matched = _match_use(user, src, dims, k_dim)
            if isinstance(matched, _Use):
                uses.append(matched)
            elif isinstance(matched, str):
                problems.append(matched)
            else:
                new_dims = _view_step(user, src, dims)
                if new_dims is not None:
                    stack.append((user, new_dims))
                    views.append(user)
                elif user.op == "call_function" and user.target is operator.getitem:
                    problems.append("the weight is indexed before its matmul (per-expert loop or batched_mm "
                                    "experts): use config._experts_implementation='grouped_mm'")
    return uses, problems, views


# ---- finding hardened weights ----------------------------------------------------------------------------

def tagged_tensor_nodes(
    gm: fx.GraphModule, example_inputs: Sequence, info_of: Callable = hardened_info
) -> list[tuple[fx.Node, torch.Tensor]]:
    """Graph nodes carrying a tensor that ``info_of`` recognises (a hardened weight by default; the bypass pass
    passes `site.bypass_info`), with the tensor itself (lifted inputs and get_attr), found by identity."""
    return [(node, value) for node, value in graph_tensors(gm, example_inputs).items() if info_of(value) is not None]


def graph_tensors(gm: fx.GraphModule, example_inputs: Sequence) -> dict[fx.Node, torch.Tensor]:
    """The real tensors behind the placeholders (their example inputs) and get_attr nodes of ``gm``, in that
    order."""
    found = {node: value for node, value in zip(gm.graph.find_nodes(op="placeholder"), example_inputs)
             if isinstance(value, torch.Tensor)}
    for node in gm.graph.find_nodes(op="get_attr"):
        value = operator.attrgetter(node.target)(gm)
        if isinstance(value, torch.Tensor):
            found[node] = value
    return found


# ---- the rewrite -----------------------------------------------------------------------------------------

def _add_buffers(gm: fx.GraphModule, packed: PackedMatmul, index: int | str) -> list[fx.Node]:
    return [add_constant(gm, f"_sf_packed_{index}_{name}", tensor) for name, tensor in packed.tensors]


def add_constant(gm: fx.GraphModule, attr: str, tensor: torch.Tensor) -> fx.Node:
    """``tensor`` as the buffer ``attr`` of ``gm`` (a constant the graph computes with), and the get_attr that
    reads it."""
    gm.register_buffer(attr, tensor, persistent=False)
    sources = getattr(gm, "_param_name_to_source", None)
    if sources is not None:
        # AOTAutograd requires a Dynamo source for every parameter/buffer of a Dynamo graph (it dedups
        # guards by source and marks these inputs static for CUDA graphs). The packed tensors are
        # constants of this graph: nothing in user code can rebind them, so a constant source fits.
        from torch._dynamo.source import ConstantSource

        sources[attr] = ConstantSource(attr)
    # Read right after the placeholders (never erased), so the buffer dominates every use.
    placeholders = gm.graph.find_nodes(op="placeholder")
    where = (gm.graph.inserting_after(placeholders[-1]) if placeholders
             else gm.graph.inserting_before(next(iter(gm.graph.nodes))))
    with where:
        return gm.graph.get_attr(attr)


def split_back(graph: fx.Graph, fused: fx.Node, sizes: list[int], replaced_nodes: list[fx.Node]) -> list[fx.Node]:
    """``fused`` split along its last dim into ``sizes`` parts, at the graph's insertion point: one getitem per
    node of ``replaced_nodes`` (whose outputs were concatenated), with their shapes in the meta that passes
    reading the Dynamo graph use."""
    split = graph.call_function(torch.split, (fused, sizes, -1))
    parts = [graph.call_function(operator.getitem, (split, i)) for i in range(len(sizes))]
    values = [_fake_value(node) for node in replaced_nodes]
    if all(isinstance(v, torch.Tensor) for v in values):
        fused.meta["example_value"] = torch.cat(values, dim=-1)
        split.meta["example_value"] = torch.split(fused.meta["example_value"], sizes, -1)
        for part, value in zip(parts, split.meta["example_value"]):
            part.meta["example_value"] = value
    return parts


def _shared_input_groups(found: list[tuple[fx.Node, torch.Tensor]]) -> list[list[tuple[int, _Use, list]]]:
    """Hardened (N, K) weights whose one use is a linear reading the same input node, with the same pattern,
    K, dtype and device and all with or all without a bias: ``[(index in found, use, views), ...]`` per group
    of two or more, in graph order."""
    groups: dict[tuple, list] = {}
    for index, (node, weight) in enumerate(found):
        info = hardened_info(weight)
        if weight.dim() != 2 or int(info["k_dim"]) % 2 != 1:
            continue
        uses, problems, views = _collect_uses(node, 2, 1)
        if len(uses) != 1 or problems or uses[0].grouped or not isinstance(uses[0].x, fx.Node):
            continue
        use = uses[0]
        if use.bias is not None and not (isinstance(use.bias, fx.Node) and use.bias.op in ("placeholder", "get_attr")):
            continue  # a bias computed in the graph may come after the first linear of the group
        key = (use.x, str(info["pattern"]), weight.dtype, weight.device, weight.shape[1], use.bias is None)
        groups.setdefault(key, []).append((index, use, views))
    order = {n: i for i, n in enumerate(found[0][0].graph.nodes)} if found else {}
    return [sorted(g, key=lambda m: order[m[1].node]) for g in groups.values() if len(g) > 1]


def _erase_dead_views(graph: fx.Graph, views: list[fx.Node]) -> None:
    """Erase the transposes of a lowered weight that nothing reads any more (only these: a global dead-code pass
    would also drop the in-place KV-cache writes of a Dynamo graph, whose results are unused)."""
    for view in reversed(views):
        if not view.users:
            graph.erase_node(view)


def _fuse_group(gm: fx.GraphModule, group, weights: list[torch.Tensor], packed: PackedMatmul, name: str,
                replaced: dict) -> None:
    """One packed op over the concatenated weights of ``group``, its output split back into the linears' own
    (views along the last dim), placed before the first of the linears it replaces (recorded in ``replaced``:
    another group may read one of them)."""
    uses = [use for _, use, _ in group]
    x = replaced.get(uses[0].x, uses[0].x)
    sizes = [int(w.shape[0]) for w in weights]
    operands = _add_buffers(gm, packed, name)
    graph = gm.graph
    with graph.inserting_before(uses[0].node):
        bias = None
        if uses[0].bias is not None:
            bias = graph.call_function(torch.cat, ([replaced.get(use.bias, use.bias) for use in uses],))
            values = [_fake_value(use.bias) for use in uses]
            if all(isinstance(v, torch.Tensor) for v in values):
                bias.meta["example_value"] = torch.cat(values)
        fused = graph.call_function(packed.linear, (x, *operands, *packed.consts, bias), dict(packed.linear_kwargs))
        parts = split_back(graph, fused, sizes, [use.node for use in uses])
    for use, part in zip(uses, parts):
        use.node.replace_all_uses_with(part)
        graph.erase_node(use.node)
        replaced[use.node] = part


def lower_hardened_matmuls(gm: fx.GraphModule, example_inputs: Sequence, lowerer: Lowerer,
                           fuser: Fuser | None = None) -> LowerReport:
    """Rewrite every matmul on a hardened weight of ``gm`` into its packed op, in place.

    Args:
        gm: the graph Dynamo passed to the backend.
        example_inputs: the backend's example inputs (the real parameters for lifted weights).
        lowerer: ``(weight, info) -> PackedMatmul | reason``; called once per hardened weight in this graph.
        fuser: if given, ``(weights, infos) -> PackedMatmul | reason`` for each group of hardened (N, K)
            weights whose only use is a linear on one shared input (a layer's q/k/v, gate/up): the group
            runs as one packed op on the concatenated weight, its output split back; a refused group is
            lowered weight by weight.

    Returns:
        A `LowerReport`: rewritten nodes per site, and the sites (or uses) that stay dense with the reason.
    """
    report = LowerReport()
    replaced: dict[fx.Node, fx.Node] = {}  # a use may read the output of another rewritten use of its weight
    found = tagged_tensor_nodes(gm, example_inputs)
    done: set[int] = set()
    for number, group in enumerate(_shared_input_groups(found) if fuser is not None else ()):
        weights = [found[index][1] for index, _, _ in group]
        infos = [hardened_info(w) for w in weights]
        packed = fuser(weights, infos)
        if isinstance(packed, str) or packed.linear is None:
            continue
        _fuse_group(gm, group, weights, packed, f"fused{number}", replaced)
        sites = tuple(str(info.get("site", found[index][0].name)) for info, (index, _, _) in zip(infos, group))
        report.fused.append(sites)
        report.lowered[sites[0]] = report.lowered.get(sites[0], 0) + 1  # one packed op for the group
        for site in sites[1:]:
            report.lowered.setdefault(site, 0)
        for index, _, views in group:
            done.add(index)
            if found[index][0].op == "placeholder":
                report.baked_inputs.append(found[index][0])
            _erase_dead_views(gm.graph, views)

    def current(value):
        return replaced.get(value, value) if isinstance(value, fx.Node) else value

    for index, (node, weight) in enumerate(found):
        if index in done:
            continue
        info = hardened_info(weight)
        site = info.get("site", node.name)
        k_dim = int(info["k_dim"]) % weight.dim()
        uses, problems, views = _collect_uses(node, weight.dim(), k_dim)
        if not uses:
            report.dense[site] = problems[0] if problems else "no matmul on this weight in the graph"
            continue
        packed = lowerer(weight, info)
        if isinstance(packed, str):
            report.dense[site] = packed
            continue
        operands = None
        for use in uses:
            op = packed.grouped if use.grouped else packed.linear
            if op is None:
                problems.append(f"no packed {'grouped' if use.grouped else 'linear'} op for this weight")
                continue
            if operands is None:
                operands = _add_buffers(gm, packed, index)
            x = current(use.x)
            if use.grouped:
                args = (x, *operands, current(use.offs), *packed.consts)
            else:
                args = (x, *operands, *packed.consts, current(use.bias))
            with gm.graph.inserting_after(use.node):
                new = gm.graph.call_function(op, args, {} if use.grouped else dict(packed.linear_kwargs))
            new.meta = dict(use.node.meta)  # same shape, dtype and device as the dense matmul
            use.node.replace_all_uses_with(new)
            gm.graph.erase_node(use.node)
            replaced[use.node] = new
            report.lowered[site] = report.lowered.get(site, 0) + 1
        if site in report.lowered and node.op == "placeholder":
            report.baked_inputs.append(node)
        if problems:
            report.dense[site] = "; ".join(dict.fromkeys(problems))
        _erase_dead_views(gm.graph, views)
    gm.graph.lint()
    gm.recompile()
    return report


def _op_namespace(target) -> str | None:
    if isinstance(target, torch._ops.OpOverload):
        return target.namespace
    if isinstance(target, torch._ops.OpOverloadPacket):
        return target._qualified_op_name.split("::")[0]
    return None


def is_packed_op(target, namespace: str = "sfcompile") -> bool:
    """Whether a call_function target is an op of ``torch.ops.<namespace>``."""
    return _op_namespace(target) == namespace


def count_packed_ops(gm: fx.GraphModule, namespace: str = "sfcompile") -> int:
    """Number of call_function nodes of ``gm`` that call an op of ``torch.ops.<namespace>``."""
    return sum(n.op == "call_function" and _op_namespace(n.target) == namespace for n in gm.graph.nodes)
