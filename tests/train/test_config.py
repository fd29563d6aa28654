import pytest
import torch

from sfcompile.masking.forge import ForgeConfig
from sfcompile.masking.schedule import ScheduleError, TemperingSchedule
from sfcompile.train.config import TrainConfig, TrainConfigError, parse_tokens


@pytest.mark.parametrize(
    "text,expected",
    [
        ("20M", 20_000_000),
        ("1.5B", 1_500_000_000),
        ("500k", 500_000),
        (1234, 1234),
        ("1e6", 1_000_000),
        ("2_000", 2000),
    ],
)
def test_parse_tokens(text, expected):
    assert parse_tokens(text) == expected


@pytest.mark.parametrize("bad", ["twenty", "20X", "", "1.5.2M"])
def test_parse_tokens_rejects(bad):
    with pytest.raises(TrainConfigError, match="token count"):
        parse_tokens(bad)


def test_negative_tokens_rejected():
    with pytest.raises(TrainConfigError, match=r"tokens=-5 must be positive"):
        TrainConfig(tokens=-5)
    with pytest.raises(TrainConfigError, match="must be positive"):
        TrainConfig(tokens="-1M")


def test_hardening_window_past_the_end_rejected():
    with pytest.raises(ScheduleError, match="past the end"):
        TrainConfig(forge=ForgeConfig(schedule=TemperingSchedule(harden_end=1.2, finalize_at=1.3)))


def test_unknown_score_rejected():
    with pytest.raises(ValueError, match="unknown score 'wanda2'"):
        TrainConfig(forge=ForgeConfig(score="wanda2"))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(teacher="gpu"), "teacher='gpu'"),
        (dict(init="obs"), "init='obs'"),
        (dict(teacher="none"), "distillation needs a teacher"),
        (dict(teacher=torch.nn.Linear(2, 2)), r"not a Linear; pass a teacher model to train\(model, config, teacher"),
        (dict(min_lr=1.0, lr=1e-4), "min_lr"),
        (dict(betas="0.9"), "betas"),
        (dict(forge=None), "forge=None"),
        (dict(seqlen=1), "seqlen"),
        (dict(ce_weight=0, kl_weight=0), "all loss weights are 0"),
        (dict(teacher_data_batch=0), "teacher_data_batch=0"),
        (dict(teacher_data_batch="big"), "teacher_data_batch='big' must be an integer >= 1 or 'auto'"),
        (dict(teacher_data_batch=True), "teacher_data_batch=True"),
        (dict(teacher_data_kv_cache="paged"), "teacher_data_kv_cache='paged'"),
        (dict(teacher_data_precision="fp16"), "teacher_data_precision='fp16'"),
        (dict(teacher_data_attention="flash"),
         "teacher_data_attention='flash': choose one of 'auto', 'sdpa', 'triton'"),
        (dict(teacher_data_attention="triton"), "the decoding attention of teacher_data_kv_cache='packed-graph', "
                                                "not 'auto'"),
        (dict(data="corpus+"), r"data='corpus\+' has an empty part"),
        (dict(teacher="none", kl_weight=0, data="corpus+teacher"), "distillation needs a teacher"),
        (dict(probe_rows=0), "probe_rows=0"),
        (dict(adam_impl="fused", engine="deepspeed"), "adam_impl='fused' with engine='deepspeed'"),
        (dict(forge=ForgeConfig(estimator="fd_forward"), grad_accum=2), "grad_accum=2 .*estimator='fd'"),
        (dict(forge=ForgeConfig(estimator="fd_forward"), micro_batch=8, probe_rows=4), "probe_rows=4"),
    ],
)
def test_bad_values_name_the_value(kwargs, match):
    with pytest.raises(TrainConfigError, match=match):
        TrainConfig(**kwargs)


def test_derived_steps_and_roundtrip():
    cfg = TrainConfig(tokens="1M", seqlen=512, micro_batch=4, grad_accum=2, warmup=0.1, betas="0.9,0.99")
    assert cfg.tokens == 1_000_000 and cfg.betas == (0.9, 0.99)
    assert cfg.total_steps() == 1_000_000 // 4096
    assert cfg.warmup_steps() == round(0.1 * cfg.total_steps())
    again = TrainConfig.from_dict(cfg.to_dict())
    assert again == cfg
    with pytest.raises(TrainConfigError, match="unknown TrainConfig field"):
        TrainConfig.from_dict({**cfg.to_dict(), "lr_typo": 1})


