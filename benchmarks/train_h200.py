"""One device call: SmolLM2-135M 2:4 recovery on an H200 — baselines, LR choice, the main run, zero-shot, ablations.

Everything runs in one process on the GPU, in priority order, each phase appending one JSON line to
``$OUT/results.jsonl`` as soon as it finishes (a call cut short keeps what it measured); a phase that the
remaining time (``--budget-s``) cannot hold is recorded as skipped, never silently dropped.

The training text is ``--calib`` minus held-out documents (every n-th one) (``--holdout-docs``): the LR is chosen
on that held-out text, never on ``wiki``, which stays the evaluation text of every reported number.

1. baselines: dense and SparseGPT one-shot 2:4 (128 × 512 calibration windows of the training text, seed 0)
   perplexity on the whole ``wiki`` text (seqlen 512) — the same harness as every trained model below;
2. LR choice (``--lrs``): a short run (``--sweep-tokens``) per LR from the same SparseGPT masks; the LR with
   the lowest held-out perplexity is the main run's (each row also records its wiki perplexity);
3. the main run: SparseForge from the SparseGPT masks (``init="keep"``): Hessian-OBD scores (finite-difference
   Hutchinson probes, Kronecker-smoothed), hard forward from the first step with mask exploration until
   ``finalize_at``, SLoRB, CE + KL distillation from the dense teacher; wiki perplexity every ``--evals`` points
   (the perplexity-vs-tokens curve);
4. zero-shot (lm-eval, the eight tasks, ``--zs-limit`` documents each) for ``--zs-models`` of dense,
   sparsegpt and the main run's model;
5. ablations at ``--abl-tokens`` each (``--ablations``), all from the same SparseGPT masks: the full recipe, fixed
   masks (no forge), magnitude instead of Hessian scores, raw per-entry Hessian (no smoothing), no SLoRB,
   + SquareHead, the Hessian probe by forward differences ("fd_forward", which the default estimator "auto"
   runs at grad_accum 1) and by central differences ("fd_central": estimator "fd"), training on
   teacher-generated text instead of the training text, and the pruned weights
   restored to their dense values before training (SparseGPT leaves them at 0, where an OBD score is 0), and
   distillation alone (no cross-entropy on the training text).

    python3 benchmarks/train_h200.py --model /root/cache/smol.gguf --calib calib.jsonl --wiki wiki.jsonl \
        --out $OUT --budget-s 540
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch


class Budget:
    def __init__(self, seconds: float):
        self.t0, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def emit(out: Path, row: dict) -> None:
    line = json.dumps(row)
    print(line, flush=True)
    with (out / "results.jsonl").open("a") as f:
        f.write(line + "\n")


def main_settings(items: list[str]) -> dict:
    """``--main-set FIELD=VALUE`` items as TrainConfig keyword arguments; an unknown field is refused by name."""
    import dataclasses

    from sfcompile.train.config import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"--main-set {item!r}: expected FIELD=VALUE with FIELD a TrainConfig field "
                             f"(e.g. kl_temperature=1); known: {', '.join(sorted(fields))}")
        if key in OWN_FLAGS:
            raise SystemExit(f"--main-set {item!r}: {key} has its own flag here, {OWN_FLAGS[key]}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


# TrainConfig fields the main run takes from this script's own flags (a --main-set of them would clash)
OWN_FLAGS = {"lr": "--lr / --lrs", "tokens": "--main-tokens", "micro_batch": "--micro-batch",
             "forge": "--main-forge", "srste_decay": "--srste-decay", "teacher_data_tokens": "--teacher-mix",
             "data": "--calib / --teacher-mix", "seqlen": "--seqlen", "eval_every": "--evals"}


def forge_config(**over):
    """The trainer's schedule for a pruning init with ``over`` (ForgeConfig / TemperingSchedule fields) set:
    hard forward from the first step (the one-shot masks are already exact), exploration until finalize_at,
    then recovery on frozen masks. finalize_at stays FROM_PRUNED's 0.6 whatever the run's length (the
    recorded runs used it; `sfcompile train` caps it at 5M tokens), unless ``over`` sets it."""
    from sfcompile.train.config import forge_for

    return forge_for("pruned", **over)


def split_documents(path: Path, holdout: int, work: Path) -> tuple[str, str]:
    """Split ``path``'s documents into a training and a held-out JSONL file in ``work`` (every
    ``len // holdout``-th document is held out, so every part of a concatenated text is represented);
    returns their paths."""
    from sfcompile.eval.texts import get_text

    docs = get_text(str(path))
    if holdout >= len(docs):
        raise SystemExit(f"--holdout-docs {holdout} leaves no training text: {path} has {len(docs)} documents")
    stride = len(docs) // max(holdout, 1)
    held = [i % stride == stride - 1 for i in range(len(docs))] if holdout else [False] * len(docs)
    names = []
    for name, part in (("train", [d for d, h in zip(docs, held) if not h]),
                       ("holdout", [d for d, h in zip(docs, held) if h])):
        f = work / f"calib_{name}.jsonl"
        f.write_text("".join(json.dumps({"text": d}) + "\n" for d in part))
        names.append(str(f))
    return names[0], names[1]


@torch.no_grad()
def restore_pruned(model, dense) -> None:
    """Give the pruned entries of every masked weight their dense values (the kept ones keep SparseGPT's
    update): the forward is unchanged under a hard mask, but scores and straight-through gradients see them."""
    from sfcompile.masking.state import dense_weight, masked_sites

    reference = dict(dense.named_parameters())
    for site, module, soft in masked_sites(model):
        w = dense_weight(module, site.param)
        w.copy_(torch.where(soft.hard.bool(), w, reference[site.name].to(w.dtype)))


def main() -> None:
    from sfcompile.train.config import LOSS_KERNELS
    from sfcompile.train.data import TEACHER_SAMPLERS
    from sfcompile.train.optim import ADAM_IMPLS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="the SmolLM2 GGUF (or any sfcompile.load name)")
    ap.add_argument("--calib", required=True)
    ap.add_argument("--wiki", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default="/root/cache/work")
    ap.add_argument("--budget-s", type=float, default=540)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--micro-batch", type=int, default=32)
    ap.add_argument("--main-tokens", type=float, default=8e6)
    ap.add_argument("--evals", type=int, default=4, help="wiki evaluations during the main run")
    ap.add_argument("--lr", type=float, default=1e-4, help="LR of the ablations (and of the main run without --lrs)")
    ap.add_argument("--lrs", default="", help="comma list of LRs to choose the main run's from (held-out calib)")
    ap.add_argument("--sweep-tokens", type=float, default=1e6)
    ap.add_argument("--holdout-docs", type=int, default=300, help="documents of --calib held out (every n-th)")
    ap.add_argument("--zs-models", default="dense,sparsegpt,admm,sfcompile")
    ap.add_argument("--ablations", default="full,fixed_masks,magnitude_scores,hessian_unsmoothed,no_slorb,"
                    "squarehead,teacher_data,restore_dense,kl_only")
    ap.add_argument("--abl-tokens", type=float, default=1e6)
    ap.add_argument("--abl-micro-batch", type=int, default=8)
    ap.add_argument("--zs-limit", type=int, default=500)
    ap.add_argument("--skip", default="", help="comma list of phases to skip: main,zeroshot,ablations (e.g. two "
                    "processes on two GPUs: one runs main+zeroshot, the other the ablations)")
    ap.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: a smoke test of this script
    ap.add_argument("--init", default="sparsegpt", choices=("sparsegpt", "admm"),
                    help="the one-shot pruner whose masks every run starts from (reported under its name)")
    ap.add_argument("--teacher-mix", type=float, default=0,
                    help="main run: add this many tokens sampled from the dense teacher to the training text "
                         '(data="<text>+teacher", drawn in proportion to their sizes)')
    ap.add_argument("--teacher-batch", type=int, default=256, help="sequences the teacher samples at once")
    ap.add_argument("--teacher-kv-cache", default="auto", choices=TEACHER_SAMPLERS)
    ap.add_argument("--teacher-precision", default="auto", choices=("auto", "bf16", "fp32"),
                    help="TrainConfig.teacher_data_precision (auto: bf16 autocast on CUDA)")
    ap.add_argument("--main-forge", action="append", default=[], metavar="KEY=VALUE",
                    help="main run: a ForgeConfig / TemperingSchedule override, as `sfcompile train --forge` "
                         "(e.g. finalize_at=0.25: stop exploring masks after a quarter of the run); repeatable")
    ap.add_argument("--srste-decay", type=float, default=0.0, help="main run: TrainConfig.srste_decay")
    ap.add_argument("--main-set", action="append", default=[], metavar="FIELD=VALUE",
                    help="main run: set a TrainConfig field (repeatable; VALUE read as JSON, else as a string), "
                         "e.g. --main-set kl_temperature=1 for an A/B of the loss")
    ap.add_argument("--loss-kernel", default="auto", choices=LOSS_KERNELS, help="TrainConfig.loss_kernel")
    ap.add_argument("--adam-impl", default="foreach", choices=ADAM_IMPLS, help="TrainConfig.adam_impl")
    ap.add_argument("--compile", action="store_true",
                    help="TrainConfig.compile: student and teacher forwards and the fd probe under torch.compile")
    ap.add_argument("--weights", default="real", help=argparse.SUPPRESS)
    ap.add_argument("--calib-windows", type=int, default=128, help=argparse.SUPPRESS)
    ap.add_argument("--wiki-windows", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    settings = main_settings(args.main_set)  # a wrong field stops here, not after the baselines
    budget = Budget(args.budget_s)
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    train_text, holdout_text = split_documents(Path(args.calib), args.holdout_docs, work)

    import sfcompile
    from sfcompile.eval.perplexity import perplexity
    from sfcompile.eval.texts import calibration_windows
    from sfcompile.masking.oneshot import prune
    from sfcompile.train import TrainConfig, train

    dev = args.device
    torch.backends.cuda.matmul.allow_tf32 = True
    dense, tok = sfcompile.load(args.model, device=dev, weights=args.weights)
    pruned = copy.deepcopy(dense)  # trainable copy; every run trains a copy of it
    dense.eval().requires_grad_(False)
    amp = dict(device_type=dev, dtype=torch.bfloat16, enabled=dev == "cuda")

    def ppl(model, text=args.wiki) -> float:
        with torch.no_grad(), torch.autocast(**amp):
            return perplexity(model, tok, text, seqlen=args.seqlen, max_windows=args.wiki_windows,
                              batch_size=32, progress=False)

    # 1. baselines ------------------------------------------------------------------------------------------
    t = time.perf_counter()
    base_ppl = {"dense": ppl(dense)}
    sfcompile.sparsify(pruned, pattern="2:4", mask_dtype=torch.float32)
    n = args.calib_windows
    calib = calibration_windows(tok, train_text, n=n, seqlen=args.seqlen, seed=0)
    report = prune(pruned, args.init, calib, nsamples=n, seqlen=args.seqlen, progress=False)
    base_ppl[args.init] = ppl(pruned)
    emit(out, {"phase": "baselines", "text": f"wiki ({args.wiki_windows or 'all'} windows)", "seqlen": args.seqlen,
               **base_ppl, "calib_windows": n, f"{args.init}_seconds": report.seconds,
               "seconds": time.perf_counter() - t, "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name() if dev == "cuda" else None})

    def run(name: str, tokens: float, micro_batch: int, evals: int, restore: bool = False, **over) -> dict:
        """One training run from the SparseGPT masks; returns its result row."""
        model = copy.deepcopy(pruned)
        if restore:
            restore_pruned(model, dense)
        forge = over.pop("forge", "default")
        lr = over.pop("lr", args.lr)
        cfg_kw = dict(
            tokens=int(tokens), data=train_text, seqlen=args.seqlen, micro_batch=micro_batch, lr=lr,
            min_lr=lr / 10, warmup=0.05, ce_weight=1.0, kl_weight=1.0, init="keep",
            forge=forge_config() if forge == "default" else forge, eval_text=args.wiki,
            eval_windows=args.wiki_windows, log_every=10, out=str(work / name), harden=True, device=dev,
            teacher_data_tokens=int(tokens), teacher_data_prompts=train_text, teacher_data_batch=args.teacher_batch,
            teacher_data_kv_cache=args.teacher_kv_cache, teacher_data_precision=args.teacher_precision,
            compile=args.compile, loss_kernel=args.loss_kernel, adam_impl=args.adam_impl,
        )
        cfg_kw.update(over)
        steps = int(tokens) // (micro_batch * args.seqlen)
        if evals:
            cfg_kw["eval_every"] = max(1, steps // evals)
        cfg = TrainConfig(**cfg_kw)
        t = time.perf_counter()
        result = train(model, cfg, teacher=dense, tokenizer=tok)
        seconds = time.perf_counter() - t
        curve = {str(s * cfg.tokens_per_step()): v for s, v in sorted(result.ppl.items())}
        row = {"run": name, "tokens": result.tokens, "steps": result.steps, "final_ppl": result.ppl.get(
            result.steps), "ppl_by_tokens": curve, "seconds": seconds, "tok_s": result.tokens / seconds,
            "skipped_steps": result.skipped_steps, "compiled": result.compiled}
        row["config"] = {k: v for k, v in cfg.to_dict().items() if k in over or k in ("forge", "lr")}
        row["restore_dense"] = restore
        if result.stopped:  # a signal paused the run (checkpoint written): record that, never a finished row
            emit(out, {"phase": "stopped", **row, "stopped": result.stopped, "total_steps": result.total_steps})
            raise SystemExit(result.exit_code)
        return row, model

    # 2. LR choice on held-out calib ------------------------------------------------------------------------
    main_lr = args.lr
    lrs = [float(v) for v in args.lrs.split(",") if v]
    if lrs and "main" not in skip:
        held = {}
        for lr in lrs:
            row, model = run(f"sweep_lr{lr:g}", args.sweep_tokens, args.micro_batch, 0, lr=lr)
            held[lr] = ppl(model, holdout_text)
            emit(out, {"phase": "lr_sweep", **row, "lr": lr, "holdout_ppl": held[lr],
                       "holdout": f"{args.holdout_docs} documents of {args.calib} (every n-th)"})
            del model
        main_lr = min(held, key=held.get)
        emit(out, {"phase": "lr_choice", "lr": main_lr, "holdout_ppl": held})

    # 3. the main run ----------------------------------------------------------------------------------------
    main_model, tok_s = None, 40_000.0  # tok/s guess for the ablations' time checks when main is skipped
    if "main" not in skip:
        mix = {}
        if args.teacher_mix:
            mix = {"data": f"{train_text}+teacher", "teacher_data_tokens": int(args.teacher_mix)}
        if args.main_forge:
            from sfcompile.train.cli import forge_from_overrides

            mix["forge"] = forge_from_overrides(args.main_forge, args.init)
        if args.srste_decay:
            mix["srste_decay"] = args.srste_decay
        mix.update(settings)
        row, main_model = run("main", args.main_tokens, args.micro_batch, args.evals, lr=main_lr, **mix)
        emit(out, {"phase": "main", **row, "dense": base_ppl["dense"], args.init: base_ppl[args.init],
                   "holdout_ppl": ppl(main_model, holdout_text)})
        tok_s = row["tok_s"]
        for src, dst in (("log.jsonl", "main_log.jsonl"), ("curves.png", "main_curves.png")):
            if (work / "main" / src).exists():
                (out / dst).write_bytes((work / "main" / src).read_bytes())

    # 4. zero-shot --------------------------------------------------------------------------------------------
    if "zeroshot" not in skip:
        from sfcompile.eval.zeroshot import zeroshot

        models = [("dense", dense), (args.init, pruned)] + ([("sfcompile", main_model)] if main_model else [])
        wanted = set(args.zs_models.split(","))
        for name, model in [(n, m) for n, m in models if n in wanted]:
            if budget.left() < 45:
                emit(out, {"phase": "zeroshot", "model": name, "skipped": "out of time"})
                continue
            t = time.perf_counter()
            with torch.autocast(**amp):
                scores = zeroshot(model, tok, "all", limit=args.zs_limit, batch_size=64)
            emit(out, {"phase": "zeroshot", "model": name, "limit": args.zs_limit, **scores,
                       "seconds": time.perf_counter() - t})
    del main_model

    # 5. ablations -----------------------------------------------------------------------------------------------
    if "ablations" not in skip:
        variants = [
            ("full", {}),
            ("fixed_masks", {"forge": None}),
            ("magnitude_scores", {"forge": forge_config(score="magnitude")}),
            ("hessian_unsmoothed", {"forge": forge_config(hessian_smoothing="none")}),
            ("fd_forward", {"forge": forge_config(estimator="fd_forward")}),  # the one-pass Hessian probe
            ("fd_central", {"forge": forge_config(estimator="fd")}),  # central differences: two passes
            ("no_slorb", {"forge": forge_config(slorb=False)}),
            ("squarehead", {"squarehead_weight": 1.0}),
            ("teacher_data", {"data": "teacher"}),
            ("restore_dense", {"restore": True}),
            ("kl_only", {"ce_weight": 0.0}),
        ]
        wanted = args.ablations.split(",")
        unknown = set(wanted) - {n for n, _ in variants}
        if unknown:
            raise SystemExit(f"unknown ablation(s) {sorted(unknown)}; choose from {[n for n, _ in variants]}")
        for name, over in [v for v in variants if v[0] in wanted]:
            need = args.abl_tokens / max(tok_s, 1.0) * 1.3 + 15  # + evaluation and set-up
            if budget.left() < need:
                emit(out, {"phase": "ablation", "run": name, "skipped": f"out of time ({budget.left():.0f} s "
                           f"left, ~{need:.0f} s needed)"})
                continue
            row, model = run(f"abl_{name}", args.abl_tokens, args.abl_micro_batch, 0, **over)
            emit(out, {"phase": "ablation", **row})
            tok_s = row["tok_s"] if name == "full" else tok_s
            del model
            if dev == "cuda":
                torch.cuda.empty_cache()
    emit(out, {"phase": "done", "seconds": budget.elapsed()})


if __name__ == "__main__":
    main()
