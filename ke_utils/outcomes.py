"""What continued training did to a model: acquisition of new knowledge and retention (or
forgetting) of old, as the study defines them, from an evaluation log."""

from __future__ import annotations

import pandas as pd


# Below this share of exact match above its floor before training, forgetting_above_floor is a
# ratio of two small, noisy numbers (a checkpoint that knew 1 fact in 100 above guessing can "lose
# -200 %" of it): it is NaN there.
MIN_ABOVE_FLOOR = 0.05


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
    """What a run did, from its log, relative to ``before`` (default: the log's first row, the
    model before continued training). For every ``<regime>_<kind>`` of probes:

    - ``acquisition_*``: the study's A, which divides by where the run started;
    - ``logprob_after_*`` (K after, nats per target token), ``exact_*`` (exact match after) and
      ``gain_*`` (K after - K before, nats): measures that do not depend on the start;
    - ``gain_beyond_control_*``: the gain minus the gain of the same kind of probe on *control*
      people, who are never injected (when the log has them): what was learned about the injected
      people, not about the format or the values (a difference in differences: it also removes
      any gap between the two sets of people that was there before training);
    - ``logprob_after_beyond_control_*``: K after minus the controls' K after (that gap, at the end).

    Also ``heldout_loss_change``, and ``retention`` and ``forgetting`` when the log has a
    ``retention_score``; with retention probes, ``retention_logprob_change`` (nats, a continuous
    measure of what was forgotten), ``retention_floor`` (P's floor at the end) and
    ``forgetting_above_floor`` (the share of P above its floor that was lost: exact match on
    10-16-way facts does not fall to 0 when they are forgotten; NaN where the model knew less
    than :data:`MIN_ABOVE_FLOOR` above the floor before).
    """
    before, after = (log.iloc[0] if before is None else before), log.iloc[-1]
    out = {}
    for column in log.columns:
        if column.startswith("logprob_"):
            name = column[len("logprob_"):]
            out[f"acquisition_{name}"] = acquisition(before[column], after[column])
            out[f"logprob_after_{name}"] = after[column]
            out[f"exact_{name}"] = after[f"exact_{name}"]
            out[f"gain_{name}"] = after[column] - before[column]
    for name in [n[len("gain_"):] for n in out if n.startswith("gain_") and not n.startswith("gain_control_")]:
        kind = name.split("_", 1)[1]
        if f"gain_control_{kind}" in out:
            out[f"gain_beyond_control_{name}"] = out[f"gain_{name}"] - out[f"gain_control_{kind}"]
            out[f"logprob_after_beyond_control_{name}"] = out[f"logprob_after_{name}"] - out[f"logprob_after_control_{kind}"]
    if "retention_score" in log.columns:  # absent when retention was not measured
        out["retention"] = retention(before["retention_score"], after["retention_score"])
        out["forgetting"] = forgetting(before["retention_score"], after["retention_score"])
    if "retention_floor" in log.columns:  # the part of P above what guessing the attribute's values gives
        out["retention_floor"] = after["retention_floor"]
        margin = before["retention_score"] - before["retention_floor"]
        out["forgetting_above_floor"] = (forgetting(margin, after["retention_score"] - after["retention_floor"])
                                         if margin >= MIN_ABOVE_FLOOR else float("nan"))
    if "retention_logprob" in log.columns:
        out["retention_logprob_change"] = after["retention_logprob"] - before["retention_logprob"]
    out["heldout_loss_change"] = after["heldout_loss"] - before["heldout_loss"]
    return out


def late_gain(logs: pd.DataFrame, column: str, by: str | list[str], fraction: float = 1 / 3) -> pd.Series:
    """How much ``column`` rose over the last ``fraction`` of each run of ``logs`` (evaluation
    logs with a ``step`` column; runs told apart by ``by``, means over any other rows of a step).
    Near 0 for every run means the runs had converged before they ended, and nothing measured at
    the end can separate them."""
    end = logs["step"].max()
    start = end - fraction * end - 1e-9  # (1 - 1/3) * 9 is 6.000000000000001 in floating point
    curve = logs[logs["step"] >= start].groupby([*([by] if isinstance(by, str) else by), "step"])[column].mean()
    ends = curve.groupby(level=list(range(curve.index.nlevels - 1)))
    return ends.last() - ends.first()
