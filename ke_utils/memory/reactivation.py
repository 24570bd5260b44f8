"""Reactivation (the study's "resuscitation", docs/method.md section 4): scale up the least-used memory
neurons of every layer so that the model spreads its use of them more evenly.

For layer l with coefficient means ``a_l`` (``[d_ff]``, from :func:`coefficient_means`), the
fraction ``ratio`` (p) of neurons with the lowest ``a_l[j]`` gets the factor
``s_j = factor * mean(a_l) / a_l[j]`` (q = ``factor``), applied to row j of the up projection
(of a fused gate/up projection such as Phi-3's ``gate_up_proj``, ``[2 d_ff, d_model]``: row j of
its up half, the half :mod:`ke_utils.memory.architectures` names). In a gated MLP
(``c = act(gate(x)) * up(x)``) this multiplies ``c_j`` by exactly ``s_j``. In a non-gated MLP
(``c = act(fc(x))``) scaling row j of ``fc`` is exact only for ReLU; for GELU and the like it is
an approximation, and a warning says so.

``preserve_function=True`` also divides neuron j's memory vector (input j of the down projection)
by ``s_j``: the model computes the same function (logits equal up to rounding) while its
coefficients, and so its knowledge entropy, change. Only where the scaling is exact (gated or ReLU).

Two controls the study did not run use the *same* factors on other neurons: ``select="random"``
(as many neurons, chosen at random) and ``select="most"`` (the most-used neurons, the largest
factor on the most-used one). They separate "more entropy" from "larger weights".

Experiments that train several variants of one model keep one model on the device: the weights
as given are kept once in host memory (:func:`snapshot`) and put back (:func:`restore`) before
each variant is made in place.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import nn

from .architectures import Projection, architecture
from .entropy import coefficient_means, knowledge_entropy
from .hooks import find_coefficient_modules
from .modes import kept_modes

SELECTIONS = ("least", "random", "most")
LARGE_FACTOR = 100.0  # factors above this are reported in the notes: they can distort later layers


@dataclass
class Reactivation:
    """What :func:`reactivate` did. ``indices[l]`` and ``scales[l]`` are the touched neurons of
    layer l and their factors; ``preserve_function``: their memory vectors were divided by them.
    :func:`measure_reactivation` fills ``ke_before`` / ``ke_after`` (nats)
    and the coefficient means they come from, ``means_before`` / ``means_after`` (``[n_layers, d_ff]``)."""

    ratio: float
    factor: float
    select: str
    exact: bool
    modules: list[str]
    indices: list[torch.Tensor]
    scales: list[torch.Tensor]
    preserve_function: bool = False
    ke_before: float | None = None
    ke_after: float | None = None
    means_before: torch.Tensor | None = field(default=None, repr=False)
    means_after: torch.Tensor | None = field(default=None, repr=False)
    notes: list[str] = field(default_factory=list)

    @property
    def per_layer(self) -> pd.DataFrame:
        """One row per layer: neurons touched and the min / mean / max factor."""
        return pd.DataFrame([
            {"layer": l, "module": m, "touched": len(i),
             "scale_min": float(s.min()) if len(s) else float("nan"),
             "scale_mean": float(s.mean()) if len(s) else float("nan"),
             "scale_max": float(s.max()) if len(s) else float("nan")}
            for l, (m, i, s) in enumerate(zip(self.modules, self.indices, self.scales))])


def up_projections(model: nn.Module, up_names: Sequence[str] | None = None,
                   module_names: Sequence[str] | None = None) -> list[Projection]:
    """The projection whose output j is neuron j's up value (for a fused gate/up projection: its
    up half), one per layer, from the architectures table next to the coefficient modules
    (``module_names``, as for :func:`find_coefficient_modules`). ``up_names`` override it: whole modules."""
    if up_names is not None:
        return [Projection(n) for n in up_names]
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    try:
        arch = architecture(model_type)
    except ValueError as e:
        raise ValueError(f"no known up projection for {type(model).__name__}: {e}; pass up_names=[...] (one per "
                         "layer, the Linear/Conv1D whose output is the d_ff pre-activation)") from None
    ups = arch.locate(arch.up, find_coefficient_modules(model, module_names))
    modules = dict(model.named_modules())
    missing = [p.name for p in ups if p.name not in modules]
    if missing:
        raise ValueError(f"up projections not found in {type(model).__name__}: {missing}; pass up_names=[...]")
    return ups


def up_projection_names(model: nn.Module, up_names: Sequence[str] | None = None) -> list[str]:
    """The module whose outputs produce the neurons' coefficients, one per layer (:func:`up_projections`)."""
    return [p.name for p in up_projections(model, up_names)]


