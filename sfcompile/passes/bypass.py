"""Run the SLoRB bypasses of linears that read one input as one matmul (the `sparseforge` backend's ``fuse``).

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

The S tensors are recognised by identity (`sfcompile.passes.site.bypass_info`, set by ``add_slorb``), never
by name, and the concatenation is baked into the graph like the packed weights: the caller guards on the
identity of the lifted S inputs (``baked_inputs``). A bypass that does not have exactly this shape (a
trainable P, a bias, another reading of S) is left as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import fx

from sfcompile.passes.lower import _LINEAR, add_constant, split_back, tagged_tensor_nodes
from sfcompile.passes.site import bypass_info

__all__ = ["BypassReport", "fuse_shared_bypasses"]

@dataclass
class BypassReport:
    """What one run of the pass did.

    Attributes:
        fused: the S nodes (by graph name) whose bypass matmuls now run as one, one tuple per matmul.
        baked_inputs: lifted S inputs whose values are now baked into the graph (guard on their identity).
    """

    fused: list[tuple[str, ...]] = field(default_factory=list)
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
