"""Sharded training throughput and peak memory per rank against `sfcompile plan`, random weights, no download.

    torchrun --nproc-per-node 2 benchmarks/scale_fsdp2.py --model qwen3-8b --seqlen 2048 --steps 12
    torchrun --nproc-per-node 1 benchmarks/scale_fsdp2.py --model qwen3-1.7b ...      # the 1-GPU baseline
    torchrun --nproc-per-node 2 benchmarks/scale_fsdp2.py --engine deepspeed --model qwen3-0.6b ...  # ZeRO-3
    benchmarks/scale_h200x2.sh       # the three runs of the H200 ×2 proof in one command (JSON lines to $OUT)

The model is built from the alias's offline config with random weights, sparsified 2:4 and trained by
`sfcompile.train` (teacher copy sharded, Hessian scoring, SLoRB: the defaults) on synthetic text with a byte
tokenizer (the loss is meaningless; memory and speed are what is measured). Rank 0 prints one JSON line:
tokens/s of the steps after the first, peak allocated memory per rank, and plan's prediction by component.
Run on CPU with ``--device cpu`` (gloo) to check the script itself (``--hidden``/``--layers`` shrink the
config). ``--out FILE`` appends the JSON line to FILE as well.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "train"))


def step_times(history: list[dict], tokens_per_step: int, period: int = 10) -> dict:
    """Per-step wall times from the trainer's log (one "train" row per step): the median plain step, the
    median probe + mask-update step, tokens/s of plain steps, and tokens/s with one probe + update every
    ``period`` steps (the default schedule's late period). The first step (compilation, first probe) is
    left out."""
    import statistics

    rows = [h for h in history if h.get("kind") == "train" and "time" in h]
    plain, update = [], []
    for prev, row in zip(rows[1:], rows[2:]):
        (update if row.get("mask_update") else plain).append(row["time"] - prev["time"])
    out = {"plain_steps": len(plain), "update_steps": len(update), "step_s": None, "update_step_s": None,
           "tokens_per_s": None, "tokens_per_s_with_updates": None}
    if plain:
        step = statistics.median(plain)
        out.update(step_s=round(step, 4), tokens_per_s=round(tokens_per_step / step, 1))
        if update:
            upd = statistics.median(update)
            out.update(update_step_s=round(upd, 4),
                       tokens_per_s_with_updates=round(period * tokens_per_step / ((period - 1) * step + upd), 1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen3-1.7b")
    ap.add_argument("--layers", type=int, default=None, help="override the number of blocks (smaller runs)")
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--micro-batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--period", type=int, default=4, help="mask update period (steps); each update has its probe")
    ap.add_argument("--activation-checkpointing", action="store_true")
    ap.add_argument("--no-reshard-after-forward", dest="reshard_after_forward", action="store_false")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--engine", default="fsdp2", choices=("fsdp2", "deepspeed"))
    ap.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp32"), help="TrainConfig.dtype")
    ap.add_argument("--hidden", type=int, default=None, help="override hidden/intermediate/heads (CPU checks)")
    ap.add_argument("--profile", action="store_true",
                    help="run under torch.profiler; rank 0 prints the top ops by self CUDA and self CPU time")
    ap.add_argument("--label", default="")
    ap.add_argument("--out", default=None, help="also append the JSON line to this file")
    args = ap.parse_args()
    if args.engine == "deepspeed" and not torch.cuda.is_available():
        import os

        os.environ.setdefault("DS_ACCELERATOR", "cpu")

    from _tiny import byte_tokenizer
    from transformers import AutoModelForCausalLM

    import sfcompile
    from sfcompile.masking.forge import ForgeConfig
    from sfcompile.masking.schedule import TemperingSchedule
    from sfcompile.models.aliases import alias_config
    from sfcompile.train import TrainConfig, train
    from sfcompile.train import distributed as dist
    from sfcompile.train.plan import PlanInput, count_model, plan

    t_start = time.perf_counter()

    def phase(name: str) -> None:  # timestamps in the log: where a slow or stopped run spent its time
        if dist.is_main_process():
            print(f"[{time.perf_counter() - t_start:7.1f}s] {name}", flush=True)

    dist.init_from_env(args.device)
    cuda = torch.cuda.is_available() and args.device != "cpu"
    cfg = alias_config(args.model)
    if args.layers:
        cfg.num_hidden_layers = args.layers
    if args.hidden:  # a tiny config of the same family, for checking the script on CPU
        cfg.hidden_size, cfg.intermediate_size = args.hidden, 2 * args.hidden
        cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim = 4, 2, args.hidden // 4
        cfg.vocab_size = 512
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):
        model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32)
    phase("model built")
    sfcompile.sparsify(model, "2:4", mask_dtype=torch.float32)
    phase("sparsified")
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    root = Path(tempfile.mkdtemp(prefix="sfc-scale-"))
    text = root / "synthetic.txt"
    if dist.is_main_process():
        rng = random.Random(0)
        words = ["".join(rng.choice("abcdefghij klmnop") for _ in range(7)) for _ in range(500)]
        text.write_text(" ".join(rng.choice(words) for _ in range(args.seqlen * 64)))
    root = Path(dist.broadcast_object(str(root)))
    text = root / "synthetic.txt"
    dist.barrier()
    world = dist.world_size()
    # the trainer's defaults (Hessian OBD, fd probe once per mask update, SLoRB) with a short update period so
    # a few steps hold plain steps and probe+update steps: both are timed, and the throughput of the
    # default schedule (an update every 10 steps late in the run) is derived from them
    forge = ForgeConfig(
        schedule=TemperingSchedule(
            period_early=args.period, period_late=args.period, harden_start=0.5, harden_end=0.8, finalize_at=0.95
        ),
    )
    config = TrainConfig(
        tokens=args.seqlen * args.micro_batch * world * args.steps,
        data=str(text),
        seqlen=args.seqlen,
        micro_batch=args.micro_batch,
        forge=forge,
        harden=False,
        cache_dir=str(root / "cache"),
        out=None,  # no checkpoint: the final sharded save of an 8B run outlasts the measurement itself
        eval_text=str(text),
        eval_windows=1,
        log_every=1,
        activation_checkpointing=args.activation_checkpointing,
        reshard_after_forward=args.reshard_after_forward,
        device=args.device,
        engine=args.engine,
        dtype=args.dtype,
    )
    phase("training starts")
    t0 = time.perf_counter()
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=acts) as prof:
            result = train(model, config, tokenizer=byte_tokenizer())
        if dist.is_main_process():
            for key in (["self_cuda_time_total"] if cuda else []) + ["self_cpu_time_total"]:
                print(f"== profile of the whole run, by {key} ==", flush=True)
                print(prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=60), flush=True)
    else:
        result = train(model, config, tokenizer=byte_tokenizer())
    wall = time.perf_counter() - t0
    phase("training done")
    peak = torch.cuda.max_memory_allocated() if cuda else 0
    peaks = [peak] * world
    if world > 1:
        t = torch.tensor([float(peak)], device="cuda" if cuda else "cpu")
        gathered = [torch.zeros_like(t) for _ in range(world)]
        torch.distributed.all_gather(gathered, t)
        peaks = [int(x.item()) for x in gathered]
    if dist.is_main_process():
        timing = step_times(result.history, config.tokens_per_step(world))
        predicted = plan(
            count_model(cfg),
            PlanInput(
                gpus=world,
                micro_batch=args.micro_batch,
                seqlen=args.seqlen,
                mask_bytes=4,
                checkpointing=args.activation_checkpointing,
                reshard_after_forward=args.reshard_after_forward,
                engine=args.engine,
            ),
        )
        peak_plan = max(predicted["total"], predicted["startup"])
        line = json.dumps(
                {
                    "label": args.label,
                    "engine": args.engine,
                    "device": torch.cuda.get_device_name() if cuda else "cpu",
                    "score": forge.score,
                    "estimator": forge.estimator,
                    "activation_checkpointing": args.activation_checkpointing,
                    "reshard_after_forward": args.reshard_after_forward,
                    "model": args.model,
                    "hidden": cfg.hidden_size,
                    "layers": cfg.num_hidden_layers,
                    "world": world,
                    "seqlen": args.seqlen,
                    "micro_batch": args.micro_batch,
                    "steps": result.steps,
                    **timing,
                    "wall_s": round(wall, 1),
                    "peak_gib_per_rank": [round(p / 2**30, 2) for p in peaks],
                    "plan_gib": {k: round(v / 2**30, 2) for k, v in predicted.items()},
                    "plan_peak_gib": round(peak_plan / 2**30, 2),
                    "measured_over_plan": round(max(peaks) / peak_plan, 3) if cuda else None,
                    "final_loss": result.final_loss,
                }
            )
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")
    dist.shutdown()


if __name__ == "__main__":
    main()
