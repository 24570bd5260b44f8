"""What the command lines read from the user, checked before any work: a bad input ends the
command with one line naming the argument and what to do (exit status 2, no traceback), the way
argparse reports a bad option, and nothing is written at ``--out``."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path


class BadInput(Exception):
    """An input a command cannot use; the message names the argument and what to do."""


@contextlib.contextmanager
def one_line_errors(prog: str) -> Iterator[None]:
    """Inside, a :class:`BadInput` ends the process with ``prog: error: message`` on stderr and
    exit status 2 (argparse's convention for usage errors); anything else propagates."""
    try:
        yield
    except BadInput as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def looks_like_path(source: str) -> bool:
    """True for what a user means as a local path (``./x``, ``data/x.txt``, ``x.json``), not a hub
    id (``owner/name``: one slash, no suffix)."""
    return (source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source
            or Path(source).suffix in (".txt", ".json", ".jsonl", ".csv"))


def text_lines(path: Path, argument: str) -> list[str]:
    """The non-blank lines of a UTF-8 text file, one document each."""
    if not path.exists():
        raise BadInput(f"{argument} {path}: no such file; give a text file with one document per line")
    if not path.is_file():
        raise BadInput(f"{argument} {path} is not a file; give a text file with one document per line")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise BadInput(f"{argument} {path} cannot be read ({e.strerror}); check its permissions") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInput(f"{argument} {path} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                       "convert it first, e.g. iconv -f latin1 -t utf-8") from None
    documents = [line for line in text.splitlines() if line.strip()]
    if not documents:
        raise BadInput(f"{argument} {path} holds no document; give a text file with one document per line")
    return documents


def model_source(model: str, argument: str = "MODEL") -> str:
    """``model`` if it is a local checkpoint folder or could be a hub id; a local path that is not
    a transformers checkpoint is a :class:`BadInput`."""
    path = Path(model).expanduser()
    if path.exists() and not path.is_dir():
        raise BadInput(f"{argument} {model} is a file; give a checkpoint folder (with config.json) or a hub id")
    if path.is_dir() and not (path / "config.json").is_file():
        raise BadInput(f"{argument} {model} has no config.json, so it is not a transformers checkpoint; give the "
                       "folder save_pretrained wrote, or a hub id")
    if not path.exists() and looks_like_path(model):
        raise BadInput(f"{argument} {model}: no such folder; give a checkpoint folder (with config.json) or a hub id")
    return model


@contextlib.contextmanager
def loading(what: str, argument: str, hint: str) -> Iterator[None]:
    """Inside, an ``OSError`` or ``ValueError`` while loading ``what`` (transformers' and the hub's
    errors for a missing model, revision or file) becomes a :class:`BadInput` with its first line."""
    try:
        yield
    except (OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BadInput(f"{argument} {what} could not be loaded ({first}); {hint}") from None


def output_file(path: Path, argument: str = "--out") -> Path:
    """``path`` if a file can be written there (its folder is made when the command writes)."""
    if path.is_dir():
        raise BadInput(f"{argument} {path} is a folder; give a file name, e.g. {path / 'means.safetensors'}")
    existing = next((p for p in (path.parent, *path.parent.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise BadInput(f"{argument} {path}: {existing} is a file, not a folder")
    return path


def output_folder(path: Path, argument: str = "--out") -> Path:
    """``path`` if a folder can be made there."""
    if path.exists() and not path.is_dir():
        raise BadInput(f"{argument} {path} is a file; give a folder")
    existing = next((p for p in path.parents if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise BadInput(f"{argument} {path}: {existing} is a file, not a folder")
    return path
