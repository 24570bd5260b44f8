"""Notebook 06's experiment: where continued training writes. For one run, which memory neurons
the updates went to (:class:`~ke_utils.memory.attribution.UpdateTracker`), on the key side (the
weights that compute a neuron's coefficient) and on the value side (its column of the down
projection: the memory vector it writes), next to how much each neuron was used before, and where
one batch of the new facts alone would write (:func:`~ke_utils.memory.attribution.batch_attribution`).

The study (Kim et al., 2024, sections 1 and 4.3, appendix A.1) explains its finding 2 by use: a
model whose use is concentrated on few memory neurons has few places to store new facts, so it
learns less and overwrites more. That predicts, for later checkpoints (lower knowledge entropy),
updates concentrated on fewer neurons (lower update entropy) and on the neurons the model uses
most, on the keys and on the memory vectors (values) alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from ..checkpoints import Checkpoint, load_checkpoint
from ..continual import TrainConfig, train_and_evaluate
from ..memory.attribution import UpdateTracker, batch_attribution, rank_agreement, top_k_jaccard, update_entropy
from ..memory.batching import pad_batch, pad_token_id, text_batches
from ..memory.entropy import coefficient_means, knowledge_entropy
from ..memory.reactivation import reactivate
from ..outcomes import outcome
from ..report import Finding
from ..setups import KnowledgeSetup
from ..stream import StreamConfig, wording
from ..training import encode_documents

TOP = 0.1  # "most used" / "most updated": the top 10% of a layer's neurons


@dataclass(frozen=True)
class UpdateRun:
    """One run to attribute: continued training of ``checkpoint`` under ``protocol``, optionally
    after reactivating it (``lift``: ``(ratio, factor)`` of :func:`~ke_utils.memory.reactivation.reactivate`)."""

    label: str
    checkpoint: Checkpoint
    protocol: str = "study"
    lift: tuple[float, float] | None = None


@dataclass
class Attribution:
    """What one run measured; tensors ``[n_layers, d_ff]``. ``usage``: coefficient means before
    training (evaluation texts); ``key_change`` / ``value_change``: squared change of each neuron's
    key and value over the run; ``key_grad`` / ``value_grad``: summed squared gradient of its key
    and value; ``injected``: the key gradient of the new facts' paragraphs alone, before training."""

    usage: torch.Tensor
    key_change: torch.Tensor
    value_change: torch.Tensor
    key_grad: torch.Tensor
    value_grad: torch.Tensor
    injected: torch.Tensor


def least_used_share(usage: torch.Tensor, mass: torch.Tensor) -> float:
    """Share of ``mass`` that lands on the least-used half of each layer's neurons (by ``usage``),
    averaged over layers; 0.5 if the mass ignores use."""
    order = usage.argsort(dim=1)[:, : usage.shape[1] // 2]
    return float((mass.gather(1, order).sum(1) / mass.sum(1)).mean())


def summarize(attribution: Attribution, fraction: float = TOP) -> dict:
    """Scalars of one run, on the key side and the value side: update and gradient entropies
    (normalised like KE), overlaps of the most-changed (and the most-pushed, by gradient) neurons
    with the most-used ones (mean top-k Jaccard over layers, and its chance level), the rank
    agreement of use and key change, and the shares of each that land on the least-used half."""
    a = attribution
    used = top_k_jaccard(a.usage, a.key_change, fraction)  # its chance level is every overlap's: same k, same d_ff

    def overlap(mass: torch.Tensor, first: torch.Tensor | None = None) -> float:
        return float(top_k_jaccard(a.usage if first is None else first, mass, fraction).jaccard.mean())

    return {"ke": knowledge_entropy(a.usage).normalized,
            "update_entropy": update_entropy(a.key_change).normalized,
            "gradient_entropy": update_entropy(a.key_grad).normalized,
            "value_update_entropy": update_entropy(a.value_change).normalized,
            "value_gradient_entropy": update_entropy(a.value_grad).normalized,
            "injected_entropy": update_entropy(a.injected).normalized,
            "used_updated_jaccard": float(used.jaccard.mean()),
            "used_gradient_jaccard": overlap(a.key_grad),
            "used_value_updated_jaccard": overlap(a.value_change),
            "used_value_gradient_jaccard": overlap(a.value_grad),
            "injected_updated_jaccard": overlap(a.key_change, a.injected),
            "chance_jaccard": used.chance,
            "used_updated_rank": float(rank_agreement(a.usage, a.key_change).mean()),
            "least_used_update_share": least_used_share(a.usage, a.key_change),
            "least_used_gradient_share": least_used_share(a.usage, a.key_grad),
            "least_used_value_update_share": least_used_share(a.usage, a.value_change),
            "least_used_value_gradient_share": least_used_share(a.usage, a.value_grad)}


def update_runs(subject, protocols: Sequence[str] = ("study", "matched"), contrast=None,
                lift: tuple[float, float] | None = None) -> list[UpdateRun]:
    """Notebook 06's runs: every checkpoint of ``subject`` under the first of ``protocols``; its
    first and last checkpoints under the others (label: the protocol) and those of ``contrast``
    (another family, label ``"<family> (study)"``) under ``study``; and the last checkpoint of
    ``subject`` reactivated with ``lift`` under ``study`` (label ``"reactivated (study)"``)."""
    ends = [subject.checkpoints[0], subject.checkpoints[-1]]
    runs = [UpdateRun(protocols[0], c, protocols[0]) for c in subject.checkpoints]
    runs += [UpdateRun(protocol, c, protocol) for protocol in protocols[1:] for c in ends]
    if contrast is not None:
        name = contrast.family.rsplit("-seed", 1)[0] if contrast.is_builtin else contrast.name
        runs += [UpdateRun(f"{name} (study)", c) for c in (contrast.checkpoints[0], contrast.checkpoints[-1])]
    if lift is not None:
        runs.append(UpdateRun("reactivated (study)", subject.checkpoints[-1], "study", tuple(lift)))
    return runs


def _paragraph_batch(tokenizer, setup: KnowledgeSetup) -> dict[str, torch.Tensor]:
    """The paraphrase items' first wordings, padded, with padding left out of the loss."""
    batch = pad_batch(encode_documents(tokenizer, [wording(r, 0) for r in setup.paraphrase]), pad_token_id(tokenizer))
    return {**batch, "labels": batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)}


