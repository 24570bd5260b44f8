"""Build the built-in family (once, cached) before the first notebook runs under nbval, so that
no notebook cell spends minutes pretraining while nbval waits on its output."""

from __future__ import annotations

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if item.path.suffix == ".ipynb":
        from ke_utils.pretrain import builtin_family

        builtin_family(progress=False)  # returns at once when the family is cached
