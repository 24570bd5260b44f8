"""Continued training of a checkpoint on a stream (:mod:`ke_utils.stream`) under one of three
learning-rate protocols (the study's, and two that remove its confound), with evaluations along
the way."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import get_constant_schedule, get_cosine_with_min_lr_schedule_with_warmup

from .checkpoints import Checkpoint
from .pretrain import checkpoint_state, load_training_state
from .stream import Stream
from .training import optimizer, train_step


PROTOCOLS = ("study", "matched", "resumed")
PRECISIONS = ("auto", "fp32", "bf16-mixed")


@dataclass(frozen=True)
class TrainConfig:
    """Continued training. ``protocol`` (the learning-rate confound of notebook 05):

    - ``"study"``: what the study did: fresh AdamW, linear warmup over ``warmup`` steps to ``lr``
      (the same for every checkpoint), cosine decay to ``min_lr_ratio x lr``;
    - ``"matched"``: the same, with the peak at the checkpoint's own pretraining learning rate;
    - ``"resumed"``: the checkpoint's own AdamW state (moments and hyperparameters, its weight
      decay included) continued at its own pretraining learning rate, constant, no warmup.
    ``weight_decay`` and ``betas`` apply to the fresh optimizers only. ``own_lr``: the checkpoint's
    pretraining learning rate; None reads the one a built-in checkpoint recorded.

    ``precision``: training always updates fp32 master weights (a model loaded in bf16 or fp16 is
    cast to fp32 first: AdamW on half-precision weights loses updates below their resolution, and
    fp16 without loss scaling under- and overflows). ``"bf16-mixed"`` runs forward and backward
    under bf16 autocast, ``"fp32"`` in full precision, ``"auto"`` picks bf16-mixed for a model
    loaded in half precision and fp32 otherwise (the built-in family).
    """

    lr: float = 1e-3
    warmup: int = 10
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    seed: int = 0
    protocol: str = "study"
    own_lr: float | None = None
    precision: str = "auto"

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, not {self.protocol!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")


def master_weights(model, precision: str = "auto") -> contextlib.AbstractContextManager:
    """Cast ``model``'s floating-point weights to fp32 (in place) and return the autocast context
    its training steps run under: bf16 autocast for ``"bf16-mixed"`` (and for ``"auto"`` when the
    model was in half precision), else a no-op."""
    param = next(model.parameters())
    mixed = precision == "bf16-mixed" or (precision == "auto" and param.dtype in (torch.float16, torch.bfloat16))
    model.float()
    return torch.autocast(param.device.type, dtype=torch.bfloat16) if mixed else contextlib.nullcontext()


def optimizer_and_schedule(model, config: TrainConfig, steps: int, checkpoint: Checkpoint | None = None):
    """``(AdamW, scheduler)`` for ``steps`` updates of ``model`` under ``config.protocol``;
    ``matched`` and ``resumed`` read the pretraining learning rate (and for ``resumed`` the AdamW
    state) that a built-in ``checkpoint`` keeps next to its weights."""
    if config.protocol == "study":
        opt = optimizer(model, config.lr, config.weight_decay, config.betas)
        return opt, get_cosine_with_min_lr_schedule_with_warmup(opt, config.warmup, steps,
                                                                min_lr_rate=config.min_lr_ratio)
    if checkpoint is None and (config.protocol == "resumed" or config.own_lr is None):
        raise ValueError(f"protocol {config.protocol!r} needs the checkpoint the model was loaded from")
    own_lr = config.own_lr if config.own_lr is not None else checkpoint_state(checkpoint)["learning_rate"]
    if not own_lr > 0:
        raise ValueError(f"{checkpoint.name} was saved at learning rate {own_lr}: nothing to match or resume")
    if config.protocol == "matched":
        opt = optimizer(model, own_lr, config.weight_decay, config.betas)
        return opt, get_cosine_with_min_lr_schedule_with_warmup(opt, config.warmup, steps,
                                                                min_lr_rate=config.min_lr_ratio)
    opt = optimizer(model, own_lr, 0.0, config.betas)
    load_training_state(checkpoint, opt)
    for group in opt.param_groups:
        group["lr"] = group["initial_lr"] = own_lr
    return opt, get_constant_schedule(opt)


def start_training(model, config: TrainConfig, steps: int, checkpoint: Checkpoint | None = None):
    """What every continued-training run does before its first step: seed, fp32 master weights
    (:func:`master_weights`) and the protocol's optimizer and schedule for ``steps`` updates.
    Returns ``(autocast, optimizer, scheduler)``."""
    torch.manual_seed(config.seed)
    autocast = master_weights(model, config.precision)
    return (autocast, *optimizer_and_schedule(model, config, steps, checkpoint))


def continue_training(
    model,
    stream: Stream,
    config: TrainConfig = TrainConfig(),
    evaluate: Callable[[object, int], dict] | None = None,
    eval_steps: Sequence[int] = (),
    progress: bool = True,
    checkpoint: Checkpoint | None = None,
) -> pd.DataFrame:
    """Train ``model`` in place on ``stream`` (same data order for every model given the same
    stream) under ``config.protocol`` (``checkpoint``: where ``model`` was loaded from, for
    ``matched`` and ``resumed``). ``evaluate(model, step)`` runs before training (step 0), after
    each step in ``eval_steps`` and at the end; returns the evaluations as rows, plus the
    training loss and the learning rate of the last update. The model trains (and is evaluated,
    before and after alike) on fp32 master weights, and stays in fp32 (``config.precision``)."""
    steps = len(stream.batches)
    autocast, opt, sched = start_training(model, config, steps, checkpoint)
    rows = [{"step": 0, **evaluate(model, 0)}] if evaluate else []
    model.train()
    losses = []
    for step in tqdm(range(1, steps + 1), desc="continued training", disable=not progress):
        batch = stream.batches[step - 1].to(next(model.parameters()).device)
        lr = sched.get_last_lr()[0]
        losses.append(train_step(model, batch, opt, sched, autocast))
        if evaluate and (step in eval_steps or step == steps):
            rows.append({"step": step, "train_loss": sum(losses[-10:]) / len(losses[-10:]), "lr": lr,
                         **evaluate(model, step)})
    model.eval()
    return pd.DataFrame(rows)
