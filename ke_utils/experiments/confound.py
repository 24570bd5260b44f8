"""Notebook 05's experiment: is it the entropy? The learning-rate confound of the study's
finding 2, and a causal test.

The study trained OLMo-1B checkpoints further with a fresh AdamW warmed up to one peak learning
rate. Its checkpoints had been pretrained with cosine decay, so the later a checkpoint, the
larger the jump from its own learning rate to that peak: "later" and "abrupt re-warming" go
together. This module runs the same continued training under the protocols of
:mod:`ke_utils.continual` (``study``, ``matched``, ``resumed``), raises a late
checkpoint's knowledge entropy to an earlier one's with :func:`~ke_utils.memory.reactivation.reactivate`,
and asks how much of acquisition and forgetting knowledge entropy explains beyond the LR jump.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from .. import study
from ..checkpoint_sweep import sweep
from ..checkpoints import Checkpoint, load_checkpoint
from ..continual import TrainConfig, cannot_run, peak_lr, recorded_lr, train_and_evaluate
from ..memory.batching import text_batches
from ..memory.entropy import KnowledgeEntropy, coefficient_means, knowledge_entropy
from ..memory.hooks import find_coefficient_modules
from ..memory.reactivation import Reactivation, reactivate, restore, snapshot, up_projection_names
from ..outcomes import outcome
from ..report import Finding
from ..setups import KnowledgeSetup
from ..stats import mean_interval
from ..stream import StreamConfig
from ..subjects import Subject, seeded_subject
from .stages import stage_experiment


def protocol_experiment(checkpoints: Sequence[Checkpoint], setup: KnowledgeSetup, stream_config: StreamConfig,
                        train_config: TrainConfig, protocols: Sequence[str] = ("study", "matched", "resumed"),
                        seeds: Sequence[int] = (0,), lr_of: Callable[[Checkpoint], float] | None = None,
                        eval_every: int = 0, device: str = "cpu",
                        progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`~ke_utils.experiments.stages.stage_experiment` from every checkpoint under every
    protocol (same stream, same data order). ``lr_of(checkpoint)``: its pretraining LR (default:
    what the checkpoint recorded; :func:`~ke_utils.continual.pretraining_lr_of` knows OLMo-1B's).
    Rows gain ``protocol``, ``own_lr``, ``peak_lr`` (the highest LR of continued training) and
    ``lr_jump`` = peak / own. A protocol a checkpoint cannot run (``resumed`` without optimizer
    state) is skipped with a message."""
    lr_of = lr_of or recorded_lr
    results, logs = [], []
    runs = [(p, c) for p in protocols for c in checkpoints]
    for protocol, ckpt in tqdm(runs, desc="protocols x checkpoints", disable=not progress):
        if why := cannot_run(protocol, ckpt):
            print(why)
            continue
        lr = lr_of(ckpt)
        config = dataclasses.replace(train_config, protocol=protocol, own_lr=lr)
        result, log = stage_experiment([ckpt], setup, stream_config, config, seeds, eval_every, device, progress=False)
        peak = peak_lr(config, lr)
        results.append(result.assign(protocol=protocol, own_lr=lr, peak_lr=peak, lr_jump=peak / lr))
        logs.append(log.assign(protocol=protocol))
    return pd.concat(results, ignore_index=True), pd.concat(logs, ignore_index=True)


