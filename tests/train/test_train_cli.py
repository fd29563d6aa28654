"""`sfcompile train` end to end on a tiny local HF folder: SIGTERM → exit 143 + checkpoint, --resume → done."""

import argparse
import json
import os
import signal

import pytest
from _tiny import TEXT, byte_tokenizer, tiny_llama

from sfcompile.masking.schedule import TemperingSchedule
from sfcompile.train import cli
from sfcompile.train.config import TrainConfig, TrainConfigError


def _args(argv):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_sigterm_then_resume(tmp_path, monkeypatch):
    folder = tmp_path / "tiny"
    tiny_llama().save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    data = tmp_path / "train.txt"
    data.write_text(TEXT)
    out = tmp_path / "run"
    argv = [
        "--model",
        str(folder),
        "--out",
        str(out),
        "--tokens",
        str(32 * 2 * 8),
        "--seqlen",
        "32",
        "--micro-batch",
        "2",
        "--data",
        str(data),
        "--eval-text",
        str(data),
        "--eval-windows",
        "2",
        "--init",
        "dense",
        "--forge",
        "period_early=2",
        "--forge",
        "period_late=2",
        "--forge",
        "tau_samples=512",
        "--lr",
        "1e-3",
        "--warmup",
        "1",
        "--log-every",
        "1",
    ]
    import sfcompile.train.loop as loop

    real = loop.lr_at

    def signal_at_3(step, **kw):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(step, **kw)

    monkeypatch.setattr(loop, "lr_at", signal_at_3)
    assert cli.run(_args(argv)) == 143
    assert (out / "checkpoints" / "latest").read_text() == "step_0000004"
    assert json.loads((out / "run.json").read_text())["model"] == str(folder)
    assert cli.run(_args(argv)) == 2  # the folder holds a run: a new run there is refused
    monkeypatch.setattr(loop, "lr_at", real)
    assert cli.run(_args(["--resume", str(out)])) == 0
    assert (out / "final" / "sparsity.json").exists()
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 9))


def test_default_recipe_starts_from_admm_with_a_hard_forward(monkeypatch):
    args = _args(["--model", "m", "--out", "o", "--tokens", "10M"])
    assert args.init == "admm"
    sched = cli.forge_from_overrides([], args.init).schedule
    assert (sched.harden_start, sched.harden_end, sched.finalize_at, sched.sparsity_warmup) == (0, 0, 0.6, 0)
    # exploration stops after 5M tokens: the run's length decides (10M: half the run; 20M, the default: 0.25)
    assert cli.forge_from_overrides([], args.init, args.tokens).schedule.finalize_at == 0.5
    assert cli.config_from_args(_args(["--model", "m", "--out", "o"])).forge.schedule.finalize_at == 0.25
    assert cli.config_from_args(_args(["--model", "m", "--out", "o", "--tokens", "4M"])).forge.schedule.finalize_at \
        == 0.6
    assert cli.forge_from_overrides(["finalize_at=0.8"], "sparsegpt", "20M").schedule.finalize_at == 0.8  # user wins
    # the CLI's window is the config's, in one process and in each of a launch's workers
    for world in ("1", "8"):
        monkeypatch.setenv("WORLD_SIZE", world)
        big = _args(["--model", "m", "--out", "o", "--tokens", "1B", "--seqlen", "2048", "--micro-batch", "64"])
        kw = dict(tokens="1B", init="admm", seqlen=2048, micro_batch=64)
        assert cli.config_from_args(big).forge.schedule == TrainConfig(**kw).forge.schedule, world
    floor_8 = 4 * TemperingSchedule().period_early * 2048 * 64 * 8 / 1e9  # 4 updates of 8-process steps
    assert cli.config_from_args(big).forge.schedule.finalize_at == pytest.approx(floor_8)
    # fields of either config, typed like their defaults; unknown keys and missing values named
    mixed = cli.forge_from_overrides(["score=magnitude", "period-early=7", "slorb=false"], "admm")
    assert (mixed.score, mixed.schedule.period_early, mixed.slorb, mixed.schedule.finalize_at) == (
        "magnitude", 7, False, 0.6)
    with pytest.raises(ValueError, match=r"--forge: unknown field\(s\) \['periodd'\]: ForgeConfig has .*score"):
        cli.forge_from_overrides(["periodd=3"], "admm")
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        cli.forge_from_overrides(["score"], "admm")
    dense = cli.forge_from_overrides([], "dense").schedule
    assert dense.harden_start > 0 and dense.sparsity_warmup > 0  # the reference schedule from dense


def test_sharding_flags_reach_the_config():
    base = ["--model", "m", "--out", "o", "--tokens", "10M"]
    cfg = cli.config_from_args(_args(base))
    assert cfg.reshard_after_forward and not cfg.activation_checkpointing
    cfg = cli.config_from_args(_args([*base, "--no-reshard-after-forward", "--activation-checkpointing"]))
    assert not cfg.reshard_after_forward and cfg.activation_checkpointing


