"""Perplexity of a training run's latest checkpoint (e.g. a run paused by SIGTERM), hardened, same harness.

    python benchmarks/eval_checkpoint.py --run /work/runs/cpu_a --text wiki --seqlen 512 --max-windows 32

The model is rebuilt as `sfcompile train --resume` does (load, sparsify, the forge's extra parameters), the
checkpoint's state is loaded, the masks are projected to the exact pattern (`harden`), and the perplexity is
measured with `sfcompile.eval.perplexity` (the harness of the one-shot table).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import sfcompile
from sfcompile.eval.perplexity import perplexity
from sfcompile.train.checkpoint import latest_checkpoint, load_checkpoint
from sfcompile.train.config import TrainConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--text", default="wiki")
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--max-windows", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Path(args.run)
    spec = json.loads((run / "run.json").read_text())
    config = TrainConfig.from_dict(spec["config"])
    model, tok = sfcompile.load(spec["model"])
    sfcompile.sparsify(model, pattern=spec["pattern"])
    if config.forge is not None:
        from sfcompile.masking.forge import SparseForge

        SparseForge(model, config.forge, total_steps=config.total_steps())  # creates SLoRB / statistics
    ckpt = latest_checkpoint(run)
    model_state, state = load_checkpoint(ckpt)
    model.load_state_dict(model_state)
    sfcompile.harden(model)
    with torch.no_grad():
        ppl = perplexity(model, tok, args.text, seqlen=args.seqlen, max_windows=args.max_windows)
    row = {
        "run": str(run),
        "checkpoint": ckpt.name,
        "step": state["step"],
        "tokens": state["tokens"],
        "text": args.text,
        "seqlen": args.seqlen,
        "max_windows": args.max_windows,
        "ppl": ppl,
    }
    print(json.dumps(row))


if __name__ == "__main__":
    main()
