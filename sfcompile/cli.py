"""The `sfcompile` command line: one subcommand per stage, each defined beside the code it drives.

Each subcommand module provides ``add_arguments(parser)`` and ``run(args) -> int``. Exit codes: 0 success,
1 the job failed, 2 bad input (message on stderr), 130/143 interrupted (state saved where the job saves any).
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

COMMANDS = {
    "prune": ("sfcompile.masking.cli", "one-shot pruning (magnitude | wanda | sparsegpt | admm) to a pattern"),
    "train": ("sfcompile.train.cli", "SparseForge training: soft masks, Hessian scores, SLoRB, distillation"),
    "eval": ("sfcompile.eval.cli", "perplexity and zero-shot accuracy of a model"),
    "inspect": ("sfcompile.inspect", "per-site pattern check, sparsity and sizes of a saved model"),
    "bench": ("sfcompile.lowering.cli", "kernel and end-to-end speed: dense vs sparseforge"),
    "plan": ("sfcompile.train.plan", "memory per rank for a model, engine and GPU count"),
}

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _available() -> dict[str, tuple[str, str]]:
    found = {}
    for name, (module, help_text) in COMMANDS.items():
        try:
            import_module(module)
        except ModuleNotFoundError as e:  # a stage not in this build: hide its command, never fake it
            if e.name and e.name.startswith("sfcompile"):
                continue
            raise
        found[name] = (module, help_text)
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sfcompile", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in _available().items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        import_module(module).add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    module = import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as e:  # our errors speak to the user; no traceback for bad input
        print(f"sfcompile {args.command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
