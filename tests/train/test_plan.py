import argparse

import pytest
from transformers import AutoConfig

from sfcompile.train.plan import GIB, PlanInput, add_arguments, count_model, plan, run


def _tiny_config():
    return AutoConfig.for_model("llama", hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                num_attention_heads=4, num_key_value_heads=2, vocab_size=256)


def test_counts_match_the_model():
    m = count_model(_tiny_config())
    per_block_sites = 64 * 64 * 2 + 2 * 32 * 64 + 3 * 64 * 128  # q, o + k, v + gate, up, down
    assert m.site_params == 3 * per_block_sites
    assert m.block_params == per_block_sites + 2 * 64  # + two RMSNorm weights
    assert m.embedding_params == 256 * 64
    assert m.root_params == m.params - 3 * m.block_params
    assert (m.layers, m.hidden, m.intermediate, m.kv_dim, m.vocab) == (3, 64, 128, 32, 256)


def test_sharded_terms_scale_with_ranks_and_formulas_hold():
    m = count_model(_tiny_config())
    one, eight = plan(m, PlanInput(gpus=1)), plan(m, PlanInput(gpus=8))
    for part in ("weights", "grads", "optimizer", "masks", "scores", "estimator", "teacher"):
        assert eight[part] == pytest.approx(one[part] / 8)
    assert one["weights"] == 4 * m.params
    assert one["optimizer"] == 8 * (m.params - m.embedding_params)
    assert one["masks"] == 2 * 4 * m.site_params
    assert one["logits"] == 4096 * 256 * 4 * 3
    assert one["gather"] == 0 and eight["gather"] > 0
    assert plan(m, PlanInput(teacher=False))["teacher"] == 0
    ckpt = plan(m, PlanInput(checkpointing=True))["activations"]
    assert ckpt < one["activations"]
    # FSDP2 blocks kept gathered from forward to backward: every student block's W, mask and hard in bf16
    keep = plan(m, PlanInput(gpus=8, reshard_after_forward=False))
    assert keep["gather"] == 2 * m.block_params * 3 * m.layers + 2 * m.block_params * 2 + 2 * m.root_params
    assert keep["gather"] > eight["gather"] and plan(m, PlanInput(reshard_after_forward=False))["gather"] == 0
    assert _args("--model", "x", "--no-reshard-after-forward").reshard_after_forward is False


def _args(*argv):
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(argv))


def test_cli_verdicts_and_bad_input(capsys):
    assert run(_args("--model", "qwen3-8b", "--gpus", "8", "--gpu-mem", "141GB")) == 0
    assert "fits" in capsys.readouterr().out
    assert run(_args("--model", "qwen3-8b", "--gpus", "1", "--gpu-mem", "80GB")) == 1
    assert "does NOT fit" in capsys.readouterr().out
    with pytest.raises(ValueError, match="not a size"):
        run(_args("--model", "qwen3-8b", "--gpu-mem", "lots"))
    with pytest.raises(ValueError, match="at least 1 GPU"):
        PlanInput(gpus=0)
    assert GIB == 1 << 30
