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
from ke_utils import plots, study
from ke_utils.experiments import confound
from ke_utils.memory.batching import text_batches
from ke_utils.checkpoint_sweep import sweep
from ke_utils.checkpoints import Checkpoint, load_checkpoint
from ke_utils.experiments.confound import findings as confound_findings
from ke_utils.experiments.confound import key_numbers as confound_key_numbers
from ke_utils.experiments.confound import (MEASURE, causal_test, confound_experiment, match_knowledge_entropy,
                                           protocol_experiment, stage_differences, variance_explained)
from ke_utils.continual import TrainConfig, pretraining_lr_of, recorded_lr as own_lr
from ke_utils.pretrain import pretraining_lr
from ke_utils.training import lr_at
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
    assert lr_at(0, 1.0, 10, 110) == 0 and lr_at(5, 1.0, 10, 110) == 0.5
    assert lr_at(10, 1.0, 10, 110) == pytest.approx(1.0)
    assert lr_at(60, 1.0, 10, 110) == pytest.approx(0.55)  # half way: 0.1 + 0.9 / 2
    assert lr_at(110, 1.0, 10, 110) == pytest.approx(0.1) and lr_at(500, 1.0, 10, 110) == pytest.approx(0.1)
    assert lr_at(500, 1.0, 10, 110, shape="constant") == 1.0 and lr_at(5, 1.0, 10, 110, shape="constant") == 0.5
    with pytest.raises(ValueError, match="shape"):
        lr_at(5, 1.0, 10, 110, shape="linear")
    # OLMo-1B at the study's checkpoints: about 3.8e-4 / 2.2e-4 / 9.3e-5 / 4.0e-5, so re-warming to
    # 4e-4 is a jump of about 1.1x / 1.8x / 4.3x / 10x
    lrs = [study.olmo_1b_lr(s) for s in (118_000, 369_000, 554_000, 738_000)]
    assert lrs == pytest.approx([3.78e-4, 2.24e-4, 9.3e-5, 4.0e-5], rel=0.02)
    assert [round(4e-4 / lr, 1) for lr in lrs] == [1.1, 1.8, 4.3, 10.0]


def test_own_lr_is_the_recorded_one(family):
    ckpts, _ = family
    assert [own_lr(c) for c in ckpts] == pytest.approx([pretraining_lr(COSINE, c.step) for c in ckpts], rel=1e-12, abs=1e-15)
    assert [own_lr(c) for c in ckpts] == pytest.approx([lr_at(c.step, COSINE.lr, COSINE.warmup, COSINE.steps)
                                                        for c in ckpts], rel=1e-12, abs=1e-15)
    assert pretraining_lr_of("builtin:decayed") is own_lr
    assert pretraining_lr_of(study.OLMO_1B_HF_REPO)(ckpts[0]) == study.olmo_1b_lr(ckpts[0].step)
    assert pretraining_lr_of("someone/model", 1e-4)(ckpts[0]) == 1e-4
    with pytest.raises(ValueError, match="LR_OF"):
        pretraining_lr_of("someone/model")


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


def test_function_kept_doses_move_ke_both_ways_and_leave_the_logits(family):
    ckpts, root = family
    setup = builtin_setup(COSINE, n_background=60, n_heldout=10, root=root)
    stream = StreamConfig(rounds=2, interval=2, batch_size=4, seq_len=256, max_injected_rows=2)
    texts = builtin_texts("heldout", 10, COSINE, root)
    tokenizer = AutoTokenizer.from_pretrained(ckpts[-1].path)
    own = knowledge_entropy(coefficient_means(load_checkpoint(ckpts[-1]), text_batches(tokenizer, texts))).normalized
    targets = [None, own - 0.002, own + 0.002]
    results, logs = confound.function_kept_doses(ckpts[-1], targets, setup, stream, TrainConfig(lr=3e-3, warmup=1),
                                                 texts, eval_every=1)
    assert results["label"].tolist() == ["unmodified", f"KE set to {own - 0.002:.3f}", f"KE set to {own + 0.002:.3f}"]
    assert results["normalized"].tolist() == pytest.approx([own, own - 0.002, own + 0.002], abs=2e-4)
    assert results["factor"].iloc[1] < results["factor"].iloc[2]  # q sets the least-used to q x the mean: higher, higher KE
    assert (results["logit_change"] < 1e-4).all()  # the function kept (float32 rounding)
    for label, group in logs.groupby("label"):
        row = results.set_index("label").loc[label]
        assert len(group) == 3 and group["ke_normalized"].iloc[0] == pytest.approx(row.normalized, abs=1e-6)
        assert group["ke_normalized"].iloc[-1] == pytest.approx(row.normalized_after)
    unmodified = results.iloc[0]
    assert unmodified.logit_change == 0 and math.isnan(unmodified.factor)



