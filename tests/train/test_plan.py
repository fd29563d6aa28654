import argparse

import pytest
from transformers import AutoConfig

from sfcompile.models.aliases import alias_config
from sfcompile.train.plan import DS_MAX_LIVE, DS_REDUCE_BUCKET, GIB, PlanInput, add_arguments, count_model, plan, run

FSDP2_PARTS = ["weights", "grads", "optimizer", "masks", "scores", "estimator", "slorb", "teacher", "gather",
               "activations", "logits", "overhead", "total", "startup"]


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
    assert one["masks"] == 3 * 4 * m.site_params
    # bf16 logits, their gradient buffer, the teacher's; 12 chunk-sized fp32 temporaries (256 logits: the whole batch)
    assert one["logits"] == 4096 * 256 * 2 * 3 + 12 * 4096 * 256 * 4
    assert one["gather"] == 0 and eight["gather"] > 0
    assert plan(m, PlanInput(teacher=False))["teacher"] == 0
    ckpt = plan(m, PlanInput(checkpointing=True))["activations"]
    assert ckpt < one["activations"]
    # FSDP2 blocks kept gathered from forward to backward: every student block's W and m_eff in bf16
    keep = plan(m, PlanInput(gpus=8, reshard_after_forward=False))
    assert keep["gather"] == 2 * m.block_params * 2 * m.layers + 2 * m.block_params * 2 + 2 * m.root_params
    assert keep["gather"] > eight["gather"] and plan(m, PlanInput(reshard_after_forward=False))["gather"] == 0
    assert _args("--model", "x", "--no-reshard-after-forward").reshard_after_forward is False
    # the forward-difference probe keeps no g− of its own: the step's gradient is already counted
    # (the default "auto" plans it, as the trainer runs it; "fd" keeps g−, DeepSpeed resolves "auto" to "fd")
    fwd, fd = plan(m, PlanInput(gpus=8, estimator="fd_forward")), plan(m, PlanInput(gpus=8, estimator="fd"))
    assert fwd["estimator"] == pytest.approx(fd["estimator"] - 4 * m.site_params / 8)
    assert eight["estimator"] == fwd["estimator"]
    assert _args("--model", "x", "--estimator", "fd_forward").estimator == "fd_forward"
    assert _args("--model", "x").estimator == "auto"
    with pytest.raises(ValueError, match="estimator 'fdx'"):
        PlanInput(estimator="fdx")


def test_fsdp2_parts_are_the_documented_formulas():
    m = count_model(_tiny_config())
    p = PlanInput(gpus=4, micro_batch=2, seqlen=512)
    parts = plan(m, p)
    assert list(parts) == FSDP2_PARTS
    tokens, trainable = 2 * 512, m.params - m.embedding_params
    bptl = 2 * (7 * m.hidden + 2 * m.kv_dim + 5 * m.intermediate)
    want = {
        "weights": 4 * m.params / 4, "grads": 4 * trainable / 4, "optimizer": 8 * trainable / 4,
        "masks": 12 * m.site_params / 4, "scores": 4 * m.site_params / 4,
        "estimator": (20 * m.site_params + 4 * m.params) / 4, "slorb": 16 * m.site_params / 16 / 4,  # auto: fd_forward
        "teacher": 2 * m.params / 4, "gather": 2 * m.block_params * 3 * 2 + 2 * m.root_params,
        "activations": tokens * m.layers * bptl, "logits": tokens * m.vocab * 2 * 3 + 12 * tokens * m.vocab * 4,
        "overhead": 2 * GIB,
    }
    for name, value in want.items():
        assert parts[name] == pytest.approx(value), name
    assert parts["total"] == pytest.approx(sum(want.values()))


