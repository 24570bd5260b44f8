"""Notebook 05's tools: learning-rate schedules by hand, variance explained on known data, KE
matched by reactivation, and the protocol experiment on a miniature family."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer

from helpers import MINI, no_module_copies
from ke_utils import confound
from ke_utils.memory.batching import text_batches
from ke_utils.checkpoint_sweep import sweep
from ke_utils.checkpoints import Checkpoint, load_checkpoint
from ke_utils.confound import key_numbers as confound_key_numbers
from ke_utils.confound import verdicts as confound_verdicts
from ke_utils.confound import (causal_test, confound_experiment, cosine_lr, match_knowledge_entropy, olmo_1b_lr,
                               pretraining_lr_of,
                               own_lr, protocol_experiment,
                               stage_differences, variance_explained)
from ke_utils.continual import TrainConfig
from ke_utils.memory.entropy import coefficient_means, knowledge_entropy
from ke_utils.evaluation import evaluator
from ke_utils.pretrain import builtin_family, builtin_texts
from ke_utils.memory.reactivation import reactivate, restore, snapshot
from ke_utils.setups import builtin_setup
from ke_utils.stream import StreamConfig
from ke_utils.subjects import Subject

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
    assert pretraining_lr_of("builtin:decayed") is own_lr


def test_pretraining_lr_of_the_study_model():
    """OLMo-1B's schedule for both of its repositories; no guess for any other hub model."""
    for repo in ("allenai/OLMo-1B", "allenai/OLMo-1B-hf"):
        lr_of = pretraining_lr_of(repo)
        assert lr_of(Checkpoint(738020, repo, "step738020-tokens3095B", None, None, "x")) == pytest.approx(4.0e-5, rel=0.01)
    with pytest.raises(ValueError, match="set LR_OF"):
        pretraining_lr_of("EleutherAI/pythia-160m")
    pythia = Checkpoint(143000, "EleutherAI/pythia-160m", "step143000", None, None, "step143000")
    assert pretraining_lr_of("EleutherAI/pythia-160m", 6e-4)(pythia) == 6e-4  # one number: every checkpoint's
    assert pretraining_lr_of("EleutherAI/pythia-160m", lambda c: c.step * 1e-9)(pythia) == pytest.approx(1.43e-4)


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


def test_reactivation_reaches_a_target_knowledge_entropy(family, monkeypatch):
    """The bisection reactivates the model itself (no copy) and leaves it with the best factor, also
    when its last attempt was not the best; a target out of reach leaves it as given."""
    ckpts, root = family
    model = load_checkpoint(ckpts[-1])
    tokenizer = AutoTokenizer.from_pretrained(ckpts[-1].path)
    batches = list(text_batches(tokenizer, builtin_texts("heldout", 10, COSINE, root)))
    before = knowledge_entropy(coefficient_means(model, batches)).total
    means = coefficient_means(model, batches)
    ends = [knowledge_entropy(coefficient_means(reactivate(model, means, 0.5, q)[0], batches)).total for q in (0.05, 1.0)]
    target = sum(ends) / 2  # reachable between q = 0.05 and q = 1
    given = snapshot(model)
    no_module_copies(monkeypatch)
    modified, report, ke = match_knowledge_entropy(model, batches, target, factors=(0.05, 1.0), tolerance=1e-4)
    assert modified is model
    assert abs(ke.total - target) <= 1e-4 and report.ratio == 0.5 and 0.05 < report.factor < 1.0
    assert knowledge_entropy(coefficient_means(model, batches)).total == pytest.approx(ke.total, abs=1e-9)
    restore(model, given)
    again = match_knowledge_entropy(model, batches, target, factors=(0.05, 1.0), tolerance=1e-4, means=means)
    assert again[1].factor == report.factor and again[2].total == ke.total  # means measured once, passed in
    # three halvings: q = 0.525, 0.2875, 0.16875, the last farther from the target than the one before
    restore(model, given)
    _, short, reached = match_knowledge_entropy(model, batches, target, factors=(0.05, 1.0), tolerance=0, max_steps=3)
    assert short.factor == pytest.approx(0.2875)
    assert knowledge_entropy(coefficient_means(model, batches)).total == pytest.approx(reached.total, abs=1e-9)
    restore(model, given)
    state = {n: t.clone() for n, t in model.state_dict().items()}
    with pytest.raises(ValueError, match="outside"):
        match_knowledge_entropy(model, batches, before + 10)
    assert all(torch.equal(t, state[n]) for n, t in model.state_dict().items())


