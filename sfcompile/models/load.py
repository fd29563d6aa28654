"""``sfcompile.load``: one entry point for a local HF folder, a GGUF file, or an alias — offline, always.

Resolution order for ``name_or_path``:

1. an existing path: a folder with ``config.json`` (HF layout) or a ``.gguf`` file;
2. an alias from ``configs/`` (``smollm2-135m``, ``qwen3-8b``, ...): the embedded GGUF for packaged models,
   else the snapshot of its repo in the local Hugging Face cache;
3. otherwise a clear error listing the known aliases.

``weights="random"`` builds the alias's architecture from its JSON config with freshly initialized weights
directly on ``device`` (no checkpoint needed), for benchmarks and memory planning.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from sfcompile.export import MANIFEST_FILE, PACKED_FILE, untied_state
from sfcompile.models.aliases import (
    Alias,
    alias_config,
    cached_snapshot,
    get_alias,
    gguf_path,
    known_aliases,
    missing_weights_message,
)
from sfcompile.models.gguf import gguf_to_folder

_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def _parse_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
        "half": torch.float16,
    }
    if str(dtype) not in names:
        raise ValueError(f"dtype {dtype!r} is not supported; use one of {', '.join(names)} or a torch.dtype")
    return names[str(dtype)]


def check_causal(config: PretrainedConfig, where: str) -> None:
    """Raise if ``config`` does not describe a causal LM (we prune and evaluate next-token models only)."""
    archs = list(getattr(config, "architectures", None) or [])
    if archs:
        ok = any(a.endswith(_CAUSAL_SUFFIXES) for a in archs)
    else:
        ok = config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    if not ok:
        what = f"architectures {archs}" if archs else f"model_type {config.model_type!r}"
        raise ValueError(
            f"{where} is not a causal language model ({what}); sfcompile needs a next-token model "
            f"(an architecture ending in ForCausalLM or LMHeadModel, e.g. LlamaForCausalLM, GPT2LMHeadModel)"
        )


def _load_folder(folder: Path, dtype, device, trust_remote_code: bool):
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(
            f"{str(folder)!r} is a folder without config.json, so it is not a Hugging Face model folder; "
            f"pass a folder written by save_pretrained / sfcompile.save, a .gguf file, or an alias "
            f"({', '.join(known_aliases())})"
        )
    try:
        config = AutoConfig.from_pretrained(
            folder, local_files_only=True, trust_remote_code=trust_remote_code
        )
    except ValueError as e:
        model_type = json.loads(cfg_path.read_text()).get("model_type")
        if "auto_map" in cfg_path.read_text() and not trust_remote_code:
            raise ValueError(
                f"{str(folder)!r} has model_type {model_type!r}, which transformers does not implement; "
                f"the folder ships its own modeling code. Pass trust_remote_code=True if you trust it"
            ) from e
        raise ValueError(f"cannot read the config of {str(folder)!r} (model_type {model_type!r}): {e}") from e
    check_causal(config, repr(str(folder)))
    manifest = _read_manifest(folder)
    if (folder / PACKED_FILE).is_file():
        model = _load_packed_folder(folder, config, dtype, trust_remote_code)
    else:
        # On an accelerator, load the weights straight onto it (an 8B bf16 checkpoint never sits in host memory).
        placement = {"device_map": str(device)} if device.type not in ("cpu", "meta") else {}
        with _slorb_keys_expected(manifest, config):
            model = AutoModelForCausalLM.from_pretrained(
                folder,
                local_files_only=True,
                dtype=dtype if dtype is not None else "auto",
                trust_remote_code=trust_remote_code,
                **placement,
            )
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
    if manifest is not None:
        from sfcompile.masking.state import apply_manifest

        apply_manifest(model, manifest, folder)  # before .to(): it may install SLoRB modules, which then move too
    model.to(device)
    model.eval()
    return model, tok


SLORB_KEYS = r"\.slorb_[SP]$"  # the bypass tensors a saved hardened model holds beside the architecture's


@contextlib.contextmanager
def _slorb_keys_expected(manifest: dict | None, config):
    """``from_pretrained`` of a folder whose manifest lists a SLoRB bypass, without transformers' load report
    calling its ``*.slorb_S`` / ``*.slorb_P`` tensors unexpected ("not ok if you expect identical arch"):
    `apply_manifest` installs them right after. The architecture's class takes the pattern for the call only;
    a class this cannot name (a folder's own modeling code) keeps the report, and tensors without a manifest
    entry stay reported."""
    cls = None
    if manifest and manifest.get("slorb"):
        cls = AutoModelForCausalLM._model_mapping.get(type(config), None)  # None: a class transformers lacks
    if cls is None:
        yield
        return
    own = "_keys_to_ignore_on_load_unexpected" in cls.__dict__
    before = cls.__dict__.get("_keys_to_ignore_on_load_unexpected")
    cls._keys_to_ignore_on_load_unexpected = set(cls._keys_to_ignore_on_load_unexpected or ()) | {SLORB_KEYS}
    try:
        yield
    finally:
        if own:
            cls._keys_to_ignore_on_load_unexpected = before
        else:
            del cls._keys_to_ignore_on_load_unexpected


def _load_packed_folder(folder: Path, config, dtype, trust_remote_code: bool):
    """The model of a folder written by ``sfcompile.save(..., packed=True)``: its packed sites unpacked (exact),
    on the CPU (the caller moves it). Every tensor the architecture holds must be in the file (tied ones
    once); a missing one is named, never initialised at random."""
    from sfcompile.lowering.pack import PackError, load_packed

    state = load_packed(folder / PACKED_FILE, dense=True)
    with torch.device("meta"):  # the class, and the tensors it needs, without allocating weights
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    missing = [name for name in untied_state(skeleton) if name not in state]
    if missing:
        raise PackError(f"packed checkpoint {folder / PACKED_FILE} is missing tensor(s) {missing[:5]} "
                        f"({len(missing)} in all) that {type(skeleton).__name__} needs; re-save the model with "
                        "sfcompile.save(..., packed=True)")
    return type(skeleton).from_pretrained(None, config=config, state_dict=state,
                                          dtype=dtype if dtype is not None else "auto")


def _read_manifest(folder: Path) -> dict | None:
    """The folder's ``sparsity.json`` (what `apply_manifest` verifies the loaded model against), or None."""
    from sfcompile.masking.state import ManifestError

    path = folder / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path} is not valid JSON ({e}); re-save the model or delete the file") from e


