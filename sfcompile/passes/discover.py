"""Discovery: find every prunable matmul weight of a model from its captured graph.

A *site* is a parameter that some matmul-like op (``mm``, ``addmm``, ``bmm``, ``baddbmm``, ``mv``,
``matmul``, ``linear``, ``_grouped_mm`` or any ``*grouped_mm*`` custom op such as transformers' CPU
fallback) reads as its weight operand, reached backwards through view-like ops (``t``, ``transpose``,
``permute``, ``view``, ``select``, ``slice``, ``index`` per expert, ``split`` ...). Walking those ops also
maps the op's reduction dim back to a dim of the parameter, which gives K without knowing the module type::

    p_w (N, K) ─ t ─▶ (K, N) ─┐                 nn.Linear:  mm's K is dim 0 of t(W)  → W dim 1
    x.view(-1, K) ────────────┴─ mm ─▶ (T, N)

    p_w (K, N) ───────────────┐                 GPT-2 Conv1D: addmm reads W as is   → W dim 0
    x.view(-1, K) ── addmm(b, ·, ·)

    p_w (E, N, K) ─ transpose(-2,-1) ─▶ (E, K, N) ── _grouped_mm(x, ·, offs)   experts → W dim 2

Then skipped, each with a reason: embedding tables (gathers, not matmuls), the output head (tied or not;
``skip_head=False`` keeps it), MoE routers (a matmul whose output reaches ``topk``/``sort``/``argmax``
without passing through another weight matmul), the user's include/exclude filters, and sites whose shape
the pattern cannot tile. No architecture names are involved anywhere.
"""

from __future__ import annotations

import fnmatch
import math
import operator
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from sfcompile.capture import Capture, capture, unwrap_compiled
from sfcompile.passes.site import Site, Skipped
from sfcompile.patterns import Pattern, parse_pattern

__all__ = ["discover", "discover_graph", "Discovery", "NoSitesError", "DiscoveryError"]

aten = torch.ops.aten


class DiscoveryError(ValueError):
    """The model cannot be analysed (not a causal LM, already sparsified, ...)."""


class NoSitesError(DiscoveryError):
    """Discovery found no prunable site."""


# ---------------------------------------------------------------------------------------------------------
# Matmul-like ops: for each, which operands may be a weight and the reduction dim inside that operand.
# ---------------------------------------------------------------------------------------------------------


def _ndim(node) -> int:
    return len(node.meta["shape"]) if isinstance(node, fx.Node) and "shape" in node.meta else -1


def _mm_operands(a: int, b: int, a_dim: int, b_dim: int):
    def operands(node: fx.Node) -> list[tuple[int, int]]:
        return [(a, a_dim), (b, b_dim)]

    return operands


def _matmul_operands(node: fx.Node) -> list[tuple[int, int]]:
    # torch.matmul: K is the last dim of the left operand and dim -2 of the right one (0 if it is 1-D).
    right = node.args[1]
    return [(0, -1), (1, -2 if _ndim(right) >= 2 else 0)]


def _linear_operands(node: fx.Node) -> list[tuple[int, int]]:
    return [(0, -1), (1, -1)]


def _grouped_operands(node: fx.Node) -> list[tuple[int, int]]:
    # grouped_mm(input (S, K), weight (E, K, N), offs): K is last for the input and -2 for the weight.
    return [(0, -1), (1, -2)]


_MATMULS: dict[object, Callable[[fx.Node], list[tuple[int, int]]]] = {
    aten.mm: _mm_operands(0, 1, 1, 0),
    aten.addmm: _mm_operands(1, 2, 1, 0),
    aten.bmm: _mm_operands(0, 1, 2, 1),
    aten.baddbmm: _mm_operands(1, 2, 2, 1),
    aten.addbmm: _mm_operands(1, 2, 2, 1),
    aten.mv: _mm_operands(0, 1, 1, 0),
    aten.addmv: _mm_operands(1, 2, 1, 0),
    aten.matmul: _matmul_operands,
    aten.linear: _linear_operands,
    aten._grouped_mm: _grouped_operands,
}

