"""The dense teacher for distillation: built from the student's dense weights, frozen, placed by mode.

Modes (``TrainConfig.teacher``; the memory trade-off is documented on `TrainConfig`):
    ``"copy"``    a frozen deep copy on the training device (bf16 on CUDA);
    ``"offload"`` weights in (pinned) CPU memory, each repeated block copied to the device right before it
                  runs and released after; embeddings/head/norms stay on the device;
    ``"none"``    no teacher.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from sfcompile.masking.state import strip_masks


def dense_copy(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` computing with its dense weights W (soft masks removed, not applied)."""
    teacher = strip_masks(copy.deepcopy(model))
    teacher.requires_grad_(False)
    teacher.eval()
    return teacher


def _offload_blocks(teacher: nn.Module, device: torch.device) -> nn.Module:
    from sfcompile.passes.blocks import repeated_blocks

    blocks = [b for _, b in repeated_blocks(teacher)]
    in_blocks = {id(p) for b in blocks for p in b.parameters()} | {id(t) for b in blocks for t in b.buffers()}
    # Everything outside the blocks lives on the device.
    for module in teacher.modules():
        for p in module.parameters(recurse=False):
            if id(p) not in in_blocks:
                p.data = p.data.to(device)
        for name, b in list(module.named_buffers(recurse=False)):
            if id(b) not in in_blocks:
                module._buffers[name] = b.to(device)
    pin = device.type == "cuda"
    for block in blocks:
        host = {}
        for t in list(block.parameters()) + list(block.buffers()):
            host[t] = t.data.pin_memory() if pin else t.data
            t.data = host[t]

        def to_device(mod, args, kwargs, _host=host):
            for t, h in _host.items():
                t.data = h.to(device, non_blocking=True)

        def to_host(mod, args, kwargs, output, _host=host):
            for t, h in _host.items():
                t.data = h
            return output

        block.register_forward_pre_hook(to_device, with_kwargs=True)
        block.register_forward_hook(to_host, with_kwargs=True)
    return teacher


def build_teacher(model: nn.Module, mode: str, device: torch.device, given: nn.Module | None = None):
    """The teacher for ``mode`` (None for ``"none"``). ``given`` is used as is (frozen, eval mode)."""
    if given is not None:
        given.requires_grad_(False)
        return given.eval()
    if mode == "none":
        return None
    teacher = dense_copy(model)
    if device.type == "cuda":
        teacher.to(torch.bfloat16)
    if mode == "offload" and device.type != "cpu":
        return _offload_blocks(teacher.to("cpu"), device)
    return teacher.to(device)
