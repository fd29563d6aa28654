"""Overhead of SparseForge training against plain dense fine-tuning: same model, same batch, same process.

Measured, interleaved round by round (so a busy machine slows both sides alike):
    dense        plain model, AdamW, CE: forward + backward + clip + step
    masked       the sparsified model (soft masks, SLoRB), mask-aware AdamW, CE, forge.after_step
    probe        one Hutchinson probe (estimator "fd": two extra forward+backward passes)
    probe_fd_forward  the same with estimator "fd_forward" (one extra pass: the step's gradient is g(W));
                 timed after an untimed forward+backward that leaves that gradient, as the trainer's step does
    mask update  one scoring + tempering update of every mask (happens every K steps)
    teacher      one forward of the dense teacher (distillation; not part of the ratio)
Reported: time per step of each, the overhead ratio (masked + probe/P + update/K) / dense for probe
periods P and update periods K, and the ratio averaged over whole runs of the trainer's schedules (one
probe per mask update: masked + (probe + update) · updates / steps; ``..._fd_forward`` with that probe);
memory: bytes held by parameters +
gradients + optimizer state + mask state, and (CUDA) the peak allocated during the step above what is held.

    python benchmarks/train_overhead.py --model smollm2-135m --seqlen 512 --micro-batch 1 --rounds 3
    python benchmarks/train_overhead.py ... --compile     # dense and masked forward under torch.compile
    python benchmarks/train_overhead.py ... --probe-rows 8  # the probe on 8 sequences (TrainConfig.probe_rows)
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import sfcompile
from sfcompile.masking import hutchinson
from sfcompile.masking.forge import ForgeConfig, SparseForge
from sfcompile.masking.schedule import TemperingSchedule
from sfcompile.train.config import FROM_PRUNED, TrainConfig
from sfcompile.train.losses import LossWeights, distillation_loss
from sfcompile.train.optim import build_optimizer


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _held_bytes(model, optimizer) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
            if getattr(t, "grad", None) is not None:
                total += t.grad.numel() * t.grad.element_size()
    for state in optimizer.state.values():
        total += sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v))
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--pattern", default="2:4")
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--micro-batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds (after one warm-up round)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--weights", default="real", choices=("real", "random"),
                    help="random: the alias's offline config with random weights (speed does not depend on them)")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the dense and the masked model's forward (what TrainConfig.compile does; "
                    "the finite-difference probe's passes use the compiled forward too)")
    ap.add_argument("--probe-rows", type=int, default=None,
                    help="sequences of the micro-batch the probe uses (TrainConfig.probe_rows; default: all)")
    ap.add_argument("--profile", action="store_true", help="print the top kernels of one dense and one masked step")
    ap.add_argument("--out", default=None, help="append the result as one JSON line here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
        if device.type == "cuda"
        else (lambda: torch.autocast("cpu", enabled=False))
    )

    if args.model == "tiny":  # a 2-layer random llama: a smoke test of this script, not a benchmark
        from transformers import AutoConfig, AutoModelForCausalLM

        cfg_ = AutoConfig.for_model("llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, vocab_size=256)
        dense, tok = AutoModelForCausalLM.from_config(cfg_), list(range(256))
    else:
        dense, tok = sfcompile.load(args.model, weights=args.weights)
    teacher = copy.deepcopy(dense).eval().requires_grad_(False)
    if device.type == "cuda":
        teacher = teacher.to(torch.bfloat16)
    teacher.to(device)
    masked = copy.deepcopy(dense)
    sfcompile.sparsify(masked, pattern=args.pattern)
    dense.to(device).train()
    masked.to(device).train()
    total_steps = 1000
    sched = TemperingSchedule(period_early=30, period_late=10)
    forge = SparseForge(masked, ForgeConfig(schedule=sched), total_steps=total_steps)
    cfg = TrainConfig(forge=None, init="magnitude", teacher="none", kl_weight=0.0)  # optimizer settings only
    # the dense baseline: plain torch AdamW over the same trainable set (embeddings frozen too)
    dense.get_input_embeddings().weight.requires_grad_(False)
    dparams = [p for p in dense.parameters() if p.requires_grad]
    opt_dense = torch.optim.AdamW(
        [
            {"params": [p for p in dparams if p.dim() >= 2], "weight_decay": 0.1},
            {"params": [p for p in dparams if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=1e-5,
        betas=(0.9, 0.95),
    )
    opt_masked = build_optimizer(masked, cfg.replace(lr=1e-5), extra=forge.trainable_extra_parameters())
    mparams = [p for g in opt_masked.param_groups for p in g["params"]]
    weights = LossWeights(ce=1.0)
    dense_fwd, masked_fwd = (torch.compile(dense), torch.compile(masked)) if args.compile else (dense, masked)
    gen = torch.Generator().manual_seed(0)
    vocab = len(tok) if tok is not None else dense.config.vocab_size  # weights="random" has no tokenizer
    ids = torch.randint(0, vocab, (args.micro_batch, args.seqlen), generator=gen).to(device)

    def dense_step():
        with autocast():
            loss, _ = distillation_loss(dense_fwd(ids), ids, weights)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dparams, 1.0)
        opt_dense.step()
        opt_dense.zero_grad(set_to_none=True)

    def masked_step(step):
        with autocast():
            loss, _ = distillation_loss(masked_fwd(ids), ids, weights)
        loss.backward()
        forge.mask_grads()  # a no-op before finalisation (the step timed here)
        forge.observe_grads(step)
        torch.nn.utils.clip_grad_norm_(mparams, 1.0)
        opt_masked.step()
        opt_masked.zero_grad(set_to_none=True)
        forge.after_step(step, measure=False)  # the trainer measures sparsity on log steps only

    probe_ids = ids[: args.probe_rows] if args.probe_rows else ids

    def loss_fn():  # the fd probe runs through the compiled student, as in the trainer
        with autocast():
            return distillation_loss(masked_fwd(probe_ids), probe_ids, weights)[0]

    probe_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # as the trainer tells it

    def probe(step):
        forge.probe(step, loss_fn, compute_dtype=probe_dtype)

    # "probe" times "fd" whatever the config's estimator ("auto", the default, would pick "fd" here anyway: the
    # probe gets no step gradients); "probe_fd_forward" swaps in the one-pass estimator
    central, forward = (dataclasses.replace(forge.config, estimator=e) for e in ("fd", "fd_forward"))
    forge.config = central

    def step_grads():  # what the trainer's step leaves for "fd_forward": g(W) in .grad, from this RNG state
        rng = hutchinson.rng_state()
        loss_fn().backward()
        return rng

    def probe_forward(step, rng):
        forge.config = forward
        try:
            forge.probe(step, loss_fn, compute_dtype=probe_dtype, step_grads=True, rng_state=rng)
        finally:
            forge.config = central
        opt_masked.zero_grad(set_to_none=True)

    def update():
        # after_step at a step where the schedule updates the masks (t = 30: step index 29)
        forge.after_step(29, measure=False)

    def teacher_fwd():
        with torch.no_grad(), autocast():
            teacher(ids)

    def timed(fn, *a):
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() if device.type == "cuda" else 0
        t = time.perf_counter()
        fn(*a)
        _sync(device)
        dt = time.perf_counter() - t
        peak = (torch.cuda.max_memory_allocated() - before) if device.type == "cuda" else None
        return dt, peak

    parts = ("dense", "masked", "probe", "mask_update", "teacher") + (() if args.probe_rows else ("probe_fd_forward",))
    times = {k: [] for k in parts}
    peaks = {}
    for r in range(args.rounds + 1):
        print(f"round {r}/{args.rounds}", file=sys.stderr, flush=True)
        res = {
            "dense": timed(dense_step),
            "masked": timed(masked_step, 1),
            "probe": timed(probe, 28),
            "mask_update": timed(update),
            "teacher": timed(teacher_fwd),
        }
        if not args.probe_rows:  # "fd_forward" probes the whole micro-batch the step's gradient came from
            res["probe_fd_forward"] = timed(probe_forward, 28, step_grads())
        if r == 0:
            continue  # warm-up round (allocator, lazy state)
        for k, (dt, peak) in res.items():
            times[k].append(dt)
            if peak is not None:
                peaks[k] = max(peaks.get(k, 0), peak)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        for name, fn in (("dense", dense_step), ("masked", lambda: masked_step(1)), ("probe", lambda: probe(28)),
                         ("mask_update", update)):
            with profile(activities=acts) as prof:
                fn()
                _sync(device)
            key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
            events = prof.key_averages()
            busy = sum(e.self_device_time_total for e in events) / 1e3
            launches = sum(e.count for e in events if "LaunchKernel" in e.key)
            print(f"== profile: {name}: device busy {busy:.1f} ms, {launches} kernel launches ==\n"
                  + events.table(sort_by=key, row_limit=25), flush=True)
            if device.type == "cuda":
                print(events.table(sort_by="self_cpu_time_total", row_limit=15), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = {}
    for P, K in ((1, 30), (10, 30), (30, 30), (1, 10), (10, 10)):
        ratios[f"probe_every={P},K={K}"] = (med["masked"] + med["probe"] / P + med["mask_update"] / K) / med[
            "dense"
        ]
    # whole runs (1,000 steps) under the trainer's schedules, one probe per mask update
    for name, window in (("default", {}), ("from_pruned", FROM_PRUNED)):
        run_sched = dataclasses.replace(TemperingSchedule(), **window)
        fin = run_sched.finalize_step(total_steps)
        updates = sum(run_sched.is_update(t, total_steps) for t in range(1, fin))
        per_step = med["masked"] + (med["probe"] + med["mask_update"]) * updates / total_steps
        ratios[f"run_average_{name}"] = per_step / med["dense"]
        if "probe_fd_forward" in med:
            per_step = med["masked"] + (med["probe_fd_forward"] + med["mask_update"]) * updates / total_steps
            ratios[f"run_average_{name}_fd_forward"] = per_step / med["dense"]
        ratios[f"updates_per_1000_steps_{name}"] = updates
    held = {"dense": _held_bytes(dense, opt_dense), "masked": _held_bytes(masked, opt_masked)}
    row = {
        "model": args.model,
        "pattern": args.pattern,
        "device": str(device),
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
        "tokens_per_step": args.micro_batch * args.seqlen,
        "median_s": med,
        "masked_over_dense": med["masked"] / med["dense"],
        "overhead": ratios,
        "held_MiB": {k: v / 2**20 for k, v in held.items()},
        "step_peak_MiB": {k: v / 2**20 for k, v in peaks.items()} or None,
        "threads": torch.get_num_threads(),
        "compiled": args.compile,
        "probe_rows": args.probe_rows or args.micro_batch,
        "rounds": args.rounds,
    }
    print(json.dumps(row, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
