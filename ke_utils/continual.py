"""Continued training of a checkpoint on a stream (:mod:`ke_utils.stream`) under one of three
learning-rate protocols (the study's, and two that remove its confound; everything a protocol
needs and decides is here: its peak LR, its optimizer state, whether a checkpoint can run it), with
evaluations along the way (:func:`train_and_evaluate`, the run every experiment repeats): one loop, from one process on one CPU to data parallel over the processes of a launch
(``accelerate launch`` / ``torchrun``), with gradient accumulation, gradient checkpointing and bf16
autocast on fp32 master weights; :data:`STUDY_RECIPE` is the study's setup (README, "Scaling up";
an FSDP configuration for 7B models is in ``docs/accelerate/``).

One optimizer step consumes one global batch of the stream (``[batch, seq]``): each process takes
its contiguous share of the rows, in micro-batches (:class:`ScaleConfig`), and the gradients are
averaged over micro-batches and processes before the step. Every row holds ``seq_len`` tokens, so
this is exactly the gradient of the whole batch's mean loss (tested against one large batch); with
the whole batch in one micro-batch in one process it is the plain step, bit for bit (tested).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer, get_constant_schedule

from . import study
from .checkpoints import Checkpoint, has_training_state, load_checkpoint, load_training_state, trainer_state
from .evaluation import evaluator
from .memory.distributed import process_state
from .setups import KnowledgeSetup
from .stream import Stream, StreamConfig, build_stream
from .training import lr_schedule, optimizer


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
    pretraining learning rate; None reads the one the checkpoint recorded (:func:`recorded_lr`).

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


def recorded_lr(checkpoint: Checkpoint) -> float:
    """The pretraining learning rate a checkpoint recorded with its weights (``trainer_state.json``;
    every built-in checkpoint has it)."""
    return float(trainer_state(checkpoint)["learning_rate"])


def pretraining_lr_of(subject: str, given: float | Callable[[Checkpoint], float] | None = None
                      ) -> Callable[[Checkpoint], float]:
    """How to know a checkpoint's pretraining learning rate: ``given`` (a function of the
    checkpoint, or one number for every checkpoint, e.g. a constant-LR run), else what a built-in
    checkpoint recorded (:func:`recorded_lr`), or the schedule ``study.HUB_FAMILIES`` knows for a hub
    repository (OLMo-1B's two; SmolLM3-3B's stage-1 branches, :func:`~ke_utils.study.smollm3_lr`);
    for any other subject ``given`` is needed (ValueError)."""
    if callable(given):
        return given
    if given is not None:
        return lambda checkpoint: float(given)
    if subject.startswith("builtin"):
        return recorded_lr
    family = study.hub_family(subject)
    if family is not None:
        return family.lr_of
    raise ValueError(f"the pretraining learning rate of {subject!r} is unknown: set LR_OF, e.g. "
                     "lambda c: ke_utils.training.lr_at(c.step, peak, warmup, total)")


def own_lr(config: TrainConfig, checkpoint: Checkpoint | None) -> float:
    """The checkpoint's pretraining learning rate for ``config``: ``config.own_lr``, else the one
    ``checkpoint`` recorded."""
    if config.own_lr is not None:
        return config.own_lr
    if checkpoint is None:
        raise ValueError(f"protocol {config.protocol!r} needs the checkpoint the model was loaded from")
    return recorded_lr(checkpoint)


def peak_lr(config: TrainConfig, pretraining_lr: float) -> float:
    """The highest learning rate of continued training under ``config.protocol``: the study's one
    peak for every checkpoint, else the checkpoint's own ``pretraining_lr``."""
    return config.lr if config.protocol == "study" else pretraining_lr


def cannot_run(protocol: str, checkpoint: Checkpoint) -> str | None:
    """Why ``checkpoint`` cannot be trained under ``protocol`` (None: it can): ``resumed`` needs
    the optimizer state saved with the checkpoint."""
    if protocol == "resumed" and not has_training_state(checkpoint):
        return f"protocol 'resumed' skipped for {checkpoint.name}: no optimizer state saved with the checkpoint"
    return None


def optimizer_and_schedule(model, config: TrainConfig, steps: int, checkpoint: Checkpoint | None = None):
    """``(AdamW, scheduler)`` for ``steps`` updates of ``model`` under ``config.protocol``;
    ``matched`` and ``resumed`` read the pretraining learning rate (:func:`own_lr`), ``resumed``
    also the AdamW state saved with ``checkpoint``."""
    if config.protocol == "study":
        opt = optimizer(model, config.lr, config.weight_decay, config.betas)
        return opt, lr_schedule(opt, config.warmup, steps, "cosine", config.min_lr_ratio)
    if config.protocol == "resumed" and checkpoint is None:
        raise ValueError("protocol 'resumed' needs the checkpoint the model was loaded from")
    lr = own_lr(config, checkpoint)
    if not lr > 0:
        raise ValueError(f"{checkpoint.name if checkpoint else 'the checkpoint'} was saved at learning rate {lr}: "
                         "nothing to match or resume")
    if config.protocol == "matched":
        opt = optimizer(model, lr, config.weight_decay, config.betas)
        return opt, lr_schedule(opt, config.warmup, steps, "cosine", config.min_lr_ratio)
    opt = optimizer(model, lr, 0.0, config.betas)
    load_training_state(checkpoint, opt)
    for group in opt.param_groups:
        group["lr"] = group["initial_lr"] = lr
    return opt, get_constant_schedule(opt)


