"""How notebooks state results: findings checked in code, and the key numbers the main job collects.

Every experiment module (:mod:`ke_utils.experiments`) has the same pair: ``findings(...)``, a
``{claim: Finding}`` that :func:`record` states as one compact table (:func:`results_table`), and
``key_numbers(...)``, a flat dict for :func:`key_numbers`."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

KEY_NUMBERS_FILE = "key_numbers.json"
FINDINGS_FILE = "findings.json"


def _append(file: str, entry: dict) -> None:
    """Append ``entry`` (numpy / torch scalars made plain) to ``$KE_RESULTS_DIR/file``, a JSON list;
    nothing when that variable is not set (a notebook opened by hand)."""
    folder = os.environ.get("KE_RESULTS_DIR")
    if not folder:
        return
    plain = {k: (v.item() if hasattr(v, "item") else v) for k, v in entry.items()}
    clean = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in plain.items()}
    path = Path(folder) / file
    entries = json.loads(path.read_text()) if path.exists() else []
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries + [clean], indent=1))


def key_numbers(notebook: str, **numbers: float | int | str) -> None:
    """Record the numbers that matter for the main job: appended to
    ``$KE_RESULTS_DIR/key_numbers.json`` (a list of entries) when that variable is set, nothing
    otherwise. Prints nothing, so a reader sees only what the notebook says in words."""
    _append(KEY_NUMBERS_FILE, {"notebook": notebook, **numbers})


def read_key_numbers(folder: str | Path) -> list[dict]:
    """The entries :func:`key_numbers` recorded in ``folder`` (empty if none)."""
    path = Path(folder) / KEY_NUMBERS_FILE
    return json.loads(path.read_text()) if path.exists() else []


def read_findings(folder: str | Path) -> list[dict]:
    """The findings :func:`finding` recorded in ``folder``: ``claim, observed, required`` and ``value`` if given."""
    path = Path(folder) / FINDINGS_FILE
    return json.loads(path.read_text()) if path.exists() else []


def _write_finding(claim: str, observed: bool, required: bool, value: float | None) -> None:
    """Append one finding to ``$KE_RESULTS_DIR/findings.json`` (see :func:`_append`)."""
    _append(FINDINGS_FILE, {"claim": claim, "observed": bool(observed), "required": required,
                            **({} if value is None else {"value": float(value)})})


def finding(claim: str, observed: bool, *, required: bool = False, value: float | None = None) -> None:
    """State a finding next to whether this run showed it (and the number behind it, ``value``,
    when given); the main job records it (``findings.json``). With ``required=True`` the notebook
    fails when it did not: only for what holds on every pretraining seed (docs/findings_over_seeds.md)."""
    shown = "" if value is None else f" [{value:.4g}]"
    print(("OBSERVED in this run: " if observed else "NOT observed in this run: ") + claim + shown)
    _write_finding(claim, observed, required, value)
    if required:
        assert observed, f"expected finding not observed: {claim}"


@dataclass(frozen=True)
class Finding:
    """Whether a run showed a claim (truthy when it did), the number behind it (``value``), and
    whether it is a ``check``: a finding that holds on every pretraining seed of the built-in
    families (docs/findings_over_seeds.md), asserted when a notebook runs on them. ``study``: what
    the study reported for the claim, in words ("not in the study ..." where it has no such claim);
    ``threshold``: what ``value`` must pass for the claim to count as observed, in words."""

    observed: bool
    value: float | None = None
    check: bool = False
    study: str = ""
    threshold: str = ""

    def __bool__(self) -> bool:
        return bool(self.observed)


RESULT_COLUMNS = ["claim", "study", "this run", "threshold", "seeds"]
ASSERTED = " [asserted at the defaults]"  # how results_table marks a check

NOTEBOOK_FAMILIES = ("builtin", "builtin:overtrained", "builtin:decayed")
CHECKED_SETTINGS: dict[str, dict[str, tuple]] = {
    "01": {"SUBJECT": NOTEBOOK_FAMILIES, "TEXTS": (None,), "N_DOCS": (200,)},
    "02": {"SUBJECT": NOTEBOOK_FAMILIES, "TEXTS": (None,), "N_DOCS": (300,), "N_CHECKPOINTS": (None,), "RELATED": (True,)},
    "03": {"SUBJECT": NOTEBOOK_FAMILIES, "TEXTS": (None,), "STAGES": (None, [450, 600, 800, 1200]), "SEEDS": ([0],),
           "ROUNDS": (10,), "INTERVAL": (6,), "LR": (None, 1e-3), "EVAL_EVERY": (2,), "RECORDS_JSON": (None,)},
    "04": {"SUBJECT": NOTEBOOK_FAMILIES, "TEXTS": (None,), "CHECKPOINT": (None,), "FULL_GRID": (False,), "SEEDS": ([0],),
           "ROUNDS": (10,), "INTERVAL": (6,), "LR": (None, 1e-3), "MIN_GAIN_DIFF": (0.05,), "MIN_A_DIFF": (0.01,),
           "RECORDS_JSON": (None,)},
}
"""The settings each notebook's checks were established on (docs/findings_over_seeds.md: pretraining
seeds 0-3 of both notebook families), parameter -> the values allowed: the notebook's defaults (as
the parameters cell gives them and, where a later cell resolves a None, as it resolves it on a
built-in family: ``LR = LR or 1e-3``), with either notebook family as SUBJECT. Not listed: where
and how fast a run goes (``DEVICE``, ``DTYPE``, ``MICRO_BATCH``) and the pretraining seed, since a
check holds on every one. Notebooks 05 and 06 assert no check. tests/test_report.py keeps the table
equal to the notebooks' parameters cells."""
SETTING_FREE = ("DEVICE", "DTYPE", "MICRO_BATCH", "PRETRAIN_SEED", "PRETRAIN_SEEDS")


