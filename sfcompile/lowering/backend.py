"""The ``sparseforge`` torch.compile backend: packed sparse ops for hardened weights, then Inductor.

Usage::

    import sfcompile.lowering    # registers the backend (also found through the entry point)
    fast = torch.compile(model, backend="sparseforge")                      # no CUDA graphs
    fast = torch.compile(model, backend="sparseforge", mode="reduce-overhead")  # CUDA graphs
    fast = torch.compile(model, backend="sparseforge", options={"cudagraphs": True})
    model.compile(backend="sparseforge", mode="reduce-overhead")  # in place: model.generate() uses it
    model.generate(ids, cache_implementation="static")   # HF auto-compile on CUDA: hardened models carry
                                                          # compile_config=CompileConfig(backend="sparseforge")

What it does to each graph Dynamo captures (`sfcompile.passes.lower`): every matmul on a hardened weight
(``F.linear``, GPT-2 ``Conv1D``'s ``addmm``, MoE experts' grouped matmul) becomes the packed op of its pattern
(``torch.ops.sfcompile.*``: 2:4 and block-16); everything else is left alone; then the graph goes to
Inductor (``compile_fx``), which sees the packed ops through their fake implementations. Each weight is
packed once (cached by identity and version across recompiles) and the packed tensors are buffers of the
compiled graph. Hardened weights that stay dense are logged once each, with the reason.

The pass runs on the Dynamo graph before AOTAutograd, so it installs no Inductor custom pass and leaves
``torch._inductor.config.*_custom_*_pass`` exactly as the user set them.

Options (``options={...}`` of ``torch.compile``, or keyword arguments):
    cudagraphs (bool): run the compiled graph under CUDA graphs (what ``mode="reduce-overhead"`` sets).
    on_lower (callable): ``on_lower(gm, report)`` after the rewrite, before Inductor (debugging/tests:
        ``sfcompile.passes.lower.count_packed_ops(gm)`` counts the packed ops).
    fuse (bool, default True): linears on hardened weights that read the same input (a layer's q/k/v, its
        gate/up) run as one packed op on their weights concatenated along N (packed once, from the
        concatenated dense weights; the sites' own packed forms are then not built), the output split back.
        Fewer, larger kernels: at decode every call pays a fixed ~5 us on an H200, so 4 calls per layer
        instead of 7 took full-depth batch-1 decode from 1.32x to 1.47x dense (LLaMA-2-7B) and from 1.33x to
        1.49x (Qwen3-8B) (benchmarks/README.md, run 15). ``False`` gives one packed op per hardened site.
    pdl (True, False or "auto"; default "auto"): programmatic dependent launch (Hopper and newer; ignored
        elsewhere): Inductor's kernels (``triton.enable_pdl``) and the tensor-core decode kernels of 2:4 and
        block-16 (`kernels.splitk.launch_mode`) may launch while the kernel before them finishes, and wait for
        it only where they read its results. At batch 1 it helps: full-depth 2:4 decode 1.48x -> 1.55x dense
        (LLaMA-2-7B), 1.49x -> 1.57x (Qwen3-8B) (benchmarks/README.md, run 16); block-16 1.67x -> 1.73x,
        1.57x -> 1.63x (run 17). At batch 8 it helps LLaMA-2-7B (2:4 1.41x -> 1.47x, block-16 1.53x ->
        1.58x, run 21) and hurts Qwen3-8B (2:4 1.38x -> 1.16x, run 20), where the time goes to the copy of
        K and V to every query head that grouped-query attention with a mask makes (``repeat_kv``: an expand
        materialised by a reshape), which under these launches waits much longer. ``"auto"`` turns it on for
        a graph whose packed ops all multiply at most ``PDL_AUTO_MAX_ROWS`` rows (decode at batch 1), or at
        most ``PDL_AUTO_MAX_ROWS_NO_COPIES`` rows when the graph makes no such copy (`_broadcast_copies`), and
        off otherwise (copies at more rows, prefill-sized graphs, a symbolic shape, no packed op). An explicit
        ``triton.enable_pdl`` option overrides Inductor's half.
    fuse_bypass (bool, default True): a trained model's SLoRB bypasses leave the graph's small dense ops
        (`sfcompile.passes.bypass`; S built once, like the packed weights). A hardened site's bypass runs inside
        its packed op (``linear_nm24_slorb``, ``linear_block16_slorb``: at decode the tensor-core kernels add it
        with dense ``mma`` on their own accumulators; a fused q/k/v or gate/up op takes their S concatenated), so
        no bypass matmul is left in the layer. Other bypasses of linears that read one input (dense sites) run
        as one dense matmul on their S concatenated along N, the output split back. Full-depth LLaMA-2-7B decode
        at batch 1 with a bypass of group 16 on every site: 2:4 1.18x dense with the bypass as the hook's ops,
        1.38x inside the kernel (2:4 without a bypass 1.59x; benchmarks/README.md, twenty-eighth session).
        Block-16 the same way: 1.29x as the hook's ops, 1.53x inside its kernel (without a bypass 1.75x); Qwen3-8B
        2:4 1.10x -> 1.34x, block-16 1.42x inside (twenty-ninth session). ``False`` leaves the bypasses as the
        hook computes them.
    kernel_sums (bool, default False): with ``fuse_bypass``, a hardened site's folded bypass takes the block
        sums of x inside the decode kernel instead of from a reduction Inductor places before the op: 2:4 from
        the registers its sparse ``mma`` already holds (eight more dense ``mma`` a span,
        `kernels.nm24_mma._span_sums`), block-16 from x loaded for the purpose (its tiles load only the x they
        need; sixteen more dense ``mma`` and eight 16-byte loads per 16 groups, `kernels.block16_mma._block_sums`).
        Groups of 8 or 16 (others: the op reduces x before its kernel). On the H200 those reductions were
        about 100 kernels of their own per full-depth Qwen3-8B decode step (three a layer that Inductor did not
        fuse into the kernel making the input: those after the RMSNorms and o_proj's; benchmarks/README.md,
        twenty-ninth session). Timed on the H200 (thirtieth session, full depth, batch 1, a bypass of group 16
        on every site), it was slower every time: 2:4 1.37x -> 1.30x on LLaMA-2-7B and 1.34x -> 1.29x on
        Qwen3-8B, block-16 1.43x -> 1.41x on Qwen3-8B. The 2:4 kernel grew by ~2.3 us a call, the block-16 kernel
        by ~1.1 us, where a reduction it replaced cost ~1.3 us. Hence off.
    block16_frag (bool, default False): block-16 weights run from tiles permuted into
        ``kernels.block16_mma.fragment_order`` (converted once, when the graph is lowered; the op's every path
        reads that layout): the tensor-core decode kernel then loads each lane's operand in one 16-byte piece,
        3.5% faster per call at the median of 18 decode rows on the H200 (benchmarks/README.md, twenty-third
        session). The tile kernel (17-255 rows) and the prefill unpack read the tiles whole in 16-byte pieces as
        before and permute them in registers (`kernels.block16.load_tiles`; sm_90 SASS: same global loads,
        plus shared-memory or shuffle traffic). Off by default: end to end it ties the row-major tiles (decode
        at batch 1, 1.79x against 1.79x dense on LLaMA-2-7B shapes, 1.64x against 1.65x on Qwen3-8B; twenty-
        fourth session).
    anything else: an Inductor config patch, forwarded as ``torch.compile(options=...)`` forwards it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch.utils.weak import WeakIdKeyDictionary

log = logging.getLogger(__name__)

BACKEND_NAME = "sparseforge"
ENTRY_POINT = "sparseforge = sfcompile.lowering.backend:sparseforge"

__all__ = ["sparseforge", "register", "use_for_generate", "BackendOptions", "BACKEND_NAME", "ENTRY_POINT",
           "PDL_AUTO_MAX_ROWS", "PDL_AUTO_MAX_ROWS_NO_COPIES"]

# pdl="auto" launches with programmatic dependent launch graphs whose packed ops multiply at most
# PDL_AUTO_MAX_ROWS rows, and graphs of at most PDL_AUTO_MAX_ROWS_NO_COPIES rows (the decode kernels' range)
# that copy no tensor out by broadcasting: measured to help at 1 row, and at 8 without the copies, and to hurt
# at 8 with them (the module docstring). Other decode batches are not measured; prefill under these launches
# is not measured at all, so prefill-sized graphs keep plain launches.
PDL_AUTO_MAX_ROWS = 1
PDL_AUTO_MAX_ROWS_NO_COPIES = 16


@dataclass(frozen=True)
class BackendOptions:
    """The backend's options, parsed once from ``mode``/``options`` (see the module docstring)."""

    cudagraphs: bool = False
    on_lower: Callable | None = None
    fuse: bool = True
    pdl: bool | str = "auto"
    block16_frag: bool = False
    fuse_bypass: bool = True
    kernel_sums: bool = False
    inductor: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, mode: str | None, options: dict | None, dynamic: bool | None = None) -> BackendOptions:
        opts = dict(options or {})
        inductor: dict = {}
        if mode not in (None, "default"):
            from torch._inductor import list_mode_options

            inductor.update(list_mode_options(mode, dynamic))
        cudagraphs = bool(opts.pop("cudagraphs", inductor.pop("triton.cudagraphs", False)))
        on_lower = opts.pop("on_lower", None)
        if on_lower is not None and not callable(on_lower):
            raise TypeError(f"sparseforge option on_lower must be callable, got {type(on_lower).__name__}")
        flags = {name: opts.pop(name, default) for name, default in
                 (("fuse", True), ("block16_frag", False), ("fuse_bypass", True), ("kernel_sums", False))}
        for name, value in flags.items():
            if not isinstance(value, bool):
                raise TypeError(f"sparseforge option {name} must be True or False, got {value!r}")
        pdl = opts.pop("pdl", "auto")
        if not isinstance(pdl, bool) and pdl != "auto":
            raise TypeError(f"sparseforge option pdl must be True, False or 'auto', got {pdl!r}")
        inductor.update(opts)
        return cls(cudagraphs=cudagraphs, on_lower=on_lower, inductor=inductor, pdl=pdl, **flags)

    def resolve_pdl(self, rows: int | None, copies: int = 0) -> bool:
        """Whether a graph whose packed ops multiply at most ``rows`` rows (None: unknown or no packed op)
        and that makes ``copies`` broadcast copies (`_broadcast_copies`) launches with programmatic dependent
        launch."""
        if self.pdl != "auto":
            return self.pdl
        return rows is not None and (rows <= PDL_AUTO_MAX_ROWS or (rows <= PDL_AUTO_MAX_ROWS_NO_COPIES
                                                                    and not copies))

    def config_patches(self, pdl: bool) -> dict:
        return {"triton.enable_pdl": pdl, **self.inductor, "triton.cudagraphs": self.cudagraphs}


