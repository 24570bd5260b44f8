"""Reporting and figures used by the notebooks (the statistics are in test_stats.py)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pandas as pd
import pytest
import torch

from ke_utils import plots, report
from ke_utils.memory.entropy import knowledge_entropy


def test_finding_reports_and_asserts(capsys):
    report.finding("x rises", True, required=True)
    report.finding("y falls", False)
    out = capsys.readouterr().out
    assert "OBSERVED in this run: x rises" in out and "NOT observed in this run: y falls" in out
    with pytest.raises(AssertionError, match="expected finding not observed"):
        report.finding("z", False, required=True)


def test_key_numbers_go_to_a_file_of_the_main_job_not_to_the_reader(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("KE_RESULTS_DIR", raising=False)
    report.key_numbers("01", ke=1.0)
    assert report.read_key_numbers(tmp_path) == []
    monkeypatch.setenv("KE_RESULTS_DIR", str(tmp_path / "01"))
    report.key_numbers("01", ke=1.23456789, best="p=0.5")
    report.key_numbers("01b", n=3)
    assert capsys.readouterr().out == ""
    assert report.read_key_numbers(tmp_path / "01") == [{"notebook": "01", "ke": 1.234568, "best": "p=0.5"},
                                                       {"notebook": "01b", "n": 3}]


def _frame():
    rows = []
    for step in (0, 10, 100, 1000):
        means = torch.rand(3, 32, generator=torch.Generator().manual_seed(step)) ** (1 + step / 200)
        ke = knowledge_entropy(means)
        rows.append({"step": step, "ke": ke.total, "normalized": ke.normalized, "per_layer": ke.per_layer.numpy(),
                     "means": means, "attention_entropy": 1.0 + step, "next_token_entropy": 2.0})
    return pd.DataFrame(rows)


def test_figures_draw_and_save(tmp_path, monkeypatch):
    frame = _frame()
    monkeypatch.setenv("KE_RESULTS_DIR", str(tmp_path))
    figures = {
        "curve": plots.plot_ke_curve(frame),
        "layers": plots.plot_layer_entropy(frame),
        "distribution": plots.plot_coefficient_distribution({"a": frame.means[0], "b": frame.means[3]}, layer=2),
        "related": plots.plot_related(frame),
        "tokens": plots.plot_token_coefficients(torch.randn(5, 32), list("abcde"), top=8),
    }
    for name, fig in figures.items():
        assert plots.save_figure(fig, name) is None and (tmp_path / f"{name}.png").stat().st_size > 1000
    assert figures["curve"].axes[0].get_xscale() == "symlog"
    line = figures["curve"].axes[0].lines[0]
    np.testing.assert_allclose(line.get_ydata(), frame["normalized"])


def test_save_figure_is_a_no_op_outside_the_main_job(monkeypatch, tmp_path):
    monkeypatch.delenv("KE_RESULTS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    plots.save_figure(plots.plot_ke_curve(_frame()), "x")
    assert list(tmp_path.iterdir()) == []


def test_coefficient_explorer_draws_and_redraws_on_any_backend(monkeypatch):
    """Every widget change displays a figure of the first checkpoint next to the chosen one, in
    the chosen layer: sorted shares p = a / sum(a) of means whose shares are known by hand."""
    from ke_utils.plots import coefficient_explorer

    means = {0: [[1, 1, 1, 1], [1, 1, 1, 1]], 10: [[1, 1, 2, 4], [1, 3, 3, 3]], 20: [[5, 1, 1, 1], [1, 1, 1, 5]]}
    frame = pd.DataFrame({"step": list(means), "means": [torch.tensor(m, dtype=torch.float64) for m in means.values()]})
    shown = []
    monkeypatch.setattr("IPython.display.display", shown.append)
    box = coefficient_explorer(frame)
    checkpoint, layer = box.children[0].children
    checkpoint.value = 10
    layer.value = 0
    expected = [(1, 20, [0.625, 0.125, 0.125, 0.125]), (1, 10, [0.3, 0.3, 0.3, 0.1]), (0, 10, [0.5, 0.25, 0.125, 0.125])]
    assert len(shown) == len(expected)  # the first draw, then one per change
    for fig, (number, step, shares) in zip(shown, expected):
        ax = fig.axes[0]
        assert ax.get_title() == f"layer {number}: sorted usage"
        lines = {line.get_label(): line.get_ydata() for line in ax.lines}
        assert list(lines) == ["step 0", f"step {step}", "uniform"]
        np.testing.assert_allclose(lines["step 0"], [0.25] * 4)
        np.testing.assert_allclose(lines[f"step {step}"], shares)


def test_stage_and_variant_figures():
    summary = pd.DataFrame({"step": [10, 20, 30], "normalized": [0.99, 0.98, 0.97], "a": [0.1, 0.2, 0.3],
                            "a_std": [0.01, 0.02, 0.0], "ratio": [0.0, 0.5, 0.5], "select": ["least", "least", "random"],
                            "variant": ["baseline", "least", "random"]})
    assert len(plots.plot_stage_outcomes(summary, {"a": "A"}).axes) == 2
    fig = plots.plot_variants(summary, {"a": "A"})
    points = [line.get_ydata()[0] for line in fig.axes[0].lines if line.get_marker() == "o"]
    assert np.round(points, 3).tolist() == [0.1, 0.2, 0.3] and not fig.axes[0].patches  # points, not bars
    logs = pd.DataFrame({"checkpoint": [10, 10, 20, 20], "step": [0, 6, 0, 6], "k": [-5.0, -3.0, -6.0, -3.1]})
    lines = plots.plot_training_curves(logs, {"k": "K"}, ylabel="K").axes[0].lines
    assert [list(l.get_ydata()) for l in lines] == [[-5.0, -3.0], [-6.0, -3.1]]


def test_run_curves_are_one_panel_per_run_on_a_shared_axis():
    logs = pd.DataFrame({"run": ["a"] * 4 + ["b"] * 4, "seed": [0, 1] * 4, "step": [0, 0, 6, 6] * 2,
                         "k": [-5.0, -7.0, -3.0, -3.0, -6.0, -6.0, -4.0, -2.0], "c": [-5.0] * 8})
    fig = plots.plot_run_curves(logs, "k", "c", ncols=3)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["a", "b"] and len(fig.axes) == 3  # the third panel hidden
    assert [list(line.get_ydata()) for line in visible[0].lines] == [[-6.0, -3.0], [-5.0, -5.0]]  # mean over seeds
    assert visible[0].get_shared_y_axes().joined(visible[0], visible[1])


def test_ke_and_lr_and_protocol_figures_draw_their_data():
    frame = pd.DataFrame({"step": [0, 10, 100], "normalized": [0.99, 0.95, 0.93], "lr": [0.0, 3e-3, 3e-4]})
    fig = plots.plot_ke_and_lr({"decayed": frame})
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), frame["normalized"])
    np.testing.assert_allclose(fig.axes[1].lines[0].get_ydata(), frame["lr"])
    results = pd.DataFrame({"label": ["study"] * 4 + ["reactivated"], "protocol": ["study"] * 5,
                            "step": [10, 10, 100, 100, 100], "gain": [1.0, 3.0, 0.5, 0.5, 2.0]})
    fig = plots.plot_protocol_outcomes(results, {"gain": "gain (nats)"})
    study_line, star = (container.lines[0] for container in fig.axes[0].containers)  # errorbar data lines
    np.testing.assert_allclose(np.asarray(study_line.get_ydata(), float), [2.0, 0.5])  # mean over seeds
    np.testing.assert_allclose(np.asarray(star.get_ydata(), float), [2.0])
    assert star.get_marker() == "*" and star.get_linestyle() == "None"


def _attribution_rows(labels: list[tuple[str, int]]) -> pd.DataFrame:
    columns = ("gradient_entropy", "update_entropy", "value_gradient_entropy", "value_update_entropy", "used_gradient_jaccard",
               "used_updated_jaccard", "used_value_gradient_jaccard", "used_value_updated_jaccard")
    return pd.DataFrame([{"label": label, "step": step, "ke": 1 - step / 1e4, "chance_jaccard": 0.05,
                          **{c: 0.5 + i / 100 for i, c in enumerate(columns)}} for label, step in labels])


def test_a_run_keeps_its_colour_in_both_of_notebook_06s_figures_wherever_it_comes():
    """Colours come from the label, not from its position: the rows and the tensors list the runs in
    other orders, and a label outside the table (a custom contrast family) keeps its colour too."""
    from types import SimpleNamespace

    runs = [("study", 300), ("study", 1200), ("matched", 300), ("custom (study)", 300), ("overtrained (study)", 1200),
            ("reactivated (study)", 1200)]
    torch.manual_seed(0)
    tensors = {run: SimpleNamespace(**{name: torch.rand(2, 16) for name in ("usage", "key_grad", "key_change", "value_change")})
               for run in reversed(runs)}
    first = plots.plot_update_attribution(_attribution_rows(runs))
    second = plots.plot_update_by_usage(tensors, ["reactivated (study)", "custom (study)", "study", "overtrained (study)"])
    colour = {line.get_label().split(":")[0]: line.get_color() for line in first.axes[0].lines}
    for ax in second.axes:
        for line in ax.lines[:-1]:  # the last: the diagonal
            label, step = line.get_label().rsplit(" ", 1)
            assert line.get_color() == colour[label] == plots.run_colour(label)
            assert line.get_linestyle() == ("-" if step == "1200" else "--")  # the latest checkpoint solid
    alone = plots.plot_update_attribution(_attribution_rows([("custom (study)", 300)]))
    assert alone.axes[0].lines[0].get_color() == colour["custom (study)"]
    assert len(set(colour.values())) == len(colour)


def test_training_curves_share_one_y_axis():
    logs = pd.DataFrame({"checkpoint": [10, 10, 20, 20], "step": [0, 6, 0, 6], "k": [-5.0, -3.0, -6.0, -3.1],
                         "c": [-1.0, -0.5, -1.2, -0.4]})
    fig = plots.plot_training_curves(logs, {"k": "K", "c": "control"}, ylabel="nats")
    assert fig.axes[0].get_shared_y_axes().joined(fig.axes[0], fig.axes[1])
    assert fig.axes[0].get_ylim() == fig.axes[1].get_ylim()


def test_coefficient_means_against_their_layer_mean():
    """``shares=False`` draws the means themselves, so a neuron lifted to the layer mean sits on its line."""
    before = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    after = torch.tensor([[3.0, 3.0, 3.0, 6.0]])
    fig = plots.plot_coefficient_distribution({"before": before, "after": after}, layer=0, shares=False)
    lines = {line.get_label(): line.get_ydata() for line in fig.axes[0].lines}
    np.testing.assert_allclose(lines["after"], [6.0, 3.0, 3.0, 3.0])
    np.testing.assert_allclose(lines["layer mean, before"], [3.0, 3.0])
