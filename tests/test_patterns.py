import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sfcompile.patterns import NM, Block, PatternError, Unstructured, parse_pattern

NM_PATTERNS = [NM(2, 4), NM(4, 8), NM(1, 4), NM(1, 2), NM(3, 8)]


def _tensor(seed: int, shape, ties: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if ties:  # few distinct values: many ties, which must still resolve deterministically
        return torch.randint(0, 3, shape, generator=g).float()
    return torch.randn(shape, generator=g)


@pytest.mark.parametrize("spec,expected", [
    ("2:4", NM(2, 4)), (" 4:8 ", NM(4, 8)), ("1:4", NM(1, 4)), ("block16", Block(16, 0.5)),
    ("block16:0.25", Block(16, 0.25)), ("BLOCK32:0.5", Block(32, 0.5)), ("unstructured:0.5", Unstructured(0.5)),
    ("unstructured", Unstructured(0.5)),
])
def test_parse_and_round_trip(spec, expected):
    p = parse_pattern(spec)
    assert p == expected
    assert parse_pattern(str(p)) == p
    assert parse_pattern(p) is p


@pytest.mark.parametrize("spec,fragment", [
    ("3:3", "0 < N < M"), ("5:4", "0 < N < M"), ("0:4", "0 < N < M"), ("2-4", "unknown pattern"),
    ("block16:1.5", "between 0 and 1"), ("unstructured:abc", "not a number"), ("dense", "unknown pattern"),
    ("block16:0", "between 0 and 1"),
])
def test_bad_pattern_strings_name_the_value(spec, fragment):
    with pytest.raises(PatternError) as e:
        parse_pattern(spec)
    assert fragment in str(e.value)
    assert spec.strip() in str(e.value) or "0 < N < M" in str(e.value)


def test_non_string_pattern_rejected():
    with pytest.raises(PatternError, match="must be a string"):
        parse_pattern(24)


@settings(max_examples=40, deadline=None)
@given(p=st.sampled_from(NM_PATTERNS), rows=st.integers(1, 6), groups=st.integers(1, 5),
       lead=st.sampled_from([(), (3,)]), k_first=st.booleans(), ties=st.booleans(), seed=st.integers(0, 10_000))
def test_nm_project_exact(p, rows, groups, lead, k_first, ties, seed):
    k = groups * p.m
    # Linear (N, K), Conv1D (K, N) with k_dim=0, or 3-D experts (E, N, K).
    shape = (*lead, k, rows) if k_first else (*lead, rows, k)
    k_dim = len(lead) if k_first else len(shape) - 1
    scores = _tensor(seed, shape, ties)
    mask = p.project(scores, k_dim)
    assert mask.dtype == torch.bool and mask.shape == scores.shape
    grouped = mask.movedim(k_dim, -1).reshape(-1, p.m)
    assert (grouped.sum(-1) == p.n).all()  # exactly n kept per group
    assert mask.float().mean().item() == pytest.approx(p.density)
    # Kept entries are the best of their group: min kept >= max dropped.
    sg = scores.movedim(k_dim, -1).reshape(-1, p.m)
    kept_min = torch.where(grouped, sg, torch.inf).amin(-1)
    dropped_max = torch.where(~grouped, sg, -torch.inf).amax(-1)
    assert (kept_min >= dropped_max).all()
    # Deterministic, and ties go to the lower index.
    assert torch.equal(mask, p.project(scores.clone(), k_dim))
    assert p.verify(scores * mask, k_dim) == (True, 0)


def test_nm_ties_break_to_lower_index():
    mask = NM(2, 4).project(torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, 2.0, 2.0, 2.0]]))
    assert mask.tolist() == [[True, True, False, False, False, True, True, False]]