def _activation(model: nn.Module) -> str | None:
    """The MLP activation the model's config names, if it names one."""
    config = getattr(model, "config", None)
    return getattr(config, "activation_function", None) or getattr(config, "hidden_act", None)


def _is_exact(model: nn.Module, up_names: list[str]) -> bool:
    """Gated MLP (a sibling gate projection), or a ReLU MLP (positively homogeneous)."""
    modules = dict(model.named_modules())
    parent = modules[up_names[0].rpartition(".")[0]] if "." in up_names[0] else model
    if any("gate" in name for name, _ in parent.named_children()):
        return True
    return _activation(model) == "relu"


def _select(a: torch.Tensor, k: int, select: str, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices and factors (before ``q * mean``) for one layer: 1 / a of the k least-used live neurons."""
    live = (a > 0).nonzero().squeeze(1)
    order = live[torch.argsort(a[live], stable=True)]
    least = order[:k]
    factors = a.mean() / a[least]
    if select == "least":
        return least, factors
    if select == "most":
        return order.flip(0)[: len(least)], factors
    return live[torch.randperm(len(live), generator=generator)[: len(least)]], factors


@torch.no_grad()
def _divide_inputs(module: nn.Module, inputs: torch.Tensor, scales: torch.Tensor) -> None:
    """Divide the weights that read input units ``inputs`` of a Linear (weight ``[out, in]``: columns)
    or Conv1D (``[in, out]``: rows) by ``scales``. The bias (one per output) stays."""
    weight = module.weight
    scales = scales.to(weight.device, torch.float64)
    inputs = inputs.to(weight.device)
    if isinstance(module, nn.Linear):
        weight[:, inputs] = (weight[:, inputs].double() / scales[None, :]).to(weight.dtype)
    else:
        weight[inputs] = (weight[inputs].double() / scales[:, None]).to(weight.dtype)


@torch.no_grad()
def _scale_rows(module: nn.Module, rows: torch.Tensor, scales: torch.Tensor) -> None:
    """Multiply output unit ``rows`` of a Linear (weight ``[out, in]``) or Conv1D (``[in, out]``)."""
    weight = module.weight
    scales = scales.to(weight.device, torch.float64)
    rows = rows.to(weight.device)
    if isinstance(module, nn.Linear):
        weight[rows] = (weight[rows].double() * scales[:, None]).to(weight.dtype)
    else:
        weight[:, rows] = (weight[:, rows].double() * scales[None, :]).to(weight.dtype)
    if getattr(module, "bias", None) is not None:
        module.bias[rows] = (module.bias[rows].double() * scales).to(module.bias.dtype)


def reactivate(model: nn.Module, means: torch.Tensor, ratio: float, factor: float, select: str = "least",
               inplace: bool = False, layers: list[int] | None = None, seed: int = 0,
               up_names: Sequence[str] | None = None, preserve_function: bool = False
               ) -> tuple[nn.Module, Reactivation]:
    """Scale the ``ratio`` least-used neurons of each layer by ``factor * mean(a_l) / a_l[j]``.

    means: ``[n_layers, d_ff]`` coefficient means of this model (:func:`coefficient_means`).
    ratio: p in [0, 1], the fraction of neurons per layer. factor: q > 0.
    select: ``"least"`` (the study), or the controls ``"random"`` / ``"most"`` (same factors).
    inplace: modify ``model`` itself rather than a deep copy. layers: only these layers.
    The ``round(ratio * d_ff)`` lowest neurons are taken (ties by index): docs/method.md's
    ``a_l[j] <= quantile(a_l, p)`` up to ties, and the same count for the controls.
    Neurons never used (``a_l[j] = 0``) cannot be lifted by scaling and are not selected.
    preserve_function: also divide input j of the down projection (``[d_ff] -> [d_model]``, the
    coefficient modules) by ``s_j``, so the logits stay the same while ``c_j`` is scaled; a
    ValueError for a non-gated MLP whose activation is not ReLU, where no such scaling is exact.
    Returns ``(model, report)``.
    """
    if not 0.0 <= float(ratio) <= 1.0:
        raise ValueError(f"ratio (p) must be in [0, 1], got {ratio}")
    if not (float(factor) > 0 and torch.isfinite(torch.tensor(float(factor)))):
        raise ValueError(f"factor (q) must be a finite number > 0, got {factor}")
    if select not in SELECTIONS:
        raise ValueError(f"select must be one of {SELECTIONS}, got {select!r}")
    ups = up_projections(model, up_names)
    names = [p.name for p in ups]
    if means.ndim != 2 or means.shape[0] != len(names):
        raise ValueError(f"means must be [n_layers={len(names)}, d_ff], got {tuple(means.shape)}")
    if not bool(torch.isfinite(means).all()) or bool((means < 0).any()):
        raise ValueError("means must be finite and non-negative (mean |c| per neuron)")
    exact = _is_exact(model, names)
    if preserve_function and not exact:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        raise ValueError(f"preserve_function=True needs a gated or ReLU MLP, but {type(model).__name__} "
                         f"(model_type={model_type!r}) has a non-gated MLP with activation {_activation(model)!r}: "
                         "act(s * z) != s * act(z), so scaling row j of the up projection and dividing the "
                         "down projection's input j by s does not keep the function")
    downs = find_coefficient_modules(model) if preserve_function else []
    if preserve_function and len(downs) != len(names):
        raise ValueError(f"{len(names)} up projections but {len(downs)} down projections: {downs}")
    target = model if inplace else copy.deepcopy(model)
    modules = dict(target.named_modules())
    if not exact:
        warnings.warn(f"{type(model).__name__} has a non-gated, non-ReLU MLP: scaling row j of the up projection "
                      "changes c_j only approximately (the activation is not linear)", stacklevel=2)
    generator = torch.Generator().manual_seed(seed)
    chosen = set(range(len(names)) if layers is None else layers)
    indices, scales, notes = [], [], []
    for l, name in enumerate(names):
        a = means[l].double().cpu()
        k = round(float(ratio) * a.numel()) if l in chosen else 0
        rows, factors = _select(a, k, select, generator)
        if len(rows) < k:
            notes.append(f"layer {l}: {k - len(rows)} unused neurons (a = 0) left out")
        s = float(factor) * factors
        if len(s) and float(s.max()) > LARGE_FACTOR:
            notes.append(f"layer {l}: very large factors (up to {float(s.max()):.0f}) on nearly unused neurons")
        _scale_rows(modules[name], rows + ups[l].start(a.numel()), s)
        if preserve_function:
            _divide_inputs(modules[downs[l]], rows, s)
        indices.append(rows)
        scales.append(s)
    return target, Reactivation(float(ratio), float(factor), select, exact, names, indices, scales,
                                preserve_function, notes=notes)


def _tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    return itertools.chain(model.named_parameters(), model.named_buffers())


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy in host memory of every parameter and buffer of ``model`` (by name, each in its own
    dtype; tied weights once), for :func:`restore`."""
    return {name: t.detach().to("cpu", copy=True) for name, t in _tensors(model)}


@torch.no_grad()
def restore(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Put ``saved`` (:func:`snapshot` of this model) back into ``model``: every parameter and
    buffer gets a fresh copy of its saved values in the saved dtype, on the device it is on now.
    Weights that training cast to fp32 (:func:`~ke_utils.continual.master_weights`) come back
    in the dtype they were saved in; the parameter objects stay, so tied weights stay tied."""
    for name, t in _tensors(model):
        t.data = saved[name].to(t.device, copy=True)


@contextlib.contextmanager
def kept(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Inside, ``model`` may be reactivated, cast and trained in place; on exit (after an exception
    too) it is as it came in: its parameters and buffers (values and dtypes) and every
    submodule's train/eval mode. Yields its :func:`snapshot`, to :func:`restore` it in between."""
    saved = snapshot(model)
    with kept_modes(model):
        try:
            yield saved
        finally:
            restore(model, saved)


def measure_reactivation(model: nn.Module, batches: list[dict], ratio: float, factor: float,
                         select: str = "least", seed: int = 0, preserve_function: bool = False,
                         **kwargs) -> tuple[nn.Module, Reactivation]:
    """Coefficient means of ``model`` on ``batches``, a reactivated copy (``preserve_function`` as
    for :func:`reactivate`), and the knowledge entropy of both measured on the same batches
    (``report.ke_before``, ``report.ke_after``)."""
    batches = list(batches)
    means = coefficient_means(model, batches)
    modified, report = reactivate(model, means, ratio, factor, select=select, seed=seed,
                                  preserve_function=preserve_function, **kwargs)
    report.means_before, report.means_after = means, coefficient_means(modified, batches)
    report.ke_before = knowledge_entropy(report.means_before).total
    report.ke_after = knowledge_entropy(report.means_after).total
    return modified, report
