"""What the study (Kim et al., 2024, arXiv 2410.01380) reported, so that notebooks state the
paper's claim next to our measurement (docs/method.md sections 2-4).

The numbers live in ``data/study_numbers.csv``, one row per reported value with the table or figure
it comes from; :func:`reported` reads them. This module keeps only where the study's checkpoints
are on the hub, a few values derived from that file for code defaults, and :data:`HUB_FAMILIES`:
the one table of what the code knows of a hub repository of checkpoints (OLMo-1B's two, and
SmolLM3-3B's as a second pretraining run whose schedule is known).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
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


def table1_change(quantity: str, setting: str = BASELINE) -> str:
    """Table 1's ``quantity`` (``"acquisition"`` or ``"forgetting"``, %) from the study's first to its
    last checkpoint under ``setting``, in words for a results table."""
    rows = table1(setting).dropna(subset=[quantity])
    first, last = rows.iloc[0], rows.iloc[-1]
    return (f"{quantity[0].upper()} {first[quantity]:g}% at step {int(first['step']):,} → {last[quantity]:g}% at "
            f"{int(last['step']):,} (OLMo-1B, Table 1)")


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


# SmolLM3-3B's pretraining checkpoints, as the model card of its repository describes them
# (huggingface.co/HuggingFaceTB/SmolLM3-3B-checkpoints). The first stage's checkpoints are branches
# named stage1-step-{N}, one every 40,000 steps. AdamW's learning rate rose linearly from 0 to 2e-4
# over the first 2,000 steps and then held at 2e-4; it starts to fall (linearly, to 0) only after step
# 4,198,001. The data mixture changed at steps 3,450,000 (stage 2) and 4,200,000 (stage 3), so
# checkpoints within stage 1 differ only in how long they trained, on one mixture at one learning
# rate: the clean comparison, and the only one the defaults here make.
SMOLLM3_REPO = "HuggingFaceTB/SmolLM3-3B-checkpoints"
SMOLLM3_SCHEDULE = {"peak": 2e-4, "warmup": 2_000, "stable_until": 4_198_001}
SMOLLM3_STAGE_STARTS = (3_450_000, 4_200_000)  # where stages 2 and 3 (new data mixtures) begin
SMOLLM3_CHECKPOINT_EVERY = 40_000  # stage 1's checkpoint interval
# Four stage-1 checkpoints at about the fractions of stage 1 at which the study's four sit in OLMo-1B's
# run (16%, 50%, 75%, 100%), on the 40,000-step grid; 3,440,000 is the last grid step before stage 2.
# Not checked against the hub's branch list here (no network): a missing one is select()'s ValueError,
# which names the nearest steps there are.
SMOLLM3_STAGES = (560_000, 1_720_000, 2_600_000, 3_440_000)


def smollm3_lr(step: int) -> float:
    """SmolLM3-3B's pretraining learning rate after ``step`` updates, from its model card: a linear
    warmup from 0 to 2e-4 over 2,000 steps (:func:`~ke_utils.training.lr_at`'s convention, as for
    OLMo-1B), then 2e-4 through step 4,198,001. After that step the card's schedule decays linearly
    to 0, but the step at which the decay ends is not recorded here, so rather than guess this raises
    a ValueError there (and for a negative step)."""
    peak, warmup, last = SMOLLM3_SCHEDULE["peak"], SMOLLM3_SCHEDULE["warmup"], SMOLLM3_SCHEDULE["stable_until"]
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step > last:
        raise ValueError(f"SmolLM3-3B's learning rate at step {step:,} is unknown here: it decays linearly to 0 after step "
                         f"{last:,}, and the step where that decay ends is not recorded (set LR_OF to your own schedule)")
    return lr_at(step, peak, warmup, last, shape="constant")


@dataclass(frozen=True)
class HubFamily:
    """What the code knows of a hub repository whose branches are checkpoints of one pretraining run.

    ``lr``: the pretraining learning rate after ``step`` updates (the run's schedule). ``stages``:
    four default starting checkpoints (steps), early to late, in the places of the study's four of
    OLMo-1B (a notebook that starts from some of the study's four starts from the same places of
    these: :func:`~ke_utils.subjects.default_stages`). ``revisions``: a regular expression
    (``re.search``) of the branch names that are its checkpoints by default and the only ones ``lr``
    is known for (None: every branch whose name parses)."""

    repo: str
    lr: Callable[[int], float]
    stages: tuple[int, ...]
    revisions: str | None = None

    def lr_of(self, checkpoint) -> float:
        """The pretraining learning rate of ``checkpoint`` (a :class:`~ke_utils.checkpoints.Checkpoint`
        of this family): ValueError for a branch outside ``revisions``, or where ``lr`` is unknown."""
        if self.revisions is not None and re.search(self.revisions, checkpoint.name) is None:
            raise ValueError(f"the pretraining learning rate of {self.repo} at {checkpoint.name!r} is unknown here: only "
                             f"branches matching {self.revisions!r} are known (set LR_OF to your own schedule)")
        return self.lr(checkpoint.step)


# The one table of hub families, by repository id: subjects.load_subject (which branches),
# subjects.default_stages (where to start) and continual.pretraining_lr_of (the learning rate) read it.
HUB_FAMILIES: dict[str, HubFamily] = {family.repo: family for family in (
    HubFamily(OLMO_1B_REPO, olmo_1b_lr, OLMO_1B_CHECKPOINT_STEPS),
    HubFamily(OLMO_1B_HF_REPO, olmo_1b_lr, OLMO_1B_CHECKPOINT_STEPS),
    HubFamily(SMOLLM3_REPO, smollm3_lr, SMOLLM3_STAGES, revisions=r"^stage1-step-\d+$"),
)}


def hub_family(subject: str) -> HubFamily | None:
    """The table's entry for a subject (a hub repository id), None for any other subject."""
    return HUB_FAMILIES.get(subject)

# Values code uses as defaults, read from the file above.
CONTINUED_PEAK_LR = value("continued_peak_lr")  # continued training's peak LR (section 3), OLMo-1B's own
RESUSCITATION_FACTORS = tuple(reported("resuscitation_factor")["value"])  # q, with p = 0.5 (section 4)
OLMO_1B_NORMALIZED = tuple(reported("normalized_knowledge_entropy")["value"])  # first and last, read off Figure 1

# How many checkpoints the study's Pearson correlations (Table 1's r, section 4.3's p) fit: its
# p-values, 6e-5 for r = 0.94 and 1e-5 for r = -0.96, are what 10 points give (5e-5 and 1e-5), not
# Table 1's 4 (0.06 and 0.04); its Figure 4 plots more checkpoints than Table 1. Inferred, not stated.
CORRELATION_POINTS = 10

DECAY_CLAIM = "knowledge entropy declines steadily as pretraining advances"
DECAY_REPORTED = (f"normalised KE {OLMO_1B_NORMALIZED[0]:g} → {OLMO_1B_NORMALIZED[1]:g} from OLMo-1B's first to its last "
                  "checkpoint (Figure 1, read off the curve)")
RESUSCITATION_CLAIM = ("lifting the least-used half of the memory neurons (q >= 1) of the final checkpoint raises its KE, "
                       "and it then acquires more and forgets less than the unmodified checkpoint")
