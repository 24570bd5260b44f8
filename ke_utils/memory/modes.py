"""Train and eval mode around a measurement: every submodule back in its own mode afterwards."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def kept_modes(model: torch.nn.Module):
    """Inside, ``model`` may switch between train and eval mode; on exit, after an exception too,
    every submodule is back in its own mode."""
    modes = {module: module.training for module in model.modules()}
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.train(training)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """``model.eval()`` inside (no dropout noise in a measurement), every submodule's own mode
    restored on exit, after an exception too."""
    with kept_modes(model):
        yield model.eval()