def test_protocol_experiment_records_the_learning_rates(family, capsys):
    ckpts, root = family
    setup = builtin_setup(COSINE, n_background=60, n_heldout=10, root=root)
    stream = StreamConfig(rounds=2, interval=2, batch_size=4, seq_len=256, max_injected_rows=2)
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


def test_causal_test_trains_the_reactivated_late_checkpoint(family, monkeypatch):
    ckpts, root = family
    setup = builtin_setup(COSINE, n_background=60, n_heldout=10, root=root)
    stream = StreamConfig(rounds=2, interval=2, batch_size=4, seq_len=256, max_injected_rows=2)
    texts = builtin_texts("heldout", 10, COSINE, root)
    tokenizer = AutoTokenizer.from_pretrained(ckpts[-1].path)
    model, batches = load_checkpoint(ckpts[-1]), text_batches(tokenizer, texts)
    means = coefficient_means(model, batches)
    target = sum(knowledge_entropy(coefficient_means(reactivate(model, means, 0.5, q)[0], batches)).total
                 for q in (0.05, 1.0)) / 2
    trained, train_and_evaluate = [], confound.train_and_evaluate

    def recording(model, *args, **kwargs):
        trained.append(model)
        return train_and_evaluate(model, *args, **kwargs)

    monkeypatch.setattr(confound, "train_and_evaluate", recording)
    no_module_copies(monkeypatch)
    results, logs, report = causal_test(ckpts[-1], target, setup, stream, TrainConfig(lr=3e-3, warmup=1), texts,
                                        random_control=True)
    monkeypatch.undo()
    assert len(trained) == 2 and trained[0] is trained[1]  # one model for both runs, no copy
    assert results["label"].tolist() == ["reactivated", "random neurons"]
    row = results.iloc[0]
    assert row.label == "reactivated" and row.step == 6 and row.lr_jump == pytest.approx(3e-3 / own_lr(ckpts[-1]))
    assert row.normalized * 2 * math.log(32) == pytest.approx(target, abs=1e-3)  # the KE it was raised to
    first, last = logs[logs.label == "reactivated"].iloc[0], logs[logs.label == "reactivated"].iloc[-1]
    assert row.gain_paraphrase_mem == pytest.approx(last.logprob_paraphrase_mem - first.logprob_paraphrase_mem)
    unmodified = evaluator(tokenizer, setup)(model, 0, with_retention=False)["logprob_paraphrase_mem"]
    assert first.logprob_paraphrase_mem != pytest.approx(unmodified, abs=1e-6)
    # the control: the same factor on random neurons, its own KE measured (not the target)
    control, _ = reactivate(model, means, report.ratio, report.factor, "random", seed=0)
    expected = knowledge_entropy(coefficient_means(control, batches)).normalized
    assert results.iloc[1].normalized == pytest.approx(expected, abs=1e-9) and expected != pytest.approx(row.normalized)
    start = logs[logs.label == "random neurons"].iloc[0]
    assert start.logprob_paraphrase_mem == pytest.approx(
        evaluator(tokenizer, setup)(control, 0, with_retention=False)["logprob_paraphrase_mem"], abs=1e-6)