def test_frozen():
    cfg = TrainConfig()
    with pytest.raises(AttributeError):
        cfg.lr = 1.0


def test_pruning_init_gets_the_from_pruned_window_unless_one_was_chosen():
    from sfcompile.train.config import FROM_PRUNED, FROM_PRUNED_EXPLORE_TOKENS

    sched = TrainConfig(tokens="8M", init="sparsegpt").forge.schedule
    assert {k: getattr(sched, k) for k in FROM_PRUNED} == FROM_PRUNED
    # exploration ends after FROM_PRUNED_EXPLORE_TOKENS tokens at most: longer runs finalise earlier than 60%
    for tokens, at in (("1M", 0.6), ("8M", 0.6), ("10M", 0.5), ("20M", 0.25), ("100M", 0.05)):
        assert TrainConfig(tokens=tokens, init="admm").forge.schedule.finalize_at == pytest.approx(at), tokens
    assert FROM_PRUNED_EXPLORE_TOKENS == 5_000_000
    # but never fewer than FROM_PRUNED_MIN_UPDATES early-period updates: 1B tokens of 2048 x 256 per step
    big = TrainConfig(tokens="1B", init="admm", seqlen=2048, micro_batch=256).forge.schedule.finalize_at
    assert big * 1e9 / (2048 * 256) == pytest.approx(4 * TemperingSchedule().period_early)
    assert TrainConfig(tokens="10M").forge.schedule == TemperingSchedule()  # from dense: the reference's
    mine = ForgeConfig(schedule=TemperingSchedule(harden_start=0.2, harden_end=0.5, finalize_at=0.7))
    kept = TrainConfig(tokens="10M", init="wanda", forge=mine).forge.schedule
    assert (kept.harden_start, kept.harden_end, kept.finalize_at, kept.sparsity_warmup) == (0.2, 0.5, 0.7, 0.0)


def test_the_update_floor_counts_the_steps_of_all_processes(monkeypatch):
    # under torchrun (WORLD_SIZE=4) a step consumes 4x the tokens, so 4 early-period updates take 4x the share
    kw = dict(tokens="1B", init="admm", seqlen=2048, micro_batch=64)
    one = TrainConfig(**kw).forge.schedule.finalize_at
    monkeypatch.setenv("WORLD_SIZE", "4")
    four = TrainConfig(**kw)
    assert four.forge.schedule.finalize_at == pytest.approx(4 * one)
    total = four.total_steps(4)
    assert four.forge.schedule.finalize_at * total == pytest.approx(4 * TemperingSchedule().period_early, rel=1e-3)
    monkeypatch.setenv("WORLD_SIZE", "four")
    with pytest.raises(Exception, match="WORLD_SIZE='four'"):
        TrainConfig(**kw)


@pytest.mark.parametrize(
    "kwargs,expected",
    [
        (dict(), "fd_forward"),  # one micro-batch per step, probed whole: the one-pass probe
        (dict(grad_accum=2), "fd"),  # the step's gradient spans two micro-batches
        (dict(micro_batch=8, probe_rows=4), "fd"),  # the probe sees part of the step's batch
        (dict(micro_batch=8, probe_rows=8), "fd_forward"),
        (dict(engine="deepspeed"), "fd"),  # ZeRO-3 keeps no .grad
        (dict(forge=ForgeConfig(estimator="fd")), "fd"),  # a chosen estimator is kept
        (dict(forge=ForgeConfig(estimator="hvp"), grad_accum=2), "hvp"),
    ],
)
def test_auto_estimator_resolves_to_what_can_run(kwargs, expected):
    assert ForgeConfig().estimator == "auto"
    cfg = TrainConfig(tokens="1M", **kwargs)
    assert cfg.forge.estimator == expected
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg  # the resolved name is what train_config.json records


def test_loss_kernel_auto_is_the_triton_kernel_on_cuda_and_the_chunked_loss_elsewhere():
    assert TrainConfig().loss_kernel == "auto" and TrainConfig().teacher_data_kv_cache == "auto"
    want = {("auto", "cpu"): False, ("auto", "cuda"): True, ("torch", "cuda"): False, ("triton", "cpu"): True}
    for (kernel, device), triton in want.items():
        assert TrainConfig(loss_kernel=kernel, device=device).loss_kernel_triton() is triton, (kernel, device)
    with pytest.raises(TrainConfigError, match="loss_kernel='cuda': choose 'auto'"):
        TrainConfig(loss_kernel="cuda")