def match_knowledge_entropy(model, batches: list[dict], target: float, ratio: float = 0.5,
                            factors: tuple[float, float] = (0.05, 3.0), tolerance: float = 1e-3,
                            max_steps: int = 20, means: torch.Tensor | None = None, preserve_function: bool = False,
                            ) -> tuple[torch.nn.Module, Reactivation, KnowledgeEntropy]:
    """Reactivate ``model`` in place (the least-used fraction ``ratio`` of neurons) so that its
    knowledge entropy on ``batches`` is ``target`` (nats) within ``tolerance``, with the factor q
    found by bisection in ``factors`` (KE rises with q over that range on the built-in family).
    Every attempt starts from the weights as given: the weights reactivation changes (the up
    projections, and with ``preserve_function`` the down projections) are kept in host memory
    meanwhile, so no copy of the model is made. ``preserve_function``: see
    :func:`~ke_utils.memory.reactivation.reactivate` (KE moves, the logits do not; a q below 1
    then lowers KE, so ``target`` may lie below the model's own).
    ``means``: ``model``'s coefficient means on ``batches`` if already measured. Returns ``(model,
    report, knowledge entropy reached)``, ``model`` reactivated with the best q; raises ValueError,
    ``model`` left as given, if ``target`` is not reachable."""
    means = coefficient_means(model, batches) if means is None else means
    modules = dict(model.named_modules())
    changed = up_projection_names(model) + (find_coefficient_modules(model) if preserve_function else [])
    kept = {name: snapshot(modules[name]) for name in changed}

    def put_back() -> None:
        for name, saved in kept.items():
            restore(modules[name], saved)

    def lift(q: float) -> Reactivation:
        put_back()
        return reactivate(model, means, ratio, q, inplace=True, preserve_function=preserve_function)[1]

    def attempt(q: float) -> tuple[Reactivation, KnowledgeEntropy]:
        report = lift(q)
        return report, knowledge_entropy(coefficient_means(model, batches))

    low, high = factors
    lo, hi = attempt(low), attempt(high)
    if not lo[1].total <= target <= hi[1].total:
        put_back()
        raise ValueError(f"target KE {target:.4f} is outside [{lo[1].total:.4f}, {hi[1].total:.4f}] "
                         f"reached with q in {factors}")
    best = min((lo, hi), key=lambda r: abs(r[1].total - target))
    for _ in range(max_steps):
        if abs(best[1].total - target) <= tolerance:
            break
        middle = (low + high) / 2
        current = attempt(middle)
        low, high = (middle, high) if current[1].total < target else (low, middle)
        best = min((best, current), key=lambda r: abs(r[1].total - target))
    lift(best[0].factor)
    return (model, *best)


def variance_explained(frame: pd.DataFrame, outcome: str,
                       predictors: dict[str, Sequence[str]]) -> pd.DataFrame:
    """R^2 of an ordinary least-squares fit of ``outcome`` on each named set of ``predictors``
    (with an intercept), and the adjusted R^2 that charges each predictor; one row per set."""
    y = frame[outcome].to_numpy(float)
    n = len(y)
    rows = []
    for name, columns in predictors.items():
        x = np.column_stack([np.ones(n), *(frame[c].to_numpy(float) for c in columns)])
        coef, *_ = np.linalg.lstsq(x, y, rcond=None)
        residual = float(((y - x @ coef) ** 2).sum())
        total = float(((y - y.mean()) ** 2).sum())
        r2 = 1 - residual / total if total > 0 else float("nan")
        k = len(columns)
        adjusted = 1 - (1 - r2) * (n - 1) / (n - k - 1) if n - k - 1 > 0 else float("nan")
        rows.append({"predictors": name, "r2": r2, "adjusted_r2": adjusted, "n": n})
    return pd.DataFrame(rows)


