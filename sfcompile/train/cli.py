"""`sfcompile train`: load a model, sparsify it, train it with SparseForge + distillation, harden, save.

    sfcompile train --model smollm2-135m --pattern 2:4 --tokens 20M --data calib --out runs/a
    sfcompile train --resume runs/a          # continues exactly where it stopped (data order, RNG, schedule)

Any ForgeConfig / TemperingSchedule field can be set with ``--forge KEY=VALUE`` (repeatable), e.g.
``--forge score=hessian_ratio --forge harden_end=0.5 --forge slorb=false``.

Exit codes: 0 done; 2 bad input; 130/143 stopped by Ctrl-C/SIGTERM after writing a checkpoint.
The run directory holds ``run.json`` (what to rebuild on resume), ``train_config.json``, ``log.jsonl``,
``tb/``, ``checkpoints/``, ``curves.png``, ``summary.md`` and the hardened model in ``final/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2
RUN_FILE = "run.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sfcompile.train.config import (
        COMPILE_MODES,
        LOSS_KERNELS,
        TEACHER_BATCH_CPU,
        TEACHER_BATCH_MAX,
        TEACHER_KV_BUDGET,
    )
    from sfcompile.train.data import TEACHER_ATTENTIONS, TEACHER_SAMPLERS
    from sfcompile.train.optim import ADAM_IMPLS

    g = parser.add_argument_group("model and run")
    g.add_argument("--model", help="alias (smollm2-135m, ...), HF folder or .gguf file")
    g.add_argument("--pattern", default="2:4", help='"2:4", "4:8", "block16", ... (default 2:4)')
    g.add_argument("--out", help="run directory (checkpoints, logs, final model)")
    g.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly where it stopped")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    g = parser.add_argument_group("budget and data")
    g.add_argument("--tokens", default="20M", help='training tokens, e.g. "20M", "1.5B" (default 20M)')
    g.add_argument("--data", default="corpus",
                   help='registry text (default corpus: calib + qasper + sciriff), .txt/.jsonl file, "teacher", '
                        'or several joined by + (corpus+teacher: mixed in proportion to their tokens)')
    g.add_argument("--teacher-data-tokens", default="auto",
                   help="tokens generated for --data ...+teacher (auto: 0.4 x --tokens)")
    g.add_argument("--teacher-data-prompts", default="calib",
                   help="text whose 4-token snippets start the sequences of --data teacher (name or path)")
    g.add_argument("--teacher-data-batch", type=_int_or_auto, default="auto",
                   help=f"sequences --data teacher generates at once (default auto: {TEACHER_BATCH_CPU} on a CPU; "
                   f"on a GPU as many as keep the teacher's KV cache within {TEACHER_KV_BUDGET / 2**30:g} GiB, at "
                   f"most {TEACHER_BATCH_MAX})")
    g.add_argument("--teacher-data-kv-cache", default="auto", choices=TEACHER_SAMPLERS,
                   help="sampler of --data teacher: generate with a dynamic / static KV cache, or sfcompile's "
                        "packed decode loop (-graph: replayed as a CUDA graph); auto = packed-graph on CUDA, "
                        "dynamic elsewhere or where the packed one refuses the model (benchmarks/teacher_sampling.py)")
    g.add_argument("--teacher-data-precision", default="auto", choices=("auto", "bf16", "fp32"),
                   help="--data teacher samples under bf16 autocast (auto: on CUDA) or in fp32")
    g.add_argument("--teacher-data-attention", default="auto", choices=TEACHER_ATTENTIONS,
                   help="decoding attention of the packed-graph sampler: PyTorch's SDPA over a masked window, or "
                        "sfcompile's Triton kernel reading only the filled positions (1.51x the tokens/s on an "
                        "H200); auto: the kernel where the packed-graph sampler runs and takes the teacher's head "
                        "dim, sdpa elsewhere")
    g.add_argument("--seqlen", type=int, default=512)
    g.add_argument("--micro-batch", type=int, default=8)
    g.add_argument("--grad-accum", type=int, default=1)
    g = parser.add_argument_group("optimizer")
    g.add_argument("--lr", type=float, default=1e-4)
    g.add_argument("--min-lr", type=float, default=1e-5)
    g.add_argument("--warmup", type=float, default=0.05, help="steps, or a fraction < 1 of the run")
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--clip", type=float, default=1.0)
    g.add_argument("--srste-decay", type=float, default=0.0)
    g.add_argument("--cast-l1", type=float, default=0.0)
    g.add_argument("--cast-weight-scaling", action="store_true")
    g.add_argument("--adam-impl", default="foreach", choices=ADAM_IMPLS,
                   help="AdamW's update: torch's multi-tensor (foreach) or fused implementation")
    g.add_argument("--train-embeddings", action="store_true")
    g = parser.add_argument_group("distillation and masks")
    g.add_argument("--teacher", default="copy", choices=("copy", "offload", "none"))
    g.add_argument("--ce-weight", type=float, default=1.0)
    g.add_argument("--kl-weight", type=float, default=1.0)
    g.add_argument("--kl-temperature", type=float, default=2.0)
    g.add_argument("--squarehead", type=float, default=0.0, help="SquareHead weight (default 0)")
    g.add_argument("--loss-kernel", default="auto", choices=LOSS_KERNELS,
                   help="CE + KL and their gradient: chunked PyTorch or one Triton kernel; auto = triton on CUDA "
                        "(5.9x faster on the H200, benchmarks/loss_memory.py)")
    g.add_argument(
        "--init",
        default="admm",
        choices=("dense", "magnitude", "wanda", "sparsegpt", "admm"),
        help="one-shot masks to start from (default admm: on the H200 it prunes SmolLM2-135M in less time than "
        "sparsegpt, 83.5 against 105.9 wiki perplexity, and stays ahead after 8M tokens of training, 35.25 against "
        "35.70; on a CPU it costs several times sparsegpt's minutes). From a pruning init the forge keeps the hard "
        "pattern in the forward from the first step and explores mask flips until 60%% of the run or 5M "
        "tokens, whichever comes first, then trains on frozen masks (the recipe measured in "
        "benchmarks/README.md); from dense it follows the reference's soft-to-hard tempering schedule. "
        "--forge KEY=VALUE overrides either",
    )
    g.add_argument(
        "--init-calib-windows",
        type=int,
        default=128,
        help="calibration windows (of --seqlen tokens) for a wanda/sparsegpt/admm --init (default 128)",
    )
    g.add_argument(
        "--no-forge",
        action="store_true",
        help="keep the --init masks fixed and only train the weights (needs a pruning --init)",
    )
    g.add_argument(
        "--forge",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a ForgeConfig or TemperingSchedule field (repeatable), e.g. slorb_group=8, slorb=false, "
        "slorb_fade_start=0.5 (the SLoRB bypass fades out from half the run: the model ends without one)",
    )
    g = parser.add_argument_group("logging, evaluation, checkpoints")
    g.add_argument("--checkpoint-every", type=int, default=0)
    g.add_argument("--log-every", type=int, default=10)
    g.add_argument("--eval-every", type=int, default=0)
    g.add_argument("--eval-text", default="wiki")
    g.add_argument("--eval-windows", type=int, default=16, help="perplexity windows (0 = the whole text)")
    g.add_argument("--eval-seqlen", type=int, default=None)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto")
    g.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp32"))
    g.add_argument("--compile", action="store_true", help="torch.compile the student and teacher forwards")
    g.add_argument("--compile-mode", default="default", choices=COMPILE_MODES,
                   help="with --compile: reduce-overhead replays the compiled forwards and backward as CUDA graphs "
                        "(CUDA, one process)")
    g.add_argument("--probe-rows", type=int, default=None,
                   help="sequences of the micro-batch the Hessian probe uses (default: all)")
    from sfcompile.train.launch import add_arguments as add_launch_arguments

    add_launch_arguments(parser)  # --nproc-per-node/--nnodes/..., --engine, --activation-checkpointing


def _convert(text: str, current):
    if isinstance(current, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{text!r} is not a boolean (true/false)")
    if isinstance(current, int):
        return int(text)
    if isinstance(current, float):
        return float(text)
    return text


def _int_or_auto(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is neither an integer nor 'auto'") from None


def forge_from_overrides(items: list[str], init: str = "dense", tokens: int | str = 0, tokens_per_step: int = 0):
    """A ForgeConfig from ``KEY=VALUE`` strings (ForgeConfig fields, or TemperingSchedule fields), on the
    schedule `sfcompile.train.config.forge_for` gives ``init``, ``tokens`` and ``tokens_per_step``."""
    from sfcompile.masking.forge import ForgeConfig
    from sfcompile.masking.schedule import TemperingSchedule
    from sfcompile.train.config import forge_for, parse_tokens

    defaults = {f.name: f.default for cls in (TemperingSchedule, ForgeConfig) for f in dataclasses.fields(cls)}
    fields = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise ValueError(f"--forge {item!r}: expected KEY=VALUE, e.g. --forge score=hessian_ratio")
        fields[key] = _convert(value, defaults[key]) if key in defaults and key != "schedule" else value
    tokens = parse_tokens(tokens)
    try:
        return forge_for(init, tokens, tokens_per_step, **fields)
    except ValueError as err:  # an unknown field (TrainConfigError), or a value the configs refuse
        raise ValueError(f"--forge: {err}") from None


# a setting as TrainConfig's messages write it: field=value, the value quoted or up to a separator; and a field
# named alone, when its name has an underscore (ce_weight: never a word of prose, unlike tokens or data)
_SETTING = re.compile(r"(?<![\w./-])([a-z][a-z0-9_]*)=('[^']*'|\"[^\"]*\"|[^\s,;)\]]+)")
_FIELDS = re.compile(r"(?<![\w./=-])[a-z][a-z0-9_]*(?:/[a-z][a-z0-9_]*)*(?![\w=/-]|\.\w)")  # a or a/b (not a path)


def _own_parser() -> argparse.ArgumentParser:
    """This command's flags alone, to read their names and defaults."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    return parser


