"""Figures for knowledge entropy (matplotlib). Every function takes an optional ``ax``/``axes``
and returns the figure; ``save_figure`` writes it to ``$KE_RESULTS_DIR`` when the main job runs."""

from __future__ import annotations

import itertools
import os
import zlib
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
import numpy as np
import pandas as pd
import torch

from . import study


def _axes(ax, **kw):
    if ax is None:
        fig, ax = plt.subplots(**kw)
        return fig, ax
    return (ax[0] if isinstance(ax, (list, tuple, np.ndarray)) else ax).figure, ax


def _step_axis(ax, steps) -> None:
    """Log x that still shows step 0 (symlog, linear below the first non-zero step)."""
    positive = [s for s in steps if s > 0]
    if positive:
        ax.set_xscale("symlog", linthresh=min(positive))
    ax.set_xlabel("training step (log scale)")


def _legend_below(fig, handles: list, ncol: int) -> None:
    """One legend for the whole figure, under its axes (outside the data)."""
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, fontsize=8, frameon=False)


# One colour per run label (protocol, family, modification), the same in every figure that shows runs.
RUN_COLOURS = {"study": "tab:blue", "matched": "tab:orange", "resumed": "tab:purple", "overtrained (study)": "tab:green",
               "reactivated": "tab:red", "reactivated (study)": "tab:red", "random neurons": "tab:gray"}
SPARE_COLOURS = ("tab:brown", "tab:pink", "tab:olive", "tab:cyan")
# Line style per starting checkpoint where colour already names the run: the latest solid, then dashed, dotted, dash-dotted.
STAGE_STYLES = ("-", "--", ":", "-.")


def run_colour(label: str) -> str:
    """``label``'s colour from :data:`RUN_COLOURS`; a label not there gets a spare colour chosen by its
    text, not by its position, so that it too keeps its colour from figure to figure."""
    return RUN_COLOURS.get(label, SPARE_COLOURS[zlib.crc32(label.encode()) % len(SPARE_COLOURS)])


def plot_ke_curve(frame: pd.DataFrame, ax=None, show_study: bool = True):
    """Normalised KE against step, with the size of the study's OLMo-1B change drawn to scale."""
    fig, ax = _axes(ax, figsize=(7, 4))
    ax.plot(frame["step"], frame["normalized"], "o-", label="this run")
    _step_axis(ax, frame["step"])
    ax.set_ylabel("normalised KE = KE / (L ln d_ff)")
    change = frame["normalized"].iloc[-1] - frame["normalized"].max()
    ax.set_title(f"Knowledge entropy over pretraining (last vs peak: {change:+.4f})")
    if show_study:
        hi, lo = study.OLMO_1B_NORMALIZED
        x = frame["step"].iloc[-1]
        top = frame["normalized"].max()
        ax.annotate("", xy=(x, top - (hi - lo)), xytext=(x, top),
                    arrowprops=dict(arrowstyle="<->", color="tab:red"))
        ax.text(x, top - (hi - lo) / 2, f"  OLMo-1B's whole\n  decline ({lo - hi:+.3f})", color="tab:red",
                va="center", ha="left", fontsize=8)
    ax.legend(loc="lower left")
    fig.tight_layout()
    return fig


def plot_ke_and_facts(frame: pd.DataFrame, known: pd.DataFrame, axes=None):
    """Normalised KE (left) and the share of the world's facts known (right, %, greedy exact
    match; ``known`` from :func:`~ke_utils.checkpoint_sweep.facts_known`) against pretraining step."""
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    fig = axes[0].figure
    axes[0].plot(frame["step"], frame["normalized"], "o-")
    axes[0].set_ylabel("normalised knowledge entropy")
    axes[0].set_title("Knowledge entropy")
    axes[1].plot(known["step"], 100 * known["known"], "o-", color="tab:green")
    axes[1].set_ylabel("facts known (% exact, greedy)")
    axes[1].set_ylim(-3, 103)
    axes[1].set_title("Facts of the world's people the model knows")
    for ax in axes:
        _step_axis(ax, frame["step"])
    axes[1].set_xlim(axes[0].get_xlim())
    fig.tight_layout()
    return fig


