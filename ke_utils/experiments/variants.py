"""Notebook 04's experiment: reactivated variants of one checkpoint (the study's method on every
(p, q), and the same factors on random or most-used neurons as controls) trained further, against
the unmodified checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pandas as pd
from tqdm.auto import tqdm

from ..continual import ScaleConfig, TrainConfig, train_and_evaluate
from ..evaluation import evaluator
from ..memory.entropy import coefficient_means, knowledge_entropy
from ..memory.reactivation import kept, reactivate, restore
from ..outcomes import outcome, retention
from ..report import Finding, verdict
from ..stream import StreamConfig

MEASURE = "gain_beyond_control_paraphrase_mem"  # ours: nats gained by the injected people beyond the controls
STUDY_A = "acquisition_paraphrase_all"  # the study's A, over all of an item's probes


@dataclass(frozen=True)
class Variant:
    """One model to train further: ``select`` neurons, fraction ``ratio`` (p), ``factor`` (q).
    ``ratio = 0`` is the unmodified baseline."""

    name: str
    ratio: float = 0.0
    factor: float = 1.0
    select: str = "least"


def variant_grid(ratios=(0.5,), factors=(1.0, 2.0, 3.0), controls=((0.5, 2.0),),
                 selects=("random", "most")) -> list[Variant]:
    """The baseline, the study's method on every (p, q), and for each (p, q) in ``controls`` the
    controls with the same factors on other neurons: ``selects`` of ``"random"`` and ``"most"`` (used)."""
    variants = [Variant("baseline")]
    variants += [Variant(f"least p={p:g} q={q:g}", p, q) for p in ratios for q in factors]
    for p, q in controls:
        variants += [Variant(f"{s} p={p:g} q={q:g}", p, q, s) for s in selects]
    return variants


def reactivation_experiment(model, tokenizer, setup, variants: list[Variant], batches: list[dict], stream_config=None,
                            train_config=None, seeds=(0,), progress: bool = True,
                            checkpoint=None, scale: ScaleConfig = ScaleConfig()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reactivate ``model`` as each variant (coefficient means measured on ``batches``, e.g.
    :func:`~ke_utils.memory.batching.text_batches`), measure its KE on the same batches, and continue
    training it on ``setup``'s stream (same data order for every variant of a seed). One model is
    on the device: the weights as given are kept in host memory and put back before each variant
    is made in place (:func:`~ke_utils.memory.reactivation.kept`), and ``model`` is left as it was given
    (values, dtype, mode; ``checkpoint``: where it was loaded from, for the ``matched`` and
    ``resumed`` protocols; ``scale``: micro-batches and gradient checkpointing). Acquisition and retention are relative to the *unmodified* model, so a
    modification that hurts before training is not counted as acquisition.
    Returns ``(results, logs)``: one row per (variant, seed), and the evaluation logs."""
    stream_config, train_config = stream_config or StreamConfig(), train_config or TrainConfig()
    results, logs = [], []
    with kept(model) as given:
        means = coefficient_means(model, batches)
        # each run is evaluated on its fp32 master weights (continue_training), so the unmodified model is too
        model.float()
        reference = pd.Series(evaluator(tokenizer, setup)(model, 0))
        runs = [(s, v) for s in seeds for v in variants]
        for seed, variant in tqdm(runs, desc="variants x seeds", disable=not progress):
            restore(model, given)
            _, report = reactivate(model, means, variant.ratio, variant.factor, variant.select, inplace=True, seed=seed)
            ke = knowledge_entropy(coefficient_means(model, batches))
            log = train_and_evaluate(model, tokenizer, setup, dataclasses.replace(stream_config, seed=seed),
                                     dataclasses.replace(train_config, seed=seed), checkpoint=checkpoint, scale=scale)
            start = log.iloc[0]
            results.append({"variant": variant.name, "select": variant.select, "ratio": variant.ratio,
                            "factor": variant.factor, "seed": seed, "exact": report.exact, "ke": ke.total,
                            "normalized": ke.normalized,
                            "retention_at_start": retention(reference["retention_score"], start["retention_score"]),
                            "heldout_loss_at_start": start["heldout_loss"] - reference["heldout_loss"],
                            **outcome(log, before=reference)})
            logs.append(log.assign(variant=variant.name, seed=seed))
    return pd.DataFrame(results), pd.concat(logs, ignore_index=True)


def baseline_and_lifted(summary: pd.DataFrame) -> tuple[pd.Series, pd.DataFrame]:
    """The unmodified checkpoint's row of ``summary`` (one row per variant) and the rows of the
    study's method that lift the least-used neurons (q >= 1)."""
    base = summary[summary["ratio"] == 0].iloc[0]
    lifted = summary[(summary["select"] == "least") & (summary["ratio"] > 0) & (summary["factor"] >= 1)]
    return base, lifted