def causal_test(late: Checkpoint, target_ke: float, setup: KnowledgeSetup, stream_config: StreamConfig,
                train_config: TrainConfig, texts: Sequence[str], seeds: Sequence[int] = (0,), eval_every: int = 0,
                random_control: bool = False, device: str = "cpu", lr_of: Callable[[Checkpoint], float] | None = None
                ) -> tuple[pd.DataFrame, pd.DataFrame, Reactivation]:
    """Raise ``late``'s knowledge entropy on ``texts`` to ``target_ke`` (nats; e.g. an earlier
    checkpoint's) with :func:`match_knowledge_entropy`, then train the modified model as
    :func:`protocol_experiment` trains the checkpoints under ``study`` (the only protocol that
    needs no optimizer state of the model's own). ``random_control``: also train the control with
    the same factor on as many randomly chosen neurons (per seed), which changes the weights as
    much without aiming at the least-used neurons. One model is on the device: ``late``'s weights
    are kept in host memory and every run starts from them, modified in place. Returns
    ``(results, logs, report)``: rows with :func:`~ke_utils.outcomes.outcome`, the learning rates
    of ``late`` (its pretraining LR from ``lr_of``, default: what a built-in checkpoint recorded),
    ``normalized`` (the KE reached, normalised) and ``label`` (``"reactivated"``, ``"random neurons"``)."""
    tokenizer = AutoTokenizer.from_pretrained(late.path, revision=late.revision)
    model = load_checkpoint(late, device=device)
    batches = text_batches(tokenizer, texts)
    means = coefficient_means(model, batches)  # one pass, for the bisection and the random control
    given = snapshot(model)
    _, report, ke = match_knowledge_entropy(model, batches, target_ke, means=means)
    lr = (lr_of or recorded_lr)(late)
    study_config = dataclasses.replace(train_config, protocol="study")
    runs = [("reactivated", "least")] + ([("random neurons", "random")] if random_control else [])
    results, logs = [], []
    for seed in seeds:
        for label, select in runs:
            restore(model, given)
            reactivate(model, means, report.ratio, report.factor, select, inplace=True, seed=seed)
            reached = ke if select == "least" else knowledge_entropy(coefficient_means(model, batches))
            log = train_and_evaluate(model, tokenizer, setup, dataclasses.replace(stream_config, seed=seed),
                                     dataclasses.replace(study_config, seed=seed), eval_every)
            results.append({"step": late.step, "seed": seed, **outcome(log), "protocol": "study", "own_lr": lr,
                            "peak_lr": peak_lr(study_config, lr), "lr_jump": peak_lr(study_config, lr) / lr,
                            "normalized": reached.normalized, "label": label})
            logs.append(log.assign(checkpoint=late.step, seed=seed, protocol="study", label=label))
    return pd.DataFrame(results), pd.concat(logs, ignore_index=True), report