def plot_layer_entropy(frame: pd.DataFrame, axes=None):
    """Per-layer normalised entropy against step (left) and its change from the first checkpoint
    as a heatmap (right)."""
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    fig = axes[0].figure
    per_layer = np.stack(frame["per_layer"].to_numpy())  # [checkpoints, layers]
    d_ff = frame["means"].iloc[0].shape[1]
    norm = per_layer / np.log(d_ff)
    for layer in range(norm.shape[1]):
        axes[0].plot(frame["step"], norm[:, layer], "o-", ms=3, label=f"layer {layer}")
    _step_axis(axes[0], frame["step"])
    axes[0].set_ylabel("H_l / ln d_ff")
    axes[0].legend(fontsize=7, ncol=min(norm.shape[1], 8), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    delta = norm - norm[:1]
    lim = np.abs(delta).max() or 1.0
    im = axes[1].imshow(delta.T, aspect="auto", cmap="RdBu", vmin=-lim, vmax=lim)
    axes[1].set_xticks(range(len(frame)), frame["step"], rotation=90, fontsize=7)
    axes[1].set_xlabel("checkpoint (step)")
    axes[1].set_ylabel("layer (0-based)")
    axes[1].yaxis.set_major_locator(MaxNLocator(integer=True))  # one tick per layer, no half layers
    axes[1].set_title("change of H_l / ln d_ff from the first checkpoint", fontsize=9)
    fig.colorbar(im, ax=axes[1])
    fig.tight_layout()
    return fig


def plot_coefficient_distribution(means: dict[str, torch.Tensor], layer: int, axes=None, shares: bool = True):
    """How usage concentrates in ``layer``, for each labelled ``[n_layers, d_ff]`` means tensor: sorted
    (left, log y) and as a histogram of its log10 (right). ``shares``: each memory neuron's share of the
    layer's use ``p_l[j]``, against the uniform share; else the coefficient means ``a_l[j]`` themselves,
    against the layer mean of the first tensor."""
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    fig = axes[0].figure
    for label, m in means.items():
        values = (m[layer] / m[layer].sum() if shares else m[layer]).double().numpy()
        axes[0].plot(np.sort(values)[::-1], label=label)
        axes[1].hist(np.log10(values), bins=40, histtype="step", label=label)
    first_label, first = next(iter(means.items()))
    reference = 1 / first.shape[1] if shares else float(first[layer].double().mean())
    symbol = "share of use p_l[j]" if shares else "coefficient mean a_l[j]"
    axes[0].axhline(reference, color="grey", ls=":", label="uniform" if shares else f"layer mean, {first_label}")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("memory neuron, sorted by use")
    axes[0].set_ylabel(symbol)
    axes[0].set_title(f"layer {layer}: sorted usage")
    axes[1].axvline(np.log10(reference), color="grey", ls=":")
    axes[1].set_xlabel(f"log10 {symbol.split()[-1]}")
    axes[1].set_ylabel("memory neurons")
    axes[1].set_title(f"layer {layer}: distribution")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_related(frame: pd.DataFrame, axes=None):
    """KE next to attention entropy and next-token entropy, against step."""
    columns = [("normalized", "normalised KE"), ("attention_entropy", "attention entropy (nats)"),
               ("next_token_entropy", "next-token entropy (nats)")]
    if axes is None:
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    fig = axes[0].figure
    for ax, (column, label) in zip(axes, columns):
        ax.plot(frame["step"], frame[column], "o-")
        _step_axis(ax, frame["step"])
        ax.set_title(label, fontsize=10)
        ax.set_ylabel(label, fontsize=8)
    fig.tight_layout()
    return fig


def save_figure(fig, name: str) -> None:
    """Save ``fig`` as ``$KE_RESULTS_DIR/<name>.png`` when that variable is set (the main job);
    returns nothing, so a notebook cell that ends with it shows only the figure."""
    folder = os.environ.get("KE_RESULTS_DIR")
    if folder:
        path = Path(folder) / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")


def plot_token_coefficients(coefficients: torch.Tensor, tokens: list[str], top: int = 24, ax=None):
    """``|c|`` of one layer for each token of a sentence (``[seq, d_ff]``), restricted to the
    ``top`` neurons with the largest mean use over the sentence."""
    fig, ax = _axes(ax, figsize=(10, 0.35 * len(tokens) + 1.2))
    magnitude = coefficients.abs().float()
    order = magnitude.mean(0).argsort(descending=True)[:top]
    im = ax.imshow(magnitude[:, order].numpy(), aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(tokens)), [repr(t) for t in tokens], fontsize=8)
    ax.set_xticks(range(len(order)), order.tolist(), rotation=90, fontsize=7)
    ax.set_xlabel("memory neuron j (the most used in this sentence)")
    ax.set_ylabel("token of the sentence")
    ax.set_title("|c_j| per token: how strongly each token reads memory vector j")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def plot_stage_outcomes(summary: pd.DataFrame, columns: dict[str, str], axes=None):
    """Outcomes of continued training per starting checkpoint: each ``column`` (mean, with the
    ``<column>_std`` spread over seeds as error bars) against step (top) and against KE (bottom)."""
    if axes is None:
        fig, axes = plt.subplots(2, len(columns), figsize=(4.2 * len(columns), 6.5), squeeze=False)
    fig = axes[0][0].figure
    for i, (column, label) in enumerate(columns.items()):
        for row, x in enumerate(("step", "normalized")):
            ax = axes[row][i]
            ax.errorbar(summary[x], summary[column], yerr=summary.get(f"{column}_std"), fmt="o-", capsize=3)
            ax.set_title(label, fontsize=10)
            ax.set_ylabel(label, fontsize=8)
            ax.set_xlabel("starting checkpoint (step)" if x == "step" else "normalised KE of the checkpoint")
    fig.tight_layout()
    return fig