def use_for_generate(model) -> None:
    """Make HF ``generate()`` compile ``model``'s decode step with this backend: its generation config's
    ``compile_config`` becomes ``CompileConfig(backend="sparseforge", mode="reduce-overhead")`` (HF's own
    default but the backend), unless one is set already. ``generate(..., cache_implementation="static")`` on
    CUDA then runs the packed kernels under CUDA graphs, and so does ``torch.compile(model, ...).generate``,
    which reaches the same ``generate``. Called by `sfcompile.harden` and by `sfcompile.load` of a hardened
    folder; HF does not save ``compile_config``, so a saved model gets it again when loaded. A model without a
    generation config is left alone."""
    generation_config = getattr(model, "generation_config", None)
    if generation_config is None or getattr(generation_config, "compile_config", None) is not None:
        return
    from transformers import CompileConfig

    generation_config.compile_config = CompileConfig(backend=BACKEND_NAME, mode="reduce-overhead")


# ---- the kernel table: hardened weight -> packed operands and ops ----------------------------------------

# Packed forms by weight identity, kept while the weight lives and its version (in-place writes) is unchanged,
# so recompiles (prefill vs decode shapes, guards) share one packed copy.
# (WeakIdKeyDictionary: a WeakKeyDictionary would compare tensors with ==.)
_PACKED: WeakIdKeyDictionary = WeakIdKeyDictionary()
_LOGGED: set[tuple[str, str]] = set()


