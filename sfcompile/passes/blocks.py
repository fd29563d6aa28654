"""Find a model's repeated decoder blocks, generically.

The one-shot pruners calibrate sequentially, block by block (SparseGPT/Wanda's "sequential" protocol), so they
need the list of repeated blocks in execution order. Every HF decoder keeps them in one ``nn.ModuleList`` of
same-class children (``model.layers``, ``transformer.h``, ``model.decoder.layers``, ...). We find it without
names: among all ``nn.ModuleList``s whose children all share one class, take the one holding the most
parameters.
"""

from __future__ import annotations

from torch import nn

__all__ = ["repeated_blocks"]


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def repeated_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's repeated blocks, in order, as ``(fqn, module)`` pairs.

    The blocks are the children of the ``nn.ModuleList`` (with at least one child, all of one class) that
    holds the most parameters; ties go to the list found first in module order.

    Args:
        model: any ``nn.Module``, typically a Hugging Face causal LM.

    Returns:
        ``[("model.layers.0", layer0), ("model.layers.1", layer1), ...]``

    Raises:
        ValueError: if the model has no ``nn.ModuleList`` of same-class modules.

    Example:
        >>> blocks = repeated_blocks(model)          # doctest: +SKIP
        >>> [name for name, _ in blocks][:2]         # doctest: +SKIP
        ['model.layers.0', 'model.layers.1']
    """
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        classes = {type(child) for child in module}
        if len(classes) != 1:
            continue
        size = _n_params(module)
        if size == 0:
            continue
        if best is None or size > best[0]:
            best = (size, name, module)
    if best is None:
        raise ValueError(
            f"{type(model).__name__} has no nn.ModuleList of same-class blocks holding parameters, so it "
            "cannot be calibrated block by block; use method=\"magnitude\", which needs no calibration"
        )
    _, prefix, blocks = best
    return [(f"{prefix}.{i}" if prefix else str(i), block) for i, block in enumerate(blocks)]
