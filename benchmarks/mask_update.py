"""Cost of one SparseForge mask update (`SparseForge.after_step` at an update step): wall time and op count.

The update is a handful of element-wise passes over every masked weight; on a GPU its time is the launch and
dispatch cost of the ops it issues (342 ms for SmolLM2-135M on an H200 before batching, against a 125 ms dense
training step), so the number of ops is what this measures besides time:

    aten_ops       every ``aten::`` event the profiler records in one update (nested calls included)
    top_level_ops  the ``aten::`` events not nested in another one (what the Python code dispatched)
    compute_ops    ops reaching the dispatcher that are not views (a TorchDispatchMode count; on a GPU each
                   launches at least one kernel)
    cuda_kernels   kernels launched (CUDA only)

The model is the alias's offline config with random weights (speed does not depend on them), sparsified 2:4,
with one Hessian probe before the first update (score "magnitude" needs none). ``--check`` also runs the
straightforward per-site reference update (`update.update_masks_reference`) from the same state and reports
whether soft and hard masks agree.

    PYTHONPATH=. python benchmarks/mask_update.py --device cpu --rounds 3
    PYTHONPATH=. python benchmarks/mask_update.py --device cuda --rounds 10 --check --out results/mask_update.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import sfcompile
from sfcompile.masking.forge import ForgeConfig, SparseForge
from sfcompile.masking.schedule import TemperingSchedule
from sfcompile.opcount import OpCount

UPDATE_STEP = 29  # t = 30: an update step of TemperingSchedule(period_early=30, period_late=10)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _build(args, device):
    if args.model == "tiny":  # a 2-layer random llama: a smoke test of this script, not a benchmark
        from transformers import AutoConfig, AutoModelForCausalLM

        cfg = AutoConfig.for_model("llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=256)
        model = AutoModelForCausalLM.from_config(cfg)
    else:
        model, _ = sfcompile.load(args.model, weights="random")
    sfcompile.sparsify(model, pattern=args.pattern, mask_dtype=torch.float32)
    model.to(device).train()
    extra = {"update_batch_numel": args.batch_numel} if args.batch_numel else {}
    cfg = ForgeConfig(score=args.score, schedule=TemperingSchedule(period_early=30, period_late=10), **extra)
    forge = SparseForge(model, cfg, total_steps=1000)
    if cfg.uses_hessian:
        ids = torch.randint(0, model.config.vocab_size, (1, args.seqlen),
                            generator=torch.Generator().manual_seed(0)).to(device)
        forge.probe(UPDATE_STEP - 1, lambda: model(ids, labels=ids).loss)
    return model, forge


def _update(forge) -> None:
    forge.after_step(UPDATE_STEP, measure=False)


def _count_ops(forge, device) -> dict:
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        _update(forge)
        _sync(device)
    events = list(prof.events())
    aten = [e for e in events if e.name.startswith("aten::") and e.device_type == torch.autograd.DeviceType.CPU]
    top = [e for e in aten if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
    with OpCount() as ops:
        _update(forge)
    out = {"aten_ops": len(aten), "top_level_ops": len(top), "compute_ops": ops.n}
    if device.type == "cuda":
        out["cuda_kernels"] = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    return out


def _check(forge) -> dict:
    """Soft and hard masks after one update against the per-site reference from the same starting state."""
    from sfcompile.masking import update

    softs = [soft for _, _, soft in forge.entries]
    start = [(s.mask.detach().clone(), s.hard.detach().clone()) for s in softs]
    values = forge.config.schedule.values(UPDATE_STEP + 1, forge.total_steps, forge.final_sparsity)
    flips = forge._update_masks(UPDATE_STEP, values)
    got = [(s.mask.detach().clone(), s.hard.detach().clone()) for s in softs]
    for s, (m, h) in zip(softs, start):
        s.mask.copy_(m)
        s.hard.copy_(h)
        s.refresh()
    ref_flips = update.update_masks_reference(forge, UPDATE_STEP, values)
    mask_diff = max(float((g[0] - s.mask).abs().max()) for g, s in zip(got, softs))
    hard_diff = sum(int((g[1] != s.hard).sum()) for g, s in zip(got, softs))
    soft_diff = sum(int((g[0] != s.mask).sum()) for g, s in zip(got, softs))
    return {"soft_bit_equal": soft_diff == 0, "soft_entries_differing": soft_diff, "soft_max_abs_diff": mask_diff,
            "hard_entries_differing": hard_diff,
            "flips": flips, "reference_flips": ref_flips}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help='an sfcompile.load alias, or "tiny" (smoke test)')
    ap.add_argument("--pattern", default="2:4")
    ap.add_argument("--score", default="hessian_obd", help="ForgeConfig.score (magnitude needs no probe)")
    ap.add_argument("--seqlen", type=int, default=64, help="tokens of the one probe batch")
    ap.add_argument("--rounds", type=int, default=3, help="timed updates (after one warm-up update)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch-numel", type=int, default=None,
                    help="ForgeConfig.update_batch_numel (default: the config's default)")
    ap.add_argument("--check", action="store_true", help="compare with the per-site reference update")
    ap.add_argument("--label", default=None, help="a free-form tag stored in the JSON row (e.g. a commit)")
    ap.add_argument("--out", default=None, help="append the result as one JSON line here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    torch.manual_seed(0)
    model, forge = _build(args, device)

    t0 = time.perf_counter()
    _update(forge)  # warm-up: allocator, lazy state, compilation when on
    _sync(device)
    first = time.perf_counter() - t0
    times = []
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
        _sync(device)
        t = time.perf_counter()
        _update(forge)
        _sync(device)
        times.append(time.perf_counter() - t)
    row = {
        "model": args.model, "pattern": args.pattern, "score": args.score, "device": str(device),
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
        "sites": len(forge.entries), "weights": sum(s.mask.numel() for _, _, s in forge.entries),
        "update_batch_numel": forge._batch_numel() if hasattr(forge, "_batch_numel") else None,
        "first_update_s": first, "median_s": statistics.median(times), "min_s": min(times),
        "threads": torch.get_num_threads(), "rounds": args.rounds, "label": args.label,
        **_count_ops(forge, device),
    }
    if args.check:
        row["check"] = _check(forge)
    print(json.dumps(row, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
