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
    low_lr = study.table1("peak LR 1e-4")
    assert low_lr["forgetting"].isna().all() and not low_lr["acquisition"].is_monotonic_decreasing
    assert study.value("pearson_ke_acquisition") == 0.94 and study.CONTINUED_PEAK_LR == 4e-4
    assert study.RESUSCITATION_FACTORS == (0.5, 1.0, 2.0, 3.0)


def test_unknown_names_are_clear_errors():
    with pytest.raises(KeyError, match="it has"):
        study.reported("acquisiton")
    with pytest.raises(ValueError, match="use reported"):
        study.value("acquisition")