def _ops_for(pattern) -> tuple[Callable, Callable, tuple[str, ...], bool]:
    """(linear op, grouped op, tensor operand names in op order, whether the ops take N and K) for a
    pattern `pack` accepts (signatures: `sfcompile.lowering.ops`)."""
    from sfcompile.lowering import ops  # noqa: F401  (registers torch.ops.sfcompile.*)
    from sfcompile.patterns import NM

    sf = torch.ops.sfcompile
    if isinstance(pattern, NM):
        return sf.linear_nm24.default, sf.grouped_nm24.default, ("values", "meta"), False
    return (sf.linear_block16.default, sf.grouped_block16.default, ("tile_values", "row_ptr", "col_idx"),
            True)


def _pattern(text):
    """The parsed pattern of a hardened weight's info, or the reason no packed op runs it."""
    from sfcompile.lowering.pack import can_pack
    from sfcompile.patterns import PatternError, parse_pattern

    try:
        pattern = parse_pattern(str(text))
    except PatternError as err:
        return f"unreadable pattern {text!r}: {err}"
    return can_pack(pattern) or pattern


def _packed_matmul(weight: torch.Tensor, pattern, k_dim: int, name: str, frag: bool = False):
    """`PackedMatmul` of ``weight`` packed to ``pattern`` (the linear op for 2-D, the grouped op for 3-D
    experts), or the reason `pack` refused it. ``frag``: a 2-D block-16 weight's tiles in fragment order."""
    from sfcompile.lowering.pack import PackError, pack
    from sfcompile.passes.lower import PackedMatmul

    try:
        packed_weight = pack(weight, pattern, k_dim, name=name)
    except PackError as err:
        return f"refused to pack: {err}"
    linear_op, grouped_op, names, takes_nk = _ops_for(pattern)
    operands = packed_weight.tensors()
    kwargs = ()
    if frag and takes_nk and weight.dim() == 2:   # block-16 linear (the grouped experts stay row-major)
        from sfcompile.lowering.kernels.block16_mma import fragment_order

        operands = {**operands, "tile_values": fragment_order(operands["tile_values"])}
        kwargs = (("frag", True),)
    return PackedMatmul(
        linear=linear_op if weight.dim() == 2 else None,
        grouped=grouped_op if weight.dim() == 3 else None,
        tensors=tuple((name, operands[name]) for name in names),
        consts=(packed_weight.n, packed_weight.k) if takes_nk else (),
        linear_kwargs=kwargs,
    )


