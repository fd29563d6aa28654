"""GGUF → plain HF folder (dequantized ``nn.Linear`` weights as safetensors), converted once and cached.

The cache lives under ``$SFCOMPILE_CACHE`` (default ``~/.cache/sfcompile``) in ``gguf/<stem>-<key>/``, where
the key hashes the file's absolute path, size and mtime. The write is atomic: the folder is built under a
temporary name in the same directory and renamed into place, so an interrupted conversion never leaves a
half-written cache entry.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch


def cache_root() -> Path:
    return Path(os.environ.get("SFCOMPILE_CACHE") or Path.home() / ".cache" / "sfcompile").expanduser()


def require_gguf_package(path: Path | str) -> None:
    missing = [p for p in ("gguf", "accelerate") if importlib.util.find_spec(p) is None]
    if missing:
        raise ImportError(
            f"loading the GGUF file {str(path)!r} needs the package(s) {', '.join(missing)} "
            f"(transformers dequantizes GGUF through them): `pip install {' '.join(missing)}`"
        )


def cache_dir_for(path: Path) -> Path:
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_root() / "gguf" / f"{path.stem}-{key}"


def gguf_to_folder(path: Path | str) -> Path:
    """Dequantize a GGUF model + tokenizer into a cached HF folder and return it (no-op when already
    cached)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {str(path)!r} does not exist")
    require_gguf_package(path)
    final = cache_dir_for(path)
    if (final / "config.json").is_file():
        return final

    from transformers import AutoModelForCausalLM, AutoTokenizer

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    tmp.chmod(0o755)
    try:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        # GGUF tensors dequantize to float32 exactly; keep them so (bf16 would round the dequantized values).
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        # The dequantized model is plain nn.Linear (float tensors); drop the GGUF quantizer and its
        # quantization_config, else save_pretrained refuses and a reload would look for the GGUF file again.
        bad = [
            n for n, m in model.named_modules() if type(m).__module__.startswith("transformers.integrations")
        ]
        if bad:
            raise RuntimeError(f"GGUF {str(path)!r} did not dequantize to plain modules: {bad[:5]}")
        model.hf_quantizer = None
        for obj in (model.config, getattr(model, "generation_config", None)):
            if obj is not None and hasattr(obj, "quantization_config"):
                delattr(obj, "quantization_config")
        model.config.sfcompile_source = str(path)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process finished the same conversion first: theirs is complete, use it.
            if not (final / "config.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