# Routing picks experts by rank: an op that returns indices of the largest scores. For ops that return
# (values, indices), only a use of the indices counts: ``logits.max(-1).values`` in a stable softmax is not
# routing (gpt-oss attention sinks do exactly that on q/k outputs).
_RANK_INDICES = {aten.argmax, aten.argmin, aten.argsort}
_RANK_PAIRS = {aten.topk, aten.sort, aten.max, aten.min, aten.kthvalue}


def _is_routing(node: fx.Node) -> bool:
    pk = _packet(node)
    if pk in _RANK_INDICES:
        return True
    if pk in _RANK_PAIRS:
        return any(u.target is operator.getitem and u.args[1] == 1 and u.users for u in node.users)
    return False


def _packet(node: fx.Node):
    return getattr(node.target, "overloadpacket", None)


def _matmul_operands_of(node: fx.Node):
    if node.op != "call_function":
        return None
    packet = _packet(node)
    if packet in _MATMULS:
        return _MATMULS[packet](node)
    # Custom grouped GEMMs (e.g. transformers::grouped_mm_fallback) share _grouped_mm's signature.
    name = getattr(node.target, "name", lambda: "")()  # "ns::op.overload"
    if isinstance(name, str) and "grouped_mm" in name.split("::")[-1] and "backward" not in name:
        return _grouped_operands(node)
    return None


# ---------------------------------------------------------------------------------------------------------
# Walking a weight operand back to its parameter, mapping the reduction dim as we go.
# ---------------------------------------------------------------------------------------------------------


