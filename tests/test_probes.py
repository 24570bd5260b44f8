"""Probe scoring against a hand computation on a tiny model."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import transformers as tf
from transformers import LlamaConfig, LlamaForCausalLM

from helpers import FAMILIES, SMALL, make_model
from helpers import sentencepiece_tokenizer as make_sentencepiece_tokenizer
from ke_utils.probes import (encode_pairs, head_on_hidden, probe_table, score_pairs, score_probes, shuffled_targets,
                             summarize)

PAIRS = (["The quick brown fox jumps over the", "Paris is the capital of", "Memory vectors store", "Knowledge entropy",
          "The lazy", "Memory vectors in feed-forward layers"],
         ["lazy dog", "France", "facts", "falls as training goes on", "dog", "store facts"])
CAUSAL = [f for f in FAMILIES if f not in ("bert", "roberta")] + ["gemma2"]


@pytest.fixture(scope="module")
def model(tiny_tokenizer):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4,
                                        pad_token_id=tiny_tokenizer.pad_token_id)).eval()


@pytest.fixture(scope="module")
def small_vocab():
    """A SentencePiece-shaped tokenizer (BOS first) whose ids fit the 128-token tiny models."""
    tok = make_sentencepiece_tokenizer(["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France.",
                                        "Knowledge entropy falls as training goes on.",
                                        "Memory vectors in feed-forward layers store facts."] * 20, 120)
    assert len(tok) <= SMALL["vocab_size"]
    return tok


def _tiny(family: str):
    """helpers.make_model's model, or a tiny Gemma-2 whose logits are soft-capped at 2 (so that
    leaving the cap out changes every score)."""
    if family != "gemma2":
        return make_model(family)
    torch.manual_seed(0)
    config = tf.Gemma2Config(**SMALL, num_key_value_heads=2, head_dim=8, max_position_embeddings=64, pad_token_id=0,
                             final_logit_softcapping=2.0)
    return tf.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()


@pytest.mark.parametrize("family", FAMILIES + ["gemma2"])
def test_scores_equal_full_logits_reference(family, small_vocab):
    """Batched and padded, every family scores what the full logits of each pair alone give:
    log-softmax over the vocabulary, gathered at the target tokens (masked LMs: their full logits,
    as before; they are not causal scorers)."""
    model = _tiny(family)
    scored = score_pairs(model, small_vocab, *PAIRS, batch_size=4)
    for i, (ids, n_input) in enumerate(encode_pairs(small_vocab, *PAIRS)):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].double()
        target = torch.tensor(ids[n_input:])
        logp = logits.log_softmax(-1)[n_input - 1 :].gather(-1, target[:, None])
        assert scored.loc[i, "n_target"] == len(target)
        assert scored.loc[i, "logprob_sum"] == pytest.approx(float(logp.sum()), rel=1e-5, abs=1e-5)
        assert scored.loc[i, "exact"] == bool((logits[n_input - 1 :].argmax(-1) == target).all())


@pytest.mark.parametrize("family", CAUSAL)
def test_output_layer_sees_only_the_scored_positions(family, small_vocab):
    """The memory claim: the output layer gets the hidden states of the target tokens only
    (``[n_scored, d]``), never ``[batch, length, d]``."""
    model = _tiny(family)
    assert head_on_hidden(model)
    seen = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, args, out: seen.append(tuple(out.shape)))
    try:
        scored = score_pairs(model, small_vocab, *PAIRS, batch_size=len(PAIRS[0]))
    finally:
        handle.remove()
    assert seen == [(int(scored["n_target"].sum()), model.config.vocab_size)]


def test_target_tokens_are_those_of_the_whole_sentence(tiny_tokenizer, sentencepiece_tokenizer):
    """Both tokenizer kinds score exactly the tokens the whole sentence has after the input; the
    SentencePiece kind gets its BOS, and no stray word-boundary token (what encoding " " + target
    on its own gives it)."""
    inputs, targets = ["The quick brown fox jumps over the", "Paris is the capital of"], ["lazy dog", "France"]
    for tok, bos in ((tiny_tokenizer, []), (sentencepiece_tokenizer, [sentencepiece_tokenizer.bos_token_id])):
        for (ids, n_input), inp, tgt in zip(encode_pairs(tok, inputs, targets), inputs, targets):
            assert ids == bos + tok(f"{inp} {tgt}", add_special_tokens=False)["input_ids"]
            assert ids == tok(f"{inp} {tgt}")["input_ids"]  # what the tokenizer itself makes of the sentence
            assert tok.decode(ids[n_input:]).strip() == tgt and tok.decode(ids[len(bos):n_input]) == inp
    stray = sentencepiece_tokenizer(" lazy dog", add_special_tokens=False)["input_ids"]
    assert sentencepiece_tokenizer.convert_ids_to_tokens(stray)[0] == "\u2581"  # why the target is not encoded alone
    ids, n_input = encode_pairs(sentencepiece_tokenizer, inputs[:1], targets[:1])[0]
    assert "\u2581" not in sentencepiece_tokenizer.convert_ids_to_tokens(ids[n_input:])


def test_sentencepiece_scores_match_hand_computation(sentencepiece_tokenizer):
    """The score is the log-probability of the target's tokens in the sequence BOS + input + target."""
    torch.manual_seed(0)
    sp = sentencepiece_tokenizer
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(sp), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, pad_token_id=sp.eos_token_id)).eval()
    scored = score_pairs(model, sp, ["Paris is the capital of", "Memory vectors store"], ["France", "facts"], batch_size=2)
    for i, text in enumerate(["Paris is the capital of France", "Memory vectors store facts"]):
        ids = sp(text)["input_ids"]
        n_target = len(ids) - len(sp(text.rsplit(" ", 1)[0])["input_ids"])
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        by_hand = sum(logp[k - 1, ids[k]].item() for k in range(len(ids) - n_target, len(ids)))
        assert scored.loc[i, "n_target"] == n_target
        assert scored.loc[i, "logprob_sum"] == pytest.approx(by_hand, rel=1e-4)