def test_confound_experiment_runs_every_protocol_contrast_and_the_causal_test(family, tmp_path, monkeypatch):
    ckpts, root = family
    constant = builtin_family(MINI, root=tmp_path, progress=False)
    texts = builtin_texts("heldout", 10, COSINE, root)
    subjects = [Subject("builtin:mini", [ckpts[1], ckpts[-1]], texts, "mini")]
    contrasts = [Subject("builtin:flat-seed0", [constant[1], constant[-1]], texts, "flat-seed0")]
    setup = builtin_setup(COSINE, n_background=60, n_heldout=10, root=root)
    stream = StreamConfig(rounds=2, interval=2, batch_size=4, seq_len=256, max_injected_rows=2)
    calls = []

    def fake_causal_test(late, target, *args, lr_of=None):  # the mini family's early KE is out of reactivation's reach
        calls.append((late.step, target, lr_of))
        return pd.DataFrame([{"step": late.step, "label": "reactivated"}]), pd.DataFrame([{"label": "reactivated"}]), "lift"

    monkeypatch.setattr(confound, "causal_test", fake_causal_test)
    def recorded(checkpoint):  # the LR the checkpoints recorded, under another name
        return own_lr(checkpoint)

    results, logs, lifts = confound_experiment(subjects, setup, stream, TrainConfig(lr=3e-3, warmup=1),
                                               ("study", "matched"), contrasts=contrasts, lr_of=recorded, progress=False)
    assert list(zip(results.label, results.step)) == [("study", 3), ("study", 6), ("matched", 3), ("matched", 6),
                                                      ("reactivated", 6), ("flat (study)", 3), ("flat (study)", 6)]
    assert lifts == {"builtin:mini": "lift"} and results["pretrain_seed"].tolist() == [0] * 7
    ke = sweep(subjects[0].checkpoints, texts, progress=False).set_index("step")
    # the late one, raised to the early one's KE, its LR known the way the others' are (a hub model has no record)
    assert calls == [(6, pytest.approx(ke.loc[3, "ke"], abs=1e-12), recorded)]
    study = results[results.label == "study"].set_index("step")["normalized"]
    assert study.to_dict() == pytest.approx(ke["normalized"].to_dict(), abs=1e-12)
    flat = results[results.label == "flat (study)"]
    assert flat["lr_jump"].iloc[-1] == pytest.approx(3e-3 / own_lr(constant[-1]))
    assert set(logs["label"]) == set(results["label"])


def test_stage_differences_per_pretraining_seed_with_a_t_interval():
    rows = [(label, seed, data_seed, step, gain, f) for label, seed, data_seed, step, gain, f in [
        ("study", 0, 0, 300, 0.6, 0.5), ("study", 0, 1, 300, 0.8, 0.5), ("study", 0, 0, 1200, 0.5, 0.6),
        ("study", 0, 1, 1200, 0.5, 0.6),  # seed 0: gain 0.7 -> 0.5 (means over data seeds): -0.2
        ("study", 1, 0, 300, 0.6, 0.5), ("study", 1, 0, 1200, 0.3, 0.5),  # -0.3
        ("study", 2, 0, 300, 0.6, 0.5), ("study", 2, 0, 1200, 0.2, 0.7),  # -0.4
        ("reactivated", 0, 0, 1200, 0.7, 0.6)]]
    frame = pd.DataFrame(rows, columns=["label", "pretrain_seed", "seed", "step", "gain_beyond_control_paraphrase_mem",
                                        "forgetting"])
    table = stage_differences(frame).set_index(["label", "measure"])
    assert set(table.index.get_level_values("label")) == {"study"}  # one stage only: no difference
    gain = table.loc[("study", "gain_beyond_control_paraphrase_mem")]
    half = 4.302653 * 0.1 / math.sqrt(3)  # t(0.975, 2) x sd / sqrt(n)
    assert gain.late_minus_early == pytest.approx(-0.3) and gain.n == 3
    assert gain.low == pytest.approx(-0.3 - half, rel=1e-6) and gain.high == pytest.approx(-0.3 + half, rel=1e-6)


def test_verdicts_from_hand_made_results():
    rows = [("study", 300, 0.60, 0.50), ("study", 1200, 0.40, 0.60), ("matched", 300, 0.50, 0.30),
            ("matched", 1200, 0.48, 0.10), ("reactivated", 1200, 0.55, 0.62), ("random neurons", 1200, 0.41, 0.50),
            ("flat (study)", 300, 0.30, 0.70), ("flat (study)", 1200, 0.90, 0.60)]
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
    control = [x for k, x in v.items() if k.startswith("the same factor on random neurons")]
    assert control == [False, True]  # gain 0.41 stays near 0.40; F 0.50 is the early one's
    assert not claim("'flat (study)': the late checkpoint acquires less") and not claim("'flat (study)': the late checkpoint forgets more")
    assert not any("'reactivated'" in k or "'random neurons'" in k for k in v)  # one stage: not a protocol
    assert not any("resumed" in k for k in v)  # not run: no claim
    numbers = confound_key_numbers(frame)
    assert numbers["gain_bc_study_1200"] == 0.40 and numbers["F_reactivated_1200"] == 0.62
    assert numbers["gain_bc_flat_study_1200"] == 0.90 and numbers["F_random_neurons_1200"] == 0.50
