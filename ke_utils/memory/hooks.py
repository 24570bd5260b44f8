"""Find the feed-forward coefficient ``c`` of every layer and accumulate ``|c|`` without storing it.

The coefficient of memory vector j is exactly the *input* of the MLP's output projection
(docs/method.md section 2), so one forward pre-hook per layer on that module sees ``c`` with shape
``[batch, seq, d_ff]`` for any architecture, without forking modeling code.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .architectures import ARCHITECTURES

# model_type -> regex over module names (prefix-free: matched at a dot boundary) whose
# single group is the layer index. The module's *input* is the coefficient c. A view of the
# table (ke_utils.memory.architectures), which find_coefficient_modules reads.
COEFFICIENT_MODULES: dict[str, str] = {t: a.coefficient_pattern for t, a in ARCHITECTURES.items()}

_D_FF_KEYS = ("intermediate_size", "ffn_dim", "n_inner", "d_ff")


def _is_projection(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, Conv1D))


def _in_features(module: nn.Module) -> int:
    # nn.Linear stores [out, in]; transformers' Conv1D stores [in, out].
    return module.in_features if isinstance(module, nn.Linear) else module.weight.shape[0]


def intermediate_size(config) -> int | None:
    """d_ff from a transformers config, or None if the config does not say (GPT-2: 4 * n_embd)."""
    for key in _D_FF_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    if getattr(config, "model_type", None) == "gpt2":
        return 4 * config.n_embd
    return None


def _by_pattern(model: nn.Module, pattern: str) -> dict[int, str]:
    regex = re.compile(rf"(?:^|\.){pattern}$")
    found: dict[int, str] = {}
    for name, _ in model.named_modules():
        match = regex.search(name)
        if match:
            found[int(match.group(1))] = name
    return found


def _fallback(model: nn.Module, d_ff: int | None) -> dict[int, str]:
    """The last Linear/Conv1D inside each layer's MLP whose input width is the intermediate size."""
    if d_ff is None:
        return {}
    found: dict[int, str] = {}
    for name, module in model.named_modules():
        if not _is_projection(module) or _in_features(module) != d_ff:
            continue
        if not re.search(r"(mlp|ffn|feed_forward|feedforward|fc|output)", name, re.IGNORECASE):
            continue
        layer = re.search(r"\.(\d+)\.", f".{name}.")
        if layer:
            found[int(layer.group(1))] = name  # later modules overwrite: the last one wins
    return found


def find_coefficient_modules(
    model: nn.Module, module_names: Sequence[str] | None = None
) -> list[str]:
    """Names of the modules whose input is the FFN coefficient, one per layer, in layer order.

    ``module_names`` overrides the lookup (e.g. for an architecture the registry does not know).
    """
    modules = dict(model.named_modules())
    if module_names is not None:
        missing = [n for n in module_names if n not in modules]
        if missing:
            raise ValueError(f"module_names not found in {type(model).__name__}: {missing}")
        if not module_names:
            raise ValueError("module_names is empty")
        return list(module_names)
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    n_layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    arch = ARCHITECTURES.get(model_type)
    found = _by_pattern(model, arch.coefficient_pattern) if arch is not None else {}
    if not found:
        found = _fallback(model, intermediate_size(config) if config is not None else None)
    if not found or (n_layers and len(found) != n_layers) or sorted(found) != list(range(len(found))):
        raise ValueError(
            f"cannot find the feed-forward output projections of {type(model).__name__} "
            f"(model_type={model_type!r}). Pass them explicitly, one per layer, e.g. "
            "module_names=['model.layers.0.mlp.down_proj', ...]: the module whose *input* is the "
            "FFN coefficient (list candidates with [n for n, _ in model.named_modules()])."
        )
    return [found[i] for i in sorted(found)]


