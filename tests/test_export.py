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


def test_load_does_not_report_the_slorb_tensors_as_unexpected(tmp_path, byte_tokenizer, capfd, caplog):
    # transformers' load report called them "UNEXPECTED ... not ok if you expect identical arch", though the
    # manifest installs them right after; the class's ignore list is extended for that call only
    from transformers import LlamaForCausalLM

    out = sfcompile.save(_hardened_with_slorb(), byte_tokenizer, tmp_path / "out")
    capfd.readouterr()
    caplog.clear()
    loaded, _ = sfcompile.load(str(out))
    report = "".join(capfd.readouterr()) + caplog.text
    assert "slorb" not in report and "UNEXPECTED" not in report
    assert any(n.endswith("slorb_S") for n, _ in loaded.named_parameters())  # still installed
    assert "_keys_to_ignore_on_load_unexpected" not in LlamaForCausalLM.__dict__  # the class as it was


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


def _hardened(pattern, tie=False):
    torch.manual_seed(0)
    cfg = AutoConfig.for_model("llama", hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                               num_attention_heads=2, num_key_value_heads=1, vocab_size=256,
                               tie_word_embeddings=tie)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    sfcompile.sparsify(model, pattern)
    sfcompile.prune(model, method="magnitude")
    return sfcompile.harden(model)


def _bytes(folder):
    return sum(f.stat().st_size for f in folder.iterdir() if f.suffix == ".safetensors")


@pytest.mark.parametrize("pattern,tie", [("2:4", False), ("block16", True), ("4:8", False)])
def test_packed_save_is_compressed_and_loads_exactly(tmp_path, byte_tokenizer, pattern, tie):
    # packed=True: 2:4 / block-16 sites packed, everything else (4:8 sites, embeddings, norms) as is, tied
    # tensors once, no model.safetensors; load unpacks to the same weights, hardened, same logits
    from sfcompile.export import PACKED_FILE
    from sfcompile.lowering.pack import PackedWeight, load_packed

    model = _hardened(pattern, tie)
    x = torch.randint(0, 256, (1, 8))
    with torch.no_grad():
        ref = model(x).logits
    dense = sfcompile.save(model, byte_tokenizer, tmp_path / "dense")
    packed = sfcompile.save(model, byte_tokenizer, tmp_path / "packed", packed=True)
    assert not (packed / "model.safetensors").exists() and (packed / PACKED_FILE).exists()
    raw = load_packed(packed / PACKED_FILE, dense=False)
    sites = set(model.sfcompile_manifest["sites"])
    as_packed = {n for n, v in raw.items() if isinstance(v, PackedWeight)}
    assert as_packed == (set() if pattern == "4:8" else sites)
    assert ("lm_head.weight" in raw) is not tie  # tied to the embeddings: stored once
    ratio = _bytes(packed) / _bytes(dense)
    if pattern == "4:8":
        assert ratio == pytest.approx(1.0, abs=0.01)
    else:  # the sites (most bytes here) at 0.5-0.56x, the embeddings and norms dense
        assert ratio < 0.8, ratio
    loaded, _ = sfcompile.load(str(packed))
    want = dict(model.named_parameters(remove_duplicate=False))
    got = dict(loaded.named_parameters(remove_duplicate=False))
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name
    assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) is tie
    manifest = model.sfcompile_manifest["sites"]
    assert all(hardened_info(got[s])["pattern"] == manifest[s]["pattern"] for s in sites)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, ref)


def test_packed_save_keeps_slorb(tmp_path, byte_tokenizer):
    model = _hardened_with_slorb()
    x = torch.randint(0, 256, (1, 8))
    with torch.no_grad():
        ref = model(x).logits
    out = sfcompile.save(model, byte_tokenizer, tmp_path / "out", packed=True)
    loaded, _ = sfcompile.load(str(out))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, ref)


def test_a_loaded_trained_model_runs_its_bypasses_inside_the_packed_ops(tmp_path, byte_tokenizer):
    # the whole path a user takes: forge (SLoRB on), harden, save, load, torch.compile with the backend's
    # defaults: every site's bypass is folded into its packed op, and the logits are the eager model's
    model = _hardened_with_slorb()
    out = sfcompile.save(model, byte_tokenizer, tmp_path / "out")
    loaded, _ = sfcompile.load(str(out))
    sites = len(loaded.sfcompile_manifest["slorb"])
    x = torch.randint(0, 256, (1, 8))
    reports = []
    torch._dynamo.reset()
    fast = torch.compile(loaded, backend="sparseforge", options={"on_lower": lambda gm, rep: reports.append(rep)})
    with torch.no_grad():
        torch.testing.assert_close(fast(x).logits, loaded(x).logits, rtol=1e-5, atol=1e-5)
    (report,) = reports
    assert sum(len(f) for f in report.folded_bypasses) == sites > 0 and report.fused_bypasses == []


