"""How notebooks state results: findings checked in code, and the key numbers the main job collects."""

from __future__ import annotations

import json
import os
from pathlib import Path

KEY_NUMBERS_FILE = "key_numbers.json"


def key_numbers(notebook: str, **numbers: float | int | str) -> None:
    """Record the numbers that matter for the main job: appended to
    ``$KE_RESULTS_DIR/key_numbers.json`` (a list of entries) when that variable is set, nothing
    otherwise. Prints nothing, so a reader sees only what the notebook says in words."""
    folder = os.environ.get("KE_RESULTS_DIR")
    if not folder:
        return
    plain = {k: (v.item() if hasattr(v, "item") else v) for k, v in numbers.items()}  # numpy / torch scalars
    clean = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in plain.items()}
    path = Path(folder) / KEY_NUMBERS_FILE
    entries = json.loads(path.read_text()) if path.exists() else []
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries + [{"notebook": notebook, **clean}], indent=1))


def read_key_numbers(folder: str | Path) -> list[dict]:
    """The entries :func:`key_numbers` recorded in ``folder`` (empty if none)."""
    path = Path(folder) / KEY_NUMBERS_FILE
    return json.loads(path.read_text()) if path.exists() else []


def finding(claim: str, observed: bool, *, required: bool = False) -> None:
    """State a finding next to whether this run showed it. With ``required=True`` the notebook
    fails when it did not (use it for what the default run is known to show)."""
    print(("OBSERVED in this run: " if observed else "NOT observed in this run: ") + claim)
    if required:
        assert observed, f"expected finding not observed: {claim}"