def _norm(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def _reshape_dim(in_shape: Sequence[int], out_shape: Sequence[int], d: int) -> int | None:
    """The input dim that output dim ``d`` of a reshape is, or None if d was split or merged."""
    before = math.prod(out_shape[:d])
    acc = 1
    for j, size in enumerate(in_shape):
        if acc == before and size == out_shape[d]:
            return j
        acc *= size
        if acc > before:
            return None
    return None


def _index_dim(node: fx.Node, d: int) -> int | None:
    """Output dim ``d`` of ``aten.index.Tensor(x, indices)`` back to a dim of ``x`` (None: an index dim)."""
    x, indices = node.args[0], node.args[1]
    in_nd, out_nd = _ndim(x), _ndim(node)
    pos = [i for i, ix in enumerate(indices) if ix is not None]
    if any(isinstance(indices[i], fx.Node) and indices[i].meta.get("dtype") == torch.bool for i in pos):
        return None  # a boolean mask index consumes dims in a way we do not map
    n_bcast = out_nd - (in_nd - len(pos))
    rest = [j for j in range(in_nd) if j not in pos]
    if pos == list(range(pos[0], pos[0] + len(pos))):  # adjacent indexed dims stay in place
        a = pos[0]
        if d < a:
            return d
        if d < a + n_bcast:
            return None
        return rest[d - n_bcast]
    if d < n_bcast:  # non-adjacent: broadcast dims come first
        return None
    return rest[d - n_bcast]


def _squeeze_dim(node: fx.Node, d: int) -> int | None:
    in_shape = node.args[0].meta["shape"]
    if len(node.args) > 1:
        dims = node.args[1] if isinstance(node.args[1], (list, tuple)) else [node.args[1]]
        dropped = {_norm(x, len(in_shape)) for x in dims if in_shape[_norm(x, len(in_shape))] == 1}
    else:
        dropped = {j for j, s in enumerate(in_shape) if s == 1}
    kept = [j for j in range(len(in_shape)) if j not in dropped]
    return kept[d]


def _same(node: fx.Node, d: int) -> int:
    return d


def _step_back(node: fx.Node, d: int) -> tuple[fx.Node, int | None] | None:
    """One view-like step: (input node, its dim) that output dim ``d`` of ``node`` comes from, else None."""
    if node.op != "call_function":
        return None
    if node.target is operator.getitem:  # an output of split / chunk / unbind
        parent, i = node.args
        if not isinstance(parent, fx.Node) or _packet(parent) is None:
            return None
        pk = _packet(parent)
        src = parent.args[0]
        if pk in (aten.split, aten.split_with_sizes, aten.chunk, aten.unsafe_split, aten.tensor_split):
            return src, d
        if pk is aten.unbind:
            dim = _norm(parent.args[1] if len(parent.args) > 1 else 0, _ndim(src))
            return src, d if d < dim else d + 1
        return None
    pk = _packet(node)
    if pk is None or not node.args or not isinstance(node.args[0], fx.Node):
        return None
    src = node.args[0]
    in_nd, out_nd = _ndim(src), _ndim(node)
    if pk in _IDENTITY_VIEWS:
        return src, d
    if pk is aten.t:
        return src, (1 - d) if in_nd == 2 else d
    if pk in (aten.transpose, aten.swapaxes, aten.swapdims):
        d0, d1 = _norm(node.args[1], in_nd), _norm(node.args[2], in_nd)
        return src, d1 if d == d0 else d0 if d == d1 else d
    if pk is aten.permute:
        return src, _norm(node.args[1][d], in_nd)
    if pk in (aten.view, aten._unsafe_view, aten.reshape, aten.view_copy, aten._reshape_alias):
        return src, _reshape_dim(src.meta["shape"], node.meta["shape"], d)
    if pk is aten.unsqueeze:
        k = _norm(node.args[1], out_nd)
        return src, d if d < k else None if d == k else d - 1
    if pk is aten.squeeze:
        return src, _squeeze_dim(node, d)
    if pk is aten.expand:
        lead = out_nd - in_nd
        if d < lead or src.meta["shape"][d - lead] != node.meta["shape"][d]:
            return src, None
        return src, d - lead
    if pk is aten.select:
        dim = _norm(node.args[1], in_nd)
        return src, d if d < dim else d + 1
    if pk in (aten.slice, aten.narrow, aten.index_select):
        return src, d
    if pk is aten.index:
        return src, _index_dim(node, d)
    return None


_IDENTITY_VIEWS = {
    aten.alias, aten.detach, aten.clone, aten.contiguous, aten.lift_fresh, aten.lift_fresh_copy,
    aten._to_copy, aten.to, aten._conj, aten.view_as, aten.expand_as,
}


def _trace_param(node, dim: int) -> tuple[str, int | None] | None:
    """Follow ``node`` back through view-like ops to a parameter placeholder: (param FQN, its dim K).

    The dim is None when the op's reduction dim is not one dim of the parameter (a reshape merged or split
    it, e.g. an einsum contracting two weight dims): the parameter is a matmul weight we cannot group.
    """
    if not isinstance(node, fx.Node) or "shape" not in node.meta:
        return None
    d: int | None = _norm(dim, _ndim(node))
    while True:
        if node.op == "placeholder":
            return (node.meta["param"], d) if "param" in node.meta else None
        if d is None and _ndim(node) < 1:
            return None
        step = _step_back(node, 0 if d is None else d)  # with d lost, only the source matters
        if step is None:
            return None
        node, d = step[0], (None if d is None else step[1])


def _canonical_input(node):
    """The tensor an input operand is a view of (q/k/v each view the same hidden state separately)."""
    while isinstance(node, fx.Node) and node.op == "call_function":
        pk = _packet(node)
        if pk in _IDENTITY_VIEWS or pk in (aten.view, aten._unsafe_view, aten.reshape, aten.expand,
                                           aten.t, aten.transpose, aten.permute, aten.unsqueeze,
                                           aten.squeeze):
            node = node.args[0]
        else:
            break
    return node


# ---------------------------------------------------------------------------------------------------------
# The pass.
# ---------------------------------------------------------------------------------------------------------


@dataclass
class _Use:
    node: fx.Node  # the matmul
    k_dim: int
    input: fx.Node | None  # canonical input operand


@dataclass
class Discovery:
    """What :func:`discover` found: the prunable ``sites`` and the ``skipped`` weights with reasons.

    Iterating yields sites; ``len()`` is the number of sites.
    """

    sites: list[Site] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    model_class: str = ""
    pattern: str | None = None

    def __iter__(self) -> Iterator[Site]:
        return iter(self.sites)

    def __len__(self) -> int:
        return len(self.sites)

    def __getitem__(self, name: str) -> Site:
        for site in self.sites:
            if site.name == name:
                return site
        raise KeyError(f"no site named {name!r}; sites are {[s.name for s in self.sites]}")

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sites]

    def summary(self) -> str:
        """A short text table of sites and skips."""
        params = sum(math.prod(s.shape) for s in self.sites)
        head = f"{self.model_class or 'model'}: {len(self.sites)} sites ({params:,} weights)"
        if self.pattern:
            head += f" for pattern {self.pattern}"
        rows = [("site", "kind", "shape", "K", "shares input with")]
        for s in self.sites:
            shares = ", ".join(n.rsplit(".", 2)[-2] if n.count(".") >= 1 else n for n in s.shares_input_with)
            rows.append((s.name, s.kind, "x".join(map(str, s.shape)), f"{s.k} (dim {s.k_dim})", shares))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [head] + ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[4] for r in rows]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)}:")
            lines += [f"  {s.name}: {s.reason}" for s in self.skipped]
        return "\n".join(line.rstrip() for line in lines)

    def __str__(self) -> str:
        return self.summary()


