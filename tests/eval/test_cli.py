"""`sfcompile eval` argument handling, exit codes, table and JSON."""

from __future__ import annotations

import argparse
import json

import pytest

from sfcompile.eval import cli


def _args(*argv):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture
def tiny_folder(tmp_path, tiny_model, byte_tokenizer):
    folder = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(folder)
    byte_tokenizer.save_pretrained(folder)
    text = tmp_path / "t.txt"
    text.write_text("\n\n".join(f"Paragraph number {i} says something." for i in range(40)))
    return folder, text


def test_ppl_on_a_file_table_and_json(tiny_folder, tmp_path, capsys):
    folder, text = tiny_folder
    out = tmp_path / "res" / "r.json"
    rc = cli.run(
        _args(
            "--model",
            str(folder),
            "--ppl",
            str(text),
            "--seqlen",
            "16",
            "--max-windows",
            "3",
            "--json",
            str(out),
        )
    )
    assert rc == 0
    res = json.loads(out.read_text())
    entry = res["ppl"][str(text)]
    assert entry["windows"] == 3 and entry["tokens"] == 48
    assert 1 < entry["ppl"] < 1000
    printed = capsys.readouterr().out
    assert (
        f"ppl {text}" in printed and f"{entry['ppl']:.3f}" in printed and "3 windows x 16 tokens" in printed
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--ppl", "wikki"], "'wikki' is neither a named text"),
        (["--tasks", "piqa,mmlu"], "unknown zero-shot task"),
        (["--seqlen", "1"], "--seqlen must be >= 2"),
        (["--max-windows", "0"], "--max-windows must be >= 1"),
        (["--device", "tpu"], "--device 'tpu' is not supported"),
    ],
)
def test_bad_input_exits_2(tiny_folder, capsys, argv, message):
    assert cli.run(_args("--model", str(tiny_folder[0]), *argv)) == 2
    assert message in capsys.readouterr().err


def test_missing_model_exits_2(tmp_path, capsys):
    assert cli.run(_args("--model", str(tmp_path / "absent"))) == 2
    assert "neither an existing path nor a known model alias" in capsys.readouterr().err


def test_text_shorter_than_a_window_exits_2(tiny_folder, capsys):
    assert (
        cli.run(_args("--model", str(tiny_folder[0]), "--ppl", str(tiny_folder[1]), "--seqlen", "100000"))
        == 2
    )
    assert "fewer than one window of seqlen=100000" in capsys.readouterr().err
