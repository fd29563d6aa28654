"""`train`: the SparseForge training loop — one function, top to bottom (STYLE §7).

setup (device, teacher, one-shot init, forge, optimizer, resume) →
for each optimizer step: lr → accumulate micro-batches (teacher fwd, student fwd, loss, backward) →
forge.mask_grads → NaN/inf guard → forge.observe_grads → forge.probe → clip → optimizer.step → forge.after_step →
log / eval / checkpoint / stop on signal →
finish (forge finalised, harden, save, plot, summary)
"""

from __future__ import annotations

import contextlib
import functools
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from sfcompile.masking import hutchinson
from sfcompile.masking.config import FD_ESTIMATORS
from sfcompile.masking.state import dense_weight
from sfcompile.train import distributed as dist
from sfcompile.train.checkpoint import latest_checkpoint, restore_checkpoint, save_checkpoint, set_rng_state
from sfcompile.train.config import TrainConfig
from sfcompile.train.data import (
    Batches,
    Prefetcher,
    cache_root,
    data_parts,
    mixture,
    teacher_shard,
    text_shard,
)
from sfcompile.train.losses import LossWeights, distillation_loss
from sfcompile.train.optim import build_optimizer, lr_at, ramp
from sfcompile.train.runlog import RunLogger, summary_table
from sfcompile.train.teacher import build_teacher


@dataclass
class TrainResult:
    """What a run did. ``exit_code``: 0 finished, 130/143 stopped by SIGINT/SIGTERM (checkpoint written)."""

    steps: int  # optimizer steps completed (over all invocations of a resumed run)
    total_steps: int
    tokens: int  # tokens trained on
    final_loss: float | None
    ppl: dict[int, float] = field(default_factory=dict)  # step -> eval perplexity
    skipped_steps: int = 0
    stopped: str | None = None  # "SIGINT"/"SIGTERM"/"stop_at" when the run paused before the end
    exit_code: int = 0
    final_path: Path | None = None
    compiled: list[str] = field(default_factory=list)
    seconds: float = 0.0
    history: list[dict] = field(default_factory=list)


def _autocast(config: TrainConfig, device: torch.device):
    if not config.bf16_autocast():
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


class _StopFlag:
    """SIGINT/SIGTERM set a flag; the loop finishes its step, checkpoints and returns 130/143."""

    CODES = {"SIGINT": 130, "SIGTERM": 143}

    def __init__(self):
        self.signal: str | None = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def _one_shot_init(model, config: TrainConfig, tokenizer, log: RunLogger) -> None:
    if config.init == "dense":
        return
    if config.init == "keep":
        from sfcompile.masking.state import masked_sites

        if all(bool((soft.mask.detach() == 1).all()) for _, _, soft in masked_sites(model)):
            raise ValueError('init="keep" keeps the model\'s masks, but they prune nothing: prune the model '
                             'first (sfcompile.prune) or choose init="sparsegpt"')
        log.message("init: the model's own masks (init=keep)")
        return
    from sfcompile.masking.oneshot import prune

    if tokenizer is None and config.init != "magnitude":
        raise ValueError(f"init={config.init!r} needs calibration text: pass tokenizer= to train()")
    report = prune(
        model,
        config.init,
        calib="calib" if config.init != "magnitude" else None,
        tok=tokenizer,
        nsamples=config.init_calib_windows,
        seqlen=config.seqlen,
        seed=config.seed,
        progress=dist.is_main_process(),
    )
    log.message(f"init: {report}")
    log.log(0, "info", init=config.init, init_seconds=report.seconds)


def _data(config: TrainConfig, tokenizer, teacher, device, message):
    """The run's training tokens; ``message`` takes the lines the run's log should show."""
    if tokenizer is None:
        raise ValueError("train() needs tokenizer= to build its data (or pass data as a token shard path)")
    cache = cache_root(config)
    shards = []
    for part in data_parts(config.data):
        if part != "teacher":
            shards.append(text_shard(part, tokenizer, cache))
            continue
        if teacher is None:
            raise ValueError('data="teacher" samples from the teacher, but there is none (teacher="none")')
        shards.append(
            teacher_shard(
                teacher,
                tokenizer,
                cache,
                n_tokens=config.teacher_data_tokens,
                seqlen=config.seqlen,
                temperature=config.teacher_data_temperature,
                seed=config.seed,
                prompt_source=config.teacher_data_prompts,
                batch=lambda sampler: config.teacher_batch_for(teacher, sampler),
                device=device,
                kv_cache=config.teacher_data_kv_cache,
                bf16=config.teacher_data_bf16(),
                attention=config.teacher_data_attention,
                log=message,
            )
        )
    return mixture(shards)


