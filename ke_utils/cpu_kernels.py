"""One set of CPU kernels on every x86-64 machine, so that a built-in family is the same model everywhere.

PyTorch picks its vectorised CPU kernels (and MKL and oneDNN theirs) from the processor: AVX2 on
some machines, AVX-512 on others. Their floating-point results differ in the last bits, and after
1,200 pretraining steps at a high learning rate a last-bit difference is a different model (the
built-in family's normalised KE at step 1,200: 0.9173 with AVX2 kernels, 0.9133 with AVX-512 ones).
Importing ``ke_utils`` therefore asks for the AVX2 kernels, which every x86-64 machine of the last
ten years runs, unless the user has chosen kernels themselves (any of :data:`PINNED` already set).

ATen reads ``ATEN_CPU_CAPABILITY`` at the first tensor operation of a process, not at ``import
torch``: a process that ran tensor work before importing ``ke_utils`` keeps its native kernels.
:func:`kernels_pinned` tells; family builds then run in a fresh process (see ``pretrain``).
"""

from __future__ import annotations

import os
import platform
import sys
import warnings

# ATen's own kernels, MKL's (its branch and its instruction ceiling) and oneDNN's ceiling.
PINNED = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
          "ONEDNN_MAX_CPU_ISA": "AVX2"}
_X86 = platform.machine().lower() in ("x86_64", "amd64")


def user_chose_kernels() -> bool:
    """Whether the environment names CPU kernels itself (then ``ke_utils`` leaves them alone)."""
    return any(name in os.environ for name in PINNED)


def pin_cpu_kernels() -> None:
    """Ask for :data:`PINNED` (x86-64 only, and only where the user has chosen none); then check
    that ATen took it, and warn if a tensor operation came first. Called when ``ke_utils`` is imported."""
    if not _X86 or user_chose_kernels():
        return
    os.environ.update(PINNED)  # child processes (kernels, workers, builds) inherit it too
    if "torch" in sys.modules and not kernels_pinned():  # without torch no tensor work has run yet
        warnings.warn(
            f"ke_utils was imported after this process ran tensor work, so its CPU kernels stay "
            f"{cpu_capability()} instead of AVX2: built-in families are still built in a separate process "
            "with AVX2 kernels, but training in this process may give numbers that differ from the README's. "
            "Restart and import ke_utils first (or export ATEN_CPU_CAPABILITY=avx2).", stacklevel=3)


def cpu_capability() -> str:
    """The vector instruction set of ATen's CPU kernels in this process, e.g. ``"AVX2"``, ``"AVX512"``."""
    import torch

    return torch.backends.cpu.get_cpu_capability()


def kernels_pinned() -> bool:
    """True where this process runs the kernels ``ke_utils`` asks for: AVX2 on x86-64 (or at most what
    the CPU has), anything on other processors, or whatever the user chose."""
    if not _X86 or os.environ.get("ATEN_CPU_CAPABILITY", "").lower() != PINNED["ATEN_CPU_CAPABILITY"]:
        return True
    return not cpu_capability().startswith("AVX512")


def environment() -> dict:
    """What decides a build's floating-point results: CPU kernels, processor and library versions."""
    import tokenizers
    import torch
    import transformers

    return {"cpu_capability": cpu_capability(), "machine": platform.machine(), "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
            **{name: os.environ.get(name) for name in PINNED}}