def _plain(value: object) -> object:
    """A parameter's value as the table compares it: sequences as tuples, a seeded built-in family
    (``"builtin:decayed-seed1"``) as its family (``"builtin:decayed"``)."""
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    return re.sub(r"-seed\d+$", "", value) if isinstance(value, str) else value


def unchecked_settings(notebook: str, params: Mapping[str, object]) -> dict[str, object]:
    """The parameters of ``params`` (a notebook's ``globals()``) whose value is not one that
    ``notebook``'s checks were established on (:data:`CHECKED_SETTINGS`); empty: its checks apply.
    KeyError for a notebook without checked settings."""
    allowed = CHECKED_SETTINGS[notebook]
    return {name: params[name] for name, values in allowed.items()
            if _plain(params[name]) not in [_plain(v) for v in values]}


def checks_apply(notebook: str, params: Mapping[str, object]) -> bool:
    """Whether ``notebook``'s checks are asserted on a run with ``params`` (a notebook's ``globals()``):
    a built-in notebook family at the notebook's default parameters, any pretraining seed."""
    return notebook in CHECKED_SETTINGS and not unchecked_settings(notebook, params)


def this_run(found: Finding) -> str:
    """``"yes"`` or ``"no"`` (observed in this run or not), with the number behind it when there is one."""
    return ("yes" if found else "no") + ("" if found.value is None else f" ({float(found.value):.3g})")


def results_table(findings: Mapping[str, Finding], seeds: str) -> pd.DataFrame:
    """One row per claim, columns :data:`RESULT_COLUMNS`: the claim (checks marked with
    :data:`ASSERTED`), what the study reported, :func:`this_run`, the threshold, and ``seeds``: the
    pretraining seeds and data orders this run's numbers come from (:func:`run_seeds`)."""
    return pd.DataFrame([[claim + (ASSERTED if found.check else ""), found.study, this_run(found), found.threshold, seeds]
                         for claim, found in findings.items()], columns=RESULT_COLUMNS)


def run_seeds(pretrain_seeds: Sequence[int] | None, data_orders: Sequence[int] = ()) -> str:
    """The seeds column of :func:`results_table`: e.g. ``"pretraining seed 0; data order 0"``
    (``pretrain_seeds`` None: a hub model's one pretraining run); several are averaged."""
    def listed(what: str, seeds: Sequence[int]) -> str:
        return f"{what}s {', '.join(map(str, seeds))} (mean)" if len(seeds) > 1 else f"{what} {seeds[0]}"
    first = "one pretraining run (the hub's)" if pretrain_seeds is None else listed("pretraining seed", pretrain_seeds)
    return first + (f"; {listed('data order', data_orders)}" if len(data_orders) else "")