# Passes over the training text past which `train` warns: on SmolLM2-135M (H200, 50M tokens over ~11M unique
# tokens) wiki perplexity was lowest after 2.7 passes and rose by 3% over the next two while the held-out part of
# the training text kept improving (benchmarks/README.md, "Training (H200), eighteenth session").
DATA_PASSES_WARN = 3.0


def _report_passes(batches: Batches, total: int, tokens_per_step: int, step: int, log: RunLogger) -> float:
    """Log how many unique tokens the data holds and how many times the run reads them; warn past
    `DATA_PASSES_WARN`. Returns the passes."""
    unique = batches.n_windows * batches.seqlen
    passes = total * tokens_per_step / unique
    log.log(step, "info", data_tokens=unique, data_passes=passes)
    text = f"data: {unique:,} tokens in {batches.n_windows:,} windows; the run reads them {passes:.2f} times"
    if passes > DATA_PASSES_WARN:
        text += (f" -- more than {DATA_PASSES_WARN:g} passes: past ~3 the evaluation perplexity rose in a measured run "
                 "while the training text's kept falling; add unique text (another source, or teacher samples: "
                 "data=\"...+teacher\" with a larger teacher_data_tokens) or train fewer tokens")
    log.message(text)
    return passes


def _masked_sparsity(model) -> float | None:
    """Fraction of masked-site entries whose effective mask is 0 (runs without a forge: fixed masks)."""
    from sfcompile.masking.forge import mask_sparsity
    from sfcompile.masking.state import masked_sites

    return mask_sparsity([soft for _, _, soft in masked_sites(model)]).get("sparsity")


@torch.no_grad()
def _evaluate(model, tokenizer, config: TrainConfig, autocast) -> float:
    from sfcompile.eval.perplexity import perplexity

    was_training = model.training
    model.eval()
    try:
        with autocast():
            return perplexity(
                model,
                tokenizer,
                config.eval_text,
                seqlen=config.eval_seqlen or config.seqlen,
                max_windows=config.eval_windows,
                batch_size=config.micro_batch,
                progress=False,
            )
    finally:
        model.train(was_training)


def _first_rows(ids: torch.Tensor, teacher_out, rows: int | None):
    """The first ``rows`` sequences of a micro-batch and of its teacher output (logits (B, T, V), hidden
    states (B, T, D) each): what the Hessian probe's loss is computed on."""
    if rows is None or rows >= ids.shape[0]:
        return ids, teacher_out
    if teacher_out is None:
        return ids[:rows], None
    cut = {}
    for k, v in teacher_out.items():
        if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == ids.shape[0]:
            cut[k] = v[:rows]
        elif isinstance(v, tuple) and all(torch.is_tensor(h) for h in v):
            cut[k] = tuple(h[:rows] for h in v)
        else:
            cut[k] = v
    return ids[:rows], type(teacher_out)(**cut)


def _out_of_graphs(out):
    """``out`` (a model output) with every tensor copied: under CUDA graphs the next compiled call writes over
    the memory of this one's outputs."""

    def copy(v):
        if isinstance(v, torch.Tensor):
            return v.clone()
        return tuple(copy(x) for x in v) if isinstance(v, tuple) else v

    return type(out)(**{k: copy(v) for k, v in out.items()})


def _probe_loss(model, ids, teacher_out, weights, autocast, estimator, kernel):
    # the exact probe differentiates the loss twice; the finite differences take the step's own loss
    exact = estimator == "hvp"
    with autocast():
        out = model(ids, output_hidden_states=weights.squarehead > 0, use_cache=False)
        return distillation_loss(out, ids, weights, teacher_out, twice_differentiable=exact,
                                 kernel=kernel and not exact)[0]


def _compile(module: nn.Module, what: str, compiled: list[str], log: RunLogger, mode: str = "default"):
    try:
        fn = torch.compile(module, mode=None if mode == "default" else mode)
    except Exception as err:  # compile is requested explicitly: say why it is not used
        raise RuntimeError(f"torch.compile of the {what} failed ({err}); run without compile=True") from err
    compiled.append(what)
    return fn