def attribute_run(run: UpdateRun, setup: KnowledgeSetup, stream_config: StreamConfig, train_config: TrainConfig,
                  texts: Sequence[str], device: str = "cpu",
                  lr_of: Callable[[Checkpoint], float] | None = None) -> tuple[dict, Attribution]:
    """Train ``run`` on ``setup``'s stream with an :class:`~ke_utils.memory.attribution.UpdateTracker`
    active and measure what :class:`Attribution` holds. ``lr_of``: the checkpoint's pretraining LR
    for ``matched`` (default: what the checkpoint recorded). Returns the row (``label``, ``step``,
    ``protocol``, :func:`summarize`, :func:`~ke_utils.outcomes.outcome`) and the tensors."""
    tokenizer = AutoTokenizer.from_pretrained(run.checkpoint.path, revision=run.checkpoint.revision)
    batches = text_batches(tokenizer, texts)
    model = load_checkpoint(run.checkpoint, device=device)
    if run.lift is not None:
        model, _ = reactivate(model, coefficient_means(model, batches), *run.lift, inplace=True)
    usage = coefficient_means(model, batches)
    paragraphs = {k: v.to(device) for k, v in _paragraph_batch(tokenizer, setup).items()}
    injected = batch_attribution(model, paragraphs["input_ids"], attention_mask=paragraphs["attention_mask"],
                                 labels=paragraphs["labels"]).key_grad
    with UpdateTracker(model) as tracker:
        log = train_and_evaluate(model, tokenizer, setup, stream_config,
                                 dataclasses.replace(train_config, protocol=run.protocol,
                                                     own_lr=lr_of(run.checkpoint) if lr_of else None),
                                 checkpoint=run.checkpoint)
    (key_change, value_change) = tracker.changes()
    attribution = Attribution(usage, key_change, value_change, tracker.key_grad, tracker.value_grad, injected)
    row = {"label": run.label, "step": run.checkpoint.step, "protocol": run.protocol, **summarize(attribution),
           **outcome(log)}
    return row, attribution


def update_experiment(runs: Sequence[UpdateRun], setup: KnowledgeSetup, stream_config: StreamConfig = StreamConfig(),
                      train_config: TrainConfig = TrainConfig(), texts: Sequence[str] = (), device: str = "cpu",
                      lr_of: Callable[[Checkpoint], float] | None = None,
                      progress: bool = True) -> tuple[pd.DataFrame, dict[tuple[str, int], Attribution]]:
    """:func:`attribute_run` for every run (same stream, same data order); rows and, keyed by
    ``(label, step)``, the tensors."""
    rows, tensors = [], {}
    for run in tqdm(runs, desc="runs", disable=not progress):
        row, attribution = attribute_run(run, setup, stream_config, train_config, texts, device, lr_of)
        rows.append(row)
        tensors[(run.label, run.checkpoint.step)] = attribution
    return pd.DataFrame(rows), tensors


EXPLANATION = ("a model whose use of its memory neurons is concentrated (low KE) has few places to write new facts: its updates "
               "concentrate on few, much-used neurons and overwrite the facts those neurons held")


def _early_late(rows: pd.DataFrame, label: str, column: str) -> tuple[float, float]:
    run = rows[rows["label"] == label].sort_values("step")
    return float(run[column].iloc[0]), float(run[column].iloc[-1])


CEILING = 0.95  # normalised update entropy above this: the change is spread over (nearly) every neuron


