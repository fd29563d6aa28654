"""Lowering: the ``sparseforge`` torch.compile backend, packed formats, custom ops and Triton kernels.

Importing this package registers the ``sparseforge`` backend with Dynamo (idempotent; it imports Dynamo but
not Inductor, Triton or the kernels, which load on the first compile).
"""

from sfcompile.lowering.backend import register as _register_backend

_register_backend()
