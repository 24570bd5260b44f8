"""Where do the updates go? Per memory neuron, how much gradient and how much parameter change
its key and its value receive (issue 14, item 1).

Memory neuron j of layer l (docs/method.md section 2) has

- a KEY: the weights that produce its coefficient ``c_j``: row j of the up projection (and of the
  gate projection in a gated MLP), plus entry j of their biases. In transformers' ``Conv1D``
  (GPT-2's ``mlp.c_fc``, weight ``[in, out]``) that is COLUMN j; in a fused gate/up projection
  (Phi-3's ``gate_up_proj``, ``[2 d_ff, d_model]``) row j of each half
  (:mod:`ke_utils.memory.architectures` says which half is which);
- a VALUE: the weights that write ``c_j`` back to the residual stream: column j of the down
  projection (the coefficient module of :func:`ke_utils.memory.hooks.find_coefficient_modules`), ROW j
  of a ``Conv1D`` ``c_proj`` (``[d_ff, d_model]``). Its bias is shared by all neurons: excluded.

:class:`UpdateTracker` accumulates, during training, the squared gradient norm of every key and
value (``[n_layers, d_ff]``, float64) and gives their squared parameter change since it was
entered; :func:`batch_attribution` gives the squared gradient norms of one batch (e.g. the
injected knowledge alone) without touching the model. Measures to compare two such maps:
:func:`top_k_jaccard` (against :func:`chance_jaccard`), :func:`rank_agreement` and
:func:`update_entropy` (the knowledge-entropy normalisation applied to any per-neuron mass).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .architectures import ARCHITECTURES, Projection
from .entropy import KnowledgeEntropy, _forward_kwargs, knowledge_entropy
from .hooks import _in_features, find_coefficient_modules
from .modes import eval_mode
from .reactivation import up_projections


# ----------------------------------------------------------------------------- which parameters


@dataclass(frozen=True)
class MemoryParameter:
    """One parameter of the memories: neuron j (of ``d_ff``) is ``param.select(axis, start + j)``
    (a row, a column or, for a bias, one entry); ``start`` is ``d_ff`` for the second half of a
    fused gate/up projection, else 0."""

    name: str
    param: nn.Parameter = field(repr=False)
    axis: int
    d_ff: int
    start: int = 0

    def neurons(self, t: torch.Tensor) -> torch.Tensor:
        """The neurons' part of ``t`` (this parameter, its gradient or its change): ``d_ff`` along ``axis``."""
        return t.narrow(self.axis, self.start, self.d_ff)


@dataclass(frozen=True)
class LayerMemories:
    """The key parameters (gate weight/bias, up weight/bias; those that exist) and the value
    parameter (down projection weight) of one layer's ``d_ff`` memory neurons."""

    layer: int
    keys: tuple[MemoryParameter, ...]
    value: MemoryParameter
    d_ff: int


def _neuron_axis(module: nn.Module, role: str) -> int:
    """The weight axis along which neuron j lies: ``nn.Linear`` stores ``[out, in]``, Conv1D ``[in, out]``;
    a key's neurons are its outputs, a value's its inputs."""
    linear = isinstance(module, nn.Linear)
    return (0 if linear else 1) if role == "key" else (1 if linear else 0)


def memory_parameters(
    model: nn.Module,
    module_names: Sequence[str] | None = None,
    *,
    up_names: Sequence[str] | None = None,
    gate_names: Sequence[str] | None = None,
) -> list[LayerMemories]:
    """Key and value parameters of every layer's memory neurons, in layer order.

    module_names: the coefficient (down/output projection) modules, as for
    :func:`~ke_utils.memory.hooks.find_coefficient_modules`. ``up_names`` / ``gate_names`` override the
    up and gate projections (one per layer, whole modules; ``gate_names=[]`` for "no gate") for an
    architecture that the table :mod:`ke_utils.memory.architectures` does not know.
    Raises ValueError for an unknown architecture or modules whose widths do not match ``d_ff``.
    """
    value_names = find_coefficient_modules(model, module_names)
    ups = up_projections(model, up_names, value_names)
    if gate_names is None:
        arch = ARCHITECTURES.get(getattr(getattr(model, "config", None), "model_type", None))
        gates = arch.locate(arch.gate, value_names) if arch is not None and arch.gate is not None else []
    else:
        gates = [Projection(n) for n in gate_names]
    n_layers = len(value_names)
    if len(ups) != n_layers or gates and len(gates) != n_layers:
        raise ValueError(f"{n_layers} coefficient modules but {len(ups)} up and {len(gates)} gate names")
    modules = dict(model.named_modules())
    missing = [p.name for p in [*ups, *gates] if p.name not in modules]
    if missing:
        raise ValueError(f"modules not found in {type(model).__name__}: {missing}; pass up_names / gate_names")

    layers = []
    for layer, value_name in enumerate(value_names):
        value_module = modules[value_name]
        d_ff = _in_features(value_module)
        keys = []
        for key in ([gates[layer]] if gates else []) + [ups[layer]]:
            module, start = modules[key.name], key.start(d_ff)
            axis = _neuron_axis(module, "key")
            if module.weight.ndim != 2 or module.weight.shape[axis] != key.width(d_ff):
                raise ValueError(f"{key.name}: weight {tuple(module.weight.shape)} has no axis of "
                                 f"{key.width(d_ff)} (d_ff = {d_ff}) where a {type(module).__name__}'s outputs are")
            keys.append(MemoryParameter(f"{key.name}.weight", module.weight, axis, d_ff, start))
            if getattr(module, "bias", None) is not None:
                keys.append(MemoryParameter(f"{key.name}.bias", module.bias, 0, d_ff, start))
        value = MemoryParameter(f"{value_name}.weight", value_module.weight, _neuron_axis(value_module, "value"), d_ff)
        layers.append(LayerMemories(layer, tuple(keys), value, d_ff))
    if len({m.d_ff for m in layers}) != 1:
        raise ValueError(f"layers have different d_ff: {[m.d_ff for m in layers]}")
    return layers


