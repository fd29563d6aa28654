"""Sequential calibration through the repeated blocks (the protocol of SparseGPT and Wanda).

1. Run the model on each calibration window until the first repeated block: a pre-hook records the block's
   inputs (hidden states plus every other positional/keyword argument: position embeddings, attention mask,
   cache position, ...) and stops the forward.
2. For each block in order: run it on every window while `MatmulInputRecorder` accumulates the statistics of
   the inputs of each site's matmul (XᵀX for SparseGPT, Σx² per feature for Wanda); prune the block's sites;
   run the (now pruned) block again, and its outputs are the next block's inputs.
3. Sites outside the repeated blocks (rare: only if the user included them) are calibrated last, with one
   forward of the whole (already pruned) model per window.

The non-hidden arguments (masks, rotary tables) depend only on positions, and every calibration window has
the same length and no padding, so they are recorded for every block once, from the first window's dense
forward (which also handles models whose blocks get different arguments, e.g. sliding-window layers). That
they do not depend on the window's content is checked on the second window.

Which matmul reads a site's weight is found by identity, generically: under ``state.cached()`` a soft-masked
weight is one tensor object for the whole forward, so a ``TorchFunctionMode`` sees it (or an
integer-indexed expert slice ``experts_weight[e]``, or its transpose) as the weight operand of ``linear``/
``addmm``/``mm``/``matmul``/``bmm``/``grouped_mm`` and records the other operand, the input X (…, K), split
per expert for 3-D expert weights (see `MatmulInputRecorder`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ...passes.blocks import repeated_blocks
from ...passes.site import Site
from ..state import cached, dense_weight

__all__ = ["SiteStats", "MatmulInputRecorder", "calibrate_sequentially"]


@dataclass
class SiteStats:
    """Input statistics of one site, per expert (E = 1 for a 2-D weight).

    ``hessian`` (E, K, K) = Σ xᵀx, accumulated in float64 from float32 per-window products (SparseGPT);
    ``sq_sum`` (E, K) = Σ x² per input feature (Wanda). ``tokens`` (E,) counts the rows of X seen.
    """

    site: Site
    experts: int
    k: int
    want_hessian: bool
    device: torch.device | str = "cpu"
    hessian: torch.Tensor | None = None
    sq_sum: torch.Tensor | None = None
    tokens: torch.Tensor = field(default=None)

    def __post_init__(self):
        if self.want_hessian:
            self.hessian = torch.zeros(self.experts, self.k, self.k, dtype=torch.float64, device=self.device)
        self.sq_sum = torch.zeros(self.experts, self.k, dtype=torch.float64, device=self.device)
        self.tokens = torch.zeros(self.experts, dtype=torch.long)

    @torch.no_grad()
    def add(self, expert: int, x: torch.Tensor, xtx: torch.Tensor | None) -> None:
        """Add X (n, K) in float32 (and its precomputed XᵀX, shared between sites reading the same X)."""
        self.sq_sum[expert] += x.pow(2).sum(0).double()
        self.tokens[expert] += x.shape[0]
        if self.want_hessian:
            self.hessian[expert] += xtx.double()


_LINEAR_FUNCS = {torch.nn.functional.linear}
_ADDMM_FUNCS = {torch.addmm, torch.Tensor.addmm}
_MM_FUNCS = {torch.mm, torch.matmul, torch.bmm, torch.Tensor.mm, torch.Tensor.matmul, torch.Tensor.bmm,
             torch.Tensor.__matmul__}
_INDEX_FUNCS = {torch.Tensor.__getitem__, torch.Tensor.select, torch.select}
_TRANSPOSE_FUNCS = {torch.Tensor.transpose, torch.transpose, torch.Tensor.mT.__get__}


def _is_grouped_mm(func) -> bool:
    """``torch._grouped_mm``, ``F.grouped_mm`` and library fallbacks of it (matched by op name)."""
    name = getattr(func, "__name__", "") or ""
    return "grouped_mm" in name


class MatmulInputRecorder(TorchFunctionMode):
    """Records the input operand X of every matmul-family call whose weight operand is a watched tensor.

    Args:
        watched: ``{key: weight tensor}`` — the exact tensor objects the forward will use (soft-masked
            weights under ``state.cached()``).

    For a 3-D (expert) weight ``W`` (E, ·, ·), these uses are recognised, each attributing rows of X to
    experts: ``linear``/``mm`` on an integer-indexed slice ``W[e]`` (expert e); ``bmm``/``matmul`` of a
    (E, n, K) input with ``W`` or its last-two-dims transpose (expert e gets ``X[e]``); and ``grouped_mm``
    with offsets ``offs`` (expert e gets rows ``offs[e-1]:offs[e]``). After the forward, ``calls`` holds
    ``(key, expert, X)``.
    """

    def __init__(self, watched: dict[str, torch.Tensor]):
        super().__init__()
        self._by_id = {id(t): (t, key, None) for key, t in watched.items()}
        self._derived: dict[int, tuple[torch.Tensor, str, int | None]] = {}
        self.calls: list[tuple[str, int, torch.Tensor]] = []

    def _lookup(self, t) -> tuple[str, int | None] | None:
        if not isinstance(t, torch.Tensor):
            return None
        for table in (self._by_id, self._derived):
            hit = table.get(id(t))
            if hit is not None and hit[0] is t:
                return hit[1], hit[2]
        return None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _INDEX_FUNCS:
            self._note_slice(func, args, out)
        elif func in _TRANSPOSE_FUNCS:
            self._note_transpose(func, args, out)
        elif func in _LINEAR_FUNCS:
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            self._note_call(weight, args[0] if args else kwargs.get("input"))
        elif func in _ADDMM_FUNCS and len(args) >= 3:
            self._note_call(args[2], args[1])
        elif func in _MM_FUNCS and len(args) >= 2:
            self._note_call(args[1], args[0])
        elif _is_grouped_mm(func) and len(args) >= 2:
            offs = kwargs.get("offs", args[2] if len(args) > 2 else None)
            self._note_call(args[1], args[0], offs=offs)
        return out

    def _whole_3d(self, base) -> tuple[str, None] | None:
        hit = self._lookup(base)
        if hit is None or hit[1] is not None or base.dim() != 3:
            return None
        return hit

    def _note_slice(self, func, args, out) -> None:
        base = args[0] if args else None
        hit = self._whole_3d(base)
        if hit is None:
            return
        if func is torch.Tensor.__getitem__:
            index, dim0 = args[1], True
        else:  # select(input, dim, index)
            dim0, index = args[1] == 0, args[2]
        if isinstance(index, torch.Tensor) and index.numel() == 1 and not index.is_floating_point() \
                and index.dtype != torch.bool:
            index = int(index)
        if dim0 and isinstance(index, int) and not isinstance(index, bool):
            self._derived[id(out)] = (out, hit[0], index % base.shape[0])

    def _note_transpose(self, func, args, out) -> None:
        base = args[0] if args else None
        hit = self._whole_3d(base)
        if hit is None:
            return
        if func is torch.Tensor.mT.__get__ or {d % 3 for d in args[1:3]} == {1, 2}:
            self._derived[id(out)] = (out, hit[0], None)

    def _note_call(self, weight, x, offs=None) -> None:
        hit = self._lookup(weight)
        if hit is None or not isinstance(x, torch.Tensor):
            return
        key, expert = hit
        x = x.detach()
        if expert is not None or weight.dim() == 2:
            self.calls.append((key, expert or 0, x))
        elif offs is not None:  # grouped: rows of x sorted by expert, offs = cumulative row ends
            start = 0
            for e, end in enumerate(offs.tolist()):
                if end > start:
                    self.calls.append((key, e, x[start:end]))
                start = end
        elif x.dim() == 3 and x.shape[0] == weight.shape[0]:  # batched: (E, n, K) @ (E, K, N)
            for e in range(x.shape[0]):
                self.calls.append((key, e, x[e]))


def _record_stats(calls, stats: dict[str, SiteStats]) -> None:
    """Fold recorded calls into ``stats``; XᵀX is computed once per distinct input tensor (q/k/v share it)."""
    xtx_cache: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}
    for key, expert, x in calls:
        st = stats[key]
        if x.shape[-1] != st.k:
            raise RuntimeError(
                f"{st.site.name}: a matmul reads it with an input of last dim {x.shape[-1]}, but its "
                f"reduction dim K is {st.k}; sfcompile cannot calibrate this site — use method=\"magnitude\""
            )
        cached = xtx_cache.get(id(x))
        if cached is None or cached[0] is not x:
            x2 = x.reshape(-1, st.k).float()
            cached = (x, x2, None)
        x2, xtx = cached[1], cached[2]
        if st.want_hessian and xtx is None:
            xtx = x2.T @ x2  # (K, n) @ (n, K)
        xtx_cache[id(x)] = (x, x2, xtx)
        st.add(expert, x2, xtx)


class _StopForward(Exception):
    pass


def _output_hidden(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@dataclass
class _BlockCall:
    """How a block is called: everything but the hidden states, which travel window by window."""

    args: tuple
    kwargs: dict
    hidden_in_kwargs: bool

    def run(self, block: nn.Module, hidden: torch.Tensor):
        if self.hidden_in_kwargs:
            return block(*self.args, **{**self.kwargs, "hidden_states": hidden})
        return block(hidden, *self.args, **self.kwargs)


def _split_call(args, kwargs) -> tuple[torch.Tensor, _BlockCall]:
    if args and isinstance(args[0], torch.Tensor):
        return args[0], _BlockCall(tuple(args[1:]), dict(kwargs), False)
    if isinstance(kwargs.get("hidden_states"), torch.Tensor):
        rest = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        return kwargs["hidden_states"], _BlockCall(tuple(args), rest, True)
    raise RuntimeError("the first repeated block is not called with a hidden-states tensor as its first "
                       "argument or `hidden_states=` keyword; sfcompile cannot calibrate it — use "
                       "method=\"magnitude\"")


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return False
    return a is b or (type(a) is type(b) and a == b)


@torch.no_grad()
def _capture(model: nn.Module, blocks, windows: torch.Tensor):
    """Block-0 hidden states for every window, and each block's call (other arguments) from window 0."""
    calls: dict[int, _BlockCall] = {}
    hidden: list[torch.Tensor] = []
    index = {id(b): i for i, (_, b) in enumerate(blocks)}
    state = {"full": True}

    def pre_hook(module, args, kwargs):
        i = index[id(module)]
        h, call = _split_call(args, kwargs)
        if i == 0:
            hidden.append(h.detach())
        if state["full"]:
            calls[i] = call
        elif i == 0:
            first = calls[0]
            if not (_same(first.args, call.args) and _same(first.kwargs, call.kwargs)):
                raise RuntimeError(
                    "the first block's non-hidden arguments (attention mask, position embeddings, ...) "
                    "differ between two calibration windows of the same length; sfcompile's sequential "
                    "calibration assumes they depend only on positions — use method=\"magnitude\""
                )
        if not state["full"]:
            raise _StopForward
        return None

    handles = [b.register_forward_pre_hook(pre_hook, with_kwargs=True) for _, b in blocks]
    try:
        for w in range(windows.shape[0]):
            state["full"] = w == 0
            try:
                model(input_ids=windows[w : w + 1], use_cache=False)
            except _StopForward:
                pass
    finally:
        for h in handles:
            h.remove()
    return hidden, calls


