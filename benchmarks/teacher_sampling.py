"""Throughput of sampling training text from the teacher (``data="teacher"``, ``sfcompile.train.data``).

Times ``sample_sequences`` on a SmolLM2-135M-shaped model (random weights: the speed of sampling does not
depend on the values) for each sampler (``dynamic``: `generate` with transformers' default cache, grown every
step; ``static``: `generate` with a cache allocated once, and on CUDA transformers compiles the decoding step;
``packed``: sfcompile's own decode loop, `sfcompile.train.sampler`; ``packed-graph``: the same, its decoding
step captured in a CUDA graph, one graph per window of the K/V buffer: ``packed-graph/W`` reads it in W windows,
``sampler.GRAPH_WINDOWS`` by default, ``/1`` the whole buffer at every step; ``packed-graph@triton``: its
decoding attention by sfcompile's Triton kernel, which reads only the filled positions) with the teacher in fp32,
under bf16 autocast (``+bf16``: the trainer's default on CUDA, ``TrainConfig.teacher_data_precision="auto"``)
and as a bf16 copy of the weights (``+half``: the KV cache in bf16 too). Each variant runs ``--reps`` batches
of ``--batch`` sequences of ``--seqlen`` tokens; the first batch of a variant (compiles included) is reported
apart from the steady ones. Variants that the remaining ``--budget-s`` cannot hold are recorded as skipped.

Measured on the H200 (benchmarks/README.md): at 1024 x 512 (fifteenth session) dynamic+bf16 31.5k tokens/s,
dynamic 13.3k, static 9.2k, static+bf16 fails (the static cache is allocated in fp32); at 2048 x 512 (twentieth)
dynamic+half 72.8k, packed+half 87.3k, packed-graph+half 110.0k (the trainer's default on CUDA); at 2048 x 512
(twenty-second, one window, after the K/V dtype fix) packed-graph+bf16 97.7k, packed-graph+half 109.6k.

    python benchmarks/teacher_sampling.py --batch 1024 --seqlen 512 --reps 2 --out sampling.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

import sfcompile
from sfcompile.train import sampler
from sfcompile.train.data import sample_sequences


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--prompt", type=int, default=5, help="prompt tokens per sequence (BOS + 4, as the trainer)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--variants", default="dynamic+half,packed+half,packed-graph+half,dynamic+bf16,packed+bf16",
                    help="sampler (dynamic, static, packed, packed-graph[/windows][@triton]) [+bf16 autocast | "
                         "+half: bf16 weights]")
    ap.add_argument("--budget-s", type=float, default=280)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    t_start = time.perf_counter()
    model, _ = sfcompile.load(args.model, weights="random", device=args.device)
    model.eval().requires_grad_(False)
    vocab = model.config.vocab_size
    new = args.seqlen - args.prompt
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    per_batch_guess = None
    for variant in args.variants.split(","):
        cache, _, amp = variant.partition("+")
        if amp not in ("", "bf16", "half"):
            raise SystemExit(f"variant {variant!r}: the suffix must be +bf16 or +half")
        cache, _, attention = cache.partition("@")
        if attention not in ("", "triton") or (attention and not cache.startswith("packed-graph")):
            raise SystemExit(f"variant {variant!r}: @triton goes with packed-graph only")
        attention = attention or "sdpa"
        cache, _, windows = cache.partition("/")
        if windows and (cache != "packed-graph" or not windows.isdigit() or int(windows) < 1):
            raise SystemExit(f"variant {variant!r}: /W (windows >= 1) goes with packed-graph only")
        windows = int(windows) if windows else sampler.GRAPH_WINDOWS
        left = args.budget_s - (time.perf_counter() - t_start)
        if per_batch_guess is not None and left < per_batch_guess * (args.reps + 1):
            _emit(args.out, {"variant": variant, "skipped": f"out of time ({left:.0f} s left)"})
            continue
        teacher = copy.deepcopy(model).to(torch.bfloat16) if amp == "half" else model
        times, failed = [], False
        for rep in range(args.reps):
            g = torch.Generator(device="cpu").manual_seed(rep)
            ids = torch.randint(0, vocab, (args.batch, args.prompt), generator=g).to(args.device)
            torch.manual_seed(rep)
            sync()
            t = time.perf_counter()
            try:
                seqs = sample_sequences(teacher, ids, new, 1.0, 0, kv_cache=cache, bf16=amp == "bf16",
                                        windows=windows, attention=attention)
            except Exception as e:  # recorded, and the next variant still runs
                _emit(args.out, {"variant": variant, "error": f"{type(e).__name__}: {e}"[:2000]})
                failed = True
                break
            sync()
            times.append(time.perf_counter() - t)
            if tuple(seqs.shape) != (args.batch, args.seqlen):
                raise SystemExit(f"{variant}: got {tuple(seqs.shape)}, expected {(args.batch, args.seqlen)}")
            if time.perf_counter() - t_start > args.budget_s:
                break
        if failed or not times:
            continue
        tokens = args.batch * args.seqlen
        steady = times[1:] or times
        row = {"variant": variant, "windows": windows, "attention": attention, "batch": args.batch,
               "seqlen": args.seqlen,
               "first_s": times[0],
               "steady_s": sum(steady) / len(steady), "steady_tok_s": tokens * len(steady) / sum(steady),
               "reps": len(times), "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
               "torch": torch.__version__}
        _emit(args.out, row)
        per_batch_guess = max(per_batch_guess or 0.0, row["steady_s"])


def _emit(path: Path, row: dict) -> None:
    print(json.dumps(row), flush=True)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