def _flags_of_fields() -> dict[str, str]:
    """TrainConfig field -> the flag of this command that sets it (flags that take a value)."""
    from sfcompile.train.config import TrainConfig

    parser = _own_parser()
    flags = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings and a.nargs != 0}
    flags["squarehead_weight"] = flags["squarehead"]  # the one flag not spelled as its field
    return {f.name: flags[f.name] for f in dataclasses.fields(TrainConfig) if f.name in flags}


def in_flags(message: str) -> str:
    """A TrainConfig message in this command's words: ``min_lr=1.0`` becomes ``--min-lr 1.0``, ``ce_weight``
    becomes ``--ce-weight``; fields without a flag here stay as they are."""
    flags = _flags_of_fields()

    def setting(m: re.Match) -> str:
        flag = flags.get(m.group(1))
        return f"{flag} {m.group(2).strip(chr(39) + chr(34))}" if flag else m.group(0)

    def fields(m: re.Match) -> str:
        names = m.group(0).split("/")
        if all("_" in name and name in flags for name in names):
            return "/".join(flags[name] for name in names)
        return m.group(0)

    return _FIELDS.sub(fields, _SETTING.sub(setting, message))


def _check_teacher_data_flags(args) -> None:
    """A --teacher-data-* flag set while --data has no teacher part would change nothing: refuse it."""
    from sfcompile.train.data import data_parts

    try:
        parts = data_parts(args.data)
    except ValueError:
        return  # TrainConfig reports a malformed --data with its own message
    if "teacher" in parts:
        return
    parser = _own_parser()
    for dest in [a.dest for a in parser._actions if a.dest.startswith("teacher_data_")]:
        if getattr(args, dest) != parser.get_default(dest):
            flag = "--" + dest.replace("_", "-")
            raise ValueError(
                f"{flag} {getattr(args, dest)} applies to teacher-sampled data, but --data {args.data} has no "
                f"teacher part: add one (--data {args.data}+teacher) or drop {flag}"
            )


