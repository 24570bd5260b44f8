"""Student copies of the notebooks: every code cell tagged ``exercise`` has its solution, the lines
between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` (nbgrader's markers), replaced by a stub that
raises ``NotImplementedError`` with the hint written on the ``### HINT:`` line; the check that
follows stays, so the student sees it fail, then pass.

    ke-exercises          # writes notebooks/exercises/*.ipynb
    ke-exercises --check  # exit 1 if a copy is out of date (CI runs this test)
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
    return any(TAG in cell.metadata.get("tags", []) for cell in notebook.cells if cell.cell_type == "code")


def build(folder: Path = NOTEBOOKS, check: bool = False) -> list[str]:
    """Write (or, with ``check``, compare) the student copy of every notebook in ``folder`` that has
    exercises; returns the names of the copies that were out of date (all of them when writing)."""
    stale = []
    for path in sorted(folder.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        if not has_exercises(notebook):
            continue
        target = folder / STUDENT_DIR / path.name
        text = nbformat.writes(student_copy(notebook)) + "\n"
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            stale.append(path.name)
            if not check:
                target.parent.mkdir(exist_ok=True)
                target.write_text(text, encoding="utf-8")
    return stale


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ke-exercises", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report copies that are out of date (exit 1)")
    args = parser.parse_args(argv)
    stale = build(check=args.check)
    if args.check and stale:
        print("out of date (run ke-exercises):", ", ".join(stale))
        sys.exit(1)
    print(("up to date" if args.check else f"wrote {len(stale)} student notebook(s)") + f" in {NOTEBOOKS / STUDENT_DIR}")


if __name__ == "__main__":
    main()
