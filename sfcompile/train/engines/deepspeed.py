"""DeepSpeed ZeRO-3 behind `sfcompile.train.distributed`: the second engine, same trainer (``--engine
deepspeed --zero 3``).

How the pieces map onto ZeRO-3:

* Wrapping (`initialize`): after the forge (its statistics and SLoRB parameters exist) and the optimizer
  are built, ``deepspeed.initialize(model, optimizer=MaskAwareAdamW)`` partitions EVERY parameter — W, the
  SoftMask's ``mask``/``hard``, the stored m_eff, the Hessian/Fisher EMA, SLoRB S — as flat 1/W slices;
  ZeRO's module hooks gather them around each module's forward and backward (W and m_eff sit on the module
  whose forward reads them; ``mask``/``hard`` are gathered only by the forge's pattern work). Parameters stay
  fp32 in ZeRO (``bf16.enabled=false``): the trainer's bf16 autocast does the compute, masks keep fp32
  resolution, and ZeRO's fp32 master partitions are what AdamW updates. The engine's forward turns off any
  autocast entered outside it unless its config has a ``torch_autocast`` section, so `ds_config` writes one
  whenever the trainer computes in bf16 (without it the H200 run computed in fp32: 2.2 s per 2048-token step
  for 0.6B parameters); its
  ``lower_precision_safe_modules`` is empty, so every parameter is still gathered in fp32.
  ``stage3_param_persistence_threshold=0``: no parameter is kept whole, so every
  site is partitioned the same way.
* The forge (`sfcompile.masking.zero3`): element-wise work (probe, EMA, counts) on the flat slices; pattern
  work (mask update, SLoRB init, finalisation) under ``deepspeed.zero.GatheredParameters`` one site group at
  a time, trainable tensors written there copied into ZeRO's fp32 master partitions. The finite-difference
  probe reads gradients with ``torch.autograd.grad`` (averaged over ranks), which leaves ZeRO's partitioned
  training gradients untouched.
* The step (`Stepper`): ``engine.backward`` per micro-batch with the accumulation boundary set explicitly on
  the last one, the gradient norm from ZeRO's local fp32 gradient slices (for the NaN guard and the log),
  ``engine.step()`` (ZeRO clips at ``gradient_clipping`` itself); a skipped step clears ZeRO's gradients.
* Teacher: partitioned by ``deepspeed.initialize`` without an optimizer (ZeRO-3 parameter offload engine).
* Checkpoints (`save` / `load`): ``engine.save_checkpoint`` (fp32 master + AdamW partitions, per rank) plus
  each rank's slices of the frozen tensors (masks, statistics), which ZeRO's checkpoint does not restore.
  Resume needs the same number of ranks (refused otherwise); the final model is gathered tensor by tensor
  (`full_state`), so `harden` and ``save_pretrained`` work as with FSDP2.

Not supported under ZeRO-3 (refused by `check_supported`, each with what to use): the mask-aware AdamW terms
(SR-STE, CAST) — ZeRO hands the optimizer flat partitions, not per-site weights; score "wanda" (its input
hook cannot see the partitioned statistic); estimator "hvp" (no double backward through
re-partitioned parameters) and "fd_forward" (the step's gradients are not in ``.grad``); ``compile=True``.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path

import torch
from torch import nn

MISSING = (
    "engine='deepspeed' needs the deepspeed package: pip install deepspeed (version 0.19 or newer; on a machine "
    "without CUDA install with DS_BUILD_OPS=0 and run with DS_ACCELERATOR=cpu). Or use engine='fsdp2' (the "
    "default), which needs nothing beyond torch"
)
DS_DIR = "ds"
_ENGINES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its DeepSpeed engine


class DeepSpeedUnavailable(RuntimeError):
    """DeepSpeed is not installed or cannot run here."""


class DeepSpeedUnsupported(ValueError):
    """A run setting the ZeRO-3 engine does not support, with what to use instead."""


def require_deepspeed():
    """The imported ``deepspeed`` module, or a clear error naming what to do."""
    env_defaults()
    try:
        import deepspeed
    except ImportError as err:
        raise DeepSpeedUnavailable(MISSING) from err
    return deepspeed


def check_supported(config) -> None:
    """Refuse settings ZeRO-3 cannot honour (see the module docstring)."""
    forge = getattr(config, "forge", None)
    problems = []
    if getattr(config, "srste_decay", 0.0) or getattr(config, "cast_l1", 0.0):
        problems.append("srste_decay/cast_l1 (ZeRO-3 gives the optimizer flat partitions, not per-site weights)")
    if forge is not None and forge.score == "wanda":
        problems.append("score='wanda' (use 'hessian_obd', 'hessian_ratio', 'fisher' or 'magnitude')")
    if forge is not None and forge.uses_hessian and forge.estimator in ("hvp", "fd_forward"):
        problems.append(f"estimator={forge.estimator!r} (use 'fd')")
    if getattr(config, "compile", False):
        problems.append("compile=True")
    if problems:
        raise DeepSpeedUnsupported(
            "engine='deepspeed' does not support " + "; ".join(problems) + ". Change these or use engine='fsdp2'"
        )


def ds_config(config, *, train: bool = True) -> dict:
    """The DeepSpeed config dict for a `TrainConfig` (ZeRO-3, fp32 parameters + the trainer's autocast)."""
    out = {
        "train_micro_batch_size_per_gpu": int(config.micro_batch),
        "gradient_accumulation_steps": int(config.grad_accum),
        "zero_optimization": {
            "stage": 3,
            "stage3_param_persistence_threshold": 0,
            "overlap_comm": True,
            "contiguous_gradients": True,
        },
        "bf16": {"enabled": False},
        "fp16": {"enabled": False},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    if config.bf16_autocast():  # the engine's forward keeps the trainer's autocast only when told so
        out["torch_autocast"] = {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}
    if train and getattr(config, "clip", 0.0) > 0:
        out["gradient_clipping"] = float(config.clip)
    return out


def initialize(model: nn.Module, optimizer, config):
    """Partition ``model`` and hand ``optimizer`` to ZeRO-3; returns the DeepSpeed engine (also kept on the
    model: `engine_of`). The engine's forward is the model's."""
    deepspeed = require_deepspeed()
    check_supported(config)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, config=ds_config(config), dist_init_required=False
    )
    _ENGINES[model] = engine  # not an attribute: the engine is a Module holding the model (a cycle)
    from sfcompile.masking import zero3

    zero3.set_release(model, engine.optimizer.empty_partition_cache)  # the probe writes slices between passes
    return engine


def wrap_teacher(teacher: nn.Module, config) -> nn.Module:
    """Partition the frozen teacher (ZeRO-3 without an optimizer); returns the module (ZeRO's hooks are on it)."""
    deepspeed = require_deepspeed()
    teacher.requires_grad_(False)
    engine, _, _, _ = deepspeed.initialize(
        model=teacher, config=ds_config(config, train=False), dist_init_required=False
    )
    _ENGINES[teacher] = engine
    return teacher


def engine_of(model: nn.Module):
    engine = _ENGINES.get(model)
    if engine is None:
        raise RuntimeError("this model was not initialised by the DeepSpeed engine (engines/deepspeed.initialize)")
    return engine


class Stepper:
    """backward / gradient norm / step / skip through the DeepSpeed engine (see the module docstring)."""

    def __init__(self, model: nn.Module):
        self.engine = engine_of(model)
        self.params = [p for p in model.parameters() if p.requires_grad]

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        self.engine.set_gradient_accumulation_boundary(last)
        self.engine.backward(loss, scale_wrt_gas=False)  # the trainer already divides by the micro count

    def grad_norm(self) -> torch.Tensor:
        """The global L2 norm of the reduced gradients (ZeRO's local fp32 slices, summed over ranks)."""
        from sfcompile.masking import zero3

        sq = None
        for p in self.params:
            g = zero3.local_grad(p)
            if g is not None:
                s = g.float().square().sum()
                sq = s if sq is None else sq + s
        if sq is None:
            sq = torch.zeros((), device=self.engine.device)
        sq = sq.double()
        torch.distributed.all_reduce(sq)
        return sq.sqrt()

    def step(self, clip: float, grad_norm: torch.Tensor) -> None:
        self.engine.step()  # ZeRO clips to the config's gradient_clipping with its own norm

    def skip(self) -> None:
        self.engine.optimizer.zero_grad(set_to_none=True)

    def zero_grad(self) -> None:
        """``engine.step`` already cleared ZeRO's gradients."""


# ---- checkpoints ----
def _frozen(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if not p.requires_grad and hasattr(p, "ds_tensor")}


def save(folder, model: nn.Module) -> None:
    """Every rank writes its ZeRO partitions (collective): ``folder/ds``."""
    engine = engine_of(model)
    root = Path(folder) / DS_DIR
    engine.save_checkpoint(str(root), tag="state", save_latest=False)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    frozen = {n: p.ds_tensor.detach().cpu().clone() for n, p in _frozen(model).items()}
    torch.save({"world": world, "tensors": frozen}, root / f"frozen_rank{rank:05d}.pt")


def has_state(folder) -> bool:
    return (Path(folder) / DS_DIR / "state").is_dir()


def load(folder, model: nn.Module) -> None:
    """Load ``folder/ds`` written by `save` with the same number of ranks."""
    engine = engine_of(model)
    root = Path(folder) / DS_DIR
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    path = root / f"frozen_rank{rank:05d}.pt"
    saved = torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None
    if saved is None or saved["world"] != world:
        wrote = len(list(root.glob("frozen_rank*.pt")))
        raise RuntimeError(
            f"{root} was written by {wrote} DeepSpeed ranks; this run has {world}. DeepSpeed checkpoints resume "
            "on the same number of ranks: relaunch with that many, or use engine='fsdp2' (DCP reshards)"
        )
    engine.load_checkpoint(str(root), tag="state", load_module_strict=False)
    for name, p in _frozen(model).items():
        p.ds_tensor.copy_(saved["tensors"][name].to(p.ds_tensor.device))


def full_state(model: nn.Module) -> dict | None:
    """The full state dict on rank 0 (CPU tensors; None elsewhere), gathered one parameter at a time."""
    deepspeed = require_deepspeed()
    main = torch.distributed.get_rank() == 0
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    state = dict(model.state_dict()) if main else None  # buffers and extra state; parameters replaced below
    for p in {id(p): p for p in model.parameters()}.values():
        with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
            if main:
                value = p.detach().cpu().clone()
                for name in names[id(p)]:
                    state[name] = value
    return state


def env_defaults() -> None:
    """DeepSpeed picks its accelerator at import: on a machine without CUDA, the CPU one (gloo)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