def test_scores_match_hand_computation(model, tiny_tokenizer):
    inputs = ["The quick brown fox jumps over the", "Memory vectors store"]
    targets = ["lazy dog", "facts"]
    scored = score_pairs(model, tiny_tokenizer, inputs, targets, batch_size=1)
    batched = score_pairs(model, tiny_tokenizer, inputs, targets, batch_size=2)  # padding must not matter
    pd.testing.assert_frame_equal(scored, batched, rtol=1e-5)
    for i, (inp, tgt) in enumerate(zip(inputs, targets)):
        ctx = tiny_tokenizer(inp, add_special_tokens=False)["input_ids"]
        cont = tiny_tokenizer(" " + tgt, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ctx + cont])).logits[0]
        logp = torch.log_softmax(logits.double(), -1)
        by_hand = [logp[len(ctx) - 1 + k, tok].item() for k, tok in enumerate(cont)]
        assert scored.loc[i, "logprob_sum"] == pytest.approx(sum(by_hand), rel=1e-4)
        assert scored.loc[i, "logprob"] == pytest.approx(sum(by_hand) / len(cont), rel=1e-4)
        greedy = all(logits[len(ctx) - 1 + k].argmax().item() == tok for k, tok in enumerate(cont))
        assert scored.loc[i, "exact"] == greedy
        assert scored.loc[i, "n_target"] == len(cont)


