"""Sampling from the teacher without `generate`: one K/V buffer per layer, filled in place and read in place.

`decode` continues every row of a batch of equal-length prompts by exactly ``new`` tokens. The model runs with
its own cache off (``use_cache=False``) and the positions given; the attention is sfcompile's (registered with
transformers' ``AttentionInterface`` as ``"sfcompile_decode"`` and switched on for the call only; the buffers
reach it as a keyword of the model call, which transformers passes down to the attention): it writes
each layer's new keys and values into a buffer allocated once for the whole length and attends over the filled
part. Against `generate` with transformers' dynamic cache this changes three things:

* nothing grows by concatenation (the dynamic cache copies every layer's whole cache at every token);
* a decoding step with grouped-query attention reads each K/V head once: the query heads that share it are
  packed as the rows of one query (``(B, H_q, 1, D)`` -> ``(B, H_kv, H_q / H_kv, D)``), so no K/V copy per
  query head is made and no mask is needed (every row has the same length);
* the next token is drawn on the device, with no per-token host synchronisation (`generate` checks after
  every token whether all rows have finished);
* optionally (``mode="graph"``) the decoding steps read the buffer under a mask, so that many steps have the
  same shapes, and are captured in a CUDA graph and replayed: no Python and no launches per token. A step reads
  the buffer up to the end of its *window* (``windows`` equal spans of the buffer, one graph each, captured when
  the decode reaches it): with one window every step would read the whole buffer, twice what the steps need on
  average (on the H200 at 2048 x 512 tokens the attention took 12 of a step's 19.5 ms, reading every layer's
  whole K/V buffer at every step); with 8 the reads are 56% of that.

The samples follow the same distribution as `generate`'s (softmax at ``temperature``, no top-k / top-p, the
``suppress``-ed ids never drawn) but not the same random draws. Models whose attention does not go through
``AttentionInterface``, or needs what this attention does not do (a sliding window shorter than the sequence,
logit soft-capping, attention sinks), are refused with an error naming the other sampler.
"""

from __future__ import annotations

import contextlib
import inspect

import torch
import torch.nn.functional as F

ATTENTION = "sfcompile_decode"
BUFFERS_KWARG = "sfcompile_kv"  # the model call's keyword that carries the buffers down to the attention


class SamplerError(ValueError):
    """The model cannot be sampled by `decode`; the message names the alternative."""


