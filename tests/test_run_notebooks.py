"""The main job's notebook runner: parameters set the way papermill sets them, key numbers read
back from the executed notebook."""

from __future__ import annotations

import argparse
import json
import shutil

import nbformat
import pytest

from ke_utils.commands import run_notebooks
from ke_utils.commands.run_notebooks import inject_parameters, parse_parameter, run


def notebook(tagged: bool = True):
    cells = [nbformat.v4.new_markdown_cell("# tiny"),
             nbformat.v4.new_code_cell("FULL = False\nSEEDS = [0]", metadata={"tags": ["parameters"] if tagged else []}),
             nbformat.v4.new_code_cell("from ke_utils import report\n"
                                       "report.key_numbers('tiny', full=FULL, seeds=len(SEEDS))")]
    return nbformat.v4.new_notebook(cells=cells)


def test_parse_parameter():
    assert parse_parameter("FULL=True") == ("FULL", True)
    assert parse_parameter("SEEDS=[0, 1]") == ("SEEDS", [0, 1])
    assert parse_parameter("SUBJECT=builtin:decayed") == ("SUBJECT", "builtin:decayed")  # a bare word is a string
    for bad in ("FULL", "1x=3", "=3"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_parameter(bad)


def test_parameters_are_injected_after_the_parameters_cell():
    nb = notebook()
    inject_parameters(nb, {"FULL": True, "SEEDS": [0, 1]})
    assert nb.cells[2].metadata["tags"] == ["injected-parameters"]
    assert nb.cells[2].source == "FULL = True\nSEEDS = [0, 1]"
    namespace = {}
    for cell in nb.cells[1:3]:
        exec(cell.source, namespace)
    assert namespace["FULL"] is True and namespace["SEEDS"] == [0, 1]
    with pytest.raises(ValueError, match="no cell tagged 'parameters'"):
        inject_parameters(notebook(tagged=False), {"FULL": True})


def test_run_executes_with_the_parameters_and_reads_the_key_numbers(tmp_path):
    path = tmp_path / "tiny.ipynb"
    nbformat.write(notebook(), path)
    (summary,) = run([path], tmp_path / "out", timeout=120, parameters={"SEEDS": [0, 1, 2]})
    assert summary["numbers"] == [{"notebook": "tiny", "full": False, "seeds": 3}]
    assert summary["seconds"] > 0 and summary["peak_kernel_mb"] > 10
    assert (tmp_path / "out" / "tiny.ipynb").exists()


def test_main_builds_the_builtin_families_only_for_a_builtin_subject(tmp_path, monkeypatch):
    """A real-checkpoint run (SUBJECT a hub id or folder) does not spend minutes pretraining the
    built-in families; the default run builds them first."""
    built, ran = [], []
    monkeypatch.setattr(run_notebooks, "builtin_families", built.extend)
    monkeypatch.setattr(run_notebooks, "run", lambda paths, out, timeout, parameters, jobs: ran.append(parameters) or [])
    (tmp_path / "01.ipynb").write_text("{}")
    run_notebooks.main(["--notebooks", str(tmp_path), "-p", "SUBJECT=allenai/OLMo-1B-hf", "-p", "DEVICE=cuda"])
    assert built == [] and ran == [{"SUBJECT": "allenai/OLMo-1B-hf", "DEVICE": "cuda"}]
    run_notebooks.main(["--notebooks", str(tmp_path)])
    assert built == list(run_notebooks.NOTEBOOK_FAMILIES) and ran[-1] == {}
    run_notebooks.main(["--notebooks", str(tmp_path), "-p", "PRETRAIN_SEED=3"])  # the seeded families, not seed 0's
    assert built[2:] == [f"{name}-seed3" for name in run_notebooks.NOTEBOOK_FAMILIES]


def test_a_failed_notebook_does_not_stop_the_others_and_fails_the_job(tmp_path, monkeypatch, capsys):
    """The main job runs every notebook, records each one's status and first error line, prints a
    summary table and exits non-zero when any failed."""
    broken = notebook()
    broken.cells.append(nbformat.v4.new_code_cell("assert SEEDS == [], 'expected finding not observed: x'"))
    nbformat.write(broken, tmp_path / "01_broken.ipynb")
    fine = notebook()
    fine.cells.append(nbformat.v4.new_code_cell("report.finding('a claim', True, value=1.5)"))
    nbformat.write(fine, tmp_path / "02_fine.ipynb")
    monkeypatch.setattr(run_notebooks, "builtin_families", lambda names: None)
    with pytest.raises(SystemExit) as exit_:
        run_notebooks.main(["--notebooks", str(tmp_path), "--out", str(tmp_path / "out"), "--timeout", "120"])
    assert exit_.value.code == 1
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [(e["notebook"], e["status"]) for e in summary] == [("01_broken.ipynb", "failed"), ("02_fine.ipynb", "ok")]
    assert summary[0]["error"] == "AssertionError: expected finding not observed: x" and "error" not in summary[1]
    assert summary[1]["numbers"] == [{"notebook": "tiny", "full": False, "seeds": 1}]
    assert summary[1]["findings"] == [{"claim": "a claim", "observed": True, "required": False, "value": 1.5}]
    printed = capsys.readouterr().out
    assert "01_broken.ipynb  failed" in printed and "AssertionError: expected finding not observed: x" in printed
    assert "2 notebook(s), 1 failed" in printed
    shutil.copytree(tmp_path / "out", tmp_path / "again")
    run_notebooks.main(["--findings-table", str(tmp_path / "out"), str(tmp_path / "again")])
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| notebook | finding | out | again |" and table[2] == "| 02 | a claim | yes (1.5) | yes (1.5) |"