def _pack(weight: torch.Tensor, info: dict, frag: bool = False):
    """`PackedMatmul` for a hardened weight, or the reason it stays dense (the backend's lowerer; ``frag``: the
    ``block16_frag`` option)."""
    pattern = _pattern(info["pattern"])
    if isinstance(pattern, str):
        return pattern
    k_dim = int(info["k_dim"]) % weight.dim()
    key = (weight._version, str(pattern), k_dim, frag)
    cached = _PACKED.get(weight)
    if cached is not None and cached[0] == key:
        return cached[1]
    result = _packed_matmul(weight, pattern, k_dim, str(info.get("site", "weight")), frag)
    if not isinstance(result, str):
        _PACKED[weight] = (key, result)
    return result


# Packed forms of concatenated weights (``fuse``), by the first weight's identity: (key, weak references to
# all the weights, PackedMatmul); reused while every weight is the same tensor at the same version.
_FUSED: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _pack_group(weights: list[torch.Tensor], infos: list[dict], frag: bool = False):
    """`PackedMatmul` of the (N_i, K) hardened weights concatenated along N (the backend's fuser), or the
    reason they run separately."""
    import weakref

    pattern = _pattern(infos[0]["pattern"])
    if isinstance(pattern, str):
        return pattern
    key = (tuple(w._version for w in weights), str(pattern), frag)  # (one version per weight: the group's size)
    cached = _FUSED.get(weights[0])
    if cached is not None and cached[0] == key and all(r() is w for r, w in zip(cached[1], weights)):
        return cached[2]
    sites = "+".join(str(info.get("site", "weight")) for info in infos)
    result = _packed_matmul(torch.cat([w.detach() for w in weights]), pattern, 1, sites, frag)
    if not isinstance(result, str):
        _FUSED[weights[0]] = (key, tuple(weakref.ref(w) for w in weights), result)
    return result


