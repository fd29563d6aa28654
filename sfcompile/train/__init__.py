"""Training: `train` runs SparseForge + distillation on a sparsified model; `TrainConfig` configures it.

``sfcompile.train(model, config)`` is the documented call, but once this package is imported Python binds it
as the attribute ``sfcompile.train`` (a package's submodule), hiding the lazily exported function; so the
package itself is callable and calls `train`.
"""

import inspect
import sys
import types

from sfcompile.train.config import TrainConfig, TrainConfigError, parse_tokens
from sfcompile.train.loop import TrainResult, train

__all__ = ["TrainConfig", "TrainConfigError", "TrainResult", "parse_tokens", "train"]


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
__signature__ = inspect.signature(train)
