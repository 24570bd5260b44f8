"""The subject of a notebook: a family of checkpoints plus evaluation texts, named by one string.

``"builtin"`` (default) is the tiny model family pretrained offline on the generated world;
``"builtin:capacity"`` the capacity-bound contrast; a local folder of ``step{N}`` checkpoints; or
a hub repository id (``"allenai/OLMo-1B-hf"``, ``"EleutherAI/pythia-160m"``,
``"HuggingFaceTB/SmolLM3-3B-checkpoints"``) whose branches are the checkpoints (for a repository in
``study.HUB_FAMILIES``, the branches it names: SmolLM3's stage 1), with texts streamed from a
``datasets`` corpus, or the reader's own texts (``texts=``: a local file or ``datasets`` folder
works with no network at all).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from .checkpoints import Checkpoint, hub_checkpoints, local_checkpoints, select
from .pretrain import builtin_family, builtin_texts
from .study import OLMO_1B_CHECKPOINT_STEPS, hub_family

# Corpus for hub models: (path, config name, split, text column), streamed. C4 is one of the
# corpora on which the study reported the same trend.
DEFAULT_HUB_TEXTS = ("allenai/c4", "en", "validation", "text")


@dataclass
class Subject:
    """``family``: the built-in family's name (``"overtrained"``, ``"capacity"``), None otherwise;
    ``text_source``: the reader's own texts (see :func:`read_texts`) when given, else None."""

    name: str
    checkpoints: list[Checkpoint]
    texts: list[str]
    family: str | None = None
    text_source: str | None = None

    @property
    def is_builtin(self) -> bool:
        return self.family is not None


def hub_texts(n_docs: int, source: tuple[str, str | None, str, str] = DEFAULT_HUB_TEXTS) -> list[str]:
    """The first ``n_docs`` documents of a ``datasets`` corpus, streamed (needs network)."""
    import datasets

    path, name, split, column = source
    stream = datasets.load_dataset(path, name, split=split, streaming=True)
    return [row[column] for row in islice(stream, n_docs)]


def read_texts(source: str, n_docs: int) -> list[str]:
    """The first ``n_docs`` documents of ``source``: a text file (one document per line, blank
    lines skipped), a folder written by ``datasets``' ``save_to_disk`` (its ``text`` column; the
    first split of a ``DatasetDict``), or else a hub dataset id (its ``train`` split, streamed:
    needs network). Fewer documents than asked for: all of them, with a warning."""
    path = Path(source)
    if path.is_file():
        docs = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif path.is_dir():
        import datasets

        data = datasets.load_from_disk(str(path))
        if isinstance(data, datasets.DatasetDict):
            data = data[next(iter(data))]
        if "text" not in data.column_names:
            raise ValueError(f"{source} has no 'text' column (columns: {data.column_names})")
        docs = data.select(range(min(n_docs, len(data))))["text"]
    else:
        docs = hub_texts(n_docs, (source, None, "train", "text"))
    if not docs:
        raise ValueError(f"no documents in {source}")
    if len(docs) < n_docs:
        warnings.warn(f"{source} has {len(docs)} documents, fewer than the {n_docs} asked for; using all of them")
    return list(docs[:n_docs])


def builtin_family_name(subject: str) -> str | None:
    """The built-in family a subject names (``"builtin"`` -> ``"overtrained"``, ``"builtin:decayed-seed1"``
    -> ``"decayed-seed1"``), None for a hub id or a local folder."""
    return (subject.partition(":")[2] or "overtrained") if subject.startswith("builtin") else None


def seeded_subject(subject: str, seed: int) -> str:
    """The built-in ``subject`` pretrained with ``seed`` (``"builtin:decayed"``, 1 -> ``"builtin:decayed-seed1"``);
    ValueError for a hub or local subject (one pretraining run) or a name that already has a seed."""
    family = builtin_family_name(subject)
    if family is None or "-seed" in family:
        raise ValueError(f"PRETRAIN_SEED={seed} applies to a built-in subject without a seed in its name, "
                         f"not {subject!r} (a hub or local family is one pretraining run)")
    return f"builtin:{family}-seed{seed}"


def default_stages(subject: str, builtin: Sequence[int], study: Sequence[int] = OLMO_1B_CHECKPOINT_STEPS) -> list[int]:
    """Starting checkpoints (steps) of a notebook: ``builtin`` for a built-in family; ``study`` (the
    study's OLMo-1B checkpoints, or some of them) for the OLMo-1B repositories; for another hub
    family of ``study.HUB_FAMILIES`` its own default stages in the same places (``study`` = the
    study's first and last: SmolLM3's first and last default stage-1 checkpoints). Any other subject
    has to name its own (ValueError)."""
    if subject.startswith("builtin"):
        return list(builtin)
    family = hub_family(subject)
    if family is None:
        raise ValueError(f"no default stages for {subject!r}: set STAGES to the steps of its checkpoints to start from")
    unknown = [step for step in study if step not in OLMO_1B_CHECKPOINT_STEPS]
    if unknown:
        raise ValueError(f"default stages are picked by their places among the study's {list(OLMO_1B_CHECKPOINT_STEPS)}, "
                         f"which {unknown} are not: set STAGES to the steps of {subject}'s checkpoints to start from")
    return [family.stages[OLMO_1B_CHECKPOINT_STEPS.index(step)] for step in study]


def load_subject(
    subject: str = "builtin",
    *,
    n_docs: int = 300,
    n_checkpoints: int | None = None,
    steps: list[int] | None = None,
    text_source: tuple[str, str | None, str, str] = DEFAULT_HUB_TEXTS,
    texts: str | None = None,
    pretrain_seed: int = 0,
) -> Subject:
    """Checkpoints (optionally ``n_checkpoints`` log-spaced, or explicit ``steps``; of a hub family in
    ``study.HUB_FAMILIES`` only the branches it names, e.g. SmolLM3's stage 1) and ``n_docs``
    held-out evaluation texts of ``subject``: the built-in family's own, ``text_source`` streamed
    for other subjects, or, given ``texts``, :func:`read_texts` of it (for any subject).
    ``pretrain_seed``: for a built-in subject, the same family pretrained with that seed
    (``"builtin"`` with 3 is ``"builtin:overtrained-seed3"``); other subjects are one run (ValueError)."""
    if pretrain_seed:
        subject = seeded_subject(subject, pretrain_seed)
    family = builtin_family_name(subject)
    if family:
        checkpoints = builtin_family(family)
    else:
        family_facts = hub_family(subject)
        checkpoints = (local_checkpoints(subject) if Path(subject).is_dir() else
                       hub_checkpoints(subject, revision_filter=family_facts.revisions if family_facts else None))
    if texts is not None:
        documents = read_texts(texts, n_docs)
    else:
        documents = builtin_texts("heldout", n_docs, family) if family else hub_texts(n_docs, text_source)
    if steps is not None:
        checkpoints = select(checkpoints, steps=steps)
    elif n_checkpoints is not None:
        checkpoints = select(checkpoints, n_log=n_checkpoints)
    return Subject(subject, checkpoints, documents, family, texts)
