"""What pretraining and continued training share: AdamW with decay on matrices only, one
language-model step, and packing documents into fixed-length sequences."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch


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