def _log_report(report) -> None:
    for site, reason in sorted(report.dense.items()):
        if (site, reason) not in _LOGGED:
            _LOGGED.add((site, reason))
            log.warning("sparseforge: hardened weight %s stays dense: %s", site, reason)
    log.info("sparseforge: %d packed ops for %d hardened weights (%d groups fused; SLoRB bypasses: %d packed ops "
             "took theirs, %d groups fused)", report.packed_ops, len(report.lowered), len(report.fused),
             len(report.folded_bypasses), len(report.fused_bypasses))


# ---- the backend ---------------------------------------------------------------------------------------

def sparseforge(gm: torch.fx.GraphModule, example_inputs: Sequence, *, mode: str | None = None,
                options: dict | None = None, **kwargs):
    """torch.compile backend: lower matmuls on hardened weights to packed sparse ops, then run Inductor.

    Args:
        gm: the graph Dynamo captured.
        example_inputs: its example inputs (the real parameters, for weights Dynamo lifted to inputs).
        mode: a ``torch.compile`` mode; ``"reduce-overhead"`` turns CUDA graphs on.
        options: ``{"cudagraphs": bool, "on_lower": callable, "fuse": bool, "pdl": ..., "block16_frag": bool,
            <Inductor config>: value}`` (the module docstring says what each does).
        **kwargs: the same options as keywords (when the backend is called directly).

    Returns:
        The compiled callable from Inductor (run in launch mode 1 when the ``pdl`` option resolves to on).
    """
    from torch._inductor.compile_fx import compile_fx

    from sfcompile.passes.lower import lower_hardened_matmuls

    opts = BackendOptions.parse(mode, {**(options or {}), **kwargs})
    frag = opts.block16_frag
    report = lower_hardened_matmuls(gm, example_inputs, lambda w, info: _pack(w, info, frag),
                                    fuser=(lambda ws, infos: _pack_group(ws, infos, frag)) if opts.fuse else None)
    if opts.fuse_bypass:
        from sfcompile.lowering import ops  # noqa: F401  (registers torch.ops.sfcompile.*)
        from sfcompile.passes.bypass import fold_bypasses, fuse_shared_bypasses

        sf = torch.ops.sfcompile
        folded = fold_bypasses(gm, example_inputs, {sf.linear_nm24.default: sf.linear_nm24_slorb.default,
                                                    sf.linear_block16.default: sf.linear_block16_slorb.default},
                               kernel_sums=(sf.linear_nm24_slorb.default, sf.linear_block16_slorb.default)
                               if opts.kernel_sums else ())
        fused = fuse_shared_bypasses(gm, example_inputs)   # the rest (bypasses of dense sites, other shapes)
        report.folded_bypasses, report.fused_bypasses = folded.folded, fused.fused
        report.baked_inputs += folded.baked_inputs + fused.baked_inputs
    _log_report(report)
    if not _guard_identity(report.baked_inputs):
        raise RuntimeError(
            "sparseforge: this graph takes hardened weights as inputs, but no Dynamo tracing context is "
            "active to guard on their identity, so the packed graph could later run with other weights; "
            "use the backend through torch.compile(..., backend='sparseforge')")
    if opts.on_lower is not None:
        opts.on_lower(gm, report)
    rows, copies = _packed_rows(gm, example_inputs), _broadcast_copies(gm)
    pdl = opts.resolve_pdl(rows, copies)
    log.info("sparseforge: %s launches for a graph whose packed ops multiply %s rows and that makes %d broadcast "
             "copies (pdl=%r)", "programmatic dependent" if pdl else "plain", rows, copies, opts.pdl)
    pdl_mode = 1 if pdl else 0
    if report.packed_ops:
        from sfcompile.lowering.kernels.splitk import launch_mode

        with launch_mode(pdl_mode):   # the kernels the graph will launch are the ones compiled and tuned here
            _warm_packed_ops(gm, example_inputs)
    compiled = compile_fx(gm, example_inputs, config_patches=opts.config_patches(pdl))
    return _in_launch_mode(compiled, pdl_mode) if pdl_mode and report.packed_ops else compiled


