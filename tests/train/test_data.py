import json

import numpy as np
import pytest
import torch
from _tiny import TEXT, byte_tokenizer, tiny_llama

import sfcompile.train.data
from sfcompile.train.data import (
    Batches,
    DataError,
    Prefetcher,
    data_parts,
    read_shard,
    sample_sequences,
    teacher_shard,
    text_shard,
    tokenizer_hash,
)


def test_text_shard_is_built_once_and_cached(tmp_path, text_file):
    tok = byte_tokenizer()
    shard = text_shard(str(text_file), tok, tmp_path / "cache")
    assert shard.dtype == np.uint16
    # documents (blank-line separated) joined with EOS; the bytes of the text otherwise
    first_doc = TEXT.split("\n\n")[0]
    assert list(shard[: len(first_doc)]) == tok(first_doc)["input_ids"]
    assert shard[len(first_doc)] == tok.eos_token_id
    files = sorted(p.name for p in (tmp_path / "cache" / "shards").iterdir())
    assert len(files) == 2 and files[0].endswith(".bin") and tokenizer_hash(tok) in files[0]
    mtime = (tmp_path / "cache" / "shards" / files[0]).stat().st_mtime_ns
    again = text_shard(str(text_file), tok, tmp_path / "cache")
    assert (tmp_path / "cache" / "shards" / files[0]).stat().st_mtime_ns == mtime
    assert np.array_equal(np.asarray(again), np.asarray(shard))


def test_jsonl_documents(tmp_path):
    tok = byte_tokenizer()
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "ab"}) + "\n" + json.dumps({"text": "cd"}) + "\n")
    shard = text_shard(str(path), tok, tmp_path / "c")
    eos = tok.eos_token_id
    assert list(shard) == tok("ab")["input_ids"] + [eos] + tok("cd")["input_ids"] + [eos]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"txt": "x"}\n')
    with pytest.raises(DataError, match="text"):
        text_shard(str(bad), tok, tmp_path / "c")


def test_missing_source_says_what_to_pass(tmp_path):
    with pytest.raises(DataError, match="registry text name"):
        text_shard(str(tmp_path / "nope.txt"), byte_tokenizer(), tmp_path / "c")


def test_batches_are_a_pure_function_of_seed_and_step():
    tokens = np.arange(64 * 10, dtype=np.uint16)
    a = Batches(tokens, seqlen=64, micro_batch=2, grad_accum=2, seed=3)
    b = Batches(tokens, seqlen=64, micro_batch=2, grad_accum=2, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.step(7), b.step(7)))
    seen = torch.cat([m for s in range(5) for m in a.step(s)])[:, 0] // 64  # window ids over 20 samples
    assert sorted(seen[:10].tolist()) == list(range(10))  # epoch 0: every window exactly once
    assert sorted(seen[10:].tolist()) == list(range(10))  # epoch 1: again, in another order
    assert seen[:10].tolist() != seen[10:].tolist()
    c = Batches(tokens, seqlen=64, micro_batch=2, grad_accum=2, seed=4)
    assert not torch.equal(torch.cat(a.step(0)), torch.cat(c.step(0)))
    # two ranks of a 2-rank run read disjoint samples, together the same ones as one rank with twice the batch
    r0 = Batches(tokens, 64, 1, 2, 3, rank=0, world_size=2)
    r1 = Batches(tokens, 64, 1, 2, 3, rank=1, world_size=2)
    one = torch.cat(a.step(1))
    two = torch.cat([r0.micro(1, 0), r1.micro(1, 0), r0.micro(1, 1), r1.micro(1, 1)])
    assert torch.equal(one, two)


def test_prefetcher_yields_steps_in_order_and_propagates_errors():
    tokens = np.arange(32 * 8, dtype=np.uint16)
    b = Batches(tokens, 32, 2, 1, seed=0)
    p = Prefetcher(b, 3, 9)
    got = list(p)
    p.close()
    assert [s for s, _ in got] == list(range(3, 9))
    assert all(torch.equal(m[0], b.step(s)[0]) for s, m in got)
    with pytest.raises(DataError, match="fewer than one window"):
        Batches(tokens[:10], 32, 1, 1, 0)


