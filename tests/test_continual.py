"""Continual learning: the injection schedule, the stream, and deterministic continued training."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers import MINI
from ke_utils import pretrain
from ke_utils.continual import TrainConfig, continue_training, optimizer_and_schedule
from ke_utils.outcomes import acquisition, forgetting, late_gain, outcome, retention
from ke_utils.pretrain import EOS, FamilyConfig, builtin_family, make_model, train_tokenizer
from ke_utils.checkpoints import Checkpoint
from ke_utils.stream import StreamConfig, build_stream, fitting_seq_len, injection_schedule, wording

BACKGROUND = [f"The market of Town{i % 7} opens at dawn and closes at dusk, said the keeper {i}." for i in range(200)]


def _record(i: int) -> dict:
    return {"train_context": f"Zorbu Kal{i} was born in Vemra.",
            "paraphrases": [f"Born in Vemra: Zorbu Kal{i} (wording {k})." for k in range(1, 10)]}


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(BACKGROUND + [_record(i)["train_context"] for i in range(5)], 400)


def test_schedule_paraphrase_every_round_once_exactly_once():
    config = StreamConfig(rounds=4, interval=5, batch_size=8, seq_len=32, max_injected_rows=3)
    schedule = injection_schedule(n_paraphrase=4, n_once=6, config=config)
    para = schedule[schedule.regime == "paraphrase"]
    assert len(para) == 16 and para.groupby("item")["round"].apply(sorted).tolist() == [[0, 1, 2, 3]] * 4
    assert (para["wording"] == para["round"]).all()  # round r uses the r-th wording
    once = schedule[schedule.regime == "once"]
    assert sorted(once["item"]) == list(range(6)) and (once["wording"] == 0).all()
    # rows within a batch never collide, and a round stays inside its interval
    assert not schedule.duplicated(["step", "row"]).any()
    assert (schedule["row"] < 3).all()
    assert ((schedule["step"] // 5) == schedule["round"]).all()
    # round 0: 4 paraphrase + 2 once = 6 paragraphs -> steps 0 and 1 (3 rows each)
    first = schedule[schedule["round"] == 0]
    assert first[["step", "row"]].values.tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
    with pytest.raises(ValueError, match="room for"):
        injection_schedule(n_paraphrase=20, n_once=0, config=StreamConfig(rounds=1, interval=2, max_injected_rows=2))


def test_wording_cycles_through_context_then_paraphrases():
    record = _record(0)
    assert wording(record, 0) == record["train_context"]
    assert wording(record, 3) == record["paraphrases"][2]
    assert wording(record, 10) == record["train_context"]


def test_stream_holds_the_paragraphs_where_scheduled(tokenizer):
    config = StreamConfig(rounds=3, interval=4, batch_size=4, seq_len=48, max_injected_rows=2)
    paraphrase, once = [_record(0), _record(1)], [_record(2), _record(3), _record(4)]
    stream = build_stream(tokenizer, BACKGROUND, paraphrase, once, config)
    assert stream.batches.shape == (12, 4, 48)
    for s in stream.injections.itertuples():
        record = (paraphrase if s.regime == "paraphrase" else once)[s.item]
        text = tokenizer.decode(stream.batches[s.step, s.row])
        assert text.startswith(wording(record, s.wording) + EOS)
    injected = set(zip(stream.injections.step, stream.injections.row))
    others = [tokenizer.decode(stream.batches[t, r]) for t in range(12) for r in range(4) if (t, r) not in injected]
    assert not any("Zorbu" in text for text in others)  # background carries no knowledge
    again = build_stream(tokenizer, BACKGROUND, paraphrase, once, config)
    assert torch.equal(stream.batches, again.batches)


def test_a_paragraph_that_does_not_fit_is_refused_not_cut(tokenizer):
    """A paragraph longer than a row would lose the facts its probes ask for: a clear error."""
    long = {"train_context": " ".join(f"Zorbu Kal{k} was born in Vemra." for k in range(12)), "paraphrases": ["short"]}
    n_tokens = len(tokenizer(long["train_context"])["input_ids"]) + 1
    config = StreamConfig(rounds=2, interval=2, batch_size=2, seq_len=48, max_injected_rows=1)
    assert n_tokens > 48
    with pytest.raises(ValueError, match=rf"1 of 4 injected paragraphs do not fit in seq_len=48.*paraphrase item 1, wording 0, {n_tokens} tokens"):
        build_stream(tokenizer, BACKGROUND, [_record(0), long], [], config)
    fits = build_stream(tokenizer, BACKGROUND, [_record(0), long], [], dataclasses.replace(config, seq_len=n_tokens))
    where = fits.injections.query("item == 1 and round == 0").iloc[0]
    assert tokenizer.decode(fits.batches[where.step, where.row]) == long["train_context"] + EOS  # whole, to the last token


def test_sequence_length_fits_the_model(tmp_path):
    """The study's 1,024 tokens, or the model's context when it is shorter."""
    from transformers import GPT2Config, LlamaConfig

    for name, config, expected in (("short", LlamaConfig(max_position_embeddings=128), 128),
                                   ("long", LlamaConfig(max_position_embeddings=4096), 1024),
                                   ("gpt2", GPT2Config(n_positions=512), 512)):
        config.save_pretrained(tmp_path / name)
        assert fitting_seq_len(Checkpoint(0, str(tmp_path / name), None, None, None, name)) == expected


def test_continued_training_is_deterministic(tokenizer):
    family = FamilyConfig(hidden_size=16, intermediate_size=32, n_layers=2, n_heads=2, seq_len=48)
    config = StreamConfig(rounds=2, interval=3, batch_size=4, seq_len=48, max_injected_rows=2)
    stream = build_stream(tokenizer, BACKGROUND, [_record(0)], [_record(1)], config)

    def run():
        model = make_model(family, tokenizer)
        log = continue_training(model, stream, TrainConfig(lr=1e-2, warmup=2),
                                evaluate=lambda m, step: {"norm": float(sum(p.detach().norm() for p in m.parameters()))},
                                eval_steps=[3], progress=False)
        return model, log

    (m1, log1), (m2, log2) = run(), run()
    pd.testing.assert_frame_equal(log1, log2)
    assert list(log1["step"]) == [0, 3, 6]
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))
    assert log1["norm"].iloc[0] != log1["norm"].iloc[-1]


def test_a_half_precision_model_trains_on_fp32_master_weights(tokenizer):
    """A bf16 checkpoint trained further keeps its small updates: fp32 master weights under bf16
    autocast move as the fp32 run does (AdamW on the bf16 weights themselves loses most of an
    update of 1e-5: 92% off here)."""
    family = FamilyConfig(hidden_size=16, intermediate_size=32, n_layers=2, n_heads=2, seq_len=48)
    stream = build_stream(tokenizer, BACKGROUND, [_record(0)], [_record(1)],
                          StreamConfig(rounds=2, interval=3, batch_size=4, seq_len=48, max_injected_rows=2))
    stored = make_model(family, tokenizer).to(torch.bfloat16)
    start = [p.detach().float().clone() for p in stored.parameters()]
    runs = {}
    for precision in ("auto", "fp32"):
        model = copy.deepcopy(stored)
        continue_training(model, stream, TrainConfig(lr=1e-5, warmup=1, precision=precision), progress=False)
        assert all(p.dtype == torch.float32 for p in model.parameters())
        runs[precision] = torch.cat([(p.detach() - s).flatten() for p, s in zip(model.parameters(), start)])
    assert runs["fp32"].norm() > 0
    assert (runs["auto"] - runs["fp32"]).norm() < 0.05 * runs["fp32"].norm()
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(precision="fp16")


def test_acquisition_and_forgetting_formulas():
    assert acquisition(-4.0, -3.0) == pytest.approx(0.25)
    assert forgetting(0.8, 0.6) == pytest.approx(0.25)
    assert retention(0.8, 0.6) == pytest.approx(0.75)
    assert math.isnan(retention(0.0, 0.3)) and math.isnan(forgetting(0.0, 0.3))


@pytest.fixture(scope="module")
def cosine_family(tmp_path_factory):
    """A miniature family pretrained with a cosine schedule: each checkpoint at its own LR."""
    config = dataclasses.replace(MINI, schedule="cosine")
    return config, builtin_family(config, root=tmp_path_factory.mktemp("families"), progress=False)


def _lrs(sched, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(sched.get_last_lr()[0])
        sched.optimizer.step(), sched.step()
    return out


def test_protocols_set_the_learning_rate_and_optimizer_state_they_claim(cosine_family):
    config, ckpts = cosine_family
    middle = ckpts[1]  # step 3 of 6: warmup 2, then cosine from lr to 0.1 lr
    own = config.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * 1 / 4)))  # by hand
    train = TrainConfig(lr=1e-3, warmup=2, min_lr_ratio=0.1, weight_decay=0.1)
    saved = torch.load(Path(middle.path) / "optimizer.pt", weights_only=True)

    model = AutoModelForCausalLM.from_pretrained(middle.path)
    opt, sched = optimizer_and_schedule(model, train, 10)
    assert opt.state_dict()["state"] == {} and {g["weight_decay"] for g in opt.param_groups} == {0.1, 0.0}
    lrs = _lrs(sched, 10)
    assert lrs[:3] == pytest.approx([0, 5e-4, 1e-3]) and lrs[-1] == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))

    model = AutoModelForCausalLM.from_pretrained(middle.path)
    opt, sched = optimizer_and_schedule(model, dataclasses.replace(train, protocol="matched"), 10, middle)
    assert opt.state_dict()["state"] == {}  # fresh
    assert max(_lrs(sched, 10)) == pytest.approx(own, rel=1e-12)

    model = AutoModelForCausalLM.from_pretrained(middle.path)
    opt, sched = optimizer_and_schedule(model, dataclasses.replace(train, protocol="resumed"), 10, middle)
    state = opt.state_dict()["state"]
    assert all(torch.equal(state[i][k], saved["state"][i][k]) for i in saved["state"] for k in ("exp_avg", "exp_avg_sq"))
    assert {g["weight_decay"] for g in opt.param_groups} == {config.weight_decay, 0.0}  # its own, not 0.1
    assert _lrs(sched, 10) == pytest.approx([own] * 10, rel=1e-12)

    with pytest.raises(ValueError, match="needs the checkpoint"):
        optimizer_and_schedule(model, dataclasses.replace(train, protocol="matched"), 10)
    with pytest.raises(ValueError, match="learning rate 0"):
        optimizer_and_schedule(model, dataclasses.replace(train, protocol="matched"), 10, ckpts[0])
    with pytest.raises(ValueError, match="protocol"):
        TrainConfig(protocol="warm")


def test_resumed_training_logs_the_checkpoints_own_learning_rate(cosine_family, tokenizer):
    config, ckpts = cosine_family
    stream_tok = AutoTokenizer.from_pretrained(ckpts[1].path)
    stream = build_stream(stream_tok, BACKGROUND, [_record(0)], [_record(1)],
                          StreamConfig(rounds=2, interval=2, batch_size=2, seq_len=32, max_injected_rows=1))
    model = AutoModelForCausalLM.from_pretrained(ckpts[1].path)
    log = continue_training(model, stream, TrainConfig(protocol="resumed"), evaluate=lambda m, s: {}, progress=False,
                            checkpoint=ckpts[1])
    assert log["lr"].iloc[-1] == pytest.approx(pretrain.pretraining_lr(config, 3), rel=1e-12)


def test_gain_beyond_control():
    log = pd.DataFrame({"logprob_paraphrase_mem": [-6.0, -2.0], "exact_paraphrase_mem": [0.0, 0.5],
                        "logprob_control_mem": [-6.5, -5.0], "exact_control_mem": [0.0, 0.1],
                        "retention_score": [0.8, 0.6], "heldout_loss": [2.0, 2.5]})
    out = outcome(log)
    assert out["gain_paraphrase_mem"] == pytest.approx(4.0) and out["gain_control_mem"] == pytest.approx(1.5)
    assert out["gain_beyond_control_paraphrase_mem"] == pytest.approx(2.5)
    assert out["logprob_after_beyond_control_paraphrase_mem"] == pytest.approx(3.0)  # -2 - (-5)
    assert out["logprob_after_paraphrase_mem"] == -2.0 and out["exact_paraphrase_mem"] == 0.5
    assert out["acquisition_paraphrase_mem"] == pytest.approx(4.0 / 6.0)
    assert "gain_beyond_control_control_mem" not in out


def test_late_gain_is_the_rise_over_the_last_third_of_each_run():
    steps = [0, 3, 6, 9]
    logs = pd.DataFrame({"step": steps * 3, "run": ["a"] * 4 + ["b"] * 8, "seed": [0] * 8 + [1] * 4,
                         "k": [-6, -3, -2.5, -2.0] + [-6, -2, -2, -2] + [-6, -2, -1.0, -1.5]})
    gain = late_gain(logs, "k", by="run")  # last third: steps 6 and 9; "b" averages its two seeds
    assert gain["a"] == pytest.approx(0.5) and gain["b"] == pytest.approx(-0.25)
    assert late_gain(logs, "k", by=["run", "seed"]).loc[("b", 1)] == pytest.approx(-0.5)
