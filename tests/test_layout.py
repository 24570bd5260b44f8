"""The package's layers, checked on its import graph, and its command lines.

``ke_utils/memory/`` is the measurement core that works on any transformers model: it imports
nothing else from ``ke_utils``. ``ke_utils/experiments/`` holds one module per notebook
experiment, each with ``findings`` and ``key_numbers``; only the command lines build on them.
``ke_utils/commands/`` holds the command lines: no library module imports them (only the thin
``python -m ke_utils.<old name>`` forwards do). No module imports itself through others.
"""

from __future__ import annotations

import ast
import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ke_utils"
COMMANDS = {"ke-measure": "measure", "ke-train": "train", "ke-notebooks": "run_notebooks",
            "ke-exercises": "exercise_notebooks"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The ``ke_utils`` modules ``path`` imports, as absolute dotted names (``from . import x`` counts
    as ``package.x``)."""
    name, found = module_name(path), set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "ke_utils"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] != "ke_utils":
                continue
            found |= {f"{base}.{a.name}" if not node.module else base for a in node.names}
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def test_the_import_graph_is_read_right():
    edges = graph()
    assert "ke_utils.memory.architectures" in edges
    assert "ke_utils.checkpoints" in edges["ke_utils.commands.measure"]  # from ..checkpoints import ...
    assert "ke_utils.commands.measure" in edges["ke_utils.measure"]  # the forward


def test_memory_imports_nothing_from_the_rest_of_the_package():
    outside = {(m, i) for m, deps in graph().items() if m.startswith("ke_utils.memory")
               for i in deps if not i.startswith("ke_utils.memory")}
    assert not outside, f"ke_utils/memory/ must work on its own: {sorted(outside)}"


def test_no_library_module_imports_the_command_lines():
    forwards = {f"ke_utils.{module}" for module in COMMANDS.values()}
    upward = {(m, i) for m, deps in graph().items() if not m.startswith("ke_utils.commands") and m not in forwards
              for i in deps if i.startswith("ke_utils.commands")}
    assert not upward, f"the library imports a command line: {sorted(upward)}"


def test_only_the_command_lines_build_on_the_experiments():
    upward = {(m, i) for m, deps in graph().items()
              if not m.startswith(("ke_utils.experiments", "ke_utils.commands")) and m != "ke_utils"
              for i in deps if i.startswith("ke_utils.experiments")}
    assert not upward, f"a lower layer imports an experiment: {sorted(upward)}"


@pytest.mark.parametrize("module", sorted(p.stem for p in (PACKAGE / "experiments").glob("[!_]*.py")))
def test_every_experiment_has_findings_and_key_numbers(module):
    experiment = importlib.import_module(f"ke_utils.experiments.{module}")
    assert callable(getattr(experiment, "findings", None)) and callable(getattr(experiment, "key_numbers", None))


def test_the_import_graph_has_no_cycles():
    edges = graph()
    edges = {m: {d for d in deps if d in edges} for m, deps in edges.items()}  # modules, not names in them
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for dep in sorted(edges[module]):
            if dep.startswith(module + ".") or module.startswith(dep + "."):
                continue  # a package and its own modules
            assert state.get(dep) != "open", "import cycle: " + " -> ".join(path[path.index(dep):] + [dep]) \
                if dep in path else f"import cycle through {dep}"
            if dep not in state:
                visit(dep, path + [dep])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_line_answers_help_both_ways(command):
    """The console script (installed by ``pip install -e .``) and the old ``python -m`` path, started
    together (each is mostly an interpreter importing its modules)."""
    script = shutil.which(command)
    processes = [subprocess.Popen(argv + ["--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for argv in ([sys.executable, "-m", f"ke_utils.{COMMANDS[command]}"], [script] if script else [])
                 if argv]
    (old_out, old_err), *new = [process.communicate(timeout=120) for process in processes]
    assert processes[0].returncode == 0 and old_out.startswith(f"usage: {command}"), old_err[-2000:]
    if script is None:
        pytest.skip(f"{command} is not on PATH: the package was not installed with pip (pip install -e .)")
    assert processes[1].returncode == 0 and new[0][0] == old_out, new[0][1][-2000:]
