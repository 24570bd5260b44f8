"""Small statistics without SciPy: rank correlation and mean with spread over seeds."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN if either side is constant."""
    x, y = pd.Series(list(x), dtype=float), pd.Series(list(y), dtype=float)
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"need two sequences of equal length >= 2, got {len(x)} and {len(y)}")
    rx, ry = x.rank().to_numpy(), y.rank().to_numpy()
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; NaN if either side is constant."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def mean_and_spread(frame: pd.DataFrame, by: str, columns: Sequence[str]) -> pd.DataFrame:
    """Mean of ``columns`` over the rows of each ``by`` group (e.g. over seeds), with the standard
    deviation as ``<column>_std`` (0 with a single row); groups in order of first appearance."""
    grouped = frame.groupby(by, sort=False)[list(columns)]
    spread = grouped.std(ddof=1).fillna(0.0).add_suffix("_std")
    return grouped.mean().join(spread).reset_index()
