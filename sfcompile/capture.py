"""Graph capture: run a model once on a tiny input and record every ATen op it executes as an FX graph.

Why a dispatch-level recorder and not ``torch.export`` / a Dynamo backend (measured on the tiny families of
the tests, torch 2.13, transformers 5.24, a loaded 2-core machine):

* a recording Dynamo backend costs ~1.4 s per tiny model, leaves entries in Dynamo's global caches (only
  ``torch._dynamo.reset()`` clears them, which also drops the user's own compiled functions) and
  graph-breaks on data-dependent MoE code (``nonzero``, per-expert loops);
* non-strict ``torch.export`` costs 2-4 s per tiny model and fails on transformers' per-expert loop
  (``experts_implementation="eager"``: GuardOnDataDependentSymNode); ``make_fx`` refuses the ``.item()``
  that every HF model's mask code calls.

Running the model eagerly under a ``TorchDispatchMode`` sees exactly the ops eager execution runs (after
``linear``/``matmul`` decompose into ``t``/``mm``/``addmm``/``bmm``), takes ~20-50 ms on a tiny model, follows
data-dependent control flow by simply executing it, yields ONE graph (no breaks) and touches no global
state. The price: ops under a ``torch.compiler.is_compiling()`` branch are not the ones seen (transformers
picks its grouped-mm fallback op only under Dynamo); discovery recognizes both, so the sites are the same.

The graph (one node per executed op, in order)::

    p_model_layers_0_self_attn_q_proj_weight = placeholder()     # meta["param"] = "model.layers.0...weight"
    input_0 = placeholder()                                       # meta["external"] = True (input ids)
    embedding = aten.embedding.default(p_model_embed_tokens_weight, input_0)
    ...
    t = aten.t.default(p_model_layers_0_self_attn_q_proj_weight)
    mm = aten.mm.default(view_3, t)

Every tensor the model did not create inside the run (parameters, buffers, inputs, constants) becomes a
placeholder. Parameters are recognized BY IDENTITY (``tensor is param``), never by generated names; the
placeholder carries the parameter's fully-qualified name in ``node.meta["param"]`` (tied weights: the first
name ``named_parameters()`` yields). Each node records ``meta["shape"]`` and ``meta["dtype"]`` of its output.
The graph is for analysis: it is replayable on the same inputs (control flow was specialized to them).
"""

from __future__ import annotations

import inspect
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

__all__ = ["Capture", "CaptureError", "capture", "default_example_inputs", "unwrap_compiled"]

DEFAULT_SEQ_LEN = 8


class CaptureError(RuntimeError):
    """The model could not be run on the example input."""


@dataclass
class Capture:
    """A captured model.

    Attributes:
        gm: the recorded ATen-level graph (see the module docstring).
        params: parameter FQN -> the ``nn.Parameter`` object, for every parameter the run read.
        example_inputs: the tensor behind each placeholder, in order (parameters are the model's own
            objects, not copies), so ``gm(*example_inputs)`` replays the run.
        model_class: the captured model's class name (for messages).
    """

    gm: fx.GraphModule
    params: dict[str, nn.Parameter] = field(default_factory=dict)
    example_inputs: list[torch.Tensor] = field(default_factory=list)
    model_class: str = ""

    @property
    def graph(self) -> fx.Graph:
        return self.gm.graph

    def param_nodes(self) -> dict[str, fx.Node]:
        """Parameter FQN -> its placeholder node."""
        return {n.meta["param"]: n for n in self.graph.nodes if n.op == "placeholder" and "param" in n.meta}


def _sanitize(name: str) -> str:
    return re.sub(r"\W", "_", name)


class _Recorder(TorchDispatchMode):
    """Records each ATen op dispatched while active into ``self.graph``.

    Tensors are tracked by object identity: ``self._env[id(t)] = (t, node)`` keeps ``t`` alive, so an ``id``
    is never reused during the run. In-place ops return their input object; it is rebound to the new node.
    """

    def __init__(self, param_names: Mapping[int, str], buffer_names: Mapping[int, str]):
        super().__init__()
        self.graph = fx.Graph()
        self._env: dict[int, tuple[torch.Tensor, fx.Node]] = {}
        self._param_names = param_names
        self._buffer_names = buffer_names
        self._first_op: fx.Node | None = None
        self._n_external = 0
        self.params_seen: dict[str, torch.Tensor] = {}
        self.placeholder_values: list[torch.Tensor] = []

    def node_for(self, t: torch.Tensor) -> fx.Node:
        entry = self._env.get(id(t))
        if entry is not None and entry[0] is t:
            return entry[1]
        return self._placeholder(t)

    def _placeholder(self, t: torch.Tensor) -> fx.Node:
        param = self._param_names.get(id(t))
        buffer = self._buffer_names.get(id(t))
        if param is not None:
            name = f"p_{_sanitize(param)}"
        elif buffer is not None:
            name = f"b_{_sanitize(buffer)}"
        else:
            name = f"input_{self._n_external}"
            self._n_external += 1
        # Placeholders go before the first op so the graph reads (and codegens) as a function of them.
        if self._first_op is None:
            node = self.graph.placeholder(name)
        else:
            with self.graph.inserting_before(self._first_op):
                node = self.graph.placeholder(name)
        if param is not None:
            node.meta["param"] = param
            self.params_seen[param] = t
        elif buffer is not None:
            node.meta["buffer"] = buffer
        else:
            node.meta["external"] = True
        _set_meta(node, t)
        self._env[id(t)] = (t, node)
        self.placeholder_values.append(t)
        return node

    def _bind(self, value, node: fx.Node) -> None:
        if isinstance(value, torch.Tensor):
            self._env[id(value)] = (value, node)
            _set_meta(node, value)
        elif isinstance(value, (tuple, list)):
            for i, item in enumerate(value):
                if isinstance(item, torch.Tensor):
                    self._bind(item, self.graph.call_function(operator.getitem, (node, i)))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # Map inputs before running: an in-place op's input must resolve to its value *before* the op.
        node_args, node_kwargs = tree_map(
            lambda a: self.node_for(a) if isinstance(a, torch.Tensor) else a, (args, kwargs)
        )
        out = func(*args, **kwargs)
        node = self.graph.call_function(func, tuple(node_args), dict(node_kwargs))
        if self._first_op is None:
            self._first_op = node
        self._bind(out, node)
        return out


