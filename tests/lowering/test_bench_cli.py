"""`sfcompile bench` (sfcompile/lowering/cli.py): refusals on a machine without a GPU, the kernel table's launch mode
(--pdl), and the end-to-end benchmark's columns."""

import logging

import pytest
import torch

from sfcompile.cli import main


def test_bench_needs_a_choice_and_a_gpu(capsys, monkeypatch):
    assert main(["bench"]) == 2
    assert "choose at least one of --kernels" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "--kernels"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--kernels", "--pdl", "3"])


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_kernel_table_runs_in_the_asked_launch_mode(mode, monkeypatch, tmp_path, capsys):
    import json

    from sfcompile.lowering import bench
    from sfcompile.lowering.kernels import splitk

    seen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "test")
    monkeypatch.setattr(bench, "kernel_table", lambda *a, **k: seen.append(splitk._LAUNCH_MODE.get()) or [])
    monkeypatch.setattr(bench, "summary", lambda rows: {})
    out = tmp_path / "t.md"
    assert main(["bench", "--kernels", "--pdl", str(mode), "--out", str(out)]) == 0
    assert seen == [mode] and splitk._LAUNCH_MODE.get() == 0
    assert json.loads(out.with_suffix(".json").read_text())["pdl"] == mode


def test_e2e_columns_parse_into_compile_arguments():
    # benchmarks/e2e.py (reached through `sfcompile bench --e2e` in a source checkout): each column's flags
    from sfcompile.lowering.cli import _e2e_module

    Variant = _e2e_module().Variant
    assert Variant.parse("dense").compile_kwargs(True) == {"mode": "reduce-overhead"}
    assert Variant.parse("dense+pdl").compile_kwargs(True) == {
        "options": {"triton.cudagraphs": True, "triton.enable_pdl": True}}
    assert Variant.parse("2:4").compile_kwargs(True) == {
        "backend": "sparseforge", "options": {"cudagraphs": True, "fuse": True, "pdl": "auto",
                                                 "fuse_bypass": True, "kernel_sums": False}}
    assert Variant.parse("2:4+slorb16+ksums").compile_kwargs(True)["options"]["kernel_sums"] is True
    assert Variant.parse("block16+slorb16+ksums").kernel_sums is True
    assert Variant.parse("2:4+pdl").compile_kwargs(False)["options"]["pdl"] is True
    v = Variant.parse("block16+nofuse+nopdl")
    assert (v.base, v.fuse, v.pdl, v.backend) == ("block16", False, False, "sparseforge")
    assert Variant.parse("block16+frag").compile_kwargs(True)["options"]["block16_frag"] is True
    assert "block16_frag" not in Variant.parse("block16").compile_kwargs(True)["options"]
    assert Variant.parse("2:4+slorb16+nopdl").slorb == 16 and Variant.parse("2:4").slorb == 0
    assert Variant.parse("2:4+slorb16+fusebypass").compile_kwargs(True)["options"]["fuse_bypass"] is True
    assert Variant.parse("2:4+slorb16").compile_kwargs(True)["options"]["fuse_bypass"] is True   # the default
    assert Variant.parse("2:4+slorb16+nofusebypass").compile_kwargs(True)["options"]["fuse_bypass"] is False
    for bad in ("2:4+fast", "dense+nofuse", "2:4+frag", "2:4+slorb0", "2:4+slorb", "dense+slorb16", "dense+ksums"):
        with pytest.raises(SystemExit, match="unknown variant"):
            Variant.parse(bad)


