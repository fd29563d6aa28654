"""sfcompile/lowering/bench.py on CPU: what the timing harness refuses to time (it needs CUDA to time at all)."""

import torch

from sfcompile.lowering import bench
from sfcompile.lowering.pack import pack


def test_checked_us_reports_wrong_and_failing_implementations_without_timing_them(monkeypatch):
    g = torch.Generator().manual_seed(0)
    w = bench._hardened((32, 64), "2:4", torch.float32, "cpu")
    pw = pack(w, "2:4", -1)
    x = torch.randn(3, 64, generator=g)
    timed, logged = [], []
    monkeypatch.setattr(bench, "_graph_time", lambda calls: timed.append(calls) or (1.0, 0.9, 1.1))

    assert bench.checked_us("right", ["call"], lambda: x @ w.T, x, pw, logged.append) == 1.0
    assert bench.checked_us("wrong", ["call"], lambda: 2 * (x @ w.T), x, pw, logged.append) is None
    assert bench.checked_us("broken", ["call"], lambda: 1 / 0, x, pw, logged.append) is None
    assert timed == [["call"]]
    assert logged[0].startswith("wrong: WRONG RESULT, relative error 1")
    assert logged[1] == "broken: FAILED ZeroDivisionError: division by zero"


def test_parse_configs_fills_defaults_and_names_the_flag_on_bad_pairs():
    import pytest

    assert bench.parse_configs("A=1,B=-2; A=3;", {"B": 0, "C": 5}) == [{"A": 1, "B": -2, "C": 5},
                                                                        {"A": 3, "B": 0, "C": 5}]
    assert bench.parse_configs("") == []
    with pytest.raises(SystemExit, match=r"--grid: 'B=x' in 'A=1,B=x' is not KEY=INTEGER"):
        bench.parse_configs("A=1,B=x", flag="--grid")