Filter = str | Sequence[str] | Callable[[Site], bool] | None


def _matcher(spec: Filter, what: str) -> Callable[[Site], bool] | None:
    if spec is None:
        return None
    if callable(spec):
        return spec
    globs = [spec] if isinstance(spec, str) else list(spec)
    if not all(isinstance(g, str) for g in globs):
        raise TypeError(
            f"{what} must be a glob string, a list of globs or a callable(Site) -> bool, got {spec!r}"
        )
    return lambda s: any(fnmatch.fnmatchcase(s.name, g) or fnmatch.fnmatchcase(s.module, g) for g in globs)


def _kind(shape: tuple[int, ...], k_dim: int) -> str:
    if len(shape) == 2:
        return "linear" if k_dim == 1 else "conv1d"
    if len(shape) == 3:
        return "experts"
    return "matmul"


def _reaches(start: fx.Node, hit: Callable[[fx.Node], bool], stop: set[fx.Node]) -> bool:
    """Does data flow from ``start`` reach a node where ``hit`` holds without passing through ``stop``?"""
    seen, todo = {start}, [start]
    while todo:
        for user in todo.pop().users:
            if user in seen or user in stop:
                continue
            seen.add(user)
            if hit(user):
                return True
            todo.append(user)
    return False


def _is_output(node: fx.Node) -> bool:
    return node.op == "output"