def _set_meta(node: fx.Node, t: torch.Tensor) -> None:
    node.meta["shape"] = tuple(t.shape)
    node.meta["dtype"] = t.dtype


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The module inside a ``torch.compile`` wrapper (whose parameter names carry a ``_orig_mod.`` prefix)."""
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(inner, nn.Module) else model


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def default_example_inputs(model: nn.Module, seq_len: int = DEFAULT_SEQ_LEN) -> dict[str, torch.Tensor]:
    """A tiny deterministic batch for a Hugging Face LM: ``{"input_ids": (1, seq_len), "use_cache": False}``.

    Does not touch the global RNG.
    """
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None)
    if not isinstance(vocab, int) or vocab < 1:
        raise CaptureError(
            f"cannot build a default input for {type(model).__name__}: it has no config.vocab_size; "
            "pass example_inputs=(tensor, ...) or a dict of forward keyword arguments"
        )
    ids = (torch.arange(seq_len) * 7 + 1) % vocab  # (1, T), spread over the vocabulary
    inputs: dict[str, torch.Tensor] = {"input_ids": ids[None].to(_model_device(model))}
    try:
        accepts_cache = "use_cache" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        accepts_cache = False
    if accepts_cache:
        inputs["use_cache"] = False
    return inputs


def _split_inputs(example_inputs) -> tuple[tuple, dict]:
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    raise CaptureError(
        f"example_inputs must be a tensor, a tuple of positional arguments or a dict of keyword arguments, "
        f"got {type(example_inputs).__name__}"
    )


def _describe(args: tuple, kwargs: dict) -> str:
    def one(v):
        return f"tensor{tuple(v.shape)}" if isinstance(v, torch.Tensor) else repr(v)

    parts = [one(a) for a in args] + [f"{k}={one(v)}" for k, v in kwargs.items()]
    return ", ".join(parts)


def capture(model: nn.Module, example_inputs=None) -> Capture:
    """Run ``model`` once (eval mode, no grad) on a tiny input and record its ATen graph.

    Args:
        model: any ``nn.Module``; for a Hugging Face LM the default input is 8 token ids.
        example_inputs: a tensor, a tuple of positional args, or a dict of keyword args for ``model``.

    Returns:
        a :class:`Capture`. The model is left as it was: parameters untouched, per-module training flags
        restored, no hooks or global state left behind.

    Example:
        >>> cap = capture(model)
        >>> sorted(cap.params)[:1]
        ['lm_head.weight']
    """
    model = unwrap_compiled(model)
    if any(p.is_meta for p in model.parameters()):
        raise CaptureError(
            f"{type(model).__name__} has parameters on the meta device; discovery runs the model once on a "
            "tiny input, so materialize it first (e.g. model.to_empty(device='cpu') and initialize weights)"
        )
    if example_inputs is None:
        example_inputs = default_example_inputs(model)
    args, kwargs = _split_inputs(example_inputs)
    param_names = {id(p): name for name, p in model.named_parameters()}
    buffer_names = {id(b): name for name, b in model.named_buffers()}

    training = {m: m.training for m in model.modules()}
    recorder = _Recorder(param_names, buffer_names)
    try:
        model.eval()
        with torch.no_grad(), recorder:
            out = model(*args, **kwargs)
    except Exception as e:
        raise CaptureError(
            f"running {type(model).__name__} on the example input ({_describe(args, kwargs)}) failed: "
            f"{type(e).__name__}: {e}. Pass example_inputs= that its forward accepts"
        ) from e
    finally:
        for m, flag in training.items():
            m.training = flag

    outputs = [recorder.node_for(t) for t in tree_leaves(_plain(out)) if isinstance(t, torch.Tensor)]
    recorder.graph.output(tuple(outputs))
    gm = fx.GraphModule(nn.Module(), recorder.graph, class_name=f"Captured{type(model).__name__}")
    return Capture(gm=gm, params=dict(recorder.params_seen), example_inputs=recorder.placeholder_values,
                   model_class=type(model).__name__)


def _plain(out):
    """HF ``ModelOutput`` is an OrderedDict subclass; pytree only flattens plain containers reliably."""
    if isinstance(out, Mapping):
        return {k: _plain(v) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return [_plain(v) for v in out]
    return out
