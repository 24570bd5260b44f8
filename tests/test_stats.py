"""Correlations with their p-value and interval (SciPy), against values worked out by hand."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from ke_utils.stats import correlation, fisher_interval, mean_interval, pearson, spearman

Z95 = 1.959963984540054
Z90 = 1.6448536269514722


def test_pearson_with_its_fisher_interval():
    c = correlation([1, 2, 3, 4], [1, 3, 2, 4])
    # r = cov / (sd sd) = 4 / 5; Fisher z = atanh(0.8), standard error 1 / sqrt(n - 3) = 1
    assert c.r == pytest.approx(0.8)
    assert (c.low, c.high) == pytest.approx((math.tanh(math.atanh(0.8) - Z95), math.tanh(math.atanh(0.8) + Z95)))
    # two-sided t test: t = r sqrt(n - 2) / sqrt(1 - r^2) = 0.8 sqrt(2) / 0.6, 2 degrees of freedom
    t = 0.8 * math.sqrt(2) / 0.6
    assert c.pvalue == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)  # closed form of the t(2) tail
    assert "r = +0.80 (95% CI -0.70 to +1.00, p = 0.2, n = 4, pearson)" == str(c)


def test_spearman_uses_ranks_and_the_fieller_interval():
    c = correlation([1, 2, 3, 4, 5], [2, 1, 4, 3, 5], "spearman")
    # ranks differ by d = (1, 1, 1, 1, 0): rho = 1 - 6 * 4 / (5 * 24) = 0.8
    assert c.r == pytest.approx(0.8)
    half = Z95 * math.sqrt(1.06 / 2)
    assert (c.low, c.high) == pytest.approx((math.tanh(math.atanh(0.8) - half), math.tanh(math.atanh(0.8) + half)))
    assert correlation([1, 2, 3, 4], [1, 4, 9, 100], "spearman").r == pytest.approx(1.0)  # monotone
    assert correlation([1, 2, 2, 3], [1, 2, 3, 4], "spearman").r == pytest.approx(0.9486833, rel=1e-6)  # ties


def test_degenerate_inputs():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        constant = correlation([1, 1, 1, 1], [1, 2, 3, 4])
        assert math.isnan(constant.r) and math.isnan(constant.pvalue)
        assert (correlation([1, 2, 3], [3, 1, 2]).low, correlation([1, 2, 3], [3, 1, 2]).high) == (-1.0, 1.0)
    with pytest.raises(ValueError, match="equal length"):
        correlation([1], [2])
    with pytest.raises(ValueError, match="method"):
        correlation([1, 2], [2, 1], "kendall")


def test_spearman_p_value_and_other_confidence_levels():
    # y ranks (1, 3, 2, 4): rho = 1 - 6 * (0 + 1 + 1 + 0) / (4 * 15) = 0.8; atanh(0.8) = ln 3. The exact
    # p over the 24 orders: |rho| >= 0.8 for the identity, its 3 adjacent swaps and their 4 reversals,
    # 8 / 24 (SciPy's t approximation says 0.2, and 0 for a perfect order of 4, where the exact p is 1/12)
    c = correlation([1, 2, 3, 4], [1, 9, 4, 100], "spearman")
    assert (c.r, c.pvalue) == pytest.approx((0.8, 1 / 3))
    assert correlation([1, 2, 3, 4], [4, 3, 2, 1], "spearman").pvalue == pytest.approx(1 / 12)
    tied = correlation([1, 2, 3, 4, 5], [2, 2, 3, 1, 5], "spearman")  # ties: the same as SciPy's permutation test
    assert tied.pvalue == pytest.approx(19 / 30)
    assert "p < 1e-4, n = 12" in str(correlation(range(12), range(12), "spearman"))  # beyond exact: no "p = 0"
    half = Z95 * math.sqrt(1.06 / 1)
    assert (c.low, c.high) == pytest.approx((math.tanh(math.log(3) - half), math.tanh(math.log(3) + half)))
    ninety = correlation([1, 2, 3, 4], [1, 3, 2, 4], confidence=0.9)
    assert (ninety.low, ninety.high) == pytest.approx((math.tanh(math.log(3) - Z90), math.tanh(math.log(3) + Z90)))
    assert "(90% CI -0.50 to +0.99," in str(ninety)
    short = correlation([1, 2, 3], [3, 1, 2], "spearman")  # n <= 3: no interval
    assert (short.r, short.low, short.high) == (pytest.approx(-0.5), -1.0, 1.0)
    perfect = correlation([1, 2, 3, 4, 5], [2, 4, 6, 8, 10], "spearman")
    assert (perfect.r, perfect.low, perfect.high) == pytest.approx((1.0, 1.0, 1.0))


def test_plain_float_helpers_of_the_notebooks():
    # y = (1, 4, 9, 100): deviations (-27.5, -24.5, -19.5, 71.5) against (-1.5, -0.5, 0.5, 1.5),
    # sum of products 151, sums of squares 6849 and 5
    assert pearson([1, 2, 3, 4], [1, 4, 9, 100]) == pytest.approx(151 / math.sqrt(5 * 6849))
    assert spearman([1, 2, 3, 4], [1, 4, 9, 100]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(spearman([1, 1, 1], [1, 2, 3])) and math.isnan(pearson([1, 2, 3], [5, 5, 5]))
        constant = correlation([1, 2, 3, 4], [7, 7, 7, 7], "spearman")
    assert all(math.isnan(v) for v in (constant.r, constant.pvalue, constant.low, constant.high))


def test_mean_interval_is_the_student_t_interval():
    mean, low, high = mean_interval([1.0, 2.0, 6.0])  # mean 3, sd sqrt(7), t(0.975, 2) = 4.302653
    half = 4.302653 * math.sqrt(7) / math.sqrt(3)
    assert mean == pytest.approx(3.0) and low == pytest.approx(3 - half, rel=1e-6) and high == pytest.approx(3 + half, rel=1e-6)
    assert mean_interval([1.0, 2.0, 6.0], 0.5)[2] < high
    single = mean_interval([0.4])
    assert single[0] == 0.4 and math.isnan(single[1]) and math.isnan(single[2])


def test_fisher_interval_of_a_reported_correlation():
    """The interval SciPy gives our own data, from r and n alone; the study's r = 0.94 over its four
    checkpoints does not exclude a negative correlation."""
    x, y = np.arange(6.0), np.array([0.1, 1.3, 1.9, 3.4, 3.8, 5.2])
    ours = correlation(x, y)
    assert fisher_interval(ours.r, 6) == pytest.approx((ours.low, ours.high), abs=1e-9)
    low, high = fisher_interval(0.94, 4)
    assert low < 0 < 0.94 < high < 1
    assert fisher_interval(0.5, 3) == (-1.0, 1.0)
    with pytest.raises(ValueError):
        fisher_interval(1.0, 10)
