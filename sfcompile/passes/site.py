"""A `Site`: one prunable matmul weight, as discovery found it in the captured graph."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Site:
    """One matmul weight that can take a sparsity pattern.

    Attributes:
        name: the parameter's fully-qualified name, e.g. ``"model.layers.0.self_attn.q_proj.weight"``.
        module: FQN of the module that owns the parameter (``"model.layers.0.self_attn.q_proj"``).
        param: the attribute name on that module (``"weight"``, or e.g. ``"gate_up_proj"`` for MoE experts).
        shape: the parameter's shape.
        k_dim: the non-negative index of the reduction dimension K (the dim the matmul sums over):
            last for ``nn.Linear`` and 3-D experts, 0 for GPT-2 ``Conv1D``.
        kind: ``"linear"`` (F.linear), ``"conv1d"`` (addmm/mm with W as (K, N)), ``"experts"`` (3-D weight,
            grouped or per-expert matmul) or ``"matmul"`` (any other mm/bmm on a parameter).
        shares_input_with: names of the other sites whose matmul reads the same input tensor (q/k/v, gate/up).
    """

    name: str
    module: str
    param: str
    shape: tuple[int, ...]
    k_dim: int
    kind: str
    shares_input_with: tuple[str, ...] = field(default=())

    @property
    def k(self) -> int:
        """Size of the reduction dimension."""
        return self.shape[self.k_dim]


@dataclass(frozen=True)
class Skipped:
    """A matmul weight discovery saw but did not make a site, and why."""

    name: str
    reason: str


# A hardened parameter carries what lowering needs to know about it, on the nn.Parameter object itself, so the
# `sparseforge` backend can recognise it by identity among a Dynamo graph's inputs.
_HARDENED_ATTR = "_sfcompile_hardened"


def mark_hardened(param, info: dict) -> None:
    """Record on ``param`` that it holds an exact pattern: ``{"pattern", "k_dim", "kind", "site"}``."""
    setattr(param, _HARDENED_ATTR, dict(info))


def hardened_info(tensor) -> dict | None:
    """What `mark_hardened` recorded on ``tensor``, or None for an ordinary tensor."""
    return getattr(tensor, _HARDENED_ATTR, None)


# The S of a SLoRB bypass (`sfcompile.masking.slorb`) is marked the same way, so the backend can find the bypass
# matmuls of a graph by their weight (`sfcompile.passes.bypass`).
_BYPASS_ATTR = "_sfcompile_bypass"


def mark_bypass(param, info: dict) -> None:
    """Record on ``param`` that it is the S of a SLoRB bypass: ``{"group"}`` (k, the block-sum width)."""
    setattr(param, _BYPASS_ATTR, dict(info))


def bypass_info(tensor) -> dict | None:
    """What `mark_bypass` recorded on ``tensor``, or None."""
    return getattr(tensor, _BYPASS_ATTR, None)