def test_nm_verify_counts_violations():
    w = torch.tensor([[1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0]])
    assert NM(2, 4).verify(w) == (False, 1)
    assert NM(2, 4).verify(torch.zeros(2, 8)) == (True, 0)  # fewer non-zeros than allowed is fine
    with pytest.raises(PatternError, match="K=6 is not a multiple of M=4"):
        NM(2, 4).verify(torch.zeros(2, 6))


@settings(max_examples=30, deadline=None)
@given(density=st.sampled_from([0.25, 0.5, 0.75]), tr=st.integers(1, 3), tc=st.integers(1, 4),
       lead=st.sampled_from([(), (2,)]), ties=st.booleans(), seed=st.integers(0, 10_000))
def test_block_project_exact(density, tr, tc, lead, ties, seed):
    p = Block(16, density)
    shape = (*lead, 16 * tr, 16 * tc)
    scores = _tensor(seed, shape, ties).abs()
    mask = p.project(scores)
    tiles = mask.reshape(*lead, tr, 16, tc, 16).transpose(-3, -2)
    per_tile = tiles.flatten(-2).float().mean(-1)
    assert ((per_tile == 0) | (per_tile == 1)).all()  # tiles are whole
    kept = per_tile.flatten(-2).sum(-1)
    assert (kept == p.keep_tiles(tr * tc)).all()
    tile_scores = scores.reshape(*lead, tr, 16, tc, 16).transpose(-3, -2).sum((-1, -2)).flatten(-2)
    flat = per_tile.flatten(-2).bool()
    assert (torch.where(flat, tile_scores, torch.inf).amin(-1)
            >= torch.where(~flat, tile_scores, -torch.inf).amax(-1)).all()
    assert torch.equal(mask, p.project(scores))
    assert p.verify(scores * mask) == (True, 0)


def test_block_density_exact_and_violations():
    p = parse_pattern("block16")
    w = torch.randn(64, 64)
    assert p.project(w.abs()).float().mean().item() == 0.5
    ok, violations = p.verify(w)
    assert not ok and violations == 8  # 16 non-empty tiles against a budget of 8
    with pytest.raises(PatternError, match="not tiled by 16x16"):
        p.verify(torch.zeros(24, 32))


@settings(max_examples=30, deadline=None)
@given(density=st.sampled_from([0.3, 0.5, 0.9]), rows=st.integers(1, 5), k=st.integers(2, 40),
       k_first=st.booleans(), seed=st.integers(0, 10_000))
def test_unstructured_project_exact(density, rows, k, k_first, seed):
    p = Unstructured(density)
    shape = (k, rows) if k_first else (rows, k)
    k_dim = 0 if k_first else 1
    scores = _tensor(seed, shape, ties=False)
    mask = p.project(scores, k_dim)
    assert (mask.sum(k_dim) == p.keep_count(k)).all()
    assert p.verify(scores * mask, k_dim) == (True, 0)


def test_nan_scores_rejected():
    with pytest.raises(PatternError, match="NaN"):
        NM(2, 4).project(torch.tensor([[1.0, float("nan"), 0.0, 1.0]]))


def test_incompatibility_reasons():
    assert NM(2, 4).incompatibility((8, 6), 1) == "reduction dim K=6 is not a multiple of M=4 (pattern 2:4)"
    assert NM(2, 4).incompatibility((6, 8), 0) is not None
    assert NM(2, 4).incompatibility((6, 8), 1) is None
    assert Block(16, 0.5).incompatibility((32, 40), 1) is not None
    assert Unstructured(0.5).incompatibility((3, 5), 1) is None


@pytest.mark.parametrize("m, keep", [(4, 2), (8, 4), (2, 1), (8, 1)])
def test_pairwise_rank_equals_a_stable_sort(m, keep):
    from sfcompile.patterns import _keep_top

    g = torch.Generator().manual_seed(m * 10 + keep)
    scores = torch.randint(0, 3, (64, 32, m), generator=g).float()  # many ties
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    want = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, order[..., :keep], True)
    assert torch.equal(_keep_top(scores, keep), want)
