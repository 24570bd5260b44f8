"""Knowledge entropy (Kim et al., 2024; docs/method.md section 2).

For a dataset and each layer l: ``a_l[j]`` = mean ``|c_l[t, j]|`` over tokens, ``p_l = a_l / sum(a_l)``,
``H_l = -sum_j p_l[j] ln p_l[j]`` (nats) and ``KE = sum_l H_l``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from .architectures import ARCHITECTURES
from .batching import iter_texts, measurement_batches, pad_token_id, tokenize_documents
from .distributed import gather_counts, shard, sum_over_processes
from .hooks import CoefficientAccumulator
from .modes import eval_mode

WEIGHTINGS = ("token", "document", "original")
# The original study's entropy: log(p + 1e-9); knowledge_entropy uses it for weighting="original"
ORIGINAL_LOG_EPS = 1e-9


@dataclass(frozen=True)
class KnowledgeEntropy:
    """Knowledge entropy of one model on one dataset.

    ``per_layer`` and ``effective_sources`` have shape ``[n_layers]``; entropies are in nats.
    ``means`` (``[n_layers, d_ff]``) is kept for reactivation and plots.
    """

    total: float
    per_layer: torch.Tensor
    normalized: float
    effective_sources: torch.Tensor
    n_layers: int
    d_ff: int
    means: torch.Tensor = field(repr=False)

    @property
    def maximum(self) -> float:
        """``n_layers * ln(d_ff)``: the value if every memory vector were used equally."""
        return self.n_layers * math.log(self.d_ff)

    def __str__(self) -> str:
        return (
            f"KE = {self.total:.4f} nats of at most {self.maximum:.4f} "
            f"(normalised {self.normalized:.5f}; {self.n_layers} layers x {self.d_ff} memories)"
        )


def knowledge_entropy(means: torch.Tensor, weighting: str = "token") -> KnowledgeEntropy:
    """Knowledge entropy from coefficient means ``[n_layers, d_ff]`` (any non-negative scale),
    measured with ``weighting`` (:func:`coefficient_means`): exact ``-sum p log p``, or for
    ``"original"`` the original code's ``-sum p log(p + 1e-9)``.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, not {weighting!r}")
    log_eps = ORIGINAL_LOG_EPS if weighting == "original" else 0.0
    means = torch.as_tensor(means)
    if means.ndim != 2 or means.shape[1] < 2:
        raise ValueError(f"means must have shape [n_layers, d_ff >= 2], got {tuple(means.shape)}")
    means = means.detach().to("cpu", torch.float64)
    if not torch.isfinite(means).all() or (means < 0).any():
        raise ValueError("means must be finite and non-negative")
    totals = means.sum(dim=1, keepdim=True)
    if (totals == 0).any():
        raise ValueError(f"layer(s) {(totals.flatten() == 0).nonzero().flatten().tolist()} have all-zero means")
    p = means / totals
    per_layer = -(p * torch.log(p + log_eps) if log_eps else torch.special.xlogy(p, p)).sum(dim=1)
    n_layers, d_ff = means.shape
    total = float(per_layer.sum())
    return KnowledgeEntropy(
        total=total,
        per_layer=per_layer,
        normalized=total / (n_layers * math.log(d_ff)),
        effective_sources=per_layer.exp(),
        n_layers=n_layers,
        d_ff=d_ff,
        means=means,
    )


def _forward_kwargs(model: nn.Module, batch: dict, weighting: str) -> dict:
    ids = batch["input_ids"]
    params = inspect.signature(model.forward).parameters
    kwargs: dict = {"input_ids": ids}
    if weighting != "original":  # the original code called model(input_ids=...) without a mask
        mask = batch["attention_mask"]
        kwargs["attention_mask"] = mask
        arch = ARCHITECTURES.get(model.config.model_type)
        # RoBERTa offsets positions by padding_idx + 1: models that derive their own get none of ours
        if "position_ids" in params and not (arch is not None and arch.own_positions):
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    if "use_cache" in params:
        kwargs["use_cache"] = False
    return kwargs


def _weights(mask: torch.Tensor, weighting: str) -> tuple[torch.Tensor, float]:
    """Per-position weights ``[batch, seq]`` and the amount they add to the denominator."""
    if weighting == "token":
        return mask.float(), float(mask.sum())
    if weighting == "document":
        lengths = mask.sum(dim=1, keepdim=True).float()
        return mask.float() / lengths.clamp(min=1), float((lengths > 0).sum())
    # original: every position counts (padding included); the sum is divided by documents.
    return torch.ones_like(mask, dtype=torch.float), float(mask.shape[0])


def _check_batch(batch: dict, index: int) -> dict:
    if not isinstance(batch, dict) or "input_ids" not in batch:
        raise TypeError(f"batch {index} must be a dict with 'input_ids' (and 'attention_mask')")
    ids = torch.as_tensor(batch["input_ids"])
    if ids.ndim != 2:
        raise ValueError(f"batch {index}: input_ids must be [batch, seq], got {tuple(ids.shape)}")
    mask = torch.as_tensor(batch.get("attention_mask", torch.ones_like(ids)))
    if mask.shape != ids.shape:
        raise ValueError(f"batch {index}: attention_mask {tuple(mask.shape)} != input_ids {tuple(ids.shape)}")
    return {"input_ids": ids, "attention_mask": mask.long()}


