"""End to end on a miniature family: stage experiment and reactivation experiment agree on the
unmodified baseline, are deterministic, and report what they claim to."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer

from helpers import MINI, no_module_copies
from ke_utils.experiments import variants
from ke_utils.memory.batching import text_batches
from ke_utils.checkpoints import load_checkpoint
from ke_utils.continual import ScaleConfig, TrainConfig, run_stage
from ke_utils.evaluation import evaluator
from ke_utils.probes import probe_table, score_probes
from ke_utils.experiments.stages import first_round, stage_experiment
from ke_utils.experiments.variants import Variant, baseline_and_lifted, findings, reactivation_experiment, variant_grid
from ke_utils.outcomes import outcome
from ke_utils.pretrain import builtin_family, builtin_texts
from ke_utils.setups import builtin_setup
from ke_utils.stats import mean_and_spread
from ke_utils.stream import StreamConfig

STREAM = StreamConfig(rounds=2, interval=2, batch_size=4, seq_len=256, max_injected_rows=2)
TRAIN = TrainConfig(lr=3e-3, warmup=1)


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    checkpoints = builtin_family(MINI, root=root, progress=False)
    setup = builtin_setup(MINI, n_background=60, n_heldout=10, root=root)
    return checkpoints, setup, builtin_texts("heldout", 10, MINI, root)


def _choice_setup(setup):
    """``setup`` with retention measured as 4-way multiple choice on the pretraining people's facts
    (the right target against those of three other probes): a 6-step model knows no fact exactly,
    so exact-match retention would be 0 / 0, but it scores above 0 here."""
    probes, n = setup.retention, len(setup.retention)
    items = [{"context": probes.input[i], "choices": [probes.target[(i + s) % n] for s in (0, 7, 14, 21)], "label": 0}
             for i in range(n)]
    return dataclasses.replace(setup, retention=None, tasks={"facts": (items, "acc")})


def test_outcome_from_a_hand_made_log():
    """First row = before, last row = after; rows in between do not count."""
    log = pd.DataFrame({"step": [0, 2, 4],
                        "logprob_paraphrase_mem": [-4.0, -100.0, -3.0], "exact_paraphrase_mem": [0.0, 0.9, 0.25],
                        "logprob_control_mem": [-5.0, -100.0, -4.5], "exact_control_mem": [0.0, 0.9, 0.0],
                        "retention_score": [0.8, 0.1, 0.6], "heldout_loss": [3.0, 9.0, 3.5]})
    assert outcome(log) == pytest.approx({
        "acquisition_paraphrase_mem": 0.25,  # (-3 - -4) / |-4|
        "logprob_after_paraphrase_mem": -3.0, "exact_paraphrase_mem": 0.25, "gain_paraphrase_mem": 1.0,
        "acquisition_control_mem": 0.1,  # (-4.5 - -5) / |-5|
        "logprob_after_control_mem": -4.5, "exact_control_mem": 0.0, "gain_control_mem": 0.5,
        "gain_beyond_control_paraphrase_mem": 0.5,  # 1.0 - 0.5
        "logprob_after_beyond_control_paraphrase_mem": 1.5,  # -3.0 - -4.5
        "retention": 0.75, "forgetting": 0.25,  # 0.6 / 0.8
        "heldout_loss_change": 0.5,
    })
    reference = pd.Series({"logprob_paraphrase_mem": -8.0, "logprob_control_mem": -5.0, "retention_score": 0.0,
                           "heldout_loss": 2.0})
    against = outcome(log, before=reference)
    assert (against["acquisition_paraphrase_mem"], against["gain_paraphrase_mem"]) == (0.625, 5.0)  # (-3 + 8) / 8
    assert against["heldout_loss_change"] == 1.5 and against["exact_paraphrase_mem"] == 0.25
    assert math.isnan(against["retention"]) and math.isnan(against["forgetting"])  # nothing known before
    floored = outcome(log.assign(retention_floor=[0.1, 0.5, 0.2], retention_logprob=[-1.0, -9.0, -1.5]))
    assert floored["retention_floor"] == 0.2 and floored["retention_logprob_change"] == -0.5
    assert floored["forgetting_above_floor"] == pytest.approx(1 - 0.4 / 0.7)  # (0.6 - 0.2) of (0.8 - 0.1) kept
    assert floored["forgetting"] == pytest.approx(0.25)  # the plain F does not move
    barely = outcome(log.assign(retention_floor=[0.78, 0.5, 0.2]))  # knew 0.02 above the floor: -2000 % lost
    assert math.isnan(barely["forgetting_above_floor"]) and barely["forgetting"] == pytest.approx(0.25)


def test_stage_experiment_rows_and_determinism(mini):
    checkpoints, setup, _ = mini
    results, logs = stage_experiment(checkpoints[1:], setup, STREAM, TRAIN, seeds=(0, 1), progress=False)
    assert list(zip(results.step, results.seed)) == [(3, 0), (6, 0), (3, 1), (6, 1)]
    assert {"acquisition_paraphrase_mem", "acquisition_once_mem", "retention", "forgetting"} <= set(results.columns)
    for i, row in results.iterrows():  # each row from its own log: before = step 0, after = the last step
        log = logs[(logs.checkpoint == row.step) & (logs.seed == row.seed)]
        first, last = log.iloc[0], log.iloc[-1]
        assert (first.step, last.step) == (0, STREAM.steps)
        for column in [c for c in log.columns if c.startswith("logprob_")]:
            expected = (last[column] - first[column]) / abs(first[column])
            assert row[f"acquisition_{column[len('logprob_'):]}"] == pytest.approx(expected, rel=1e-12), (i, column)
        assert row["heldout_loss_change"] == pytest.approx(last.heldout_loss - first.heldout_loss, rel=1e-12)
    again = run_stage(checkpoints[2], setup, STREAM, TRAIN)
    pd.testing.assert_frame_equal(again.reset_index(drop=True),
                                  logs[(logs.checkpoint == 6) & (logs.seed == 0)].drop(columns="seed").reset_index(drop=True))
    summary = mean_and_spread(results, "step", ["retention"])
    assert list(summary.step) == [3, 6] and (summary["retention_std"] >= 0).all()



def test_stage_experiment_in_micro_batches_trains_as_in_whole_batches(mini):
    """``scale`` reaches the training loop: two-row micro-batches accumulate the whole batch's
    gradient (the same run to float rounding)."""
    checkpoints, setup, _ = mini
    whole, _ = stage_experiment(checkpoints[-1:], setup, STREAM, TRAIN, progress=False)
    micro, _ = stage_experiment(checkpoints[-1:], setup, STREAM, TRAIN, progress=False, scale=ScaleConfig(micro_batch=2))
    columns = ["acquisition_paraphrase_mem", "retention", "heldout_loss_change"]
    np.testing.assert_allclose(micro[columns].to_numpy(), whole[columns].to_numpy(), rtol=1e-3, atol=1e-5)
    assert not micro[columns].equals(whole[columns])  # accumulated in another order: not bit for bit

def test_reactivation_baseline_equals_plain_continued_training(mini):
    checkpoints, setup, texts = mini
    setup = _choice_setup(setup)
    grid = [Variant("baseline"), Variant("least p=0.5 q=2", 0.5, 2.0)]
    tokenizer = AutoTokenizer.from_pretrained(checkpoints[-1].path)
    model = load_checkpoint(checkpoints[-1])
    before = {n: p.clone() for n, p in model.state_dict().items()}
    results, logs = reactivation_experiment(model, tokenizer, setup, grid, text_batches(tokenizer, texts), STREAM,
                                            TRAIN, seeds=(0,), progress=False)
    assert all(torch.equal(p, before[n]) for n, p in model.state_dict().items())  # given back as it came
    plain, plain_logs = stage_experiment(checkpoints[-1:], setup, STREAM, TRAIN, seeds=(0,), progress=False)
    reference = plain_logs.iloc[0]  # the unmodified checkpoint before training
    assert reference.retention_score > 0 and plain["retention"].iloc[0] != 1  # retention defined, and it moved
    # the baseline is plain continued training: the same log, the same outcome
    base_log = logs[logs.variant == "baseline"].drop(columns=["variant", "seed"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(base_log, plain_logs.drop(columns=["checkpoint", "seed"]))
    base = results[results.variant == "baseline"].iloc[0]
    for column in ("acquisition_paraphrase_mem", "acquisition_once_gen", "retention", "heldout_loss_change"):
        assert base[column] == pytest.approx(plain[column].iloc[0], rel=1e-9)
    # the reactivated variant starts elsewhere, and its outcome is measured from the unmodified model
    lifted = results[results.variant == "least p=0.5 q=2"].iloc[0]
    start, end = (logs[logs.variant == "least p=0.5 q=2"].iloc[i] for i in (0, -1))
    assert lifted["heldout_loss_at_start"] == pytest.approx(start.heldout_loss - reference.heldout_loss, rel=1e-9)
    assert lifted["heldout_loss_at_start"] != 0 and start.logprob_paraphrase_mem != reference.logprob_paraphrase_mem
    assert lifted["retention_at_start"] == pytest.approx(start.retention_score / reference.retention_score, rel=1e-9)
    k_before, k_after = reference.logprob_paraphrase_mem, end.logprob_paraphrase_mem
    assert lifted["acquisition_paraphrase_mem"] == pytest.approx((k_after - k_before) / abs(k_before), rel=1e-9)
    assert lifted["retention"] == pytest.approx(end.retention_score / reference.retention_score, rel=1e-9)
    assert lifted["ke"] > base["ke"]  # measured after the change, on the same texts


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reactivation_experiment_keeps_one_model(mini, dtype, monkeypatch):
    """No copy of the model is made: every variant trains the caller's model object, starting from
    the weights as given (the baseline after a reactivated variant finds them, in their dtype,
    although training cast them to fp32), and the model is given back as it came (values, dtypes,
    mode)."""
    checkpoints, setup, texts = mini
    tokenizer = AutoTokenizer.from_pretrained(checkpoints[-1].path)
    model = load_checkpoint(checkpoints[-1]).to(dtype).train()
    given = {n: p.clone() for n, p in model.state_dict().items()}
    started, train_and_evaluate = [], variants.train_and_evaluate

    def recording(trained, *args, **kwargs):
        started.append((trained, {n: p.clone() for n, p in trained.state_dict().items()}))
        return train_and_evaluate(trained, *args, **kwargs)

    monkeypatch.setattr(variants, "train_and_evaluate", recording)
    no_module_copies(monkeypatch)
    grid = [Variant("least p=0.5 q=2", 0.5, 2.0), Variant("baseline")]
    reactivation_experiment(model, tokenizer, _choice_setup(setup), grid, text_batches(tokenizer, texts), STREAM,
                            TRAIN, progress=False)
    assert [trained is model for trained, _ in started] == [True, True]

    def same(state):
        return state.keys() == given.keys() and all(state[n].dtype == p.dtype and torch.equal(state[n], p)
                                                    for n, p in given.items())

    assert [same(state) for _, state in started] == [False, True]  # reactivated; the baseline starts as given
    assert same(model.state_dict()) and all(m.training for m in model.modules())


def test_variant_grid_has_baseline_method_and_controls():
    names = [v.name for v in variant_grid(ratios=(0.1, 0.5), factors=(0.5, 1.0), controls=((0.5, 2.0),))]
    assert names == ["baseline", "least p=0.1 q=0.5", "least p=0.1 q=1", "least p=0.5 q=0.5", "least p=0.5 q=1",
                     "random p=0.5 q=2", "most p=0.5 q=2"]
    notebook_default = variant_grid(factors=(2.0, 3.0), selects=("random",))
    assert [(v.select, v.ratio, v.factor) for v in notebook_default] == [("least", 0.0, 1.0), ("least", 0.5, 2.0),
                                                                         ("least", 0.5, 3.0), ("random", 0.5, 2.0)]


def test_evaluation_runs_in_eval_mode_and_gives_the_mode_back(mini):
    checkpoints, setup, _ = mini
    tokenizer = AutoTokenizer.from_pretrained(checkpoints[-1].path)
    model = load_checkpoint(checkpoints[-1])
    for layer in model.model.layers:  # a model with dropout, evaluated mid-training (train mode)
        layer.self_attn.attention_dropout = 0.5
    evaluate = evaluator(tokenizer, _choice_setup(setup))
    expected = evaluate(model, 0)
    model.train()
    assert evaluate(model, 1) == expected and model.training


def test_the_studys_k_averages_every_probe_of_an_item(mini):
    checkpoints, setup, _ = mini
    tokenizer = AutoTokenizer.from_pretrained(checkpoints[-1].path)
    model = load_checkpoint(checkpoints[-1])
    out = evaluator(tokenizer, setup)(model, 0)
    mid_run = evaluator(tokenizer, setup)(model, 0, with_retention=False)  # the curves: memorisation probes only
    assert set(mid_run) == {f"{m}_{r}_mem" for m in ("logprob", "exact") for r in ("paraphrase", "once", "control")}
    assert mid_run["logprob_paraphrase_mem"] == pytest.approx(out["logprob_paraphrase_mem"], rel=1e-6)
    scored = score_probes(model, tokenizer, probe_table(setup.paraphrase))
    per_item = scored.groupby("item")["logprob"].mean()  # all 3 kinds of probes of an item together
    # rel 1e-7: the evaluator batches all regimes' probes by length, so float32 sums run in another order
    assert out["logprob_paraphrase_all"] == pytest.approx(per_item.mean(), rel=1e-7)
    assert out["logprob_paraphrase_all"] != pytest.approx(out["logprob_paraphrase_mem"], rel=1e-6)  # not one kind
    assert {"logprob_once_all", "logprob_control_all", "exact_paraphrase_all"} <= set(out)


def test_reactivation_findings_from_a_hand_made_summary():
    rows = [("baseline", "least", 0.0, 1.0, 0.60, 0.01, 0.600, 0.0005, 0.68),
            ("least p=0.5 q=1", "least", 0.5, 1.0, 0.61, 0.01, 0.601, 0.0005, 0.70),
            ("least p=0.5 q=2", "least", 0.5, 2.0, 0.70, 0.02, 0.608, 0.0005, 0.65),  # +0.10 > 2 x 0.02
            ("least p=0.5 q=0.5", "least", 0.5, 0.5, 0.90, 0.01, 0.700, 0.0005, 0.90),  # q < 1: not a lifted variant
            ("random p=0.5 q=2", "random", 0.5, 2.0, 0.66, 0.03, 0.605, 0.0005, 0.40),
            ("most p=0.5 q=2", "most", 0.5, 2.0, 0.50, 0.01, 0.600, 0.0005, 0.30)]
    columns = ["variant", "select", "ratio", "factor", "gain_beyond_control_paraphrase_mem",
               "gain_beyond_control_paraphrase_mem_std", "acquisition_paraphrase_all", "acquisition_paraphrase_all_std",
               "retention"]
    summary = pd.DataFrame(rows, columns=columns).assign(normalized=[0.90, 0.93, 0.95, 0.97, 0.92, 0.91])
    base, lifted = baseline_and_lifted(summary)
    assert base["variant"] == "baseline" and list(lifted["variant"]) == ["least p=0.5 q=1", "least p=0.5 q=2"]
    found = findings(summary)
    claims = list(found.values())
    assert all(f.study and f.threshold for f in claims)  # the results table's columns
    assert claims[0] and claims[0].check and claims[0].value == pytest.approx(0.03)  # KE rises in both lifted variants
    assert claims[1] and claims[1].value == pytest.approx(0.10)  # +0.10 nats > 0.05 and > 2 x 0.02
    assert not claims[2]  # A +0.008 is less than the one-point minimum
    assert list(findings(summary, min_a=0.005).values())[2]
    assert not claims[3]  # q=2 retains less than the baseline
    assert not claims[4]  # 0.70 - 0.66 = 0.04 < 2 x 0.03: the random control is as good
    summary.loc[4, "gain_beyond_control_paraphrase_mem"] = 0.62
    assert findings(summary)[list(found)[4]]  # 0.08 > 0.06
    assert not list(findings(summary, min_gain=0.09).values())[4]  # nor the minimum
    assert len(findings(summary[summary["select"] != "most"])) == 5  # random alone is a control
    assert len(findings(summary[summary["select"] == "least"])) == 4  # no control: no claim
    summary.loc[2, "normalized"] = 0.89  # q=2 lowered KE: the check fails
    assert not list(findings(summary).values())[0]


def test_with_one_seed_the_minimum_difference_decides():
    rows = [("baseline", "least", 0.0, 1.0, 0.60, 0.0, 0.512, 0.0, 0.67),
            ("least p=0.5 q=2", "least", 0.5, 2.0, 0.64, 0.0, 0.516, 0.0, 0.42)]
    columns = ["variant", "select", "ratio", "factor", "gain_beyond_control_paraphrase_mem",
               "gain_beyond_control_paraphrase_mem_std", "acquisition_paraphrase_all", "acquisition_paraphrase_all_std",
               "retention"]
    claims = list(findings(pd.DataFrame(rows, columns=columns).assign(normalized=[0.90, 0.95])).values())
    assert [bool(c) for c in claims[1:3]] == [False, False]  # +0.04 nats and +0.004 in A: below the minimums, whatever the (zero) spread
    summary = pd.DataFrame(rows, columns=columns).assign(normalized=[0.90, 0.95])
    lines = variants.summary_lines(findings(summary), summary, 0.05, 0.01, n_seeds=1, asserted=False)
    assert lines[0] == "Did lifting the least-used neurons raise KE? YES" and len(lines) == 4  # no control: no 5th question
    assert "not distinguishable at this threshold (difference +0.040 nats; it counts above 0.05 nats)" in lines[1]
    assert "retention 0.67 unmodified, 0.42-0.42 reactivated" in lines[3]


def test_a_verdict_says_which_way_one_run_went():
    from ke_utils.report import Finding, verdict

    assert verdict(Finding(True, 0.12), "more", "less", 0.05, " nats") == "in this run: more, by 0.120 nats (one pretraining seed)"
    assert verdict(Finding(False, -0.08), "more", "less", 0.05) == "in this run: less, by 0.080 (one pretraining seed)"
    assert verdict(Finding(False, 0.03), "more", "less", 0.05, spread_too=True) == (
        "not distinguishable at this threshold (difference +0.030; it counts above 0.05 and 2 x the spread over data orders)")


def test_first_round_is_the_start_of_the_stage_run(mini):
    """The walk-through of notebooks 03 and 04 trains exactly as the experiment does: the same
    losses and learning rates over the first round, and the probes it scores are the first
    paraphrase item's, changed by that round."""
    checkpoints, setup, _ = mini
    walk = first_round(checkpoints[-1], setup, STREAM, TRAIN)
    log = run_stage(checkpoints[-1], setup, STREAM, TRAIN, eval_every=1)
    at_round = log[log["step"] == STREAM.interval].iloc[0]
    assert list(walk.steps["step"]) == list(range(1, STREAM.interval + 1))
    assert walk.steps["loss"].mean() == pytest.approx(at_round["train_loss"], rel=1e-6)
    assert walk.steps["lr"].iloc[-1] == pytest.approx(at_round["lr"])
    assert walk.steps["lr"].iloc[0] < walk.steps["lr"].iloc[-1]  # warming up
    assert len(walk.probes) == len(probe_table(setup.paraphrase[:1]))
    assert (walk.probes["logprob_after"] != walk.probes["logprob_before"]).all()
    assert walk.batch["injected"].str.startswith("paraphrase item 0").sum() == 1
    assert (walk.batch["tokens"] == STREAM.seq_len).all()


def test_a_half_precision_baseline_is_measured_as_it_trains(mini):
    """Continued training evaluates a bf16 checkpoint on its fp32 master weights, so the unmodified
    reference that reactivated variants are measured against is evaluated in fp32 too: the
    baseline's outcome is its own log's, exactly."""
    checkpoints, setup, texts = mini
    setup = _choice_setup(setup)
    tokenizer = AutoTokenizer.from_pretrained(checkpoints[-1].path)
    model = load_checkpoint(checkpoints[-1]).to(torch.bfloat16)
    results, logs = reactivation_experiment(model, tokenizer, setup, [Variant("baseline")], text_batches(tokenizer, texts),
                                            STREAM, TRAIN, seeds=(0,), progress=False)
    own = outcome(logs.drop(columns=["variant", "seed"]))
    assert next(model.parameters()).dtype == torch.bfloat16  # the caller's model is left as it was
    for column in ("acquisition_paraphrase_mem", "acquisition_paraphrase_all", "gain_paraphrase_mem"):
        assert results[column].iloc[0] == own[column]
    assert results["retention_at_start"].iloc[0] == 1.0
