"""End to end on a miniature family: stage experiment and reactivation experiment agree on the
unmodified baseline, are deterministic, and report what they claim to."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer

from helpers import MINI
from ke_utils.batching import text_batches
from ke_utils.checkpoints import load_checkpoint
from ke_utils.continual import TrainConfig
from ke_utils.experiments import Variant, reactivation_experiment, run_stage, stage_experiment, variant_grid
from ke_utils.pretrain import builtin_family, builtin_texts
from ke_utils.setups import builtin_setup
from ke_utils.stats import mean_and_spread
from ke_utils.stream import StreamConfig

STREAM = StreamConfig(rounds=2, interval=2, batch_size=4, seq_len=32, max_injected_rows=2)
TRAIN = TrainConfig(lr=3e-3, warmup=1)


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    checkpoints = builtin_family(MINI, root=root, progress=False)
    setup = builtin_setup(MINI, n_background=60, n_heldout=10, root=root)
    return checkpoints, setup, builtin_texts("heldout", 10, MINI, root)


def test_stage_experiment_rows_and_determinism(mini):
    checkpoints, setup, _ = mini
    results, logs = stage_experiment(checkpoints[1:], setup, STREAM, TRAIN, seeds=(0, 1), progress=False)
    assert list(zip(results.step, results.seed)) == [(3, 0), (6, 0), (3, 1), (6, 1)]
    assert {"acquisition_paraphrase_mem", "acquisition_once_mem", "retention", "forgetting"} <= set(results.columns)
    assert all(math.isfinite(v) for v in results["acquisition_paraphrase_mem"])
    again = run_stage(checkpoints[2], setup, STREAM, TRAIN)
    pd.testing.assert_frame_equal(again.reset_index(drop=True),
                                  logs[(logs.checkpoint == 6) & (logs.seed == 0)].drop(columns="seed").reset_index(drop=True))
    summary = mean_and_spread(results, "step", ["retention"])
    assert list(summary.step) == [3, 6] and (summary["retention_std"] >= 0).all()


def test_reactivation_baseline_equals_plain_continued_training(mini):
    checkpoints, setup, texts = mini
    variants = [Variant("baseline"), Variant("least p=0.5 q=2", 0.5, 2.0)]
    tokenizer = AutoTokenizer.from_pretrained(checkpoints[-1].path)
    model = load_checkpoint(checkpoints[-1])
    before = {n: p.clone() for n, p in model.state_dict().items()}
    results, _ = reactivation_experiment(model, tokenizer, setup, variants, text_batches(tokenizer, texts), STREAM, TRAIN,
                                         seeds=(0,), progress=False)
    assert all(torch.equal(p, before[n]) for n, p in model.state_dict().items())  # the experiment works on copies
    plain, _ = stage_experiment(checkpoints[-1:], setup, STREAM, TRAIN, seeds=(0,), progress=False)
    base = results[results.variant == "baseline"].iloc[0]
    for column in ("acquisition_paraphrase_mem", "acquisition_once_gen", "heldout_loss_change"):
        assert base[column] == pytest.approx(plain[column].iloc[0], rel=1e-9)
    # (a 6-step model knows no fact exactly: retention is 0 / 0 here, compared as NaN)
    assert base["retention"] == pytest.approx(plain["retention"].iloc[0], rel=1e-9, nan_ok=True)
    assert base["heldout_loss_at_start"] == 0.0
    lifted = results[results.variant == "least p=0.5 q=2"].iloc[0]
    assert lifted["ke"] > base["ke"]  # measured after the change, on the same texts


def test_variant_grid_has_baseline_method_and_controls():
    names = [v.name for v in variant_grid(ratios=(0.1, 0.5), factors=(0.5, 1.0), controls=((0.5, 2.0),))]
    assert names == ["baseline", "least p=0.1 q=0.5", "least p=0.1 q=1", "least p=0.5 q=0.5", "least p=0.5 q=1",
                     "random p=0.5 q=2", "most p=0.5 q=2"]