def findings(summary: pd.DataFrame, control: str = "p=0.5 q=2", min_gain: float = 0.05,
             min_a: float = 0.01) -> dict[str, Finding]:
    """Notebook 04's claims from ``summary`` (one row per variant: means over seeds and their
    ``<column>_std``, with ``variant, select, ratio, factor``): reactivation raises KE in every
    variant (a check, asserted on the built-in families), then the study's: a reactivated checkpoint
    gains more beyond the controls, has a higher A, retains more; and, with the controls at
    ``control``, whether aiming at the least-used neurons matters. A difference counts only when it
    exceeds 2 x the spread over seeds and at least ``min_gain`` (nats of gain beyond control) or
    ``min_a`` (A, one percentage point): with one seed the spread is unknown and the minimum alone
    decides. The control claim needs ``least`` and at least one of ``random`` / ``most`` at ``control``."""
    base, lifted = baseline_and_lifted(summary)
    spread = "and > 2 x the larger spread over seeds"

    def beats(column: str, floor: float, study: str, unit: str) -> Finding:
        best = lifted.loc[lifted[column].idxmax()]
        margin = best[column] - base[column]
        return Finding(bool(margin > max(2 * base[f"{column}_std"], 2 * best[f"{column}_std"], floor)), margin, study=study,
                       threshold=f"best variant minus unmodified > {floor}{unit} {spread}")

    ke_rise = lifted["normalized"] - base["normalized"]
    out = {
        "reactivation (least-used, q >= 1) raises the measured KE in every variant":
            Finding(bool((ke_rise > 0).all()), ke_rise.min(), check=True, study="KE rises (section 4)",
                    threshold="smallest rise over variants > 0 (normalised KE)"),
        f"a reactivated checkpoint gains more beyond the controls than the unmodified one (by > {min_gain} nats and "
        "> 2 x the spread over seeds)": beats(MEASURE, min_gain, "not measured; by its A, see the next row", " nats"),
        f"a reactivated checkpoint has a higher A (the study's, all probes) than the unmodified one (by > {min_a} and "
        "> 2 x its spread over seeds)": beats(STUDY_A, min_a, "a higher A with q >= 1, by a little (section 4)", ""),
        "every reactivated checkpoint (least-used, q >= 1) retains more than the unmodified one":
            Finding(bool((lifted["retention"] > base["retention"]).all()), (lifted["retention"] - base["retention"]).min(),
                    study="less forgetting with q >= 1 (section 4)",
                    threshold="smallest over variants of retention minus unmodified > 0"),
    }
    rows = summary.set_index("variant").reindex([f"{s} {control}" for s in ("least", "random", "most")])
    if pd.notna(rows[MEASURE].iloc[0]) and rows[MEASURE].iloc[1:].notna().any():
        margin = max(2 * rows[f"{MEASURE}_std"].max(), min_gain)
        lead = rows[MEASURE].iloc[0] - rows[MEASURE].iloc[1:].max()
        out[f"lifting the least-used neurons gains more beyond the controls than the same factors on random or "
            f"most-used neurons ({control}; by > {min_gain} nats and > 2 x the largest spread over seeds)"] = Finding(
            bool(lead > margin), lead, study="not tested (the study ran no such control)",
            threshold=f"least-used minus the best control > {min_gain} nats and > 2 x the largest spread over seeds")
    return out


# Between pretraining seeds, one checkpoint's gain beyond control varies this much (docs/is_it_the_entropy.md).
SEED_SPREAD = ("one pretraining seed; between pretraining seeds the gain beyond control of one checkpoint has a standard "
               "deviation of 0.03-0.20 nats, see docs/is_it_the_entropy.md")


def summary_lines(findings: dict[str, Finding], summary: pd.DataFrame, min_gain: float, min_a: float, n_seeds: int,
                  asserted: bool) -> list[str]:
    """Notebook 04's answer to the study's resuscitation claim, one line per question, from
    :func:`findings` (in its order) and ``summary``: each difference as :func:`~ke_utils.report.verdict`
    words it for one run; ``asserted``: the KE check was asserted (:func:`~ke_utils.report.checks_apply`)."""
    base, lifted = baseline_and_lifted(summary)
    raised, *claims = findings.values()
    spread = n_seeds > 1
    lines = ["Did lifting the least-used neurons raise KE? "
             + ("YES (asserted above)" if asserted else ("YES" if raised else "NO")),
             "Did a reactivated checkpoint then acquire more beyond the controls? "
             + verdict(claims[0], "the best reactivated variant gained more than the unmodified checkpoint",
                       "every reactivated variant gained less than the unmodified checkpoint, the best", min_gain,
                       " nats", SEED_SPREAD, spread),
             "By the study's A? " + verdict(claims[1], "the best reactivated variant's A is higher than the unmodified "
                                            "checkpoint's", "every reactivated variant's A is lower, the best's", min_a,
                                            spread_too=spread),
             f"Did it forget less? in this run: {'every' if claims[2] else 'not every'} reactivated variant retained more "
             f"(retention {base['retention']:.2f} unmodified, {lifted['retention'].min():.2f}-{lifted['retention'].max():.2f} "
             "reactivated; one pretraining seed)"]
    if len(claims) > 3:
        lines += ["Did it beat the same factors on random or most-used neurons? "
                  + verdict(claims[3], "the least-used neurons gained more beyond the controls than the best of those",
                            "the least-used neurons gained less than the best of those", min_gain, " nats", SEED_SPREAD,
                            spread),
                  "So in this run more entropy, not just larger weights, made the difference." if claims[3] else
                  "So this run cannot tell spreading use apart from making weights larger."]
    return lines


def key_numbers(summary: pd.DataFrame) -> dict[str, float | str]:
    """KE, gain beyond control, A and retention of the unmodified checkpoint and the best reactivated variant."""
    base, lifted = baseline_and_lifted(summary)
    best = lifted.loc[lifted[MEASURE].idxmax()]
    return {"ke_base": base["normalized"], "ke_reactivated_max": lifted["normalized"].max(),
            "gain_beyond_control_base": base[MEASURE], "gain_beyond_control_best": best[MEASURE],
            "best_variant": best["variant"], "acquisition_base": base[STUDY_A],
            "acquisition_best": lifted[STUDY_A].max(), "retention_base": base["retention"],
            "retention_best": lifted["retention"].max()}
