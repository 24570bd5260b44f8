"""Build the built-in families the notebooks use (once, cached) before the first notebook runs
under nbval, so that no notebook cell spends minutes pretraining while nbval waits on its output."""

from __future__ import annotations

import pytest

import ke_utils  # noqa: F401  first: pins the CPU kernels before any test does tensor work (ke_utils.cpu_kernels)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if item.path.suffix == ".ipynb":
        from ke_utils.pretrain import NOTEBOOK_FAMILIES, builtin_families

        builtin_families(NOTEBOOK_FAMILIES, progress=False)  # returns at once when the families are cached


# Modules that execute notebooks (besides the notebooks themselves, which nbval runs).
EXECUTES_NOTEBOOKS = {"test_real_run.py", "test_browser.py"}


def pytest_collection_modifyitems(items):
    """Mark what executes notebooks ``notebooks``: ``python -m pytest -m "not notebooks"`` is the
    quick run of the package's own tests (README, "For contributors")."""
    for item in items:
        if item.path.suffix == ".ipynb" or item.path.name in EXECUTES_NOTEBOOKS:
            item.add_marker(pytest.mark.notebooks)