class _Buffers:
    """Per-layer K/V buffers of ``capacity`` positions; ``length`` positions are filled (all rows alike).

    Two ways to address them: by the Python int ``length`` (the attention reads the filled slice), or, once
    ``position`` is set (a (1,) device tensor: the position of the token being fed), by that tensor: the write
    goes to ``position`` and the attention reads the first ``window`` positions (a Python int past
    ``position``) under a mask up to it. The second has the same shapes at every step of a window, which a CUDA
    graph needs; its values live on the device, which a replay updates."""

    def __init__(self, capacity: int, attention: str = "sdpa"):
        self.capacity, self.length = capacity, 0
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.calls = 0  # attention calls since the last forward began (one per layer)
        self.position: torch.Tensor | None = None
        self.window = capacity
        self.attention = attention  # a decoding step's attention: SDPA, or the Triton kernel (`ATTENTIONS`)

    def write(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if layer not in self.keys:
            b, h, _, d = key.shape
            dtype = _stored_dtype(key)
            # zeros, not empty: the masked read multiplies unfilled values by weight 0, and 0 * NaN is NaN
            self.keys[layer] = key.new_zeros(b, h, self.capacity, d, dtype=dtype)
            self.values[layer] = value.new_zeros(b, value.shape[1], self.capacity, value.shape[-1], dtype=dtype)
        if self.position is not None:  # (B, H, 1, D) into column `position`; the window back
            self.keys[layer].index_copy_(2, self.position, key.to(self.keys[layer].dtype))
            self.values[layer].index_copy_(2, self.position, value.to(self.values[layer].dtype))
            return self.keys[layer][:, :, : self.window], self.values[layer][:, :, : self.window]
        end = self.length + key.shape[2]
        self.keys[layer][:, :, self.length : end] = key
        self.values[layer][:, :, self.length : end] = value
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def seen(self) -> torch.Tensor:
        """(1, 1, 1, window) bool: the positions up to ``position`` (the masked read)."""
        cols = torch.arange(self.window, device=self.position.device)
        return (cols <= self.position).view(1, 1, 1, -1)


def _stored_dtype(key: torch.Tensor) -> torch.dtype:
    """The dtype the K/V buffers hold: under autocast its compute dtype, else the keys' own.

    Under bf16 autocast over fp32 weights the keys come out of the rotary embedding in fp32 (its cos/sin
    follow the fp32 residual stream), and the attention, on autocast's lower-precision list, casts its inputs
    to bf16 at every call: an fp32 buffer would be read whole and cast again at every step. On the H200 the
    trainer's packed-graph sampling (fp32 weights, autocast) ran at 72.4k tokens/s where bf16 weights gave 110k;
    with the buffers in bf16 the trainer sampled at 99.9k (8M tokens, 2048 sequences; benchmarks/README.md,
    twenty-second session). Storing what the attention would have cast gives it the same values."""
    device = key.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return key.dtype


def _attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' attention-function signature; (B, H, T, D) in, ((B, T, H, D), None) out."""
    buffers = kwargs.get(BUFFERS_KWARG)
    if buffers is None:
        raise RuntimeError(f'attention "{ATTENTION}" runs only inside sfcompile.train.sampler.decode, which passes '
                           f"its K/V buffers down as the {BUFFERS_KWARG}= keyword")
    buffers.calls += 1
    for name in ("softcap", "s_aux", "sinks"):
        if kwargs.get(name) is not None:
            raise SamplerError(f"{type(module).__name__} uses attention {name}, which the packed sampler does not "
                               "apply; sample with teacher_data_kv_cache='dynamic'")
    layer = getattr(module, "layer_idx", None)
    if layer is None:
        raise SamplerError(f"{type(module).__name__} has no layer_idx to key its K/V buffer by; sample with "
                           "teacher_data_kv_cache='dynamic'")
    b, h_q, q, d = query.shape
    start = buffers.length
    window = kwargs.get("sliding_window")
    if window is not None and (buffers.capacity if buffers.position is not None else start + q) > window:
        raise SamplerError(f"{type(module).__name__} attends within a sliding window of {window} tokens, shorter "
                           f"than the {buffers.capacity} sampled; sample with teacher_data_kv_cache='dynamic'")
    keys, values = buffers.write(layer, key, value)
    query = query.to(keys.dtype)  # under autocast the buffers hold its dtype (`_stored_dtype`); else a no-op
    h_kv = keys.shape[1]
    if q == 1 and buffers.attention == "triton":  # decoding, only the filled positions read (masked / graph modes)
        from sfcompile.train.decode_attention_kernel import decode_attention, supports_head_dim

        if not supports_head_dim(d):
            raise SamplerError(f"{type(module).__name__} has head dim {d}; attention='triton' needs a power of 2 "
                               ">= 16: sample with attention='sdpa'")
        out = decode_attention(query.reshape(b, h_kv, h_q // h_kv, d), keys, values, buffers.position, scaling)
        out = out.reshape(b, h_q, 1, d)
    elif q == 1:  # decoding: the query heads of one K/V head as the rows of one query
        mask = buffers.seen() if buffers.position is not None else None  # the sliced read needs none
        out = F.scaled_dot_product_attention(query.reshape(b, h_kv, h_q // h_kv, d), keys, values, attn_mask=mask,
                                             scale=scaling)
        out = out.reshape(b, h_q, 1, d)
    elif start == 0:  # the prompt: causal over itself
        out = F.scaled_dot_product_attention(query, keys, values, is_causal=True, scale=scaling,
                                             enable_gqa=h_q != h_kv)
    else:
        raise RuntimeError(f"decode feeds one token at a time after the prompt; got {q} at position {start}")
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, _attention)


@contextlib.contextmanager
def _switched(model):
    """The model's attention set to `_attention` for the block, its own restored after."""
    _register()
    previous = model.config._attn_implementation
    model.set_attn_implementation(ATTENTION)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def _layers(model) -> int:
    # one attention call per repeated block is what every forward must show
    from sfcompile.passes.blocks import repeated_blocks

    try:
        return len(repeated_blocks(model))
    except ValueError as err:
        raise SamplerError(f"{type(model).__name__}: {err}; sample with teacher_data_kv_cache='dynamic'") from err


def multinomial(temperature: float, suppress=()):
    """The default pick: a token drawn from softmax(logits / temperature), the ``suppress``-ed ids excluded.

    Drawn as argmax(p / E), E ~ Exp(1) per entry (the exponential race: the same distribution as
    ``torch.multinomial``, which on CUDA synchronises with the host), so a step never waits for the host and a
    CUDA graph can hold it. The suppressed ids become a device tensor on the first call (an eager one)."""
    suppress = sorted(set(int(i) for i in suppress))
    index: dict[torch.device, torch.Tensor] = {}

    def pick(logits: torch.Tensor) -> torch.Tensor:
        z = logits.float() / temperature
        if suppress:
            if logits.device not in index:
                index[logits.device] = torch.tensor(suppress, device=logits.device)
            z.index_fill_(1, index[logits.device], float("-inf"))
        p = torch.softmax(z, dim=-1)
        return (p / torch.empty_like(p).exponential_()).argmax(-1)

    return pick


MODES = ("sliced", "masked", "graph")
# a decoding step's attention: "sdpa" (PyTorch's, over the window under a mask in the masked / graph modes) or
# "triton" (`decode_attention_kernel`: only the positions up to the fed one; masked / graph modes; the trainer's
# choice for the graph mode, `sfcompile.train.data.TEACHER_ATTENTIONS`)
ATTENTIONS = ("sdpa", "triton")
GRAPH_WINDOWS = 8  # `decode`'s default number of windows in the masked / graph modes


def windows_of(start: int, end: int, windows: int) -> list[tuple[int, int, int]]:
    """The masked steps feeding positions ``start`` .. ``end - 1`` of a buffer of ``end + 1`` positions, split
    into ``windows`` equal spans of the buffer (the last may be shorter): (first position, steps, window) per
    span that holds a step, ``window`` the buffer positions its steps read (each step's position < window).
    Spans are rounded up to a multiple of 8 positions (aligned K/V slices)."""
    width = -(-(end + 1) // windows)
    width += -width % 8
    spans = []
    for lo in range(0, end + 1, width):
        first, last = max(lo, start), min(lo + width, end)
        if first < last:
            spans.append((first, last - first, min(lo + width, end + 1)))
    return spans


@torch.no_grad()
def decode(model, ids: torch.Tensor, new: int, pick, mode: str = "sliced", windows: int | None = None,
           attention: str = "sdpa") -> torch.Tensor:
    """``ids`` (B x P prompt tokens, one length for all rows) continued by ``new`` tokens, each chosen by
    ``pick`` (last-position logits (B, V) -> token ids (B,)); returns (B, P + new).

    ``mode``: after the prompt, each step attends over the filled part of the buffers (``"sliced"``), or over
    its window of the buffer under a mask (``"masked"``: the steps of a window have the same shapes, the
    position a device tensor), or ``"graph"``: the masked step captured in a CUDA graph per window and replayed
    (no Python or launches per token; CUDA only; each window's first step runs eagerly as its capture's
    warm-up). ``windows`` (default `GRAPH_WINDOWS`): how many equal spans the buffer is read in (`windows_of`);
    1 reads the whole buffer at every step. ``attention`` (`ATTENTIONS`): a decoding step's attention, SDPA or
    the Triton kernel that reads only the filled positions (the masked and graph modes, where the position is
    a device tensor).

    Raises `SamplerError` when the model's attention does not run through transformers' AttentionInterface
    (checked on every eager forward: one call per layer) or needs what `_attention` does not do."""
    if mode not in MODES:
        raise SamplerError(f"mode={mode!r}: choose one of {', '.join(map(repr, MODES))}")
    if mode == "graph" and ids.device.type != "cuda":
        raise SamplerError(f"mode='graph' captures a CUDA graph; these tokens are on {ids.device} (use 'sliced')")
    if attention not in ATTENTIONS:
        raise SamplerError(f"attention={attention!r}: choose one of {', '.join(map(repr, ATTENTIONS))}")
    if attention == "triton" and mode == "sliced":
        raise SamplerError("attention='triton' reads the fed position from a device tensor: use mode 'masked' or "
                           "'graph' (or attention='sdpa')")
    windows = GRAPH_WINDOWS if windows is None else windows
    if isinstance(windows, bool) or not isinstance(windows, int) or windows < 1:
        raise SamplerError(f"windows={windows!r} must be an integer >= 1 (1: every step reads the whole buffer)")
    b, p = ids.shape
    out = torch.empty(b, p + new, dtype=ids.dtype, device=ids.device)
    out[:, :p] = ids
    if new == 0:
        return out
    keep_last = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    buffers = _Buffers(p + new, attention)
    layers = _layers(model)

    def forward(tokens, where):
        buffers.calls = 0
        logits = model(input_ids=tokens, position_ids=where, use_cache=False, **{BUFFERS_KWARG: buffers},
                       **keep_last).logits[:, -1]
        if buffers.calls != layers:
            raise SamplerError(
                f"{type(model).__name__}: {buffers.calls} of its {layers} layers ran sfcompile's attention "
                "with its buffers (the others do not use transformers' AttentionInterface or do not pass the "
                "call's keywords down); sample with teacher_data_kv_cache='dynamic'"
            )
        return logits

    positions = torch.arange(p + new, device=ids.device)
    with _switched(model):
        tokens = pick(forward(ids, positions[:p].expand(b, p)))[:, None]  # the prompt, causal
        buffers.length = p
        out[:, p] = tokens[:, 0]
        if mode == "sliced":
            for i in range(1, new):
                logits = forward(tokens, positions[buffers.length : buffers.length + 1].expand(b, 1))
                buffers.length += 1
                tokens = pick(logits)[:, None]
                out[:, p + i] = tokens[:, 0]
            return out
        # masked / graph: the fed token's position on the device, advanced by the step itself
        buffers.position = torch.full((1,), p, dtype=torch.long, device=ids.device)
        fed = tokens.clone()

        def step():
            nxt = pick(forward(fed, buffers.position.view(1, 1).expand(b, 1)))[:, None]
            out.index_copy_(1, buffers.position + 1, nxt)
            fed.copy_(nxt)
            buffers.position.add_(1)

        for _, steps, window in windows_of(p, p + new - 1, windows):
            buffers.window = window
            if mode == "masked":
                for _ in range(steps):
                    step()
            else:
                _replay(step, steps)
        return out


def _replay(step, steps: int):
    """Run ``step`` ``steps`` times: once eagerly on a side stream (warm-up: lazy initialisations, allocator,
    the attention's plan for this window's shapes), then captured in a CUDA graph and replayed. Returns
    nothing; ``step`` writes its results in place. The graph (and its memory pool) is freed on return."""
    if steps <= 0:
        return
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    if steps == 1:
        return
    graph = torch.cuda.CUDAGraph()
    # autocast's weight-cast cache must not hold tensors made during capture
    with torch.cuda.graph(graph), torch.autocast("cuda", enabled=torch.is_autocast_enabled("cuda"),
                                                dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False):
        step()
    for _ in range(steps - 1):
        graph.replay()
