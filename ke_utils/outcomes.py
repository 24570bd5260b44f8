"""What continued training did to a model: acquisition of new knowledge and retention (or
forgetting) of old, as the study defines them, from an evaluation log."""

from __future__ import annotations

import pandas as pd


def acquisition(before: float, after: float) -> float:
    """The study's acquisition ``A = (K_after - K_before) / |K_before|`` for log-prob scores K."""
    return (after - before) / abs(before)


def retention(before: float, after: float) -> float:
    """``P_after / P_before`` for a score P (higher = better); NaN when ``P_before`` is 0 (nothing
    was known, so nothing can be retained or forgotten)."""
    return float(after) / float(before) if before else float("nan")


def forgetting(before: float, after: float) -> float:
    """The study's forgetting ``F = (P_before - P_after) / P_before = 1 - retention``."""
    return 1.0 - retention(before, after)


def outcome(log: pd.DataFrame, before: pd.Series | None = None) -> dict:
    """Acquisition per regime and probe kind, exact match after, and retention, from a run's log,
    relative to ``before`` (default: the log's first row, the model before continued training)."""
    before, after = (log.iloc[0] if before is None else before), log.iloc[-1]
    out = {}
    for column in log.columns:
        if column.startswith("logprob_"):
            name = column[len("logprob_"):]
            out[f"acquisition_{name}"] = acquisition(before[column], after[column])
            out[f"exact_{name}"] = after[f"exact_{name}"]
    out["retention"] = retention(before["retention_score"], after["retention_score"])
    out["forgetting"] = forgetting(before["retention_score"], after["retention_score"])
    out["heldout_loss_change"] = after["heldout_loss"] - before["heldout_loss"]
    return out
