"""What pretraining and continued training share: AdamW with decay on matrices only, the
learning-rate schedules (transformers' implementations; :func:`lr_at` reads a schedule at any
step, so every learning rate in the package comes from the same code), one language-model step,
and packing documents into fixed-length sequences."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from transformers import get_constant_schedule_with_warmup, get_cosine_with_min_lr_schedule_with_warmup, get_wsd_schedule

SHAPES = ("constant", "cosine", "wsd")


def lr_schedule(opt: torch.optim.Optimizer, warmup: int, total: int, shape: str = "cosine",
                final_ratio: float = 0.1, decay_steps: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup`` updates to ``opt``'s learning rate, then constant (``shape =
    "constant"``), cosine decay to ``final_ratio`` x it at update ``total`` (``"cosine"``: the
    shape of OLMo's schedule, of the ``decayed`` family and of the study's continued training), or
    constant and then a linear decay to ``final_ratio`` x it over the last ``decay_steps`` updates
    (``"wsd"``, warmup-stable-decay: the ``annealed`` family; its warmup and stable part are the
    ``"constant"`` schedule's, number for number)."""
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, not {shape!r}")
    if (shape == "wsd") != (0 < decay_steps <= total - warmup):
        raise ValueError(f"decay_steps ({decay_steps}) must be in [1, total - warmup] for 'wsd' and 0 otherwise")
    if shape == "constant":
        return get_constant_schedule_with_warmup(opt, warmup)
    if shape == "cosine":
        return get_cosine_with_min_lr_schedule_with_warmup(opt, warmup, total, min_lr_rate=final_ratio)
    stable = get_constant_schedule_with_warmup(opt, warmup).lr_lambdas[0]
    decay = get_wsd_schedule(opt, warmup, decay_steps, total, decay_type="linear", min_lr_ratio=final_ratio).lr_lambdas[0]
    start = total - decay_steps  # transformers' warmup starts at final_ratio, so only its decay is used
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: stable(step) if step < start else decay(step))


def lr_at(step: int, peak: float, warmup: int, total: int, shape: str = "cosine", final_ratio: float = 0.1,
          decay_steps: int = 0) -> float:
    """The learning rate :func:`lr_schedule` gives after ``step`` updates (the one update
    ``step + 1`` uses), for a peak of ``peak``; past ``total`` it stays at the end value."""
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=peak)
    return peak * lr_schedule(probe, warmup, total, shape, final_ratio, decay_steps).lr_lambdas[0](min(step, total))


def lr_jump(step: int, peak: float, warmup: int, total: int, continued_peak: float, shape: str = "cosine",
            final_ratio: float = 0.1) -> float:
    """How far a fresh optimizer warmed up to ``continued_peak`` re-warms a checkpoint saved after
    ``step`` updates of a pretraining schedule (:func:`lr_at` with ``peak``, ``warmup``, ``total``,
    ``shape``, ``final_ratio``): ``continued_peak`` divided by the LR the checkpoint sat at."""
    return continued_peak / lr_at(step, peak, warmup, total, shape, final_ratio)


def optimizer(model, lr: float, weight_decay: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW with decay on matrices only (not on norms or biases), as in OLMo and nanoGPT."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def train_step(model, batch: torch.Tensor, opt, sched, autocast=contextlib.nullcontext()) -> float:
    """One language-model step on ``batch`` (``[batch, seq]`` token ids), the forward pass under
    ``autocast`` (e.g. ``torch.autocast("cuda", dtype=torch.bfloat16)``), gradients clipped to
    norm 1; returns the loss."""
    with autocast:
        loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def encode_documents(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text followed by the tokenizer's end-of-sequence id (no other specials)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no end-of-sequence token to separate documents")
    return [ids + [tokenizer.eos_token_id] for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def pack(tokenizer, texts: Sequence[str], seq_len: int) -> torch.Tensor:
    """Documents joined by end-of-sequence and cut into ``[n_sequences, seq_len]`` (standard packing)."""
    stream = torch.tensor([i for doc in encode_documents(tokenizer, texts) for i in doc], dtype=torch.long)
    n = len(stream) // seq_len
    if n == 0:
        raise ValueError(f"corpus has {len(stream)} tokens, fewer than one sequence of {seq_len}")
    return stream[: n * seq_len].view(n, seq_len)