SELECT_COLOURS = {"least": "tab:blue", "random": "tab:orange", "most": "tab:red"}


def plot_variants(summary: pd.DataFrame, columns: dict[str, str], axes=None):
    """One point per reactivation variant for each ``column`` (mean, with ``<column>_std`` as error
    bars where there is more than one seed); the baseline in grey with a dashed line across, the
    controls in their own colours. Points, not bars: the axis is zoomed to the differences and
    does not start at 0, which a bar's length would exaggerate (the y label says so)."""
    if axes is None:
        fig, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 4.2), squeeze=False)
        axes = axes[0]
    fig = axes[0].figure
    colours = ["0.5" if r == 0 else SELECT_COLOURS[s] for r, s in zip(summary["ratio"], summary["select"])]
    for ax, (column, label) in zip(axes, columns.items()):
        errors = summary.get(f"{column}_std", pd.Series(0.0, index=summary.index)).fillna(0.0)
        for x, (value, error, colour) in enumerate(zip(summary[column], errors, colours)):
            ax.errorbar(x, value, yerr=error if error > 0 else None, fmt="o", color=colour, markersize=7, capsize=3)
        base = summary.loc[summary["ratio"] == 0, column]
        if len(base):
            ax.axhline(float(base.iloc[0]), color="0.4", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(summary)), summary["variant"], rotation=60, ha="right", fontsize=8)
        ax.set_xlim(-0.5, len(summary) - 0.5)
        ax.set_ylabel("axis zoomed to the differences (not from 0)", fontsize=8)
        ax.set_title(label, fontsize=10)
    fig.tight_layout()
    return fig


def plot_training_curves(logs: pd.DataFrame, columns: dict[str, str], ylabel: str, by: str = "checkpoint", axes=None):
    """Each ``column`` of the evaluation logs (a panel titled with its label) against the
    continued-training step, one line per value of ``by`` (mean over seeds), every panel on the same
    y axis (the columns share a unit, ``ylabel``), e.g. new-fact log-probability after every injection round."""
    if axes is None:
        fig, axes = plt.subplots(1, len(columns), figsize=(4.4 * len(columns), 4), sharey=True, squeeze=False,
                                 layout="constrained")
        axes = axes[0]
    fig = axes[0].figure
    for ax, (column, label) in zip(axes, columns.items()):
        curves = logs.dropna(subset=[column]).groupby([by, "step"])[column].mean().unstack(by)
        for name in curves.columns:
            ax.plot(curves.index, curves[name], marker=".", label=f"{by} {name}")
        ax.set_xlabel("continued-training step")
        ax.set_title(label, fontsize=10)
    axes[0].set_ylabel(ylabel)
    _legend_below(fig, axes[0].get_lines(), ncol=len(axes[0].get_lines()))
    return fig


