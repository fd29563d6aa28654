"""Model loading: local folders, GGUF files and aliases, offline (``load``, ``alias_config``)."""

from sfcompile.models.aliases import alias_config, known_aliases
from sfcompile.models.load import load

__all__ = ["alias_config", "known_aliases", "load"]
