"""Notebook 03's experiment: the same continued training from checkpoints of different ages, and
how acquisition and forgetting follow their knowledge entropy."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from .. import study
from ..checkpoints import load_checkpoint
from ..continual import ScaleConfig, TrainConfig, run_stage, start_training
from ..outcomes import late_gain, outcome
from ..probes import probe_table, score_probes
from ..report import Finding
from ..setups import KnowledgeSetup
from ..stats import Correlation, correlation
from ..stream import StreamConfig, build_stream
from ..training import train_step

MEASURE = "gain_beyond_control_paraphrase_mem"  # ours: nats gained by the injected people beyond the controls


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
                     device: str = "cpu", progress: bool = True,
                     scale: ScaleConfig = ScaleConfig()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The same continued training from every checkpoint, for each seed (the seed sets the data
    order and the training randomness; every checkpoint sees the same order for a seed),
    evaluated before, after every ``eval_every``-th injection round (0: never) and at the end;
    ``scale``: micro-batches (gradient accumulation) and gradient checkpointing. Returns ``(results, logs)``: one row per (checkpoint, seed) with :func:`outcome`, and the logs."""
    results, logs = [], []
    runs = [(c, s) for s in seeds for c in checkpoints]
    for ckpt, seed in tqdm(runs, desc="stages x seeds", disable=not progress):
        log = run_stage(ckpt, setup, dataclasses.replace(stream_config, seed=seed),
                        dataclasses.replace(train_config, seed=seed), eval_every, device, scale=scale)
        logs.append(log.assign(seed=seed))
        results.append({"step": ckpt.step, "seed": seed, **outcome(log)})
    return pd.DataFrame(results), pd.concat(logs, ignore_index=True)


def correlations(summary: pd.DataFrame) -> dict[str, Correlation]:
    """Pearson r of knowledge entropy (``ke``) with, over the stages of ``summary`` (one row per
    checkpoint, means over seeds): ``"acquisition"`` (the study's A over all probes), ``"gain"``
    (beyond the controls) and ``"forgetting"`` (1 - retention)."""
    return {"acquisition": correlation(summary["ke"], summary["acquisition_paraphrase_all"]),
            "gain": correlation(summary["ke"], summary[MEASURE]),
            "forgetting": correlation(summary["ke"], 1 - summary["retention"])}


def findings(summary: pd.DataFrame, logs: pd.DataFrame) -> dict[str, Finding]:
    """Notebook 03's claims from ``summary`` (as :func:`correlations`) and the evaluation ``logs``
    of :func:`stage_experiment`: the study's finding 2 as correlations with KE, then the
    experiment's own checks (asserted at the notebook's defaults: they hold on pretraining seeds 0-3
    of both, docs/findings_over_seeds.md): the injected people gain more than the controls, no
    stage ends at a ceiling, the curves still rise over the second half, retention below 1."""
    r = correlations(summary)
    k = logs.groupby(["checkpoint", "step"])["logprob_paraphrase_mem"].mean().unstack("step")
    k_before, k_after = k.iloc[:, 0], k.iloc[:, -1]
    range_before, range_after = k_before.max() - k_before.min(), k_after.max() - k_after.min()
    rising_half = late_gain(logs, "logprob_paraphrase_mem", by="checkpoint", fraction=1 / 2)
    rising = late_gain(logs, "logprob_paraphrase_mem", by="checkpoint")
    gain, ret, exact = summary[MEASURE], summary["retention"], summary["exact_paraphrase_mem"]
    over_once = summary["acquisition_paraphrase_mem"] - summary["acquisition_once_mem"]
    points = f"OLMo-1B; about {study.CORRELATION_POINTS} checkpoints, inferred from its p-values"
    r_a, r_f = study.value("pearson_ke_acquisition"), study.value("pearson_ke_forgetting")
    ours = "not in the study (our check)"
    return {
        "checkpoints with higher KE acquire more new knowledge beyond the controls (r(KE, gain beyond control) > 0.5)":
            Finding(r["gain"].r > 0.5, r["gain"].r, study=f"not measured; by its A: r(KE, A) = {r_a:+.2f}",
                    threshold="Pearson r > 0.5"),
        "checkpoints with higher KE acquire more by the study's A over all probes (r(KE, A) > 0.5)":
            Finding(r["acquisition"].r > 0.5, r["acquisition"].r, study=f"r(KE, A) = {r_a:+.2f} ({points})",
                    threshold="Pearson r > 0.5"),
        "checkpoints with higher KE forget less (r(KE, F) < -0.5)":
            Finding(r["forgetting"].r < -0.5, r["forgetting"].r, study=f"r(KE, F) = {r_f:+.2f} ({points})",
                    threshold="Pearson r < -0.5"),
        "the injected people gain more than the control people at every stage (gain beyond control > 0)":
            Finding(bool((gain > 0).all()), gain.min(), check=True, study="not in the study (it has no control people)",
                    threshold="smallest over stages > 0 nats"),
        "the new facts are far from memorised when a stage ends (exact match < 0.5 at every stage), so no stage "
        "ends at a ceiling": Finding(bool((exact < 0.5).all()), exact.max(), check=True, study=ours,
                                     threshold="largest over stages < 0.5"),
        "the curves still rise over the second half of every stage (K gains > 0 nats from its midpoint on)":
            Finding(bool((rising_half > 0).all()), rising_half.min(), check=True, study=ours,
                    threshold="smallest over stages > 0 nats"),
        "the curves are still rising when the stage ends (K gains > 0.02 nats over its last third, from every checkpoint)":
            Finding(bool((rising > 0.02).all()), rising.min(), study=ours, threshold="smallest over stages > 0.02 nats"),
        "every stage ends at nearly the same K (range after < half the range before), so differences in A come mostly "
        "from where each stage starts": Finding(
            bool(range_after < 0.5 * range_before), range_after / range_before if range_before > 0 else None, study=ours,
            threshold="range of K after / range before < 0.5"),
        "new facts seen in many wordings are acquired more than facts seen once (A paraphrase > A once, every stage)":
            Finding(bool((over_once > 0).all()), over_once.min(),
                    study="no number for it among the study's (data/study_numbers.csv)", threshold="smallest over stages > 0"),
        "training on other text makes the model forget part of what it knew (retention < 1 at every stage)":
            Finding(bool((ret < 1).all()), ret.max(), check=True, study=study.table1_change("forgetting"),
                    threshold="largest over stages < 1"),
    }


def key_numbers(summary: pd.DataFrame) -> dict[str, float]:
    """The correlations with KE, and acquisition, gain beyond control and retention at the first
    and last stage."""
    r = correlations(summary)
    first, last = summary.iloc[0], summary.iloc[-1]
    return {"r_ke_acquisition": r["acquisition"].r, "r_ke_gain_beyond_control": r["gain"].r,
            "r_ke_forgetting": r["forgetting"].r,
            **{f"{name}_{end}": row[column] for name, column in (("acquisition", "acquisition_paraphrase_all"),
                                                                  ("gain_beyond_control", MEASURE), ("retention", "retention"))
               for end, row in (("first", first), ("last", last))}}
