"""What several test modules share: tiny random models of every registered family and a miniature
built-in family. Import it as ``from helpers import ...`` (pytest puts ``tests/`` on the path)."""

from __future__ import annotations

import copy

import torch
import transformers as tf
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from ke_utils.pretrain import FamilyConfig
from ke_utils.world import WorldConfig

SMALL = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


def _config(family: str):
    """A 2-layer config of ``family`` (a ``model_type``) with d_ff = 64."""
    if family in ("llama", "mistral", "qwen2", "olmo", "olmo2"):
        cls = {"llama": tf.LlamaConfig, "mistral": tf.MistralConfig, "qwen2": tf.Qwen2Config,
               "olmo": tf.OlmoConfig, "olmo2": tf.Olmo2Config}[family]
        return cls(**SMALL, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)
    if family == "smollm3":  # no_rope_layer_interval 2: layer 1 has no rotary embedding (transformers' default: every 4th)
        return tf.SmolLM3Config(**SMALL, num_key_value_heads=2, max_position_embeddings=64, no_rope_layer_interval=2,
                                pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if family == "qwen3":
        return tf.Qwen3Config(**SMALL, num_key_value_heads=2, head_dim=8, max_position_embeddings=64, pad_token_id=0)
    if family in ("gemma", "gemma2", "gemma3_text"):
        cls = {"gemma": tf.GemmaConfig, "gemma2": tf.Gemma2Config, "gemma3_text": tf.Gemma3TextConfig}[family]
        return cls(**SMALL, num_key_value_heads=2, head_dim=8, max_position_embeddings=64, pad_token_id=0)
    if family == "phi3":  # one fused gate_up_proj Linear per layer
        return tf.Phi3Config(**SMALL, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0,
                             bos_token_id=2, eos_token_id=2)
    if family == "gpt_neox":
        return tf.GPTNeoXConfig(**SMALL, max_position_embeddings=64, pad_token_id=0, bos_token_id=2, eos_token_id=2)
    if family == "phi":
        return tf.PhiConfig(**SMALL, max_position_embeddings=64, pad_token_id=0)
    if family == "gpt2":
        return tf.GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_inner=64, n_positions=64, pad_token_id=0,
                             bos_token_id=2, eos_token_id=2)
    if family == "opt":
        return tf.OPTConfig(vocab_size=128, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                            word_embed_proj_dim=32, max_position_embeddings=64, pad_token_id=1, bos_token_id=2,
                            eos_token_id=2)
    if family == "bert":
        return tf.BertConfig(**SMALL, max_position_embeddings=64, pad_token_id=0)
    if family == "roberta":
        return tf.RobertaConfig(**SMALL, max_position_embeddings=80, pad_token_id=1)
    raise KeyError(family)


FAMILIES = ["llama", "olmo", "olmo2", "mistral", "qwen2", "gemma", "gpt_neox", "gpt2", "opt", "phi", "bert", "roberta"]


def make_model(family: str, seed: int = 0, **overrides):
    """A random-initialised tiny model of ``family`` in eval mode (fp32, eager attention);
    ``overrides`` set config attributes (e.g. ``activation_function="relu"``)."""
    torch.manual_seed(seed)
    config = _config(family)
    for key, value in overrides.items():
        setattr(config, key, value)
    cls = tf.AutoModelForMaskedLM if family in ("bert", "roberta") else tf.AutoModelForCausalLM
    model = cls.from_config(config, attn_implementation="eager").eval()
    # Random init leaves some norms at exactly 1 and biases at 0; perturb everything so that a
    # wrong coefficient (e.g. missing bias or gate) cannot pass the reference test by accident.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


# A built-in family small enough to pretrain in a few seconds: 3 checkpoints of a 2-layer model, whose
# context (256 tokens) holds its longest knowledge paragraph (about 200 tokens of its small vocabulary).
MINI = FamilyConfig(
    world=WorldConfig(seed=3, n_people=8, n_paraphrase_people=2, n_once_people=1),
    n_train_docs=150, n_heldout_docs=20, vocab_size=320, hidden_size=16, intermediate_size=32,
    n_layers=2, n_heads=2, seq_len=256, batch_size=4, steps=6, warmup=2, checkpoint_steps=(0, 3, 6),
)


def sentencepiece_tokenizer(texts: list[str], vocab_size: int) -> tf.PreTrainedTokenizerFast:
    """A tokenizer in the shape of Llama-2's tokenizer.json, trained on ``texts``: no
    pre-tokenizer, a normalizer that prepends the word-boundary mark and turns spaces into it,
    byte fallback, BOS added first. (Trained with the mark as a split point, so that pieces start
    at word boundaries as SentencePiece's do.)"""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.pre_tokenizer = pre_tokenizers.Split("\u2581", behavior="merged_with_next")
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                                       show_progress=False))
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def no_module_copies(monkeypatch) -> None:
    """Make ``copy.deepcopy`` of a model (any ``nn.Module``) an error: code that keeps one model
    in memory must never copy it."""
    deepcopy = copy.deepcopy

    def guarded(x, memo=None, _nil=[]):
        if isinstance(x, torch.nn.Module):
            raise AssertionError(f"deepcopy of a {type(x).__name__}")
        return deepcopy(x, memo, _nil)

    monkeypatch.setattr(copy, "deepcopy", guarded)