def config_from_args(args):
    """The run's TrainConfig; a value it refuses is reported by the flag that set it."""
    from sfcompile.train.distributed import expected_world_size

    _check_teacher_data_flags(args)
    forge = None if args.no_forge else forge_from_overrides(  # its messages name --forge already
        args.forge, args.init, args.tokens, args.seqlen * args.micro_batch * args.grad_accum * expected_world_size())
    try:
        return _config(args, forge)
    except ValueError as err:
        raise type(err)(in_flags(str(err))) from None


def _config(args, forge):
    from sfcompile.train.config import TrainConfig

    return TrainConfig(
        tokens=args.tokens,
        data=args.data,
        seqlen=args.seqlen,
        micro_batch=args.micro_batch,
        grad_accum=args.grad_accum,
        teacher_data_tokens=args.teacher_data_tokens,
        teacher_data_prompts=args.teacher_data_prompts,
        teacher_data_batch=args.teacher_data_batch,
        teacher_data_kv_cache=args.teacher_data_kv_cache,
        teacher_data_precision=args.teacher_data_precision,
        teacher_data_attention=args.teacher_data_attention,
        lr=args.lr,
        min_lr=args.min_lr,
        warmup=args.warmup,
        weight_decay=args.weight_decay,
        clip=args.clip,
        srste_decay=args.srste_decay,
        cast_l1=args.cast_l1,
        cast_weight_scaling=args.cast_weight_scaling,
        adam_impl=args.adam_impl,
        train_embeddings=args.train_embeddings,
        ce_weight=args.ce_weight,
        kl_weight=args.kl_weight,
        kl_temperature=args.kl_temperature,
        squarehead_weight=args.squarehead,
        loss_kernel=args.loss_kernel,
        teacher=args.teacher,
        init=args.init,
        init_calib_windows=args.init_calib_windows,
        forge=forge,
        out=args.out,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
        compile=args.compile,
        compile_mode=args.compile_mode,
        probe_rows=args.probe_rows,
        engine=args.engine,
        activation_checkpointing=args.activation_checkpointing,
        reshard_after_forward=args.reshard_after_forward,
        log_every=args.log_every,
        eval_every=args.eval_every,
        eval_text=args.eval_text,
        eval_windows=args.eval_windows or None,
        eval_seqlen=args.eval_seqlen,
    )