def test_teacher_shard_samples_full_sequences_and_caches(tmp_path, text_file, monkeypatch):
    tok = byte_tokenizer()
    monkeypatch.setattr(
        "sfcompile.train.data.text_shard", lambda source, tok_, cache: read_shard(_write(tmp_path, tok_))
    )
    teacher = tiny_llama(vocab=257).eval()
    shard = teacher_shard(
        teacher, tok, tmp_path / "c", n_tokens=3 * 16, seqlen=16, temperature=1.0, seed=0, batch=2
    )
    assert len(shard) == 48
    rows = np.asarray(shard).reshape(3, 16)
    assert (rows[:, 0] == tok.bos_token_id).all()
    again = teacher_shard(teacher, tok, tmp_path / "c", n_tokens=48, seqlen=16, temperature=1.0, seed=0, batch=2)
    assert np.array_equal(np.asarray(again), np.asarray(shard))
    # the batch size is part of the cache key: another batch size samples (and caches) its own sequences
    sources = []
    monkeypatch.setattr(
        "sfcompile.train.data.text_shard",
        lambda source, tok_, cache: sources.append(source) or read_shard(_write(tmp_path, tok_)),
    )
    teacher_shard(teacher, tok, tmp_path / "c", n_tokens=48, seqlen=16, temperature=1.0, seed=0, batch=3,
                  prompt_source="my.jsonl")
    assert sources == ["my.jsonl"]
    assert len(list((tmp_path / "c" / "shards").glob("teacher-*.json"))) == 2
    # so are the sampling options: bf16 autocast (here on the CPU) samples its own full-length sequences
    bf16 = teacher_shard(teacher, tok, tmp_path / "c", n_tokens=48, seqlen=16, temperature=1.0, seed=0, batch=2,
                         bf16=True)
    assert len(bf16) == 48 and (np.asarray(bf16).reshape(3, 16)[:, 0] == tok.bos_token_id).all()
    metas = [json.loads(p.read_text()) for p in (tmp_path / "c" / "shards").glob("teacher-*.json")]
    assert sorted(str(m.get("bf16")) for m in metas) == ["False", "False", "True"]
    assert sorted(m["batch"] for m in metas) == [2, 2, 3]
    with pytest.raises(DataError, match="kv_cache='static' under bf16 autocast needs bf16 teacher weights"):
        teacher_shard(teacher, tok, tmp_path / "c", n_tokens=48, seqlen=16, temperature=1.0, seed=1, batch=2,
                      bf16=True, kv_cache="static")


def test_teacher_shard_asks_a_callable_batch_for_the_sampler_it_falls_back_to(tmp_path, monkeypatch):
    """kv_cache="auto" with a batch per sampler: the packed sampler refuses, `generate` samples with its own batch
    (the trainer's half budget), and the shard's cache key and metadata carry that batch."""
    import sfcompile.train.data as data
    from sfcompile.train.sampler import SamplerError

    tok = byte_tokenizer()
    teacher = tiny_llama(vocab=257).eval()
    monkeypatch.setattr(data, "_auto_samplers", lambda device, teacher: (["packed-graph", "dynamic"], None))
    real, ran = data._sample_teacher, []

    def sample(*args, kv_cache, batch, **kw):
        ran.append((kv_cache, batch))
        if kv_cache == "packed-graph":
            raise SamplerError("not this teacher")
        return real(*args, kv_cache=kv_cache, batch=batch, **kw)

    monkeypatch.setattr(data, "_sample_teacher", sample)
    lines = []
    shard = teacher_shard(teacher, tok, tmp_path / "c", n_tokens=48, seqlen=16, temperature=1.0, seed=0,
                          kv_cache="auto", batch={"packed-graph": 4, "dynamic": 2}.__getitem__, log=lines.append)
    assert ran == [("packed-graph", 4), ("dynamic", 2)] and len(shard) == 48
    assert any("refused the teacher" in line for line in lines)
    assert any("'dynamic', 2 sequences at once" in line for line in lines)
    (meta,) = [json.loads(p.read_text()) for p in (tmp_path / "c" / "shards").glob("teacher-*.json")]
    assert meta["batch"] == 2 and meta["kv_cache"] == "dynamic"
    # a second call finds that shard (same batch for the same sampler) without sampling again
    again = teacher_shard(teacher, tok, tmp_path / "c", n_tokens=48, seqlen=16, temperature=1.0, seed=0,
                          kv_cache="auto", batch={"packed-graph": 4, "dynamic": 2}.__getitem__)
    assert len(ran) == 2 and np.array_equal(np.asarray(again), np.asarray(shard))


