"""The one place that knows about processes: rank helpers and model wrapping.

Today a run is one process; the scale issue adds FSDP2 here (`wrap_model`) and the launcher. Everything else in
`sfcompile.train` asks these helpers instead of assuming rank 0 (logging, checkpoint writing, data sharding).
"""

from __future__ import annotations

import torch
from torch import nn


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    return torch.distributed.get_rank() if _initialized() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if _initialized() else 1


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    if _initialized():
        torch.distributed.barrier()


def wrap_model(model: nn.Module, config) -> nn.Module:
    """Wrap the student for the run's engine. One process: the model itself (FSDP2 goes here next)."""
    if world_size() > 1:
        raise NotImplementedError(f"world size {world_size()}: multi-process training (FSDP2) is not built yet; "
                                  "run one process")
    return model