def test_deepspeed_adds_zero3_terms_and_keeps_the_shared_ones():
    m = count_model(_tiny_config())
    tokens = 1024
    fsdp, ds = (plan(m, PlanInput(gpus=2, seqlen=tokens, engine=e)) for e in ("fsdp2", "deepspeed"))
    assert list(fsdp) == FSDP2_PARTS
    assert set(ds) == set(FSDP2_PARTS) | {"master", "ipg"}
    for name in ("weights", "grads", "optimizer", "masks", "scores", "slorb", "teacher", "logits", "overhead",
                 "startup"):
        assert ds[name] == fsdp[name], name
    slorb = m.site_params / 16
    assert ds["master"] == pytest.approx(4 * (m.params - m.embedding_params + slorb) / 2)
    assert ds["ipg"] == 4 * DS_REDUCE_BUCKET
    assert ds["estimator"] == pytest.approx(24 * m.site_params / 2 + 4 * m.site_params)
    # a tiny model is gathered whole (fewer elements than stage3_max_live_parameters)
    assert ds["gather"] == pytest.approx(4 * (m.params + 4 * m.site_params + slorb))
    extra = 4 * m.site_params + tokens * m.layers * (8 * m.hidden + 4 * m.kv_dim)
    assert ds["activations"] - fsdp["activations"] == pytest.approx(extra)
    assert ds["total"] == pytest.approx(sum(v for k, v in ds.items() if k not in ("total", "startup")))


def test_deepspeed_terms_scale_as_documented():
    m = count_model(_tiny_config())
    two, eight = (plan(m, PlanInput(gpus=g, engine="deepspeed")) for g in (2, 8))
    assert eight["master"] == pytest.approx(two["master"] / 4)
    assert eight["ipg"] == two["ipg"] and eight["gather"] == two["gather"]  # per rank, whatever W
    unsharded = 4 * m.site_params  # the probe's whole gradients
    assert eight["estimator"] - unsharded == pytest.approx((two["estimator"] - unsharded) / 4)
    short, long = (plan(m, PlanInput(gpus=2, engine="deepspeed", seqlen=s)) for s in (1024, 2048))
    assert long["activations"] - 4 * m.site_params == pytest.approx(2 * (short["activations"] - 4 * m.site_params))
    ckpt = plan(m, PlanInput(gpus=2, engine="deepspeed", checkpointing=True))
    assert ckpt["activations"] < two["activations"]
    # one process trains without the engine: the plan is the one-GPU plan
    # (estimator given: "auto" resolves to "fd" for the deepspeed engine, as TrainConfig does)
    assert plan(m, PlanInput(gpus=1, engine="deepspeed", estimator="fd")) == plan(m, PlanInput(gpus=1, estimator="fd"))
    big = count_model(alias_config("qwen3-8b"))
    assert plan(big, PlanInput(gpus=2, engine="deepspeed"))["gather"] == 4 * DS_MAX_LIVE


def test_deepspeed_persistent_state_matches_the_h200_run():
    # qwen3-0.6b, 2 ranks: 9.62 GiB allocated per rank between steps (benchmarks/scale_fsdp2.py --engine
    # deepspeed, phase markers); fp32 parameters, master clone, gradient partitions, AdamW, masks, Hessian EMA,
    # SLoRB, bf16 teacher partitions and the IPG bucket are all that is held there
    m = count_model(alias_config("qwen3-0.6b"))
    ds = plan(m, PlanInput(gpus=2, engine="deepspeed", micro_batch=1, seqlen=2048))
    held = sum(ds[k] for k in ("weights", "grads", "optimizer", "master", "ipg", "masks", "scores", "slorb",
                               "teacher"))
    # that run predates the stored m_eff (a third mask-sized fp32 tensor per site, in "masks" since): without it
    assert (held - 4 * m.site_params / 2) / GIB == pytest.approx(9.62, rel=0.03)
    fsdp = plan(m, PlanInput(gpus=2, engine="fsdp2", micro_batch=1, seqlen=2048))
    assert ds["total"] > fsdp["total"] + 8 * GIB


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
