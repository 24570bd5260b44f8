"""Experiment drivers: the same continued training from checkpoints of different ages (notebook
03), and from reactivated variants of one checkpoint against the unmodified one (notebook 04)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from .checkpoints import load_checkpoint
from .continual import ScaleConfig, TrainConfig, continue_training, start_training
from .memory.entropy import coefficient_means, knowledge_entropy
from .evaluation import evaluator
from .outcomes import outcome, retention
from .probes import probe_table, score_probes
from .memory.reactivation import kept, reactivate, restore
from .setups import KnowledgeSetup
from .stream import StreamConfig, build_stream
from .training import train_step


def train_and_evaluate(model, tokenizer, setup: KnowledgeSetup, stream_config: StreamConfig,
                       train_config: TrainConfig, eval_every: int = 0, progress: bool = False,
                       checkpoint=None, scale: ScaleConfig = ScaleConfig()) -> pd.DataFrame:
    """Continued training of ``model`` (in place) on the stream of ``setup``; the evaluation log
    (step 0 = before, after every ``eval_every``-th injection round if > 0, and at the end).
    ``scale``: micro-batches and gradient checkpointing (:func:`~ke_utils.continual.continue_training`;
    default: whole batches)."""
    stream = build_stream(tokenizer, setup.background, setup.paraphrase, setup.once, stream_config)
    rounds = [r * stream_config.interval for r in range(eval_every, stream_config.rounds, eval_every)] if eval_every else []
    full = evaluator(tokenizer, setup)

    def evaluate(m, step: int) -> dict:  # retention and LM loss only before and at the end
        return full(m, step, with_retention=step in (0, len(stream.batches)))

    return continue_training(model, stream, train_config, evaluate, rounds, progress, checkpoint, scale)


def run_stage(checkpoint, setup: KnowledgeSetup, stream_config: StreamConfig, train_config: TrainConfig,
              eval_every: int = 0, device: str = "cpu", progress: bool = False) -> pd.DataFrame:
    """Continued training of one checkpoint; the evaluation log (step 0 = before)."""
    tokenizer = AutoTokenizer.from_pretrained(checkpoint.path, revision=checkpoint.revision)
    model = load_checkpoint(checkpoint, device=device)
    log = train_and_evaluate(model, tokenizer, setup, stream_config, train_config, eval_every, progress, checkpoint)
    return log.assign(checkpoint=checkpoint.step)


@dataclass(frozen=True)
class FirstRound:
    """The first injection round of continued training, piece by piece: ``batch``, its first
    batch (one row per sequence: ``row, injected`` (regime and item, empty for background text),
    ``tokens, text``); ``steps``, one row per update with its ``lr`` and ``loss``; ``probes``,
    the first paraphrase item's probes scored before and after the round
    (``logprob_before, logprob_after``, mean nats per target token)."""

    batch: pd.DataFrame
    steps: pd.DataFrame
    probes: pd.DataFrame


def first_round(checkpoint, setup: KnowledgeSetup, stream_config: StreamConfig, train_config: TrainConfig,
                device: str = "cpu", chars: int = 90) -> FirstRound:
    """Load ``checkpoint`` and train it on the first ``stream_config.interval`` batches of
    ``setup``'s stream (one injection round) exactly as :func:`run_stage` begins: same optimizer,
    schedule and precision. Nothing is kept."""
    tokenizer = AutoTokenizer.from_pretrained(checkpoint.path, revision=checkpoint.revision)
    model = load_checkpoint(checkpoint, device=device)
    stream = build_stream(tokenizer, setup.background, setup.paraphrase, setup.once, stream_config)
    first = stream.injections[stream.injections["step"] == 0].set_index("row")
    batch = stream.batches[0].tolist()
    rows = pd.DataFrame({"row": range(len(batch)),
                         "injected": [f"{first.at[r, 'regime']} item {first.at[r, 'item']}" if r in first.index else ""
                                      for r in range(len(batch))],
                         "tokens": [len(ids) for ids in batch],
                         "text": [tokenizer.decode(ids[:40], skip_special_tokens=True)[:chars] + " ..." for ids in batch]})
    probes = probe_table(setup.paraphrase[:1])
    before = score_probes(model, tokenizer, probes)["logprob"]
    autocast, opt, sched = start_training(model, train_config, len(stream.batches), checkpoint)
    model.train()
    steps = []
    for step in range(1, stream_config.interval + 1):
        lr = sched.get_last_lr()[0]
        steps.append({"step": step, "lr": lr, "loss": train_step(model, stream.batches[step - 1].to(device), opt, sched, autocast)})
    after = score_probes(model, tokenizer, probes)["logprob"]
    return FirstRound(rows, pd.DataFrame(steps),
                      probes[["kind", "input", "target"]].assign(logprob_before=before, logprob_after=after))


def stage_experiment(checkpoints, setup: KnowledgeSetup, stream_config: StreamConfig = StreamConfig(),
                     train_config: TrainConfig = TrainConfig(), seeds: Sequence[int] = (0,), eval_every: int = 0,
                     device: str = "cpu", progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The same continued training from every checkpoint, for each seed (the seed sets the data
    order and the training randomness; every checkpoint sees the same order for a seed),
    evaluated before, after every ``eval_every``-th injection round (0: never) and at the end.
    Returns ``(results, logs)``: one row per (checkpoint, seed) with :func:`outcome`, and the logs."""
    results, logs = [], []
    runs = [(c, s) for s in seeds for c in checkpoints]
    for ckpt, seed in tqdm(runs, desc="stages x seeds", disable=not progress):
        log = run_stage(ckpt, setup, dataclasses.replace(stream_config, seed=seed),
                        dataclasses.replace(train_config, seed=seed), eval_every, device)
        logs.append(log.assign(seed=seed))
        results.append({"step": ckpt.step, "seed": seed, **outcome(log)})
    return pd.DataFrame(results), pd.concat(logs, ignore_index=True)


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
                            checkpoint=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reactivate ``model`` as each variant (coefficient means measured on ``batches``, e.g.
    :func:`~ke_utils.memory.batching.text_batches`), measure its KE on the same batches, and continue
    training it on ``setup``'s stream (same data order for every variant of a seed). One model is
    on the device: the weights as given are kept in host memory and put back before each variant
    is made in place (:func:`~ke_utils.memory.reactivation.kept`), and ``model`` is left as it was given
    (values, dtype, mode; ``checkpoint``: where it was loaded from, for the ``matched`` and
    ``resumed`` protocols). Acquisition and retention are relative to the *unmodified* model, so a
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
                                     dataclasses.replace(train_config, seed=seed), checkpoint=checkpoint)
            start = log.iloc[0]
            results.append({"variant": variant.name, "select": variant.select, "ratio": variant.ratio,
                            "factor": variant.factor, "seed": seed, "exact": report.exact, "ke": ke.total,
                            "normalized": ke.normalized,
                            "retention_at_start": retention(reference["retention_score"], start["retention_score"]),
                            "heldout_loss_at_start": start["heldout_loss"] - reference["heldout_loss"],
                            **outcome(log, before=reference)})
            logs.append(log.assign(variant=variant.name, seed=seed))
    return pd.DataFrame(results), pd.concat(logs, ignore_index=True)


