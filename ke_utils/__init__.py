"""ke_utils: measure, watch and change the knowledge entropy of language models.

Knowledge entropy (Kim et al., 2024) is the entropy of how a model spreads its use of the
feed-forward memory vectors over a dataset; see docs/method.md and notebooks/01.

Importing it pins the CPU kernels to AVX2 on x86-64 (see :mod:`ke_utils.cpu_kernels`), before any
tensor work, so that the built-in families and the training on them are the same on every machine.
The names below are imported on first use (PEP 562), so that ``import ke_utils`` and the command
lines' ``--help`` do not pay for torch and transformers until something needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .cpu_kernels import pin_cpu_kernels

pin_cpu_kernels()

# name -> the module (relative to ke_utils) that defines it
_HOMES = {
    "Checkpoint": "checkpoints", "hub_checkpoints": "checkpoints", "load_checkpoint": "checkpoints",
    "local_checkpoints": "checkpoints", "select": "checkpoints",
    "sweep": "checkpoint_sweep",
    "UpdateTracker": "memory.attribution", "batch_attribution": "memory.attribution",
    "length_bucketed_batches": "memory.batching", "pad_batch": "memory.batching",
    "tokenize_documents": "memory.batching",
    "KnowledgeEntropy": "memory.entropy", "coefficient_means": "memory.entropy",
    "knowledge_entropy": "memory.entropy", "measure_knowledge_entropy": "memory.entropy",
    "COEFFICIENT_MODULES": "memory.hooks", "CoefficientAccumulator": "memory.hooks",
    "capture_coefficients": "memory.hooks", "find_coefficient_modules": "memory.hooks",
    "measure_reactivation": "memory.reactivation", "reactivate": "memory.reactivation",
    "builtin_family": "pretrain", "builtin_texts": "pretrain",
    "Subject": "subjects", "load_subject": "subjects",
}
__all__ = sorted(_HOMES)

if TYPE_CHECKING:  # what editors and type checkers see; at run time __getattr__ imports on demand
    from .checkpoint_sweep import sweep
    from .checkpoints import Checkpoint, hub_checkpoints, load_checkpoint, local_checkpoints, select
    from .memory.attribution import UpdateTracker, batch_attribution
    from .memory.batching import length_bucketed_batches, pad_batch, tokenize_documents
    from .memory.entropy import KnowledgeEntropy, coefficient_means, knowledge_entropy, measure_knowledge_entropy
    from .memory.hooks import COEFFICIENT_MODULES, CoefficientAccumulator, capture_coefficients, find_coefficient_modules
    from .memory.reactivation import measure_reactivation, reactivate
    from .pretrain import builtin_family, builtin_texts
    from .subjects import Subject, load_subject


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