def test_exact_match_on_a_model_that_knows_the_answer(tiny_tokenizer):
    """A model trained to repeat one sentence predicts its target greedily."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4))
    ids = tiny_tokenizer("The quick brown fox jumps over the lazy dog", return_tensors="pt")["input_ids"]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward(), opt.step(), opt.zero_grad()
    scored = score_pairs(model.eval(), tiny_tokenizer, ["The quick brown fox jumps over the"], ["lazy dog"])
    assert bool(scored.loc[0, "exact"]) and scored.loc[0, "logprob"] > -0.5


def test_probe_table_and_summary(model, tiny_tokenizer):
    """Items with different numbers of probes: K is the mean over items of each item's mean, not
    the mean over probes."""
    first = {"mem_input": ["The quick brown fox"], "mem_target": ["jumps"],
             "gen_input": ["The lazy dog", "Memory vectors"], "gen_target": ["sleeps", "store"],
             "hard_gen_input": [], "hard_gen_target": []}
    second = {"mem_input": ["Facts live", "Entropy falls", "The fox"], "mem_target": ["in memory", "as", "jumps"],
              "gen_input": ["Knowledge entropy"], "gen_target": ["falls"], "hard_gen_input": ["The dog"],
              "hard_gen_target": ["sleeps"]}
    table = probe_table([first, second])
    assert list(zip(table["item"], table["kind"], table["probe"])) == [
        (0, "mem", 0), (0, "gen", 0), (0, "gen", 1), (1, "mem", 0), (1, "mem", 1), (1, "mem", 2), (1, "gen", 0),
        (1, "hard_gen", 0)]
    assert list(table["target"]) == ["jumps", "sleeps", "store", "in memory", "as", "jumps", "falls", "sleeps"]
    scored = score_probes(model, tiny_tokenizer, table)
    pd.testing.assert_frame_equal(scored[table.columns], table)
    assert list(scored.columns[len(table.columns):]) == ["logprob", "logprob_sum", "n_target", "exact"]

    hand = table.assign(logprob=[-1.0, -2.0, -4.0, -3.0, -6.0, -9.0, -5.0, -7.0],
                        exact=[True, True, False, False, False, True, True, False])
    summary = summarize(hand)
    assert list(summary.index) == ["gen", "hard_gen", "mem"]
    # mem: item 0 has -1, item 1 has mean(-3, -6, -9) = -6: K = -3.5 (the mean over probes is -4.75);
    # exact: 1 and 1/3 -> 2/3 (over probes 1/2).
    # gen: -3 and -5 -> -4 (over probes -11/3); exact: 1/2 and 1 -> 3/4 (over probes 2/3).
    assert summary.loc["mem", "logprob"] == pytest.approx(-3.5)
    assert summary.loc["mem", "exact"] == pytest.approx(2 / 3)
    assert summary.loc["gen", "logprob"] == pytest.approx(-4.0)
    assert summary.loc["gen", "exact"] == pytest.approx(0.75)
    assert (summary.loc["hard_gen", "logprob"], summary.loc["hard_gen", "exact"]) == (-7.0, 0.0)


def test_bad_pairs():
    class Tok:
        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [[1] if t.strip() else [] for t in texts]}

    with pytest.raises(ValueError, match="2 inputs but 1 targets"):
        encode_pairs(Tok(), ["a", "b"], ["c"])
    with pytest.raises(ValueError, match="probe 0: empty"):
        encode_pairs(Tok(), [""], ["c"])
    with pytest.raises(ValueError, match="probe 0: empty"):
        encode_pairs(Tok(), ["a"], [" "])

    class Merging(Tok):
        """A slow tokenizer whose input tokens change when the target follows."""
        bos_token_id = None

        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [[len(t)] for t in texts]}

    with pytest.raises(ValueError, match="input's tokens change"):
        encode_pairs(Merging(), ["ab"], ["c"])


def test_shuffled_targets_give_every_probe_another_value_of_its_attribute():
    """The floor of exact match: each target replaced by a different value of the same attribute
    (none where the attribute has one value only), drawn the same way every time."""
    probes = pd.DataFrame({"input": [f"p{i}" for i in range(7)], "attribute": list("aaaabbc"),
                           "target": ["x", "y", "z", "x", "u", "u", "w"]})
    out = shuffled_targets(probes)
    assert list(out["input"]) == list(probes["input"]) and list(out["attribute"]) == list(probes["attribute"])
    a = out[out["attribute"] == "a"]
    assert (a["target"] != probes.loc[a.index, "target"]).all() and set(a["target"]) <= {"x", "y", "z"}
    assert list(out.loc[4:6, "target"]) == ["u", "u", "w"]  # b: one value; c: one probe
    assert out.equals(shuffled_targets(probes)) and probes["target"].tolist()[0] == "x"  # deterministic, input kept
