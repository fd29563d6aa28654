"""sfcompile: make any Hugging Face causal LM hardware-sparse (2:4, N:M, block-16), then run it fast.

The public API, in the order of the flow::

    model, tok = sfcompile.load("smollm2-135m")
    sites = sfcompile.discover(model)
    sfcompile.sparsify(model, pattern="2:4")
    sfcompile.prune(model, method="sparsegpt", calib="calib", tok=tok)   # one-shot, or:
    sfcompile.train(model, sfcompile.TrainConfig(tokens="20M"))    # SparseForge recovery
    sfcompile.harden(model)
    sfcompile.save(model, tok, "out/")
    fast = torch.compile(model, backend="sparseforge")
"""

from importlib import import_module

import sfcompile.lowering  # noqa: F401  (registers the "sparseforge" torch.compile backend)
from sfcompile.export import save
from sfcompile.masking.state import harden, sparsify
from sfcompile.patterns import NM, Block, Pattern, Unstructured, parse_pattern

__version__ = "0.1.0"

# Heavier pieces load on first use, so `import sfcompile` stays cheap.
_LAZY = {
    "load": ("sfcompile.models", "load"),
    "discover": ("sfcompile.passes.discover", "discover"),
    "prune": ("sfcompile.masking.oneshot", "prune"),
    "train": ("sfcompile.train", "train"),
    "TrainConfig": ("sfcompile.train", "TrainConfig"),
    "ForgeConfig": ("sfcompile.masking.forge", "ForgeConfig"),
}


def __getattr__(name):
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(import_module(module), attr)
    raise AttributeError(f"module 'sfcompile' has no attribute {name!r}")


__all__ = ["load", "discover", "sparsify", "prune", "train", "TrainConfig", "ForgeConfig", "harden", "save",
           "parse_pattern", "Pattern", "NM", "Block", "Unstructured"]