def test_teacher_batch_auto_fits_the_teachers_kv_cache_in_the_budget():
    from _tiny import tiny_llama

    from sfcompile.train.config import TEACHER_BATCH_CPU, TEACHER_BATCH_MAX, TEACHER_KV_BUDGET

    teacher = tiny_llama(vocab=257)  # 2 layers, 4 heads, 2 K/V heads, hidden 64 (head size 16)
    c = teacher.config
    assert TrainConfig().teacher_data_batch == "auto"
    assert TrainConfig(device="cpu").teacher_batch_for(teacher) == TEACHER_BATCH_CPU
    assert TrainConfig(device="cpu", teacher_data_batch=7).teacher_batch_for(teacher) == 7
    # on CUDA: K and V of every layer for seqlen tokens, in bf16 (autocast, the CUDA default) or the weights' dtype
    per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)
    for seqlen, precision, width in ((2**20, "auto", 2), (2**20, "fp32", 4), (512, "auto", 2)):
        cfg = TrainConfig(device="cuda", seqlen=seqlen, teacher_data_precision=precision, tokens=10**12)
        want = min(TEACHER_BATCH_MAX, TEACHER_KV_BUDGET // (per_token * width * seqlen))
        assert cfg.teacher_batch_for(teacher) == want, (seqlen, precision)
    for sampler, share in (("packed", 1), ("dynamic", 2), ("static", 2)):   # generate's caches: half the budget
        cfg = TrainConfig(device="cuda", seqlen=2**20, tokens=10**12, teacher_data_kv_cache=sampler)
        assert cfg.teacher_batch_for(teacher) == TEACHER_KV_BUDGET // share // (per_token * 2 * 2**20), sampler
    # kv_cache "auto": the data code passes the sampler it tries; a fallback to generate's cache gets half
    auto = TrainConfig(device="cuda", seqlen=2**20, tokens=10**12)
    assert auto.teacher_batch_for(teacher, "dynamic") * 2 == auto.teacher_batch_for(teacher, "packed-graph")
    assert TrainConfig(device="cuda", seqlen=512).teacher_batch_for(teacher) == TEACHER_BATCH_MAX
    assert TrainConfig(device="cuda", seqlen=2**20, tokens=10**12).teacher_batch_for(teacher) < TEACHER_BATCH_MAX
    with pytest.raises(TrainConfigError, match="set teacher_data_batch to a number of sequences"):
        TrainConfig(device="cuda").teacher_batch_for(torch.nn.Linear(2, 2))


def test_compile_mode_is_a_torch_compile_mode_that_needs_compile_and_cuda():
    assert TrainConfig().compile_mode == "default"
    with pytest.raises(TrainConfigError, match="'max-autotune': choose one of 'default', 'reduce-overhead'"):
        TrainConfig(compile=True, compile_mode="max-autotune")
    with pytest.raises(TrainConfigError, match="'reduce-overhead' is a mode of torch.compile: set compile=True"):
        TrainConfig(compile_mode="reduce-overhead", device="cpu")
    with pytest.raises(TrainConfigError, match="records CUDA graphs, but this run trains on cpu"):
        TrainConfig(compile=True, compile_mode="reduce-overhead", device="cpu")
    graphs = dict(compile=True, compile_mode="reduce-overhead", device="cuda")
    assert TrainConfig(**graphs).compile_mode == "reduce-overhead"
    with pytest.raises(TrainConfigError, match="has 1 process\\(es\\) with engine='deepspeed'"):
        TrainConfig(**graphs, engine="deepspeed")


def test_cuda_graphs_are_refused_for_several_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(TrainConfigError, match="built and tested for one process; this run has 2 process"):
        TrainConfig(compile=True, compile_mode="reduce-overhead", device="cuda")


def test_teacher_data_tokens_auto_scales_with_the_run():
    from sfcompile.train.config import TEACHER_DATA_SHARE

    assert TrainConfig(tokens="20M").teacher_data_tokens == 8_000_000  # the 20M-token recipe's 8M
    assert TrainConfig(tokens="8M").teacher_data_tokens == round(TEACHER_DATA_SHARE * 8_000_000)
    assert TrainConfig(tokens="20M", teacher_data_tokens="3M").teacher_data_tokens == 3_000_000
    cfg = TrainConfig(tokens="50M")
    assert TrainConfig(**cfg.to_dict()).teacher_data_tokens == 20_000_000  # resolved once, saved as a number
    with pytest.raises(TrainConfigError, match="teacher_data_tokens='lots'"):
        TrainConfig(teacher_data_tokens="lots")