class CoefficientAccumulator:
    """Forward pre-hooks that add ``weights @ |c|`` per layer into float64 accumulators.

    Before each forward pass call :meth:`set_weights` with one weight per position, flattened
    ``[batch * seq]`` (0 for padding). Nothing of ``c`` outlives the hook call.
    Each layer's accumulator ``[d_ff]`` lives on the device where that layer runs (a model split
    over GPUs with ``device_map="auto"``, or offloaded, adds where its coefficient is); they meet
    only when :attr:`sums` is read.
    Use as a context manager: hooks are removed on exit, also when the forward pass raises.
    """

    def __init__(self, model: nn.Module, module_names: Sequence[str] | None = None):
        self.model = model
        self.names = find_coefficient_modules(model, module_names)
        self.modules = [dict(model.named_modules())[n] for n in self.names]
        self.d_ff = _in_features(self.modules[0])
        self._sums: list[torch.Tensor | None] = [None] * len(self.names)
        self._selection: dict[torch.device, tuple[torch.Tensor | None, torch.Tensor, float | None]] = {}
        self._handles: list = []

    @property
    def sums(self) -> torch.Tensor:
        """``[n_layers, d_ff]`` float64 on the CPU (zeros for a layer that has not run)."""
        return torch.stack([torch.zeros(self.d_ff, dtype=torch.float64) if s is None else s.cpu() for s in self._sums])

    def set_weights(self, weights: torch.Tensor) -> None:
        """weights: ``[batch * seq]`` float per position, on any device; 0 drops a position."""
        weights = weights.reshape(-1).float()
        rows = None if bool((weights > 0).all()) else weights.nonzero().squeeze(1)
        kept = weights if rows is None else weights.index_select(0, rows)
        # Equal weights (token weighting): a float32-accumulated sum of |c| per neuron instead of a
        # product with a float32 copy of c ([tokens, d_ff]): 1.9x faster on a CPU (bench/ke_overhead.py (a)).
        uniform = float(kept[0]) if len(kept) and bool((kept == kept[0]).all()) else None
        self._selection = {weights.device: (rows, kept, uniform)}

    def _on(self, device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor, float | None]:
        """The rows, weights and common weight (or None) of this batch on ``device`` (copied once per batch)."""
        if device not in self._selection:
            rows, weights, uniform = next(iter(self._selection.values()))
            self._selection[device] = (None if rows is None else rows.to(device), weights.to(device), uniform)
        return self._selection[device]

    def _hook(self, layer: int):
        def hook(module: nn.Module, args: tuple) -> None:
            c = args[0].reshape(-1, args[0].shape[-1])  # [batch * seq, d_ff]
            rows, weights, uniform = self._on(c.device)
            if rows is not None:
                c = c.index_select(0, rows)
            if self._sums[layer] is None:
                self._sums[layer] = torch.zeros(self.d_ff, dtype=torch.float64, device=c.device)
            if uniform is not None:
                self._sums[layer] += c.abs().sum(dim=0, dtype=torch.float32).double() * uniform
            else:
                self._sums[layer] += (weights @ c.abs().float()).double()

        return hook

    def __enter__(self) -> "CoefficientAccumulator":
        try:
            for i, module in enumerate(self.modules):
                self._handles.append(module.register_forward_pre_hook(self._hook(i)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def check_finite(self) -> None:
        """NaN and inf persist in a sum, so one check at the end finds any bad coefficient."""
        bad = [l for l, s in enumerate(self._sums) if s is not None and not bool(torch.isfinite(s).all())]
        if bad:
            raise FloatingPointError(
                f"non-finite FFN coefficient (NaN or inf) in layer {bad[0]} ({self.names[bad[0]]})"
                + (f" and {len(bad) - 1} more layer(s)" if len(bad) > 1 else "")
                + "; in fp16 this is often an overflow: try dtype=torch.bfloat16 or float32."
            )


@contextmanager
def capture_coefficients(
    model: nn.Module, module_names: Sequence[str] | None = None
) -> Iterator[dict[int, torch.Tensor]]:
    """Keep every layer's coefficient of the *next* forward passes: ``{layer: [batch, seq, d_ff]}``.

    For looking at a few tokens (notebook 01), not for datasets: it stores ``c``.
    """
    names = find_coefficient_modules(model, module_names)
    modules = dict(model.named_modules())
    captured: dict[int, torch.Tensor] = {}
    handles = []
    try:
        for i, name in enumerate(names):
            handles.append(
                modules[name].register_forward_pre_hook(
                    lambda m, args, i=i: captured.__setitem__(i, args[0].detach().clone())
                )
            )
        yield captured
    finally:
        for handle in handles:
            handle.remove()