def findings(rows: pd.DataFrame, entropy_margin: float = 0.005, overlap_margin: float = 0.02) -> dict[str, Finding]:
    """Notebook 06's claims from :func:`update_experiment`'s rows. First a check of the measure
    itself: the update entropy (of the key change) near its ceiling in every run, where it cannot
    show concentration. Then what the study's explanation predicts, per label with several stages,
    on the key side and the value side: the late checkpoint's update and gradient entropies lower
    than the early one's (by ``entropy_margin``, normalised), its most-changed neurons overlapping
    its most-used ones more (by ``overlap_margin``, Jaccard); over all runs, gradient entropy rising
    with KE; the most-changed keys and values more often the most-used neurons than chance (1.5x)
    in every run; the gradient favouring the most-used neurons more than the change does. Last,
    reactivation raising the late checkpoint's gradient entropy, which is expected mechanically
    (a lifted neuron's larger coefficient enlarges its own gradient), not evidence about KE."""
    predicted, ours = "predicted by its explanation, not measured", "not in the study (our check)"
    out = {f"the update entropy is near its ceiling in every run (normalised > {CEILING}): the parameter change is "
           "spread over nearly all neurons": Finding(bool((rows["update_entropy"] > CEILING).all()),
                                                     rows["update_entropy"].min(), study=ours,
                                                     threshold=f"smallest over runs > {CEILING}")}
    staged = [label for label, run in rows.groupby("label", sort=False) if run["step"].nunique() > 1]
    for label in staged:
        for column, name in (("update_entropy", "update entropy"), ("gradient_entropy", "gradient entropy"),
                             ("value_update_entropy", "value update entropy"),
                             ("value_gradient_entropy", "value gradient entropy")):
            early, late = _early_late(rows, label, column)
            out[f"'{label}': the late checkpoint's {name} is lower than the early one's"] = Finding(
                late < early - entropy_margin, late - early, study=predicted,
                threshold=f"late minus early < -{entropy_margin} (normalised)")
        for column, what in (("used_updated_jaccard", "updates"), ("used_value_updated_jaccard", "value updates")):
            early, late = _early_late(rows, label, column)
            out[f"'{label}': the late checkpoint's {what} land more on its most-used neurons"] = Finding(
                late > early + overlap_margin, late - early, study=predicted,
                threshold=f"late minus early Jaccard > {overlap_margin}")
    if len(rows) > 2:
        r = float(rows["ke"].corr(rows["gradient_entropy"]))
        out["over all runs, gradient entropy rises with KE (Pearson r > 0.5)"] = Finding(r > 0.5, r, study=predicted,
                                                                                          threshold="Pearson r > 0.5")
    for column, what in (("used_updated_jaccard", "most-updated neurons"), ("used_value_updated_jaccard", "most-changed values")):
        over_chance = rows[column] / rows["chance_jaccard"]
        out[f"in every run the {what} are more often the most-used ones than chance (by 1.5x)"] = Finding(
            bool((over_chance > 1.5).all()), over_chance.min(), study=predicted,
            threshold="smallest over runs of Jaccard / chance > 1.5")
    less_of_gradient = rows["least_used_gradient_share"] - rows["least_used_update_share"]
    out["in every run the gradient favours the most-used neurons more than the change does (the least-used half gets "
        "a smaller share of it)"] = Finding(bool((less_of_gradient < 0).all()), less_of_gradient.max(), study=ours,
                                            threshold="largest over runs of the least-used half's gradient share "
                                                      "minus its change share < 0")
    lifted = rows[rows["label"] == "reactivated (study)"]
    if len(lifted) and "study" in set(rows["label"]):
        late = rows[(rows["label"] == "study") & (rows["step"] == lifted["step"].iloc[0])]
        rise = float(lifted["gradient_entropy"].iloc[0] - late["gradient_entropy"].iloc[0])
        out["reactivation raises the late checkpoint's gradient entropy (expected mechanically: a lifted neuron's "
            "larger coefficient enlarges its own gradient)"] = Finding(
            rise > entropy_margin, rise, study="not in the study (a mechanical expectation)",
            threshold=f"reactivated minus unmodified > {entropy_margin} (normalised)")
    return out


def key_numbers(rows: pd.DataFrame) -> dict:
    """The numbers notebook 06 reports: per label, key update entropy, key gradient entropy, most-used
    overlap, and value update entropy (at the first and last stage when it has several)."""
    out = {}
    for label, run in rows.groupby("label", sort=False):
        key = label.split(" ")[0]
        for column, short in (("update_entropy", "update_entropy"), ("gradient_entropy", "gradient_entropy"),
                              ("used_updated_jaccard", "used_jaccard"), ("value_update_entropy", "value_update_entropy")):
            if run["step"].nunique() > 1:
                out[f"{key}_{short}_early"], out[f"{key}_{short}_late"] = _early_late(rows, label, column)
            else:
                out[f"{key}_{short}"] = float(run[column].iloc[0])
    return out