def _bad(msg: str) -> int:
    print(f"sfcompile train: error: {msg}", file=sys.stderr)
    return EXIT_BAD_INPUT


def run(args) -> int:
    import torch

    import sfcompile
    from sfcompile.train import distributed, launch
    from sfcompile.train.config import TrainConfig
    from sfcompile.train.loop import train

    if launch.wants_launch(args):  # --nproc-per-node N > 1: start torch.distributed.run, which re-runs us
        return launch.launch_from_args(args)
    if distributed.init_from_env(args.device):  # a launched worker: join the group, run, leave it
        try:
            return run(args)
        finally:
            distributed.shutdown()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.resume:
        run_dir = Path(args.resume)
        spec_file = run_dir / RUN_FILE
        if not spec_file.exists():
            return _bad(f"--resume {run_dir}: no {RUN_FILE} there; pass the --out folder of an earlier run")
        spec = json.loads(spec_file.read_text())
        config = TrainConfig.from_dict(spec["config"])
        if config.out != str(run_dir):
            config = config.replace(out=str(run_dir))
    else:
        if not args.model or not args.out:
            return _bad("--model and --out are required (or --resume RUN_DIR)")
        try:
            config = config_from_args(args)
        except ValueError as e:
            return _bad(str(e))
        run_dir = Path(args.out)
        if (run_dir / "checkpoints" / "latest").exists():
            return _bad(
                f"--out {run_dir} already holds a run; continue it with --resume {run_dir}, or choose "
                "another --out"
            )
        spec = {"model": args.model, "pattern": args.pattern, "config": config.to_dict()}
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / RUN_FILE).write_text(json.dumps(spec, indent=1))
    try:
        model, tok = sfcompile.load(spec["model"])
        sfcompile.sparsify(model, pattern=spec["pattern"])
    except (ValueError, FileNotFoundError) as e:
        return _bad(str(e))
    try:
        result = train(model, config, tokenizer=tok, resume=bool(args.resume))
    except ValueError as e:  # a value the run found unworkable once it met the model, data or device
        return _bad(in_flags(str(e)))
    if not distributed.is_main_process():  # rank 0 reports for all
        return result.exit_code
    if result.stopped:
        print(
            f"stopped at step {result.steps}/{result.total_steps}; continue with: sfcompile train --resume "
            f"{run_dir}",
            file=sys.stderr,
        )
        return result.exit_code
    ppl = ", ".join(f"step {s}: {v:.3f}" for s, v in sorted(result.ppl.items()))
    print(
        f"done: {result.steps} steps, {result.tokens:,} tokens in {result.seconds:.0f} s; "
        f"{config.eval_text} ppl {ppl}; model in {result.final_path}"
    )
    return 0
