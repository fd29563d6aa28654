"""``sfcompile bench``: kernel (and, added by the backend's owner, end-to-end) speed on this GPU.

    sfcompile bench --kernels                                  # the full kernel table (LLaMA-2-7B, Qwen3-8B)
    sfcompile bench --kernels --ms 1,16,2048 --patterns 2:4 --out table.md
    sfcompile bench --kernels --ms 1,8 --pdl 1                # sfcompile's kernels launched as the backend does

Each benchmark is one flag plus its own options; ``run`` runs every selected one in order (add a new one as a
``_BENCHES`` entry: flag name -> function(args) -> int).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("kernels")
    g.add_argument("--kernels", action="store_true",
                   help="dense cuBLAS vs cuSPARSELt vs sfcompile per shape and M")
    g.add_argument("--ms", default="1,2,4,8,16,2048,4096",
                   help="comma-separated row counts M (default %(default)s)")
    g.add_argument("--patterns", default="2:4,block16", help="comma-separated patterns (default %(default)s)")
    g.add_argument("--shapes", default="all", help="'all' or comma-separated N x K like 4096x4096,1024x4096")
    g.add_argument("--no-cslt", action="store_true", help="skip cuSPARSELt")
    g.add_argument("--moe", action="store_true", help="also time the grouped expert matmul")
    g.add_argument("--pdl", type=int, choices=(0, 1, 2), default=0,
                   help="launch mode of sfcompile's kernels: 0 plain (default), 1 programmatic dependent launch as "
                        "the sparseforge backend launches them, 2 the same with the next kernel let in at the "
                        "start; cuBLAS and cuSPARSELt launch plainly")
    g.add_argument("--out", type=Path, help="write the table here (.md) and its rows beside it (.json)")
    e2e = _e2e_module()
    if e2e is not None:  # a source checkout: benchmarks/e2e.py brings its own options (no name clashes)
        parser.add_argument("--e2e", action="store_true",
                            help="decode tokens/s and prefill latency, dense Inductor vs sparseforge")
        e2e.add_arguments(parser)


def _shapes(spec: str):
    from sfcompile.lowering.bench import LAYER_SHAPES

    if spec == "all":
        return LAYER_SHAPES
    out = []
    for item in spec.split(","):
        try:
            n, k = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise ValueError(f"--shapes entry {item!r} is not NxK (e.g. 4096x11008)") from None
        out.append((f"{n}x{k}", n, k))
    return out


def _run_kernels(args) -> int:
    import torch

    from sfcompile.lowering import bench
    from sfcompile.lowering.kernels import splitk

    if not torch.cuda.is_available():
        print("sfcompile bench --kernels needs a CUDA GPU; none is visible", file=sys.stderr)
        return 2
    ms = [int(v) for v in args.ms.split(",")]
    patterns = [p.strip() for p in args.patterns.split(",")]
    with splitk.launch_mode(args.pdl):
        rows = bench.kernel_table(_shapes(args.shapes), ms, patterns, with_cslt=not args.no_cslt)
        if args.moe:
            rows += bench.moe_table()
    table = bench.markdown(rows)
    summary = bench.summary(rows)
    print(table)
    for key, value in summary.items():
        print(f"{key}: {value:.2f}x")
    for key, value in bench.tuned_configs().items():
        print(f"tuned {key}: {value}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(table + "\n\n" + "\n".join(f"- {k}: {v:.2f}x" for k, v in
                                                                          summary.items()) + "\n")
        record = {"rows": bench.to_dicts(rows), "summary": summary, "device": torch.cuda.get_device_name(),
                  "tuned": bench.tuned_configs(), "pdl": args.pdl}
        args.out.with_suffix(".json").write_text(json.dumps(record, indent=1))
    return 0


def _e2e_module():
    """benchmarks/e2e.py of this source checkout (the end-to-end benchmark lives with the benchmarks), or None
    for an installed package without it (then ``--e2e`` is not offered)."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "e2e.py"
    if not path.exists():
        return None
    if "sfcompile_benchmarks_e2e" in sys.modules:
        return sys.modules["sfcompile_benchmarks_e2e"]
    spec = importlib.util.spec_from_file_location("sfcompile_benchmarks_e2e", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _run_e2e(args) -> int:
    return _e2e_module().run(args)


_BENCHES = {"kernels": _run_kernels, "e2e": _run_e2e}


def run(args) -> int:
    selected = [name for name in _BENCHES if getattr(args, name, False)]
    if not selected:
        flags = ", ".join("--" + n for n in _BENCHES)
        print(f"sfcompile bench: choose at least one of {flags}", file=sys.stderr)
        return 2
    for name in selected:
        code = _BENCHES[name](args)
        if code:
            return code
    return 0