def _static_value(gm: torch.fx.GraphModule, node: torch.fx.Node, placeholders: dict):
    """The tensor ``node`` stands for while compiling: a ``get_attr``'s tensor, a placeholder's example input,
    or the node's fake value; None when it is no tensor or its shape is symbolic."""
    if node.op == "get_attr":
        value = getattr(gm, node.target)
    elif node in placeholders:
        value = placeholders[node]
    else:
        value = node.meta.get("example_value", node.meta.get("val"))
    if not isinstance(value, torch.Tensor) or not all(isinstance(d, int) for d in value.shape):
        return None
    return value


def _packed_rows(gm: torch.fx.GraphModule, example_inputs: Sequence) -> int | None:
    """The most rows (the input's elements over its last dimension) any packed op of ``gm`` multiplies, or
    None if there is no packed op or some input's shape is symbolic or unknown."""
    from sfcompile.passes.lower import is_packed_op

    placeholders = dict(zip(gm.graph.find_nodes(op="placeholder"), example_inputs))
    rows = None
    for node in gm.graph.nodes:
        if node.op != "call_function" or not is_packed_op(node.target):
            continue
        x = _static_value(gm, node.args[0], placeholders)
        if x is None:
            return None
        rows = max(rows or 0, x.numel() // max(1, x.shape[-1]))
    return rows


_RESHAPES = frozenset({"reshape", "view", "flatten", torch.reshape, torch.flatten})
_REPEATS = frozenset({"repeat", "repeat_interleave", torch.repeat_interleave})


def _broadcast_copies(gm: torch.fx.GraphModule) -> int:
    """How many tensors ``gm`` copies out by broadcasting: an ``expand`` that grows a size-1 dimension
    read by a reshape (which must then materialise it: transformers' ``repeat_kv``, the K/V copy to every
    query head of grouped-query attention), or a ``repeat``/``repeat_interleave``."""
    def target(node):
        return node.target if node.op in ("call_method", "call_function") else None

    def grows(node) -> bool:
        src, out = node.args[0], node.meta.get("example_value", node.meta.get("val"))
        src = src.meta.get("example_value", src.meta.get("val")) if isinstance(src, torch.fx.Node) else None
        if not isinstance(src, torch.Tensor) or not isinstance(out, torch.Tensor) or not all(
                isinstance(d, int) for d in (*src.shape, *out.shape)):
            return True   # unknown or symbolic shapes: count it (the cautious answer: no launches)
        lead = out.dim() - src.dim()
        return lead > 0 or any(a == 1 and b != 1 for a, b in zip(src.shape, out.shape[lead:]))

    copies = 0
    for node in gm.graph.nodes:
        t = target(node)
        if t in _REPEATS:
            copies += 1
        elif t in ("expand", torch.Tensor.expand) and grows(node):
            copies += any(target(user) in _RESHAPES for user in node.users)
    return copies


def _in_launch_mode(compiled: Callable, pdl_mode: int) -> Callable:
    """``compiled`` run with the packed ops in programmatic dependent launch mode ``pdl_mode`` (CUDA-graph
    capture happens inside the call, so the captured launches have it too). What Inductor hangs on its
    compiled function (the boxed calling convention, ``named_buffers``, ``zero_grad``, ...) is kept, and, like
    it, the wrapper is never traced by Dynamo."""
    from sfcompile.lowering.kernels.splitk import launch_mode

    def run(*args):
        with launch_mode(pdl_mode):
            return compiled(*args)

    wrapped = torch._dynamo.disable(run)
    for name, value in vars(compiled).items():
        if not name.startswith("_torchdynamo") and name != "__wrapped__":
            setattr(wrapped, name, value)
    return wrapped


@torch.no_grad()
def _warm_packed_ops(gm: torch.fx.GraphModule, example_inputs: Sequence) -> None:
    """Run each packed op of ``gm`` once, eagerly, at the shapes the graph will run it with.

    The CUDA ops keep per-weight state that they build on their first call (the cuSPARSELt compressed
    copy and its algorithm, the Triton kernels' autotuned configs). Built during Inductor's
    CUDA-graph warm-up, those tensors would live in the CUDA-graph memory pool without being graph outputs,
    which CUDA graph trees refuse ("tensor(s) in the cudagraph pool not tracked as outputs"). Building them
    here, before Inductor, keeps them out of the pool. Inputs are zeros (values do not matter); operands
    with a symbolic shape are skipped (their state is then built at the first call).
    """
    from sfcompile.passes.lower import is_packed_op

    placeholders = dict(zip(gm.graph.find_nodes(op="placeholder"), example_inputs))

    def concrete(value):
        if not isinstance(value, torch.fx.Node):
            return value
        tensor = _static_value(gm, value, placeholders)
        if tensor is None:
            raise LookupError(value.name)
        if value.op == "get_attr" or value in placeholders:  # real tensors
            return tensor
        return torch.zeros(tensor.shape, dtype=tensor.dtype, device=tensor.device)  # for a fake value

    for node in gm.graph.nodes:
        if node.op != "call_function" or not is_packed_op(node.target):
            continue
        try:
            args = [concrete(a) for a in node.args]
        except LookupError as missing:
            log.debug("sparseforge: not warming %s: operand %s has a symbolic shape", node.name, missing)
            continue
        node.target(*args, **node.kwargs)   # (constant keywords: block-16's frag)


def _guard_identity(nodes: list) -> bool:
    """Make Dynamo guard on the identity of each baked weight (ID_MATCH on its source).

    The packed tensors are constants of the compiled graph, but Dynamo passes weights as inputs and would
    reuse the graph for any module of the same structure (another layer, another model instance) whose
    weights merely have the same shapes: that would compute with the wrong weights. With these guards a
    different weight makes Dynamo recompile, and the backend packs that weight. Returns False when the
    graph does not come from Dynamo (no tracing context or sources).
    """
    if not nodes:
        return True
    try:
        from torch._dynamo.guards import GuardBuilder
        from torch._guards import TracingContext
    except ImportError:  # pragma: no cover - torch internals moved
        return False
    context = TracingContext.try_get()
    sources = [getattr(node, "_dynamo_source", None) for node in nodes]
    if context is None or any(source is None for source in sources):
        return False
    for source in sources:
        context.guards_context.dynamo_guards.add(source.make_guard(GuardBuilder.ID_MATCH))
    return True


def register() -> None:
    """Register ``sparseforge`` with Dynamo (idempotent, cheap: imports nothing heavy).

    When the ``torch_dynamo_backends`` entry point of an installed sfcompile was already discovered and is
    pending, Dynamo registers the backend itself when it loads the entry point; registering here too would
    make that fail with "duplicate name", so this only registers when Dynamo holds no entry for the name.
    """
    from torch._dynamo.backends import registry

    if BACKEND_NAME in registry._COMPILER_FNS or registry._BACKENDS.get(BACKEND_NAME) is not None:
        return
    torch._dynamo.register_backend(sparseforge, name=BACKEND_NAME)
