"""The one place that knows about processes: rank helpers, model wrapping, sharded state.

One process: every helper is the identity (`wrap_model` returns the model, reductions return their input).
Several processes (launched by `sfcompile train --nproc-per-node N`, see `launch.py`, or by ``torchrun -m
sfcompile train ...``): the process group comes from the environment torchrun sets (`init_from_env`) and the
student and teacher are wrapped by the run's engine:

``"fsdp2"`` (default, `engines/fsdp2.py`)
    ``fully_shard`` on each repeated block, then on the root. The stored m_eff (the forward's mask) is sharded
    with its weight by FSDP2 itself; the SoftMask's ``mask`` and ``hard`` and the forge's statistics
    (Hessian / Fisher EMA) are row-sharded the same way by hand (they are not needed in the forward, so
    FSDP2 does not all-gather them). Sharding is along dim 0, so an N:M group or 16×16 tile stays
    on one rank when K is the last dim; when K is dim 0 (GPT-2 Conv1D) `check_shardable` refuses world sizes
    that would split a group. Mask updates then need no communication except τ (`masking.shards`).
``"deepspeed"`` (`engines/deepspeed.py`)
    ZeRO-3 through the same calls: `wrap_model` only marks the model; `attach_optimizer` (after the optimizer
    is built) runs ``deepspeed.initialize``, which partitions every parameter; `stepper` drives backward and
    step through the engine; mask work runs on ZeRO's slices or under gathered parameters (`masking.zero3`).

At the end of a sharded run `full_model` gathers the trained state into a plain (unsharded, CPU) copy of the
model on rank 0, which the trainer hardens and saves.
"""

from __future__ import annotations

import copy
import itertools
import os
import weakref
from datetime import timedelta

import torch
from torch import nn

ENGINES = ("fsdp2", "deepspeed")


class DistributedError(RuntimeError):
    """A distributed setup that cannot work, with what to change."""


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    return torch.distributed.get_rank() if _initialized() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if _initialized() else 1


def expected_world_size() -> int:
    """The world this process trains in, before the group exists: `world_size` once initialised, else the
    ``WORLD_SIZE`` torchrun (and the launcher) put in the environment, else 1. A config built in a worker
    sizes its step-based schedule with it."""
    if _initialized():
        return world_size()
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        return max(1, int(value))
    except ValueError:
        raise DistributedError(f"WORLD_SIZE={value!r} in the environment is not a process count") from None


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    if _initialized():
        torch.distributed.barrier()


# ---- process group ----
def init_from_env(device: str = "auto", timeout_s: float = 1800.0) -> bool:
    """Join the process group described by torchrun's environment (``WORLD_SIZE`` > 1); True if it did.

    NCCL on CUDA, gloo otherwise; each process uses ``cuda:LOCAL_RANK``. A no-op in a single process or when a
    group already exists (a caller that set one up itself).
    """
    if _initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda") or str(device).startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank())
    torch.distributed.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    return True


def shutdown() -> None:
    """Leave the process group (if any)."""
    if _initialized():
        torch.distributed.destroy_process_group()


# ---- reductions (identity in one process) ----
def all_reduce_mean(value):
    """Mean over ranks of a float or tensor (a new value); ``value`` itself in one process."""
    if world_size() == 1:
        return value
    if isinstance(value, torch.Tensor):
        t = value.detach().clone().double()
        torch.distributed.all_reduce(t)
        return (t / world_size()).to(value.dtype)
    t = torch.tensor([float(value)], dtype=torch.float64, device=_reduce_device())
    torch.distributed.all_reduce(t)
    return float(t) / world_size()


def all_reduce_dict_mean(values: dict[str, float]) -> dict[str, float]:
    """Mean over ranks of every float of a dict (one collective; keys must match on all ranks)."""
    if world_size() == 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_reduce_device())
    torch.distributed.all_reduce(t)
    return {k: float(v) / world_size() for k, v in zip(keys, t.tolist())}


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is True on any (e.g. a stop signal seen by one process)."""
    if world_size() == 1:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=_reduce_device())
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_object(obj, src: int = 0):
    """``obj`` from rank ``src`` on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def _reduce_device() -> torch.device:
    backend = torch.distributed.get_backend()
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