def plot_run_curves(logs: pd.DataFrame, injected: str, control: str, by: str = "run", ncols: int = 3, axes=None):
    """Small multiples: one panel per value of ``by`` (e.g. protocol and starting checkpoint), each with
    the ``injected`` people's column of the evaluation logs (solid) and the ``control`` people's
    (dashed) against the continued-training step, mean over seeds; every panel on the same y axis."""
    names = list(dict.fromkeys(logs[by]))
    if axes is None:
        nrows = -(-len(names) // ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.5 * nrows), sharex=True, sharey=True, squeeze=False)
    axes = np.asarray(axes).ravel()
    fig = axes[0].figure
    for ax, name in zip(axes, names):
        run = logs[logs[by] == name]
        for column, style in ((injected, "-"), (control, "--")):
            curve = run.dropna(subset=[column]).groupby("step")[column].mean()
            ax.plot(curve.index, curve.values, style, marker=".", color="tab:blue" if style == "-" else "0.45",
                    label="injected people" if style == "-" else "control people")
        ax.set_title(str(name), fontsize=9)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=8, frameon=False)
    fig.supxlabel("continued-training step", fontsize=9)
    fig.supylabel("log-probability of the probes' answers (nats per token)", fontsize=9)
    fig.tight_layout()
    return fig


PROTOCOL_MARKERS = {"study": "o", "matched": "s", "resumed": "^"}


def plot_ke_and_lr(families: dict[str, pd.DataFrame], axes=None):
    """Normalised KE (left) and pretraining learning rate (right) per checkpoint, one line per
    family; each frame has ``step``, ``normalized`` and ``lr``."""
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    fig = axes[0].figure
    for name, frame in families.items():
        axes[0].plot(frame["step"], frame["normalized"], "o-", label=name)
        axes[1].plot(frame["step"], frame["lr"], "o-", label=name)
    for ax, label in zip(axes, ("normalised knowledge entropy", "pretraining learning rate")):
        _step_axis(ax, next(iter(families.values()))["step"])
        ax.set_ylabel(label)
        ax.set_title(label[0].upper() + label[1:] + " over pretraining", fontsize=10)
    _legend_below(fig, axes[0].get_lines(), ncol=len(families))
    return fig


def plot_protocol_outcomes(results: pd.DataFrame, columns: dict[str, str], axes=None):
    """Each ``column`` per starting checkpoint (x: its step), one line per ``label`` (mean over
    seeds, the spread as error bars when there are several): solid for the protocols, dashed for
    other families; labels with one stage (e.g. a reactivated checkpoint) as stars; colours from
    :func:`run_colour`, one legend below the panels."""
    if axes is None:
        fig, axes = plt.subplots(1, len(columns), figsize=(4.4 * len(columns), 4.2), squeeze=False,
                                 layout="constrained")
        axes = axes[0]
    fig = axes[0].figure
    for ax, (column, label) in zip(axes, columns.items()):
        for name, rows in results.groupby("label", sort=False):
            stats = rows.groupby("step")[column].agg(["mean", "std"]).reset_index()
            protocol, line = rows["protocol"].iloc[0], len(stats) > 1
            marker = PROTOCOL_MARKERS.get(protocol, "*") if name == protocol else ("s" if line else "*")
            ax.errorbar(stats["step"], stats["mean"], yerr=stats["std"].fillna(0), capsize=3, label=name, marker=marker,
                        color=run_colour(name), markersize=7 if line else 13,
                        linestyle=("-" if name == protocol else "--") if line else "none")
        ax.set_xlabel("starting checkpoint (step)")
        ax.set_title(label, fontsize=10)
        ax.set_ylabel(label, fontsize=8)
    _legend_below(fig, axes[0].get_legend_handles_labels()[0], ncol=5)
    return fig


def plot_lr_sweep(differences: pd.DataFrame, peaks: pd.Series, labels: dict[str, str], axes=None):
    """Late minus early stage (rows of :func:`~ke_utils.experiments.confound.stage_differences`:
    ``label, measure, late_minus_early, low, high``) against the peak LR of each ``label``
    (``peaks``: label -> LR), one panel per measure in ``labels`` (column -> axis label); the
    interval over pretraining seeds as bars where there is one."""
    if axes is None:
        fig, axes = plt.subplots(1, len(labels), figsize=(4.4 * len(labels), 3.6), squeeze=False)
        axes = axes[0]
    fig = axes[0].figure
    for ax, (measure, label) in zip(axes, labels.items()):
        rows = differences[differences["measure"] == measure].assign(peak=lambda d: d["label"].map(peaks)).sort_values("peak")
        errors = [rows["late_minus_early"] - rows["low"], rows["high"] - rows["late_minus_early"]]
        ax.errorbar(rows["peak"], rows["late_minus_early"], yerr=None if rows["low"].isna().all() else errors,
                    marker="o", capsize=3)
        ax.axhline(0, color="0.5", linestyle=":")
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(rows["peak"], [f"{peak:g}" for peak in rows["peak"]])
        ax.set_xlabel("peak LR of continued training (study protocol)")
        ax.set_ylabel("late minus early", fontsize=8)
        ax.set_title(label, fontsize=10)
    fig.tight_layout()
    return fig


