"""A byte-level tokenizer whose 256 ids match the tiny models of tests/conftest.py (vocab_size=256)."""

from __future__ import annotations

import pytest


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
