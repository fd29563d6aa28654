"""`save`: a hardened (or dense) model to a folder, atomically, with its sparsity manifest.

The folder is a normal Hugging Face folder (``save_pretrained`` + tokenizer) plus ``sparsity.json``; with
``packed=True`` the sparse weights are also written compressed (``sparse_weights.safetensors``, the lowering's
packed formats). The folder appears complete or not at all: everything is written to a temporary sibling and
renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from torch import nn

from sfcompile.masking.state import MaskStateError, is_sparsified

MANIFEST_FILE = "sparsity.json"
PACKED_FILE = "sparse_weights.safetensors"


def atomic_dir(path: Path):
    """Context manager yielding a temporary directory that replaces ``path`` on success only."""
    return _AtomicDir(Path(path))


class _AtomicDir:
    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.tmp-", dir=self.path.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        old = None
        if self.path.exists():
            old = self.path.with_name(f".{self.path.name}.old-{os.getpid()}")
            os.replace(self.path, old)
        os.replace(self.tmp, self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return False


def save(model: nn.Module, tokenizer, path: str | os.PathLike, *, packed: bool = False) -> Path:
    """Save ``model`` (hardened or dense) and ``tokenizer`` to ``path`` with its sparsity manifest.

    Args:
        model: a hardened model (``sfcompile.harden``) or a plain dense one. A model that still carries soft
            masks is refused: harden it first.
        tokenizer: saved beside the model (may be None).
        path: the output folder; replaced atomically if it exists.
        packed: also write the sparse weights in the packed format (2:4 values + metadata, block-16 tiles).

    Returns:
        The folder written.
    """
    path = Path(path)
    if is_sparsified(model):
        raise MaskStateError("model still carries soft masks: call sfcompile.harden(model) before saving it "
                             "(training checkpoints are written by sfcompile.train itself)")
    manifest = getattr(model, "sfcompile_manifest", None)
    if packed and not manifest:
        raise MaskStateError("packed=True needs a hardened model (it has no sparsity manifest)")
    with atomic_dir(path) as tmp:
        config = getattr(model, "config", None)
        if config is not None and getattr(config, "quantization_config", None) is not None:
            del config.quantization_config  # a dequantized GGUF model is plain float weights now
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if manifest:
            (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
        if packed:
            from sfcompile.lowering.pack import save_packed

            save_packed(model, manifest, tmp / PACKED_FILE)
    return path
