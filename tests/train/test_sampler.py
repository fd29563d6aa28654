"""The packed teacher sampler (`sfcompile.train.sampler`) against a full forward and `generate`."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from sfcompile.train.data import sample_sequences
from sfcompile.train.sampler import SamplerError, _attention, decode, multinomial, windows_of

V = 97


def _model(kind: str, **kw):
    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = AutoConfig.for_model("gpt2", n_embd=64, n_layer=3, n_head=4, vocab_size=V, bos_token_id=0,
                                   eos_token_id=0)
    else:
        cfg = AutoConfig.for_model(kind, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                   num_attention_heads=4, vocab_size=V, **kw)
    return AutoModelForCausalLM.from_config(cfg).eval()


MODELS = {
    "llama, grouped K/V": ("llama", dict(num_key_value_heads=2)),
    "qwen3, one K/V head": ("qwen3", dict(num_key_value_heads=1, head_dim=16)),
    "gpt2, no grouping": ("gpt2", {}),
}


@pytest.mark.parametrize("mode,windows,attention", [("sliced", None, "sdpa"), ("masked", 1, "sdpa"),
                                                    ("masked", 3, "sdpa"), ("masked", 3, "triton")])
@pytest.mark.parametrize("name", list(MODELS))
def test_decode_gives_the_full_forward_logits_and_generate_greedy_tokens(name, mode, windows, attention):
    # "masked" is the graph mode's step run eagerly: the buffer read under a mask up to the end of the step's
    # window (1: the whole buffer), the position on the device; "triton": the decoding attention by the Triton
    # kernel (interpreted here), which reads the positions up to the fed one and no further
    kind, kw = MODELS[name]
    model = _model(kind, **kw)
    ids = torch.randint(1, V, (3, 5), generator=torch.Generator().manual_seed(1))
    seen = []

    def greedy(logits):
        seen.append(logits.clone())
        return logits.argmax(-1)

    out = decode(model, ids, 8, greedy, mode=mode, windows=windows, attention=attention)
    assert out.shape == (3, 13) and torch.equal(out[:, :5], ids)
    with torch.no_grad():
        full = model(out).logits  # no cache at all: every position from scratch
    for i, logits in enumerate(seen):  # step i's logits predict position 5 + i
        torch.testing.assert_close(logits, full[:, 4 + i], atol=1e-5, rtol=1e-5)
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=8,
                         min_new_tokens=8, pad_token_id=0)
    assert torch.equal(ref, out)
    assert model.config._attn_implementation == "sdpa"  # switched back


@pytest.mark.parametrize("start,end,windows", [(1, 511, 8), (5, 12, 3), (5, 12, 1), (1, 2, 8), (30, 40, 4)])
def test_windows_cover_every_step_once_and_reach_past_its_position(start, end, windows):
    spans = windows_of(start, end, windows)
    fed = [first + i for first, steps, _ in spans for i in range(steps)]
    assert fed == list(range(start, end))                           # every masked step, once, in order
    for first, steps, window in spans:
        assert first + steps - 1 < window <= end + 1 and window % 8 == 0 or window == end + 1
    assert len(spans) <= windows and spans[-1][2] == end + 1
    if windows == 1:
        assert spans == [(start, end - start, end + 1)]


def test_masked_steps_read_their_window_not_the_whole_buffer(monkeypatch):
    from sfcompile.train import sampler

    model = _model("llama", num_key_value_heads=2)
    ids = torch.randint(1, V, (2, 1), generator=torch.Generator().manual_seed(3))
    reads = []
    write = sampler._Buffers.write

    def spy(self, layer, key, value):
        k, v = write(self, layer, key, value)
        if self.position is not None and layer == 0:
            reads.append((int(self.position), k.shape[2], v.shape[2]))
        return k, v

    monkeypatch.setattr(sampler._Buffers, "write", spy)
    out = decode(model, ids, 31, lambda z: z.argmax(-1), mode="masked", windows=4)   # 32 positions: 4 x 8
    assert [r for _, r, _ in reads] == [8] * 7 + [16] * 8 + [24] * 8 + [32] * 7
    assert all(pos < r == w for pos, r, w in reads) and [pos for pos, _, _ in reads] == list(range(1, 31))
    assert torch.equal(out, decode(model, ids, 31, lambda z: z.argmax(-1)))     # the sliced decode's tokens
    with pytest.raises(SamplerError, match="windows=0 must be an integer >= 1"):
        decode(model, ids, 4, lambda z: z.argmax(-1), mode="masked", windows=0)
    # sample_sequences hands its windows to decode (teacher_sampling.py times packed-graph/W through it)
    with pytest.raises(SamplerError, match="windows=0 must be an integer >= 1"):
        sample_sequences(model, ids, 4, 1.0, 0, kv_cache="packed", windows=0)


def test_sampled_tokens_skip_suppressed_ids_and_follow_the_seed():
    model = _model("llama", num_key_value_heads=2)
    with torch.no_grad():  # make id 7 the model's favourite by far: suppressed, it must still never appear
        model.lm_head.weight[7] = model.lm_head.weight.abs().max() * 50 * model.model.norm.weight.sign()
    ids = torch.randint(8, V, (4, 3), generator=torch.Generator().manual_seed(0))
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        runs.append(decode(model, ids, 20, multinomial(1.0, suppress=[7, 7])))
    assert torch.equal(runs[0], runs[1])
    assert not (runs[0][:, 3:] == 7).any()
    torch.manual_seed(3)
    free = decode(model, ids, 20, multinomial(1.0))
    assert (free[:, 3:] == 7).float().mean() > 0.5  # unsuppressed, the favourite dominates
    # through sample_sequences: the tokenizer's EOS (pad_id) and the model's generation EOS are suppressed
    model.generation_config.eos_token_id = [7]
    torch.manual_seed(3)
    seqs = sample_sequences(model, ids, 20, 1.0, 9, kv_cache="packed")
    assert not torch.isin(seqs[:, 3:], torch.tensor([7, 9])).any()
    from sfcompile.train.data import DataError

    with pytest.raises(DataError, match="kv_cache='packed-graph' replays a CUDA graph.*'packed'"):
        sample_sequences(model, ids, 4, 1.0, 9, kv_cache="packed-graph")
    with pytest.raises(DataError, match="attention='triton' is a choice of kv_cache='packed-graph', not 'packed'"):
        sample_sequences(model, ids, 4, 1.0, 9, kv_cache="packed", attention="triton")


def test_models_the_sampler_cannot_serve_are_refused_by_name():
    mistral = _model("mistral", num_key_value_heads=2, sliding_window=6)
    ids = torch.randint(1, V, (2, 4))
    with pytest.raises(SamplerError, match="sliding window of 6 tokens.*teacher_data_kv_cache='dynamic'"):
        decode(mistral, ids, 8, lambda z: z.argmax(-1))
    assert mistral.config._attn_implementation == "sdpa"
    assert decode(mistral, ids, 2, lambda z: z.argmax(-1)).shape == (2, 6)  # within the window it runs

    class NoInterface(torch.nn.Module):  # a causal LM whose attention never calls AttentionInterface
        def __init__(self):
            super().__init__()
            self.inner = _model("llama", num_key_value_heads=2)
            self.config = self.inner.config

        def set_attn_implementation(self, name):
            pass

        def forward(self, input_ids, position_ids=None, use_cache=False, **kwargs):
            self.inner.set_attn_implementation("sdpa")
            return self.inner(input_ids=input_ids, use_cache=False)

    with pytest.raises(SamplerError, match="0 of its 3 layers ran sfcompile.s attention with its buffers"):
        decode(NoInterface(), ids, 2, lambda z: z.argmax(-1))
    with pytest.raises(SamplerError, match="sliding window of 6 tokens"):
        decode(mistral, ids, 8, lambda z: z.argmax(-1), mode="masked")  # reads the whole buffer: capacity counts
    with pytest.raises(SamplerError, match="mode='graph' captures a CUDA graph"):
        decode(_model("llama"), ids, 2, lambda z: z.argmax(-1), mode="graph")
    with pytest.raises(SamplerError, match="mode='paged'"):
        decode(_model("llama"), ids, 2, lambda z: z.argmax(-1), mode="paged")
    with pytest.raises(SamplerError, match="attention='flash': choose one of 'sdpa', 'triton'"):
        decode(_model("llama"), ids, 2, lambda z: z.argmax(-1), mode="masked", attention="flash")
    with pytest.raises(SamplerError, match="attention='triton' reads the fed position from a device tensor"):
        decode(_model("llama"), ids, 2, lambda z: z.argmax(-1), attention="triton")  # the sliced mode
    with pytest.raises(SamplerError, match="head dim 24; attention='triton' needs a power of 2 >= 16"):
        decode(_model("llama", head_dim=24), ids, 2, lambda z: z.argmax(-1), mode="masked", attention="triton")
    with pytest.raises(RuntimeError, match="runs only inside"):
        _attention(None, torch.zeros(1, 1, 1, 4), torch.zeros(1, 1, 1, 4), torch.zeros(1, 1, 1, 4), None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_decode_on_cuda_in_bf16_follows_the_full_forward():
    # the trainer's setting: a bf16 teacher sampled under bf16 autocast (flash / efficient SDPA kernels)
    model = _model("llama", num_key_value_heads=2).cuda().bfloat16()
    ids = torch.randint(1, V, (64, 5), device="cuda")
    seen = []

    def greedy(logits):
        seen.append(logits.float())
        return logits.argmax(-1)

    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = decode(model, ids, 16, greedy)
        with torch.no_grad():
            full = model(out).logits.float()
    for i, logits in enumerate(seen):
        assert ((logits - full[:, 4 + i]).norm() / full[:, 4 + i].norm()).item() < 2e-2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graph_mode_replays_the_masked_step():
    # fp32 on the GPU, greedy: the captured and replayed steps give the eager sliced decode's tokens
    model = _model("llama", num_key_value_heads=2).cuda()
    ids = torch.randint(1, V, (8, 5), device="cuda")
    argmax = lambda z: z.argmax(-1)  # noqa: E731
    assert torch.equal(decode(model, ids, 20, argmax, mode="graph"), decode(model, ids, 20, argmax))
    assert torch.equal(decode(model, ids, 20, argmax, mode="graph", windows=1), decode(model, ids, 20, argmax))
    assert torch.equal(decode(model, ids, 20, argmax, mode="graph", attention="triton"),
                       decode(model, ids, 20, argmax))
    torch.manual_seed(0)
    a = decode(model, ids, 20, multinomial(1.0), mode="graph")
    torch.manual_seed(0)
    b = decode(model, ids, 20, multinomial(1.0), mode="graph")
    assert torch.equal(a, b)  # the graph's draws follow the seed too


def test_the_exponential_race_draws_from_the_tempered_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 3.0]]).expand(40_000, 5)
    torch.manual_seed(0)
    for temperature in (1.0, 2.0):
        draws = multinomial(temperature, suppress=[4])(logits)
        freq = torch.bincount(draws, minlength=5).double() / len(draws)
        want = torch.softmax(logits[0, :4].double() / temperature, -1)
        assert freq[4] == 0
        assert (freq[:4] - want).abs().max() < 0.01, (freq, want)


@pytest.mark.parametrize("mode", ["sliced", "masked"])
def test_under_autocast_the_buffers_hold_the_compute_dtype_and_follow_the_full_forward(mode, monkeypatch):
    # the trainer's default on CUDA: fp32 weights sampled under bf16 autocast. The rotary embedding hands the
    # keys over in fp32; the buffers must hold bf16 (what the attention computes in), not a copy twice the size
    # that is cast again at every step
    from sfcompile.train import sampler

    model = _model("llama", num_key_value_heads=2)
    ids = torch.randint(1, V, (4, 5), generator=torch.Generator().manual_seed(2))
    stored = []
    write = sampler._Buffers.write

    def spy(self, layer, key, value):
        out = write(self, layer, key, value)
        stored.append((key.dtype, self.keys[layer].dtype, self.values[layer].dtype))
        return out

    seen = []

    def greedy(logits):
        seen.append(logits.float())
        return logits.argmax(-1)

    monkeypatch.setattr(sampler._Buffers, "write", spy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = decode(model, ids, 6, greedy, mode=mode)
        with torch.no_grad():
            full = model(out).logits.float()
    assert {k for k, _, _ in stored} == {torch.float32}  # the case this is about: fp32 keys come in
    assert {(kb, vb) for _, kb, vb in stored} == {(torch.bfloat16, torch.bfloat16)}
    for i, logits in enumerate(seen):
        assert ((logits - full[:, 4 + i]).norm() / full[:, 4 + i].norm()).item() < 2e-2
    stored.clear()
    decode(model, ids, 3, greedy, mode=mode)  # no autocast: the keys' own dtype
    assert {(kb, vb) for _, kb, vb in stored} == {(torch.float32, torch.float32)}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("attention", ["sdpa", "triton"])
def test_graph_mode_under_autocast_over_fp32_weights_follows_the_full_forward(attention):
    # the trainer's exact setting on CUDA: fp32 teacher, bf16 autocast, the captured masked step (bf16 buffers),
    # with either decoding attention ("auto" takes the Triton kernel)
    model = _model("llama", num_key_value_heads=2).cuda()
    ids = torch.randint(1, V, (64, 5), device="cuda")
    seen = []

    def greedy(logits):
        seen.append(logits.float().clone())
        return logits.argmax(-1)

    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = decode(model, ids, 16, greedy, mode="graph", attention=attention)
        with torch.no_grad():
            full = model(out).logits.float()
    # the graph's replays overwrite the logits the capture saw: compare the eager first steps, then the tokens
    for i, logits in enumerate(seen[:2]):
        assert ((logits - full[:, 4 + i]).norm() / full[:, 4 + i].norm()).item() < 2e-2
    agree = (full[:, 4:-1].argmax(-1) == out[:, 5:]).float().mean().item()
    assert agree > 0.95, agree
