"""Fixtures of the trainer tests (helpers live in _tiny.py so test modules can import them)."""

from __future__ import annotations

import pytest
from _tiny import TEXT, byte_tokenizer


@pytest.fixture
def tok():
    return byte_tokenizer()


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture(autouse=True)
def _one_thread():
    # The CI/dev box has 2 cores shared by several jobs: OpenMP spin-waiting on an oversubscribed machine
    # makes a tiny model's step ~80x slower. One thread is fastest for these tiny shapes anyway.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
