"""Shared fixtures: tiny random models of every registered family and a tiny tokenizer (no network)."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from helpers import FAMILIES, make_model
from helpers import sentencepiece_tokenizer as make_sentencepiece_tokenizer


@pytest.fixture(params=FAMILIES)
def family_model(request):
    return request.param, make_model(request.param)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE tokenizer trained in memory on a few sentences, with pad and eos."""
    text = ["The quick brown fox jumps over the lazy dog.", "Knowledge entropy falls as training goes on.",
            "Memory vectors in feed-forward layers store facts."] * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<eos>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


@pytest.fixture(scope="session")
def sentencepiece_tokenizer():
    """A tokenizer in the shape of Llama-2's tokenizer.json (see helpers.sentencepiece_tokenizer)."""
    return make_sentencepiece_tokenizer(["The quick brown fox jumps over the lazy dog.",
                                         "Knowledge entropy falls as training goes on.",
                                         "Memory vectors in feed-forward layers store facts.",
                                         "Paris is the capital of France."] * 20, 300)
