"""What the study (Kim et al., 2024, arXiv 2410.01380) reported, so that notebooks state the
paper's claim next to our measurement (docs/method.md sections 2-4).

The numbers live in ``data/study_numbers.csv``, one row per reported value with the table or figure
it comes from; :func:`reported` reads them. This module keeps only where the study's checkpoints
are on the hub, and a few values derived from that file for code defaults.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pandas as pd

from .training import lr_at

STUDY_NUMBERS = Path(__file__).resolve().parents[1] / "data" / "study_numbers.csv"
BASELINE = "baseline (peak LR 4e-4)"


@cache
def _table() -> pd.DataFrame:
    if not STUDY_NUMBERS.exists():
        raise FileNotFoundError(f"{STUDY_NUMBERS} is missing: install ke_utils from a checkout of the repository "
                                "(pip install -e .), which has data/")
    return pd.read_csv(STUDY_NUMBERS, dtype={"checkpoint": str})


def reported(quantity: str | None = None, setting: str | None = None) -> pd.DataFrame:
    """The study's reported numbers (columns ``quantity, checkpoint, setting, value, unit,
    source``), optionally only one ``quantity`` and/or ``setting``; raises KeyError for a name
    the file does not have."""
    table = _table()
    for column, wanted in (("quantity", quantity), ("setting", setting)):
        if wanted is not None:
            if wanted not in set(table[column]):
                raise KeyError(f"no {column} {wanted!r} in {STUDY_NUMBERS.name}; it has {sorted(set(table[column]))}")
            table = table[table[column] == wanted]
    return table.reset_index(drop=True)


def value(quantity: str, setting: str = BASELINE) -> float:
    """The single reported value of ``quantity`` under ``setting`` (e.g. ``pearson_ke_acquisition``)."""
    rows = reported(quantity, setting)
    if len(rows) != 1:
        raise ValueError(f"{quantity} under {setting!r} has {len(rows)} values, not one: use reported()")
    return float(rows["value"].iloc[0])


def table1(setting: str = BASELINE) -> pd.DataFrame:
    """Table 1 as one row per checkpoint step: ``step, acquisition, forgetting`` (%), for
    ``setting`` (forgetting is NaN where the study gave none)."""
    rows = reported(setting=setting)
    rows = rows[rows["quantity"].isin(["acquisition", "forgetting"])]
    wide = rows.pivot(index="checkpoint", columns="quantity", values="value")
    wide.index = wide.index.astype(int)
    return wide.reindex(columns=["acquisition", "forgetting"]).rename_axis("step").reset_index().rename_axis(None, axis=1)


# Where those four checkpoints are on the Hugging Face hub. The study used the original OLMo-1B run
# (Groeneveld et al., 2024), whose hub repository is allenai/OLMo-1B (loaded with hf_olmo, the
# ai2-olmo package); each checkpoint there is a branch named step{N}-tokens{T}B, T = N x 4,194,304
# tokens rounded to billions. The paper's rounded steps are these exact ones: 118k is step 117850
# (the run has no checkpoint from there to step 330000), and 738k is the final step 738020, the one the
# authors' code starts from (github.com/kaistAI/Knowledge-Entropy), not step 738000.
OLMO_1B_REPO = "allenai/OLMo-1B"
OLMO_1B_STEPS = (118_000, 369_000, 554_000, 738_000)  # how the paper labels them (Table 1), rounded
OLMO_1B_CHECKPOINT_STEPS = (117_850, 369_000, 554_000, 738_020)
OLMO_1B_REVISIONS = ("step117850-tokens494B", "step369000-tokens1548B", "step554000-tokens2324B",
                     "step738020-tokens3095B")
# The same run converted to transformers' own Olmo classes (no hf_olmo needed). Its branch names give
# slightly different token counts (step738020-tokens3094B, step369000-tokens1547B), so select the
# study's checkpoints there by step: select(hub_checkpoints(OLMO_1B_HF_REPO), steps=OLMO_1B_CHECKPOINT_STEPS).
OLMO_1B_HF_REPO = "allenai/OLMo-1B-hf"

# OLMo-1B's pretraining schedule (allenai/OLMo configs/official/OLMo-1B.yaml): linear warmup over
# 2,000 steps to 4e-4, then cosine to 0.1 x at the end of the run (about 739k steps).
OLMO_1B_SCHEDULE = {"peak": 4e-4, "warmup": 2_000, "total": 739_000, "shape": "cosine", "final_ratio": 0.1}


def olmo_1b_lr(step: int) -> float:
    """OLMo-1B's pretraining learning rate at ``step`` (from its configuration, not its logs)."""
    return lr_at(step, **OLMO_1B_SCHEDULE)

# Values code uses as defaults, read from the file above.
CONTINUED_PEAK_LR = value("continued_peak_lr")  # continued training's peak LR (section 3), OLMo-1B's own
RESUSCITATION_FACTORS = tuple(reported("resuscitation_factor")["value"])  # q, with p = 0.5 (section 4)
OLMO_1B_NORMALIZED = tuple(reported("normalized_knowledge_entropy")["value"])  # first and last, read off Figure 1

# How many checkpoints the study's Pearson correlations (Table 1's r, section 4.3's p) fit: its
# p-values, 6e-5 for r = 0.94 and 1e-5 for r = -0.96, are what 10 points give (5e-5 and 1e-5), not
# Table 1's 4 (0.06 and 0.04); its Figure 4 plots more checkpoints than Table 1. Inferred, not stated.
CORRELATION_POINTS = 10

DECAY_CLAIM = "knowledge entropy declines steadily as pretraining advances"
RESUSCITATION_CLAIM = ("lifting the least-used half of the memory neurons (q >= 1) of the final checkpoint raises its KE, "
                       "and it then acquires more and forgets less than the unmodified checkpoint")
