"""Where generated artifacts go (git-ignored), and writing files so that a reader never sees half."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def cache_dir() -> Path:
    """``$KE_UTILS_CACHE``, else ``cache/`` in the project checkout, else ``~/.cache/ke_utils``."""
    if os.environ.get("KE_UTILS_CACHE"):
        return Path(os.environ["KE_UTILS_CACHE"])
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").exists():
        return root / "cache"
    return Path.home() / ".cache" / "ke_utils"


def config_key(config: dict) -> str:
    """A short stable hash of a JSON-able configuration."""
    return hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:10]


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path of this writer's own beside ``path``, renamed to ``path`` (``os.replace``)
    when the block ends without error and deleted otherwise: a reader sees all or nothing, and two
    writers of the same file at once each leave a whole file (the last rename wins)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through :func:`atomic_path` (all or nothing)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
