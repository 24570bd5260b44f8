"""Data parallelism for measurements, on Hugging Face accelerate (torch.distributed underneath).

Under ``torchrun`` or ``accelerate launch`` every process measures its own contiguous share of
the documents and keeps float64 sums; the sums and counts are added up once at the end. No
activation leaves its process, and no document is measured twice: accelerate's prepared data
loaders pad the last batch with repeated samples (``even_batches``), which a sum would count
twice, so the documents are split with ``PartialState.split_between_processes`` instead, which
leaves the shares uneven rather than padded.

In a plain single-process run nothing here touches torch.distributed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeVar

import torch

T = TypeVar("T")


def launched() -> bool:
    """True inside a multi-process launch (``WORLD_SIZE`` > 1, as torchrun and accelerate set it)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def process_state():
    """accelerate's ``PartialState`` (starts the process group: NCCL on GPUs, gloo on CPUs) in a
    multi-process launch, else None. On a machine without GPU accelerate must be told ``cpu=True``,
    or every process takes itself for the only one."""
    if not launched():
        return None
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def finish() -> None:
    """End a launched command line: destroy its process group (nothing in a single process)."""
    state = process_state()
    if state is not None:
        state.destroy_process_group()


def local_device(default: str | torch.device = "cpu") -> torch.device:
    """This process's device in a launch (``cuda:<local rank>`` on GPUs), else ``default``."""
    state = process_state()
    return torch.device(default) if state is None else state.device


def shard(items: Sequence[T]) -> list[T]:
    """This process's contiguous share of ``items`` (all of them in a single process). Shares
    differ by at most one item and together hold every item exactly once."""
    state = process_state()
    if state is None:
        return list(items)
    with state.split_between_processes(list(items)) as share:
        return list(share)


def sum_over_processes(sums: torch.Tensor, count: float) -> tuple[torch.Tensor, float]:
    """``(sums, count)`` added over all processes in one float64 all-reduce (identity in a single
    process). ``sums``: any shape, on this process's device."""
    state = process_state()
    if state is None:
        return sums, count
    from accelerate.utils import reduce

    flat = torch.cat([sums.reshape(-1).double(), torch.tensor([count], dtype=torch.float64, device=sums.device)])
    flat = reduce(flat.to(state.device), reduction="sum")
    return flat[:-1].reshape(sums.shape).to(sums.device), float(flat[-1])


def gather_counts(count: int) -> list[int]:
    """Each process's ``count``, in rank order (``[count]`` in a single process)."""
    state = process_state()
    if state is None:
        return [count]
    from accelerate.utils import gather_object

    return [int(c) for c in gather_object([count])]