def _block_sites(blocks, entries):
    """Group masked sites by the block that owns them (by module FQN prefix); the rest go to ``outside``."""
    per_block: list[list] = [[] for _ in blocks]
    outside = []
    for entry in entries:
        site = entry[0]
        for i, (name, _) in enumerate(blocks):
            if site.module == name or site.module.startswith(name + "."):
                per_block[i].append(entry)
                break
        else:
            outside.append(entry)
    return per_block, outside


def _new_stats(entries, want_hessian: bool) -> dict[str, SiteStats]:
    stats = {}
    for site, owner, _ in entries:
        experts = site.shape[0] if len(site.shape) == 3 else 1
        device = dense_weight(owner, site.param).device  # statistics live beside the weight (GPU or CPU)
        stats[site.name] = SiteStats(site, experts, site.k, want_hessian, device)
    return stats


def _collect(entries, stats, run_one: Callable[[int], None], n: int) -> None:
    """Run ``run_one(window)`` for every window while recording the entries' matmul inputs into ``stats``."""
    for w in range(n):
        with torch.no_grad(), cached():
            watched = {site.name: getattr(owner, site.param) for site, owner, _ in entries}
            recorder = MatmulInputRecorder(watched)
            with recorder:
                run_one(w)
        _record_stats(recorder.calls, stats)
    unseen = [st.site.name for st in stats.values() if int(st.tokens.sum()) == 0]
    if unseen:
        raise RuntimeError(
            f"calibration never saw the inputs of {len(unseen)} site(s), e.g. {unseen[0]}: their weights "
            "reach the matmul through an op sfcompile does not trace (only linear/addmm/mm/matmul/bmm on the "
            "weight or on an integer-indexed expert slice are recognised). Prune them with "
            "method=\"magnitude\" (e.g. exclude them when sparsifying and prune them separately)"
        )


