"""Perplexity against a hand computation on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from sfcompile.eval.perplexity import perplexity, token_windows

DOCS = [
    "The first document, with some words in it.",
    "A second one!",
    "And a third document that is longer " * 3,
]


def _hand_ppl(model, ids: list[int], seqlen: int) -> float:
    """Non-overlapping windows, every next-token log-probability summed one by one."""
    n = len(ids) // seqlen
    total, count = 0.0, 0
    for w in range(n):
        window = torch.tensor([ids[w * seqlen : (w + 1) * seqlen]])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=window).logits[0].double(), -1)
        for t in range(seqlen - 1):
            total -= logp[t, window[0, t + 1]].item()
            count += 1
    return math.exp(total / count)


def test_matches_hand_computation(tiny_model, byte_tokenizer):
    model = tiny_model("llama")
    ids = byte_tokenizer("\n\n".join(DOCS))["input_ids"]
    expected = _hand_ppl(model, ids, seqlen=16)
    got = perplexity(model, byte_tokenizer, DOCS, seqlen=16, progress=False)
    assert got == pytest.approx(expected, rel=1e-5)
    # batching and the input form change nothing
    assert perplexity(model, byte_tokenizer, DOCS, seqlen=16, batch_size=3, progress=False) == pytest.approx(
        got, rel=1e-5
    )
    assert perplexity(model, byte_tokenizer, "\n\n".join(DOCS), seqlen=16, progress=False) == pytest.approx(
        got, rel=1e-5
    )


def test_max_windows_is_a_prefix(tiny_model, byte_tokenizer):
    model = tiny_model("gpt2")
    ids = byte_tokenizer("\n\n".join(DOCS))["input_ids"]
    assert perplexity(model, byte_tokenizer, DOCS, seqlen=8, max_windows=2, progress=False) == pytest.approx(
        _hand_ppl(model, ids[:16], seqlen=8), rel=1e-5
    )


def test_windows_drop_the_tail(byte_tokenizer):
    w = token_windows(byte_tokenizer, "abcdefghij klm", seqlen=4)
    assert w.shape == (3, 4)
    assert byte_tokenizer.decode(w.flatten()) == "abcdefghij k"


def test_restores_training_mode(tiny_model, byte_tokenizer):
    model = tiny_model("llama").train()
    perplexity(model, byte_tokenizer, DOCS, seqlen=16, progress=False)
    assert model.training


def test_bad_input(tiny_model, byte_tokenizer):
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="fewer than one window of seqlen=512"):
        perplexity(model, byte_tokenizer, "too short", seqlen=512, progress=False)
    with pytest.raises(ValueError, match="seqlen must be >= 2"):
        perplexity(model, byte_tokenizer, DOCS, seqlen=1, progress=False)
    with pytest.raises(ValueError, match="max_windows must be >= 1"):
        perplexity(model, byte_tokenizer, DOCS, seqlen=8, max_windows=0, progress=False)


@pytest.mark.slow
def test_smollm2_wiki_prefix():
    """Dense SmolLM2-135M on the first windows of `wiki`: an English LM, far below the vocabulary size."""
    from sfcompile.models import load

    model, tok = load("smollm2-135m")
    ppl = perplexity(model, tok, "wiki", seqlen=512, max_windows=2, progress=False)
    assert 5 < ppl < 40, ppl
