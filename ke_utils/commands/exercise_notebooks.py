"""Student copies of the notebooks: every code cell tagged ``exercise`` has its solution, the lines
between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` (nbgrader's markers), replaced by a stub that
raises ``NotImplementedError`` with the hint written on the ``### HINT:`` line. Each exercise cell
(id ``X``) is followed by its check cell (id ``X-check``), which calls
:func:`ke_utils.exercises.check_or_fallback`: the student sees the check fail, then pass, and an
unfinished exercise falls back to the package's implementation so the notebook runs to its end.

Both cells carry nbgrader's metadata (the exercise a solution cell with grade id ``X``, the check an
autograded test cell ``X-check`` worth one point), which this command writes into the main
notebooks, so that ``nbgrader generate_assignment`` and ``autograde`` work on them as they are.

    ke-exercises          # adds the nbgrader metadata, writes notebooks/exercises/*.ipynb
    ke-exercises --check  # exit 1 if metadata or a copy is out of date, or a check cell is missing (CI runs this test)
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import nbformat

TAG = "exercise"
BEGIN, END, HINT = "### BEGIN SOLUTION", "### END SOLUTION", "### HINT:"
NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
STUDENT_DIR = "exercises"
CHECK_SUFFIX = "-check"


def stub_solution(source: str) -> str:
    """``source`` with each solution block replaced by ``raise NotImplementedError(hint)`` at its
    indentation; the ``### HINT:`` line (inside the block) becomes the message. A block without a
    hint, or markers out of order, is a ValueError."""
    out, block = [], None
    for line in source.splitlines():
        stripped = line.strip()
        if stripped == BEGIN:
            if block is not None:
                raise ValueError("nested ### BEGIN SOLUTION")
            block = {"indent": line[: len(line) - len(line.lstrip())], "hint": None}
        elif stripped == END:
            if block is None or block["hint"] is None:
                raise ValueError("### END SOLUTION without a BEGIN, or a solution block without a ### HINT: line")
            out.append(f"{block['indent']}raise NotImplementedError({block['hint']!r})")
            block = None
        elif block is not None:
            if stripped.startswith(HINT):
                block["hint"] = stripped[len(HINT):].strip()
        else:
            out.append(line)
    if block is not None:
        raise ValueError("### BEGIN SOLUTION without an END")
    return "\n".join(out)


def student_copy(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The student version of ``notebook``: exercise cells stubbed, every output cleared, links to
    the project's folders one level further up (the copy lives in ``notebooks/exercises/``)."""
    student = copy.deepcopy(notebook)
    for cell in student.cells:
        if cell.cell_type == "code":
            if TAG in cell.metadata.get("tags", []):
                cell.source = stub_solution(cell.source)
            cell.outputs, cell.execution_count = [], None
        else:
            cell.source = re.sub(r"\]\(\.\./", "](../../", cell.source)
    return student


def has_exercises(notebook: nbformat.NotebookNode) -> bool:
    return bool(exercise_cells(notebook))


def exercise_cells(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in notebook.cells if cell.cell_type == "code" and TAG in cell.metadata.get("tags", [])]


def solution_metadata(grade_id: str) -> dict:
    """nbgrader's metadata of an exercise cell: a solution cell, not graded itself."""
    return {"grade": False, "grade_id": grade_id, "locked": False, "schema_version": 3, "solution": True, "task": False}


def check_metadata(grade_id: str) -> dict:
    """nbgrader's metadata of a check cell: an autograded test cell worth one point, locked."""
    return {"grade": True, "grade_id": grade_id, "locked": True, "points": 1, "schema_version": 3, "solution": False,
            "task": False}


def grading_pairs(notebook: nbformat.NotebookNode) -> tuple[list[tuple[nbformat.NotebookNode, nbformat.NotebookNode]], list[str]]:
    """Each exercise cell with its check cell (id ``<exercise id>-check``, after it, calling
    ``check_or_fallback``), and what is wrong with the cells that have none."""
    position = {cell.get("id"): i for i, cell in enumerate(notebook.cells)}
    pairs, wrong = [], []
    for cell in exercise_cells(notebook):
        check_id = f"{cell.get('id')}{CHECK_SUFFIX}"
        if "id" not in cell or check_id not in position:
            wrong.append(f"exercise cell {cell.get('id')!r} has no check cell with id {check_id!r}")
        elif position[check_id] < position[cell.id] or "check_or_fallback(" not in notebook.cells[position[check_id]].source:
            wrong.append(f"check cell {check_id!r} must follow its exercise and call check_or_fallback")
        else:
            pairs.append((cell, notebook.cells[position[check_id]]))
    return pairs, wrong


def add_grading(notebook: nbformat.NotebookNode) -> list[str]:
    """Set nbgrader's metadata on every exercise cell and its check cell of ``notebook`` (in place);
    returns the ids of the cells that lacked it or had other metadata."""
    changed = []
    for exercise, check in grading_pairs(notebook)[0]:
        for cell, wanted in ((exercise, solution_metadata(exercise.id)), (check, check_metadata(check.id))):
            if cell.metadata.get("nbgrader") != wanted:
                cell.metadata["nbgrader"] = wanted
                changed.append(cell.id)
    return changed


def build(folder: Path = NOTEBOOKS, check: bool = False) -> list[str]:
    """Add nbgrader's metadata to the main notebooks in ``folder`` that have exercises and write
    their student copies (with ``check``, only compare); returns what was out of date, one line per
    notebook whose metadata or copy changed."""
    stale = []
    for path in sorted(folder.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        if not has_exercises(notebook):
            continue
        if changed := add_grading(notebook):
            stale.append(f"{path.name}: nbgrader metadata of {', '.join(changed)}")
            if not check:
                nbformat.write(notebook, path)
        target = folder / STUDENT_DIR / path.name
        text = nbformat.writes(student_copy(notebook)) + "\n"
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            stale.append(f"{path.name}: student copy")
            if not check:
                target.parent.mkdir(exist_ok=True)
                target.write_text(text, encoding="utf-8")
    return stale


def problems(folder: Path = NOTEBOOKS) -> list[str]:
    """Exercises in ``folder``'s notebooks without a proper check cell (written by hand, never fixed here)."""
    return [f"{path.name}: {problem}" for path in sorted(folder.glob("*.ipynb"))
            for problem in grading_pairs(nbformat.read(path, as_version=4))[1]]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ke-exercises", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report copies that are out of date (exit 1)")
    args = parser.parse_args(argv)
    if wrong := problems(NOTEBOOKS):
        print("exercises without a proper check cell:", *wrong, sep="\n  ")
        sys.exit(1)
    stale = build(NOTEBOOKS, check=args.check)
    if args.check and stale:
        print("out of date (run ke-exercises):", *stale, sep="\n  ")
        sys.exit(1)
    print(("updated: " + "; ".join(stale) if stale else "up to date") + f" ({NOTEBOOKS / STUDENT_DIR})")


if __name__ == "__main__":
    main()
