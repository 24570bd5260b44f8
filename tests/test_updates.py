"""Notebook 06's driver: which runs, the summary of one run, the claims, and one run on a miniature family."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from helpers import MINI
from ke_utils.continual import TrainConfig, train_and_evaluate
from ke_utils.experiments import updates
from ke_utils.checkpoints import Checkpoint, load_checkpoint
from ke_utils.outcomes import outcome
from ke_utils.pretrain import builtin_family, builtin_texts
from ke_utils.setups import builtin_setup
from ke_utils.stream import StreamConfig
from ke_utils.subjects import Subject
from transformers import AutoTokenizer

STREAM = StreamConfig(rounds=2, interval=2, batch_size=4, seq_len=256, max_injected_rows=2)


def _checkpoint(step: int) -> Checkpoint:
    return Checkpoint(step, f"/x/step{step}", None, None, None, f"step{step}")


def test_update_runs():
    """Every stage under the first protocol, the ends under the others and for the contrast, and
    the reactivated last checkpoint."""
    subject = Subject("builtin:decayed", [_checkpoint(s) for s in (300, 600, 1200)], [], "decayed")
    contrast = Subject("builtin:overtrained", [_checkpoint(s) for s in (300, 600, 1200)], [], "overtrained-seed0")
    runs = updates.update_runs(subject, ["study", "matched"], contrast, (0.5, 2.0))
    assert [(r.label, r.checkpoint.step, r.protocol, r.lift) for r in runs] == [
        ("study", 300, "study", None), ("study", 600, "study", None), ("study", 1200, "study", None),
        ("matched", 300, "matched", None), ("matched", 1200, "matched", None),
        ("overtrained (study)", 300, "study", None), ("overtrained (study)", 1200, "study", None),
        ("reactivated (study)", 1200, "study", (0.5, 2.0))]
    assert [r.label for r in updates.update_runs(subject, ["study"])] == ["study"] * 3


def test_summary_of_hand_made_tensors():
    """2 layers x 10 neurons: the key change goes to the most-used neuron of each layer only, the
    value change everywhere alike, the value gradient to the least-used neuron."""
    usage = torch.arange(1.0, 21.0).view(2, 10)
    change = torch.zeros(2, 10)
    change[:, 9] = 1.0  # the most-used neuron of each layer
    value_grad = torch.zeros(2, 10)
    value_grad[:, 0] = 1.0  # the least-used
    attribution = updates.Attribution(usage=usage, key_change=change, value_change=torch.ones(2, 10),
                                      key_grad=usage.clone(), value_grad=value_grad, injected=torch.ones(2, 10))
    row = updates.summarize(attribution)
    assert row["update_entropy"] == pytest.approx(0.0, abs=1e-9)  # all mass on one neuron per layer
    assert row["value_update_entropy"] == pytest.approx(1.0) and row["injected_entropy"] == pytest.approx(1.0)
    assert row["value_gradient_entropy"] == pytest.approx(0.0, abs=1e-9)
    assert row["used_updated_jaccard"] == 1.0 and row["chance_jaccard"] == pytest.approx(1 / 19)  # top 1 of 10
    assert row["used_value_gradient_jaccard"] == 0.0 and row["least_used_value_gradient_share"] == 1.0
    assert row["least_used_value_update_share"] == pytest.approx(0.5)
    assert row["least_used_update_share"] == 0.0 and row["used_gradient_jaccard"] == 1.0  # key_grad = usage
    assert row["least_used_gradient_share"] == pytest.approx((15 / 55 + 65 / 155) / 2)  # 1..5 of 1..10, 11..15 of 11..20
    assert updates.least_used_share(usage, torch.ones(2, 10)) == pytest.approx(0.5)


def _rows(changes: dict | None = None):
    base = {"ke": 0.95, "update_entropy": 0.99, "gradient_entropy": 0.70, "used_updated_jaccard": 0.09,
            "least_used_gradient_share": 0.3, "least_used_update_share": 0.5, "chance_jaccard": 0.05,
            "value_update_entropy": 0.98, "value_gradient_entropy": 0.80, "used_value_updated_jaccard": 0.10}
    rows = [dict(base, label="study", step=300), dict(base, label="study", step=1200, ke=0.92),
            dict(base, label="reactivated (study)", step=1200, ke=0.97)]
    for (i, column), value in (changes or {}).items():
        rows[i][column] = value
    return pd.DataFrame(rows)


def test_findings_follow_their_margins():
    claims = updates.findings(_rows())
    assert all(f.study and f.threshold for f in claims.values())  # the results table's columns
    ceiling, lower = list(claims)[0], "'study': the late checkpoint's gradient entropy is lower than the early one's"
    assert claims[ceiling] and not claims[lower]
    assert updates.findings(_rows({(1, "gradient_entropy"): 0.694}))[lower]  # 0.006 > 0.005
    assert not updates.findings(_rows({(1, "gradient_entropy"): 0.696}))[lower]  # 0.004: no difference
    assert not updates.findings(_rows({(2, "update_entropy"): 0.94}))[ceiling]
    (lifted,) = [c for c in claims if c.startswith("reactivation raises the late checkpoint's gradient entropy")]
    assert "mechanically" in lifted
    assert updates.findings(_rows({(2, "gradient_entropy"): 0.71}))[lifted]
    assert not updates.findings(_rows())[lifted]
    favours = [c for c in updates.findings(_rows()) if c.startswith("in every run the gradient favours")][0]
    assert updates.findings(_rows())[favours]
    assert not updates.findings(_rows({(1, "least_used_gradient_share"): 0.5}))[favours]
    chance = "in every run the most-updated neurons are more often the most-used ones than chance (by 1.5x)"
    assert updates.findings(_rows())[chance] and not updates.findings(_rows({(0, "used_updated_jaccard"): 0.07}))[chance]
    values = "'study': the late checkpoint's value update entropy is lower than the early one's"
    assert not claims[values] and updates.findings(_rows({(1, "value_update_entropy"): 0.97}))[values]
    landing = "'study': the late checkpoint's value updates land more on its most-used neurons"
    assert not claims[landing] and updates.findings(_rows({(1, "used_value_updated_jaccard"): 0.13}))[landing]
    over = "in every run the most-changed values are more often the most-used ones than chance (by 1.5x)"
    assert claims[over] and claims[over].value == pytest.approx(2.0)
    assert not any("forgotten" in c for c in claims)
    contrast = _rows().iloc[:2].assign(label="overtrained (study)")
    assert "'overtrained (study)': the late checkpoint's gradient entropy is lower than the early one's" in \
        updates.findings(pd.concat([_rows(), contrast]))


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return builtin_family(MINI, root=root, progress=False), builtin_setup(MINI, n_background=60, n_heldout=10, root=root), \
        builtin_texts("heldout", 10, MINI, root)


def test_a_run_on_the_mini_family_trains_as_without_the_tracker(mini):
    """The tracked run learns exactly what an untracked one does, and its measures are in range."""
    checkpoints, setup, texts = mini
    train = TrainConfig(lr=3e-3, warmup=1)
    row, tensors = updates.attribute_run(updates.UpdateRun("study", checkpoints[-1]), setup, STREAM, train, texts)
    tokenizer = AutoTokenizer.from_pretrained(checkpoints[-1].path)
    plain = outcome(train_and_evaluate(load_checkpoint(checkpoints[-1]), tokenizer, setup, STREAM, train))
    assert row["gain_paraphrase_mem"] == pytest.approx(plain["gain_paraphrase_mem"], abs=1e-9)
    assert row["label"] == "study" and row["step"] == checkpoints[-1].step
    n_layers, d_ff = MINI.n_layers, MINI.intermediate_size
    for name in ("usage", "key_change", "value_change", "key_grad", "value_grad", "injected"):
        assert getattr(tensors, name).shape == (n_layers, d_ff) and bool((getattr(tensors, name) >= 0).all())
    assert 0 < row["gradient_entropy"] < 1 and 0 < row["update_entropy"] <= 1
    assert 0 < row["value_gradient_entropy"] < 1 and 0 < row["value_update_entropy"] <= 1
    lifted, _ = updates.attribute_run(updates.UpdateRun("reactivated (study)", checkpoints[-1], lift=(0.5, 2.0)),
                                      setup, STREAM, train, texts)
    assert lifted["ke"] > row["ke"]  # reactivated before the usage was measured
