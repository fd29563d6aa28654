"""Tiny random models and a byte-level tokenizer for the trainer tests (no downloads)."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from sfcompile.train.data import byte_tokenizer  # noqa: F401  (the trainer tests import it from here)

TEXT = "\n\n".join(
    f"Paragraph {i}: the quick brown fox jumps over the lazy dog {i % 7} times, and the cat watches "
    f"from window number {i % 5} while it rains on day {i}."
    for i in range(300)
)


def tiny_llama(seed: int = 0, vocab: int = 257):
    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(
        "llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    return AutoModelForCausalLM.from_config(cfg)
