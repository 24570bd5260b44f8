"""Shared fixtures: tiny random models of every registered family and a tiny tokenizer (no network)."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from helpers import FAMILIES, make_model


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
    """A tokenizer in the shape of Llama-2's tokenizer.json: no pre-tokenizer, a normalizer that
    prepends the word-boundary mark and turns spaces into it, byte fallback, BOS added first.
    (Trained with the mark as a split point, so that pieces start at word boundaries as
    SentencePiece's do.)"""
    text = ["The quick brown fox jumps over the lazy dog.", "Knowledge entropy falls as training goes on.",
            "Memory vectors in feed-forward layers store facts.", "Paris is the capital of France."] * 20
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.pre_tokenizer = pre_tokenizers.Split("\u2581", behavior="merged_with_next")
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"]))
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