def _per_neuron(t: torch.Tensor, axis: int) -> torch.Tensor:
    """``[d_ff]`` squared L2 norm of each neuron's slice of ``t`` (summed over the other axis);
    half precision is squared in fp32."""
    t = t.detach()
    if t.dtype not in (torch.float32, torch.float64):
        t = t.float()
    return t.square() if t.ndim == 1 else torch.linalg.vector_norm(t, dim=1 - axis).square()


def _accumulate(layers: list[LayerMemories], tensors, key: torch.Tensor, value: torch.Tensor) -> None:
    """Add each memory parameter's per-neuron squared norm (``tensors`` aligned with
    ``_flat(layers)``, each the neurons' part (:meth:`MemoryParameter.neurons`) of a gradient or
    change; None = zero) into the ``[n_layers, d_ff]`` sums ``key`` / ``value``."""
    it = iter(tensors)
    for l, mem in enumerate(layers):
        for p in mem.keys:
            t = next(it)
            if t is not None:
                key[l] += _per_neuron(t, p.axis).to(key.device, key.dtype)
        t = next(it)
        if t is not None:
            value[l] += _per_neuron(t, mem.value.axis).to(value.device, value.dtype)


def _flat(layers: list[LayerMemories]) -> list[MemoryParameter]:
    return [p for mem in layers for p in (*mem.keys, mem.value)]


# ----------------------------------------------------------------------------- during training