def discover_graph(
    cap: Capture,
    pattern: Pattern | str | None = None,
    *,
    include: Filter = None,
    exclude: Filter = None,
    head: str | None | bool = True,
) -> Discovery:
    """Discovery over an already captured graph.

    Args:
        cap: from :func:`sfcompile.capture.capture`.
        pattern: sites whose shape the pattern cannot take are skipped with the pattern's reason.
        include, exclude: FQN globs (matched against the parameter and the module FQN) or callables.
        head: the output head's parameter FQN to skip; ``True`` finds it from the graph (the weight matmul
            whose output reaches the graph output with no other weight matmul in between); ``None`` or
            ``False`` skips no head.
    """
    pat = parse_pattern(pattern) if pattern is not None else None
    graph = cap.graph
    shapes = {n.meta["param"]: n.meta["shape"] for n in graph.nodes if "param" in n.meta}

    # 1. Every weight-matmul use: (param, K dim, matmul node, canonical input).
    uses: dict[str, list[_Use]] = defaultdict(list)
    bad: dict[str, str] = {}
    for node in graph.nodes:
        operands = _matmul_operands_of(node)
        if operands is None:
            continue
        traced = []
        for pos, red in operands:
            arg = node.args[pos] if pos < len(node.args) else None
            hit = _trace_param(arg, red) if isinstance(arg, fx.Node) else None
            if hit is not None:
                traced.append((pos, hit))
        if len(traced) == 2:
            for _, (name, _) in traced:
                bad.setdefault(name, f"{node.target} multiplies two parameters; no activation operand")
            continue
        if len(traced) == 1:
            pos, (name, k_dim) = traced[0]
            if k_dim is None:
                bad.setdefault(name, f"{node.target} reduces over a reshaped view of it: no single K dim")
                continue
            other = next(p for p, _ in operands if p != pos)
            uses[name].append(_Use(node, k_dim, _canonical_input(node.args[other])))

    matmul_nodes = {u.node for us in uses.values() for u in us}
    looked_up: list[str] = []  # parameters read by aten.embedding
    for node in graph.nodes:
        if _packet(node) is aten.embedding:
            hit = _trace_param(node.args[0], 0)
            if hit is not None and hit[0] not in looked_up:
                looked_up.append(hit[0])
    embeddings = [n for n in looked_up if n not in uses]

    # 2. Decide each parameter.
    if head is True:
        heads = {
            name for name, us in uses.items()
            if any(_reaches(u.node, _is_output, matmul_nodes - {u.node}) for u in us)
        }
    else:
        heads = {head} if head else set()
    keep = _matcher(include, "include")
    drop = _matcher(exclude, "exclude")
    sites: list[Site] = []
    skipped = [Skipped(n, "embedding table (read by a lookup, not a matmul)") for n in embeddings]
    skipped += [Skipped(n, r) for n, r in bad.items()]
    for name, us in uses.items():
        if name in bad:
            continue
        shape = tuple(shapes[name])
        k_dims = sorted({u.k_dim for u in us})
        if len(k_dims) > 1:
            skipped.append(Skipped(name, f"used as a matmul weight with different reduction dims {k_dims}"))
            continue
        k_dim = k_dims[0]
        module, _, attr = name.rpartition(".")
        site = Site(name=name, module=module, param=attr, shape=shape, k_dim=k_dim, kind=_kind(shape, k_dim))
        reason = None
        if any(_reaches(u.node, _is_routing, matmul_nodes - {u.node}) for u in us):
            reason = "MoE router: its output feeds top-k expert selection"
        elif len(shape) == 2 and shape[1 - k_dim] == 1:
            reason = "scalar gate: one output per token (N=1), nothing to sparsify"
        elif name in heads:
            tied = " (tied to the input embedding)" if name in looked_up else ""
            reason = f"output head{tied}; pass skip_head=False to prune it"
        elif keep is not None and not keep(site):
            reason = f"not selected by include={include!r}"
        elif drop is not None and drop(site):
            reason = f"excluded by exclude={exclude!r}"
        elif pat is not None:
            why = pat.incompatibility(shape, k_dim)
            reason = f"pattern {pat}: {why}" if why else None
        if reason is None:
            sites.append(site)
        else:
            skipped.append(Skipped(name, reason))

    # 3. Sites that read the same input (q/k/v, gate/up): only among the sites kept.
    readers: dict[fx.Node, set[str]] = defaultdict(set)
    kept = {s.name for s in sites}
    for name in kept:
        for u in uses[name]:
            if u.input is not None:
                readers[u.input].add(name)
    sites = [_with_shares(s, {o for u in uses[s.name] if u.input is not None for o in readers[u.input]})
             for s in sites]
    return Discovery(sites=sites, skipped=skipped, model_class=cap.model_class,
                     pattern=str(pat) if pat is not None else None)


