"""The continued-training stream: ordinary text packed into batches, with fictional-knowledge
paragraphs injected at a fixed interval (the study's protocol; see ``docs/`` and notebook 03).

Regimes: *paraphrase* items are injected every round, round r using the r-th wording
(``train_context``, then ``paraphrases[0]``, ...); *once* items are each injected in one round only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from .training import encode_documents, pack


STUDY_SEQ_LEN = 1024  # the study's continued-training sequences


@dataclass(frozen=True)
class StreamConfig:
    """Shape of the training stream. ``rounds`` injection rounds, one every ``interval`` steps;
    a round's paragraphs fill at most ``max_injected_rows`` rows of consecutive batches, each
    paragraph at the start of a row of ``seq_len`` tokens (:func:`fitting_seq_len` picks it for a
    model; 128 is the built-in family's context, its paragraphs take at most 96 tokens). The
    default is the stream notebooks 03-05 share (10 rounds like the study's, 60 steps): on the
    built-in families the probe curves are still rising when it ends."""

    rounds: int = 10
    interval: int = 6
    batch_size: int = 16
    seq_len: int = 128
    max_injected_rows: int = 8
    seed: int = 0

    @property
    def steps(self) -> int:
        return self.rounds * self.interval

    def __post_init__(self):
        if self.seq_len < 2:
            raise ValueError(f"seq_len must be at least 2, not {self.seq_len}")
        if not 0 < self.max_injected_rows <= self.batch_size:
            raise ValueError(f"max_injected_rows must be in [1, batch_size={self.batch_size}]")
        if self.rounds < 1 or self.interval < 1:
            raise ValueError("rounds and interval must be positive")


def fitting_seq_len(checkpoint) -> int:
    """Training sequence length for a model: the study's 1,024 tokens, or the model's context
    (``max_position_embeddings`` in its config) when shorter: 128 for the built-in family."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(checkpoint.path, revision=checkpoint.revision)
    context = getattr(config, "max_position_embeddings", None)
    return min(STUDY_SEQ_LEN, context) if context else STUDY_SEQ_LEN


@dataclass
class Stream:
    """``batches``: ``[steps, batch, seq_len]`` token ids; ``injections``: one row per injected
    paragraph with ``step, row, round, item, regime, wording``."""

    batches: torch.Tensor
    injections: pd.DataFrame


def wording(record: dict, round_index: int) -> str:
    """Round 0 uses ``train_context``, round r the (r-1)-th paraphrase (cycling if too few)."""
    texts = [record["train_context"], *record["paraphrases"]]
    return texts[round_index % len(texts)]


def injection_schedule(n_paraphrase: int, n_once: int, config: StreamConfig) -> pd.DataFrame:
    """Which batch row holds which item: every paraphrase item in every round; the once items
    split evenly over the rounds. Columns ``step, row, round, item, regime, wording``."""
    once_rounds = [list(range(n_once))[r :: config.rounds] for r in range(config.rounds)]
    rows = []
    for r in range(config.rounds):
        items = [("paraphrase", i, r) for i in range(n_paraphrase)] + [("once", i, 0) for i in once_rounds[r]]
        capacity = config.interval * config.max_injected_rows
        if len(items) > capacity:
            raise ValueError(f"round {r} has {len(items)} paragraphs but room for {capacity}; "
                             "raise interval or max_injected_rows")
        for k, (regime, item, variant) in enumerate(items):
            step = r * config.interval + k // config.max_injected_rows
            rows.append({"step": step, "row": k % config.max_injected_rows, "round": r,
                         "item": item, "regime": regime, "wording": variant})
    return pd.DataFrame(rows)


def build_stream(tokenizer, background: Sequence[str], paraphrase: Sequence[dict], once: Sequence[dict],
                 config: StreamConfig) -> Stream:
    """Background text packed into sequences (reshuffled each pass, seeded) with the knowledge
    paragraphs of the schedule written at the start of their rows, followed by end-of-text.
    A paragraph longer than ``config.seq_len`` is a ValueError (never cut: its facts are probed)."""
    background_ids = pack(tokenizer, list(background), config.seq_len)
    gen = torch.Generator().manual_seed(config.seed)
    needed = config.steps * config.batch_size
    order = torch.cat([torch.randperm(len(background_ids), generator=gen)
                       for _ in range(-(-needed // len(background_ids)))])[:needed]
    batches = background_ids[order].view(config.steps, config.batch_size, config.seq_len).clone()
    schedule = injection_schedule(len(paraphrase), len(once), config)
    records = {"paraphrase": paraphrase, "once": once}
    paragraphs = encode_documents(tokenizer, [wording(records[s.regime][s.item], s.wording) for s in schedule.itertuples()])
    too_long = [(s, len(ids)) for s, ids in zip(schedule.itertuples(), paragraphs) if len(ids) > config.seq_len]
    if too_long:
        s, n = max(too_long, key=lambda pair: pair[1])
        raise ValueError(f"{len(too_long)} of {len(paragraphs)} injected paragraphs do not fit in seq_len={config.seq_len} "
                         f"tokens (the longest: {s.regime} item {s.item}, wording {s.wording}, {n} tokens with its "
                         f"end-of-sequence): their probed facts would be cut off; use seq_len >= {n} "
                         "(the study used 1,024)")
    for s, ids in zip(schedule.itertuples(), paragraphs):
        batches[s.step, s.row, : len(ids)] = torch.tensor(ids)
    return Stream(batches, schedule)
