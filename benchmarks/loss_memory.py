"""Memory and time of the training loss (CE + KL against the teacher) on a batch of logits, three ways:

``whole``  the loss as it was before the chunked rewrite (kept here as the baseline): ``F.cross_entropy`` on the
           shifted logits cast to fp32 in one piece (a copy of the logits, an fp32 copy, an fp32 log-softmax kept
           for backward), the KL chunked under activation checkpointing;
``twice``  ``distillation_loss(..., twice_differentiable=True)``: CE and KL chunked, each chunk recomputed in
           backward (what the exact Hessian probe uses);
``fused``  ``distillation_loss(...)``, the trainer's default: the gradient formed in the forward, chunk by chunk,
           into one logits-sized buffer (`sfcompile.train.losses._FusedLogitLoss`);
``kernel`` ``distillation_loss(..., kernel=True)`` (``TrainConfig.loss_kernel="triton"``): the same sums and
           gradient from one Triton kernel, two reads of each row (`sfcompile.train.logit_loss_kernel`; on the
           CPU it runs in Triton's interpreter, so time it on a GPU only).

Each variant runs forward + backward on the same random logits (B x T x V in ``--dtype``, a teacher's of the same
shape) in a fresh process, so one variant's peak cannot hide another's: on CUDA the peak is
``torch.cuda.max_memory_allocated`` above what the inputs hold; on CPU it is the process's peak resident set
above the resident set once the inputs exist (tensors this large are mmapped and given back when freed, so
the resident set follows live tensors). Time is the median of ``--reps`` forward + backward passes after one
warm-up, in the same process. Ratios are against ``whole`` from the same run.

    python benchmarks/loss_memory.py --batch 8 --seqlen 512 --vocab 49152 --dtype fp32          # CPU
    python benchmarks/loss_memory.py --batch 32 --seqlen 512 --vocab 49152 --dtype bf16 --device cuda
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from sfcompile.train.losses import LOGIT_CLAMP, LossWeights, distillation_loss

VARIANTS = ("whole", "twice", "fused", "kernel")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _old_kl_chunk(s, t, temperature):
    s = s.float().clamp(-LOGIT_CLAMP, LOGIT_CLAMP) / temperature
    t = t.float().clamp(-LOGIT_CLAMP, LOGIT_CLAMP) / temperature
    log_ps, log_pt = F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1)
    return (log_pt.exp() * (log_pt - log_ps)).sum()


def whole_loss(logits, ids, t_logits, weights, chunk=2048):
    """The loss before the chunked rewrite (commit e8dcfa9's sfcompile/train/losses.py)."""
    V = logits.shape[-1]
    flat = logits[:, :-1].reshape(-1, V)
    ce = F.cross_entropy(flat.float(), ids[:, 1:].reshape(-1), ignore_index=-100)
    t = t_logits[:, :-1].reshape(-1, V)
    kl = flat.new_zeros((), dtype=torch.float32)
    for i in range(0, flat.shape[0], chunk):
        kl = kl + checkpoint(_old_kl_chunk, flat[i : i + chunk], t[i : i + chunk], weights.kl_temperature,
                             use_reentrant=False)
    kl = kl / flat.shape[0] * weights.kl_temperature**2
    return weights.ce * ce + weights.kl * kl


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def run_variant(args) -> dict:
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    g = torch.Generator(device="cpu").manual_seed(0)
    shape = (args.batch, args.seqlen, args.vocab)
    base = torch.randn(shape, generator=g).mul_(3).to(device, dtype)
    teacher = torch.randn(shape, generator=g).mul_(3).to(device, dtype)
    ids = torch.randint(0, args.vocab, shape[:2], generator=g).to(device)
    weights = LossWeights(ce=1.0, kl=1.0, kl_temperature=2.0)

    def step():
        logits = base.detach().requires_grad_(True)  # a leaf: its .grad is the logits' gradient, as in training
        if args.variant == "whole":
            loss = whole_loss(logits, ids, teacher, weights)
        else:
            out = SimpleNamespace(logits=logits)
            loss, _ = distillation_loss(out, ids, weights, SimpleNamespace(logits=teacher),
                                        twice_differentiable=args.variant == "twice",
                                        kernel=args.variant == "kernel")
        loss.backward()
        value, grad_norm = float(loss), float(logits.grad.float().norm())
        del logits
        return value, grad_norm

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        held = torch.cuda.memory_allocated()
    else:
        held = _rss_bytes()
    value, grad_norm = step()
    peak = (torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    times = []
    for _ in range(args.reps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {"variant": args.variant, "peak_extra_mib": (peak - held) / 2**20, "seconds": statistics.median(times),
            "loss": value, "grad_norm": grad_norm, "logits_mib": base.numel() * base.element_size() / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--variants", default=",".join(v for v in VARIANTS if v != "kernel"),
                    help=f"some of {','.join(VARIANTS)} (kernel: on a GPU; on the CPU it is interpreted)")
    ap.add_argument("--variant", help=argparse.SUPPRESS)  # one variant, in a child process
    ap.add_argument("--out", help="append the rows (JSON lines) to this file")
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    rows = []
    for name in args.variants.split(","):
        if name not in VARIANTS:
            raise SystemExit(f"--variants: {name!r} is not one of {VARIANTS}")
        cmd = [sys.executable, __file__, *sys.argv[1:], "--variant", name]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    base = next((r for r in rows if r["variant"] == "whole"), rows[0])
    for r in rows:
        r.update(batch=args.batch, seqlen=args.seqlen, vocab=args.vocab, dtype=args.dtype, device=args.device,
                 memory_vs_whole=r["peak_extra_mib"] / base["peak_extra_mib"],
                 speed_vs_whole=base["seconds"] / r["seconds"])
        print(f"{r['variant']:6s} peak +{r['peak_extra_mib']:9.1f} MiB ({r['memory_vs_whole']:.2f}x)  "
              f"{r['seconds'] * 1e3:8.1f} ms ({r['speed_vs_whole']:.2f}x faster)  loss {r['loss']:.6f}  "
              f"grad norm {r['grad_norm']:.6e}  (logits {r['logits_mib']:.0f} MiB)")
    if args.out:
        with open(args.out, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
