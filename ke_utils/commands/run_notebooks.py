"""The main job: build the built-in family if needed, execute every notebook headless, in order,
into ``results/`` (executed copies and figures), and print each notebook's key numbers.

    ke-notebooks [--only 02] [--out results] [--threads 1] [--jobs 2] [-p NAME=VALUE ...]

Every notebook runs even when an earlier one fails. It prints, and writes to
``results/summary.json``, each notebook's status (``"ok"`` or ``"failed"`` with its first error
line), wall time and kernel peak memory (``--threads 1`` for the one CPU Binder gives), then a
summary table; it exits with status 1 if any notebook failed.

``-p FULL=True`` sets a parameter the way papermill does: a cell tagged ``injected-parameters``
after the notebook's cell tagged ``parameters``.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from queue import Empty

from ..cpu_kernels import environment
from ..pretrain import NOTEBOOK_FAMILIES, builtin_families
from ..report import FINDINGS_FILE, KEY_NUMBERS_FILE, findings_table, read_findings, read_key_numbers
from .inputs import BadInput, one_line_errors, output_folder
from .site import write_site

ROOT = Path(__file__).resolve().parents[2]


def _kernel_peak_mb(client) -> float | None:
    """Peak resident memory (``VmHWM``) of ``client``'s kernel process so far, in MB; None where
    ``/proc`` cannot tell (not Linux, or a kernel not started as a local process)."""
    try:
        status = Path(f"/proc/{client.km.provisioner.pid}/status").read_text()
    except (AttributeError, TypeError, OSError):
        return None
    return next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmHWM:")), None)


POLL_SLICE_S = 1.0  # longest wait on a kernel message before looking again


def poll_in_slices(channel, slice_s: float = POLL_SLICE_S) -> None:
    """Make an async kernel channel's ``get_msg(timeout)`` wait in slices of ``slice_s`` seconds.
    pyzmq's asyncio poller can miss the wake-up of a message that has arrived (the socket's
    notification is edge-triggered); it then finds the message only when its timeout ends. nbclient
    waits for a cell's reply with the whole cell timeout, so on a busy machine a cell of this
    collection stood idle for the full timeout (600 s in the test suite, 1800 s here) and then went
    on as if nothing had happened. Each slice ends with a look at the socket, so a missed wake-up
    costs at most ``slice_s``; ``Empty`` is still raised at the caller's own deadline."""
    get_msg = channel.get_msg

    async def sliced(timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = slice_s if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return await get_msg(timeout=min(slice_s, left))
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    channel.get_msg = sliced


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


def notebook_parameters(path: Path) -> set[str]:
    """The names the cell tagged ``parameters`` of the notebook at ``path`` assigns."""
    import nbformat

    names: set[str] = set()
    for cell in nbformat.read(path, as_version=4).cells:
        if "parameters" in cell.metadata.get("tags", []):
            for node in ast.walk(ast.parse(cell.source)):
                if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                    names.add(node.id)
    return names


def chosen_notebooks(folder: Path, only: str | None) -> list[Path]:
    """The notebooks in ``folder`` whose name contains ``only`` (all without it), in order."""
    if not folder.is_dir():
        raise BadInput(f"--notebooks {folder}: no such folder; give the folder that holds the notebooks")
    every = sorted(folder.glob("*.ipynb"))
    paths = [p for p in every if not only or only in p.name]
    if not paths:
        names = ", ".join(p.stem for p in every) or "none"
        raise BadInput(f"--only {only!r} matches no notebook in {folder}; its notebooks: {names}" if only else
                       f"--notebooks {folder} holds no notebook (*.ipynb)")
    return paths


def check_parameters(parameters: dict, paths: list[Path]) -> None:
    """Every name in ``parameters`` must be a parameter of at least one of ``paths`` (a misspelt
    name would otherwise be set and silently ignored); ``PRETRAIN_SEED`` must be a whole number >= 0."""
    known = {path.name: notebook_parameters(path) for path in paths}
    for name in parameters:
        if not any(name in names for names in known.values()):
            every = sorted(set().union(*known.values()))
            raise BadInput(f"-p {name}: no notebook run here has a parameter {name}; they have {', '.join(every)}")
    seed = parameters.get("PRETRAIN_SEED", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise BadInput(f"-p PRETRAIN_SEED={seed!r}: give a whole number >= 0 (0 is the default family)")


def run(paths: list[Path], out: Path, timeout: int = 1800, parameters: dict | None = None,
        jobs: int = 1) -> list[dict]:
    """Execute ``paths`` with nbclient, each in a fresh kernel, ``jobs`` at a time (in order for
    1); executed copies go to ``out/``, figures and key numbers to ``out/<notebook>/``. Returns
    (and writes to ``out/summary.json``) per notebook, in the order of ``paths``, its status
    (``"ok"``, or ``"failed"`` and ``error``, its first error line), wall time, its kernel's peak
    memory and key numbers (the package versions go to ``out/environment.json``); a failed
    notebook does not stop the others. With ``jobs > 1`` give each kernel fewer threads
    (``OMP_NUM_THREADS``), or they compete for the same cores."""
    out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        summary = list(pool.map(lambda path: _execute(path, out, timeout, parameters), paths))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "environment.json").write_text(json.dumps(environment(), indent=2))
    return summary


def _execute(path: Path, out: Path, timeout: int, parameters: dict | None) -> dict:
    """One notebook of :func:`run`: executed, written out, its key numbers printed."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    if parameters:
        inject_parameters(notebook, parameters, path.name)
    results = (out / path.stem).resolve()
    for file in (KEY_NUMBERS_FILE, FINDINGS_FILE):
        (results / file).unlink(missing_ok=True)
    peak: dict[str, float | None] = {"mb": None}
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            extra_arguments=["--IPKernelApp.log_level=ERROR"],  # not its TCP-transport notice
                            resources={"metadata": {"path": str(path.parent)}},
                            on_notebook_start=lambda **_: [poll_in_slices(c) for c in (client.kc.shell_channel,
                                                                                       client.kc.iopub_channel)],
                            on_cell_executed=lambda **_: peak.update(mb=_kernel_peak_mb(client)))
    start = time.perf_counter()
    error = None
    try:  # the kernel's own environment says where its results go (kernels may run side by side)
        client.execute(env={**os.environ, "KE_RESULTS_DIR": str(results)})
    except Exception as exc:  # noqa: BLE001 (any failure is reported, and the next notebook runs)
        error = first_error_line(exc)
    finally:  # a failed notebook is kept as far as it ran, with the error in its cell
        nbformat.write(notebook, out / path.name)
    seconds = time.perf_counter() - start
    numbers = read_key_numbers(results)
    memory = "?" if peak["mb"] is None else f"{peak['mb']:.0f} MB"
    status = "ok" if error is None else "failed"
    lines = [f"\n== {path.name} {status.upper()} ({seconds:.0f} s, kernel peak {memory}) -> {out / path.name}"]
    lines += [f"   {error}"] if error else []
    lines += ["   " + ", ".join(f"{k}={v}" for k, v in entry.items() if k != "notebook") for entry in numbers]
    print("\n".join(lines), flush=True)
    return {"notebook": path.name, "status": status, **({"error": error} if error else {}), "seconds": round(seconds, 1),
            "peak_kernel_mb": None if peak["mb"] is None else round(peak["mb"]), "numbers": numbers,
            "findings": read_findings(results)}


def first_error_line(exc: BaseException) -> str:
    """The line that names a notebook's failure: a cell's ``Name: message``, else the exception's first line."""
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    if ename:
        return f"{ename}: {evalue}".splitlines()[0][:300]
    return (f"{type(exc).__name__}: {exc}".strip().splitlines() or [type(exc).__name__])[0][:300]


def summary_table(summary: list[dict]) -> str:
    """One line per notebook: name, status, seconds, kernel peak memory, first error line."""
    width = max((len(entry["notebook"]) for entry in summary), default=8)
    lines = [f"{'notebook':<{width}}  status  seconds  peak MB  error"]
    for entry in summary:
        peak = "?" if entry["peak_kernel_mb"] is None else entry["peak_kernel_mb"]
        lines.append(f"{entry['notebook']:<{width}}  {entry['status']:<6}  {entry['seconds']:>7.0f}  {peak:>7}  "
                     f"{entry.get('error', '')}".rstrip())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ke-notebooks", description=__doc__.splitlines()[0])
    parser.add_argument("--notebooks", type=Path, default=ROOT / "notebooks")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    parser.add_argument("--only", help="run only notebooks whose name contains this")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds a cell may run (default 1800)")
    parser.add_argument("--threads", type=int, help="CPU threads per kernel (OMP_NUM_THREADS); 1 measures a Binder-sized run")
    parser.add_argument("--jobs", type=int, default=1, help="notebooks at a time (default 1; with --threads)")
    parser.add_argument("-p", "--param", type=parse_parameter, action="append", default=[], metavar="NAME=VALUE",
                        help="set a parameter (a Python literal), e.g. -p FULL=True; repeatable")
    parser.add_argument("--html", action="store_true",
                        help="also write <out>/site/: a page per executed notebook and an index, readable offline")
    parser.add_argument("--findings-table", nargs="+", type=Path, metavar="RESULTS",
                        help="print a markdown table of the findings of earlier runs' result folders and exit")
    args = parser.parse_args(argv)
    with one_line_errors("ke-notebooks"):
        _main(args)


def _main(args: argparse.Namespace) -> None:
    for name in ("timeout", "threads", "jobs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise BadInput(f"--{name} {value}: give a whole number >= 1")
    if args.findings_table:
        missing = [str(f) for f in args.findings_table if not (f / "summary.json").is_file()]
        if missing:
            raise BadInput(f"--findings-table {missing[0]} has no summary.json; give folders the main job wrote (--out)")
        print(findings_table(args.findings_table))
        return
    paths = chosen_notebooks(args.notebooks, args.only)
    parameters = dict(args.param)
    check_parameters(parameters, paths)
    output_folder(args.out)
    if args.threads:  # the kernels inherit the environment, and torch reads it when first imported
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    if str(parameters.get("SUBJECT", "builtin")).startswith("builtin"):  # a hub or local subject needs no build
        seed = parameters.get("PRETRAIN_SEED", 0)
        builtin_families([f"{name}-seed{seed}" if seed else name for name in NOTEBOOK_FAMILIES])
    summary = run(paths, args.out, args.timeout, parameters, args.jobs)
    failed = [entry["notebook"] for entry in summary if entry["status"] != "ok"]
    print(f"\n{summary_table(summary)}\n\nexecuted {len(paths)} notebook(s), {len(failed)} failed; results in {args.out}")
    if args.html:
        print(f"site of the executed notebooks: {write_site(args.out)}")
    if failed:
        raise SystemExit(1)

if __name__ == "__main__":
    main()