def test_teacher_shard_is_keyed_by_the_prompt_text_not_its_path(tmp_path, monkeypatch):
    tok = byte_tokenizer()
    teacher = tiny_llama(vocab=257).eval()
    a, b, c = (tmp_path / d / "prompts.txt" for d in ("a", "b", "c"))
    for f, text in ((a, TEXT), (b, TEXT), (c, TEXT + " and one more sentence.")):
        f.parent.mkdir()
        f.write_text(text)
    kw = dict(n_tokens=32, seqlen=16, temperature=1.0, seed=0, batch=2)
    first = np.asarray(teacher_shard(teacher, tok, tmp_path / "cache", prompt_source=str(a), **kw))
    calls = []
    real = sfcompile.train.data.sample_sequences
    monkeypatch.setattr("sfcompile.train.data.sample_sequences", lambda *a_, **k: calls.append(1) or real(*a_, **k))
    # the same text under another path: the cached samples, nothing sampled
    same = np.asarray(teacher_shard(teacher, tok, tmp_path / "cache", prompt_source=str(b), **kw))
    assert calls == [] and np.array_equal(same, first)
    # other text: its own samples
    teacher_shard(teacher, tok, tmp_path / "cache", prompt_source=str(c), **kw)
    assert calls and len(list((tmp_path / "cache" / "shards").glob("teacher-*.json"))) == 2


def test_teacher_shard_hands_the_decoding_attention_to_the_sampler_and_keys_its_shard_by_it(tmp_path, monkeypatch):
    # the trainer's teacher_data_attention reaches sample_sequences; a shard sampled with "triton" is its own,
    # and "sdpa" keeps the key that shards had before the option
    tok = byte_tokenizer()
    teacher = tiny_llama(vocab=257).eval()
    seen = []

    def fake(teacher_, ids, new, temperature, pad_id, **kw):
        seen.append(kw["attention"])
        return torch.cat([ids, torch.ones(ids.shape[0], new, dtype=ids.dtype)], 1)

    monkeypatch.setattr("sfcompile.train.data.sample_sequences", fake)
    monkeypatch.setattr(
        "sfcompile.train.data.text_shard", lambda source, tok_, cache: read_shard(_write(tmp_path, tok_))
    )
    kw = dict(n_tokens=32, seqlen=16, temperature=1.0, seed=0, batch=2)
    teacher_shard(teacher, tok, tmp_path / "cache", kv_cache="packed", **kw)
    teacher_shard(teacher, tok, tmp_path / "cache", kv_cache="packed-graph", attention="triton", **kw)
    assert seen == ["sdpa", "triton"]  # one batch each
    shards = sorted((tmp_path / "cache" / "shards").glob("teacher-*.json"))
    assert len(shards) == 2 and {json.loads(f.read_text())["attention"] for f in shards} == {"sdpa", "triton"}


