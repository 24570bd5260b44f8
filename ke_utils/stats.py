"""Statistics for stating results: correlations with their p-value and confidence interval
(SciPy), and mean with spread over seeds."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats


@dataclass(frozen=True)
class Correlation:
    """A correlation coefficient ``r`` with its two-sided ``pvalue`` and confidence interval
    ``[low, high]`` over ``n`` pairs."""

    r: float
    pvalue: float
    low: float
    high: float
    n: int
    method: str
    confidence: float = 0.95

    def __str__(self) -> str:
        p = "p < 1e-4" if self.pvalue < 1e-4 else f"p = {self.pvalue:.2g}"
        return (f"r = {self.r:+.2f} ({self.confidence:.0%} CI {self.low:+.2f} to {self.high:+.2f}, "
                f"{p}, n = {self.n}, {self.method})")


EXACT_SPEARMAN_N = 9  # up to here the Spearman p-value is exact, over all n! orders (362,880 for 9)


def _exact_spearman_p(x: np.ndarray, y: np.ndarray, r: float) -> float:
    """Two-sided p-value of Spearman's ``r`` over every pairing of ``x`` with a reordering of ``y``
    (average ranks for ties): the share of orders at least as correlated."""
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    orders = ry[np.array(list(itertools.permutations(range(len(y)))))]  # [n!, n]
    cx, cy = rx - rx.mean(), orders - orders.mean(axis=1, keepdims=True)
    rho = (cy @ cx) / (np.sqrt((cy**2).sum(axis=1)) * np.sqrt((cx**2).sum()))
    return float(np.mean(np.abs(rho) >= abs(r) - 1e-12))


def correlation(x: Sequence[float], y: Sequence[float], method: str = "pearson",
                confidence: float = 0.95) -> Correlation:
    """Pearson or Spearman correlation of ``x`` and ``y`` with p-value and confidence interval.

    Pearson: ``scipy.stats.pearsonr`` and its Fisher-z interval. Spearman: ``scipy.stats.spearmanr``
    (p-value exact over every order of ``y`` for ``n <= 9``, where SciPy's t approximation fails);
    SciPy gives it no interval, so it is the Fisher-z interval with the standard error
    ``sqrt(1.06 / (n - 3))`` of Fieller, Hartley and Pearson (1957). With ``n <= 3`` that interval
    is undefined and reported as (-1, 1). A constant side gives NaN throughout.
    """
    if method not in ("pearson", "spearman"):
        raise ValueError(f"method must be 'pearson' or 'spearman', not {method!r}")
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError(f"need two sequences of equal length >= 2, got {x.shape} and {y.shape}")
    n = len(x)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return Correlation(math.nan, math.nan, math.nan, math.nan, n, method, confidence)
    if method == "pearson":
        result = stats.pearsonr(x, y)
        if n > 3:
            interval = result.confidence_interval(confidence)
            low, high = float(interval.low), float(interval.high)
        else:
            low, high = -1.0, 1.0
        r, p = float(result.statistic), float(result.pvalue)
    else:
        result = stats.spearmanr(x, y)
        r, p = float(result.statistic), float(result.pvalue)
        if n <= EXACT_SPEARMAN_N:  # the t approximation gives p = 0 for a perfect rank order of 4 (exact: 1/12)
            p = _exact_spearman_p(x, y, r)
        if n > 3 and abs(r) < 1:
            half = stats.norm.ppf(0.5 + confidence / 2) * math.sqrt(1.06 / (n - 3))
            low, high = math.tanh(math.atanh(r) - half), math.tanh(math.atanh(r) + half)
        elif n > 3:
            low = high = r
        else:
            low, high = -1.0, 1.0
    return Correlation(r, p, low, high, n, method, confidence)


def fisher_interval(r: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Confidence interval of a Pearson correlation ``r`` reported over ``n`` pairs (Fisher's z,
    standard error ``1 / sqrt(n - 3)``, as SciPy's ``pearsonr`` gives it); (-1, 1) for ``n <= 3``.
    For a correlation someone else reported, when only ``r`` and ``n`` are known."""
    if not -1 < r < 1:
        raise ValueError(f"r must be in (-1, 1), got {r}")
    if n <= 3:
        return -1.0, 1.0
    half = stats.norm.ppf(0.5 + confidence / 2) / math.sqrt(n - 3)
    return math.tanh(math.atanh(r) - half), math.tanh(math.atanh(r) + half)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN if either side is constant."""
    return correlation(x, y, "spearman").r


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; NaN if either side is constant."""
    return correlation(x, y, "pearson").r


def mean_and_spread(frame: pd.DataFrame, by: str, columns: Sequence[str]) -> pd.DataFrame:
    """Mean of ``columns`` over the rows of each ``by`` group (e.g. over seeds), with the standard
    deviation as ``<column>_std`` (0 with a single row); groups in order of first appearance."""
    grouped = frame.groupby(by, sort=False)[list(columns)]
    spread = grouped.std(ddof=1).fillna(0.0).add_suffix("_std")
    return grouped.mean().join(spread).reset_index()


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of ``values`` (independent runs, e.g. one per pretraining
    seed) with a Student-t confidence interval; NaN bounds with fewer than two values."""
    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half
