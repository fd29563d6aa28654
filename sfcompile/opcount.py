"""Counting the ATen ops a piece of code dispatches: what the op-count benchmarks and tests measure.

    with OpCount() as ops:          # views (no kernel launch) not counted; OpCount(views=True) counts them
        forge.after_step(step)
    ops.n

A ``TorchDispatchMode``: it sees every op below autograd, eager or not, on any device.
"""

from __future__ import annotations

from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["OpCount"]


class OpCount(TorchDispatchMode):
    """Counts dispatched ops in ``n``; views too only with ``views=True`` (a view launches nothing)."""

    def __init__(self, views: bool = False):
        super().__init__()
        self.views = views
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += self.views or not func.is_view
        return func(*args, **(kwargs or {}))