# ---- wrapping ----
def is_sharded(model: nn.Module) -> bool:
    """Whether ``model``'s parameters are sharded across processes (so every rank must run its forwards)."""
    return (
        any(hasattr(p, "to_local") for p in itertools.islice(model.parameters(), 4))
        or getattr(model, "_sfcompile_engine", None) is not None
    )


def check_shardable(model: nn.Module, world: int) -> None:
    """Refuse a world size that would split an N:M group or a block tile across ranks.

    Sharding is along dim 0 in chunks of ``ceil(d0 / world)`` rows. Groups run along K and tiles over the
    last two dims, so a split is possible only when K is dim 0 (Conv1D) or a 2-D weight carries block tiles.
    """
    from sfcompile.masking.state import masked_sites
    from sfcompile.patterns import NM, Block, Unstructured

    for site, _, soft in masked_sites(model):
        d0 = site.shape[0]
        chunk = -(-d0 // world)
        p = soft.pattern
        k_dim = soft.k_dim % len(site.shape)
        if isinstance(p, Unstructured):
            raise DistributedError(
                f"pattern {p} projects over the whole weight of {site.name}, which sharding "
                "splits across ranks; use an N:M or block pattern for multi-process training"
            )
        need = None
        if isinstance(p, NM) and k_dim == 0:
            need = p.m
        if isinstance(p, Block) and len(site.shape) == 2:
            need = p.size
        if need and chunk % need:
            raise DistributedError(
                f"{site.name} {tuple(site.shape)}: {world} ranks give {chunk} rows of dim 0 each, not a "
                f"multiple of {need} (pattern {p}, K is dim {k_dim}): a group would be split across ranks. "
                f"Use a world size W with ceil({d0}/W) divisible by {need}, or exclude the site"
            )


_SKELETONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _skeleton(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s module tree with its parameters on the meta device (no memory) and its buffers
    copied (small; rotary tables are not in the state dict): the frame the full state is loaded into."""
    memo = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    return copy.deepcopy(model, memo)


def engine_of(config) -> str:
    engine = getattr(config, "engine", "fsdp2")
    if engine not in ENGINES:
        raise DistributedError(f"engine {engine!r} is not known; choose one of {ENGINES}")
    return engine


def wrap_model(model: nn.Module, config) -> nn.Module:
    """Wrap the student for the run's engine; in one process, the model itself.

    Call after `SparseForge` is built (its statistics and SLoRB parameters must exist, to be sharded) and
    before the optimizer. FSDP2 wraps in place: the returned module IS ``model``.
    """
    world = world_size()
    if world == 1:
        return model
    engine = engine_of(config)
    if engine == "deepspeed":  # partitioned at attach_optimizer; pattern work runs gathered: any world size
        from sfcompile.train.engines.deepspeed import check_supported, require_deepspeed

        require_deepspeed()
        check_supported(config)
        _SKELETONS[model] = _skeleton(model) if is_main_process() else None
        model._sfcompile_engine = engine
        return model
    check_shardable(model, world)
    _SKELETONS[model] = _skeleton(model) if is_main_process() else None
    if engine == "fsdp2":
        from sfcompile.train.engines.fsdp2 import wrap

        wrapped = wrap(model, config, trainable=True)
    else:
        from sfcompile.train.engines.deepspeed import wrap

        wrapped = wrap(model, config, trainable=True)
    model._sfcompile_engine = engine
    return wrapped


def wrap_teacher(teacher: nn.Module | None, config) -> nn.Module | None:
    """Shard the frozen teacher like the student (FSDP2: blocks then root, resharded after each forward)."""
    if teacher is None or world_size() == 1:
        return teacher
    if getattr(config, "teacher", "copy") == "offload":
        raise DistributedError(
            'teacher="offload" streams blocks to one GPU; with several processes the teacher '
            'is sharded across them instead: use teacher="copy"'
        )
    if engine_of(config) == "deepspeed":
        from sfcompile.train.engines.deepspeed import wrap_teacher as ds_wrap_teacher

        return ds_wrap_teacher(teacher, config)
    from sfcompile.train.engines.fsdp2 import wrap

    return wrap(teacher, config, trainable=False)


def attach_optimizer(student: nn.Module, model: nn.Module, optimizer, config) -> nn.Module:
    """The module the trainer calls for the training forward once the optimizer exists: ``student`` itself,
    or under DeepSpeed the ZeRO-3 engine built from ``model`` and ``optimizer`` (which partitions the model)."""
    if getattr(model, "_sfcompile_engine", None) != "deepspeed":
        return student
    from sfcompile.train.engines.deepspeed import initialize

    return initialize(model, optimizer, config)


class Stepper:
    """backward / gradient norm / clip + step / skip for one process and FSDP2 (plain autograd + optimizer);
    `stepper` returns the DeepSpeed one under ZeRO-3."""

    def __init__(self, optimizer, trained, own_grads: bool = False):
        self.optimizer, self.trained = optimizer, trained
        self.own_grads = own_grads
        self._owned: dict[int, weakref.ref] = {}  # id(param) -> the gradient copy it holds (no reference kept)

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        loss.backward()
        if self.own_grads:
            self._own_grads()

    def _own_grads(self) -> None:
        """Copy out every gradient this backward created (for CUDA graphs, ``compile_mode="reduce-overhead"``).

        A backward that finds ``.grad`` None stores the compiled backward's output buffer itself as ``.grad``;
        that buffer belongs to the CUDA graphs' memory pool, and the next compiled call (the next micro-batch's
        teacher, a Hessian probe) writes over it. Later backwards of the step add into the copy in place, so
        this copies each gradient once per step (one multi-tensor copy)."""
        fresh = [p for p in self.trained if p.grad is not None and not self._holds_copy(p)]
        if not fresh:
            return
        copies = [torch.empty_like(p.grad) for p in fresh]
        torch._foreach_copy_(copies, [p.grad for p in fresh])
        for p, g in zip(fresh, copies):
            p.grad = g
            self._owned[id(p)] = weakref.ref(g)

    def _holds_copy(self, p: torch.Tensor) -> bool:
        ref = self._owned.get(id(p))
        return ref is not None and ref() is p.grad

    def _split_grads(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(local shards of the gradients FSDP2 shards over all ranks, every other gradient).

        The global norm and the clipping scale are computed on the local shards with plain tensor ops and one
        all-reduce: clipping through DTensor cost 67 ms of host time per step on an FSDP2 model with 310
        gradients (2 ranks, CPU), 4 ms on the local shards."""
        shards, whole = [], []
        for p in self.trained:
            g = p.grad
            if g is None:
                continue
            mesh = getattr(g, "device_mesh", None)
            if mesh is not None and mesh.ndim == 1 and mesh.size() == world_size() and all(
                pl.is_shard() for pl in g.placements
            ):
                shards.append(g.to_local())
            else:
                whole.append(g)
        return shards, whole

    def grad_norm(self) -> torch.Tensor:
        shards, whole = self._split_grads()
        if shards or whole:
            device = (shards or whole)[0].device
        else:
            device = _reduce_device() if _initialized() else torch.device("cpu")
        sq = torch.zeros((), dtype=torch.float32, device=device)
        if shards:
            sq = sq + torch.stack([n.float() for n in torch._foreach_norm(shards)]).square().sum()
        if world_size() > 1 and _initialized():
            torch.distributed.all_reduce(sq)  # every rank holds different rows: the squares add up
        if not whole:
            return sq.sqrt()
        norm = torch.nn.utils.get_total_norm(whole)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        return (sq + norm.float().to(device).square()).sqrt() if shards else norm

    def step(self, clip: float, grad_norm: torch.Tensor) -> None:
        if clip > 0:  # torch.nn.utils.clip_grads_with_norm_'s scale, applied to the local shards
            scale = (clip / (grad_norm + 1e-6)).clamp(max=1.0)
            shards, whole = self._split_grads()
            sharded_whole = [g for g in whole if hasattr(g, "to_local")]  # DTensors placed otherwise
            for g in sharded_whole:
                g.mul_(scale.item())
            plain = shards + [g for g in whole if not hasattr(g, "to_local")]
            for device, dtype in {(g.device, g.dtype) for g in plain}:
                group = [g for g in plain if g.device == device and g.dtype == dtype]
                torch._foreach_mul_(group, scale.to(device, dtype))
        self.optimizer.step()

    def skip(self) -> None:
        """Nothing to do: `zero_grad` follows."""

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)


