"""The subject of a notebook: a family of checkpoints plus evaluation texts, named by one string.

``"builtin"`` (default) is the tiny model family pretrained offline on the generated world;
``"builtin:capacity"`` the capacity-bound contrast; a local folder of ``step{N}`` checkpoints; or
a hub repository id (``"allenai/OLMo-1B-0724-hf"``, ``"EleutherAI/pythia-160m"``) whose branches
are the checkpoints, with texts streamed from a ``datasets`` corpus.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from .checkpoints import Checkpoint, hub_checkpoints, local_checkpoints, select
from .pretrain import builtin_family, builtin_texts

# Corpus for hub models: (path, config name, split, text column), streamed. C4 is one of the
# corpora on which the study reported the same trend.
DEFAULT_HUB_TEXTS = ("allenai/c4", "en", "validation", "text")


@dataclass
class Subject:
    """``family``: the built-in family's name (``"overtrained"``, ``"capacity"``), None otherwise."""

    name: str
    checkpoints: list[Checkpoint]
    texts: list[str]
    family: str | None = None

    @property
    def is_builtin(self) -> bool:
        return self.family is not None


def hub_texts(n_docs: int, source: tuple[str, str | None, str, str] = DEFAULT_HUB_TEXTS) -> list[str]:
    """The first ``n_docs`` documents of a ``datasets`` corpus, streamed (needs network)."""
    import datasets

    path, name, split, column = source
    stream = datasets.load_dataset(path, name, split=split, streaming=True)
    return [row[column] for row in islice(stream, n_docs)]


def load_subject(
    subject: str = "builtin",
    *,
    n_docs: int = 300,
    n_checkpoints: int | None = None,
    steps: list[int] | None = None,
    text_source: tuple[str, str | None, str, str] = DEFAULT_HUB_TEXTS,
) -> Subject:
    """Checkpoints (optionally ``n_checkpoints`` log-spaced, or explicit ``steps``) and ``n_docs``
    held-out evaluation texts of ``subject``."""
    family = (subject.partition(":")[2] or "overtrained") if subject.startswith("builtin") else None
    if family:
        checkpoints = builtin_family(family)
        texts = builtin_texts("heldout", n_docs, family)
    else:
        checkpoints = local_checkpoints(subject) if Path(subject).is_dir() else hub_checkpoints(subject)
        texts = hub_texts(n_docs, text_source)
    if steps is not None:
        checkpoints = select(checkpoints, steps=steps)
    elif n_checkpoints is not None:
        checkpoints = select(checkpoints, n_log=n_checkpoints)
    return Subject(subject, checkpoints, texts, family)
