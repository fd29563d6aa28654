"""The finite-difference Hutchinson estimators against the exact one on a real model (CPU is enough).

For each precision (fp32, bf16 autocast) and step ``fd_eps``, the three estimators run on the same Rademacher
probes at the same weights: "hvp" (exact Hessian-vector products by double backward, math attention), "fd"
(central differences, two extra forward+backward passes) and "fd_forward" (forward differences from the
gradient the training step already computed, one extra pass). Reported: the Spearman rank correlation of
each finite-difference diag(H) estimate with the exact one over the probed sites' entries, raw and after the
Kronecker smoothing the scores use (``ForgeConfig.hessian_smoothing="kron"``), and per probe averaged over
``--probes`` probes.

    python benchmarks/hessian_estimators.py --model smollm2-135m --layers 0,15,29 --tokens 256 \\
        --out benchmarks/results/hessian_estimators.json

The soft state is that of mid-tempering: every probed site's mask drawn uniform in [0, 1] (seeded),
hardness 0.5, so the effective weights are partly pruned, as when the trainer probes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import torch

import sfcompile
from sfcompile.eval.texts import calibration_windows
from sfcompile.masking.forge import kron_smooth
from sfcompile.masking.hutchinson import auto_fd_eps, estimate_diag, rng_state, spearman
from sfcompile.masking.state import dense_weight, masked_sites
from sfcompile.masking.tempering import sample_generator


def _entries(model, layers: list[int] | None):
    entries = masked_sites(model)
    if layers is None:
        return entries
    keep = {f".layers.{i}." for i in layers}
    return [e for e in entries if any(k in f".{e[0].name}" for k in keep)]


def _flat(diags, entries, smooth: bool) -> torch.Tensor:
    out = []
    for d, (_, _, soft) in zip(diags, entries):
        d = d.double()
        out.append((kron_smooth(d.clamp(min=0), soft.k_dim, soft.mask) if smooth else d).reshape(-1))
    return torch.cat(out)


def measure(model, entries, ids, autocast: bool, eps: float, probes: int) -> dict:
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if autocast else contextlib.nullcontext

    def loss_fn():
        with ctx():
            return model(ids, labels=ids, use_cache=False).loss

    weights = [dense_weight(m, s.param) for s, m, _ in entries]
    for p in model.parameters():
        p.grad = None
    rng = rng_state()
    loss_fn().backward()  # the training step's gradient (straight-through: dL/dW = dL/d(W ⊙ m_eff))
    base = [None if w.grad is None else w.grad.detach().clone() for w in weights]
    for p in model.parameters():
        p.grad = None
    rows, times = {}, {}
    sums = {}
    for p in range(probes):
        for est in ("hvp", "fd", "fd_forward"):
            gens = [sample_generator(0, p, i) for i in range(len(entries))]
            t0 = time.perf_counter()
            d = estimate_diag(model, entries, loss_fn, estimator=est, generators=gens, fd_eps=eps,
                              base_grads=base if est == "fd_forward" else None, rng=rng)
            times[est] = times.get(est, 0.0) + time.perf_counter() - t0
            sums[est] = d if est not in sums else [a + b for a, b in zip(sums[est], d)]
            if p == 0:
                rows[est] = d
    out = {"precision": "bf16 autocast" if autocast else "fp32", "fd_eps": eps, "probes": probes,
           "seconds": {k: round(v / probes, 2) for k, v in times.items()}}
    for est in ("fd", "fd_forward"):
        out[est] = {
            "spearman_one_probe": spearman(_flat(rows[est], entries, False), _flat(rows["hvp"], entries, False)),
            "spearman_one_probe_kron": spearman(_flat(rows[est], entries, True),
                                                _flat(rows["hvp"], entries, True)),
            f"spearman_mean_of_{probes}_kron": spearman(_flat(sums[est], entries, True),
                                                        _flat(sums["hvp"], entries, True)),
        }
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layers", default="0,15,29", help="decoder layers whose sites are probed ('all')")
    parser.add_argument("--tokens", type=int, default=256, help="tokens of calibration text in the loss")
    parser.add_argument("--probes", type=int, default=4)
    parser.add_argument("--eps", default="auto,1e-2,2e-2", help="fd_eps values ('auto': per precision)")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tok = sfcompile.load(args.model, dtype=torch.float32)
    sfcompile.sparsify(model, pattern="2:4")
    layers = None if args.layers == "all" else [int(x) for x in args.layers.split(",")]
    entries = _entries(model, layers)
    if not entries:
        raise SystemExit(f"--layers {args.layers}: no masked sites in those layers")
    g = torch.Generator().manual_seed(0)
    for _, _, soft in entries:
        soft.set_mask(torch.rand(soft.mask.shape, generator=g))
        soft.set_hardness(0.5)
    ids = calibration_windows(tok, "calib", n=1, seqlen=args.tokens, seed=0)
    model.train()
    results = []
    for prec in args.precisions.split(","):
        bf16 = prec == "bf16"
        for e in args.eps.split(","):
            eps = auto_fd_eps(torch.bfloat16 if bf16 else torch.float32) if e == "auto" else float(e)
            row = measure(model, entries, ids, bf16, eps, args.probes)
            row.update(model=args.model, sites=len(entries), tokens=args.tokens)
            results.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