def test_attention_auto_gives_the_packed_graph_sampler_the_kernel_where_it_takes_the_head_dim(tmp_path, monkeypatch):
    # "auto": the Triton kernel for packed-graph (head dim 16 here), SDPA for the other samplers (their only one)
    # and for heads the kernel cannot take (24 dims), said in the log; the shard is keyed by what ran
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = byte_tokenizer()
    seen = []

    def fake(teacher_, ids, new, temperature, pad_id, **kw):
        seen.append((kw["kv_cache"], kw["attention"]))
        return torch.cat([ids, torch.ones(ids.shape[0], new, dtype=ids.dtype)], 1)

    monkeypatch.setattr("sfcompile.train.data.sample_sequences", fake)
    monkeypatch.setattr(
        "sfcompile.train.data.text_shard", lambda source, tok_, cache: read_shard(_write(tmp_path, tok_))
    )
    kw = dict(n_tokens=32, seqlen=16, temperature=1.0, seed=0, batch=2, attention="auto")
    llama = tiny_llama(vocab=257).eval()
    lines = []
    teacher_shard(llama, tok, tmp_path / "a", kv_cache="packed-graph", log=lines.append, **kw)
    teacher_shard(llama, tok, tmp_path / "a", kv_cache="packed", log=lines.append, **kw)
    assert seen == [("packed-graph", "triton"), ("packed", "sdpa")]
    assert "kv_cache='packed-graph' (attention 'triton'), 2 sequences" in lines[0]
    assert "kv_cache='packed', 2 sequences" in lines[1]
    metas = [json.loads(f.read_text()) for f in (tmp_path / "a" / "shards").glob("teacher-*.json")]
    assert sorted((m["kv_cache"], m["attention"]) for m in metas) == [("packed", "sdpa"), ("packed-graph", "triton")]
    # "sdpa" and "auto" share the other samplers' shards (the key shards had before the option)
    seen.clear()
    teacher_shard(llama, tok, tmp_path / "a", kv_cache="packed", **{**kw, "attention": "sdpa"})
    assert seen == []
    # heads of 24 dims: SDPA, and why
    wide = AutoModelForCausalLM.from_config(AutoConfig.for_model(
        "llama", hidden_size=96, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=257)).eval()
    lines.clear()
    teacher_shard(wide, tok, tmp_path / "w", kv_cache="packed-graph", log=lines.append, **kw)
    assert seen == [("packed-graph", "sdpa")]
    assert lines[0] == ("teacher data: attention='auto' decodes with 'sdpa': the teacher's heads have 24 dims and "
                        "the Triton kernel takes a power of 2 >= 16")
    assert "(attention 'sdpa')" in lines[1]
    # a shard sampled with SDPA before "auto" chose the kernel is read, not sampled again (a resumed run keeps its
    # data); an explicit "triton" samples its own
    seen.clear()
    teacher_shard(llama, tok, tmp_path / "s", kv_cache="packed-graph", **{**kw, "attention": "sdpa"})
    teacher_shard(llama, tok, tmp_path / "s", kv_cache="packed-graph", **kw)
    assert seen == [("packed-graph", "sdpa")]
    teacher_shard(llama, tok, tmp_path / "s", kv_cache="packed-graph", **{**kw, "attention": "triton"})
    assert seen == [("packed-graph", "sdpa"), ("packed-graph", "triton")]
    with pytest.raises(DataError, match="attention='flash': choose one of 'auto', 'sdpa'"):
        teacher_shard(llama, tok, tmp_path / "s", kv_cache="packed-graph", **{**kw, "attention": "flash"})
    # a GPU before Ampere: SDPA, and why (bf16 dots need compute capability 8.0)
    from sfcompile.train.data import _attention_for

    cuda = torch.device("cuda")
    reasons = {}
    for cap, want in (((7, 5), "sdpa"), ((8, 0), "triton"), ((9, 0), "triton")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, cap=cap: cap)
        attn, reasons[cap] = _attention_for("packed-graph", "auto", llama, cuda)
        assert attn == want
    assert reasons[(8, 0)] is None and reasons[(9, 0)] is None
    assert reasons[(7, 5)] == ("the Triton kernel needs a GPU of compute capability 8.0 or later (Ampere), this one "
                               "is 7.5")
    assert _attention_for("packed-graph", "sdpa", llama, cuda) == ("sdpa", None)  # an explicit choice stands


