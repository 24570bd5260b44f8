"""What tests/test_distributed.py runs in one process and tests/distributed_worker.py in two."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from helpers import make_model
from ke_utils.continual import ScaleConfig, continue_training
from ke_utils.continual import TrainConfig
from ke_utils.stream import Stream

# 7 documents of different lengths: 2 processes get 4 and 3, and with small batches the last
# batch of each process is short (where accelerate's prepared loaders would repeat samples).
DOCUMENTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Knowledge entropy falls as training goes on, and the model uses fewer memory vectors.",
    "Paris is the capital of France.",
    "Memory vectors in feed-forward layers store facts about the world.",
    "A dog.",
    "The lazy dog sleeps while the quick brown fox jumps over it again and again.",
    "Facts are stored, and facts are forgotten.",
]


def cli_args(folder: Path, weighting: str, out: str) -> list[str]:
    """``python -m ke_utils.measure`` arguments for the model and texts in ``folder``."""
    return [str(folder / "model"), "--texts", str(folder / "texts.txt"), "--out", str(folder / out),
            "--weighting", weighting, "--max-batch-tokens", "40", "--quiet"]


def train_tiny():
    """A tiny Llama trained 3 steps on global batches of 8 rows in micro-batches of 2 (split over
    the processes of a launch); returns the model and the loss log."""
    batches = torch.randint(1, 128, (3, 8, 16), generator=torch.Generator().manual_seed(0))
    model = make_model("llama")
    log = continue_training(model, Stream(batches, pd.DataFrame()), TrainConfig(lr=3e-2, warmup=1, precision="fp32"),
                            progress=False, scale=ScaleConfig(micro_batch=2))
    return model, log
