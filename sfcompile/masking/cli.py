"""`sfcompile prune`: load a model, sparsify it, prune it one-shot, harden it and save it.

    sfcompile prune --model smollm2-135m --method sparsegpt --pattern 2:4 --eval-ppl wiki --out out/

Exit codes: 0 done; 2 bad input (unknown pattern/method, bad numbers, missing model or text). The output
folder is written atomically by ``sfcompile.save``: it appears complete or not at all.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sfcompile.patterns import PatternError, parse_pattern

EXIT_OK, EXIT_BAD_INPUT = 0, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sfcompile.masking.oneshot import METHODS

    parser.add_argument("--model", required=True, help="alias (smollm2-135m, ...), HF folder or .gguf file")
    parser.add_argument("--method", default="sparsegpt", choices=sorted(METHODS),
                        help="pruner (default sparsegpt)")
    parser.add_argument("--pattern", default="2:4",
                        help='"2:4", "4:8", "block16", "unstructured:0.5" (default 2:4)')
    parser.add_argument("--calib", default="calib", help="calibration text name or file (default: calib)")
    parser.add_argument("--nsamples", type=int, default=128, help="calibration windows (default 128)")
    parser.add_argument("--seqlen", type=int, default=512,
                        help="tokens per calibration/eval window (default 512)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed for picking calibration windows (default 0)")
    parser.add_argument("--eval-ppl", metavar="TEXT", default=None,
                        help="also report dense and pruned perplexity on this text (e.g. wiki)")
    parser.add_argument("--max-windows", type=int, default=None,
                        help="evaluate perplexity on only the first N windows (default: all)")
    parser.add_argument("--device", default="cpu",
                        help="where to prune and evaluate: cpu, cuda, cuda:N or auto (cuda when available); "
                             "default cpu")
    parser.add_argument("--out", required=True, help="output folder (written atomically)")
    parser.add_argument("--packed", action="store_true",
                        help="write the weights compressed: 2:4 / block-16 sites packed, no model.safetensors "
                             "(sfcompile.load unpacks them)")


def _bad(msg: str) -> int:
    print(f"sfcompile prune: error: {msg}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _check(args) -> str | None:
    """Everything that can be checked before loading the model; returns an error message or None."""
    try:
        parse_pattern(args.pattern)
    except PatternError as e:
        return str(e)
    for name in ("nsamples", "seqlen"):
        value = getattr(args, name)
        if value < 1:
            return f"--{name} {value} is not valid: it must be a positive integer (e.g. --{name} 128)"
    if args.max_windows is not None and args.max_windows < 1:
        return f"--max-windows {args.max_windows} is not valid: it must be a positive integer"
    try:
        _device(args.device)
    except ValueError as e:
        return str(e)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        return f"--out {out} exists and is not a folder; pass a folder path"
    return None


def _device(name: str):
    """The torch device for ``--device`` (ValueError naming the value when it cannot be used here)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device; use cpu, cuda, cuda:N or auto") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r}: only cpu and cuda are supported")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name!r}: CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def _ppl(model, tok, text: str, args) -> float:
    import torch

    from sfcompile.eval.perplexity import perplexity

    with torch.no_grad():
        return float(perplexity(model, tok, text, seqlen=args.seqlen, max_windows=args.max_windows))


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(args) -> int:
    import sfcompile
    from sfcompile.masking.oneshot import prune

    problem = _check(args)
    if problem:
        return _bad(problem)
    try:
        model, tok = sfcompile.load(args.model, device=_device(args.device))
    except (ValueError, FileNotFoundError) as e:
        return _bad(str(e))

    dense_ppl = _ppl(model, tok, args.eval_ppl, args) if args.eval_ppl else None
    try:
        sfcompile.sparsify(model, pattern=args.pattern)
        calib = None
        if args.method != "magnitude":
            from sfcompile.eval.texts import calibration_windows

            calib = calibration_windows(tok, args.calib, n=args.nsamples, seqlen=args.seqlen, seed=args.seed)
        report = prune(model, args.method, calib, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed)
    except (ValueError, FileNotFoundError) as e:
        return _bad(str(e))
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    sfcompile.harden(model)
    start = time.perf_counter()
    folder = sfcompile.save(model, tok, args.out, packed=args.packed)
    save_s = time.perf_counter() - start
    pruned_ppl = _ppl(model, tok, args.eval_ppl, args) if args.eval_ppl else None

    header = ("model", "method", "pattern", "sites", "sparsity", "prune s", "save s")
    row = (args.model, report.method, report.pattern, str(report.sites), f"{report.sparsity:.2%}",
           f"{report.seconds:.1f}", f"{save_s:.1f}")
    if args.eval_ppl:
        windows = "all" if args.max_windows is None else str(args.max_windows)
        header += (f"ppl dense ({args.eval_ppl})", "ppl pruned", "eval windows")
        row += (f"{dense_ppl:.2f}", f"{pruned_ppl:.2f}", windows)
    print(_table([header, row]))
    print(f"saved to {folder}")
    return EXIT_OK