def test_teacher_shard_auto_sampler_takes_the_packed_one_or_says_why_not(tmp_path, monkeypatch):
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = byte_tokenizer()
    monkeypatch.setattr(
        "sfcompile.train.data.text_shard", lambda source, tok_, cache: read_shard(_write(tmp_path, tok_))
    )
    kw = dict(n_tokens=32, seqlen=16, temperature=1.0, seed=0, batch=2)
    lines = []
    # off CUDA "auto" is "dynamic": the same samples, under the same cache key
    llama = tiny_llama(vocab=257).eval()
    auto = np.asarray(teacher_shard(llama, tok, tmp_path / "cpu", kv_cache="auto", log=lines.append, **kw))
    dynamic = np.asarray(teacher_shard(llama, tok, tmp_path / "cpu", kv_cache="dynamic", **kw))
    assert np.array_equal(auto, dynamic) and len(list((tmp_path / "cpu" / "shards").glob("teacher-*.json"))) == 1
    # where the packed sampler comes first (CUDA; here its sliced form on the CPU), a model it serves gets it
    monkeypatch.setattr("sfcompile.train.data._auto_samplers", lambda device, teacher: (["packed", "dynamic"], None))
    auto = np.asarray(teacher_shard(llama, tok, tmp_path / "a", kv_cache="auto", log=lines.append, **kw))
    packed = np.asarray(teacher_shard(llama, tok, tmp_path / "a", kv_cache="packed", **kw))
    assert np.array_equal(auto, packed)
    assert len(lines) == 2 and all(x.startswith("teacher data: 32 tokens sampled with kv_cache=") for x in lines)
    assert "kv_cache='dynamic', 2 sequences at once" in lines[0] and "kv_cache='packed'" in lines[1]
    lines.clear()
    meta = json.loads(next((tmp_path / "a" / "shards").glob("teacher-*.json")).read_text())
    assert meta["kv_cache"] == "packed"
    # a model it refuses (attention within a window shorter than the sampled length): dynamic, and the log says why
    torch.manual_seed(0)
    mistral = AutoModelForCausalLM.from_config(AutoConfig.for_model(
        "mistral", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=257, sliding_window=6)).eval()
    auto = np.asarray(teacher_shard(mistral, tok, tmp_path / "m", kv_cache="auto", log=lines.append, **kw))
    assert len(lines) == 2 and "chose 'packed', which refused the teacher" in lines[0]
    assert "sampled with kv_cache='dynamic'" in lines[1]
    assert "sliding window of 6 tokens" in lines[0] and lines[0].endswith("sampling with 'dynamic'")
    meta = json.loads(next((tmp_path / "m" / "shards").glob("teacher-*.json")).read_text())
    assert meta["kv_cache"] == "dynamic"
    dynamic = np.asarray(teacher_shard(mistral, tok, tmp_path / "m2", kv_cache="dynamic", **kw))
    assert np.array_equal(auto, dynamic)
    with pytest.warns(UserWarning, match="refused the teacher .*sampling with 'dynamic'"):  # no log: a warning
        teacher_shard(mistral, tok, tmp_path / "m4", kv_cache="auto", **kw)
    # an explicit packed sampler is not switched: its refusal is the error
    from sfcompile.train.sampler import SamplerError

    with pytest.raises(SamplerError, match="sliding window of 6 tokens"):
        teacher_shard(mistral, tok, tmp_path / "m3", kv_cache="packed", **kw)
    with pytest.raises(DataError, match="kv_cache='paged': choose 'auto' or one of"):
        teacher_shard(mistral, tok, tmp_path / "m3", kv_cache="paged", **kw)
    # a resumed "auto" run finds the shard its choice sampled, and samples nothing
    monkeypatch.setattr("sfcompile.train.data._sample_teacher", lambda *a, **k: pytest.fail("sampled again"))
    again = teacher_shard(mistral, tok, tmp_path / "m", kv_cache="auto", log=lines.append, **kw)
    assert np.array_equal(np.asarray(again), auto) and len(lines) == 2