def start_training(model, config: TrainConfig, steps: int, checkpoint: Checkpoint | None = None):
    """What every continued-training run does before its first step: seed, fp32 master weights
    (:func:`master_weights`) and the protocol's optimizer and schedule for ``steps`` updates.
    Returns ``(autocast, optimizer, scheduler)``."""
    torch.manual_seed(config.seed)
    autocast = master_weights(model, config.precision)
    return (autocast, *optimizer_and_schedule(model, config, steps, checkpoint))


@dataclass(frozen=True)
class ScaleConfig:
    """How one global batch is computed: ``micro_batch`` rows per forward/backward on each
    process (the rest is gradient accumulation), and gradient checkpointing (recompute the
    activations in the backward pass: less memory, about a third more compute) where the model
    supports it."""

    micro_batch: int | None = None  # None: a process's whole share of the batch at once
    gradient_checkpointing: bool = False

    def __post_init__(self):
        if self.micro_batch is not None and self.micro_batch < 1:
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
    train=TrainConfig(lr=study.CONTINUED_PEAK_LR, warmup=80, min_lr_ratio=0.1, weight_decay=0.1, betas=(0.9, 0.95),
                      protocol="study", precision="bf16-mixed"),
    scale=ScaleConfig(micro_batch=8, gradient_checkpointing=True),
)


def micro_batches(batch: torch.Tensor, process: int, processes: int, micro_batch: int | None) -> list[torch.Tensor]:
    """This process's contiguous share of a global batch ``[batch, seq]``, cut into micro-batches
    of ``micro_batch`` rows (None: the share in one). Every process must get the same number of
    equal micro-batches (the gradient is their plain average), so the batch must divide evenly."""
    rows = batch.shape[0]
    micro_batch = micro_batch or rows // processes
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


def continue_training(
    model,
    stream: Stream,
    config: TrainConfig = TrainConfig(),
    evaluate: Callable[[object, int], dict] | None = None,
    eval_steps: Sequence[int] = (),
    progress: bool = True,
    checkpoint: Checkpoint | None = None,
    scale: ScaleConfig = ScaleConfig(),
) -> pd.DataFrame:
    """Train ``model`` in place on ``stream`` (same data order for every model given the same
    stream) under ``config.protocol`` (``checkpoint``: where ``model`` was loaded from, for
    ``matched`` and ``resumed``), in ``scale``'s micro-batches over every process of a launch (one
    process without a launcher). ``evaluate(model, step)`` runs before training (step 0), after
    each step in ``eval_steps`` and at the end, on every process with the unwrapped model
    (data-parallel copies are identical); returns the evaluations as rows, plus the training loss
    (the mean over processes) and the learning rate of the last update; without ``evaluate``,
    one row per step with its ``train_loss``. The model trains (and is evaluated, before and after
    alike) on fp32 master weights, under bf16 autocast when ``config.precision`` asks for it, and
    stays in fp32: on its own device in one process, on the launch's device for its process."""
    from accelerate import Accelerator

    # Mixed precision is the runner's own autocast, not accelerate's process-wide setting, which
    # cannot change between runs in one process (a notebook). Without a launcher the model stays
    # where it is (a CPU run on a machine with a GPU stays on the CPU).
    launched = process_state() is not None
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), device_placement=launched)
    if launched:
        model.to(accelerator.device)
    device = next(model.parameters()).device
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
            lr, total = sched.get_last_lr()[0], torch.zeros((), device=device)
            for i, part in enumerate(parts):
                part = part.to(device)
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


def train_and_evaluate(model, tokenizer, setup: KnowledgeSetup, stream_config: StreamConfig,
                       train_config: TrainConfig, eval_every: int = 0, progress: bool = False,
                       checkpoint: Checkpoint | None = None, scale: ScaleConfig = ScaleConfig(),
                       measure: Callable[[object], dict] | None = None) -> pd.DataFrame:
    """Continued training of ``model`` (in place) on the stream of ``setup``; the evaluation log
    (step 0 = before, after every ``eval_every``-th injection round if > 0, and at the end).
    ``checkpoint``: where ``model`` was loaded from (``matched``, ``resumed``); ``scale``:
    micro-batches and gradient checkpointing (default: whole batches); ``measure(model)``: more
    numbers for every evaluation row (e.g. the knowledge entropy, to track it during training)."""
    stream = build_stream(tokenizer, setup.background, setup.paraphrase, setup.once, stream_config)
    rounds = [r * stream_config.interval for r in range(eval_every, stream_config.rounds, eval_every)] if eval_every else []
    full = evaluator(tokenizer, setup)

    def evaluate(m, step: int) -> dict:  # retention and LM loss only before and at the end
        return {**full(m, step, with_retention=step in (0, len(stream.batches))), **(measure(m) if measure else {})}

    return continue_training(model, stream, train_config, evaluate, rounds, progress, checkpoint, scale)


def run_stage(checkpoint: Checkpoint, setup: KnowledgeSetup, stream_config: StreamConfig, train_config: TrainConfig,
              eval_every: int = 0, device: str = "cpu", progress: bool = False,
              scale: ScaleConfig = ScaleConfig()) -> pd.DataFrame:
    """Load ``checkpoint`` and :func:`train_and_evaluate` it (in ``scale``'s micro-batches); the
    evaluation log with its ``checkpoint`` step."""
    tokenizer = AutoTokenizer.from_pretrained(checkpoint.path, revision=checkpoint.revision)
    model = load_checkpoint(checkpoint, device=device)
    log = train_and_evaluate(model, tokenizer, setup, stream_config, train_config, eval_every, progress, checkpoint, scale)
    return log.assign(checkpoint=checkpoint.step)
