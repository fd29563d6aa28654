"""`benchmarks/block16_alignment.py`: the strip-agreement counts behind the block-16 prefill argument."""

import importlib.util
from pathlib import Path

import torch


def _script():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "block16_alignment.py"
    spec = importlib.util.spec_from_file_location("block16_alignment", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _planted(rows: int = 8, strips: int = 8) -> torch.Tensor:
    """Block rows of two families interleaved: even rows keep strips 0-3, odd rows strips 4-7."""
    keep = torch.zeros(rows, strips, dtype=torch.bool)
    keep[0::2, : strips // 2] = True
    keep[1::2, strips // 2:] = True
    return keep


def test_kept_tiles_marks_the_tiles_holding_a_nonzero():
    s = _script()
    w = torch.zeros(32, 48)
    w[3, 20] = 1.0      # block row 0, strip 1
    w[31, 47] = -2.0    # block row 1, strip 2
    assert s.kept_tiles(w).tolist() == [[False, True, False], [False, False, True]]


def test_a_strip_counts_as_skipped_only_when_no_row_of_its_group_keeps_it():
    s = _script()
    keep = _planted()
    # in row order every pair mixes the families: each strip is kept by one of its two rows
    assert s.skipped_share(keep, [[0, 1], [2, 3], [4, 5], [6, 7]]) == 0.0
    # grouped by family, each group keeps half the strips
    assert s.skipped_share(keep, [[0, 2], [4, 6], [1, 3], [5, 7]]) == 0.5
    keep[0, 7] = True   # one stray tile: its group's strip 7 is kept now
    assert s.skipped_share(keep, [[0, 2], [4, 6], [1, 3], [5, 7]]) == 15 / 32


def test_greedy_grouping_finds_the_planted_families():
    s = _script()
    keep = _planted()
    groups = s.greedy_groups(keep, 4)
    assert sorted(len(g) for g in groups) == [4, 4] and sorted(sum(groups, [])) == list(range(8))
    assert {frozenset(g) for g in groups} == {frozenset(range(0, 8, 2)), frozenset(range(1, 8, 2))}
    assert s.skipped_share(keep, groups) == 0.5