@dataclass(frozen=True)
class ResultsTable:
    """A :func:`results_table` as a notebook shows it: every claim in full, left-aligned, no index."""

    frame: pd.DataFrame

    def _repr_html_(self) -> str:
        left = {"selector": "th, td", "props": "text-align: left; vertical-align: top"}
        return self.frame.style.hide(axis="index").set_table_styles([left]).to_html()

    def __repr__(self) -> str:
        with pd.option_context("display.max_colwidth", None, "display.width", None):
            return self.frame.to_string(index=False)


def verdict(claim: Finding, more: str, less: str, threshold: float, unit: str = "", caveat: str = "one pretraining seed",
            spread_too: bool = False) -> str:
    """One run's answer to a claim whose ``value`` is a difference: ``"in this run: <more>, by x"`` where
    the finding was observed, ``"in this run: <less>, by x"`` where the difference is below
    ``-threshold``, else "not distinguishable at this threshold" with the difference (``spread_too``:
    the finding also needed 2 x the spread over data orders)."""
    if claim:
        return f"in this run: {more}, by {claim.value:.3f}{unit} ({caveat})"
    if claim.value < -threshold:
        return f"in this run: {less}, by {-claim.value:.3f}{unit} ({caveat})"
    return (f"not distinguishable at this threshold (difference {claim.value:+.3f}{unit}; it counts above {threshold}{unit}"
            + (" and 2 x the spread over data orders)" if spread_too else ")"))


def record(findings: Mapping[str, Finding], notebook: str, params: Mapping[str, object], seeds: str) -> ResultsTable:
    """Record every finding for the main job (``findings.json``), assert the checks when
    :func:`checks_apply` to ``notebook`` run with ``params`` (its ``globals()``; elsewhere they are
    shown like the rest, and one line says which parameter differs), and return the
    :func:`results_table` for the notebook to show (``seeds``: :func:`run_seeds`)."""
    checks = [claim for claim, found in findings.items() if found.check]
    if checks and notebook not in CHECKED_SETTINGS:
        raise ValueError(f"notebook {notebook} has checks but no CHECKED_SETTINGS entry to assert them on")
    asserted = bool(checks) and checks_apply(notebook, params)
    if checks and not asserted:
        differ = ", ".join(f"{name} = {value!r}" for name, value in unchecked_settings(notebook, params).items())
        print(f"The checks marked{ASSERTED} are shown, not asserted: {differ} is not a setting they were "
              "established on (docs/findings_over_seeds.md).")
    for claim, found in findings.items():
        _write_finding(claim, found.observed, found.check and asserted, found.value)
    missed = [claim for claim in checks if asserted and not findings[claim]]
    assert not missed, "expected finding not observed: " + "; ".join(missed)
    return ResultsTable(results_table(findings, seeds))


def findings_table(folders: list[str | Path]) -> str:
    """A markdown table of the findings recorded in several main-job result folders (each with its
    ``summary.json``; e.g. one per pretraining seed): one row per notebook and claim, one column per
    folder, each cell ``yes`` / ``no`` and the number behind it; asserted claims are marked."""
    runs = {Path(folder).name: json.loads((Path(folder) / "summary.json").read_text()) for folder in folders}
    rows: dict[tuple[str, str], dict[str, str]] = {}
    for name, summary in runs.items():
        for entry in summary:
            for found in entry.get("findings", []):
                key = (entry["notebook"][:2], found["claim"] + (" **(asserted)**" if found["required"] else ""))
                value = f" ({found['value']:.3g})" if found.get("value") is not None else ""
                rows.setdefault(key, {})[name] = ("yes" if found["observed"] else "no") + value
    lines = ["| notebook | finding | " + " | ".join(runs) + " |", "|---" * (len(runs) + 2) + "|"]
    lines += [f"| {nb} | {claim} | " + " | ".join(cells.get(name, "-") for name in runs) + " |"
              for (nb, claim), cells in rows.items()]
    return "\n".join(lines)
