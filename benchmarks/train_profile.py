"""Where a training step's time goes: the real `train()` loop (or the teacher sampler) under torch.profiler.

``--what train`` runs `sfcompile.train` as a user would (SmolLM2-135M shape, random weights: speed does not
depend on them; byte-level tokenizer; magnitude init; dense teacher; Hessian probes and mask updates every
``--period`` steps) and profiles ``--profile-steps`` optimizer steps after ``--profile-from`` (compiles and
warm-up before). ``--what sample`` profiles `sample_sequences` (the teacher-data sampler) on one batch.

Prints, for the window: wall time per step, the GPU's busy time (union of kernel intervals) per step, so the
idle share says whether the host or the kernels bound the step, the host time spent blocked on the device
(synchronising calls), and the top kernels and host ops. One JSON line goes to ``--out``.

    python benchmarks/train_profile.py --what train --compile --micro-batch 32 --seqlen 512 --out prof.jsonl
    python benchmarks/train_profile.py --what sample --batch 2048 --seqlen 256 --out prof.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

import sfcompile
from sfcompile.masking.config import ForgeConfig
from sfcompile.masking.schedule import TemperingSchedule
from sfcompile.train import runlog
from sfcompile.train.config import COMPILE_MODES, LOSS_KERNELS, TrainConfig
from sfcompile.train.data import byte_tokenizer, sample_sequences
from sfcompile.train.loop import train
from sfcompile.train.optim import ADAM_IMPLS

SYNC_OPS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpyAsync")


def busy_union(intervals: list[tuple[float, float]]) -> float:
    """Total length of the union of [start, end) intervals (kernels of several streams may overlap)."""
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def summarize(prof, wall_s: float, steps: int, top: int) -> dict:
    """Busy / idle / host-blocked time per step, and the top kernels and host ops, from one profile.

    Kernel intervals are the device-side events (``device_type`` CUDA; their ``time_range`` is device time);
    ``gpu_kernel_ms_per_step`` (the kernels' summed self time, as `benchmarks/train_overhead.py --profile`
    reports it) is the cross-check that needs no intervals."""
    kernels, blocked = [], 0.0
    for ev in prof.events():
        span = ev.time_range.end - ev.time_range.start
        if ev.device_type == torch.autograd.DeviceType.CUDA and span > 0:
            kernels.append((ev.time_range.start, ev.time_range.end))
        elif ev.name in SYNC_OPS:
            blocked += span
    averages = prof.key_averages()
    gpu_top = sorted((e for e in averages if e.self_device_time_total > 0), key=lambda e: -e.self_device_time_total)
    cpu_top = sorted(averages, key=lambda e: -e.self_cpu_time_total)
    busy_ms = busy_union(kernels) / 1e3
    return {
        "steps": steps,
        "wall_ms_per_step": wall_s * 1e3 / steps,
        "gpu_busy_ms_per_step": busy_ms / steps if kernels else None,
        "gpu_kernel_ms_per_step": sum(e.self_device_time_total for e in averages) / 1e3 / steps,
        "gpu_idle_share": 1 - busy_ms / (wall_s * 1e3) if kernels else None,
        "host_blocked_ms_per_step": blocked / 1e3 / steps,
        "kernels_per_step": len(kernels) / steps,
        "top_kernels_ms_per_step": [[e.key[:90], round(e.self_device_time_total / 1e3 / steps, 3), e.count // steps]
                                    for e in gpu_top[:top]],
        "top_host_ops_ms_per_step": [[e.key[:90], round(e.self_cpu_time_total / 1e3 / steps, 3), e.count // steps]
                                     for e in cpu_top[:top]],
    }


def profile_train(args) -> dict:
    model, _ = sfcompile.load(args.model, weights="random")
    sfcompile.sparsify(model, "2:4")
    text = Path(args.work) / "text.txt"
    text.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), rng.integers(2, 9))) for _ in range(5000)]
    steps = args.profile_from + args.profile_steps + args.after
    tokens = steps * args.micro_batch * args.seqlen
    finalize_at = args.finalize_at if args.finalize_at is not None else (args.profile_from - 2) / steps
    text.write_text(" ".join(rng.choice(words, tokens // 5 + 1000)))
    config = TrainConfig(
        tokens=tokens, data=str(text), seqlen=args.seqlen, micro_batch=args.micro_batch, lr=1e-3, init="magnitude",
        compile=args.compile, compile_mode=args.compile_mode, out=str(Path(args.work) / "run"), eval_text=str(text),
        eval_windows=2,
        log_every=args.log_every, harden=False, loss_kernel=args.loss_kernel, adam_impl=args.adam_impl,
        forge=ForgeConfig(schedule=TemperingSchedule(period_early=args.period, period_late=args.period,
                                                     harden_start=0.0, harden_end=0.0, finalize_at=finalize_at)),
    )
    window: dict = {"stamps": []}
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    original = runlog.RunLogger.step_done

    def step_done(self, step, **postfix):  # the loop calls this once per optimizer step
        window["stamps"].append((step, time.perf_counter()))
        if step == args.profile_from:
            sync()
            window["prof"] = profile(activities=acts)
            window["prof"].__enter__()
            window["t0"] = time.perf_counter()
        elif step == args.profile_from + args.profile_steps:
            sync()
            window["wall"] = time.perf_counter() - window["t0"]
            window["prof"].__exit__(None, None, None)
        return original(self, step, **postfix)

    runlog.RunLogger.step_done = step_done
    try:
        result = train(model, config, tokenizer=byte_tokenizer())
    finally:
        runlog.RunLogger.step_done = original
    row = summarize(window["prof"], window["wall"], args.profile_steps, args.top)
    # unprofiled steps: wall time between consecutive steps, while masks explore (probe + update steps
    # included; the first steps, which compile, left out) and after the window (masks final by then)
    final = config.forge.schedule.finalize_step(config.total_steps(1))
    for name, lo, hi in (("exploring", 3, final), ("after_window", args.profile_from + args.profile_steps, steps)):
        stamps = [t for s, t in window["stamps"] if lo <= s <= hi]
        gaps = sorted(b - a for a, b in zip(stamps, stamps[1:]))
        if gaps:
            row[f"{name}_ms_per_step"] = {"median": 1e3 * gaps[len(gaps) // 2], "mean": 1e3 * sum(gaps) / len(gaps),
                                          "steps": len(gaps)}
    row["finalize_step"] = final
    row.update(what="train", compiled=result.compiled, compile_mode=args.compile_mode,
               loss_kernel=config.resolved_loss_kernel(), adam_impl=args.adam_impl, micro_batch=args.micro_batch,
               seqlen=args.seqlen, period=args.period,
               tok_s_window=args.profile_steps * args.micro_batch * args.seqlen / window["wall"])
    return row


def profile_sample(args) -> dict:
    cuda = torch.cuda.is_available()  # without CUDA: a smoke run of this script (host ops only)
    device = "cuda" if cuda else "cpu"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    model, _ = sfcompile.load(args.model, weights="random", device=device)
    teacher = model.eval().requires_grad_(False).to(torch.bfloat16)  # as the trainer's "copy" teacher on CUDA
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.prompt), device=device)
    new = args.seqlen - args.prompt
    sample_sequences(teacher, ids[:, :], 8, 1.0, 0, kv_cache=args.kv_cache, bf16=True)  # warm-up
    sync()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        sample_sequences(teacher, ids, new, 1.0, 0, kv_cache=args.kv_cache, bf16=True)
        sync()
        wall = time.perf_counter() - t0
    row = summarize(prof, wall, new, args.top)  # "steps" = decoding steps
    row.update(what="sample", batch=args.batch, seqlen=args.seqlen, kv_cache=args.kv_cache,
               tok_s=args.batch * args.seqlen / wall)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--what", choices=("train", "sample"), required=True)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--compile-mode", default="default", choices=COMPILE_MODES, help="TrainConfig.compile_mode")
    ap.add_argument("--loss-kernel", default="auto", choices=LOSS_KERNELS, help="TrainConfig.loss_kernel")
    ap.add_argument("--adam-impl", default="foreach", choices=ADAM_IMPLS, help="TrainConfig.adam_impl")
    ap.add_argument("--micro-batch", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--period", type=int, default=10, help="mask update / probe period (steps)")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--profile-from", type=int, default=60, help="first profiled step (after finalisation)")
    ap.add_argument("--finalize-at", type=float, default=None,
                    help="ForgeConfig finalize_at; default: masks final 2 steps before the window")
    ap.add_argument("--profile-steps", type=int, default=10)
    ap.add_argument("--after", type=int, default=40, help="unprofiled steps timed after the window")
    ap.add_argument("--batch", type=int, default=2048, help="--what sample: sequences per batch")
    ap.add_argument("--prompt", type=int, default=5)
    ap.add_argument("--kv-cache", default="dynamic", help="the sampler: dynamic, static or packed")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--work", default="train_profile_run")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    row = profile_train(args) if args.what == "train" else profile_sample(args)
    row.update(gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None, torch=torch.__version__)
    print(json.dumps(row, indent=1), flush=True)
    with args.out.open("a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
