"""The main job: build the built-in family if needed, execute every notebook headless, in order,
into ``results/`` (executed copies and figures), and print each notebook's key numbers.

    python -m ke_utils.run_notebooks [--only 02] [--out results]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from .pretrain import NOTEBOOK_FAMILIES, builtin_family
from .report import MARKER

ROOT = Path(__file__).resolve().parents[1]


def _key_numbers(notebook) -> list[dict]:
    found = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            for line in output.get("text", "").splitlines():
                if line.startswith(MARKER):
                    found.append(json.loads(line[len(MARKER):]))
    return found


def run(paths: list[Path], out: Path, timeout: int = 1800) -> list[dict]:
    """Execute ``paths`` in order with nbclient; figures go to ``out/<notebook>/``."""
    import nbformat
    from nbclient import NotebookClient

    out.mkdir(parents=True, exist_ok=True)
    summary = []
    for path in paths:
        notebook = nbformat.read(path, as_version=4)
        os.environ["KE_RESULTS_DIR"] = str((out / path.stem).resolve())
        start = time.perf_counter()
        try:
            NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                           resources={"metadata": {"path": str(path.parent)}}).execute()
        finally:  # a failed notebook is kept as far as it ran, with the error in its cell
            nbformat.write(notebook, out / path.name)
        seconds = time.perf_counter() - start
        numbers = _key_numbers(notebook)
        summary.append({"notebook": path.name, "seconds": round(seconds, 1), "numbers": numbers})
        print(f"\n== {path.name} ({seconds:.0f} s) -> {out / path.name}")
        for entry in numbers:
            print("   " + ", ".join(f"{k}={v}" for k, v in entry.items() if k != "notebook"))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebooks", type=Path, default=ROOT / "notebooks")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    parser.add_argument("--only", help="run only notebooks whose name contains this")
    args = parser.parse_args(argv)
    paths = sorted(p for p in args.notebooks.glob("*.ipynb") if not args.only or args.only in p.name)
    if not paths:
        raise SystemExit(f"no notebooks in {args.notebooks}")
    for name in NOTEBOOK_FAMILIES:
        builtin_family(name)
    run(paths, args.out)
    print(f"\nexecuted {len(paths)} notebook(s); results in {args.out}")


if __name__ == "__main__":
    main()
