"""The exercises work with nbgrader as they are, and the students' copies run to their end.

nbgrader for real: ``generate_assignment`` on a small notebook made of the exercise and check cells of
notebooks 03 (acquisition and forgetting) and 05 (the LR jump), the two cheapest (arithmetic, no model),
then ``autograde`` of three submissions: the instructor's version (every point), the released version
untouched (no point: an unfinished exercise fails under nbgrader) and one with a mistake (one point).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from ke_utils.commands.exercise_notebooks import NOTEBOOKS, STUDENT_DIR, grading_pairs

pytestmark = pytest.mark.notebooks
EXERCISES = {"03_acquisition_and_retention.ipynb": "exercise-a-and-f", "05_is_it_the_entropy.ipynb": "exercise-lr-jump"}


def _small_assignment() -> nbformat.NotebookNode:
    """The exercise and check cells named in :data:`EXERCISES`, in one notebook with the kernel of the first."""
    cells, metadata = [], None
    for name, exercise_id in EXERCISES.items():
        notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
        metadata = metadata or notebook.metadata
        cells += [cell for pair in grading_pairs(notebook)[0] if pair[0].id == exercise_id for cell in pair]
    assert len(cells) == 2 * len(EXERCISES)
    return nbformat.v4.new_notebook(cells=cells, metadata=metadata)


def _nbgrader(course: Path, *args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "nbgrader", *args, "--CourseDirectory.root=" + str(course)],
                          cwd=course, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


def test_nbgrader_generate_and_autograde(tmp_path):
    pytest.importorskip("nbgrader")
    from nbgrader.api import Gradebook

    source = tmp_path / "source" / "ps1" / "exercises.ipynb"
    source.parent.mkdir(parents=True)
    nbformat.write(_small_assignment(), source)
    (tmp_path / "nbgrader_config.py").write_text('c = get_config()\nc.CourseDirectory.course_id = "ke"\n')
    _nbgrader(tmp_path, "generate_assignment", "ps1", "--force")
    released = tmp_path / "release" / "ps1" / "exercises.ipynb"
    assert "BEGIN SOLUTION" not in released.read_text() and "raise NotImplementedError()" in released.read_text()

    mistake = source.read_text().replace("return continued_peak / own", "return own / continued_peak")
    assert mistake != source.read_text()
    for student, text in {"alice": source.read_text(), "bob": released.read_text(), "carol": mistake}.items():
        submitted = tmp_path / "submitted" / student / "ps1" / "exercises.ipynb"
        submitted.parent.mkdir(parents=True)
        submitted.write_text(text)
    start = time.perf_counter()
    _nbgrader(tmp_path, "autograde", "ps1", "--force")
    print(f"nbgrader autograde, 3 submissions: {time.perf_counter() - start:.1f} s")

    with Gradebook(f"sqlite:///{tmp_path / 'gradebook.db'}") as gradebook:
        scores = {s: gradebook.find_submission("ps1", s).score for s in ("alice", "bob", "carol")}
        assert gradebook.find_assignment("ps1").max_score == 2
    assert scores == {"alice": 2, "bob": 0, "carol": 1}
    graded = json.loads((tmp_path / "autograded" / "carol" / "ps1" / "exercises.ipynb").read_text())
    errors = [o for c in graded["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert [e["ename"] for e in errors] == ["AssertionError"] and "inverted" in errors[0]["evalue"]


def test_student_copy_runs_to_the_end(tmp_path):
    """The student copy of notebook 01, exercises left undone, runs to its last cell (nbclient raises on an
    error): each check says the exercise is not done and the notebook goes on with ke_utils' implementation."""
    from nbclient import NotebookClient

    from ke_utils.pretrain import NOTEBOOK_FAMILIES, builtin_families

    # The notebook families, both at once (side by side on 2 cores, as conftest.py builds them for nbval),
    # rather than one here inside the kernel and the other later: on a fresh clone this runs first.
    builtin_families(NOTEBOOK_FAMILIES, progress=False)
    copy = tmp_path / "01_what_is_knowledge_entropy.ipynb"
    shutil.copy(NOTEBOOKS / STUDENT_DIR / copy.name, copy)
    notebook = nbformat.read(copy, as_version=4)
    start = time.perf_counter()
    NotebookClient(notebook, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    print(f"student copy of notebook 01 executed in {time.perf_counter() - start:.0f} s")
    checks = [cell for _, cell in grading_pairs(notebook)[0]]
    assert checks and all("exercise not done yet: using ke_utils' implementation"
                          in "".join(o.get("text", "") for o in cell.outputs) for cell in checks)