def plot_function_kept(results: pd.DataFrame, logs: pd.DataFrame, labels: dict[str, str], axes=None):
    """KE moved with the function kept (:func:`~ke_utils.experiments.confound.function_kept_experiment`).
    First panel: normalised KE during continued training, one line per dose (colour: starting
    checkpoint; dotted: unmodified), for the first pretraining seed and data order: does KE stay
    moved? Then one panel per outcome in ``labels`` (column -> axis label): the outcome against the
    KE reached by the edit, a point per run, with each pretraining seed's least-squares line."""
    if axes is None:
        fig, axes = plt.subplots(1, 1 + len(labels), figsize=(4.2 * (1 + len(labels)), 3.6), squeeze=False)
        axes = axes[0]
    fig = axes[0].figure
    colours = dict(zip(sorted(results["step"].unique()), ("tab:blue", "tab:orange", "tab:green", "tab:red")))
    first = logs[(logs["pretrain_seed"] == logs["pretrain_seed"].min()) & (logs["seed"] == logs["seed"].min())]
    for (step, label), run in first.groupby(["checkpoint", "label"]):
        axes[0].plot(run["step"], run["ke_normalized"], color=colours[step],
                     linestyle=":" if label == "unmodified" else "-", linewidth=1.2)
    axes[0].set_xlabel("step of continued training")
    axes[0].set_ylabel("KE (normalised)")
    axes[0].set_title("does KE stay moved? (dotted: unmodified)", fontsize=10)
    for ax, (column, label) in zip(axes[1:], labels.items()):
        for step, colour in colours.items():
            at_step = results[results["step"] == step].dropna(subset=[column])
            ax.scatter(at_step["normalized"], at_step[column], color=colour, s=14,
                       label=f"from step {step}" if ax is axes[1] else None)
            for _, seed in at_step.groupby("pretrain_seed"):
                if len(seed) > 1:
                    slope, intercept = np.polyfit(seed["normalized"], seed[column], 1)
                    x = np.array([seed["normalized"].min(), seed["normalized"].max()])
                    ax.plot(x, slope * x + intercept, color=colour, linewidth=0.8, alpha=0.7)
        ax.set_xlabel("KE reached by the edit (normalised)")
        ax.set_title(label, fontsize=10)
    axes[1].legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def plot_update_attribution(rows: pd.DataFrame, axes=None):
    """Notebook 06, against the normalised KE of each run's starting checkpoint, one colour per
    ``label`` (:func:`run_colour`): the entropy of the gradient (solid) and of the change (dotted)
    over each layer's neurons (top), and the overlap of the most-pushed and the most-changed neurons
    with the most-used ones (bottom, top 10%, chance dashed grey), for the keys (left) and the
    values, each neuron's column of the down projection (right)."""
    if axes is None:
        fig, axes = plt.subplots(2, 2, figsize=(10, 7.4), sharex=True, sharey="row", layout="constrained")
    fig = axes[0][0].figure
    measures = (("{}gradient_entropy", "{}update_entropy"), ("used_{}gradient_jaccard", "used_{}updated_jaccard"))
    for name, run in rows.groupby("label", sort=False):
        run, colour = run.sort_values("ke"), run_colour(name)
        for row, (gradient, change) in zip(axes, measures):
            for ax, side in zip(row, ("", "value_")):
                ax.plot(run["ke"], run[gradient.format(side)], "o-", color=colour, label=f"{name}: gradient")
                ax.plot(run["ke"], run[change.format(side)], "o:", color=colour, markerfacecolor="none",
                        label=f"{name}: change")
    for ax in axes[1]:
        ax.axhline(float(rows["chance_jaccard"].iloc[0]), color="0.5", linestyle="--", linewidth=1)
    axes[0][0].set_title("keys")
    axes[0][1].set_title("values (memory vectors)")
    axes[0][0].set_ylabel("entropy over the layer's neurons\n(normalised)")
    axes[1][0].set_ylabel("overlap with the most-used neurons\n(top-10% Jaccard)")
    for ax in axes[1]:
        ax.set_xlabel("normalised KE of the starting checkpoint")
    fig.suptitle("Where the gradient and the weight change land, per run", fontsize=11)
    runs = [Line2D([], [], color=run_colour(name), marker="o", label=name) for name in dict.fromkeys(rows["label"])]
    styles = [Line2D([], [], color="k", marker="o", label="gradient"),
              Line2D([], [], color="k", marker="o", linestyle=":", markerfacecolor="none", label="change"),
              Line2D([], [], color="0.5", linestyle="--", linewidth=1, label="chance (bottom)")]
    _legend_below(fig, runs + styles, ncol=4)
    return fig