def test_teacher_sampling_flags_reach_the_config():
    base = ["--model", "m", "--out", "o", "--tokens", "10M", "--data", "corpus+teacher"]
    cfg = cli.config_from_args(_args(base))
    assert (cfg.teacher_data_kv_cache, cfg.teacher_data_precision, cfg.loss_kernel) == ("auto", "auto", "auto")
    assert cfg == cfg.replace(teacher_data_kv_cache="auto", loss_kernel="auto")  # the CLI's defaults are the API's
    for flags, kernel in (([], "auto"), (["--loss-kernel", "torch"], "torch"), (["--loss-kernel", "triton"], "triton")):
        assert cli.config_from_args(_args([*base, *flags])).loss_kernel == kernel
    cfg = cli.config_from_args(_args([*base, "--teacher-data-kv-cache", "static", "--teacher-data-precision", "fp32"]))
    assert (cfg.teacher_data_kv_cache, cfg.teacher_data_precision) == ("static", "fp32")
    assert not cfg.teacher_data_bf16()
    assert cfg.replace(teacher_data_precision="bf16").teacher_data_bf16()
    assert cli.config_from_args(_args(base)).teacher_data_batch == "auto"
    assert cli.config_from_args(_args([*base, "--teacher-data-batch", "64"])).teacher_data_batch == 64
    with pytest.raises(SystemExit):
        _args([*base, "--teacher-data-batch", "many"])


def test_bad_values_are_reported_by_the_flag_that_set_them(tmp_path, capsys):
    # TrainConfig speaks its field names (min_lr=1.0); the command speaks its flags (--min-lr 1.0)
    base = ["--model", "m", "--out", str(tmp_path / "o")]
    for flags, words in (
        (["--min-lr", "1"], "--min-lr 1.0 must be in [0, --lr 0.0001]"),
        (["--micro-batch", "0"], "--micro-batch 0 must be an integer >= 1"),
        (["--ce-weight", "0", "--kl-weight", "0"], "set --ce-weight, --kl-weight or --squarehead > 0"),
        (["--data", "teacher", "--teacher", "none"], "--teacher none but --kl-weight/--squarehead > 0 or --data "
                                                     "teacher"),
        (["--forge", "finalize_at=2"], "--forge: finalize_at=2.0 is a fraction"),  # a ForgeConfig field, as typed
    ):
        with pytest.raises(ValueError) as err:
            cli.config_from_args(_args([*base, *flags]))
        assert words in str(err.value), str(err.value)
    with pytest.raises(TrainConfigError):  # the type survives the rewording
        cli.config_from_args(_args([*base, "--lr", "-1"]))
    # the whole command: exit 2, the message on stderr, nothing written
    from sfcompile.cli import main

    assert main(["train", *base, "--tokens", "-5"]) == 2
    assert "sfcompile train: error: --tokens -5 must be positive" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    # only fields this command has a flag for; paths and ForgeConfig settings stay as written
    assert cli.in_flags("runs/min_lr/x and /a/ce_weight.json: score=bogus, min_lr.") == (
        "runs/min_lr/x and /a/ce_weight.json: score=bogus, --min-lr.")


def test_teacher_data_flags_without_teacher_data_are_refused(tmp_path):
    # --teacher-data-tokens 40M with --data corpus would sample nothing: refused, naming the flag and the fix
    base = ["--model", "m", "--out", str(tmp_path / "o")]
    for flags, flag in (
        (["--teacher-data-tokens", "40M"], "--teacher-data-tokens 40M"),
        (["--teacher-data-batch", "64"], "--teacher-data-batch 64"),
        (["--teacher-data-prompts", "wiki"], "--teacher-data-prompts wiki"),
        (["--teacher-data-attention", "triton"], "--teacher-data-attention triton"),
    ):
        with pytest.raises(ValueError) as err:
            cli.config_from_args(_args([*base, "--data", "corpus", *flags]))
        assert f"{flag} applies to teacher-sampled data" in str(err.value), str(err.value)
        assert "--data corpus+teacher" in str(err.value)
    # with a teacher part, or at the defaults, they pass
    config = cli.config_from_args(_args([*base, "--data", "corpus+teacher", "--teacher-data-tokens", "40M"]))
    assert config.teacher_data_tokens == 40_000_000
    assert cli.config_from_args(_args([*base, "--data", "corpus"])).data == "corpus"
    # the Triton decoding attention goes with the packed-graph sampler, said in flags
    with pytest.raises(ValueError, match="--teacher-data-attention triton is the decoding attention of "
                                         "--teacher-data-kv-cache packed-graph, not 'auto'"):
        cli.config_from_args(_args([*base, "--data", "corpus+teacher", "--teacher-data-attention", "triton"]))
    config = cli.config_from_args(_args([*base, "--data", "corpus+teacher", "--teacher-data-attention", "triton",
                                         "--teacher-data-kv-cache", "packed-graph"]))
    assert config.teacher_data_attention == "triton"
