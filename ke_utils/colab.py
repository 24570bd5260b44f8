"""The first code cell of every notebook (tagged ``setup``): on Colab, or anywhere else ``ke_utils``
is missing, it clones this repository and installs it; then it picks the device. Where
``ke_utils`` is installed (CI, Binder, a checkout) it installs nothing and touches no network.

The cell cannot import anything from here before the package is installed, so its text is
:data:`SETUP_CELL`, written into the notebooks by ``python -m ke_utils.colab``;
``tests/test_colab.py`` fails when a notebook's cell differs from it.
"""

from __future__ import annotations

from pathlib import Path

REPOSITORY = "<owner>/<repo>"  # PLACEHOLDER: this repository's GitHub owner/name, once it has one
TAG = "setup"
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

SETUP_CELL = f"""\
# Setup: where ke_utils is missing (Colab), clone this repository and install it; then pick the device.
import importlib.util, os, subprocess, sys
if importlib.util.find_spec("ke_utils") is None:
    source = os.environ.get("KE_UTILS_SOURCE", "https://github.com/{REPOSITORY}.git")  # a git URL or a local checkout
    checkout = source if os.path.isdir(source) else os.path.abspath("knowledge-entropy-notebooks")
    if not os.path.isdir(checkout):
        subprocess.check_call(["git", "clone", "--depth", "1", source, checkout])
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "-e", checkout])
    sys.path.insert(0, checkout)  # this kernel started before the install
from ke_utils.colab import pick_device
AUTO_DEVICE = pick_device()"""


def pick_device() -> str:
    """``"cuda"`` when torch sees a GPU, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def put_setup_cell(notebook) -> bool:
    """Make the cell tagged ``setup`` hold :data:`SETUP_CELL`, inserting it just before the cell
    tagged ``parameters`` if there is none; returns whether ``notebook`` (an nbformat v4 notebook)
    changed."""
    import nbformat

    tagged = [cell for cell in notebook.cells if TAG in cell.metadata.get("tags", [])]
    if tagged:
        changed = tagged[0].source != SETUP_CELL
        tagged[0].source = SETUP_CELL
        return changed
    where = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
    notebook.cells.insert(where, nbformat.v4.new_code_cell(SETUP_CELL, metadata={"tags": [TAG]}))
    return True


def main(folder: Path = NOTEBOOKS) -> None:
    """Write :data:`SETUP_CELL` into every notebook in ``folder`` whose setup cell differs."""
    import nbformat

    for path in sorted(folder.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        if put_setup_cell(notebook):
            nbformat.write(notebook, path)
            print(f"{path.name}: setup cell written")


if __name__ == "__main__":
    main()
