"""`sfcompile plan`: will a SparseForge run fit? Memory per rank, by component, from the config alone.

The model is built on the meta device (no weights, no download) and its parameters counted:

    P        all parameters                 Ps   parameters of sparse sites (2-D+ weights in the repeated blocks)
    Pb       parameters of the largest block  W   ranks (FSDP2 / ZeRO-3 shard every persistent tensor W ways)

Per rank (bytes), with AdamW and bf16 compute over fp32 master weights, FSDP2 as the trainer builds it:

    weights      4·P/W              fp32 master copy, sharded
    grads        4·Pt/W             fp32, reduce-scattered (Pt = P minus the frozen input embeddings)
    optimizer    8·Pt/W             AdamW exp_avg + exp_avg_sq
    masks        3·mb·Ps/W          soft mask, hard mask, stored m_eff (mb = mask bytes: fp32 by default)
    scores       4·Ps/W             Hessian-diagonal (or Fisher) EMA, row-sharded with its weight
    estimator    24·Ps/W + 4·P/W    the finite-difference probe: saved W and m_eff, W⊙m_eff, the probe vector,
                                    g+ and g− of the sites, plus the probe's gradients of every parameter;
                                    20·Ps/W + 4·P/W for "fd_forward", which the default "auto" plans outside
                                    DeepSpeed (g− is the step's own gradient)
    slorb        16·Ps/(k·W)        SLoRB S (out × in/k per site) with its gradient and Adam state
    teacher      2·P/W              bf16 dense teacher, sharded the same way ("none": 0)
    gather       2·Pb·(2 + t)·2 + 2·Pr  two unsharded bf16 blocks in flight (W and m_eff of the student — mask
                                    and hard are not gathered —; the teacher's W) plus the root's parameters
                                    (embeddings, head: Pr), which stay gathered; without resharding after
                                    forward, every student block stays gathered from forward to backward:
                                    2·Pb·2·L + 2·Pb·t·2 + 2·Pr
    activations  tokens·layers·bytes_per_token_layer (checkpointed: only block inputs + one block)
    logits       tokens·V·2·(2 + teacher) + 12·c·V·4   bf16 student logits + the gradient buffer the fused loss
                                    fills in its forward (+ the teacher's bf16 logits), plus LOSS_TEMPORARIES (12)
                                    chunk-sized fp32 temporaries (c = min(tokens, train.losses.loss_chunk(V)))

Under DeepSpeed ZeRO-3 (``--engine deepspeed``, W > 1) the parameters stay fp32 (bf16 comes from autocast) and
sfcompile's ``ds_config`` leaves DeepSpeed's bucket defaults (0.19: reduce_bucket_size Rb = 5e8 elements,
stage3_max_live_parameters Lv = 1e9 elements), so five terms change or join:

    master       4·(Pt + Ps/k)/W    ZeRO's fp32 optimizer partition is a clone of the fp32 parameter partition, not
                                    an alias (stage3.py compares the partition's torch.device with the str "cuda:N")
    ipg          4·Rb               the contiguous-gradient (IPG) bucket, fp32 like the parameters, held all run
    estimator    24·Ps/W + 4·Ps     the probe's site gradients come whole from torch.autograd.grad (fp32); the
                                    + pass's set is still referenced while the − pass runs
    gather       4·min(Lv, Pz)      fp32 parameters gathered or prefetched: the prefetcher runs ahead until Lv
                                    elements are live (Pz = P + (3 + stats)·Ps + Ps/k, every student parameter)
    activations  + 4·Ps + tokens·layers·(8·h + 4·kv)   ZeRO's memory-efficient linear saves its un-cast fp32
                                    inputs: the effective weights W⊙m_eff, and the fp32 norm outputs (with fp32 norm
                                    weights both norms' normalised value and output are 4 B, not 2); the KV cache
                                    holds the fp32 rotary keys (checkpointed: 4·Pb + tokens·(2·h·layers + 8·h))

Before sharding, each rank holds the whole fp32 student and bf16 teacher for a moment (``startup``: 4·P + 2·P):
the verdict uses the larger of that and the training-step total. Allocator slack and the CUDA context are a
flat 2 GiB. Node 0 also needs 4·P of host RAM at the end, for the gathered copy it hardens and saves.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass

import torch

from sfcompile.masking.config import AUTO_ESTIMATOR, CONFIG_ESTIMATORS, resolve_estimator
from sfcompile.train.losses import loss_chunk

GIB = 1 << 30
OVERHEAD = 2 * GIB
# fp32 (chunk, V) tensors alive at once inside the fused loss's forward, measured on the H200
# (benchmarks/loss_memory.py --device cuda, bf16 logits 32 x 512 x 49,152: 4,608 MiB above the inputs = the
# 1,536 MiB gradient buffer + 3,072 MiB, 12.0 chunks of 256 MiB; on the CPU's resident set 6.8)
LOSS_TEMPORARIES = 12
# DeepSpeed 0.19 defaults that engines/deepspeed.py's ds_config leaves unset (elements, not bytes)
DS_REDUCE_BUCKET = 500_000_000  # zero_optimization.reduce_bucket_size: the IPG gradient bucket
DS_MAX_LIVE = 1_000_000_000  # zero_optimization.stage3_max_live_parameters: gathered + prefetched parameters


@dataclass(frozen=True)
class PlanInput:
    gpus: int = 1
    gpu_mem: float = 80 * GIB
    engine: str = "fsdp2"
    micro_batch: int = 1
    seqlen: int = 4096
    teacher: bool = True
    mask_bytes: int = 4
    checkpointing: bool = False
    reshard_after_forward: bool = True
    slorb_group: int = 16
    score_stats: int = 1  # Hessian EMA (1), + Fisher (2)
    # the Hessian probe: "fd" (central differences), "fd_forward", "hvp" (planned as "fd"), "auto" (the trainer's
    # default: "fd_forward", or "fd" under DeepSpeed or with grad_accum > 1, which the plan does not model)
    estimator: str = AUTO_ESTIMATOR

    def __post_init__(self):
        if self.gpus < 1:
            raise ValueError(f"--gpus {self.gpus}: need at least 1 GPU")
        if self.engine not in ("fsdp2", "deepspeed", "single"):
            raise ValueError(f"engine {self.engine!r} is not known: use fsdp2, deepspeed or single")
        if self.estimator not in CONFIG_ESTIMATORS:
            raise ValueError(f"estimator {self.estimator!r} is not known: use one of "
                             f"{', '.join(CONFIG_ESTIMATORS)}")
        if self.engine == "single" and self.gpus != 1:
            raise ValueError("engine 'single' runs on one GPU; use fsdp2 or deepspeed for --gpus > 1")


def _estimator(p: PlanInput) -> str:
    """The estimator the trainer would run: "auto" resolved as with grad_accum = 1."""
    return resolve_estimator(p.estimator, step_grads=p.engine != "deepspeed")


@dataclass(frozen=True)
class ModelCounts:
    params: int
    site_params: int
    block_params: int
    root_params: int
    embedding_params: int
    layers: int
    hidden: int
    intermediate: int
    kv_dim: int
    vocab: int


def count_model(config) -> ModelCounts:
    """Count parameters of ``config``'s causal LM on the meta device."""
    from transformers import AutoModelForCausalLM

    from sfcompile.passes.blocks import repeated_blocks

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    blocks = repeated_blocks(model)
    site_params = 0
    block_params = 0
    for _, block in blocks:
        n = sum(p.numel() for p in block.parameters())
        block_params = max(block_params, n)
        site_params += sum(p.numel() for p in block.parameters() if p.dim() >= 2)
    text = getattr(config, "text_config", None) or config
    hidden = text.hidden_size
    inter = getattr(text, "intermediate_size", None) or getattr(text, "moe_intermediate_size", None) or 4 * hidden
    params = sum(p.numel() for p in model.parameters())
    in_blocks = sum(p.numel() for _, b in blocks for p in b.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    return ModelCounts(params, site_params, block_params, params - in_blocks, embedding, len(blocks),
                       hidden, inter, kv_width(text), text.vocab_size)


def kv_width(text_config) -> int:
    """Channels of K (or V) per layer of a causal LM's text config: K/V heads × head size (K/V heads default to
    the attention heads). AttributeError when the config has no attention heads."""
    heads = text_config.num_attention_heads
    return (getattr(text_config, "num_key_value_heads", None) or heads) * head_dim(text_config)


def head_dim(text_config) -> int:
    """The attention head size of a causal LM's text config (``head_dim``, default hidden / heads).
    AttributeError when the config has no attention heads."""
    return getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads


def _bytes_per_token_layer(m: ModelCounts, checkpointing: bool) -> float:
    if checkpointing:
        return 2 * m.hidden  # only the bf16 block input is kept
    # bf16 tensors saved for backward in a pre-norm attention + gated-MLP block (flash attention: no T² term):
    # norms, q, attn out, o in, residuals (≈7h), k and v (2·kv), gate, up, act, act·up, down in (≈5·I).
    return 2 * (7 * m.hidden + 2 * m.kv_dim + 5 * m.intermediate)


def _gather(m: ModelCounts, p: PlanInput, t: int) -> float:
    if p.reshard_after_forward:
        return 2 * m.block_params * (2 + t) * 2 + 2 * m.root_params
    return 2 * m.block_params * 2 * m.layers + 2 * m.block_params * t * 2 + 2 * m.root_params


def plan(m: ModelCounts, p: PlanInput) -> dict[str, float]:
    """Bytes per rank by component (see the module docstring for the formulas)."""
    w = p.gpus
    tokens = p.micro_batch * p.seqlen
    t = 1 if p.teacher else 0
    trainable = m.params - m.embedding_params
    parts = {
        "weights": 4 * m.params / w,
        "grads": 4 * trainable / w,
        "optimizer": 8 * trainable / w,
        "masks": 3 * p.mask_bytes * m.site_params / w,
        "scores": 4 * p.score_stats * m.site_params / w,
        "estimator": ((20 if _estimator(p) == "fd_forward" else 24) * m.site_params + 4 * m.params) / w,
        "slorb": 16 * m.site_params / p.slorb_group / w,
        "teacher": 2 * m.params * t / w,
        "gather": _gather(m, p, t) if w > 1 else 0.0,
        "activations": tokens * m.layers * _bytes_per_token_layer(m, p.checkpointing)
        + (tokens * _bytes_per_token_layer(m, False) if p.checkpointing else 0.0),
        "logits": tokens * m.vocab * 2 * (2 + t) + LOSS_TEMPORARIES * min(tokens, loss_chunk(m.vocab)) * m.vocab * 4,
        "overhead": float(OVERHEAD),
    }
    if p.engine == "deepspeed" and w > 1:  # one process trains without the engine (distributed.wrap_model)
        parts = _deepspeed(m, p, parts)
    parts["total"] = sum(parts.values())
    parts["startup"] = (4 + 2 * t) * m.params + OVERHEAD
    return parts


def _deepspeed(m: ModelCounts, p: PlanInput, parts: dict[str, float]) -> dict[str, float]:
    """``parts`` with ZeRO-3's terms (module docstring): fp32 parameters under the trainer's autocast."""
    w = p.gpus
    tokens = p.micro_batch * p.seqlen
    slorb = m.site_params / p.slorb_group
    student = m.params + (3 + p.score_stats) * m.site_params + slorb  # W, mask, hard, m_eff, statistics, SLoRB S
    if p.checkpointing:  # recomputed one block at a time; HF turns the KV cache off under checkpointing
        saved = 4 * m.block_params + tokens * (2 * m.hidden * m.layers + 8 * m.hidden)
    else:
        saved = 4 * m.site_params + tokens * m.layers * (8 * m.hidden + 4 * m.kv_dim)
    out = {}
    for name, value in parts.items():
        out[name] = value
        if name == "optimizer":
            out["master"] = 4 * (m.params - m.embedding_params + slorb) / w
            out["ipg"] = 4.0 * DS_REDUCE_BUCKET
    out["estimator"] = 24 * m.site_params / w + 4 * m.site_params
    out["gather"] = 4.0 * min(DS_MAX_LIVE, student)
    out["activations"] = parts["activations"] + saved
    return out


def _parse_mem(text: str) -> float:
    m = re.fullmatch(r"\s*([0-9.]+)\s*(GB|GiB|G|MB|MiB|M)?\s*", text, re.I)
    if not m:
        raise ValueError(f"--gpu-mem {text!r} is not a size; write it like 80GB or 141GiB")
    value, unit = float(m.group(1)), (m.group(2) or "GB").lower()
    scale = {"gb": 1e9, "g": 1e9, "gib": GIB, "mb": 1e6, "m": 1e6, "mib": 1 << 20}[unit]
    return value * scale


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="alias (e.g. qwen3-8b) or local HF folder")
    parser.add_argument("--gpus", type=int, default=1, help="total ranks (GPUs)")
    parser.add_argument("--gpu-mem", default="80GB", help="memory per GPU, e.g. 80GB, 141GB")
    parser.add_argument("--engine", default="fsdp2", choices=["fsdp2", "deepspeed", "single"])
    parser.add_argument("--micro-batch", type=int, default=1)
    parser.add_argument("--seqlen", type=int, default=4096)
    parser.add_argument("--no-teacher", action="store_true")
    parser.add_argument("--estimator", default=AUTO_ESTIMATOR, choices=CONFIG_ESTIMATORS,
                        help="the Hessian probe's estimator (the trainer's --forge estimator=...; default auto: "
                             "fd_forward, or fd under DeepSpeed)")
    parser.add_argument("--activation-checkpointing", action="store_true",
                        help="plan with activation checkpointing (the trainer's --activation-checkpointing)")
    parser.add_argument("--no-reshard-after-forward", dest="reshard_after_forward", action="store_false",
                        help="plan with FSDP2 blocks kept gathered from forward to backward (the trainer's flag)")