class UpdateTracker:
    """While active, accumulate per layer and memory neuron (``[n_layers, d_ff]``, float64, on the
    model's device):

    - ``key_grad`` / ``value_grad``: sum over backward passes of the squared L2 norm of the
      neuron's gradient (key: gate row + up row + their bias entries), as the ``.grad`` stands
      after each backward: raw, i.e. before clipping (and still scaled by a GradScaler's factor).
      A ``post_accumulate_grad`` hook fires once per parameter and backward, after the gradient
      is added into ``.grad``: with gradient accumulation over micro-batches it would see the
      running sum after each micro-batch, so use one backward per optimizer step (as
      :func:`ke_utils.training.train_step` does).
    - ``key_change`` / ``value_change``: squared L2 norm of the neuron's parameter change since
      entry (float64), from one snapshot of the memory parameters taken on entry. While active
      they compare with the weights now; on exit they are computed once more, frozen, and the
      snapshot is released.
    - ``steps``: backward passes seen.

    Memory is constant in the number of steps: two accumulators and the snapshot (one copy of
    the MLP weights, on ``snapshot_device``, default the weights' own). Hooks never change a
    gradient and are removed on exit, also when the body raises. Use once.
    """

    def __init__(self, model: nn.Module, module_names: Sequence[str] | None = None, *,
                 up_names: Sequence[str] | None = None, gate_names: Sequence[str] | None = None,
                 snapshot_device: torch.device | str | None = None):
        self.model = model
        self.layers = memory_parameters(model, module_names, up_names=up_names, gate_names=gate_names)
        frozen = [p.name for p in _flat(self.layers) if not p.param.requires_grad]
        if frozen:
            raise ValueError(f"memory parameters do not require grad, no update can reach them: {frozen}")
        self.n_layers, self.d_ff = len(self.layers), self.layers[0].d_ff
        device = self.layers[0].value.param.device
        self.key_grad = torch.zeros(self.n_layers, self.d_ff, dtype=torch.float64, device=device)
        self.value_grad = torch.zeros_like(self.key_grad)
        self._counts = [0] * len(_flat(self.layers))
        self._snapshot_device = snapshot_device
        self._snapshot: list[torch.Tensor] | None = None
        self._final: tuple[torch.Tensor, torch.Tensor] | None = None
        self._handles: list = []
        self._used = False

    @property
    def steps(self) -> int:
        """Backward passes seen (that reached at least one memory parameter)."""
        return max(self._counts)

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def _hook(self, index: int, layer: int, memory: MemoryParameter, target: torch.Tensor):
        def hook(param: torch.Tensor) -> None:
            if param.grad is not None:
                with torch.no_grad():
                    grad = memory.neurons(param.grad)
                    target[layer] += _per_neuron(grad, memory.axis).to(target.device, torch.float64)
            self._counts[index] += 1
            return None  # never changes the gradient

        return hook

    def __enter__(self) -> "UpdateTracker":
        if self._used:
            raise RuntimeError("an UpdateTracker is used once: make a new one")
        self._used = True
        try:
            with torch.no_grad():
                self._snapshot = [p.neurons(p.param.detach()).to(self._snapshot_device or p.param.device, copy=True)
                                  for p in _flat(self.layers)]
            index = 0
            for l, mem in enumerate(self.layers):
                for p in mem.keys:
                    self._handles.append(p.param.register_post_accumulate_grad_hook(
                        self._hook(index, l, p, self.key_grad)))
                    index += 1
                self._handles.append(mem.value.param.register_post_accumulate_grad_hook(
                    self._hook(index, l, mem.value, self.value_grad)))
                index += 1
        except BaseException:
            self.remove()
            self._snapshot = None
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.remove()
        try:
            if self._snapshot is not None:
                self._final = self._changes()
        except Exception:
            if exc_type is None:
                raise
        finally:
            self._snapshot = None

    def remove(self) -> None:
        """Remove the hooks (idempotent). Gradients seen so far stay in ``key_grad`` / ``value_grad``."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @torch.no_grad()
    def _changes(self) -> tuple[torch.Tensor, torch.Tensor]:
        key = torch.zeros_like(self.key_grad)
        value = torch.zeros_like(self.value_grad)
        diffs = (p.neurons(p.param.detach()).to(s.device, torch.float64) - s.to(torch.float64)
                 for p, s in zip(_flat(self.layers), self._snapshot))  # one parameter at a time
        _accumulate(self.layers, diffs, key, value)
        return key, value

    def changes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(key_change, value_change)``, each ``[n_layers, d_ff]`` float64 (squared weight units)."""
        if self._final is not None:
            return self._final
        if self._snapshot is None:
            raise RuntimeError("the tracker has not been entered: use it as `with UpdateTracker(model) as t:`")
        return self._changes()

    @property
    def key_change(self) -> torch.Tensor:
        """``[n_layers, d_ff]``: squared norm of each key's change since entry (gate and up rows, biases)."""
        return self.changes()[0]

    @property
    def value_change(self) -> torch.Tensor:
        """``[n_layers, d_ff]``: squared norm of each value's (down projection column's) change since entry."""
        return self.changes()[1]

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the tracker holds (accumulators and snapshot)."""
        return [self.key_grad, self.value_grad, *(self._snapshot or []), *(self._final or ())]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())


# ----------------------------------------------------------------------------- one batch


@dataclass(frozen=True)
class BatchAttribution:
    """Squared gradient norms of one batch's language-model loss (mean over its target tokens),
    ``[n_layers, d_ff]`` float64 on the CPU: where one step on this batch alone would write."""

    key_grad: torch.Tensor
    value_grad: torch.Tensor
    loss: float


def batch_attribution(
    model: nn.Module,
    batch: torch.Tensor,
    module_names: Sequence[str] | None = None,
    *,
    attention_mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    up_names: Sequence[str] | None = None,
    gate_names: Sequence[str] | None = None,
) -> BatchAttribution:
    """Per-neuron squared gradient norms (``key_grad``, ``value_grad``) of
    ``model(input_ids=batch, labels=batch).loss`` for one batch of token ids ``[batch, seq]``.

    ``attention_mask`` (``[batch, seq]``, 0 = padding) also sets the labels of padding to -100
    unless ``labels`` are given. The model runs in eval mode (no dropout), its modes are restored;
    gradients come from ``torch.autograd.grad`` on the memory parameters only, so no ``.grad``
    is touched (frozen memory parameters are enabled for the call and frozen again).
    """
    layers = memory_parameters(model, module_names, up_names=up_names, gate_names=gate_names)
    params = [p.param for p in _flat(layers)]
    device = params[0].device
    batch = torch.as_tensor(batch).to(device)
    if batch.ndim != 2:
        raise ValueError(f"batch must be token ids [batch, seq], got shape {tuple(batch.shape)}")
    if attention_mask is not None:
        attention_mask = torch.as_tensor(attention_mask).to(device)
    if labels is None:
        labels = batch if attention_mask is None else batch.masked_fill(attention_mask == 0, -100)
    labels = torch.as_tensor(labels).to(device)
    frozen = [p for p in params if not p.requires_grad]
    try:
        for p in frozen:
            p.requires_grad_(True)
        with eval_mode(model), torch.enable_grad():
            if attention_mask is None:
                loss = model(input_ids=batch, labels=labels).loss
            else:
                kwargs = _forward_kwargs(model, {"input_ids": batch, "attention_mask": attention_mask}, "token")
                loss = model(**kwargs, labels=labels).loss
            grads = torch.autograd.grad(loss, params, allow_unused=True)
    finally:
        for p in frozen:
            p.requires_grad_(False)
    key = torch.zeros(len(layers), layers[0].d_ff, dtype=torch.float64)
    value = torch.zeros_like(key)
    _accumulate(layers, (None if g is None else p.neurons(g) for p, g in zip(_flat(layers), grads)), key, value)
    return BatchAttribution(key_grad=key, value_grad=value, loss=float(loss.detach()))


# ----------------------------------------------------------------------------- measures


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.as_tensor(a).detach().to("cpu", torch.float64)
    b = torch.as_tensor(b).detach().to("cpu", torch.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"a and b must both be [n_layers, d_ff], got {tuple(a.shape)} and {tuple(b.shape)}")
    return a, b


def chance_jaccard(d_ff: int, k: int, exact: bool = False) -> float:
    """Jaccard index of two random k-subsets of d_ff neurons: ``k / (2 d_ff - k)``, the index at the
    expected overlap ``k^2 / d_ff``. ``exact=True``: the expectation over the hypergeometric overlap
    (slightly higher for small k)."""
    if not 0 < k <= d_ff:
        raise ValueError(f"need 0 < k <= d_ff, got k={k}, d_ff={d_ff}")
    if not exact:
        return k / (2 * d_ff - k)
    from scipy.stats import hypergeom

    overlap = torch.arange(max(0, 2 * k - d_ff), k + 1).numpy()
    return float((hypergeom.pmf(overlap, d_ff, k, k) * overlap / (2 * k - overlap)).sum())


@dataclass(frozen=True)
class TopKOverlap:
    """Per-layer Jaccard index ``[n_layers]`` of the top-k neurons of two maps; ``chance`` is
    :func:`chance_jaccard` for this k."""

    jaccard: torch.Tensor
    k: int
    d_ff: int
    chance: float


def top_k_jaccard(a: torch.Tensor, b: torch.Tensor, fraction: float = 0.1) -> TopKOverlap:
    """Jaccard index per layer of the ``k = ceil(fraction * d_ff)`` largest neurons of ``a`` and of
    ``b`` (both ``[n_layers, d_ff]``; ties broken by :func:`torch.topk`)."""
    a, b = _check_pair(a, b)
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    d_ff = a.shape[1]
    k = math.ceil(fraction * d_ff - 1e-9)  # 0.1 * 30 = 3.0000000000000004 is 3
    top_a = torch.zeros_like(a, dtype=torch.bool).scatter_(1, a.topk(k, dim=1).indices, True)
    top_b = torch.zeros_like(b, dtype=torch.bool).scatter_(1, b.topk(k, dim=1).indices, True)
    inter = (top_a & top_b).sum(dim=1).double()
    return TopKOverlap(jaccard=inter / (2 * k - inter), k=k, d_ff=d_ff, chance=chance_jaccard(d_ff, k))


def rank_agreement(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation per layer of ``a`` and ``b`` (``[n_layers, d_ff]``) → ``[n_layers]``
    in [-1, 1]; NaN for a layer where either map is constant."""
    from scipy.stats import spearmanr

    a, b = _check_pair(a, b)
    out = torch.full((a.shape[0],), math.nan, dtype=torch.float64)
    for l in range(a.shape[0]):
        if a[l].min() < a[l].max() and b[l].min() < b[l].max():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[l] = float(spearmanr(a[l].numpy(), b[l].numpy()).statistic)
    return out


def update_entropy(mass: torch.Tensor) -> KnowledgeEntropy:
    """How evenly a per-neuron mass (``[n_layers, d_ff]``, non-negative, e.g. ``key_change`` or
    ``value_grad``) is spread: :func:`~ke_utils.memory.entropy.knowledge_entropy` of it, the same
    per-layer entropies (nats), total and ``normalized = total / (n_layers ln d_ff)``."""
    return knowledge_entropy(mass)
