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
        "backend": "sparseforge", "options": {"cudagraphs": True, "fuse": True, "pdl": "auto"}}
    assert Variant.parse("2:4+pdl").compile_kwargs(False)["options"]["pdl"] is True
    v = Variant.parse("block16+nofuse+nopdl")
    assert (v.base, v.fuse, v.pdl, v.backend) == ("block16", False, False, "sparseforge")
    assert Variant.parse("block16+frag").compile_kwargs(True)["options"]["block16_frag"] is True
    assert "block16_frag" not in Variant.parse("block16").compile_kwargs(True)["options"]
    for bad in ("2:4+fast", "dense+nofuse", "2:4+frag"):
        with pytest.raises(SystemExit, match="unknown variant"):
            Variant.parse(bad)


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
