"""The study's reported numbers come from data/study_numbers.csv, each with its source."""

from __future__ import annotations

import pytest

from ke_utils import study


def test_every_reported_number_names_its_source():
    table = study.reported()
    assert {"quantity", "checkpoint", "setting", "value", "unit", "source"} <= set(table.columns)
    assert table["source"].str.match(r"(Table|Figure|Section) \d").all()
    assert not table.duplicated(["quantity", "checkpoint", "setting", "value"]).any()


def test_table_1_is_read_at_the_studys_checkpoints():
    baseline = study.table1()
    assert tuple(baseline["step"]) == study.OLMO_1B_CHECKPOINT_STEPS
    assert baseline["acquisition"].is_monotonic_decreasing and baseline["forgetting"].is_monotonic_increasing
    low_lr = study.table1("peak LR 1e-4")  # A does not decline at a quarter of the LR; F still rises
    assert low_lr["forgetting"].is_monotonic_increasing and not low_lr["acquisition"].is_monotonic_decreasing
    high_lr = study.table1("peak LR 1e-3")
    assert high_lr["acquisition"].iloc[-1] < high_lr["acquisition"].iloc[0] and high_lr["forgetting"].isna().all()
    assert study.value("pearson_ke_acquisition") == 0.94 and study.CONTINUED_PEAK_LR == 4e-4
    assert study.RESUSCITATION_FACTORS == (0.5, 1.0, 2.0, 3.0)


def test_unknown_names_are_clear_errors():
    with pytest.raises(KeyError, match="it has"):
        study.reported("acquisiton")
    with pytest.raises(ValueError, match="use reported"):
        study.value("acquisition")


def test_the_studys_p_values_fit_its_correlation_points_not_table_1s_four():
    """CORRELATION_POINTS is inferred from the reported p-values: with it, a Pearson test of the
    reported r gives them back (within a factor of 2); with Table 1's 4 points it would not."""
    import math

    from scipy import stats

    def p_value(r, n):
        t = abs(r) * math.sqrt(n - 2) / math.sqrt(1 - r * r)
        return 2 * stats.t.sf(t, n - 2)

    for measure in ("ke_acquisition", "ke_forgetting"):
        r, reported = study.value(f"pearson_{measure}"), study.value(f"pearson_p_{measure}")
        assert reported / 2 < p_value(r, study.CORRELATION_POINTS) < reported * 2
        assert p_value(r, 4) > 100 * reported