def test_packed_checkpoint_with_a_missing_tensor_is_refused_by_name(tmp_path, byte_tokenizer):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from sfcompile.export import PACKED_FILE
    from sfcompile.lowering.pack import PackError

    out = sfcompile.save(_hardened("2:4"), byte_tokenizer, tmp_path / "out", packed=True)
    path = out / PACKED_FILE
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    norm = tensors.pop("model.norm.weight")
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(PackError, match=r"missing tensor\(s\) \['model.norm.weight'\]"):
        sfcompile.load(str(out))
    values = tensors.pop("model.layers.0.mlp.down_proj.weight::values")
    save_file({**tensors, "model.norm.weight": norm}, str(path), metadata=meta)
    with pytest.raises(PackError, match="missing tensor 'model.layers.0.mlp.down_proj.weight::values'"):
        sfcompile.load(str(out))
    tensors["model.layers.0.mlp.down_proj.weight::values"] = values[:, :-1].contiguous()
    save_file({**tensors, "model.norm.weight": norm}, str(path), metadata=meta)
    with pytest.raises(PackError, match="'model.layers.0.mlp.down_proj.weight::values' is corrupt"):
        sfcompile.load(str(out))


def test_inspect_reports_the_bypass_a_model_carries_or_none(tmp_path, byte_tokenizer, capsys):
    from sfcompile.cli import main
    from sfcompile.inspect import inspect_folder

    model = _hardened_with_slorb()
    s_bytes = sum(m.slorb_S.numel() * m.slorb_S.element_size() for m in model.modules() if hasattr(m, "slorb_S"))
    assert s_bytes > 0
    for packed in (False, True):
        out = sfcompile.save(model, byte_tokenizer, tmp_path / f"b{packed}", packed=packed)
        _, totals = inspect_folder(out)
        assert (totals["bypass_sites"], totals["bypass_groups"], totals["bypass_bytes"]) == (7, [16], s_bytes)
        assert main(["inspect", str(out)]) == 0
        assert "SLoRB bypass on 7 sites (group 16)" in capsys.readouterr().out
    from safetensors.torch import load_file, save_file

    weights = load_file(str(tmp_path / "bFalse" / "model.safetensors"))
    gone = next(k for k in weights if k.endswith("slorb_S"))
    del weights[gone]
    save_file(weights, str(tmp_path / "bFalse" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(FileNotFoundError, match=gone.replace(".", r"\.")):
        inspect_folder(tmp_path / "bFalse")
    plain = sfcompile.save(_hardened("2:4"), byte_tokenizer, tmp_path / "plain")
    assert inspect_folder(plain)[1]["bypass_sites"] == 0
    assert main(["inspect", str(plain)]) == 0 and "no SLoRB bypass" in capsys.readouterr().out


def test_inspect_reads_dense_and_packed_folders_alike(tmp_path, byte_tokenizer, capsys):
    from safetensors.torch import load_file, save_file

    from sfcompile.cli import main
    from sfcompile.inspect import inspect_folder

    model = _hardened("2:4")
    dense = sfcompile.save(model, byte_tokenizer, tmp_path / "dense")
    packed = sfcompile.save(model, byte_tokenizer, tmp_path / "packed", packed=True)
    (rows_d, tot_d), (rows_p, tot_p) = inspect_folder(dense), inspect_folder(packed)
    assert rows_d == rows_p and tot_d == tot_p
    assert tot_d["ok"] == tot_d["sites"] == 7 and all(r["sparsity"] == pytest.approx(0.5) for r in rows_d)
    assert tot_d["packed_ratio"] == pytest.approx(0.53125)  # fp32 2:4: half the values + 2 bits per kept one
    assert main(["inspect", str(packed)]) == 0 and "7/7 sites hold pattern 2:4" in capsys.readouterr().out
    weights = load_file(str(dense / "model.safetensors"))
    name = "model.layers.0.mlp.up_proj.weight"
    weights[name] = torch.ones_like(weights[name])  # no longer 2:4
    save_file(weights, str(dense / "model.safetensors"), metadata={"format": "pt"})
    rows, totals = inspect_folder(dense)
    assert totals["ok"] == 6 and [r["site"] for r in rows if not r["ok"]] == [name]
    assert main(["inspect", str(dense)]) == 1
