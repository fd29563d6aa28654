"""``sfcompile eval``: perplexity on named texts / files and zero-shot tasks, with a summary table.

    sfcompile eval --model out/ --ppl wiki,calib --seqlen 512 --max-windows 64
    sfcompile eval --model smollm2-135m --tasks piqa,arc_easy --limit 200 --json results.json

Exit codes: 0 success; 2 bad input (unknown model, text, task, device or value: nothing is evaluated);
an error raised during evaluation propagates (exit 1 with the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

EXIT_OK = 0
EXIT_BAD_INPUT = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="local HF folder, .gguf file or alias (e.g. smollm2-135m)"
    )
    parser.add_argument(
        "--ppl",
        default=None,
        help="comma-separated texts for perplexity: named (wiki, calib, lambada, coqa, drop, sciq, "
        "shakespeare, kjv) or .txt/.jsonl paths (default: wiki when --tasks is not given)",
    )
    parser.add_argument("--seqlen", type=int, default=512, help="perplexity window length (default 512)")
    parser.add_argument(
        "--max-windows", type=int, default=None, help="score only the first N windows per text"
    )
    parser.add_argument(
        "--tasks",
        default=None,
        help="comma-separated zero-shot tasks (hellaswag, piqa, arc_easy, arc_challenge, winogrande, "
        "boolq, rte, openbookqa) or 'all'; needs lm-eval",
    )
    parser.add_argument("--limit", type=int, default=None, help="zero-shot: first N documents per task")
    parser.add_argument(
        "--batch-size", type=int, default=1, help="windows / requests per forward (default 1)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--dtype", default=None, help="float32, bfloat16 or float16 (default: the checkpoint's)"
    )
    parser.add_argument(
        "--json", dest="json_out", default=None, help="also write the results to this JSON file"
    )


def _bad(msg: str) -> int:
    print(f"sfcompile eval: error: {msg}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _validate(args) -> list[str] | str:
    """The perplexity texts to evaluate, or an error message."""
    from sfcompile.eval.texts import NAMED
    from sfcompile.eval.zeroshot import parse_tasks

    for name in ("seqlen", "max_windows", "limit", "batch_size"):
        v = getattr(args, name)
        if v is not None and v < (2 if name == "seqlen" else 1):
            return f"--{name.replace('_', '-')} must be >= {2 if name == 'seqlen' else 1}, got {v}"
    ppl = [t.strip() for t in (args.ppl or "").split(",") if t.strip()]
    if not ppl and not args.tasks:
        ppl = ["wiki"]
    for t in ppl:
        if t not in NAMED and not Path(t).expanduser().is_file():
            return (
                f"--ppl {t!r} is neither a named text ({', '.join(NAMED)}) nor an existing .txt/.jsonl file"
            )
    if args.tasks:
        try:
            parse_tasks(args.tasks)
        except ValueError as e:
            return str(e)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return f"--device {args.device!r} but no CUDA device is available; use --device cpu"
    elif args.device != "cpu":
        return f"--device {args.device!r} is not supported; use cpu or cuda"
    return ppl


def _table(rows: list[tuple[str, str, str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(args) -> int:
    ppl_texts = _validate(args)
    if isinstance(ppl_texts, str):
        return _bad(ppl_texts)

    from sfcompile.eval.perplexity import token_windows, windows_perplexity
    from sfcompile.eval.zeroshot import TASK_METRIC, zeroshot
    from sfcompile.models import load

    try:
        model, tok = load(args.model, dtype=args.dtype, device=args.device)
    except (FileNotFoundError, ValueError, ImportError) as e:
        return _bad(str(e))
    if tok is None:
        return _bad(f"model {args.model!r} has no tokenizer available offline; pass a folder that holds one")

    results: dict = {"model": str(args.model), "seqlen": args.seqlen, "ppl": {}, "zeroshot": {}}
    rows = [("metric", "value", "detail")]
    start = time.time()
    for name in ppl_texts:
        t0 = time.time()
        try:
            windows = token_windows(tok, name, args.seqlen, args.max_windows)
        except (FileNotFoundError, ValueError) as e:
            return _bad(str(e))
        value = windows_perplexity(model, windows, batch_size=args.batch_size)
        secs = time.time() - t0
        results["ppl"][name] = {
            "ppl": value,
            "windows": len(windows),
            "tokens": windows.numel(),
            "seconds": secs,
        }
        rows.append(
            (f"ppl {name}", f"{value:.3f}", f"{len(windows)} windows x {args.seqlen} tokens, {secs:.0f} s")
        )
    if args.tasks:
        scores = zeroshot(model, tok, args.tasks, limit=args.limit, batch_size=args.batch_size)
        results["zeroshot"] = scores
        results["zeroshot_limit"] = args.limit
        for task, value in scores.items():
            detail = TASK_METRIC.get(task, "mean of the tasks")
            if args.limit and task != "mean":
                detail += f", first {args.limit} docs"
            rows.append((task, f"{value:.4f}", detail))
    results["seconds"] = time.time() - start

    print(f"\nsfcompile eval: {args.model}")
    print(_table(rows))
    if args.json_out:
        out = Path(args.json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=2) + "\n")
        os.replace(tmp, out)
        print(f"results written to {out}")
    return EXIT_OK


def main(argv=None) -> int:
    """Standalone entry (``python -m sfcompile.eval.cli``); the ``sfcompile`` console script wires ``run``."""
    parser = argparse.ArgumentParser(prog="sfcompile eval", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
