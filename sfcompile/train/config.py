"""`TrainConfig`: every knob of `sfcompile.train`, one frozen dataclass, validated at construction.

Strings from the command line (``tokens="20M"``, ``betas="0.9,0.95"``) are parsed here, at the boundary;
everything downstream reads typed values.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from sfcompile.masking.config import AUTO_ESTIMATOR, resolve_estimator
from sfcompile.train.data import KV_CACHES, TEACHER_ATTENTIONS, TEACHER_SAMPLERS, data_parts
from sfcompile.train.optim import ADAM_IMPLS

INIT_METHODS = ("dense", "magnitude", "wanda", "sparsegpt", "admm", "keep")
TEACHER_MODES = ("copy", "offload", "none")
LOSS_KERNELS = ("auto", "torch", "triton")  # TrainConfig.loss_kernel: auto, chunked PyTorch, one Triton kernel
DTYPES = ("auto", "bf16", "fp32")

_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}


class TrainConfigError(ValueError):
    """A TrainConfig value that cannot work; the message names the value and what to do."""


def parse_tokens(value: int | float | str, name: str = "tokens", also: str = "") -> int:
    """``"20M"`` → 20_000_000, ``"1.5B"`` → 1_500_000_000, ``"500k"``, ``"1e6"`` or an int. ``name``: the field
    the errors name; ``also``: what else the field accepts, for the message."""
    if isinstance(value, bool):
        raise TrainConfigError(f'{name}={value!r} is not a token count; pass e.g. 20_000_000 or "20M"{also}')
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not value.is_integer():
            raise TrainConfigError(f"{name}={value!r} is not a whole number of tokens")
        return int(value)
    text = str(value).strip().replace("_", "").replace(",", "")
    m = re.fullmatch(r"(-?[0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmbgt]?)", text, flags=re.IGNORECASE)
    if not m:
        raise TrainConfigError(
            f"{name}={value!r} is not a token count; use an integer or a number with a "
            f'suffix k/M/B (e.g. "20M", "1.5B"){also}'
        )
    number = float(m.group(1)) * _SUFFIX[m.group(2).lower()]
    return int(round(number))


def _parse_betas(value) -> tuple[float, float]:
    if isinstance(value, str):
        value = [float(v) for v in value.split(",")]
    betas = tuple(float(v) for v in value)
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise TrainConfigError(f"betas={value!r} must be two numbers in [0, 1), e.g. (0.9, 0.95)")
    return betas


# The schedule a pruning init gets (measured: benchmarks/README.md, "Training (H200)"): the hard pattern in the
# forward from the first step, mask exploration until 60% of the run, then recovery on frozen masks. Chosen on
# 8M-token runs. At 20M tokens exploring until 12M ended worse (35.65 against 33.76 for 8M: the share of flipping
# mask entries grows the longer it explores, at a high LR), and exploring until 5M ended best (31.60; with SR-STE
# decay damping the pruned entries instead: the same 31.63). So exploration stops after at most
# FROM_PRUNED_EXPLORE_TOKENS tokens (`from_pruned_window`): runs longer than ~8.3M tokens finalise earlier than
# 60%. The best runs since used it at 40M, 80M and 100M tokens (30.25, 29.07, 27.90); beyond 20M no other cap was tried,
# so there it is the recipe that worked, not the best one measured.
FROM_PRUNED = {"harden_start": 0.0, "harden_end": 0.0, "finalize_at": 0.6, "sparsity_warmup": 0.0}
FROM_PRUNED_EXPLORE_TOKENS = 5_000_000
FROM_PRUNED_MIN_UPDATES = 4  # the cap never leaves fewer than this many early-period mask updates


def from_pruned_window(tokens: int, tokens_per_step: int = 0) -> dict:
    """`FROM_PRUNED` for a run of ``tokens`` tokens of ``tokens_per_step`` each (all processes): ``finalize_at``
    capped so that mask exploration ends after at most `FROM_PRUNED_EXPLORE_TOKENS` tokens (20M tokens: 0.25;
    8M tokens and fewer: 0.6), but not before `FROM_PRUNED_MIN_UPDATES` updates of the early period."""
    window = dict(FROM_PRUNED)
    if tokens > 0:
        floor = FROM_PRUNED_MIN_UPDATES * _default_schedule().period_early * max(tokens_per_step, 0) / tokens
        window["finalize_at"] = min(window["finalize_at"], max(FROM_PRUNED_EXPLORE_TOKENS / tokens, floor))
    return window


def forge_for(init: str, tokens: int = 0, tokens_per_step: int = 0, **fields):
    """A ForgeConfig for a run from ``init`` masks: ``fields`` are ForgeConfig or TemperingSchedule fields,
    set on the default schedule, which for a pruning init (not ``"dense"``) is `from_pruned_window` of
    ``tokens`` and ``tokens_per_step`` (``tokens`` 0: `FROM_PRUNED` as it is)."""
    from sfcompile.masking.forge import ForgeConfig
    from sfcompile.masking.schedule import TemperingSchedule

    s_names = {f.name for f in dataclasses.fields(TemperingSchedule)}
    f_names = {f.name for f in dataclasses.fields(ForgeConfig)} - {"schedule"}
    unknown = sorted(set(fields) - s_names - f_names)
    if unknown:
        raise TrainConfigError(f"unknown field(s) {unknown}: ForgeConfig has {sorted(f_names)}, "
                               f"TemperingSchedule has {sorted(s_names)}")
    s_kw = from_pruned_window(tokens, tokens_per_step) if init != "dense" else {}
    s_kw.update({k: v for k, v in fields.items() if k in s_names})
    return ForgeConfig(schedule=TemperingSchedule(**s_kw), **{k: v for k, v in fields.items() if k in f_names})


# teacher_data_tokens="auto": this share of the run's tokens. The H200 runs' best recipes mixed 3M teacher tokens
# into an 8M-token run (33.76 against 35.25 without) and 8M into a 20M-token run (31.60, the best): 0.375 and 0.4.
TEACHER_DATA_SHARE = 0.4

COMPILE_MODES = ("default", "reduce-overhead")  # TrainConfig.compile_mode: torch.compile's mode, "default" = None

# teacher_data_batch="auto": off CUDA a small batch; on CUDA as many sequences as keep the sampler's K/V within
# the budget (the packed samplers' buffers are exactly that; `generate`'s dynamic and static caches get half,
# the dynamic one grows by concatenation and peaks at about twice its size), at most the cap. SmolLM2-135M at
# 512 tokens: the cap, 2048 sequences, whose bf16 K/V take 22.5 GiB; on the H200 its packed-graph sampler ran
# 97.7k tokens/s at 2048 sequences against 85.7k at 1024 (benchmarks/README.md, twenty-second session).
TEACHER_BATCH_CPU = 32
TEACHER_BATCH_MAX = 2048
TEACHER_KV_BUDGET = 24 * 2**30


def _default_schedule():
    from sfcompile.masking.schedule import TemperingSchedule

    return TemperingSchedule()


def _default_forge():
    from sfcompile.masking.forge import ForgeConfig

    return ForgeConfig()


@dataclass(frozen=True)
class TrainConfig:
    """Configuration of one `sfcompile.train` run.

    Budget and batch
        tokens: total training tokens (int or ``"20M"``/``"1.5B"``). Steps = tokens / (seqlen · micro_batch ·
            grad_accum · world_size), at least 1.
        seqlen, micro_batch, grad_accum: sequence length, sequences per forward, forwards per optimizer step.

    Data (see `sfcompile.train.data`)
        data: a registry text name, a local ``.txt``/``.jsonl`` path, ``"teacher"`` (sequences sampled from
            the dense teacher, cached), or several joined by ``+`` (``"corpus+teacher"``: shards concatenated,
            each part drawn in proportion to its tokens). Default ``"corpus"`` (3.0M tokens, disjoint from the
            ``"wiki"`` evaluation text): on the H200, SmolLM2 overfit ``"calib"`` (0.8M tokens) after ~2.5 passes while
            ``"corpus"`` kept improving to 8M tokens (benchmarks/README.md). A real run should bring its own
            pretraining-like text.
        teacher_data_tokens: how many tokens the ``"teacher"`` part of ``data`` generates (once; the order then
            cycles), or ``"auto"`` (default): `TEACHER_DATA_SHARE` (0.4) of ``tokens``, the share of the two best
            measured recipes (3M teacher tokens in an 8M-token run, 8M in 20M), so a longer run samples more unique
            text instead of reading the same more often (past ~3 passes a 50M-token run got worse; the trainer
            logs its passes and warns).
        teacher_data_temperature: sampling temperature of the generated sequences.
        teacher_data_prompts: the text whose random 4-token snippets start the generated sequences (a name
            or a path, as ``data``).
        teacher_data_batch: sequences generated at once, or ``"auto"`` (default): 32 off CUDA; on CUDA as
            many as keep the teacher's KV cache of ``seqlen`` tokens within `TEACHER_KV_BUDGET` (half of it
            for the ``"dynamic"`` and ``"static"`` samplers, including ``"auto"``'s fallback to ``"dynamic"``), at
            most `TEACHER_BATCH_MAX` (`teacher_batch_for`).
            Each batch costs ``seqlen`` decode steps whatever its size, so a small batch makes generation slow:
            SmolLM2-135M on an H200 (packed-graph, bf16 autocast) sampled 85.7k tokens/s at 1024 sequences and
            97.7k at 2048 (benchmarks/README.md).
        teacher_data_kv_cache: the sampler. ``"dynamic"`` (`generate` with transformers' default cache, grown
            every step), ``"static"`` (`generate`, cache allocated once; on CUDA transformers compiles the decoding
            step) or ``"packed"`` (`sfcompile.train.sampler`: no `generate`, one K/V buffer per layer filled in
            place, grouped query heads packed onto their K/V head, no per-token host sync; same distribution,
            other draws; for models whose attention runs through transformers' AttentionInterface -- others are
            refused by name), or ``"packed-graph"`` (the same with every decoding step captured once in a CUDA
            graph and replayed; CUDA only), or ``"auto"`` (default): ``"packed-graph"`` on CUDA -- measured on
            the H200 at 2048 x 512 with a bf16 SmolLM2-135M, 110.0k tokens/s against 87.3k packed and 72.8k
            dynamic -- and ``"dynamic"`` for a teacher the packed sampler refuses or one offloaded to the CPU
            (``teacher="offload"``; the run's log says why) and off CUDA. See benchmarks/teacher_sampling.py.
        teacher_data_precision: ``"fp32"``, ``"bf16"`` (sampling under bf16 autocast: bf16 matmuls and KV
            cache; the weights stay as they are), or ``"auto"`` (bf16 on CUDA, fp32 elsewhere).
        teacher_data_attention: the decoding attention of the ``"packed-graph"`` sampler: ``"sdpa"`` (PyTorch's,
            over the step's window of the K/V buffer under a mask), ``"triton"``
            (`sfcompile.train.decode_attention_kernel`: reads only the filled positions; needs
            ``teacher_data_kv_cache="packed-graph"`` set explicitly), or ``"auto"`` (default): ``"triton"``
            where the packed-graph sampler runs on a GPU of compute capability >= 8.0 and the kernel takes the
            teacher's head dim (a power of 2 >= 16; otherwise ``"sdpa"`` and the log says why) -- measured on the
            H200 at 2048 x 512 with a bf16 SmolLM2-135M, 192.9k tokens/s against SDPA's 127.8k -- and ``"sdpa"``
            for every other sampler (their only one).
        cache_dir: where token shards are cached; default ``$SFCOMPILE_CACHE`` or ``<out>/cache``.

    Optimizer (mask-aware AdamW, `sfcompile.train.optim`)
        lr, min_lr, warmup: linear warm-up over ``warmup`` steps (a float in (0, 1) is a fraction of the run)
            then cosine to ``min_lr``.
        weight_decay (≥2-D parameters only), betas, eps, clip (global grad-norm clip; 0 disables).
        srste_decay, srste_ramp: SR-STE decay grad += d·W·(1 − m_eff), d ramping linearly from 0 to
            ``srste_decay`` over ``srste_ramp`` steps (a fraction if < 1).
        cast_l1: CAST adaptive L1 strength λ (W −= lr·λ·sign(W)/(√v̂ + ε) on pruned weights; 0 = off).
        cast_weight_scaling: rescale each site's kept weights to restore the matrix norm the L1 decay removed.
        adam_impl: ``"foreach"`` (default: torch's multi-tensor AdamW) or ``"fused"`` (torch's fused AdamW, one
            pass per tensor; the same update and state dict). On the H200 the foreach step of SmolLM2-135M
            took ~13 ms of a 107 ms compiled training step (benchmarks/train_profile.py); the fused one is not
            timed there yet, so it is not the default.
        train_embeddings: also train the input embeddings (and a tied head). Off by default: they hold
            ~20% of a small model's parameters (Adam state) and, with a tied head, add the head's weight
            gradient to every step (~20% more time on SmolLM2-135M). On the H200's 20M-token recipe they
            ended 1.3% lower in `wiki` perplexity (benchmarks/README.md, thirty-first session); not yet
            confirmed at 100M. Everything else — masked weights (their dense W), unmasked linears, norms,
            biases and the forge's extra parameters (SLoRB) — is trained.

    Distillation (`sfcompile.train.losses`)
        ce_weight, kl_weight, kl_temperature, squarehead_weight: loss = ce·CE + kl·KL(teacher‖student, T)·T²
            + sq·SquareHead. KL and SquareHead need a teacher.
        loss_kernel: how CE and KL (and their gradient, formed in the forward) are computed: ``"torch"``
            (chunked PyTorch) or ``"triton"`` (`sfcompile.train.logit_loss_kernel`: one kernel, two reads of each
            row of logits), or ``"auto"`` (default): triton on CUDA, torch elsewhere (Triton runs there only in
            its slow interpreter). Measured on the H200 at 32 x 512 x 49,152 bf16 logits: 9.8 against 57.9 ms,
            the same memory, loss and gradient; the compiled training step of SmolLM2-135M 107 against 152 ms
            (benchmarks/README.md, twentieth session). The exact Hessian probe ("hvp") always uses its
            twice-differentiable PyTorch form.
        teacher: where the dense teacher lives:
            ``"copy"`` — a frozen copy on the training device (bf16 on GPU, the param dtype on CPU). Costs
            2 bytes/param on GPU, ~8% of what the student needs (fp32 W + mask + hard + Adam ≈ 24 B/param),
            so it is the default.
            ``"offload"`` — the teacher's weights stay in CPU memory and each repeated block is copied to the
            device just before it runs and dropped after (one block resident at a time): for models whose
            teacher does not fit beside the student; costs one host→device copy of the weights per forward.
            ``"none"`` — no teacher: plain CE (kl/squarehead weights must be 0).
            A module passed as ``train(..., teacher=module)`` is used as given (it is frozen, not moved).

    Masks
        init: one-shot mask before training: ``"dense"`` (all ones; the forge tempers from dense),
            ``"magnitude"``, ``"wanda"``, ``"sparsegpt"`` or ``"admm"`` (`sfcompile.prune` on ``init_calib_windows``
            of the calibration text), or ``"keep"``: the masks the model already carries (the caller pruned
            it, e.g. once for several runs; pass the dense ``teacher=`` to `train`). Not re-applied on resume.
            With a pruning init the forge starts at the pattern's sparsity (``sparsity_warmup`` set to 0 here)
            and, unless the hardening window was changed from its default, uses `FROM_PRUNED`'s window: the
            hard pattern in the forward from the first step, exploration until 60% of the run or 5M tokens,
            whichever comes first (`from_pruned_window`; measured on 8M- and 20M-token runs, see `FROM_PRUNED`).
        forge: the SparseForge schedule (`sfcompile.masking.forge.ForgeConfig`), or None to keep the masks
            fixed and only train the weights (sparse fine-tuning with distillation; needs a pruning init).

    Run
        harden: at the end, fold the (finalised) masks into W (`sfcompile.harden`) and, with ``out``,
            save the model to ``<out>/final``. False leaves the soft-mask state in place.
        out: run directory (checkpoints, logs, final model). checkpoint_every: steps between checkpoints
            (0 = only at the end and on SIGTERM/Ctrl-C). keep_checkpoints: how many to keep.
        seed, device (``"auto"`` = cuda if available), dtype (``"auto"``: bf16 autocast on CUDA, fp32 on CPU),
        compile (torch.compile the student and teacher forwards, and the finite-difference Hessian probe's
            passes; the "hvp" probe and evaluation run eager),
        compile_mode: ``"default"`` (Inductor's kernels, launched from the host) or ``"reduce-overhead"``
            (the same kernels recorded in CUDA graphs and replayed: `torch.compile`'s mode of that name; CUDA
            and ``compile`` only, one process). The compiled SmolLM2-135M step launched ~3,000 kernels and left
            the H200 idle ~20% of the step (103 ms against ~80 ms of kernels; benchmarks/README.md): host
            launches are what the graphs remove. Each compiled call may reuse the memory of the previous one's
            outputs, so the trainer copies the teacher's outputs and each step's gradients out of the graphs
            (one logits-sized and one gradient-sized copy per step). Not yet timed or run on a GPU since that
            fix; `benchmarks/train_profile.py --compile-mode` compares.
        probe_rows: sequences of the last micro-batch the Hessian probe's loss is computed on (None: all of
            them). The probe costs two extra forward+backward passes per mask update; on a few sequences it
            costs proportionally less, with a noisier estimate that the Hessian EMA and the Kronecker fit
            average out. Measured on an H200, the eager probe is launch-bound and barely gets cheaper (427 ms
            on 8 of 32 rows, 496 ms on all; benchmarks/README.md, "Training overhead"). With ``compile`` do
            not set it: the second batch size recompiles the student with a dynamic batch dimension, which
            made every step slower on the H200 (masked step 1.46x dense instead of 1.18x, probe 224 instead
            of 195 ms).
        log_every, eval_every (0 = only at start and end), eval_text, eval_windows (None = the whole text),
        eval_seqlen.

    Several processes (`sfcompile.train.distributed`; one process ignores these)
        engine: ``"fsdp2"`` (``fully_shard`` per block) or ``"deepspeed"`` (ZeRO-3).
        activation_checkpointing: recompute each block in the backward (memory for compute).
        reshard_after_forward: FSDP2 frees each block's gathered parameters after its forward and gathers
            them again for the backward (True: least memory). False keeps them from forward to backward: one
            all-gather per block and step fewer, for every student block's bf16 W, soft and hard mask held
            unsharded through the step (``sfcompile plan --no-reshard-after-forward`` counts it).

    Example::

        cfg = TrainConfig(tokens="20M", data="calib", seqlen=512, micro_batch=8, out="runs/a")
    """

    tokens: int | str = "20M"
    data: str = "corpus"
    seqlen: int = 512
    micro_batch: int = 8
    grad_accum: int = 1
    teacher_data_tokens: int | str = "auto"
    teacher_data_temperature: float = 1.0
    teacher_data_prompts: str = "calib"
    teacher_data_batch: int | str = "auto"
    teacher_data_kv_cache: str = "auto"
    teacher_data_precision: str = "auto"
    teacher_data_attention: str = "auto"
    cache_dir: str | None = None

    lr: float = 1e-4
    min_lr: float = 1e-5
    warmup: float = 0.05
    weight_decay: float = 0.1
    betas: tuple[float, float] | str = (0.9, 0.95)
    eps: float = 1e-8
    clip: float = 1.0
    srste_decay: float = 0.0
    srste_ramp: float = 0.5
    cast_l1: float = 0.0
    cast_weight_scaling: bool = False
    adam_impl: str = "foreach"
    train_embeddings: bool = False

    ce_weight: float = 1.0
    kl_weight: float = 1.0
    kl_temperature: float = 2.0
    squarehead_weight: float = 0.0
    loss_kernel: str = "auto"
    teacher: str = "copy"

    init: str = "dense"
    init_calib_windows: int = 128
    forge: Any = field(default_factory=_default_forge)

    harden: bool = True
    out: str | None = None
    checkpoint_every: int = 0
    keep_checkpoints: int = 1
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False
    compile_mode: str = "default"
    probe_rows: int | None = None
    engine: str = "fsdp2"
    activation_checkpointing: bool = False
    reshard_after_forward: bool = True
    log_every: int = 10
    eval_every: int = 0
    eval_text: str = "wiki"
    eval_windows: int | None = 16
    eval_seqlen: int | None = None

    def __post_init__(self):
        from sfcompile.train.distributed import expected_world_size

        set_ = object.__setattr__  # frozen: parse once here, at the boundary
        world = expected_world_size()  # step counts are per optimizer step of all processes together
        set_(self, "tokens", parse_tokens(self.tokens))
        if self.teacher_data_tokens == "auto":
            set_(self, "teacher_data_tokens", max(1, round(TEACHER_DATA_SHARE * self.tokens)))
        set_(self, "teacher_data_tokens", parse_tokens(self.teacher_data_tokens, "teacher_data_tokens", ', or "auto"'))
        set_(self, "betas", _parse_betas(self.betas))
        if self.init != "dense" and self.forge is not None and hasattr(self.forge, "schedule"):
            # A pruning init starts at the pattern's sparsity: ramping the target up from 0 would first pull
            # the pruned weights' masks back toward 1. With the default hardening window, the masks start exact,
            # so the forward keeps the hard pattern from the first step (a soft forward would scale the kept
            # weights by their mask values) and exploration runs until from_pruned_window's finalize_at. A window the
            # caller set is kept. The change is visible in train_config.json.
            sched = self.forge.schedule
            changes = {"sparsity_warmup": 0.0} if sched.sparsity_warmup > 0 else {}
            window = ("harden_start", "harden_end", "finalize_at")
            default = _default_schedule()
            if all(getattr(sched, k) == getattr(default, k) for k in window):
                per_step = self.tokens_per_step(world)
                changes.update({k: from_pruned_window(self.tokens, per_step)[k] for k in window})
            if changes:
                set_(self, "forge", dataclasses.replace(self.forge, schedule=dataclasses.replace(sched, **changes)))
        if getattr(self.forge, "estimator", None) == AUTO_ESTIMATOR:
            # the one-pass probe where the step's gradient is the probed batch's: one micro-batch per step,
            # probed whole, gradients kept (not ZeRO-3); recorded in train_config.json, logged by the trainer
            one_pass = (self.grad_accum == 1 and (self.probe_rows is None or self.probe_rows >= self.micro_batch)
                        and self.engine != "deepspeed")
            set_(self, "forge", dataclasses.replace(
                self.forge, estimator=resolve_estimator(AUTO_ESTIMATOR, step_grads=one_pass)))
        self._validate(world)

    # ------------------------------------------------------------------ validation
    def _validate(self, world: int) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise TrainConfigError(msg)

        need(self.tokens > 0, f'tokens={self.tokens} must be positive (e.g. "20M")')
        need(self.teacher_data_tokens > 0, f"teacher_data_tokens={self.teacher_data_tokens} must be positive")
        try:
            parts = data_parts(self.data)
        except ValueError as err:
            raise TrainConfigError(str(err)) from None
        for name in ("seqlen", "micro_batch", "grad_accum"):
            value = getattr(self, name)
            need(isinstance(value, int) and value >= 1, f"{name}={value!r} must be an integer >= 1")
        need(self.seqlen >= 2, f"seqlen={self.seqlen} must be >= 2 (the loss predicts token t+1 from t)")
        need(self.lr > 0 and math.isfinite(self.lr), f"lr={self.lr} must be a positive number")
        need(0 <= self.min_lr <= self.lr, f"min_lr={self.min_lr} must be in [0, lr={self.lr}]")
        need(self.warmup >= 0, f"warmup={self.warmup} must be >= 0 (steps, or a fraction < 1 of the run)")
        need(self.weight_decay >= 0, f"weight_decay={self.weight_decay} must be >= 0")
        need(self.eps > 0, f"eps={self.eps} must be > 0")
        need(self.clip >= 0, f"clip={self.clip} must be >= 0 (0 disables clipping)")
        need(self.srste_decay >= 0, f"srste_decay={self.srste_decay} must be >= 0")
        need(self.srste_ramp >= 0, f"srste_ramp={self.srste_ramp} must be >= 0")
        need(self.cast_l1 >= 0, f"cast_l1={self.cast_l1} must be >= 0")
        need(self.adam_impl in ADAM_IMPLS,
             f"adam_impl={self.adam_impl!r}: choose one of {', '.join(map(repr, ADAM_IMPLS))}")
        for name in ("ce_weight", "kl_weight", "squarehead_weight"):
            need(getattr(self, name) >= 0, f"{name}={getattr(self, name)} must be >= 0")
        need(
            self.ce_weight + self.kl_weight + self.squarehead_weight > 0,
            "all loss weights are 0: set ce_weight, kl_weight or squarehead_weight > 0",
        )
        need(self.kl_temperature > 0, f"kl_temperature={self.kl_temperature} must be > 0")
        need(self.loss_kernel in LOSS_KERNELS,
             f"loss_kernel={self.loss_kernel!r}: choose 'auto' (triton on CUDA), 'torch' (chunked PyTorch) or "
             "'triton' (one kernel)")
        need(
            self.teacher_data_temperature > 0,
            f"teacher_data_temperature={self.teacher_data_temperature} must be > 0",
        )
        need(
            self.teacher_data_batch == "auto" or (
                isinstance(self.teacher_data_batch, int) and not isinstance(self.teacher_data_batch, bool)
                and self.teacher_data_batch >= 1),
            f"teacher_data_batch={self.teacher_data_batch!r} must be an integer >= 1 or 'auto'",
        )
        need(self.teacher_data_kv_cache in TEACHER_SAMPLERS,
             f"teacher_data_kv_cache={self.teacher_data_kv_cache!r}: choose 'auto' or one of "
             f"{', '.join(map(repr, KV_CACHES))}")
        need(self.teacher_data_precision in DTYPES,
             f"teacher_data_precision={self.teacher_data_precision!r} is not one of {DTYPES}")
        need(self.teacher_data_attention in TEACHER_ATTENTIONS,
             f"teacher_data_attention={self.teacher_data_attention!r}: choose one of "
             f"{', '.join(map(repr, TEACHER_ATTENTIONS))}")
        need(self.teacher_data_attention != "triton" or self.teacher_data_kv_cache == "packed-graph",
             f"teacher_data_attention={self.teacher_data_attention!r} is the decoding attention of "
             f"teacher_data_kv_cache='packed-graph', not {self.teacher_data_kv_cache!r}: set that sampler (CUDA) "
             "or teacher_data_attention='auto'")
        need(isinstance(self.teacher, str),
             f"teacher= takes where the dense teacher lives, one of {TEACHER_MODES}, not a "
             f"{type(self.teacher).__name__}; pass a teacher model to train(model, config, teacher=model)")
        need(self.teacher in TEACHER_MODES, f"teacher={self.teacher!r} is not one of {TEACHER_MODES}")
        if self.teacher == "none":
            need(
                self.kl_weight == 0 and self.squarehead_weight == 0 and "teacher" not in parts,
                'teacher="none" but kl_weight/squarehead_weight > 0 or data="teacher": distillation '
                'needs a teacher; use teacher="copy" or set kl_weight=0, squarehead_weight=0',
            )
        need(self.init in INIT_METHODS, f"init={self.init!r} is not one of {INIT_METHODS}")
        need(self.init_calib_windows >= 1, f"init_calib_windows={self.init_calib_windows} must be >= 1")
        if self.forge is None:
            need(
                self.init != "dense",
                'forge=None keeps the masks fixed, but init="dense" prunes nothing: '
                'choose init="sparsegpt" (or wanda/magnitude), or give a ForgeConfig',
            )
        need(
            self.probe_rows is None or (isinstance(self.probe_rows, int) and self.probe_rows >= 1),
            f"probe_rows={self.probe_rows!r} must be an integer >= 1, or None (the whole micro-batch)",
        )
        if getattr(self.forge, "estimator", None) == "fd_forward":  # it reuses the step's gradient as g(W)
            need(self.grad_accum == 1, f"estimator='fd_forward' differences against the step's gradient, which "
                 f"with grad_accum={self.grad_accum} is not that of the probed micro-batch: set grad_accum=1 "
                 "or estimator='fd'")
            need(self.probe_rows is None or self.probe_rows >= self.micro_batch,
                 f"estimator='fd_forward' probes the whole micro-batch the step's gradient came from; "
                 f"probe_rows={self.probe_rows} (< micro_batch={self.micro_batch}) needs estimator='fd'")
        need(self.compile_mode in COMPILE_MODES,
             f"compile_mode={self.compile_mode!r}: choose one of {', '.join(map(repr, COMPILE_MODES))}")
        if self.compile_mode != "default":
            need(self.compile,
                 f"compile_mode={self.compile_mode!r} is a mode of torch.compile: set compile=True (--compile)")
            need(self.resolved_device().type == "cuda",
                 f"compile_mode={self.compile_mode!r} records CUDA graphs, but this run trains on "
                 f"{self.resolved_device()}: use compile_mode='default'")
            need(world == 1 and self.engine == "fsdp2",
                 f"compile_mode={self.compile_mode!r} (CUDA graphs) is built and tested for one process; this run "
                 f"has {world} process(es) with engine={self.engine!r}: use compile_mode='default'")
        need(self.dtype in DTYPES, f"dtype={self.dtype!r} is not one of {DTYPES}")
        need(self.engine in ("fsdp2", "deepspeed"), f"engine={self.engine!r} is not 'fsdp2' or 'deepspeed'")
        need(not (self.engine == "deepspeed" and self.adam_impl == "fused"),
             "adam_impl='fused' with engine='deepspeed': DeepSpeed partitions the optimizer's tensors itself and "
             "this pairing is untested; use adam_impl='foreach' (or engine='fsdp2', where fused is tested)")
        need(self.checkpoint_every >= 0, f"checkpoint_every={self.checkpoint_every} must be >= 0")
        need(self.keep_checkpoints >= 1, f"keep_checkpoints={self.keep_checkpoints} must be >= 1")
        need(self.log_every >= 1, f"log_every={self.log_every} must be >= 1")
        need(self.eval_every >= 0, f"eval_every={self.eval_every} must be >= 0")
        need(
            self.eval_windows is None or self.eval_windows >= 1,
            f"eval_windows={self.eval_windows} must be >= 1 (or None, 0 on the command line: the whole text)",
        )
        # The forge's own schedule must fit inside this run (e.g. a hardening window past the end).
        if self.forge is not None and hasattr(self.forge, "validate"):
            try:
                self.forge.validate(self.total_steps(world))
            except ValueError as err:
                raise TrainConfigError(
                    f"{err} (this run has {self.total_steps(world)} optimizer steps: "
                    f"tokens={self.tokens} / {self.tokens_per_step(world)} tokens per step"
                    + (f" of {world} processes" if world > 1 else "") + ")"
                ) from err

    # ------------------------------------------------------------------ derived values
    def resolved_device(self):
        """The training device: ``device``, with ``"auto"`` = cuda when available."""
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def _is_bf16(self, setting: str) -> bool:
        """A `DTYPES` setting resolved: ``"bf16"``, or ``"auto"`` on CUDA."""
        return setting == "bf16" or (setting == "auto" and self.resolved_device().type == "cuda")

    def resolved_loss_kernel(self) -> str:
        """``loss_kernel`` resolved: ``"triton"`` or ``"torch"`` (``"auto"`` = triton on CUDA)."""
        if self.loss_kernel != "auto":
            return self.loss_kernel
        return "triton" if self.resolved_device().type == "cuda" else "torch"

    def loss_kernel_triton(self) -> bool:
        """Whether the loss runs as the Triton kernel."""
        return self.resolved_loss_kernel() == "triton"

    def teacher_data_bf16(self) -> bool:
        """Whether ``data="teacher"`` samples under bf16 autocast (``teacher_data_precision``)."""
        return self._is_bf16(self.teacher_data_precision)

    def teacher_batch_for(self, teacher, sampler: str | None = None) -> int:
        """``teacher_data_batch`` resolved for ``teacher`` (see the field): ``"auto"`` from the teacher's
        config (layers, K/V heads, head size), the sampling precision and ``sampler`` (the K/V cache that
        samples, default ``teacher_data_kv_cache``; with ``"auto"`` the data code passes the one it tries, so
        a fallback to `generate`'s caches gets their half budget), so a resumed run resolves it the same way
        (the batch is part of the teacher shard's cache key)."""
        if self.teacher_data_batch != "auto":
            return self.teacher_data_batch
        if self.resolved_device().type != "cuda":
            return TEACHER_BATCH_CPU
        from sfcompile.train.plan import kv_width

        cfg = getattr(teacher, "config", None)
        cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        try:
            width_kv, layers = kv_width(cfg), cfg.num_hidden_layers
        except AttributeError as err:
            raise TrainConfigError(
                f"teacher_data_batch='auto' reads the teacher's layers and attention heads from its config, "
                f"which lacks them ({err}); set teacher_data_batch to a number of sequences") from err
        nbytes = 2 if self.teacher_data_bf16() else next(teacher.parameters()).element_size()
        per_sequence = 2 * layers * width_kv * nbytes * self.seqlen   # K and V of every layer
        sampler = self.teacher_data_kv_cache if sampler is None else sampler
        budget = TEACHER_KV_BUDGET // (2 if sampler in ("dynamic", "static") else 1)
        return max(1, min(TEACHER_BATCH_MAX, budget // per_sequence))

    def bf16_autocast(self) -> bool:
        """Whether the steps compute under bf16 autocast (``dtype="bf16"``, or ``"auto"`` on CUDA)."""
        return self._is_bf16(self.dtype)

    def tokens_per_step(self, world_size: int = 1) -> int:
        return self.seqlen * self.micro_batch * self.grad_accum * world_size

    def total_steps(self, world_size: int = 1) -> int:
        return max(1, self.tokens // self.tokens_per_step(world_size))

    def warmup_steps(self, world_size: int = 1) -> int:
        return _steps(self.warmup, self.total_steps(world_size))

    def srste_ramp_steps(self, world_size: int = 1) -> int:
        return _steps(self.srste_ramp, self.total_steps(world_size))

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "forge"}
        d["betas"] = list(self.betas)
        d["forge"] = (
            None if self.forge is None else dataclasses.asdict(self.forge)
        )  # schedule nested as a dict
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        forge = d.pop("forge", None)
        if forge is not None:
            from sfcompile.masking.forge import ForgeConfig
            from sfcompile.masking.schedule import TemperingSchedule

            forge = dict(forge)
            if isinstance(forge.get("schedule"), dict):
                forge["schedule"] = TemperingSchedule(**forge["schedule"])
            forge = ForgeConfig(**forge)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise TrainConfigError(f"unknown TrainConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(forge=forge, **d)


def _steps(value: float, total: int) -> int:
    """A step count given as steps (>= 1) or as a fraction of ``total`` (< 1)."""
    if 0 < value < 1:
        return int(round(value * total))
    return int(value)
