"""The main job's notebook runner: parameters set the way papermill sets them, key numbers read
back from the executed notebook."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import time
from queue import Empty

import nbformat
import pytest

from ke_utils.commands import run_notebooks
from ke_utils.commands.run_notebooks import inject_parameters, parse_parameter, run


def notebook(tagged: bool = True, parameters: str = "FULL = False\nSEEDS = [0]"):
    cells = [nbformat.v4.new_markdown_cell("# tiny"),
             nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"] if tagged else []}),
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


def test_kernels_side_by_side_keep_their_results_apart(tmp_path):
    """``jobs=2``: two kernels at once, each writing its key numbers to its own folder; the summary
    keeps the order of the paths."""
    paths = [tmp_path / f"{name}.ipynb" for name in ("b", "a")]
    for seeds, path in zip(("[0]", "[0, 1]"), paths):
        nbformat.write(notebook(parameters=f"FULL = False\nSEEDS = {seeds}"), path)
    summary = run(paths, tmp_path / "out", timeout=120, jobs=2)
    assert [s["notebook"] for s in summary] == ["b.ipynb", "a.ipynb"]
    assert [s["numbers"][0]["seeds"] for s in summary] == [1, 2]


def test_main_builds_the_builtin_families_only_for_a_builtin_subject(tmp_path, monkeypatch):
    """A real-checkpoint run (SUBJECT a hub id or folder) does not spend minutes pretraining the
    built-in families; the default run builds them first."""
    built, ran = [], []
    monkeypatch.setattr(run_notebooks, "builtin_families", built.extend)
    monkeypatch.setattr(run_notebooks, "run", lambda paths, out, timeout, parameters, jobs: ran.append(parameters) or [])
    nbformat.write(notebook(parameters='SUBJECT, DEVICE, PRETRAIN_SEED = "builtin", "cpu", 0'), tmp_path / "01.ipynb")
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


def test_bad_arguments_end_with_one_line_and_nothing_runs(tmp_path, monkeypatch, capsys):
    """A misspelt parameter, a seed that names no family, an --only that matches nothing, a missing
    folder, a zero count, a results folder without summary.json: one line naming the argument,
    exit status 2, no family built and no notebook run."""
    nbformat.write(notebook(parameters="SEEDS = [0]\nPRETRAIN_SEED = 0"), tmp_path / "01_a.ipynb")
    nbformat.write(notebook(parameters="FULL = False"), tmp_path / "02_b.ipynb")
    monkeypatch.setattr(run_notebooks, "builtin_families", lambda names: pytest.fail("built a family"))
    monkeypatch.setattr(run_notebooks, "run", lambda *a: pytest.fail("ran a notebook"))

    def error(*argv) -> str:
        with pytest.raises(SystemExit) as exit_:
            run_notebooks.main(["--notebooks", str(tmp_path), "--out", str(tmp_path / "out"), *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and len(err) == 1 and err[0].startswith("ke-notebooks: error: "), err
        return err[0]

    line = error("-p", "SEEDZ=[0, 1]")
    assert "-p SEEDZ" in line and "FULL, PRETRAIN_SEED, SEEDS" in line
    assert "-p FULL" in error("--only", "01", "-p", "FULL=True")  # a parameter of a notebook not chosen
    assert "PRETRAIN_SEED='one'" in error("-p", "PRETRAIN_SEED=one") and "-1" in error("-p", "PRETRAIN_SEED=-1")
    line = error("--only", "07")
    assert "--only '07'" in line and "01_a, 02_b" in line
    assert "no such folder" in error("--notebooks", str(tmp_path / "nope"))
    assert "--jobs 0" in error("--jobs", "0")
    (tmp_path / "file").write_text("x")
    assert "--out" in error("--out", str(tmp_path / "file"))
    assert "summary.json" in error("--findings-table", str(tmp_path))
    assert not (tmp_path / "out").exists()


class MissedWakeUp:
    """A kernel channel whose poll misses the wake-up of a message already there (pyzmq's asyncio
    poller can): it finds the message only when its timeout ends."""

    def __init__(self, message):
        self.message, self.calls = message, 0

    async def get_msg(self, timeout=None):
        self.calls += 1
        if timeout is None:
            await asyncio.Event().wait()  # woken by nothing: only a timeout would end this wait
        await asyncio.sleep(timeout)
        if self.message is None:
            raise Empty
        return self.message


def test_a_missed_wake_up_costs_one_slice_not_the_cell_timeout():
    """The runner waits for kernel messages in slices: a reply that arrived unnoticed is taken at
    the end of the first slice (0.05 s here), not at the end of the cell's timeout (60 s)."""
    channel = MissedWakeUp({"msg_type": "execute_reply"})
    run_notebooks.poll_in_slices(channel, slice_s=0.05)
    start = time.monotonic()
    assert asyncio.run(asyncio.wait_for(channel.get_msg(timeout=60), 5)) == {"msg_type": "execute_reply"}
    assert time.monotonic() - start < 1
    asyncio.run(asyncio.wait_for(channel.get_msg(), 5))  # no timeout: still taken at the end of a slice
    silent = MissedWakeUp(None)
    run_notebooks.poll_in_slices(silent, slice_s=0.05)
    start = time.monotonic()
    with pytest.raises(Empty):  # nothing came: Empty at the caller's deadline, not at the first slice
        asyncio.run(silent.get_msg(timeout=0.3))
    assert 0.28 < time.monotonic() - start < 2 and silent.calls >= 6
