"""Prune the embedded SmolLM2-135M to 2:4 with SparseGPT, harden it, save it and compare perplexity.

Run from the repository root after ``./scripts/setup.sh``::

    .venv/bin/python examples/quickstart.py --out out/quickstart
"""

import argparse

import sfcompile
from sfcompile.eval.perplexity import perplexity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pattern", default="2:4")
    parser.add_argument("--method", default="sparsegpt", choices=["magnitude", "wanda", "sparsegpt"])
    parser.add_argument("--max-windows", type=int, default=32, help="wiki windows of 512 tokens to score")
    parser.add_argument("--out", default="out/quickstart")
    args = parser.parse_args()

    model, tok = sfcompile.load("smollm2-135m")
    dense_ppl = perplexity(model, tok, "wiki", seqlen=512, max_windows=args.max_windows)

    sites = sfcompile.discover(model, args.pattern)
    print(f"{len(sites.sites)} prunable sites, {len(sites.skipped)} skipped")
    sfcompile.sparsify(model, pattern=args.pattern, sites=sites)
    sfcompile.prune(model, method=args.method, calib="calib", tok=tok)
    sfcompile.harden(model)
    sparse_ppl = perplexity(model, tok, "wiki", seqlen=512, max_windows=args.max_windows)
    sfcompile.save(model, tok, args.out)
    print(f"wiki perplexity: dense {dense_ppl:.2f} -> {args.method} {args.pattern} {sparse_ppl:.2f}")


if __name__ == "__main__":
    main()
