"""Compiled SparseForge training through finalisation: how many graphs, how long the first step, steps/s.

Random weights (speed does not depend on them), a byte-level tokenizer (no files), magnitude init (no
calibration pass), the dense teacher, Hessian probes and mask updates every 10 steps, log every step:

    python benchmarks/train_compiled.py --data corpus.jsonl --model smollm2-135m --steps 300 \\
        --micro-batch 32 --seqlen 512 --out run

Prints one JSON line: graphs compiled (Dynamo's unique graphs: one for the student, one for the teacher when
nothing recompiles), the first step's seconds (compiles included), median step time by phase.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from torch._dynamo.utils import counters
from transformers import AutoConfig, AutoModelForCausalLM

import sfcompile
from sfcompile.masking.config import ForgeConfig
from sfcompile.masking.schedule import TemperingSchedule
from sfcompile.train.config import TrainConfig
from sfcompile.train.data import byte_tokenizer
from sfcompile.train.loop import train


def phase_times(log: Path) -> dict[str, dict[str, float]]:
    """Median seconds between consecutive logged steps, by phase (hardness 1 / window / 0, update or not)."""
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "train"]
    out: dict[str, list[float]] = {}
    for prev, row in zip(steps, steps[1:]):
        h = row["hardness"]
        key = "soft" if h == 1 else ("hard" if h == 0 else "hardening")
        key += "+update" if row["mask_update"] else ""
        out.setdefault(key, []).append(row["time"] - prev["time"])
    return {k: {"steps": len(v), "median_s": statistics.median(v)} for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="text or JSONL to train on")
    ap.add_argument("--model", default="smollm2-135m", help='a model alias, or "tiny" (a 2-layer LLaMA)')
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--micro-batch", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--out", default="train_compiled_run")
    args = ap.parse_args()
    if args.model == "tiny":
        cfg = AutoConfig.for_model("llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=257)
        model = AutoModelForCausalLM.from_config(cfg)
    else:
        model, _ = sfcompile.load(args.model, weights="random")
    sfcompile.sparsify(model, "2:4")
    config = TrainConfig(tokens=args.steps * args.micro_batch * args.seqlen, data=args.data, seqlen=args.seqlen,
                         micro_batch=args.micro_batch, lr=1e-3, init="magnitude", compile=True, out=args.out,
                         eval_text=args.data, eval_windows=2, log_every=1, harden=False,
                         forge=ForgeConfig(schedule=TemperingSchedule(period_early=10, period_late=10)))
    t0 = time.perf_counter()
    result = train(model, config, tokenizer=byte_tokenizer())
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (Path(args.out) / "log.jsonl").read_text().splitlines()]
    start = [r for r in rows if r["kind"] == "info"][-1]["time"]
    first = next(r for r in rows if r["kind"] == "train")["time"] - start
    print(json.dumps({"model": args.model, "steps": result.steps, "wall_s": wall, "compiled": result.compiled,
                      "graphs": counters["stats"]["unique_graphs"], "first_step_s": first,
                      "phases": phase_times(Path(args.out) / "log.jsonl")}))


if __name__ == "__main__":
    main()
