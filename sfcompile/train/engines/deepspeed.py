"""DeepSpeed ZeRO-3 behind `sfcompile.train.distributed.wrap_model`: NOT BUILT — `wrap` refuses with a clear
error (after checking that deepspeed is installed at all). These notes say what the engine needs.

What fits: SoftMask parametrizations are ordinary submodules, so ZeRO-3's per-module fetch hooks would gather
``original``, ``mask`` and ``hard`` before they compute; a frozen teacher can be partitioned by
``deepspeed.initialize`` without an optimizer.

What is missing: ZeRO-3 owns the training step. ``engine.backward`` / ``engine.step`` replace
``loss.backward()`` / ``optimizer.step()`` in `loop.train`; gradients are partitioned into ZeRO's flat fp32
buffers, so ``param.grad`` is None for the NaN guard, the Fisher EMA and the finite-difference Hessian probe
(they need ``deepspeed.utils.safe_get_full_grad``); the mask-aware AdamW (SR-STE, CAST) runs on ZeRO's flat
partitions instead of per-site parameters, so its per-site mask terms cannot be applied; mask updates must run
under ``deepspeed.zero.GatheredParameters([W, mask, hard, stats], modifier_rank=0)`` per site; checkpoints are
DeepSpeed's own format. None of this could be run here (DeepSpeed needs CUDA and is not installed on the GPU
machine), so the student path stops with a clear error instead of training wrongly.
"""

from __future__ import annotations

from torch import nn

MISSING = (
    "engine='deepspeed' needs the deepspeed package (pip install deepspeed; it needs CUDA). "
    "Use engine='fsdp2' (the default), which needs nothing beyond torch"
)


class DeepSpeedUnavailable(RuntimeError):
    """DeepSpeed is not installed or cannot run here."""


def require_deepspeed():
    """The imported ``deepspeed`` module, or a clear error naming what to do."""
    try:
        import deepspeed
    except ImportError as err:
        raise DeepSpeedUnavailable(MISSING) from err
    return deepspeed


def wrap(model: nn.Module, config, *, trainable: bool):
    """Refuses, naming what is missing (see the module docstring); checks the installation first."""
    require_deepspeed()
    raise DeepSpeedUnavailable(
        "engine='deepspeed' is not built yet: ZeRO-3 owns backward/step, partitions the gradients that the "
        "NaN guard, Fisher EMA and Hessian probe read, and flattens the parameters the mask-aware AdamW "
        "updates per site (sfcompile/train/engines/deepspeed.py lists what is missing). Use engine='fsdp2'"
    )