def train(
    model: nn.Module,
    config: TrainConfig,
    *,
    teacher: nn.Module | None = None,
    tokenizer=None,
    resume: bool = False,
    stop_at: int | None = None,
) -> TrainResult:
    """Train a sparsified model with SparseForge and distillation.

    Args:
        model: a model sparsified with `sfcompile.sparsify` (its current W are the dense weights the teacher
            is built from when ``teacher`` is None and ``config.teacher != "none"``).
        config: the run's `TrainConfig`.
        teacher: a dense teacher module to use instead of building one.
        tokenizer: the model's tokenizer (data, one-shot init, evaluation, saving).
        resume: continue from ``<config.out>/checkpoints/latest`` (same data order, RNG, schedule, optimizer).
        stop_at: pause after this optimizer step count (writes a checkpoint; for staged runs and tests).

    Returns:
        A `TrainResult`. With ``config.harden`` the model comes back hardened (plain HF model + manifest)
        and, with ``config.out``, saved to ``<out>/final``.

    Example::

        sfcompile.sparsify(model, pattern="2:4")
        result = sfcompile.train(model, TrainConfig(tokens="2M", out="runs/a"), tokenizer=tok)
    """
    t_start = time.perf_counter()
    from sfcompile.masking.state import harden, masked_sites

    if not masked_sites(model):
        raise ValueError(
            f"{type(model).__name__} carries no soft masks: call sfcompile.sparsify(model, "
            "pattern=...) before train()"
        )
    out = Path(config.out) if config.out else None
    if resume and out is None:
        raise ValueError("resume=True needs config.out (the run directory holding checkpoints/)")
    device = config.resolved_device()
    autocast = _autocast(config, device)
    torch.manual_seed(config.seed)
    world = dist.world_size()
    total = config.total_steps(world)
    tokens_per_step = config.tokens_per_step(world)
    ckpt_path = latest_checkpoint(out) if resume else None
    if resume and ckpt_path is None:
        raise ValueError(
            f"resume=True but {out}/checkpoints has no checkpoint; start the run without --resume"
        )
    log = RunLogger(out, total, 0, tokens_per_step, bar=True)
    if out and dist.is_main_process():
        import json

        (out / "train_config.json").write_text(json.dumps(config.to_dict(), indent=1))

    # ---- teacher (from the dense W, before any pruning), student placement, one-shot init ----------------
    weights = LossWeights(config.ce_weight, config.kl_weight, config.kl_temperature, config.squarehead_weight)
    loss_kernel = config.loss_kernel_triton()
    if config.init == "keep" and teacher is None and config.teacher == "copy" and ckpt_path is None:
        raise ValueError('init="keep": the model is already pruned, so a copy of it is no teacher; pass the '
                         'dense model as train(..., teacher=dense) or set teacher="none" and kl_weight=0')
    teacher = build_teacher(model, config.teacher, device, given=teacher)
    if teacher is None and weights.needs_teacher:
        raise ValueError(
            'kl_weight/squarehead_weight > 0 need a teacher; set teacher="copy" or the weights to 0'
        )
    model.to(device)
    model.train()
    if ckpt_path is None:
        _one_shot_init(model, config, tokenizer, log)
    forge = None
    if config.forge is not None:
        from sfcompile.masking.forge import SparseForge

        forge = SparseForge(model, config.forge, total_steps=total)
        final = config.forge.schedule.finalize_step(total)
        log.message(f"masks: explored until step {final} of {total} ({final * tokens_per_step:,} tokens, "
                    f"finalize_at={config.forge.schedule.finalize_at:g}), then frozen")
        if forge.config.uses_hessian:
            log.message(f"Hessian probe: estimator {forge.config.estimator!r}")
        sched = config.forge.schedule
        if sched.slorb_fades:  # (ForgeConfig refuses a fade without a bypass)
            start = sched.step_of(sched.slorb_fade_start, total)
            log.message(f"SLoRB: the bypass fades from step {start} to 0 at step {total} "
                        f"(slorb_fade_start={sched.slorb_fade_start:g}) and is removed before hardening")
    student = dist.wrap_model(model, config)  # FSDP2 shards in place, after the forge (its state too)
    teacher = dist.wrap_teacher(teacher, config)
    extra = forge.trainable_extra_parameters() if forge else []  # after wrapping: the sharded parameters
    optimizer = build_optimizer(model, config, extra=extra)
    trained = [p for g in optimizer.param_groups for p in g["params"]]
    student = dist.attach_optimizer(student, model, optimizer, config)  # DeepSpeed: the ZeRO-3 engine
    # CUDA graphs: each compiled call may write over the outputs of the one before (cudagraph trees), so the
    # teacher's outputs and the step's gradients are copied out of the graphs' memory (_out_of_graphs, own_grads)
    graphs = config.compile and config.compile_mode == "reduce-overhead"
    stepper = dist.stepper(model, optimizer, trained, own_grads=graphs)  # backward / grad norm / clip + step
    compiled: list[str] = []
    mode = config.compile_mode
    student_fwd = _compile(student, "student forward", compiled, log, mode) if config.compile else student
    teacher_fwd = teacher
    if config.compile and teacher is not None and config.teacher == "copy":
        teacher_fwd = _compile(teacher, "teacher forward", compiled, log, mode)
    # The finite-difference probe is two ordinary forward+backward passes: it runs through the compiled
    # student (same graph: only tensor values change). "hvp" needs a double backward, which compiled graphs
    # do not support, and a DeepSpeed engine probes through the bare model (masking/zero3.py): both eager.
    probe_fwd, probe_dtype = model, None
    estimator = forge.config.estimator if forge is not None else None
    if config.compile and estimator in FD_ESTIMATORS and student is model:
        probe_fwd = student_fwd
        compiled.append(f"Hessian probe ({estimator})")
        # the matmul precision, told rather than found by a hooked no-grad pass (a second compile)
        site, module, _ = forge.entries[0]
        probe_dtype = torch.bfloat16 if config.bf16_autocast() else dense_weight(module, site.param).dtype

    # ---- resume -----------------------------------------------------------------------------------------
    start, skipped, tokens_done, ppl = 0, 0, 0, {}
    if ckpt_path is not None:
        state = restore_checkpoint(ckpt_path, model, optimizer, map_location=device)  # model.pt or sharded
        if forge is not None:
            forge.load_state_dict(state["forge"])
        set_rng_state(state["rng"])
        start, skipped, tokens_done = state["step"], state["skipped"], state["tokens"]
        ppl = {int(k): v for k, v in state.get("ppl", {}).items()}
        log.message(f"resumed from {ckpt_path} at step {start}/{total}")
    log.close()
    log = RunLogger(out, total, start, tokens_per_step, bar=True)
    log.log(
        start,
        "info",
        total_steps=total,
        tokens_per_step=tokens_per_step,
        device=str(device),
        compiled=",".join(compiled) or "none",
        compile_mode=config.compile_mode if compiled else None,
        probe="compiled" if probe_fwd is not model else "eager",
        loss_kernel=config.resolved_loss_kernel(),
        resumed=ckpt_path is not None,
    )
    if compiled:
        graphs = " (CUDA graphs: compile_mode='reduce-overhead')" if config.compile_mode == "reduce-overhead" else ""
        log.message(f"compiled: {', '.join(compiled)}{graphs}; evaluation runs eager")
    kind = "one Triton kernel" if loss_kernel else "chunked PyTorch"
    log.message(f"loss: {kind} (loss_kernel={config.loss_kernel!r})")

    shard = _data(config, tokenizer, teacher, device, log.message)
    batches = Batches(
        shard,
        config.seqlen,
        config.micro_batch,
        config.grad_accum,
        config.seed,
        rank=dist.rank(),
        world_size=world,
    )
    _report_passes(batches, total, tokens_per_step, start, log)
    end = total if stop_at is None else min(total, stop_at)
    if start == 0 and tokenizer is not None and (dist.is_main_process() or dist.is_sharded(model)):
        ppl[0] = _evaluate(model, tokenizer, config, autocast)
        log.log(0, "eval", ppl=ppl[0], text=config.eval_text)
        log.message(f"step 0: {config.eval_text} ppl {ppl[0]:.3f}")

    def checkpoint(step: int) -> None:
        if out is None:
            return
        save_checkpoint(
            out,
            step,
            model=model,
            optimizer=optimizer,
            forge=forge,
            keep=config.keep_checkpoints,
            extra={"skipped": skipped, "tokens": tokens_done, "ppl": ppl, "config": config.to_dict()},
        )

    # ---- the loop -------------------------------------------------------------------------------------
    last_loss, metrics, step = None, {}, start
    prefetch = Prefetcher(batches, start, end, pin=device.type == "cuda")
    with _StopFlag() as stop:
        try:
            for step, micro in prefetch:
                lr = lr_at(
                    step, lr=config.lr, min_lr=config.min_lr, warmup=config.warmup_steps(world), total=total
                )
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.set_mask_terms(
                    srste_decay=ramp(step, config.srste_decay, config.srste_ramp_steps(world))
                )

                # forward/backward over the micro-batches, gradients accumulated
                loss_sum, parts_sum = 0.0, {}
                # "fd_forward" probes difference against this step's gradient, computed from this RNG state
                probe_rng = None
                reuse_grads = estimator == "fd_forward" and forge.wants_probe(step)
                for i_micro, ids in enumerate(micro):
                    ids = ids.to(device, non_blocking=True)
                    with autocast():
                        t_out = None
                        if teacher is not None and weights.needs_teacher:
                            with torch.no_grad():
                                t_out = teacher_fwd(ids, output_hidden_states=weights.squarehead > 0,
                                                    use_cache=False)
                            if graphs and teacher_fwd is not teacher:  # the student's forward reuses its memory
                                t_out = _out_of_graphs(t_out)
                        # use_cache=False: a training forward has no use for the K/V cache HF builds by default
                        probe_rng = hutchinson.rng_state() if reuse_grads else None
                        s_out = student_fwd(ids, output_hidden_states=weights.squarehead > 0, use_cache=False)
                        loss, parts = distillation_loss(s_out, ids, weights, t_out, kernel=loss_kernel)
                    stepper.backward(loss / len(micro), last=i_micro == len(micro) - 1)
                    loss_sum = loss_sum + loss.detach() / len(micro)  # on the device: one host sync per step
                    for k, v in parts.items():
                        parts_sum[k] = parts_sum.get(k, 0.0) + v.detach() / len(micro)
                    del s_out, loss
                loss_sum = float(loss_sum)
                parts_sum = {k: float(v) for k, v in parts_sum.items()}
                if forge is not None:
                    forge.mask_grads()  # after finalisation: the gradients of W masked to the pattern

                # NaN/inf guard: a non-finite loss or gradient skips the update (the schedule still advances)
                # one loss for all ranks (the mean over the global batch): every rank takes the same branch
                loss_sum, parts_sum = dist.all_reduce_mean(loss_sum), dist.all_reduce_dict_mean(parts_sum)
                grad_norm = stepper.grad_norm()
                finite = math.isfinite(loss_sum) and bool(torch.isfinite(grad_norm))
                if finite:
                    if forge is not None:
                        forge.observe_grads(step)
                        if forge.wants_probe(step):
                            # the probe recomputes the loss on (the first probe_rows sequences of) the last
                            # micro-batch
                            p_ids, p_t = _first_rows(ids, t_out, config.probe_rows)
                            loss_fn = functools.partial(_probe_loss, probe_fwd, p_ids, p_t, weights, autocast,
                                                        estimator, loss_kernel)
                            forge.probe(
                                step, loss_fn,
                                compute_dtype=probe_dtype, step_grads=reuse_grads, rng_state=probe_rng,
                            )
                    stepper.step(config.clip, grad_norm)
                else:
                    stepper.skip()
                    skipped += 1
                    log.log(step, "skip", loss=loss_sum, grad_norm=float(grad_norm))
                    log.message(
                        f"step {step}: non-finite loss/gradient (loss {loss_sum}, grad norm "
                        f"{float(grad_norm)}): update skipped"
                    )
                stepper.zero_grad()
                t_out = None
                done = step + 1
                log_now = done % config.log_every == 0 or done == end
                metrics = forge.after_step(step, measure=log_now) if forge is not None else {}
                if metrics.get("finalized"):
                    # masks are exact and frozen now: restart Adam's moments of the masked weights (the
                    # reference rebuilds its optimizer here) so stale second moments of pruned weights go
                    for site, module, _ in masked_sites(model):
                        optimizer.state.pop(dense_weight(module, site.param), None)
                    log.message(f"step {step + 1}: masks finalised")
                tokens_done += tokens_per_step
                last_loss = loss_sum

                # log, evaluate, checkpoint
                if log_now:
                    # (not metrics.get(..., _masked_sparsity(model)): that would count every mask on every log step)
                    sparsity = metrics["sparsity"] if "sparsity" in metrics else _masked_sparsity(model)
                    log.log(
                        done,
                        "train",
                        loss=loss_sum,
                        lr=lr,
                        grad_norm=float(grad_norm),
                        tokens=tokens_done,
                        **parts_sum,
                        **{k: v for k, v in metrics.items() if k != "sparsity"},
                        sparsity=sparsity,
                    )
                tps = log.step_done(
                    done, loss=loss_sum, sparsity=metrics.get("sparsity"), T=metrics.get("temperature")
                )
                if (
                    config.eval_every
                    and done % config.eval_every == 0
                    and done != total
                    and tokenizer is not None
                ):
                    ppl[done] = _evaluate(model, tokenizer, config, autocast)
                    log.log(done, "eval", ppl=ppl[done], text=config.eval_text, tokens=tokens_done, tok_s=tps)
                    log.message(
                        f"step {done}: {config.eval_text} ppl {ppl[done]:.3f} ({tokens_done:,} tokens)"
                    )
                if config.checkpoint_every and done % config.checkpoint_every == 0 and done != total:
                    checkpoint(done)
                if dist.any_rank(stop.signal is not None):  # all ranks stop at the same step
                    stop.signal = stop.signal or "SIGTERM"
                    break
        finally:
            prefetch.close()

    # ---- paused (signal / stop_at): checkpoint and return ----------------------------------------------
    steps_done = step + 1 if end > start else start
    if stop.signal or steps_done < total:
        checkpoint(steps_done)
        reason = stop.signal or "stop_at"
        log.message(
            f"stopped at step {steps_done}/{total} ({reason}); checkpoint written — resume with --resume"
        )
        log.close()
        return TrainResult(
            steps_done,
            total,
            tokens_done,
            last_loss,
            ppl,
            skipped,
            reason,
            _StopFlag.CODES.get(reason, 0),
            None,
            compiled,
            time.perf_counter() - t_start,
            log.history,
        )

    # ---- finish: final eval, harden, save, plot, summary ------------------------------------------------
    if tokenizer is not None and (dist.is_main_process() or dist.is_sharded(model)):
        ppl[total] = _evaluate(model, tokenizer, config, autocast)
        log.log(total, "eval", ppl=ppl[total], text=config.eval_text, tokens=tokens_done)
    checkpoint(total)
    final_path = None
    if config.harden:
        # sharded: rank 0 gets a plain CPU copy with the gathered state (None elsewhere); else the model
        final = dist.full_model(model)
        if final is not None:
            if forge is not None and forge.config.schedule.slorb_fades:
                from sfcompile.masking.slorb import remove_all_slorb

                remove_all_slorb(final)  # trained to gain 0: it adds nothing, and the model decodes without S
            harden(final)
        if out is not None and final is not None:
            from sfcompile.export import save

            final_path = save(final, tokenizer, out / "final")
    seconds = time.perf_counter() - t_start
    result = TrainResult(
        total,
        total,
        tokens_done,
        last_loss,
        ppl,
        skipped,
        None,
        0,
        final_path,
        compiled,
        seconds,
        log.history,
    )
    if out is not None and dist.is_main_process():
        from sfcompile.train.plots import plot_history
        from sfcompile.train.runlog import read_history

        history = read_history(out)
        plot_history(history, out / "curves.png", tokens_per_step=tokens_per_step)
        rows = [
            ("steps", f"{total:,}"),
            ("tokens", f"{tokens_done:,}"),
            ("final loss", f"{last_loss:.4f}"),
            ("skipped steps", str(skipped)),
            ("compiled", ", ".join(compiled) or "none"),
            ("wall time (this invocation)", f"{seconds:.0f} s"),
        ]
        rows += [(f"{config.eval_text} ppl @ step {s}", f"{v:.3f}") for s, v in sorted(ppl.items())]
        if final_path:
            rows.append(("final model", str(final_path)))
        table = summary_table(rows)
        (out / "summary.md").write_text(table + "\n")
        log.message(table)
    log.close()
    return result
