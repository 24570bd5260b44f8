"""Notebook 05's tools: learning-rate schedules by hand, variance explained on known data, KE
matched by reactivation, and the protocol experiment on a miniature family."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
from transformers import AutoTokenizer

from helpers import MINI
from ke_utils.batching import text_batches
from ke_utils.checkpoints import load_checkpoint
from ke_utils.confound import key_numbers as confound_key_numbers
from ke_utils.confound import verdicts as confound_verdicts
from ke_utils.confound import (causal_test, cosine_lr, match_knowledge_entropy, olmo_1b_lr, own_lr, protocol_experiment,
                               variance_explained)
from ke_utils.continual import TrainConfig
from ke_utils.entropy import coefficient_means, knowledge_entropy
from ke_utils.evaluation import evaluator
from ke_utils.pretrain import builtin_family, builtin_texts
from ke_utils.reactivation import reactivate
from ke_utils.setups import builtin_setup
from ke_utils.stream import StreamConfig

COSINE = dataclasses.replace(MINI, schedule="cosine")


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return builtin_family(COSINE, root=root, progress=False), root


def test_schedules_by_hand():
    assert cosine_lr(0, 1.0, 10, 110) == 0 and cosine_lr(5, 1.0, 10, 110) == 0.5
    assert cosine_lr(10, 1.0, 10, 110) == pytest.approx(1.0)
    assert cosine_lr(60, 1.0, 10, 110) == pytest.approx(0.55)  # half way: 0.1 + 0.9 / 2
    assert cosine_lr(110, 1.0, 10, 110) == pytest.approx(0.1) and cosine_lr(500, 1.0, 10, 110) == pytest.approx(0.1)
    # OLMo-1B at the study's checkpoints: about 3.8e-4 / 2.2e-4 / 9.3e-5 / 4.0e-5, so re-warming to
    # 4e-4 is a jump of about 1.1x / 1.8x / 4.3x / 10x
    lrs = [olmo_1b_lr(s) for s in (118_000, 369_000, 554_000, 738_000)]
    assert lrs == pytest.approx([3.78e-4, 2.24e-4, 9.3e-5, 4.0e-5], rel=0.02)
    assert [round(4e-4 / lr, 1) for lr in lrs] == [1.1, 1.8, 4.3, 10.0]


def test_own_lr_is_the_recorded_one(family):
    ckpts, _ = family
    assert [own_lr(c) for c in ckpts] == pytest.approx([cosine_lr(c.step, COSINE.lr, COSINE.warmup, COSINE.steps)
                                                        for c in ckpts], rel=1e-12, abs=1e-15)


def test_variance_explained_on_known_data():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=50), "b": rng.normal(size=50)})
    frame["y"] = 2 * frame["a"]  # explained by a alone, exactly
    table = variance_explained(frame, "y", {"a": ["a"], "b": ["b"], "both": ["a", "b"]}).set_index("predictors")
    assert table.loc["a", "r2"] == pytest.approx(1.0) and table.loc["both", "r2"] == pytest.approx(1.0)
    assert table.loc["b", "r2"] < 0.1
    # R^2 of one predictor is its squared Pearson correlation
    assert table.loc["b", "r2"] == pytest.approx(np.corrcoef(frame["b"], frame["y"])[0, 1] ** 2)
    assert table.loc["b", "adjusted_r2"] == pytest.approx(1 - (1 - table.loc["b", "r2"]) * 49 / 48)


def test_reactivation_reaches_a_target_knowledge_entropy(family):
    ckpts, root = family
    model = load_checkpoint(ckpts[-1])
    tokenizer = AutoTokenizer.from_pretrained(ckpts[-1].path)
    batches = list(text_batches(tokenizer, builtin_texts("heldout", 10, COSINE, root)))
    before = knowledge_entropy(coefficient_means(model, batches)).total
    means = coefficient_means(model, batches)
    ends = [knowledge_entropy(coefficient_means(reactivate(model, means, 0.5, q)[0], batches)).total for q in (0.05, 1.0)]
    target = sum(ends) / 2  # reachable between q = 0.05 and q = 1
    modified, report, ke = match_knowledge_entropy(model, batches, target, factors=(0.05, 1.0), tolerance=1e-4)
    assert abs(ke.total - target) <= 1e-4 and report.ratio == 0.5 and 0.05 < report.factor < 1.0
    assert knowledge_entropy(coefficient_means(modified, batches)).total == pytest.approx(ke.total, abs=1e-9)
    assert knowledge_entropy(coefficient_means(model, batches)).total == pytest.approx(before, abs=1e-9)  # a copy
    with pytest.raises(ValueError, match="outside"):
        match_knowledge_entropy(model, batches, before + 10)


def test_protocol_experiment_records_the_learning_rates(family, capsys):
    ckpts, root = family
    setup = builtin_setup(COSINE, n_background=60, n_heldout=10, root=root)
    stream = StreamConfig(rounds=2, interval=2, batch_size=4, seq_len=32, max_injected_rows=2)
    results, logs = protocol_experiment(ckpts[1:], setup, stream, TrainConfig(lr=3e-3, warmup=1), progress=False)
    assert list(zip(results.protocol, results.step)) == [(p, s) for p in ("study", "matched", "resumed") for s in (3, 6)]
    lrs = {c.step: own_lr(c) for c in ckpts}
    for row in results.itertuples():
        assert row.own_lr == lrs[row.step]
        assert row.peak_lr == (3e-3 if row.protocol == "study" else lrs[row.step])
        assert row.lr_jump == pytest.approx(row.peak_lr / row.own_lr)
    # the log records the LR of the last update: constant for resumed, decayed for the others
    last = logs.groupby(["protocol", "checkpoint"])["lr"].last()
    assert last[("resumed", 6)] == pytest.approx(lrs[6])
    assert last[("matched", 6)] < lrs[6] and last[("study", 3)] < 3e-3
    # hub-like checkpoints (no optimizer state) skip resumed with a message; lr_of gives their LR
    results, _ = protocol_experiment(ckpts[2:], setup, stream, TrainConfig(lr=3e-3, warmup=1), protocols=("matched",),
                                     lr_of=lambda c: 1e-3, progress=False)
    assert results["own_lr"].tolist() == [1e-3] and not math.isnan(results["acquisition_paraphrase_mem"].iloc[0])


def test_causal_test_trains_the_reactivated_late_checkpoint(family):
    ckpts, root = family
    setup = builtin_setup(COSINE, n_background=60, n_heldout=10, root=root)
    stream = StreamConfig(rounds=2, interval=2, batch_size=4, seq_len=32, max_injected_rows=2)
    texts = builtin_texts("heldout", 10, COSINE, root)
    tokenizer = AutoTokenizer.from_pretrained(ckpts[-1].path)
    model, batches = load_checkpoint(ckpts[-1]), text_batches(tokenizer, texts)
    means = coefficient_means(model, batches)
    target = sum(knowledge_entropy(coefficient_means(reactivate(model, means, 0.5, q)[0], batches)).total
                 for q in (0.05, 1.0)) / 2
    results, logs, report = causal_test(ckpts[-1], target, setup, stream, TrainConfig(lr=3e-3, warmup=1), texts)
    row = results.iloc[0]
    assert row.label == "reactivated" and row.step == 6 and row.lr_jump == pytest.approx(3e-3 / own_lr(ckpts[-1]))
    assert row.normalized * 2 * math.log(32) == pytest.approx(target, abs=1e-3)  # the KE it was raised to
    first, last = logs.iloc[0], logs.iloc[-1]  # measured from the modified model's own start
    assert row.gain_paraphrase_mem == pytest.approx(last.logprob_paraphrase_mem - first.logprob_paraphrase_mem)
    unmodified = evaluator(tokenizer, setup)(model, 0, with_retention=False)["logprob_paraphrase_mem"]
    assert first.logprob_paraphrase_mem != pytest.approx(unmodified, abs=1e-6)


def test_verdicts_from_hand_made_results():
    rows = [("study", 300, 0.60, 0.50), ("study", 1200, 0.40, 0.60), ("matched", 300, 0.50, 0.30),
            ("matched", 1200, 0.48, 0.10), ("reactivated", 1200, 0.55, 0.62)]
    frame = pd.DataFrame(rows, columns=["label", "step", "gain_beyond_control_paraphrase_mem", "forgetting"])
    v = confound_verdicts(frame, 0.05, 0.03)

    def claim(start: str) -> bool:
        (value,) = [x for k, x in v.items() if k.startswith(start)]
        return value

    assert claim("'study': the late checkpoint acquires less") and claim("'study': the late checkpoint forgets more")
    assert claim("'study': finding 2 holds")
    assert not claim("'matched': the late checkpoint acquires less")  # 0.02 < 0.05: no difference
    assert not claim("'matched': the late checkpoint forgets more")  # it forgets less
    assert not claim("'matched': finding 2 holds")
    moved = [x for k, x in v.items() if k.startswith("raising")]
    assert moved == [True, False]  # gain 0.55 is near 0.60 (from 0.40); F 0.62 is not nearer 0.50 than 0.60
    assert not any("resumed" in k for k in v)  # not run: no claim
    numbers = confound_key_numbers(frame)
    assert numbers["gain_bc_study_1200"] == 0.40 and numbers["F_reactivated_1200"] == 0.62
