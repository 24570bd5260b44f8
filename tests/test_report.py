"""The compact results table a notebook shows for its claims (ke_utils.report), and the study's words and
thresholds every experiment's findings carry into it."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from ke_utils import checkpoint_sweep, report, study
from ke_utils.commands.run_notebooks import notebook_parameters
from ke_utils.experiments import stages
from ke_utils.report import ASSERTED, RESULT_COLUMNS, Finding, record, results_table, run_seeds

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
DEFAULTS_02 = {"SUBJECT": "builtin", "PRETRAIN_SEED": 0, "TEXTS": None, "N_DOCS": 300, "N_CHECKPOINTS": None, "RELATED": True,
               "DEVICE": "cpu", "DTYPE": None}
FINDINGS = {"KE rises": Finding(True, 0.08213, check=True, study="r = +0.94 (OLMo-1B)", threshold="> 0.05 nats"),
            "late acquires less": Finding(False, -0.031, study="not in the study (our control)", threshold="> 0.05 nats"),
            "ends at the same K": Finding(True, study="not in the study (our check)", threshold="ratio < 0.5")}


def test_results_table_has_one_row_per_claim_and_exactly_its_columns():
    table = results_table(FINDINGS, "pretraining seed 0; data order 0")
    assert list(table.columns) == RESULT_COLUMNS == ["claim", "study", "this run", "threshold", "seeds"]
    assert table.to_dict("records") == [
        {"claim": "KE rises" + ASSERTED, "study": "r = +0.94 (OLMo-1B)", "this run": "yes (0.0821)",
         "threshold": "> 0.05 nats", "seeds": "pretraining seed 0; data order 0"},
        {"claim": "late acquires less", "study": "not in the study (our control)", "this run": "no (-0.031)",
         "threshold": "> 0.05 nats", "seeds": "pretraining seed 0; data order 0"},
        {"claim": "ends at the same K", "study": "not in the study (our check)", "this run": "yes",
         "threshold": "ratio < 0.5", "seeds": "pretraining seed 0; data order 0"}]


def test_this_run_follows_observed_not_the_sign_of_the_number():
    assert report.this_run(Finding(False, 0.1)) == "no (0.1)"  # observed decides, whatever the number
    assert report.this_run(Finding(True, -2.0)) == "yes (-2)"
    assert report.this_run(Finding(np.bool_(True), np.float64(0.123456))) == "yes (0.123)"
    assert report.this_run(Finding(False, 3)) == "no (3)"  # an integer, e.g. a layer index


def test_only_checks_are_marked_asserted():
    claims = results_table(FINDINGS, "")["claim"]
    assert [c.endswith(ASSERTED) for c in claims] == [True, False, False]


@pytest.mark.parametrize("pretrain, orders, expected", [
    ([0], [0], "pretraining seed 0; data order 0"),
    ([0, 1, 2], [0, 1], "pretraining seeds 0, 1, 2 (mean); data orders 0, 1 (mean)"),
    ([3], (), "pretraining seed 3"),
    (None, [0], "one pretraining run (the hub's); data order 0")])
def test_run_seeds(pretrain, orders, expected):
    assert run_seeds(pretrain, orders) == expected


def test_record_writes_asserts_and_returns_the_table_without_printing(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("KE_RESULTS_DIR", str(tmp_path))
    shown = record(FINDINGS, "02", DEFAULTS_02, seeds="pretraining seed 0")
    assert capsys.readouterr().out == ""
    assert shown.frame.equals(results_table(FINDINGS, "pretraining seed 0"))
    assert report.read_findings(tmp_path) == [
        {"claim": "KE rises", "observed": True, "required": True, "value": 0.08213},
        {"claim": "late acquires less", "observed": False, "required": False, "value": -0.031},
        {"claim": "ends at the same K", "observed": True, "required": False}]
    html = shown._repr_html_()
    assert "KE rises" + ASSERTED in html and "<th" in html and "row_heading" not in html  # full claims, no index
    assert repr(shown).splitlines()[0].split() == ["claim", "study", "this", "run", "threshold", "seeds"]


def test_record_asserts_checks_only_at_the_settings_they_were_established_on(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("KE_RESULTS_DIR", str(tmp_path))
    failed = {"KE rises": Finding(False, -0.01, check=True), "late acquires less": Finding(False, -0.03)}
    for subject in ("builtin", "builtin:decayed", "builtin:overtrained-seed3"):  # either family, any pretraining seed
        with pytest.raises(AssertionError, match="expected finding not observed: KE rises$"):
            record(failed, "02", {**DEFAULTS_02, "SUBJECT": subject, "PRETRAIN_SEED": 3, "DEVICE": "cuda"}, seeds="")
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("KE_RESULTS_DIR", str(tmp_path / "changed"))
    for changed in ({"SUBJECT": "builtin:capacity"}, {"SUBJECT": "EleutherAI/pythia-160m"}, {"N_DOCS": 100}, {"RELATED": False}):
        shown = record(failed, "02", {**DEFAULTS_02, **changed}, seeds="")
        assert list(shown.frame["this run"]) == ["no (-0.01)", "no (-0.03)"]
        name, value = next(iter(changed.items()))
        assert f"shown, not asserted: {name} = {value!r} is not a setting" in capsys.readouterr().out
    assert [entry["required"] for entry in report.read_findings(tmp_path / "changed")] == [False] * 8


def test_record_needs_checked_settings_for_a_notebook_with_checks(capsys):
    assert record({"a": Finding(True)}, "05", {}, seeds="").frame["this run"].tolist() == ["yes"]  # no checks: nothing to look up
    assert capsys.readouterr().out == ""
    with pytest.raises(ValueError, match="notebook 05 has checks but no CHECKED_SETTINGS"):
        record({"a": Finding(True, check=True)}, "05", {}, seeds="")


def _parameters(path: Path) -> dict[str, object]:
    """The values a notebook's parameters cell assigns (:func:`notebook_parameters`), the device the
    setup cell picks given as "cpu"."""
    cell = next(c for c in nbformat.read(path, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
    namespace: dict[str, object] = {"AUTO_DEVICE": "cpu"}
    exec(cell.source, namespace)
    return {name: namespace[name] for name in notebook_parameters(path)}


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("0*.ipynb")), ids=lambda p: p.name[:2])
def test_checked_settings_are_each_notebooks_defaults(path):
    """Every parameter that can change a result is in the table with its default among the checked
    values, so the checks are asserted on a notebook as it is committed and a new parameter cannot
    slip past; notebooks 05 and 06 have no checks and no entry."""
    params, number = _parameters(path), path.name[:2]
    if number in ("05", "06"):
        assert number not in report.CHECKED_SETTINGS
        return
    table = report.CHECKED_SETTINGS[number]
    assert set(table) == set(params) - set(report.SETTING_FREE)
    assert report.checks_apply(number, params) and report.unchecked_settings(number, params) == {}
    assert table["SUBJECT"] == report.NOTEBOOK_FAMILIES
    for name in _resolved(path):  # record() sees the resolved value, so the table must hold it too
        assert name in table and len(table[name]) > 1, f"{number}: {name} is resolved after the parameters cell"


def _resolved(path: Path) -> set[str]:
    """Parameters that a code cell after the parameters cell assigns again (``LR = LR or 1e-3``)."""
    cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    first = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
    names = notebook_parameters(path)
    return {node.targets[0].id for cell in cells[first + 1:] for node in ast.walk(ast.parse(cell.source))
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id in names}


def _filled(findings: dict[str, Finding]) -> None:
    assert findings and all(f.study and f.threshold for f in findings.values()), \
        [claim for claim, f in findings.items() if not (f.study and f.threshold)]


def test_notebook_02s_findings_from_a_hand_made_sweep():
    per_layer = [np.array([2.0, 2.0, 2.0]), np.array([1.9, 1.95, 1.8]), np.array([1.95, 1.98, 1.9]),
                 np.array([1.9, 1.97, 1.7])]  # step 10 is the trained peak; the last layer drops most after it
    frame = pd.DataFrame({"step": [0, 5, 10, 20], "ke": [6.0, 5.65, 5.83, 5.57], "normalized": [1.0, 0.94, 0.97, 0.93],
                          "per_layer": per_layer})
    found = checkpoint_sweep.findings(frame)
    _filled(found)
    decline, last_layer = found.values()
    assert decline and decline.check and decline.value == pytest.approx(-1.0) and decline.study == study.DECAY_REPORTED
    assert last_layer and last_layer.value == 2 and not last_layer.check
    assert checkpoint_sweep.key_numbers(frame)["normalized_peak"] == 0.97
    rising = frame.assign(ke=[6.0, 5.65, 5.7, 5.8], normalized=[1.0, 0.94, 0.95, 0.96])  # the peak is the last checkpoint
    assert list(checkpoint_sweep.findings(rising).values())[0].value is None
    assert not list(checkpoint_sweep.findings(rising).values())[0]
    assert np.isnan(checkpoint_sweep.key_numbers(rising)["spearman_after_peak"])


def test_notebook_03s_findings_carry_the_studys_numbers():
    summary = pd.DataFrame({"ke": [5.9, 5.8, 5.7, 5.6], "acquisition_paraphrase_all": [0.30, 0.28, 0.25, 0.20],
                            stages.MEASURE: [0.5, 0.4, 0.45, 0.3], "retention": [0.7, 0.72, 0.69, 0.6],
                            "exact_paraphrase_mem": [0.1, 0.1, 0.12, 0.15], "acquisition_paraphrase_mem": [0.3] * 4,
                            "acquisition_once_mem": [0.1] * 4})
    logs = pd.DataFrame([{"checkpoint": c, "step": s, "logprob_paraphrase_mem": -3 + c / 1000 + s / 10}
                         for c in (450, 600, 800, 1200) for s in (0, 3, 6, 9)])
    found = stages.findings(summary, logs)
    _filled(found)
    a = found["checkpoints with higher KE acquire more by the study's A over all probes (r(KE, A) > 0.5)"]
    assert a and f"{study.value('pearson_ke_acquisition'):+.2f}" in a.study
    assert [claim for claim, f in found.items() if f.check] == [c for c in found if c.endswith(
        ("(gain beyond control > 0)", "so no stage ends at a ceiling", "from its midpoint on)", "(retention < 1 at every stage)"))]
    same_k = [f for c, f in found.items() if c.startswith("every stage ends at nearly the same K")][0]
    assert not same_k and same_k.value == pytest.approx(1.0)  # every curve rises alike: the range stays


def test_table1_change_words_the_first_and_last_checkpoint():
    assert study.table1_change("acquisition") == "A 25.2% at step 117,850 → 18.8% at 738,020 (OLMo-1B, Table 1)"
    assert study.table1_change("forgetting", "peak LR 1e-4") == "F 2.4% at step 117,850 → 7.3% at 738,020 (OLMo-1B, Table 1)"