def calibrate_sequentially(
    model: nn.Module,
    entries: Sequence,
    windows: torch.Tensor,
    *,
    want_hessian: bool,
    prune_entries: Callable[[list, dict[str, SiteStats]], None],
    progress: bool = True,
) -> None:
    """Collect statistics and prune, block by block (see the module docstring).

    Args:
        model: a sparsified HF causal LM; called as ``model(input_ids=..., use_cache=False)``.
        entries: ``masked_sites(model)`` (or a subset): ``(site, owner, SoftMask)`` triples.
        windows: (n, seqlen) token ids.
        want_hessian: accumulate XᵀX (SparseGPT) and not only Σx² (Wanda).
        prune_entries: called once per block with that block's entries and their statistics; it must set the
            masks (and hardness) so the re-run sees the pruned block.
        progress: show a progress bar over the blocks.
    """
    blocks = repeated_blocks(model)
    per_block, outside = _block_sites(blocks, list(entries))
    n = windows.shape[0]
    hidden, calls = _capture(model, blocks, windows)
    if len(hidden) != n or 0 not in calls:
        raise RuntimeError("the model's forward did not reach its first repeated block; sfcompile cannot "
                           "calibrate it — use method=\"magnitude\"")
    missing = [i for i in range(len(blocks)) if i not in calls]
    if missing:
        raise RuntimeError(f"blocks {missing} were not called in the model's forward; cannot calibrate them")

    bar = _progress(len(blocks), progress)
    for i, (_, block) in enumerate(blocks):
        if per_block[i]:
            stats = _new_stats(per_block[i], want_hessian)
            _collect(per_block[i], stats, lambda w, i=i, b=block, h=hidden: calls[i].run(b, h[w]), n)
            prune_entries(per_block[i], stats)
        with torch.no_grad():
            hidden = [_output_hidden(calls[i].run(block, hidden[w])).detach() for w in range(n)]
        bar.update(1)
    bar.close()

    if outside:
        stats = _new_stats(outside, want_hessian)
        with torch.no_grad():
            _collect(outside, stats, lambda w: model(input_ids=windows[w : w + 1], use_cache=False), n)
        prune_entries(outside, stats)


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="prune blocks", unit="block")