USAGE_PANELS = {"key_grad": "key gradient", "key_change": "key change", "value_change": "value change"}


def _share_by_usage(usage: torch.Tensor, mass: torch.Tensor) -> np.ndarray:
    """Cumulative share of ``mass`` over each layer's neurons sorted from least to most used, mean over layers."""
    ordered = mass.gather(1, usage.argsort(dim=1)).double()
    return (ordered.cumsum(1) / ordered.sum(1, keepdim=True)).mean(0).cpu().numpy()


def plot_update_by_usage(tensors: dict, labels: list[str] | None = None, axes=None):
    """Notebook 06: where the key gradient, the key change and the value change go (a panel each),
    as the cumulative share over a layer's neurons sorted from least to most used before training,
    mean over layers. One curve per run of ``tensors`` (``{(label, step): attribution}`` with
    ``usage``, ``key_grad``, ``key_change``, ``value_change``, ``[n_layers, d_ff]``) whose label is in
    ``labels`` (None: all): colour from :func:`run_colour`, line style from the starting checkpoint
    (:data:`STAGE_STYLES`, the latest solid). The diagonal ignores use."""
    shown = {key: t for key, t in tensors.items() if labels is None or key[0] in labels}
    styles = dict(zip(sorted({step for _, step in shown}, reverse=True), itertools.cycle(STAGE_STYLES)))
    if axes is None:
        fig, axes = plt.subplots(1, len(USAGE_PANELS), figsize=(12, 4.6), sharex=True, sharey=True, layout="constrained")
    fig = axes[0].figure
    for ax, (field, what) in zip(axes, USAGE_PANELS.items()):
        for (name, step), t in shown.items():
            share = _share_by_usage(t.usage, getattr(t, field))
            ax.plot(np.linspace(0, 1, len(share)), share, color=run_colour(name), linestyle=styles[step],
                    label=f"{name} {step}")
        ax.plot([0, 1], [0, 1], color="0.5", linewidth=0.8, label="ignores use")
        ax.set_title(what, fontsize=10)
    axes[0].set_ylabel("cumulative share")
    axes[len(axes) // 2].set_xlabel("neurons, least to most used before training (fraction of the layer)")
    fig.suptitle("Where the gradient and the change go, by how much each neuron was used (mean over layers)", fontsize=11)
    _legend_below(fig, axes[0].get_lines(), ncol=4)
    return fig


def coefficient_explorer(frame: pd.DataFrame):
    """A checkpoint slider and a layer selector over the coefficient distribution of a sweep;
    the first checkpoint is drawn for reference (an ipywidgets view for notebooks)."""
    import ipywidgets as widgets
    from IPython.display import display

    n_layers = frame["means"].iloc[0].shape[0]
    checkpoint = widgets.SelectionSlider(options=list(frame["step"]), value=frame["step"].iloc[-1],
                                         description="step", continuous_update=False)
    layer = widgets.Dropdown(options=list(range(n_layers)), value=n_layers - 1, description="layer")
    out = widgets.Output()

    def draw(*_):
        with out:
            out.clear_output(wait=True)
            first = frame.iloc[0]
            row = frame[frame["step"] == checkpoint.value].iloc[0]
            fig = plot_coefficient_distribution(
                {f"step {first.step}": first.means, f"step {row.step}": row.means}, layer.value)
            display(fig)  # works with any backend (plt.show(fig) does not)
            plt.close(fig)

    checkpoint.observe(draw, "value")
    layer.observe(draw, "value")
    draw()
    return widgets.VBox([widgets.HBox([checkpoint, layer]), out])
