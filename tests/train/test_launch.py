"""`sfcompile train --nproc-per-node N`: the torchrun command line, bad flags, and a real 2-process CPU run
that is stopped with SIGINT (checkpoint written by both ranks, exit 130) and resumed to the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _dist import free_port
from _tiny import TEXT, byte_tokenizer, tiny_llama

from sfcompile.train import launch

ROOT = Path(__file__).resolve().parents[2]


def test_launch_flags_are_stripped_and_passed_to_torchrun():
    argv = [
        "--model",
        "m",
        "--nproc-per-node",
        "4",
        "--nnodes=2",
        "--out",
        "runs/a",
        "--master-addr",
        "h0",
        "--node-rank",
        "1",
        "--master_port=1234",
        "--tokens",
        "1M",
    ]
    assert launch.strip_launch_flags(argv) == ["--model", "m", "--out", "runs/a", "--tokens", "1M"]
    cmd = launch.torchrun_argv(
        argv, nproc_per_node=4, nnodes=2, node_rank=1, master_addr="h0", master_port=1234
    )
    assert cmd[-9:] == ["-m", "sfcompile", "train", "--model", "m", "--out", "runs/a", "--tokens", "1M"]
    for flag in (
        "--nproc-per-node=4",
        "--nnodes=2",
        "--node-rank=1",
        "--master-addr=h0",
        "--master-port=1234",
        "--max-restarts=0",
    ):
        assert flag in cmd
    from torch.distributed.run import parse_args

    parsed = parse_args(cmd)  # torchrun accepts it
    assert parsed.module and parsed.training_script == "sfcompile" and parsed.nproc_per_node == "4"


def test_bad_launch_requests_are_refused():
    with pytest.raises(launch.LaunchError, match="--node-rank 2 must lie in 0 .. 1"):
        launch.torchrun_argv([], nproc_per_node=2, nnodes=2, node_rank=2, master_addr="h0")
    with pytest.raises(launch.LaunchError, match="pass --master-addr"):
        launch.torchrun_argv([], nproc_per_node=2, nnodes=2)
    with pytest.raises(launch.LaunchError, match="must be >= 1"):
        launch.torchrun_argv([], nproc_per_node=0)


def test_no_second_launch_inside_a_worker(monkeypatch):
    class Args:
        nproc_per_node, nnodes = 2, 1

    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert launch.wants_launch(Args())
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")  # what torchrun sets in its workers
    assert not launch.wants_launch(Args())


def _cli(model_dir: Path, out: Path, *extra: str) -> list[str]:
    data = str(model_dir / "train.txt")
    return [
        sys.executable,
        "-m",
        "sfcompile",
        "train",
        "--model",
        str(model_dir),
        "--out",
        str(out),
        "--data",
        data,
        "--eval-text",
        data,
        "--eval-windows",
        "1",
        "--tokens",
        str(32 * 2 * 2 * 2 * 40),
        "--seqlen",
        "32",
        "--micro-batch",
        "2",
        "--grad-accum",
        "2",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--no-forge",
        "--init",
        "magnitude",
        "--checkpoint-every",
        "2",
        "--log-every",
        "1",
        *extra,
    ]


def test_sigint_stops_all_ranks_with_a_checkpoint_then_resume(tmp_path):
    model_dir = tmp_path / "tiny"
    tiny_llama(seed=0).save_pretrained(model_dir)
    byte_tokenizer().save_pretrained(model_dir)
    (model_dir / "train.txt").write_text(TEXT)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    port = str(free_port())
    proc = subprocess.Popen(
        _cli(model_dir, out, "--nproc-per-node", "2", "--master-port", port),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    latest = out / "checkpoints" / "latest"
    deadline = time.monotonic() + 80
    while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert latest.exists(), proc.communicate(timeout=30)[0][-3000:] if proc.poll() is not None else "no ckpt"
    proc.send_signal(signal.SIGINT)  # Ctrl-C reaches the launcher; it forwards one SIGINT to each worker
    log = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, log[-3000:]
    ckpt = out / "checkpoints" / latest.read_text().strip()
    stopped_at = int(ckpt.name.split("_")[1])
    assert 2 <= stopped_at < 40, log[-2000:]
    assert (ckpt / "dcp" / ".metadata").exists() and (ckpt / "train_state.pt").exists()
    assert not list((out / "checkpoints").glob(".tmp-*"))  # nothing half-written left behind
    assert "stopped at step" in log

    done = subprocess.run(
        _cli(
            model_dir, out, "--resume", str(out), "--nproc-per-node", "2", "--master-port", str(free_port())
        ),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert f"resumed from {ckpt}" in done.stdout + done.stderr
    assert (out / "final" / "sparsity.json").exists()