def input_device(model: nn.Module) -> torch.device:
    """Where a batch goes: the input embedding's device (the first layer of a model split with
    ``device_map``; the CPU when that layer is offloaded and its weights sit on ``meta``)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    device = embeddings.weight.device if embeddings is not None else next(model.parameters()).device
    return torch.device("cpu") if device.type == "meta" else device


@torch.inference_mode()
def coefficient_sums(
    model: nn.Module,
    batches: Iterable[dict],
    weighting: str = "token",
    module_names: Sequence[str] | None = None,
    progress: bool = False,
    on_batch: Callable[[dict], None] | None = None,
) -> tuple[torch.Tensor, float]:
    """Weighted sums of ``|c|`` ``[n_layers, d_ff]`` (float64, CPU) and their denominator (real
    tokens for ``"token"``, documents otherwise): :func:`coefficient_means` before the division,
    what processes of a data-parallel run add up. No batch gives zeros and 0."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, not {weighting!r}")
    device = input_device(model)
    runner = getattr(model, "base_model", model)  # no LM head: KE does not need logits
    denominator = 0.0
    with eval_mode(model), CoefficientAccumulator(model, module_names) as acc:
        for i, batch in enumerate(tqdm(batches, desc="knowledge entropy", unit="batch", disable=not progress)):
            batch = {k: v.to(device) for k, v in _check_batch(batch, i).items()}
            weights, count = _weights(batch["attention_mask"], weighting)
            if count == 0:
                continue
            acc.set_weights(weights)
            denominator += count
            if on_batch is not None:
                on_batch(batch)
            else:
                runner(**_forward_kwargs(runner, batch, weighting))
    acc.check_finite()
    return acc.sums, denominator


def coefficient_means(
    model: nn.Module,
    batches: Iterable[dict],
    weighting: str = "token",
    module_names: Sequence[str] | None = None,
    progress: bool = False,
    on_batch: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """Mean ``|c|`` per layer and memory neuron, ``[n_layers, d_ff]`` float64 on the CPU.

    ``batches``: dicts with ``input_ids`` and ``attention_mask`` ``[batch, seq]``.
    ``weighting``:
      - ``"token"`` (default): mean over all real (non-padding) tokens;
      - ``"document"``: mean of per-document means (the paper's formula);
      - ``"original"``: the original study's code: the model runs *without* the attention mask
        and every position counts, padding included; the sum is divided by the number of
        documents. Feed it documents padded to a fixed length (``pad_to``) to reproduce it.
    ``on_batch``: if given, called with each batch on the device instead of the default forward
    (it must run the model on it itself; used to compute other measures in the same pass).
    The model runs in eval mode (no dropout noise in ``c``); its mode is restored afterwards.
    A model split over devices (``device_map``) works as is: see :class:`CoefficientAccumulator`.
    """
    sums, denominator = coefficient_sums(model, batches, weighting, module_names, progress, on_batch)
    if denominator == 0:
        raise ValueError("no real tokens: the input is empty or every position is padding")
    return sums / denominator


def measure_means(
    model: nn.Module,
    tokenizer,
    texts,
    *,
    max_docs: int | None = None,
    max_tokens_per_doc: int = 512,
    max_batch_tokens: int = 8192,
    weighting: str = "token",
    text_column: str = "text",
    module_names: Sequence[str] | None = None,
    progress: bool = True,
) -> tuple[torch.Tensor, list[int]]:
    """Coefficient means ``[n_layers, d_ff]`` of ``model`` on ``texts`` and how many documents
    each process measured (``[n_documents]`` in a single process).

    Under ``torchrun`` / ``accelerate launch`` (:mod:`ke_utils.memory.distributed`) each process measures
    its contiguous share of the documents and the float64 sums and counts are added up once at the
    end: every process returns the means of all documents, equal to a single-process run.
    """
    docs = list(tokenize_documents(tokenizer, iter_texts(texts, text_column, max_docs), max_tokens_per_doc))
    if not docs:
        raise ValueError("no documents to measure (empty input, or every document was empty)")
    local = shard(docs)
    batches = measurement_batches(local, pad_token_id(tokenizer), weighting, max_tokens_per_doc,
                                  max_batch_tokens) if local else []
    sums, denominator = sum_over_processes(*coefficient_sums(model, batches, weighting, module_names, progress))
    if denominator == 0:
        raise ValueError("no real tokens: the input is empty or every position is padding")
    return sums / denominator, gather_counts(len(local))


def measure_knowledge_entropy(model: nn.Module, tokenizer, texts, **options) -> KnowledgeEntropy:
    """Knowledge entropy of ``model`` on ``texts`` (list of str, ``datasets.Dataset``, or a
    streaming iterable of str/dicts); ``options`` as for :func:`measure_means` (``max_docs``,
    ``max_tokens_per_doc`` = 512, ``max_batch_tokens`` = 8192, ``weighting`` = ``"token"``,
    ``text_column``, ``module_names``, ``progress``).

    With ``weighting="original"`` documents are padded to ``max_tokens_per_doc`` (the original
    code used 2048) and the entropy uses the original ``log(p + 1e-9)``. Under a distributed
    launcher the documents are split over the processes (:func:`measure_means`).
    """
    means, _ = measure_means(model, tokenizer, texts, **options)
    return knowledge_entropy(means, options.get("weighting", "token"))