def function_kept_doses(checkpoint: Checkpoint, targets: Sequence[float | None], setup: KnowledgeSetup,
                        stream_config: StreamConfig, train_config: TrainConfig, texts: Sequence[str],
                        seeds: Sequence[int] = (0,), eval_every: int = 2, device: str = "cpu",
                        lr_of: Callable[[Checkpoint], float] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Knowledge entropy moved, the function kept: ``checkpoint`` with its KE on ``texts`` set to
    each of ``targets`` (normalised, 0-1; None: unmodified) by :func:`match_knowledge_entropy`
    with ``preserve_function=True`` (the least-used half's coefficients scaled, their memory
    vectors divided by the same factors: the logits stay equal up to float rounding), then
    trained under ``study`` as :func:`causal_test` trains. A dose-response both ways: targets
    above the checkpoint's KE raise it, below lower it. KE is measured at every evaluation of the
    run (``ke_normalized`` in the logs: does it stay moved?). Rows: the outcome, ``label``,
    ``target``, ``normalized`` (KE reached) and ``normalized_after`` (after training), ``factor``
    (q), ``logit_change`` (largest absolute change of a logit on the first text batch, from the
    edit alone), the learning rates. Returns ``(results, logs)``."""
    tokenizer = AutoTokenizer.from_pretrained(checkpoint.path, revision=checkpoint.revision)
    model = load_checkpoint(checkpoint, device=device)
    batches = text_batches(tokenizer, texts)
    means = coefficient_means(model, batches)
    own = knowledge_entropy(means)
    given = snapshot(model)
    with torch.no_grad():
        reference = model(**{k: v.to(device) for k, v in batches[0].items()}).logits.cpu()
    lr = (lr_of or recorded_lr)(checkpoint)
    study_config = dataclasses.replace(train_config, protocol="study")

    def ke_now(m) -> dict:
        return {"ke_normalized": knowledge_entropy(coefficient_means(m, batches)).normalized}

    results, logs = [], []
    for target in targets:
        for seed in seeds:
            restore(model, given)
            factor, reached = float("nan"), own
            if target is not None:
                _, report, reached = match_knowledge_entropy(model, batches, target * own.total / own.normalized,
                                                             means=means, preserve_function=True)
                factor = report.factor
            with torch.no_grad():
                change = (model(**{k: v.to(device) for k, v in batches[0].items()}).logits.cpu() - reference).abs().max()
            label = "unmodified" if target is None else f"KE set to {target:.3f}"
            log = train_and_evaluate(model, tokenizer, setup, dataclasses.replace(stream_config, seed=seed),
                                     dataclasses.replace(study_config, seed=seed), eval_every, measure=ke_now)
            results.append({"step": checkpoint.step, "seed": seed, **outcome(log), "label": label, "target": target,
                            "normalized": reached.normalized, "normalized_after": float(log["ke_normalized"].iloc[-1]),
                            "factor": factor, "logit_change": float(change), "protocol": "study", "own_lr": lr,
                            "peak_lr": peak_lr(study_config, lr), "lr_jump": peak_lr(study_config, lr) / lr})
            logs.append(log.assign(checkpoint=checkpoint.step, seed=seed, label=label))
    return pd.DataFrame(results), pd.concat(logs, ignore_index=True)


def function_kept_experiment(subjects: Sequence[Subject], setup: KnowledgeSetup, stream_config: StreamConfig,
                             train_config: TrainConfig, seeds: Sequence[int] = (0,), doses: int = 3,
                             reach: float = 1.0, lr_of: Callable[[Checkpoint], float] | None = None, eval_every: int = 2,
                             device: str = "cpu", progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`function_kept_doses` both ways for each subject (one pretraining seed each): its last
    stage's KE raised towards its first stage's, and its first stage's lowered towards its last's,
    in ``doses`` equal steps over ``reach`` of the gap (1: the last dose reaches the other stage's
    KE), plus each unmodified.
    Rows gain ``subject`` and ``pretrain_seed`` (index in ``subjects``); logs the same."""
    results, logs = [], []
    for index, subject in enumerate(tqdm(subjects, desc="function kept: pretraining seeds", disable=not progress)):
        ke = stage_table([subject]).set_index("step")["normalized"]
        early, late = subject.checkpoints[0], subject.checkpoints[-1]
        for checkpoint, start, end in ((late, ke[late.step], ke[early.step]), (early, ke[early.step], ke[late.step])):
            targets = [None, *(start + (end - start) * reach * (i + 1) / doses for i in range(doses))]
            result, log = function_kept_doses(checkpoint, targets, setup, stream_config, train_config, subject.texts,
                                              seeds, eval_every, device, lr_of)
            results.append(result.assign(subject=subject.name, pretrain_seed=index))
            logs.append(log.assign(subject=subject.name, pretrain_seed=index))
    return pd.concat(results, ignore_index=True), pd.concat(logs, ignore_index=True)


def dose_slopes(results: pd.DataFrame, columns: Sequence[str], per: float = 0.01,
                confidence: float = 0.95) -> pd.DataFrame:
    """From rows of :func:`function_kept_experiment`: per pretraining seed and starting checkpoint,
    the least-squares slope of each outcome on the KE reached (``normalized``), in outcome units per
    ``per`` of normalised KE, over the doses and data orders; then the mean over seeds with a
    Student-t interval (``n`` seeds). The function is the same at every dose, so a slope is what
    KE (or the rescaling that moved it) does by itself."""
    rows = []
    for step, at_step in results.groupby("step"):
        for column in columns:
            slopes = [np.polyfit(group["normalized"], group[column], 1)[0] * per
                      for _, group in at_step.dropna(subset=[column]).groupby("pretrain_seed") if len(group) > 1]
            mean, low, high = mean_interval(slopes, confidence) if slopes else (float("nan"),) * 3
            rows.append({"step": step, "measure": column, "slope": mean, "low": low, "high": high, "n": len(slopes)})
    return pd.DataFrame(rows)


def pretraining_seeds(subject: str, seeds: Sequence[int]) -> list[str]:
    """The names of a built-in family pretrained with each of ``seeds`` (``"builtin:decayed"`` ->
    ``"builtin:decayed-seed1"``, ...; see :func:`~ke_utils.pretrain.family_config`). Any other
    subject is one pretraining run: ``[subject]``, with a message if more seeds were asked for."""
    if subject.startswith("builtin"):
        return [seeded_subject(subject, seed) for seed in seeds]
    if list(seeds) != [0]:
        print(f"{subject}: one pretraining run; PRETRAIN_SEEDS {list(seeds)} ignored")
    return [subject]


def stage_table(subjects: Sequence[Subject], lr_of: Callable[[Checkpoint], float] | None = None,
                peak_lr: float | None = None) -> pd.DataFrame:
    """Knowledge entropy (on each subject's texts) and pretraining learning rate of every checkpoint
    of ``subjects``: columns ``subject, step, ke, normalized, lr`` and, given the study protocol's
    ``peak_lr``, its ``study_jump`` = peak / own."""
    frames = []
    for subject in subjects:
        frame = sweep(subject.checkpoints, subject.texts, progress=False)[["step", "ke", "normalized"]]
        frames.append(frame.assign(subject=subject.name, lr=[(lr_of or recorded_lr)(c) for c in subject.checkpoints]))
    table = pd.concat(frames, ignore_index=True)[["subject", "step", "ke", "normalized", "lr"]]
    return table.assign(study_jump=peak_lr / table["lr"]) if peak_lr else table


def confound_experiment(subjects: Sequence[Subject], setup: KnowledgeSetup, stream_config: StreamConfig,
                        train_config: TrainConfig, protocols: Sequence[str] = ("study", "matched", "resumed"),
                        seeds: Sequence[int] = (0,), contrasts: Sequence[Subject] = (),
                        lr_of: Callable[[Checkpoint], float] | None = None, random_control: bool = False,
                        eval_every: int = 0, device: str = "cpu",
                        progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Reactivation]]:
    """Notebook 05's runs, for each of ``subjects`` (pretraining seeds of one family, or one hub
    model): :func:`protocol_experiment` from its checkpoints under ``protocols``, and the
    :func:`causal_test` on its last checkpoint raised to its first one's knowledge entropy; for
    each of ``contrasts`` (e.g. the constant-LR family, whose LR never jumps), ``study`` only.
    ``random_control`` goes to :func:`causal_test`.
    Every row has ``label`` (the protocol; ``"<contrast family> (study)"``; ``"reactivated"``,
    ``"random neurons"``), ``subject``, ``pretrain_seed`` (its index in ``subjects``) and
    ``normalized`` (the starting KE). Returns ``(results, logs, {subject: reactivation report})``."""
    results, logs, lifts = [], [], {}
    runs = [(s, i, False) for i, s in enumerate(subjects)] + [(s, i, True) for i, s in enumerate(contrasts)]
    for subject, index, is_contrast in tqdm(runs, desc="pretraining runs", disable=not progress):
        stages = stage_table([subject], lr_of)
        result, log = protocol_experiment(subject.checkpoints, setup, stream_config, train_config,
                                          ("study",) if is_contrast else protocols, seeds, lr_of, eval_every,
                                          device, progress=False)
        name = subject.family.rsplit("-seed", 1)[0] if subject.is_builtin else subject.name
        label = (lambda p: f"{name} ({p})") if is_contrast else (lambda p: p)
        result = result.merge(stages[["step", "normalized"]], on="step").assign(label=result["protocol"].map(label))
        log = log.assign(label=log["protocol"].map(label))
        if not is_contrast:
            early, late = subject.checkpoints[0], subject.checkpoints[-1]
            target = float(stages.loc[stages["step"] == early.step, "ke"].iloc[0])
            causal, causal_log, lifts[subject.name] = causal_test(late, target, setup, stream_config, train_config,
                                                                  subject.texts, seeds, eval_every, random_control, device,
                                                                  lr_of=lr_of)
            result, log = pd.concat([result, causal], ignore_index=True), pd.concat([log, causal_log], ignore_index=True)
        results.append(result.assign(subject=subject.name, pretrain_seed=index))
        logs.append(log.assign(subject=subject.name, pretrain_seed=index))
    return pd.concat(results, ignore_index=True), pd.concat(logs, ignore_index=True), lifts


