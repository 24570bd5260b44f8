"""The main job: build the built-in family if needed, execute every notebook headless, in order,
into ``results/`` (executed copies and figures), and print each notebook's key numbers.

    python -m ke_utils.run_notebooks [--only 02] [--out results] [-p NAME=VALUE ...]

``-p FULL=True`` sets a parameter the way papermill does: a cell tagged ``injected-parameters``
after the notebook's cell tagged ``parameters``.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import resource
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


def inject_parameters(notebook, parameters: dict, name: str = "notebook") -> None:
    """Insert ``NAME = value`` lines, as a cell tagged ``injected-parameters``, after the cell
    tagged ``parameters`` (papermill's convention); raises ValueError if there is none."""
    import nbformat

    tagged = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    if not tagged:
        raise ValueError(f"{name} has no cell tagged 'parameters' to set {sorted(parameters)} after")
    source = "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
    notebook.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))


def parse_parameter(text: str) -> tuple[str, object]:
    """``"NAME=VALUE"`` -> ``(NAME, VALUE)``, VALUE a Python literal (a bare word is a string)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return key.strip(), ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        return key.strip(), value.strip()


def run(paths: list[Path], out: Path, timeout: int = 1800, parameters: dict | None = None) -> list[dict]:
    """Execute ``paths`` in order with nbclient; figures go to ``out/<notebook>/``. Reports each
    notebook's wall time and the peak memory (RSS) of the largest kernel run so far: run one
    notebook (``--only``) to get its own."""
    import nbformat
    from nbclient import NotebookClient

    out.mkdir(parents=True, exist_ok=True)
    summary = []
    for path in paths:
        notebook = nbformat.read(path, as_version=4)
        if parameters:
            inject_parameters(notebook, parameters, path.name)
        os.environ["KE_RESULTS_DIR"] = str((out / path.stem).resolve())
        start = time.perf_counter()
        try:
            NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                           resources={"metadata": {"path": str(path.parent)}}).execute()
        finally:  # a failed notebook is kept as far as it ran, with the error in its cell
            nbformat.write(notebook, out / path.name)
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # kB on Linux
        numbers = _key_numbers(notebook)
        summary.append({"notebook": path.name, "seconds": round(seconds, 1), "peak_kernel_mb": round(peak), "numbers": numbers})
        print(f"\n== {path.name} ({seconds:.0f} s, largest kernel so far {peak:.0f} MB) -> {out / path.name}")
        for entry in numbers:
            print("   " + ", ".join(f"{k}={v}" for k, v in entry.items() if k != "notebook"))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebooks", type=Path, default=ROOT / "notebooks")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    parser.add_argument("--only", help="run only notebooks whose name contains this")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds a cell may run (default 1800)")
    parser.add_argument("-p", "--param", type=parse_parameter, action="append", default=[], metavar="NAME=VALUE",
                        help="set a parameter (a Python literal), e.g. -p FULL=True; repeatable")
    args = parser.parse_args(argv)
    paths = sorted(p for p in args.notebooks.glob("*.ipynb") if not args.only or args.only in p.name)
    if not paths:
        raise SystemExit(f"no notebooks in {args.notebooks}")
    parameters = dict(args.param)
    if str(parameters.get("SUBJECT", "builtin")).startswith("builtin"):  # a hub or local subject needs no build
        for name in NOTEBOOK_FAMILIES:
            builtin_family(name)
    run(paths, args.out, args.timeout, parameters)
    print(f"\nexecuted {len(paths)} notebook(s); results in {args.out}")


if __name__ == "__main__":
    main()
