"""One-shot pruning baselines on the embedded model: perplexity and pruner wall time.

SmolLM2-135M, perplexity on ``wiki`` at seqlen 512; calibration: 128 windows of 512 tokens of ``calib``
(seed 0) — the standard SparseGPT/Wanda protocol. Rows: dense, then magnitude / Wanda / SparseGPT at each
pattern. Each row is appended to a JSON-lines file as soon as it is measured (rows already in the file are
skipped, so an interrupted run resumes), and the markdown table is printed at the end.

    python benchmarks/oneshot.py --max-windows 32 --out benchmarks/results/oneshot.jsonl

Rows are independent: ``--patterns 4:8 --skip-dense --out other.jsonl`` measures a subset (e.g. in parallel
processes with ``--threads 1``); concatenate the JSON-lines files and ``--table FILE`` prints the table.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import sfcompile
from sfcompile.eval.perplexity import perplexity
from sfcompile.eval.texts import calibration_windows
from sfcompile.masking.oneshot import prune

PATTERNS = ("2:4", "4:8", "unstructured:0.5", "block16")
METHODS = ("magnitude", "wanda", "sparsegpt", "admm")


def _load_rows(path: Path) -> dict[tuple[str, str], dict]:
    rows = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                rows[(r["pattern"], r["method"])] = r
    return rows


def _append(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def table(rows: dict[tuple[str, str], dict]) -> str:
    dense = rows.get(("dense", "dense"))
    lines = ["| pattern | method | wiki PPL | pruner wall time (s) |", "|---|---|---|---|"]
    if dense:
        lines.append(f"| dense | — | {dense['ppl']:.2f} | — |")
    for pattern in PATTERNS:
        for method in METHODS:
            r = rows.get((pattern, method))
            if r:
                lines.append(f"| {pattern} | {method} | {r['ppl']:.2f} | {r['prune_s']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--text", default="wiki")
    ap.add_argument("--calib", default="calib")
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--max-windows", type=int, default=None, help="perplexity on the first N windows only")
    ap.add_argument("--patterns", nargs="+", default=list(PATTERNS))
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--out", default="benchmarks/results/oneshot.jsonl")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--skip-dense", action="store_true", help="do not measure the dense row")
    ap.add_argument("--table", metavar="FILE", nargs="+", help="only print the table of these results files")
    args = ap.parse_args()
    if args.table:
        rows = {}
        for f in args.table:
            rows.update(_load_rows(Path(f)))
        print(table(rows))
        return
    if args.threads:
        torch.set_num_threads(args.threads)

    out = Path(args.out)
    rows = _load_rows(out)
    common = {"model": args.model, "text": args.text, "seqlen": args.seqlen, "max_windows": args.max_windows,
              "nsamples": args.nsamples, "calib": args.calib, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "machine": platform.machine()}

    def ppl(model, tok) -> float:
        with torch.no_grad():
            return float(perplexity(model, tok, args.text, seqlen=args.seqlen, max_windows=args.max_windows,
                                    progress=False))

    model, tok = sfcompile.load(args.model)
    if ("dense", "dense") not in rows and not args.skip_dense:
        start = time.perf_counter()
        value = ppl(model, tok)
        rows[("dense", "dense")] = row = {**common, "pattern": "dense", "method": "dense", "ppl": value,
                                          "eval_s": time.perf_counter() - start, "prune_s": 0.0}
        _append(out, row)
    windows = calibration_windows(tok, args.calib, n=args.nsamples, seqlen=args.seqlen, seed=0)

    for pattern in args.patterns:
        for method in args.methods:
            if (pattern, method) in rows:
                continue
            model, tok = sfcompile.load(args.model)
            sfcompile.sparsify(model, pattern=pattern)
            report = prune(model, method, windows, nsamples=args.nsamples, seqlen=args.seqlen, progress=False)
            sfcompile.harden(model)
            start = time.perf_counter()
            value = ppl(model, tok)
            rows[(pattern, method)] = row = {**common, "pattern": pattern, "method": method, "ppl": value,
                                             "prune_s": report.seconds, "eval_s": time.perf_counter() - start,
                                             "sparsity": report.sparsity, "sites": report.sites}
            _append(out, row)
    print(table(rows))


if __name__ == "__main__":
    main()