def test_e2e_slorb_column_carries_a_bypass_on_every_site_and_runs_compiled():
    # benchmarks/e2e.py 2:4+slorb16: the model as sfcompile's trainer leaves it (hardened + a SLoRB bypass on every
    # site), so its row costs what a trained model costs; the compiled step keeps one packed op per site and the
    # bypass (its logits follow eager's, which differ from the bypass-free model's)
    from sfcompile.lowering.cli import _e2e_module
    from sfcompile.masking.slorb import slorb_manifest

    e2e = _e2e_module()
    logits, ops, bypasses = {}, {}, {}
    for label in ("2:4", "2:4+slorb16+nofusebypass", "2:4+slorb16"):
        model = e2e.build("llama-2-7b", 1, torch.float32, "cpu").float()
        sites = e2e.harden_random(model, "2:4", e2e.Variant.parse(label).slorb)
        manifest = slorb_manifest(model)
        assert len(manifest) == (len(sites) if "slorb" in label else 0)
        assert all(v["group"] == 16 for v in manifest.values())
        lowered = []
        step = e2e.compile_step(model, e2e.Variant.parse(label), False, lambda gm, rep, seen=lowered: seen.append(rep))
        cache = e2e._static_cache(model, 8)
        tok, pos = torch.tensor([[3]]), torch.tensor([0])
        with torch.no_grad():
            eager = e2e._forward(model)(tok, cache, pos)
            cache = e2e._static_cache(model, 8)
            _, compiled = step(tok, cache, pos)
        assert {s for rep in lowered for s in rep.lowered} == set(sites)
        ops[label] = sum(rep.packed_ops for rep in lowered)
        bypasses[label] = ([len(g) for rep in lowered for g in rep.folded_bypasses],
                           [len(g) for rep in lowered for g in rep.fused_bypasses])
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
        logits[label] = eager
    assert (logits["2:4"] - logits["2:4+slorb16"]).abs().max() > 1e-3
    assert ops["2:4"] == ops["2:4+slorb16+nofusebypass"] == ops["2:4+slorb16"] == 4  # q/k/v, gate/up: one op each
    # by default each bypass runs inside its packed op (q/k/v's three, o's, gate/up's two, down's; its logits
    # followed eager's above), none left as a matmul of its own; +nofusebypass leaves them to the hook's ops
    assert bypasses == {"2:4": ([], []), "2:4+slorb16+nofusebypass": ([], []), "2:4+slorb16": ([3, 1, 2, 1], [])}


def test_e2e_profile_writes_a_per_step_table(tmp_path):
    # benchmarks/e2e.py --e2e-profile: the ops of N profiled steps, by self time per step, largest first
    from sfcompile.lowering.cli import _e2e_module

    a, b = torch.randn(64, 64), torch.randn(64, 64)
    out = tmp_path / "p" / "m_2of4_b1.txt"
    _e2e_module().write_profile(out, lambda: [torch.mm(a, b) for _ in range(6)], 3, "cpu")
    lines = out.read_text().splitlines()
    assert lines[0].startswith("# 3 decode steps; self_cpu_time_total per step")
    rows = [line.split("\t") for line in lines[2:]]
    mm = next(r for r in rows if r[2] == "aten::mm")
    assert float(mm[1]) == 2.0  # 6 calls over 3 steps
    times = [float(r[0]) for r in rows]
    assert times == sorted(times, reverse=True) and times[0] > 0


def test_e2e_rows_record_the_backends_launch_decisions():
    # benchmarks/e2e.py notes, per row, how the backend's pdl option resolved for each graph it compiled
    from test_backend import _hardened_two_linears

    from sfcompile.lowering.cli import _e2e_module

    torch._dynamo.reset()
    logger = logging.getLogger("sfcompile.lowering.backend")
    level = logger.level
    m = _hardened_two_linears(0)
    fast = torch.compile(m, backend="sparseforge", dynamic=False)
    with _e2e_module().launch_decisions() as found, torch.no_grad():
        fast(torch.randn(1, 32))
        fast(torch.randn(8, 32))
        fast(torch.randn(8, 32))
    assert found == [
        "programmatic dependent launches for a graph whose packed ops multiply 1 rows and that makes 0 broadcast "
        "copies (pdl='auto')",
        "programmatic dependent launches for a graph whose packed ops multiply 8 rows and that makes 0 broadcast "
        "copies (pdl='auto')",
    ]
    assert logger.level == level  # restored