def _random(alias: Alias, dtype, device):
    if alias.note:
        warnings.warn(f"{alias.name}: {alias.note}", stacklevel=3)
    config = alias_config(alias.name)
    dtype = dtype if dtype is not None else _parse_dtype(alias.config.get("dtype")) or torch.float32
    # Build straight on the target device: an 8B bf16 model never exists on the CPU first.
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    return model, _tokenizer_if_available(alias)


def _tokenizer_if_available(alias: Alias):
    """The alias's real tokenizer when it is available offline; None otherwise (random-weight models only)."""
    if alias.gguf_package is not None:
        try:
            return AutoTokenizer.from_pretrained(gguf_to_folder(gguf_path(alias)), local_files_only=True)
        except (FileNotFoundError, ImportError):
            return None
    snap = cached_snapshot(alias.repo_id) if alias.repo_id else None
    return AutoTokenizer.from_pretrained(snap, local_files_only=True) if snap is not None else None


def load(
    name_or_path: str | Path,
    *,
    weights: str = "real",
    dtype=None,
    device="cpu",
    trust_remote_code: bool = False,
):
    """Load a causal LM and its tokenizer, offline.

    Args:
        name_or_path: a local HF folder, a ``.gguf`` file, or an alias (``smollm2-135m``, ``qwen3-8b``,
            ``llama-2-7b``, ... — see ``known_aliases()``).
        weights: ``"real"`` (the checkpoint) or ``"random"`` (aliases only: the architecture from the alias's
            config, freshly initialized on ``device``; the tokenizer is returned when available offline, else
            None).
        dtype: torch dtype or name (``"bf16"``); None keeps the checkpoint's dtype (float32 for GGUF).
        device: where the model lives (``"cpu"``, ``"cuda"``, ``"meta"``).
        trust_remote_code: allow a folder's own modeling code (e.g. DeepSeekMoE-16B); off by default.

    Returns:
        ``(model, tokenizer)``; the model is in eval mode. A folder with ``sparsity.json`` is checked against
        it.

    Example:
        >>> model, tok = sfcompile.load("smollm2-135m")
        >>> big, _ = sfcompile.load("qwen3-8b", weights="random", dtype="bf16", device="cuda")
    """
    if weights not in ("real", "random"):
        raise ValueError(f"weights={weights!r} is not supported; use 'real' or 'random'")
    dtype = _parse_dtype(dtype)
    device = torch.device(device)
    path = Path(name_or_path).expanduser()
    alias = get_alias(str(name_or_path))

    if weights == "random":
        if alias is None:
            raise ValueError(
                f"weights='random' needs an alias with a known architecture, got {str(name_or_path)!r}; "
                f"known aliases: {', '.join(known_aliases())}. For a local folder, build it yourself with "
                f"AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))"
            )
        return _random(alias, dtype, device)

    if path.exists():
        if path.is_file():
            if path.suffix.lower() != ".gguf":
                raise ValueError(
                    f"{str(path)!r} is a file but not a .gguf model; pass a HF model folder, a .gguf "
                    f"file or an alias ({', '.join(known_aliases())})"
                )
            return _load_folder(gguf_to_folder(path), dtype, device, trust_remote_code)
        return _load_folder(path, dtype, device, trust_remote_code)

    if alias is not None:
        if alias.gguf_package is not None:
            return _load_folder(gguf_to_folder(gguf_path(alias)), dtype, device, trust_remote_code)
        snap = cached_snapshot(alias.repo_id)
        if snap is None:
            raise FileNotFoundError(missing_weights_message(alias))
        return _load_folder(snap, dtype, device, trust_remote_code)

    raise FileNotFoundError(
        f"{str(name_or_path)!r} is neither an existing path nor a known model alias. Pass a local "
        f"Hugging Face folder (config.json + weights), a .gguf file, or one of: {', '.join(known_aliases())}"
    )
