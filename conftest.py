"""Test-session setup: one share of the cores per pytest-xdist worker, long work scheduled first, and the
built-in families the notebooks use built (once, cached) before the first notebook runs under nbval, so
that no notebook cell spends minutes pretraining while nbval waits on its output."""

from __future__ import annotations

import os

import pytest

MAX_WORKERS = 4  # more would each start notebook kernels of 0.6-1 GB for little gain

_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:  # a worker: before torch loads here or in a kernel or process it starts
    _threads = str(max(1, _CORES // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    os.environ.setdefault("OMP_NUM_THREADS", _threads)
    os.environ.setdefault("MKL_NUM_THREADS", _threads)

import ke_utils  # noqa: E402,F401  before any test does tensor work: pins the CPU kernels (ke_utils.cpu_kernels)

# Modules that execute notebooks (besides the notebooks themselves, which nbval runs).
EXECUTES_NOTEBOOKS = {"test_real_run.py", "test_browser.py"}


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (pyproject's addopts): one worker per core this process may use (a container's cpuset
    counts, the host's cores do not), at most :data:`MAX_WORKERS`."""
    return max(1, min(_CORES, MAX_WORKERS))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if item.path.suffix == ".ipynb":
        from ke_utils.pretrain import NOTEBOOK_FAMILIES, builtin_families

        builtin_families(NOTEBOOK_FAMILIES, progress=False)  # returns at once when the families are cached


def _rank(item) -> tuple[int, int]:
    """Long work first, so that the workers finish together: the notebooks (the highest-numbered, the
    longest, first; the first one builds the families on both cores), then the other modules that start
    processes or kernels, then the rest."""
    if item.path.suffix == ".ipynb":
        return (0, -int(item.path.name[:2]))
    slow = item.get_closest_marker("slow") or item.get_closest_marker("notebooks")
    return (1, 0) if slow else (2, 0)


def pytest_collection_modifyitems(items):
    """Mark what executes notebooks ``notebooks`` (``python -m pytest -m "not notebooks"`` is the quick
    run of the package's own tests, README "For contributors"), and order the files by :func:`_rank`
    (whole files, so module fixtures are made once; pyproject's ``--dist loadfile`` keeps a file on one
    worker and hands files out in this order)."""
    for item in items:
        if item.path.suffix == ".ipynb" or item.path.name in EXECUTES_NOTEBOOKS:
            item.add_marker(pytest.mark.notebooks)
    file_rank: dict = {}
    for item in items:
        file_rank[item.path] = min(file_rank.get(item.path, (9, 0)), _rank(item))
    items.sort(key=lambda item: file_rank[item.path])  # stable: a file's tests keep their order