def test_function_kept_experiment_moves_each_stage_towards_the_other(family):
    """Both ways, one dose: the late checkpoint raised towards the early one's KE and the early one
    lowered towards the late one's (0.45 of the way: in the miniature family both targets are then
    within what q can reach from either side), each next to its unmodified run; the function kept throughout."""
    ckpts, root = family
    setup = builtin_setup(COSINE, n_background=60, n_heldout=10, root=root)
    stream = StreamConfig(rounds=2, interval=2, batch_size=4, seq_len=256, max_injected_rows=2)
    texts = builtin_texts("heldout", 10, COSINE, root)
    subject = Subject("builtin:mini", [ckpts[1], ckpts[-1]], texts, "mini")
    results, logs = confound.function_kept_experiment([subject], setup, stream, TrainConfig(lr=3e-3, warmup=1),
                                                      doses=1, reach=0.45, eval_every=1, progress=False)
    own = confound.stage_table([subject]).set_index("step")["normalized"]
    early, late = ckpts[1].step, ckpts[-1].step
    assert results["step"].tolist() == [late, late, early, early]
    gap = 0.45 * (own[early] - own[late])
    assert results["normalized"].tolist() == pytest.approx([own[late], own[late] + gap, own[early], own[early] - gap],
                                                           abs=2e-4)
    assert (results["logit_change"] < 1e-4).all() and (results["pretrain_seed"] == 0).all()
    assert set(logs["label"]) == {"unmodified", f"KE set to {own[late] + gap:.3f}", f"KE set to {own[early] - gap:.3f}"}
    fig = plots.plot_function_kept(results, logs, {"heldout_loss_change": "held-out loss change"})
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 4  # 2 starting checkpoints x (unmodified, moved)
    points = np.concatenate([c.get_offsets() for c in fig.axes[1].collections])
    assert sorted(points[:, 0]) == pytest.approx(sorted(results["normalized"]))


def test_dose_slopes_are_the_least_squares_slope_per_seed_then_a_t_interval():
    ke = np.array([0.90, 0.92, 0.94])
    rows = [{"step": 1200, "pretrain_seed": seed, "normalized": x, "gain": slope * x + seed, "flat": 1.0}
            for seed, slope in enumerate((10.0, 20.0)) for x in ke]
    table = confound.dose_slopes(pd.DataFrame(rows), ["gain", "flat"]).set_index("measure")
    assert table.loc["gain", "slope"] == pytest.approx(0.15)  # (10 + 20) / 2 per unit of KE, x 0.01
    assert table.loc["gain", "n"] == 2 and table.loc["gain", "low"] < 0.15 < table.loc["gain", "high"]
    half = 12.706205 * (0.2 - 0.1) / math.sqrt(2) / math.sqrt(2)  # t(0.975, 1) x sd / sqrt(n)
    assert table.loc["gain", "high"] - 0.15 == pytest.approx(half, rel=1e-5)
    assert table.loc["flat", "slope"] == pytest.approx(0.0, abs=1e-12)

def test_anneal_experiment_holds_ke_and_changes_the_lr_history(tmp_path):
    """The annealed twin's last checkpoint sits at a tenth of the constant one's LR, so 'study'
    re-warms it 10x and the constant one 1x; the differences are annealed minus constant."""
    constant = dataclasses.replace(MINI, steps=6, warmup=1, checkpoint_steps=(0, 3, 6))
    annealed = dataclasses.replace(constant, schedule="wsd", decay_steps=3)
    texts = builtin_texts("heldout", 10, constant, tmp_path)
    pair = (Subject("builtin:c", builtin_family(constant, tmp_path, progress=False)[1:], texts, "c"),
            Subject("builtin:a", builtin_family(annealed, tmp_path, progress=False)[-1:], texts, "a"))
    setup = builtin_setup(constant, n_background=60, n_heldout=10, root=tmp_path)
    stream = StreamConfig(rounds=2, interval=2, batch_size=4, seq_len=256, max_injected_rows=2)
    results = confound.anneal_experiment([pair], setup, stream, TrainConfig(lr=constant.lr, warmup=1), progress=False)
    assert list(zip(results.label, results.step)) == [("constant LR (study)", 3), ("constant LR (study)", 6),
                                                      ("annealed (study)", 6), ("annealed (matched)", 6)]
    assert results["lr_jump"].tolist() == pytest.approx([1, 1, 10, 1])
    table = confound.anneal_differences(results, [MEASURE]).set_index(["contrast", "measure"])["difference"]
    by_label = results.set_index(["label", "step"])
    assert table[("annealed minus constant LR, late, under study", MEASURE)] == pytest.approx(
        by_label.loc[("annealed (study)", 6), MEASURE] - by_label.loc[("constant LR (study)", 6), MEASURE])
    assert table[("constant LR: late minus early, under study", "KE (normalised)")] == pytest.approx(
        by_label.loc[("constant LR (study)", 6), "normalized"] - by_label.loc[("constant LR (study)", 3), "normalized"])


