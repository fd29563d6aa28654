"""`save`: a hardened (or dense) model to a folder, atomically, with its sparsity manifest.

The folder is a normal Hugging Face folder (``save_pretrained`` + tokenizer) plus ``sparsity.json``. With
``packed=True`` the weights are written compressed instead: one ``sparse_weights.safetensors`` holding every
2:4 / block-16 site in the lowering's packed format (2:4 bf16: 0.5625x its dense bytes) and every other tensor
as it is (tied tensors once), beside ``config.json``; `sfcompile.load` unpacks it to the dense hardened model
(exact), and ``lowering.pack.load_packed(file, dense=False)`` gives the packed operands. The folder appears
complete or not at all: everything is written to a temporary sibling and renamed into place.
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
        packed: write the weights compressed (module docstring): 2:4 and block-16 sites packed, other
            sites and tensors dense; no ``model.safetensors``.

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
        if packed:
            from sfcompile.lowering.pack import save_packed

            model.config.save_pretrained(tmp)
            if getattr(model, "generation_config", None) is not None:
                model.generation_config.save_pretrained(tmp)
            save_packed(packed_state(model, manifest), tmp / PACKED_FILE)
        else:
            model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if manifest:
            (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    return path


def packed_state(model: nn.Module, manifest: dict) -> dict:
    """``model``'s state dict with each 2:4 / block-16 site of ``manifest`` as its `PackedWeight`, other
    tensors as they are; a tensor tied to an earlier one (``lm_head`` and the embeddings) appears once, under
    its first name, as ``from_pretrained`` ties it back."""
    from sfcompile.lowering.pack import can_pack, pack

    state = {}
    for name, tensor in untied_state(model).items():
        entry = manifest["sites"].get(name)
        if entry is not None and can_pack(entry["pattern"]) is None:
            state[name] = pack(tensor.detach(), entry["pattern"], entry["k_dim"], name=name)
        else:
            state[name] = tensor.detach()
    return state


def untied_state(model: nn.Module) -> dict:
    """``model.state_dict(keep_vars=True)`` with each tensor once, under its first name (a tied ``lm_head``
    drops out behind the embeddings): what a packed checkpoint stores, and what its load must find."""
    state, seen = {}, set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) not in seen:
            seen.add(id(tensor))
            state[name] = tensor
    return state