def reactivation_findings(summary: pd.DataFrame, measure: str = "gain_beyond_control_paraphrase_mem",
                          control: str = "p=0.5 q=2", study_a: str = "acquisition_paraphrase_all",
                          min_gain: float = 0.05, min_a: float = 0.01) -> tuple[pd.Series, pd.DataFrame, dict[str, bool]]:
    """Notebook 04's claims from ``summary`` (one row per variant: means over seeds and their
    ``<column>_std``, with ``variant, select, ratio, factor``). Returns the baseline row, the
    lifted variants (least-used, q >= 1) and ``{claim: observed}`` (``measure``: ours, the gain beyond
    control; ``study_a``: the study's A, over all of an item's probes). A difference counts only
    when it exceeds 2 x the spread over seeds and at least ``min_gain`` (nats; notebook 05's
    threshold) or ``min_a`` (A, one percentage point): with one seed the spread is unknown and the
    minimum alone decides. The control claim needs ``least`` and at least one of ``random`` /
    ``most`` at ``control``."""
    base = summary[summary["ratio"] == 0].iloc[0]
    lifted = summary[(summary["select"] == "least") & (summary["ratio"] > 0) & (summary["factor"] >= 1)]

    def beats(column: str, floor: float) -> bool:
        best = lifted.loc[lifted[column].idxmax()]
        return bool(best[column] - base[column] > max(2 * base[f"{column}_std"], 2 * best[f"{column}_std"], floor))

    findings = {
        f"a reactivated checkpoint gains more beyond the controls than the unmodified one (by > {min_gain} nats and "
        "> 2 x the spread over seeds)": beats(measure, min_gain),
        f"a reactivated checkpoint has a higher A (the study's, all probes) than the unmodified one (by > {min_a} and "
        "> 2 x its spread over seeds)": beats(study_a, min_a),
        "every reactivated checkpoint (least-used, q >= 1) retains more than the unmodified one":
            bool((lifted["retention"] > base["retention"]).all()),
    }
    rows = summary.set_index("variant").reindex([f"{s} {control}" for s in ("least", "random", "most")])
    if pd.notna(rows[measure].iloc[0]) and rows[measure].iloc[1:].notna().any():
        margin = max(2 * rows[f"{measure}_std"].max(), min_gain)
        findings[f"lifting the least-used neurons gains more beyond the controls than the same factors on random or "
                 f"most-used neurons ({control}; by > {min_gain} nats and > 2 x the largest spread over seeds)"] = bool(
            rows[measure].iloc[0] - rows[measure].iloc[1:].max() > margin)
    return base, lifted, findings
