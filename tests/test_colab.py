"""The notebooks' first cell (``ke_utils.colab``): the same text in every notebook, a no-op where
``ke_utils`` is installed, an offline install into a fresh environment that lacks it, and a device
that ``-p DEVICE=...`` still overrides."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import nbformat
import pytest

from ke_utils.colab import NOTEBOOKS, SETUP_CELL, pick_device, put_setup_cell
from ke_utils.commands.run_notebooks import inject_parameters, notebook_parameters

ROOT = Path(__file__).resolve().parents[1]
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))


def tagged(notebook, tag: str) -> int:
    return next(i for i, cell in enumerate(notebook.cells) if tag in cell.metadata.get("tags", []))


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_every_notebook_starts_with_the_setup_cell(path):
    notebook = nbformat.read(path, as_version=4)
    first = next(cell for cell in notebook.cells if cell.cell_type == "code")
    assert first.source == SETUP_CELL, f"{path.name}: run python -m ke_utils.colab to rewrite its setup cell"
    assert "setup" in first.metadata.get("tags", []) and tagged(notebook, "setup") < tagged(notebook, "parameters")
    assert "DEVICE" in notebook_parameters(path)


def run_cells(notebook, upto: str) -> dict:
    """Execute the code cells of ``notebook`` up to the one tagged ``upto``, in one namespace."""
    namespace: dict = {}
    for cell in notebook.cells[: tagged(notebook, upto) + 1]:
        if cell.cell_type == "code":
            exec(cell.source, namespace)
    return namespace


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_device_is_picked_installs_nothing_and_can_be_set(path, monkeypatch):
    def no_install(*args, **kwargs):
        raise AssertionError(f"the setup cell ran {args} although ke_utils is installed")

    monkeypatch.setattr(subprocess, "check_call", no_install)
    notebook = nbformat.read(path, as_version=4)
    assert run_cells(notebook, "parameters")["DEVICE"] == pick_device()
    inject_parameters(notebook, {"DEVICE": "cuda"})
    assert run_cells(notebook, "injected-parameters")["DEVICE"] == "cuda"


def test_put_setup_cell_inserts_before_the_parameters_once():
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# title"),
                                               nbformat.v4.new_code_cell("X = 1", metadata={"tags": ["parameters"]})])
    assert put_setup_cell(notebook) and not put_setup_cell(notebook)
    assert [cell.source for cell in notebook.cells] == ["# title", SETUP_CELL, "X = 1"]
    notebook.cells[1].source = "old"
    assert put_setup_cell(notebook) and notebook.cells[1].source == SETUP_CELL and len(notebook.cells) == 3


@pytest.mark.slow
def test_the_setup_cell_installs_ke_utils_into_a_fresh_environment_offline(tmp_path):
    """A virtual environment without ke_utils whose other requirements come from this one's
    site-packages as plain path entries (so its editable install of ke_utils is not processed):
    the cell installs this checkout (no index, no build isolation: nothing from the network) and
    picks the CPU; a new interpreter of that environment then imports this checkout's ke_utils."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site_packages = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   check=True, capture_output=True, text=True).stdout.strip()
    ours = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    Path(site_packages, "requirements.pth").write_text("\n".join(ours) + "\n")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(KE_UTILS_SOURCE=str(ROOT), PIP_NO_INDEX="1", PIP_NO_BUILD_ISOLATION="0",  # "0": no isolation
               PIP_DISABLE_PIP_VERSION_CHECK="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")

    def in_venv(code: str) -> str:
        return subprocess.run([python, "-c", code], cwd=tmp_path, env=env, check=True,
                              capture_output=True, text=True).stdout.strip()

    assert in_venv("import importlib.util; print(importlib.util.find_spec('ke_utils'))") == "None"
    assert in_venv(SETUP_CELL + "\nprint(AUTO_DEVICE)").splitlines()[-1] == "cpu"
    assert in_venv("import ke_utils; print(ke_utils.__file__)") == str(ROOT / "ke_utils" / "__init__.py")