def stage_differences(results: pd.DataFrame, columns: Sequence[str] = ("gain_beyond_control_paraphrase_mem", "forgetting"),
                      confidence: float = 0.95) -> pd.DataFrame:
    """Late minus early stage (last and first ``step``) of each ``label`` of ``results`` (rows of
    :func:`confound_experiment`), per pretraining seed (mean over data seeds), then the mean over
    pretraining seeds with a Student-t interval (NaN bounds with one seed): one row per label and
    column, with ``n`` pretraining seeds. Labels with one stage only (the causal test) are left out."""
    early, late = results["step"].min(), results["step"].max()
    rows = []
    for label, group in results.groupby("label", sort=False):
        per_seed = group.groupby(["pretrain_seed", "step"])[list(columns)].mean()
        steps = per_seed.index.get_level_values("step")
        if early not in steps or late not in steps:
            continue
        diff = per_seed.xs(late, level="step") - per_seed.xs(early, level="step")
        for column in columns:
            mean, low, high = mean_interval(diff[column].dropna(), confidence)
            rows.append({"label": label, "measure": column, "late_minus_early": mean, "low": low, "high": high,
                         "n": int(diff[column].notna().sum())})
    return pd.DataFrame(rows)


def lr_sweep(subjects: Sequence[Subject], setup: KnowledgeSetup, stream_config: StreamConfig, train_config: TrainConfig,
             peaks: Sequence[float], seeds: Sequence[int] = (0,), lr_of: Callable[[Checkpoint], float] | None = None,
             device: str = "cpu", progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The study's protocol from the first and last checkpoint of each of ``subjects`` at every
    peak LR in ``peaks``: the larger the peak, the larger the late checkpoint's re-warming jump
    against the early one's. Rows of :func:`protocol_experiment` with ``subject``,
    ``pretrain_seed`` and ``label`` = ``"study at <peak>"``; and the logs."""
    results, logs = [], []
    runs = [(i, s, peak) for i, s in enumerate(subjects) for peak in peaks]
    for index, subject, peak in tqdm(runs, desc="LR sweep: pretraining runs x peaks", disable=not progress):
        ends = [subject.checkpoints[0], subject.checkpoints[-1]]
        result, log = protocol_experiment(ends, setup, stream_config, dataclasses.replace(train_config, lr=peak),
                                          ("study",), seeds, lr_of, device=device, progress=False)
        label = f"study at {peak:g}"
        results.append(result.assign(subject=subject.name, pretrain_seed=index, label=label))
        logs.append(log.assign(subject=subject.name, pretrain_seed=index, label=label))
    return pd.concat(results, ignore_index=True), pd.concat(logs, ignore_index=True)


def anneal_experiment(pairs: Sequence[tuple[Subject, Subject]], setup: KnowledgeSetup, stream_config: StreamConfig,
                      train_config: TrainConfig, seeds: Sequence[int] = (0,), device: str = "cpu",
                      progress: bool = True) -> pd.DataFrame:
    """Knowledge entropy held, LR history changed. Each pair is one pretraining seed: the
    constant-LR family (``overtrained``, its early and late stages), trained further under
    ``study``, and the ``annealed`` family (the same run with its LR decayed linearly to 0.1 x over
    the last 200 steps, its last stage) under ``study`` and ``matched``. The two late checkpoints
    have nearly the same KE, and ``study`` re-warms the annealed one 10x and the constant one not
    at all. Rows of :func:`protocol_experiment` with ``label`` (``"constant LR (study)"``,
    ``"annealed (study)"``, ``"annealed (matched)"``), ``subject``, ``pretrain_seed`` (index of
    the pair) and ``normalized`` (starting KE on the subject's texts)."""
    rows = []
    for index, (constant, annealed) in enumerate(tqdm(pairs, desc="anneal: pretraining seeds", disable=not progress)):
        for subject, protocols, name in ((constant, ("study",), "constant LR"), (annealed, ("study", "matched"), "annealed")):
            result, _ = protocol_experiment(subject.checkpoints, setup, stream_config, train_config, protocols, seeds,
                                            device=device, progress=False)
            ke = stage_table([subject])[["step", "normalized"]]
            rows.append(result.merge(ke, on="step").assign(
                label=result["protocol"].map(lambda p, name=name: f"{name} ({p})"), subject=subject.name,
                pretrain_seed=index))
    return pd.concat(rows, ignore_index=True)


def anneal_differences(results: pd.DataFrame, columns: Sequence[str], confidence: float = 0.95) -> pd.DataFrame:
    """From rows of :func:`anneal_experiment`: per pretraining seed (mean over data orders), the
    annealed late checkpoint minus the constant-LR one, both under ``study`` (same KE, same
    continued-training LR, different LR history), and the constant family's late minus early
    (KE falls, no LR jump); mean over seeds with a Student-t interval, ``n`` seeds. Also the KE gap."""
    late, early = results["step"].max(), results["step"].min()
    per_seed = results.groupby(["label", "step", "pretrain_seed"])[["normalized", *columns]].mean()
    contrasts = {"annealed minus constant LR, late, under study": (("annealed (study)", late), ("constant LR (study)", late)),
                 "constant LR: late minus early, under study": (("constant LR (study)", late), ("constant LR (study)", early))}
    rows = []
    for name, (a, b) in contrasts.items():
        diff = per_seed.loc[a] - per_seed.loc[b]
        for column in ["normalized", *columns]:
            mean, low, high = mean_interval(diff[column].dropna(), confidence)
            rows.append({"contrast": name, "measure": "KE (normalised)" if column == "normalized" else column,
                         "difference": mean, "low": low, "high": high, "n": int(diff[column].notna().sum())})
    return pd.DataFrame(rows)


MEASURE = "gain_beyond_control_paraphrase_mem"  # what acquisition claims rest on: nats, beyond the controls' gain
# Continuous measures of forgetting (nats), next to F, whose exact match has a floor near the chance
# of guessing a value: column -> (what a late checkpoint that forgets more does, +1 where higher is worse)
CONTINUOUS = {"retention_logprob_change": ("loses more log-probability on the facts it knew", -1),
              "heldout_loss_change": ("raises its held-out loss more (the study's general-capability side)", +1)}


def findings(results: pd.DataFrame, min_gain_diff: float, min_f_diff: float) -> dict[str, Finding]:
    """Notebook 05's verdicts: claims about the first ("early") and last ("late") stage of ``results`` (rows of
    :func:`confound_experiment`), each mapped to whether this run shows it; differences within
    ``min_gain_diff`` (nats of gain beyond control) or ``min_f_diff`` (forgetting) count as none
    ("moves toward": closer to the early checkpoint under ``study`` by more than that).
    Forgetting is also judged on the continuous measures of :data:`CONTINUOUS` (log-probability of
    the old facts, held-out loss; differences within ``min_gain_diff`` nats count as none), since F's
    exact match cannot fall below the chance of guessing a value. Means over all seeds. Per protocol and contrast family: does the late checkpoint acquire less,
    forget more, both (finding 2)? For the causal test: does raising the late checkpoint's KE move
    it toward the early one (and does the random-neuron control, when it ran)?"""
    continuous = {c: claim for c, claim in CONTINUOUS.items() if c in results}
    mean = results.groupby(["label", "step"])[[MEASURE, "forgetting", *continuous]].mean()
    early, late = results["step"].min(), results["step"].max()
    causal = ("reactivated", "random neurons")
    f_above = f"late minus early F > {min_f_diff}"
    out = {}
    for label in [l for l in results["label"].unique() if l not in causal]:
        if (label, early) not in mean.index or (label, late) not in mean.index:
            continue
        e, l = mean.loc[(label, early)], mean.loc[(label, late)]
        drop, rise = e[MEASURE] - l[MEASURE], l["forgetting"] - e["forgetting"]
        less, more = bool(drop > min_gain_diff), bool(rise > min_f_diff)
        reported = label == "study"  # the study's protocol on the subject: what Table 1 measured on OLMo-1B
        untested = "not tested (the study re-warmed checkpoints of one decayed run)"
        out[f"'{label}': the late checkpoint acquires less"] = Finding(
            less, drop, study=f"yes: {study.table1_change('acquisition')}" if reported else untested,
            threshold=f"early minus late gain beyond control > {min_gain_diff} nats")
        out[f"'{label}': the late checkpoint forgets more"] = Finding(
            more, rise, study=f"yes: {study.table1_change('forgetting')}" if reported else untested, threshold=f_above)
        out[f"'{label}': finding 2 holds, the late checkpoint acquires less and forgets more"] = Finding(
            less and more, study="yes (Table 1)" if reported else untested, threshold="both rows above")
        for column, (what, sign) in continuous.items():
            worse = sign * (l[column] - e[column])
            out[f"'{label}': the late checkpoint {what} (by > {min_gain_diff} nats)"] = Finding(
                bool(worse > min_gain_diff), worse, study="not measured in this form",
                threshold=f"late worse than early by > {min_gain_diff} nats")
    for name, label in (("raising the late checkpoint's KE to the early one's", "reactivated"),
                        ("the same factor on random neurons (control)", "random neurons")):
        if (label, late) not in mean.index or ("study", late) not in mean.index:
            continue
        e, l, r = mean.loc[("study", early)], mean.loc[("study", late)], mean.loc[(label, late)]
        for column, what, tolerance in ((MEASURE, "acquisition", min_gain_diff), ("forgetting", "forgetting", min_f_diff)):
            gained = abs(l[column] - e[column]) - abs(r[column] - e[column])  # how much closer to the early one
            out[f"{name} moves its {what} toward the early one's"] = Finding(
                bool(gained > tolerance), gained, study="not tested (its reactivation did not aim at an earlier KE)",
                threshold=f"closer to the early one than the unmodified late one by > {tolerance}"
                          + (" nats" if column == MEASURE else ""))
    return out


def key_numbers(results: pd.DataFrame) -> dict[str, float]:
    """Gain beyond control, forgetting and (when logged) the log-probability change of the old
    facts per label and stage (means over seeds), flat."""
    short = {MEASURE: "gain_bc", "forgetting": "F", "retention_logprob_change": "old_logprob_change"}
    mean = results.groupby(["label", "step"])[[c for c in short if c in results]].mean()

    def name(label: str) -> str:  # "overtrained (study)" -> "overtrained_study"
        return "_".join(label.replace("(", " ").replace(")", " ").split())

    return {f"{short[column]}_{name(label)}_{step}": float(value) for (label, step), row in mean.iterrows()
            for column, value in row.items()}