def _config(name: str):
    from pathlib import Path

    if Path(name).is_dir():
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(name, local_files_only=True)
    from sfcompile.models.aliases import alias_config

    return alias_config(name)


def run(args) -> int:
    inp = PlanInput(gpus=args.gpus, gpu_mem=_parse_mem(args.gpu_mem), engine=args.engine,
                    micro_batch=args.micro_batch, seqlen=args.seqlen, teacher=not args.no_teacher,
                    checkpointing=args.activation_checkpointing,
                    reshard_after_forward=args.reshard_after_forward, estimator=args.estimator)
    counts = count_model(_config(args.model))
    parts = plan(counts, inp)
    print(f"{args.model}: {counts.params / 1e9:.2f}B params ({counts.site_params / 1e9:.2f}B in sparse sites), "
          f"{counts.layers} blocks; {inp.engine} on {inp.gpus} GPU(s), micro-batch {inp.micro_batch}×{inp.seqlen}")
    for name, value in parts.items():
        if name not in ("total", "startup"):
            print(f"  {name:<12} {value / GIB:8.2f} GiB")
    total = max(parts["total"], parts["startup"])
    print(f"  {'step total':<12} {parts['total'] / GIB:8.2f} GiB per rank")
    print(f"  {'startup':<12} {parts['startup'] / GIB:8.2f} GiB per rank (whole student + teacher before sharding)")
    verdict = "fits" if total <= inp.gpu_mem else "does NOT fit"
    print(f"  peak {total / GIB:.2f} GiB of {inp.gpu_mem / GIB:.0f} GiB: {verdict}")
    if parts["startup"] > inp.gpu_mem:
        print("  the startup peak alone does not fit: it does not shrink with more GPUs (see the trainer's notes)")
    elif total > inp.gpu_mem:
        need = math.ceil(inp.gpus * (parts["total"] - OVERHEAD) / max(inp.gpu_mem - OVERHEAD, 1))
        print(f"  try --gpus {need}+ or a smaller --micro-batch / --seqlen")
    return 0 if total <= inp.gpu_mem else 1
