"""One device call: overhead benchmark, dense + SparseGPT perplexity, and a time-budgeted SparseForge run.

Runs on the H200 with everything it needs carried in (the GGUF in two pieces, calib/wiki as JSONL, the gguf
wheel); results land in $OUT. The training budget in tokens is computed from the measured step times so the
run (its schedule included) completes inside ``--train-seconds``.

    python3 benchmarks/train_h200.py --model /root/cache/smol.gguf --calib calib.jsonl --wiki wiki.jsonl \
        --train-seconds 200 --out $OUT
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def sh(cmd: list[str], log: Path) -> int:
    print("+", " ".join(cmd), flush=True)
    t = time.perf_counter()
    with log.open("a") as f:
        f.write("+ " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    print(f"  rc={rc} in {time.perf_counter() - t:.0f} s", flush=True)
    return rc


def baselines(args) -> None:
    """Dense and SparseGPT (128 × 512 calib windows, seed 0) perplexity on the whole wiki text, on CUDA."""
    import torch

    import sfcompile
    from sfcompile.eval.perplexity import perplexity
    from sfcompile.eval.texts import calibration_windows
    from sfcompile.masking.oneshot import prune

    model, tok = sfcompile.load(args.model, device="cuda")
    rows = {}
    with torch.no_grad():
        rows["dense"] = perplexity(model, tok, args.wiki, seqlen=args.seqlen, batch_size=16, progress=False)
        sfcompile.sparsify(model, pattern="2:4")
        calib = calibration_windows(tok, args.calib, n=128, seqlen=args.seqlen, seed=0)
        prune(model, "sparsegpt", calib, nsamples=128, seqlen=args.seqlen, progress=False)
        rows["sparsegpt"] = perplexity(
            model, tok, args.wiki, seqlen=args.seqlen, batch_size=16, progress=False
        )
    line = json.dumps({"text": "wiki (whole)", "seqlen": args.seqlen, **rows})
    print(line)
    (Path(args.out) / "baselines.json").write_text(line + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--calib", required=True)
    ap.add_argument("--wiki", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default="/root/cache/work")
    ap.add_argument("--train-seconds", type=float, default=200)
    ap.add_argument("--micro-batch", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--probe-every", type=int, default=5)
    ap.add_argument("--max-tokens", type=float, default=100e6)
    ap.add_argument("--baselines-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.baselines_only:
        return baselines(args)
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    py = sys.executable
    t0 = time.perf_counter()

    # 1. overhead: dense step vs soft masks + scoring, same model and batch
    sh(
        [
            py,
            "benchmarks/train_overhead.py",
            "--model",
            args.model,
            "--seqlen",
            str(args.seqlen),
            "--micro-batch",
            str(args.micro_batch),
            "--rounds",
            "5",
            "--out",
            str(out / "overhead.jsonl"),
        ],
        log,
    )
    over = json.loads((out / "overhead.jsonl").read_text().splitlines()[-1])
    med = over["median_s"]
    # a distillation step = teacher fwd + masked step (+ probe every P steps, + mask update every ~10-30)
    step_s = med["teacher"] + med["masked"] + med["probe"] / args.probe_every + med["mask_update"] / 10
    tokens_per_step = args.micro_batch * args.seqlen
    # leave room for the evaluations (6 × full wiki) and start-up
    steps = int(args.train_seconds / step_s)
    tokens = int(min(args.max_tokens, steps * tokens_per_step))
    steps = tokens // tokens_per_step
    print(f"step ≈ {step_s:.3f} s → {steps} steps, {tokens:,} tokens", flush=True)

    # 2. dense and SparseGPT one-shot, same harness (whole wiki text, seqlen 512), on the GPU. (The first
    # device run used `sfcompile prune`, which loads and prunes on the CPU: that step alone ate the budget.)
    sh(
        [
            py,
            __file__,
            "--baselines-only",
            "--model",
            args.model,
            "--calib",
            args.calib,
            "--wiki",
            args.wiki,
            "--out",
            str(out),
        ],
        log,
    )

    # 3. SparseForge training from dense: Hessian OBD scores (fd probes), SLoRB, KL distillation
    run = work / "run"
    rc = sh(
        [
            py,
            "-m",
            "sfcompile",
            "train",
            "--model",
            args.model,
            "--pattern",
            "2:4",
            "--tokens",
            str(tokens),
            "--data",
            args.calib,
            "--seqlen",
            str(args.seqlen),
            "--micro-batch",
            str(args.micro_batch),
            "--lr",
            "1e-4",
            "--min-lr",
            "1e-5",
            "--warmup",
            "0.05",
            "--kl-weight",
            "1",
            "--ce-weight",
            "1",
            "--forge",
            f"probe_every={args.probe_every}",
            "--forge",
            "hessian_ema=0.95",
            "--eval-text",
            args.wiki,
            "--eval-windows",
            "0",
            "--eval-every",
            str(max(1, steps // 5)),
            "--log-every",
            "10",
            "--out",
            str(run),
        ],
        log,
    )
    for name in ("log.jsonl", "summary.md", "curves.png", "train_config.json"):
        if (run / name).exists():
            (out / name).write_bytes((run / name).read_bytes())
    print(f"done rc={rc} in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
