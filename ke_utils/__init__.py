"""ke_utils: measure, watch and change the knowledge entropy of language models.

Knowledge entropy (Kim et al., 2024) is the entropy of how a model spreads its use of the
feed-forward memory vectors over a dataset; see docs/method.md and notebooks/01.

Importing it pins the CPU kernels to AVX2 on x86-64 (see :mod:`ke_utils.cpu_kernels`), before any
tensor work, so that the built-in families and the training on them are the same on every machine.
"""

from .cpu_kernels import pin_cpu_kernels

pin_cpu_kernels()

from .memory.attribution import UpdateTracker, batch_attribution
from .memory.batching import length_bucketed_batches, pad_batch, tokenize_documents
from .checkpoints import Checkpoint, hub_checkpoints, load_checkpoint, local_checkpoints, select
from .memory.entropy import KnowledgeEntropy, coefficient_means, knowledge_entropy, measure_knowledge_entropy
from .memory.hooks import COEFFICIENT_MODULES, CoefficientAccumulator, capture_coefficients, find_coefficient_modules
from .pretrain import builtin_family, builtin_texts
from .memory.reactivation import measure_reactivation, reactivate
from .subjects import Subject, load_subject
from .checkpoint_sweep import sweep

__all__ = [
    "COEFFICIENT_MODULES",
    "Checkpoint",
    "CoefficientAccumulator",
    "KnowledgeEntropy",
    "Subject",
    "UpdateTracker",
    "batch_attribution",
    "builtin_family",
    "builtin_texts",
    "capture_coefficients",
    "coefficient_means",
    "find_coefficient_modules",
    "hub_checkpoints",
    "knowledge_entropy",
    "length_bucketed_batches",
    "load_checkpoint",
    "load_subject",
    "local_checkpoints",
    "measure_knowledge_entropy",
    "measure_reactivation",
    "pad_batch",
    "reactivate",
    "select",
    "sweep",
    "tokenize_documents",
]
