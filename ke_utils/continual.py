"""Continued training of a checkpoint on a stream (:mod:`ke_utils.stream`): the study's protocol of
a fresh AdamW, linear warmup and cosine decay, with evaluations along the way."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from .stream import Stream
from .training import optimizer, train_step


@dataclass(frozen=True)
class TrainConfig:
    """Continued training as in the study: fresh AdamW, linear warmup, cosine decay to 0.1 x lr."""

    lr: float = 1e-3
    warmup: int = 10
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    seed: int = 0


def continue_training(
    model,
    stream: Stream,
    config: TrainConfig = TrainConfig(),
    evaluate: Callable[[object, int], dict] | None = None,
    eval_steps: Sequence[int] = (),
    progress: bool = True,
) -> pd.DataFrame:
    """Train ``model`` in place on ``stream`` (same data order for every model given the same
    stream). ``evaluate(model, step)`` runs before training (step 0), after each step in
    ``eval_steps`` and at the end; returns the evaluations as rows, plus the training loss."""
    torch.manual_seed(config.seed)
    steps = len(stream.batches)
    opt = optimizer(model, config.lr, config.weight_decay, config.betas)
    sched = get_cosine_with_min_lr_schedule_with_warmup(opt, config.warmup, steps, min_lr_rate=config.min_lr_ratio)
    rows = [{"step": 0, **evaluate(model, 0)}] if evaluate else []
    model.train()
    losses = []
    for step in tqdm(range(1, steps + 1), desc="continued training", disable=not progress):
        batch = stream.batches[step - 1].to(next(model.parameters()).device)
        losses.append(train_step(model, batch, opt, sched))
        if evaluate and (step in eval_steps or step == steps):
            rows.append({"step": step, "train_loss": sum(losses[-10:]) / len(losses[-10:]), **evaluate(model, step)})
    model.eval()
    return pd.DataFrame(rows)