def test_lr_sweep_runs_the_study_protocol_at_every_peak(family):
    """Each peak trains the first and last checkpoint under 'study' exactly as protocol_experiment
    does at that peak; the late checkpoint's jump grows with the peak."""
    ckpts, root = family
    texts = builtin_texts("heldout", 10, COSINE, root)
    subject = Subject("builtin:mini", [ckpts[1], ckpts[-1]], texts, "mini")
    setup = builtin_setup(COSINE, n_background=60, n_heldout=10, root=root)
    stream = StreamConfig(rounds=2, interval=2, batch_size=4, seq_len=256, max_injected_rows=2)
    train = TrainConfig(lr=3e-3, warmup=1)
    results, logs = confound.lr_sweep([subject], setup, stream, train, peaks=(1e-3, 3e-3), progress=False)
    assert list(zip(results.label, results.step)) == [("study at 0.001", 3), ("study at 0.001", 6),
                                                      ("study at 0.003", 3), ("study at 0.003", 6)]
    assert results["peak_lr"].tolist() == [1e-3, 1e-3, 3e-3, 3e-3] and set(logs["label"]) == set(results["label"])
    late = results[results.step == 6]
    assert late["lr_jump"].tolist() == pytest.approx([1e-3 / own_lr(ckpts[-1]), 3e-3 / own_lr(ckpts[-1])])
    direct, _ = protocol_experiment([ckpts[1], ckpts[-1]], setup, stream, train, ("study",), progress=False)
    at_3e3 = results[results.label == "study at 0.003"].reset_index(drop=True)
    for column in (MEASURE, "heldout_loss_change", "retention_logprob_change"):  # bit for bit
        assert at_3e3[column].tolist() == direct[column].tolist()
    assert results[MEASURE].iloc[1] != at_3e3[MEASURE].iloc[1]  # the peak matters
    differences = stage_differences(results)
    gains = differences[differences["measure"] == MEASURE]
    assert set(gains["label"]) == {"study at 0.001", "study at 0.003"} and (gains["n"] == 1).all()


def test_verdicts_from_hand_made_results():
    rows = [("study", 300, 0.60, 0.50), ("study", 1200, 0.40, 0.60), ("matched", 300, 0.50, 0.30),
            ("matched", 1200, 0.48, 0.10), ("reactivated", 1200, 0.55, 0.62), ("random neurons", 1200, 0.41, 0.50),
            ("flat (study)", 300, 0.30, 0.70), ("flat (study)", 1200, 0.90, 0.60)]
    frame = pd.DataFrame(rows, columns=["label", "step", "gain_beyond_control_paraphrase_mem", "forgetting"])
    v = confound_findings(frame, 0.05, 0.03)

    def claim(start: str) -> bool:
        (value,) = [x for k, x in v.items() if k.startswith(start)]
        return bool(value)

    assert claim("'study': the late checkpoint acquires less") and claim("'study': the late checkpoint forgets more")
    assert claim("'study': finding 2 holds")
    assert not claim("'matched': the late checkpoint acquires less")  # 0.02 < 0.05: no difference
    assert not claim("'matched': the late checkpoint forgets more")  # it forgets less
    assert not claim("'matched': finding 2 holds")
    moved = [bool(x) for k, x in v.items() if k.startswith("raising")]
    assert moved == [True, False]  # gain 0.55 is near 0.60 (from 0.40); F 0.62 is not nearer 0.50 than 0.60
    control = [bool(x) for k, x in v.items() if k.startswith("the same factor on random neurons")]
    assert control == [False, True]  # gain 0.41 stays near 0.40; F 0.50 is the early one's
    assert not claim("'flat (study)': the late checkpoint acquires less") and not claim("'flat (study)': the late checkpoint forgets more")
    assert not any("'reactivated'" in k or "'random neurons'" in k for k in v)  # one stage: not a protocol
    assert not any("resumed" in k for k in v)  # not run: no claim
    assert not any("log-probability" in k for k in v)  # not logged: no claim
    logged = frame.assign(retention_logprob_change=[-0.2, -0.5, -0.3, -0.3, -0.4, -0.4, -0.1, -0.1],
                          heldout_loss_change=[0.1, 0.12, 0.1, 0.1, 0.1, 0.1, 0.1, 0.3])
    w = confound_findings(logged, 0.05, 0.03)
    assert all(f.study and f.threshold for f in w.values())  # the results table's columns
    assert w["'study': the late checkpoint forgets more"].study.startswith("yes: F 10.5%")  # Table 1, under the study's protocol
    assert w["'matched': the late checkpoint forgets more"].study.startswith("not tested")
    loses = "'study': the late checkpoint loses more log-probability on the facts it knew (by > 0.05 nats)"
    assert w[loses] and w[loses].value == pytest.approx(0.3) and not w[loses.replace("study", "matched")]
    assert not w["'study': the late checkpoint raises its held-out loss more (the study's general-capability side) (by > 0.05 nats)"]
    assert w["'flat (study)': the late checkpoint raises its held-out loss more (the study's general-capability side) (by > 0.05 nats)"]
    assert confound_key_numbers(logged)["old_logprob_change_study_1200"] == -0.5
    numbers = confound_key_numbers(frame)
    assert numbers["gain_bc_study_1200"] == 0.40 and numbers["F_reactivated_1200"] == 0.62
    assert numbers["gain_bc_flat_study_1200"] == 0.90 and numbers["F_random_neurons_1200"] == 0.50
