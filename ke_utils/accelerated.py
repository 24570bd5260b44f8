"""Continued training at the study's scale with Hugging Face accelerate: data parallel over
processes (``accelerate launch`` / ``torchrun``), bf16 autocast on fp32 master weights, gradient
accumulation and gradient checkpointing; :data:`STUDY_RECIPE` is the study's setup (README,
"Scaling up"; an FSDP configuration for 7B models is in ``docs/accelerate/``).

One optimizer step consumes one global batch of the stream (``[batch, seq]``): each process takes
its contiguous share of the rows, in micro-batches of ``micro_batch`` rows, and the gradients are
averaged over micro-batches and processes before the step. Every row holds ``seq_len`` tokens,
so this is exactly the gradient of the whole batch's mean loss (tested against one large batch).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch
from tqdm.auto import tqdm

from .checkpoints import Checkpoint
from .continual import TrainConfig, start_training
from .stream import Stream, StreamConfig
from .study import CONTINUED_PEAK_LR


@dataclass(frozen=True)
class ScaleConfig:
    """How one global batch is computed: ``micro_batch`` rows per forward/backward on each
    process (the rest is gradient accumulation), and gradient checkpointing (recompute the
    activations in the backward pass: less memory, about a third more compute) where the model
    supports it."""

    micro_batch: int = 8
    gradient_checkpointing: bool = True

    def __post_init__(self):
        if self.micro_batch < 1:
            raise ValueError(f"micro_batch must be at least 1, not {self.micro_batch}")


@dataclass(frozen=True)
class Recipe:
    """A continued-training setup: the stream's shape, the optimizer and schedule, the scale."""

    stream: StreamConfig
    train: TrainConfig
    scale: ScaleConfig = field(default_factory=ScaleConfig)


# The study's setup (Kim et al., 2024; docs/method.md): global batch 128 x 1,024 tokens, 1,600
# steps, a round of knowledge every 160 steps prepended to 76 of the 128 sequences, fresh AdamW
# (0.9, 0.95), weight decay 0.1, 80 warmup steps to 4e-4, cosine to 4e-5, gradients clipped to 1.
STUDY_RECIPE = Recipe(
    stream=StreamConfig(rounds=10, interval=160, batch_size=128, seq_len=1024, max_injected_rows=76),
    train=TrainConfig(lr=CONTINUED_PEAK_LR, warmup=80, min_lr_ratio=0.1, weight_decay=0.1, betas=(0.9, 0.95),
                      protocol="study", precision="bf16-mixed"),
)


def micro_batches(batch: torch.Tensor, process: int, processes: int, micro_batch: int) -> list[torch.Tensor]:
    """This process's contiguous share of a global batch ``[batch, seq]``, cut into micro-batches
    of ``micro_batch`` rows. Every process must get the same number of equal micro-batches (the
    gradient is their plain average), so the batch must divide evenly."""
    rows = batch.shape[0]
    if rows % (processes * micro_batch):
        raise ValueError(f"a global batch of {rows} rows does not split into {processes} process(es) x "
                         f"micro-batches of {micro_batch}: choose micro_batch dividing {rows // processes or rows}")
    share = rows // processes
    return list(batch[process * share : (process + 1) * share].split(micro_batch))


@contextlib.contextmanager
def _checkpointing(model, enable: bool):
    """Gradient checkpointing on inside (if the model supports it), off again on exit."""
    enable = enable and getattr(model, "supports_gradient_checkpointing", False)
    # transformers 5.x renamed it "activation checkpointing"; 4.x has the old names only
    on = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    off = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
    if enable:
        on()
    try:
        yield
    finally:
        if enable:
            off()


def continue_training_accelerated(
    model,
    stream: Stream,
    config: TrainConfig = TrainConfig(),
    scale: ScaleConfig = ScaleConfig(),
    evaluate: Callable[[object, int], dict] | None = None,
    eval_steps: Sequence[int] = (),
    progress: bool = True,
    checkpoint: Checkpoint | None = None,
) -> pd.DataFrame:
    """:func:`~ke_utils.continual.continue_training` under accelerate: the same protocols, data
    order and evaluation log, computed in micro-batches over every process of the launch (one
    process without a launcher), under bf16 autocast on fp32 master weights when
    ``config.precision`` asks for it. ``model`` is trained in place and left in fp32 on this
    process's device. ``evaluate(model, step)`` runs on every process with the unwrapped model
    (data-parallel copies are identical); ``train_loss`` is the mean over processes. Without
    ``evaluate`` the log has one row per step with its ``train_loss``."""
    from accelerate import Accelerator

    # Mixed precision is the runner's own autocast (as in continue_training), not accelerate's
    # process-wide setting, which cannot change between runs in one process (a notebook).
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    model.to(accelerator.device)
    steps = len(stream.batches)
    autocast, opt, sched = start_training(model, config, steps, checkpoint)  # seed, fp32 master weights
    rows = [{"step": 0, **evaluate(model, 0)}] if evaluate else []
    losses = []
    with _checkpointing(model, scale.gradient_checkpointing):
        wrapped, opt = accelerator.prepare(model, opt)  # the schedule steps once per update: not prepared
        wrapped.train()
        for step in tqdm(range(1, steps + 1), desc="continued training", disable=not (progress and accelerator.is_main_process)):
            parts = micro_batches(stream.batches[step - 1], accelerator.process_index, accelerator.num_processes,
                                  scale.micro_batch)
            lr, total = sched.get_last_lr()[0], torch.zeros((), device=accelerator.device)
            for i, part in enumerate(parts):
                part = part.to(accelerator.device)
                last = i == len(parts) - 1  # gradients are all-reduced once, after the last micro-batch
                with contextlib.nullcontext() if last else accelerator.no_sync(wrapped):
                    with autocast:
                        loss = wrapped(input_ids=part, labels=part).loss / len(parts)
                    accelerator.backward(loss)
                total += loss.detach()
            accelerator.clip_grad_norm_(wrapped.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(accelerator.reduce(total, reduction="mean")))
            if evaluate and (step in eval_steps or step == steps):
                rows.append({"step": step, "train_loss": sum(losses[-10:]) / len(losses[-10:]), "lr": lr,
                             **evaluate(accelerator.unwrap_model(wrapped), step)})
                wrapped.train()
    model.eval()
    accelerator.free_memory()
    return pd.DataFrame(rows) if evaluate else pd.DataFrame({"step": range(1, steps + 1), "train_loss": losses})
