"""Shared tiny random Hugging Face causal LMs, one per family (no downloads).

Use the ``tiny_model`` fixture (a factory): ``model = tiny_model("llama")`` or
``tiny_model("qwen3_moe", num_hidden_layers=1)``. Every model has 2 layers, hidden size 64, 4 heads
(2 KV heads where the family has GQA), vocabulary 256, and is built with ``torch.manual_seed(seed)``.
"""

from __future__ import annotations

import pytest
import torch

# Common to every family (names each config class maps to its own attributes, e.g. gpt2's n_embd).
_BASE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=256, max_position_embeddings=64,
             bos_token_id=0, eos_token_id=0, pad_token_id=0)

# Per-family config overrides: data, keyed by the HF model_type.
TINY_FAMILIES: dict[str, dict] = {
    "llama": {},
    "qwen2": {},
    "qwen3": dict(head_dim=16),
    "mistral": {},
    "gemma3_text": dict(head_dim=16),
    "gpt2": dict(n_embd=64, n_layer=2, n_head=4, n_positions=64),
    "opt": dict(ffn_dim=128, word_embed_proj_dim=64),
    "gpt_neox": {},
    "phi3": {},
    "qwen3_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1,
                      head_dim=16),
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    "gpt_oss": dict(num_local_experts=4, num_experts_per_tok=2, head_dim=16),
}


def make_tiny_model(family: str, seed: int = 0, **overrides):
    """A tiny random ``AutoModelForCausalLM`` of ``family`` (an HF model_type listed in TINY_FAMILIES)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if family not in TINY_FAMILIES:
        raise KeyError(f"no tiny config for {family!r}; known: {sorted(TINY_FAMILIES)}")
    kwargs = {**_BASE, **TINY_FAMILIES[family], **overrides}
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(family, **kwargs)).eval()


@pytest.fixture(scope="session")
def tiny_model():
    """Factory fixture: ``tiny_model(family, seed=0, **config_overrides)`` -> a fresh tiny causal LM."""
    return make_tiny_model


# A byte-level tokenizer whose 256 ids match the tiny models above (vocab_size=256).


def make_byte_tokenizer():
    """Every UTF-8 byte is one token (ids 0..255), no merges, no special tokens added to the text."""
    from tokenizers import Tokenizer, decoders, models
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(ByteLevel.alphabet())
    core = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    core.pre_tokenizer = ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    # id 0 ("!") doubles as eos/pad: lm-eval needs both; it never enters our scores.
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token=alphabet[0], pad_token=alphabet[0])


@pytest.fixture(scope="session")
def byte_tokenizer():
    return make_byte_tokenizer()
