"""Fictional-knowledge records (Chang et al., 2024; docs/method.md section 3): one loader for the
generated records and the original dataset's JSON files, which share the schema."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

PROBE_KINDS = ("mem", "gen", "hard_gen")
REQUIRED_KEYS = ("train_context", "paraphrases", *(f"{k}_{s}" for k in PROBE_KINDS for s in ("input", "target")))


def _check(record, index: int) -> dict:
    if not isinstance(record, dict):
        raise ValueError(f"record {index}: expected an object, got {type(record).__name__}")
    for key in REQUIRED_KEYS:
        if key not in record:
            raise ValueError(f"record {index}: missing key {key!r}")
    if not isinstance(record["train_context"], str) or not record["train_context"]:
        raise ValueError(f"record {index}: 'train_context' must be a non-empty string")
    lists = ["paraphrases", *(f"{k}_{s}" for k in PROBE_KINDS for s in ("input", "target"))]
    for key in lists:
        value = record[key]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"record {index}: {key!r} must be a list of strings")
    if not record["paraphrases"]:
        raise ValueError(f"record {index}: 'paraphrases' is empty")
    for kind in PROBE_KINDS:
        if len(record[f"{kind}_input"]) != len(record[f"{kind}_target"]):
            raise ValueError(f"record {index}: {kind}_input and {kind}_target differ in length")
    return record


def load_records(source: str | Path | Sequence[dict]) -> list[dict]:
    """Validated records from a list of dicts or a JSON file (a list of records; extra keys kept).
    A missing key or inconsistent lengths give a ValueError naming the record and the key."""
    if isinstance(source, (str, Path)):
        data = json.loads(Path(source).read_text())
    else:
        data = list(source)
    if not isinstance(data, list) or not data:
        raise ValueError("records must be a non-empty list")
    return [_check(r, i) for i, r in enumerate(data)]


def probes(record: dict) -> list[tuple[str, str, str]]:
    """``(kind, input, target)`` for every probe of one record."""
    return [(k, i, t) for k in PROBE_KINDS for i, t in zip(record[f"{k}_input"], record[f"{k}_target"])]
