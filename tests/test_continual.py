"""Continual learning: the injection schedule, the stream, and deterministic continued training."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from ke_utils.continual import TrainConfig, continue_training
from ke_utils.outcomes import acquisition, forgetting, retention
from ke_utils.pretrain import EOS, FamilyConfig, make_model, train_tokenizer
from ke_utils.stream import StreamConfig, build_stream, injection_schedule, wording

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


def test_acquisition_and_forgetting_formulas():
    assert acquisition(-4.0, -3.0) == pytest.approx(0.25)
    assert forgetting(0.8, 0.6) == pytest.approx(0.25)
    assert retention(0.8, 0.6) == pytest.approx(0.75)
    assert math.isnan(retention(0.0, 0.3)) and math.isnan(forgetting(0.0, 0.3))
