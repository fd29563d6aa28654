"""Atomic, resumable checkpoints.

Layout under ``<out>/checkpoints/``::

    step_000200/           one checkpoint (written as .tmp-step_000200-<pid>, renamed: never half-written)
        model.pt           student state_dict: dense W, masks (mask/hard/hardness), SLoRB, everything
        train_state.pt     optimizer, forge state, RNG (torch/cuda/numpy/python), step, counters, history
    latest                 the name of the newest complete checkpoint (replaced atomically)

Only the main process writes (`is_main_process`); the FSDP2 engine will swap these files for DCP.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from sfcompile.train import distributed as dist
from sfcompile.train.distributed import is_main_process


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be found or does not match the run."""


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    out: Path, step: int, *, model, optimizer, forge, extra: dict, keep: int = 1
) -> Path | None:
    """Write checkpoint ``step`` atomically, keep the newest ``keep``; its path (None off rank 0).

    A sharded model (FSDP2, several processes) is saved by every rank into ``dcp/`` (`distributed`); call on
    all ranks then."""
    sharded = dist.is_sharded(model)
    if not sharded and not is_main_process():
        return None
    root = Path(out) / "checkpoints"
    name = f"step_{step:07d}"
    tmp = root / (dist.shared_name(f".tmp-{name}") if sharded else f".tmp-{name}-{os.getpid()}")
    if is_main_process():
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    if sharded:
        dist.barrier()
        dist.save_sharded_state(tmp, model, optimizer)  # model + optimizer shards, every rank
        dist.barrier()
        if not is_main_process():
            return None
    else:
        torch.save(model.state_dict(), tmp / "model.pt")
    torch.save(
        {
            "step": step,
            "optimizer": None if sharded else optimizer.state_dict(),
            "forge": forge.state_dict() if forge is not None else None,
            "rng": rng_state(),
            **extra,
        },
        tmp / "train_state.pt",
    )
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest_tmp = root / f".latest-{os.getpid()}"
    latest_tmp.write_text(name)
    os.replace(latest_tmp, root / "latest")
    done = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out: Path) -> Path | None:
    pointer = Path(out) / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not (path / "train_state.pt").exists():
        raise CheckpointError(
            f"{pointer} names {path.name}, which is missing or incomplete; delete the pointer "
            "to start over, or restore the checkpoint"
        )
    return path


def load_checkpoint(path: Path, map_location="cpu") -> tuple[dict, dict]:
    """(model state_dict, train state) of checkpoint ``path``."""
    model_state = torch.load(path / "model.pt", map_location=map_location, weights_only=False)
    train_state = torch.load(path / "train_state.pt", map_location=map_location, weights_only=False)
    return model_state, train_state


def restore_checkpoint(path: Path, model, optimizer, map_location="cpu") -> dict:
    """Load checkpoint ``path`` into ``model`` and ``optimizer``; returns its train state (forge, rng, ...).

    Reads both layouts: ``model.pt`` (one process) and ``dcp/`` (sharded, written by any number of ranks and
    loadable on any number, one included)."""
    path = Path(path)
    if dist.has_sharded_state(path):
        dist.load_sharded_state(path, model, optimizer)
        return torch.load(path / "train_state.pt", map_location=map_location, weights_only=False)
    if dist.is_sharded(model):
        raise CheckpointError(
            f"{path} was written by a single process (model.pt); resume it with one process, or start the "
            "multi-process run from its final model"
        )
    model_state, state = load_checkpoint(path, map_location=map_location)
    old = next((k for k in model_state if ".parametrizations." in k), None)
    if old is not None:
        raise CheckpointError(
            f"{path} holds mask state in the torch.nn.utils.parametrize layout of sfcompile before 2026-11-30 "
            f"(e.g. {old}), which this version no longer reads (its parameter order differs too, so AdamW's "
            "state would not line up); start the run again, or finish it with the sfcompile that wrote it"
        )
    model.load_state_dict(model_state)
    optimizer.load_state_dict(state["optimizer"])
    return state
