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
  every token whether all rows have finished).

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
    """Per-layer K/V buffers of ``capacity`` positions; ``length`` positions are filled (all rows alike)."""

    def __init__(self, capacity: int):
        self.capacity, self.length = capacity, 0
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.calls = 0  # attention calls since the last forward began (one per layer)

    def write(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if layer not in self.keys:
            b, h, _, d = key.shape
            self.keys[layer] = key.new_empty(b, h, self.capacity, d)
            self.values[layer] = value.new_empty(b, value.shape[1], self.capacity, value.shape[-1])
        end = self.length + key.shape[2]
        self.keys[layer][:, :, self.length : end] = key
        self.values[layer][:, :, self.length : end] = value
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


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
    if window is not None and start + q > window:
        raise SamplerError(f"{type(module).__name__} attends within a sliding window of {window} tokens, shorter "
                           f"than the {buffers.capacity} sampled; sample with teacher_data_kv_cache='dynamic'")
    keys, values = buffers.write(layer, key, value)
    h_kv = keys.shape[1]
    if q == 1:  # decoding: the query heads of one K/V head as the rows of one query; nothing to mask
        out = F.scaled_dot_product_attention(query.reshape(b, h_kv, h_q // h_kv, d), keys, values, scale=scaling)
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
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    n = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    if not n:
        raise SamplerError(f"{type(model).__name__}: its config names no layer count; sample with "
                           "teacher_data_kv_cache='dynamic'")
    return int(n)


def multinomial(temperature: float, suppress=()):
    """The default pick: a token from softmax(logits / temperature), the ``suppress``-ed ids excluded."""
    suppress = sorted(set(int(i) for i in suppress))

    def pick(logits: torch.Tensor) -> torch.Tensor:
        z = logits.float() / temperature
        if suppress:
            z[:, suppress] = float("-inf")
        return torch.multinomial(torch.softmax(z, dim=-1), 1)[:, 0]

    return pick


@torch.no_grad()
def decode(model, ids: torch.Tensor, new: int, pick) -> torch.Tensor:
    """``ids`` (B x P prompt tokens, one length for all rows) continued by ``new`` tokens, each chosen by
    ``pick`` (last-position logits (B, V) -> token ids (B,)); returns (B, P + new).

    Raises `SamplerError` when the model's attention does not run through transformers' AttentionInterface
    (checked on the prompt: one call per layer) or needs what `_attention` does not do."""
    b, p = ids.shape
    out = torch.empty(b, p + new, dtype=ids.dtype, device=ids.device)
    out[:, :p] = ids
    positions = torch.arange(p + new, device=ids.device)
    keep_last = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    buffers = _Buffers(p + new)
    layers = _layers(model)
    tokens = ids
    with _switched(model):
        for i in range(new):
            q = tokens.shape[1]
            buffers.calls = 0
            where = positions[buffers.length : buffers.length + q].expand(b, q)
            logits = model(input_ids=tokens, position_ids=where, use_cache=False, **{BUFFERS_KWARG: buffers},
                           **keep_last).logits[:, -1]
            if buffers.calls != layers:
                raise SamplerError(
                    f"{type(model).__name__}: {buffers.calls} of its {layers} layers ran sfcompile's attention "
                    "with its buffers (the others do not use transformers' AttentionInterface or do not pass the "
                    "call's keywords down); sample with teacher_data_kv_cache='dynamic'"
                )
            buffers.length += q
            tokens = pick(logits)[:, None]
            out[:, p + i] = tokens[:, 0]
    return out