def stepper(model: nn.Module, optimizer, trained, own_grads: bool = False):
    """``own_grads``: copy each step's gradients out of the compiled backward's buffers (CUDA graphs; one
    process only, which `TrainConfig` enforces)."""
    if getattr(model, "_sfcompile_engine", None) == "deepspeed":
        from sfcompile.train.engines.deepspeed import Stepper as DeepSpeedStepper

        return DeepSpeedStepper(model)
    return Stepper(optimizer, trained, own_grads)


def full_model(model: nn.Module) -> nn.Module | None:
    """The trained model as a plain module: ``model`` itself in one process; under a sharded engine a CPU copy
    with the full state on rank 0 (None on the other ranks). Collective: call on every rank."""
    if not is_sharded(model):
        return model
    if getattr(model, "_sfcompile_engine", None) == "deepspeed":
        from sfcompile.train.engines.deepspeed import full_state

        state = full_state(model)
    else:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not is_main_process():
        return None
    skeleton = _SKELETONS.get(model)
    if skeleton is None:
        raise DistributedError("this model was not wrapped by sfcompile.train.distributed.wrap_model")
    missing = set(skeleton.state_dict()) - set(state)
    if missing:
        raise DistributedError(
            f"the gathered state lacks {sorted(missing)[:3]}: the model changed after wrapping"
        )
    skeleton.load_state_dict(state, assign=True)
    for p in skeleton.parameters():
        p.requires_grad_(False)
    return skeleton


