"""How many x strips a block-16 prefill kernel could skip if it shared each strip among R block rows.

The argument in benchmarks/README.md ("Why block-16 prefill stays below dense") assumes each block row keeps
its tiles independently: a strip (16 columns of x) is then empty for all R rows of a 16R-wide output tile
with chance 2^-R, and such a kernel skips almost nothing. Activation-aware pruning (Wanda, SparseGPT, ADMM,
Hessian scores) weighs every column by its input's energy, so block rows may agree on which strips to drop.
This measures it on a real model's one-shot block-16 masks:

    python benchmarks/block16_alignment.py --method wanda --rows 8
    python benchmarks/block16_alignment.py --method sparsegpt --rows 8 --nsamples 32

For each site it prints the share of (group, strip) pairs that no row of the group keeps: in the weight's own
row order, and after a greedy grouping of block rows by their kept strips (a kernel may permute output rows
and write them back in place). The share is the fraction of the work a strip-sharing kernel skips; 50% is
the most it can be at 50% density (the rows agree perfectly), ~0.4% the independent case at R = 8.
"""

from __future__ import annotations

import argparse
import json

import torch


def kept_tiles(w: torch.Tensor) -> torch.Tensor:
    """(N/16, K/16) bool: which 16x16 tiles of W (N, K) hold a non-zero."""
    n, k = w.shape
    return w.reshape(n // 16, 16, k // 16, 16).ne(0).any(dim=3).any(dim=1)


def skipped_share(keep: torch.Tensor, groups: list[list[int]]) -> float:
    """The share of (group, strip) pairs kept by no row of the group, over all groups' strips."""
    empty = sum(int((~keep[g].any(dim=0)).sum()) for g in groups)
    return empty / (len(groups) * keep.shape[1])


def greedy_groups(keep: torch.Tensor, rows: int) -> list[list[int]]:
    """Block rows in groups of ``rows``: each group starts from the free row that keeps the most strips
    others keep least of, then adds the free row that grows the group's union of kept strips the least."""
    free = list(range(keep.shape[0]))
    k = keep.float()
    groups = []
    while free:
        first = max(free, key=lambda r: (k[r] * (1 - k[free].mean(0))).sum().item())
        group, union = [first], keep[first].clone()
        free.remove(first)
        while len(group) < rows and free:
            best = min(free, key=lambda r: int((union | keep[r]).sum()))
            group.append(best)
            union |= keep[best]
            free.remove(best)
        groups.append(group)
    return groups


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--method", default="wanda", help="a one-shot method of sfcompile.prune")
    ap.add_argument("--rows", type=int, default=8, help="block rows sharing each x strip (R)")
    ap.add_argument("--nsamples", type=int, default=32, help="calibration windows")
    ap.add_argument("--out", default=None, help="write the per-site rows as JSON lines here")
    args = ap.parse_args(argv)

    import sfcompile

    model, tok = sfcompile.load(args.model)
    sfcompile.sparsify(model, pattern="block16")
    sfcompile.prune(model, args.method, calib="calib", tok=tok, nsamples=args.nsamples, progress=False)
    sfcompile.harden(model)
    params = dict(model.named_parameters())
    rows_out, natural, grouped, weights = [], 0.0, 0.0, 0
    torch.manual_seed(0)
    for site in sfcompile.discover(model, sfcompile.parse_pattern("block16")).sites:
        w = params[site.name].detach()
        w = w if site.k_dim in (-1, w.dim() - 1) else w.T
        keep = kept_tiles(w)
        n_rows = keep.shape[0] // args.rows * args.rows   # whole groups only
        keep = keep[:n_rows]
        order = [list(range(i, i + args.rows)) for i in range(0, n_rows, args.rows)]
        shuffled = torch.stack([row[torch.randperm(keep.shape[1])] for row in keep])   # rows independent
        row = {"site": site.name, "shape": list(w.shape), "density": round(keep.float().mean().item(), 4),
               "natural": skipped_share(keep, order), "greedy": skipped_share(keep, greedy_groups(keep, args.rows)),
               "independent": skipped_share(shuffled, greedy_groups(shuffled, args.rows))}
        rows_out.append(row)
        natural += row["natural"] * w.numel()
        grouped += row["greedy"] * w.numel()
        weights += w.numel()
        print(f"{site.name:45s} {str(tuple(w.shape)):14s} density {row['density']:.3f}  skippable: row order "
              f"{row['natural']:6.1%}  grouped {row['greedy']:6.1%}  (rows made independent, grouped: "
              f"{row['independent']:6.1%})")
    print(f"weighted by site size, R = {args.rows}, {args.method} masks: row order {natural / weights:.1%}, "
          f"grouped {grouped / weights:.1%}")
    if args.out:
        with open(args.out, "w") as f:
            for row in rows_out:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
