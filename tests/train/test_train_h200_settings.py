"""`benchmarks/train_h200.py --main-set`: the parsing of TrainConfig overrides for the main run."""

import importlib.util
from pathlib import Path

import pytest

from sfcompile.train.config import TrainConfig


def _script():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "train_h200.py"
    spec = importlib.util.spec_from_file_location("train_h200", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_main_set_reads_json_values_and_refuses_unknown_or_owned_fields():
    settings = _script().main_settings
    got = settings(["kl_temperature=1", "ce_weight=0.0", "teacher_data_kv_cache=dynamic", "harden=false"])
    assert got == {"kl_temperature": 1, "ce_weight": 0.0, "teacher_data_kv_cache": "dynamic", "harden": False}
    TrainConfig(**got)  # values the config accepts
    with pytest.raises(SystemExit, match="'bogus=1': expected FIELD=VALUE"):
        settings(["bogus=1"])
    with pytest.raises(SystemExit, match="expected FIELD=VALUE"):
        settings(["kl_temperature"])
    with pytest.raises(SystemExit, match="lr has its own flag here, --lr"):
        settings(["lr=1e-3"])
