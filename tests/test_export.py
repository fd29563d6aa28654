import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import sfcompile
from sfcompile.masking.forge import ForgeConfig, SparseForge
from sfcompile.masking.schedule import TemperingSchedule
from sfcompile.masking.state import ManifestError, MaskStateError
from sfcompile.passes.site import hardened_info


def _tiny():
    torch.manual_seed(0)
    cfg = AutoConfig.for_model("llama", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                               num_attention_heads=2, num_key_value_heads=1, vocab_size=256)
    return AutoModelForCausalLM.from_config(cfg).eval()


def _hardened_with_slorb():
    model = _tiny()
    sfcompile.sparsify(model, "2:4", mask_dtype=torch.float32)
    forge = SparseForge(model, ForgeConfig(score="magnitude",
                                           schedule=TemperingSchedule(period_early=1, period_late=1)),
                        total_steps=8)
    for step in range(8):
        forge.after_step(step)
    return sfcompile.harden(model)


def test_save_load_round_trip_keeps_pattern_and_slorb(tmp_path, byte_tokenizer):
    model = _hardened_with_slorb()
    assert model.sfcompile_manifest.get("slorb"), "the forge should have added a SLoRB bypass"
    x = torch.randint(0, 256, (1, 8))
    with torch.no_grad():
        ref = model(x).logits
    out = sfcompile.save(model, byte_tokenizer, tmp_path / "out")
    assert (out / "sparsity.json").exists() and not list(tmp_path.glob(".out.tmp-*"))
    loaded, _ = sfcompile.load(str(out))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, ref)
    assert hardened_info(loaded.model.layers[0].mlp.down_proj.weight)["pattern"] == "2:4"


def test_load_rejects_weights_that_break_the_manifest(tmp_path, byte_tokenizer):
    model = _hardened_with_slorb()
    out = sfcompile.save(model, byte_tokenizer, tmp_path / "out")
    manifest = json.loads((out / "sparsity.json").read_text())
    name = next(iter(manifest["sites"]))
    dense = _tiny()
    dense.save_pretrained(out)  # overwrite the sparse weights with dense ones, keep the manifest
    with pytest.raises(ManifestError, match=f"{name}: .* violate pattern 2:4"):
        sfcompile.load(str(out))


def test_save_refuses_a_model_with_soft_masks_and_leaves_nothing(tmp_path):
    model = _tiny()
    sfcompile.sparsify(model, "2:4")
    with pytest.raises(MaskStateError, match="harden"):
        sfcompile.save(model, None, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_the_previous_folder(tmp_path, monkeypatch):
    model = _hardened_with_slorb()
    out = sfcompile.save(model, None, tmp_path / "out")
    before = sorted(p.name for p in out.iterdir())

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(type(model), "save_pretrained", boom)
    with pytest.raises(OSError, match="disk full"):
        sfcompile.save(model, None, out)
    assert sorted(p.name for p in out.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