def test_auto_sampler_is_the_graph_on_cuda_unless_the_teacher_is_offloaded():
    from types import SimpleNamespace

    from sfcompile.train.data import AUTO_KV_CACHE_CUDA, _auto_samplers

    def teacher(*devices):  # stands in for a module: only where its tensors live matters
        tensors = [SimpleNamespace(device=torch.device(d)) for d in devices]
        return SimpleNamespace(parameters=lambda: iter(tensors[:1]), buffers=lambda: iter(tensors[1:]))

    cuda = torch.device("cuda")
    assert _auto_samplers(cuda, teacher("cuda", "cuda")) == ([AUTO_KV_CACHE_CUDA, "dynamic"], None)
    samplers, why = _auto_samplers(cuda, teacher("cuda", "cpu"))  # an offloaded block's buffer
    assert samplers == ["dynamic"] and "offloaded" in why
    assert _auto_samplers(torch.device("cpu"), teacher("cpu")) == (["dynamic"], None)


def test_sample_sequences_static_cache_and_packed_sampler_match_dynamic_and_check_the_argument():
    teacher = tiny_llama(vocab=257).eval()
    ids = torch.randint(3, 257, (3, 4), generator=torch.Generator().manual_seed(0))
    out = {}
    for kv in ("dynamic", "static", "packed"):
        torch.manual_seed(1)
        # a temperature this low makes sampling greedy, so both caches must give the same continuation
        out[kv] = sample_sequences(teacher, ids, 9, 1e-4, 0, kv_cache=kv)
        assert out[kv].shape == (3, 13) and torch.equal(out[kv][:, :4], ids)
    assert torch.equal(out["dynamic"], out["static"]) and torch.equal(out["dynamic"], out["packed"])
    with pytest.raises(DataError, match="kv_cache='paged'"):
        sample_sequences(teacher, ids, 2, 1.0, 0, kv_cache="paged")


def _write(tmp_path, tok):
    from sfcompile.train.data import write_shard

    return write_shard(tmp_path / "prompts", tok(TEXT)["input_ids"], len(tok), {"source": "test"})


def test_data_parts_split_on_plus_but_keep_an_existing_path_whole(tmp_path):
    plus = tmp_path / "a+b.txt"
    plus.write_text(TEXT)
    assert data_parts(str(plus)) == [str(plus)]
    assert data_parts("corpus + teacher") == ["corpus", "teacher"]
    with pytest.raises(DataError, match=r"data='corpus\+\+teacher' has an empty part"):
        data_parts("corpus++teacher")


def test_mixed_data_concatenates_the_text_and_the_teacher_shards(tmp_path, text_file):
    from sfcompile.train.config import TrainConfig
    from sfcompile.train.loop import _data

    tok = byte_tokenizer()
    teacher = tiny_llama(vocab=257).eval()
    cfg = TrainConfig(
        data=f"{text_file}+teacher", seqlen=16, teacher_data_tokens=32, teacher_data_prompts=str(text_file),
        teacher_data_batch=2, cache_dir=str(tmp_path / "c"), init="keep", forge=None,
    )
    mixed = _data(cfg, tok, teacher, torch.device("cpu"), print)
    text = np.asarray(text_shard(str(text_file), tok, tmp_path / "c"))
    sampled = np.asarray(
        teacher_shard(teacher, tok, tmp_path / "c", n_tokens=32, seqlen=16, temperature=1.0, seed=cfg.seed,
                      prompt_source=str(text_file), batch=2)
    )
    assert len(sampled) == 32
    assert np.array_equal(mixed, np.concatenate([text, sampled]))
    only_text = _data(cfg.replace(data=str(text_file)), tok, teacher, torch.device("cpu"), print)
    assert isinstance(only_text, np.memmap)
