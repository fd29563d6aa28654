"""Run logging: JSONL (always), TensorBoard (when installed), a tqdm bar, and the end-of-run summary.

Only the main process writes or draws (`is_main_process`); other ranks get a logger that records nothing.
Every record is one JSON line in ``<out>/log.jsonl`` with ``step`` and ``kind`` ("train", "eval", "skip",
"info") so a plot or a resumed run can read the history back.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from sfcompile.train.distributed import is_main_process


def _jsonable(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class RunLogger:
    """Writes records to JSONL/TensorBoard and drives the progress bar.

    Args:
        out: run directory (None: no files, bar only).
        total_steps, start_step: for the bar and ETA.
        tokens_per_step: for tokens/s.
        bar: draw a tqdm bar (stderr).
    """

    def __init__(
        self, out: Path | None, total_steps: int, start_step: int, tokens_per_step: int, *, bar: bool = True
    ):
        self.main = is_main_process()
        self.out = Path(out) if out else None
        self.tokens_per_step = tokens_per_step
        self.history: list[dict] = []
        self._jsonl = None
        self._tb = None
        self._bar = None
        self._t0 = time.perf_counter()
        self._steps_timed = 0
        if not self.main:
            return
        if self.out:
            self.out.mkdir(parents=True, exist_ok=True)
            self._jsonl = (self.out / "log.jsonl").open("a")
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print(
                    "sfcompile train: tensorboard is not installed; logging to log.jsonl only "
                    "(pip install tensorboard)",
                    file=sys.stderr,
                )
            else:
                self._tb = SummaryWriter(str(self.out / "tb"), purge_step=start_step or None)
        if bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total_steps,
                initial=start_step,
                unit="step",
                dynamic_ncols=True,
                desc="train",
                file=sys.stderr,
            )

    def log(self, step: int, kind: str, **values) -> dict:
        record = {
            "step": step,
            "kind": kind,
            "time": round(time.time(), 3),
            **{k: _jsonable(v) for k, v in values.items()},
        }
        if not self.main:
            return record
        self.history.append(record)
        if self._jsonl:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        if self._tb:
            for k, v in record.items():
                if k not in ("step", "kind", "time") and isinstance(v, (int, float)):
                    self._tb.add_scalar(f"{kind}/{k}", v, step)
        return record

    def message(self, text: str) -> None:
        if not self.main:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def step_done(self, step: int, **postfix) -> float:
        """Advance the bar by one step; returns tokens/s over the steps timed so far in this process."""
        self._steps_timed += 1
        tps = self._steps_timed * self.tokens_per_step / max(time.perf_counter() - self._t0, 1e-9)
        if self._bar is not None:
            shown = {"tok/s": f"{tps:,.0f}"}
            for k, v in postfix.items():
                if v is not None:
                    shown[k] = f"{v:.4g}" if isinstance(v, float) else v
            self._bar.set_postfix(shown, refresh=False)
            self._bar.update(1)
        return tps

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._jsonl:
            self._jsonl.close()
        if self._tb:
            self._tb.close()


def read_history(out: Path) -> list[dict]:
    path = Path(out) / "log.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summary_table(rows: list[tuple[str, str]]) -> str:
    """A two-column Markdown table."""
    width = max(len(k) for k, _ in rows)
    lines = [f"| {'':{width}} | value |", f"| {'-' * width} | ----- |"]
    lines += [f"| {k:{width}} | {v} |" for k, v in rows]
    return "\n".join(lines)