def _with_shares(site: Site, shares: set[str]) -> Site:
    others = tuple(sorted(shares - {site.name}))
    return Site(site.name, site.module, site.param, site.shape, site.k_dim, site.kind, others)


def _check_model(model: nn.Module) -> None:
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        PreTrainedModel = ()  # noqa: N806
    if isinstance(model, PreTrainedModel) and not type(model).can_generate():
        raise DiscoveryError(
            f"discover() needs a causal language model; {type(model).__name__} is not one (it cannot "
            "generate: no LM head, or not a decoder). Load the checkpoint with AutoModelForCausalLM"
        )
    from torch.nn.utils import parametrize

    wrapped = [n for n, m in model.named_modules() if parametrize.is_parametrized(m)]
    if wrapped:
        raise DiscoveryError(
            f"{type(model).__name__} already has parametrized weights (e.g. {wrapped[0]}), so it was "
            "sparsified already; run discover() on the dense model, or use "
            "sfcompile.masking.state.masked_sites(model) to list the sites it has"
        )


def _head_param(model: nn.Module, cap: Capture) -> str | bool | None:
    """The output head parameter FQN (by identity) from ``get_output_embeddings()``, if it has one."""
    get = getattr(model, "get_output_embeddings", None)
    out = get() if callable(get) else None
    weight = getattr(out, "weight", None)
    if isinstance(weight, torch.Tensor):
        for name, p in cap.params.items():
            if p is weight:
                return name
        return None  # the head's weight was not read by the run
    return True  # no head declared: find it from the graph


def discover(
    model: nn.Module,
    pattern: Pattern | str | None = None,
    *,
    include: Filter = None,
    exclude: Filter = None,
    skip_head: bool = True,
    example_inputs=None,
) -> Discovery:
    """Find every prunable matmul weight of ``model`` from its captured graph.

    Args:
        model: a Hugging Face causal LM (or any ``nn.Module`` given ``example_inputs``). Not modified.
        pattern: e.g. ``"2:4"``; sites whose shape cannot take it are skipped with the reason.
        include: FQN glob(s) (matched on the parameter or module FQN) or ``callable(Site) -> bool``:
            keep only matching sites.
        exclude: same forms: drop matching sites.
        skip_head: skip the output head (tied to the embedding or not). Default True.
        example_inputs: forward inputs for the capture (a tensor, tuple or dict); default 8 token ids.

    Returns:
        a :class:`Discovery` (``.sites``, ``.skipped``, ``.summary()``).

    Raises:
        NoSitesError: nothing is prunable (the message lists why each weight was skipped).
        DiscoveryError: the model is not a causal LM, or was already sparsified.

    Example:
        >>> found = discover(model, "2:4")
        >>> [s.name for s in found][:2]
        ['model.layers.0.self_attn.q_proj.weight', 'model.layers.0.self_attn.k_proj.weight']
    """
    model = unwrap_compiled(model)  # site names are the eager module's, not "_orig_mod.*"
    _check_model(model)
    cap = capture(model, example_inputs)
    head = _head_param(model, cap) if skip_head else None
    found = discover_graph(cap, pattern, include=include, exclude=exclude, head=head)
    if not found.sites:
        reasons = defaultdict(list)
        for s in found.skipped:
            reasons[s.reason].append(s.name)
        detail = "; ".join(f"{len(v)} × {r} (e.g. {v[0]})" for r, v in reasons.items()) or "no matmul weights"
        raise NoSitesError(
            f"no prunable sites in {found.model_class}: {detail}. Loosen include/exclude, pick a pattern "
            "that fits the weights, or pass skip_head=False"
        )
    return found
