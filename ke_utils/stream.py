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


@dataclass(frozen=True)
class StreamConfig:
    """Shape of the training stream. ``rounds`` injection rounds, one every ``interval`` steps;
    a round's paragraphs fill at most ``max_injected_rows`` rows of consecutive batches. The
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
        if not 0 < self.max_injected_rows <= self.batch_size:
            raise ValueError(f"max_injected_rows must be in [1, batch_size={self.batch_size}]")
        if self.rounds < 1 or self.interval < 1:
            raise ValueError("rounds and interval must be positive")


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
    paragraphs of the schedule written at the start of their rows, followed by end-of-text."""
    background_ids = pack(tokenizer, list(background), config.seq_len)
    gen = torch.Generator().manual_seed(config.seed)
    needed = config.steps * config.batch_size
    order = torch.cat([torch.randperm(len(background_ids), generator=gen)
                       for _ in range(-(-needed // len(background_ids)))])[:needed]
    batches = background_ids[order].view(config.steps, config.batch_size, config.seq_len).clone()
    schedule = injection_schedule(len(paraphrase), len(once), config)
    records = {"paraphrase": paraphrase, "once": once}
    for s in schedule.itertuples():
        ids = encode_documents(tokenizer, [wording(records[s.regime][s.item], s.wording)])[0][: config.seq_len]
        batches[s.step, s.row, : len(ids)] = torch.tensor(ids)
    return Stream(batches, schedule)