# ---- sharded checkpoints (DCP) ----
DCP_DIR = "dcp"


def shared_name(name: str) -> str:
    """``name`` made the same on every rank (rank 0's pid appended): one temporary folder for all writers."""
    return f"{name}-{broadcast_object(os.getpid())}"


def save_sharded_state(folder, model: nn.Module, optimizer) -> None:
    """Every rank writes its shards of the model and optimizer state under ``folder/dcp`` (collective).

    ``torch.distributed.checkpoint`` keys tensors by parameter name, so the checkpoint loads on any number of
    ranks (resharded on load), also into a single unwrapped process.
    """
    if getattr(model, "_sfcompile_engine", None) == "deepspeed":
        from sfcompile.train.engines import deepspeed as ds

        return ds.save(folder, model)
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(folder) + "/" + DCP_DIR)


def has_sharded_state(folder) -> bool:
    from sfcompile.train.engines.deepspeed import has_state

    return (folder / DCP_DIR / ".metadata").exists() or has_state(folder)


def load_sharded_state(folder, model: nn.Module, optimizer) -> None:
    """Load ``folder/dcp`` into ``model`` and ``optimizer``, whatever the number of ranks that wrote it."""
    from sfcompile.train.engines import deepspeed as ds

    if ds.has_state(folder) or getattr(model, "_sfcompile_engine", None) == "deepspeed":
        if not ds.has_state(folder) or getattr(model, "_sfcompile_engine", None) != "deepspeed":
            raise DistributedError(
                f"{folder}: DeepSpeed checkpoints resume with engine='deepspeed' and FSDP2/DCP ones with "
                "engine='fsdp2'; resume with the engine that wrote it"
            )
        return ds.load(folder, model)
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optimizer": optim_sd}
    dcp.load(state, checkpoint_id=str(folder) + "/" + DCP_DIR)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
