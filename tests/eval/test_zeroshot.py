"""Zero-shot through lm-eval, offline, checked against an independent hand scorer on a tiny model."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from sfcompile.eval import texts
from sfcompile.eval.zeroshot import TASK_METRIC, parse_tasks, zeroshot

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("lm_eval") is None, reason="pip install lm-eval==0.4.13"
)


def _loglik(model, tok, context: str, continuation: str) -> float:
    ctx = tok(context)["input_ids"]
    ids = torch.tensor([ctx + tok(context + continuation)["input_ids"][len(ctx) :]])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids[:, :-1]).logits[0].double(), -1)
    cont = ids[0, len(ctx) :]
    return logp[len(ctx) - 1 :].gather(-1, cont[:, None]).sum().item()


def _hand_scores(model, tok, docs, prompt, choices, gold, norm: bool) -> float:
    """lm-eval's multiple-choice rule: argmax of log P(" " + choice | prompt), / len(choice) for acc_norm."""
    hits = 0
    for doc in docs:
        lls = [_loglik(model, tok, prompt(doc), " " + c) / (len(c) if norm else 1) for c in choices(doc)]
        hits += int(max(range(len(lls)), key=lls.__getitem__) == gold(doc))
    return hits / len(docs)


def _first(rel: str, n: int) -> list[dict]:
    cols = texts.read_arrow(texts.arrow_file(rel))
    return [{k: v[i] for k, v in cols.items()} for i in range(n)]


def test_piqa_and_arc_challenge_match_hand_scorer(tiny_model, byte_tokenizer):
    model = tiny_model("llama", max_position_embeddings=2048, seed=3)
    limit = 6
    got = zeroshot(model, byte_tokenizer, "piqa,arc_challenge", limit=limit, batch_size=4)
    piqa = _hand_scores(
        model,
        byte_tokenizer,
        _first("piqa/plain_text", limit),
        lambda d: f"Question: {d['goal']}\nAnswer:",
        lambda d: [d["sol1"], d["sol2"]],
        lambda d: d["label"],
        norm=False,
    )
    arc = _hand_scores(
        model,
        byte_tokenizer,
        _first("ai2_arc/ARC-Challenge", limit),
        lambda d: f"Question: {d['question']}\nAnswer:",
        lambda d: d["choices"]["text"],
        lambda d: d["choices"]["label"].index(d["answerKey"]),
        norm=True,
    )
    assert got["piqa"] == pytest.approx(piqa)
    assert got["arc_challenge"] == pytest.approx(arc)
    assert got["mean"] == pytest.approx((piqa + arc) / 2)
    assert set(got) == {"piqa", "arc_challenge", "mean"}


def test_task_names():
    assert parse_tasks("all") == list(TASK_METRIC)
    assert parse_tasks(" boolq, rte ") == ["boolq", "rte"]
    assert TASK_METRIC["hellaswag"] == TASK_METRIC["arc_challenge"] == "acc_norm"
    with pytest.raises(ValueError, match=r"unknown zero-shot task\(s\) \['mmlu'\]; available: hellaswag"):
        parse_tasks("piqa,mmlu")


def test_missing_lm_eval_says_how_to_install(tiny_model, byte_tokenizer, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "lm_eval" else real(n, *a))
    with pytest.raises(ImportError, match="pip install lm-eval==0.4.13"):
        zeroshot(tiny_model("llama"), byte_tokenizer, "piqa", limit=1)
