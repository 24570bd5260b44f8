"""Families of checkpoints: local ``step{N}`` folders or hub branches, selection, loading one at a time.

Names follow the real schemes: OLMo ``step1000-tokens4B`` (also ``tokens4194M``), OLMo-2
``stage1-step928646-tokens3896B`` and ``stage2-ingredient1-step11931-tokens100B``, Pythia
``step143000``, SmolLM3 ``stage1-step-40000`` (a hyphen before the step), and plain local folders
``step120``. Everything else (``main``, ``refs/pr/1``,
other branches) is not a checkpoint. Checkpoints sort by (stage, step): no stage first, then
``stage1``, then ``stage2-ingredient1``, ``stage2-ingredient2``, ... (steps restart in each
stage-2 ingredient, so ``step`` alone is not a global order when several stages are present).

Some hub branches hold identical weights (e.g. Pythia's ``main`` is its last ``step``); use
:func:`checkpoint_fingerprint` (file hashes, nothing downloaded) and :func:`duplicate_groups` to
detect them.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub
import torch
import transformers
from huggingface_hub.errors import RevisionNotFoundError
from huggingface_hub.hf_api import RepoFile

__all__ = [
    "Checkpoint",
    "parse_checkpoint_name",
    "local_checkpoints",
    "hub_checkpoints",
    "select",
    "load_checkpoint",
    "iter_models",
    "checkpoint_fingerprint",
    "duplicate_groups",
]

_NAME = re.compile(
    r"(?:(?P<stage>stage\d+(?:-ingredient\d+)?)-)?"
    r"step-?(?P<step>\d+)"
    r"(?:-tokens(?P<tokens>\d+)(?P<unit>[KMBT]))?"
)
_UNITS = {"K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}
_STAGE = re.compile(r"stage(\d+)(?:-ingredient(\d+))?")

@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint: a local folder (``revision=None``) or a hub repo id at branch ``revision``."""

    step: int
    path: str
    revision: str | None
    tokens: int | None
    stage: str | None
    name: str

    @property
    def label(self) -> str:
        """Short text for plots, e.g. ``"step 1000 (4B tokens)"`` or ``"stage2-ingredient1 step 500"``."""
        text = f"step {self.step:,}"
        if self.stage:
            text = f"{self.stage} {text}"
        if self.tokens is not None:
            text += f" ({_format_tokens(self.tokens)} tokens)"
        if self.name == "main":
            text += " [main]"
        return text


def named_checkpoint(path: str, revision: str | None = None) -> Checkpoint:
    """One model as a command line names it: a local folder, or a hub id at ``revision``."""
    return Checkpoint(step=0, path=path, revision=revision, tokens=None, stage=None, name=revision or path)


# dtype names the command lines accept ("auto": the dtype the checkpoint's config stores)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def _format_tokens(tokens: int) -> str:
    """4_000_000_000 -> "4B", 4_194_000_000 -> "4.19B"."""
    for unit, size in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if tokens >= size:
            return f"{tokens / size:.3g}{unit}"
    return str(tokens)


def parse_checkpoint_name(name: str) -> tuple[int, int | None, str | None] | None:
    """``(step, tokens, stage)`` of a checkpoint name, or None if ``name`` is not a checkpoint.

    ``"step1000-tokens4B"`` -> ``(1000, 4_000_000_000, None)``;
    ``"stage2-ingredient1-step11931-tokens100B"`` -> ``(11931, 100_000_000_000, "stage2-ingredient1")``;
    ``"stage1-step-40000"`` (SmolLM3) -> ``(40000, None, "stage1")``;
    ``"step120"`` -> ``(120, None, None)``; ``"main"`` -> None.
    """
    match = _NAME.fullmatch(name)
    if match is None:
        return None
    tokens = None
    if match["tokens"] is not None:
        tokens = int(match["tokens"]) * _UNITS[match["unit"]]
    return int(match["step"]), tokens, match["stage"]


def _stage_key(stage: str | None) -> tuple[int, int]:
    """Sort key of a stage: None < stage1 < stage2 (no ingredient) < stage2-ingredient1 < ..."""
    if stage is None:
        return (0, 0)
    match = _STAGE.fullmatch(stage)
    if match is None:  # cannot happen for names from parse_checkpoint_name
        return (10**9, 0)
    return int(match[1]), int(match[2] or 0)


def _sort_key(ckpt: Checkpoint) -> tuple:
    return (_stage_key(ckpt.stage), ckpt.step, ckpt.name)


def local_checkpoints(folder: str | Path) -> list[Checkpoint]:
    """Checkpoints in the subfolders of ``folder`` whose name parses (``step{N}``, ...) and that hold a
    ``config.json``, sorted by (stage, step). Raises FileNotFoundError if there are none."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"checkpoint folder {str(root)!r} does not exist")
    found = []
    for sub in root.iterdir():
        parsed = parse_checkpoint_name(sub.name)
        if parsed is None or not (sub / "config.json").is_file():
            continue
        step, tokens, stage = parsed
        found.append(Checkpoint(step=step, path=str(sub), revision=None, tokens=tokens, stage=stage, name=sub.name))
    if not found:
        seen = sorted(p.name for p in root.iterdir())[:10]
        raise FileNotFoundError(
            f"no checkpoints in {str(root)!r}: expected subfolders named like 'step{{N}}' holding a config.json "
            f"(found: {seen})"
        )
    return sorted(found, key=_sort_key)


def hub_checkpoints(
    repo_id: str,
    *,
    revision_filter: str | Callable[[str], bool] | None = None,
    token: str | bool | None = None,
    include_main: bool = False,
) -> list[Checkpoint]:
    """Checkpoints of a hub repository, one per branch whose name parses, sorted by (stage, step).

    ``revision_filter`` keeps only branch names for which it is true (a callable) or that it
    matches (a regular expression, ``re.search``), e.g. ``"^stage1-"`` for OLMo-2's main stage.
    ``include_main=True`` appends the ``main`` branch last with ``step`` = the highest step found
    (for Pythia ``main`` is the final checkpoint; it is then a duplicate of the last ``step``
    branch). Needs the network (``huggingface_hub.list_repo_refs``).
    """
    refs = huggingface_hub.list_repo_refs(repo_id, token=token)
    names = [branch.name for branch in refs.branches]
    if isinstance(revision_filter, str):
        pattern = re.compile(revision_filter)
        keep: Callable[[str], bool] = lambda name: pattern.search(name) is not None  # noqa: E731
    else:
        keep = revision_filter or (lambda name: True)
    found = []
    for name in names:
        parsed = parse_checkpoint_name(name)
        if parsed is None or not keep(name):
            continue
        step, tokens, stage = parsed
        found.append(Checkpoint(step=step, path=repo_id, revision=name, tokens=tokens, stage=stage, name=name))
    if not found:
        raise ValueError(
            f"no checkpoint branches in {repo_id!r}"
            + (" matching the filter" if revision_filter is not None else "")
            + f" (branches: {sorted(names)[:10]}{' ...' if len(names) > 10 else ''})"
        )
    found.sort(key=_sort_key)
    if include_main and "main" in names:
        step = max(c.step for c in found)
        found.append(Checkpoint(step=step, path=repo_id, revision="main", tokens=None, stage=None, name="main"))
    return found


def select(
    checkpoints: Sequence[Checkpoint],
    *,
    every: int | None = None,
    n_log: int | None = None,
    steps: Iterable[int] | None = None,
) -> list[Checkpoint]:
    """A subset of ``checkpoints`` (in their order), by at most one of:

    - ``every=k``: every k-th checkpoint, always keeping the first and the last;
    - ``n_log=n``: at most n checkpoints log-spaced in step (``log1p``, so step 0 works): the one
      nearest each of n targets between the first and last step, deduplicated (``n=1``: the last);
      needs steps increasing in list order (one stage: filter several stages first);
    - ``steps=[...]``: exactly these steps (every checkpoint with that step); a missing step is a
      ValueError that names the nearest available ones. Steps are not rounded: OLMo-1B's "118k"
      checkpoint is step 117850 (``study.OLMO_1B_CHECKPOINT_STEPS`` has the study's four).

    With none of them, all checkpoints are returned.
    """
    given = sum(option is not None for option in (every, n_log, steps))
    if given > 1:
        raise ValueError("select: give at most one of every, n_log, steps")
    checkpoints = list(checkpoints)
    if given == 0:
        return checkpoints
    if every is not None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if not checkpoints:
            return []
        chosen = checkpoints[::every]
        if chosen[-1] is not checkpoints[-1]:
            chosen.append(checkpoints[-1])
        return chosen
    if n_log is not None:
        return _select_log(checkpoints, n_log)
    return _select_steps(checkpoints, steps)


def _select_log(checkpoints: list[Checkpoint], n: int) -> list[Checkpoint]:
    if n < 1:
        raise ValueError(f"n_log must be >= 1, got {n}")
    if not checkpoints:
        return []
    all_steps = [c.step for c in checkpoints]
    if any(b < a for a, b in zip(all_steps, all_steps[1:])):
        raise ValueError(
            "n_log needs steps increasing in list order; these checkpoints span several stages "
            f"({sorted({c.stage for c in checkpoints}, key=_stage_key)}): select one stage first"
        )
    if n == 1:
        return [checkpoints[-1]]
    xs = [math.log1p(s) for s in all_steps]
    lo, hi = xs[0], xs[-1]
    chosen: list[int] = []
    for i in range(n):
        target = lo + (hi - lo) * i / (n - 1)
        best = min(range(len(xs)), key=lambda k: (abs(xs[k] - target), k))
        if best not in chosen:
            chosen.append(best)
    return [checkpoints[k] for k in sorted(chosen)]


def _select_steps(checkpoints: list[Checkpoint], steps: Iterable[int]) -> list[Checkpoint]:
    wanted = set(steps)
    available = sorted({c.step for c in checkpoints})
    missing = sorted(wanted - set(available))
    if missing:
        hints = []
        for s in missing:
            near = sorted(available, key=lambda a: (abs(a - s), a))[:2]
            hints.append(f"{s} (nearest: {sorted(near)})")
        raise ValueError(f"steps not available: {', '.join(hints)}")
    return [c for c in checkpoints if c.step in wanted]


def _is_revision_error(error: BaseException) -> bool:
    """True if ``error`` (or its cause chain) says that a hub revision does not exist."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, RevisionNotFoundError) or "not a valid git identifier" in str(error):
            return True
        error = error.__cause__ or error.__context__
        seen += 1
    return False


def load_checkpoint(
    ckpt: Checkpoint,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device = "cpu",
    model_cls=None,
    trust_remote_code: bool = False,
    **kwargs,
):
    """The model of ``ckpt`` in eval mode on ``device``.

    ``model_cls`` defaults to ``transformers.AutoModelForCausalLM``; extra keyword arguments go to
    ``from_pretrained`` (e.g. ``attn_implementation="eager"``). ``dtype=None`` lets transformers
    choose (in 5.x that is ``"auto"``: the dtype stored in the checkpoint's config, e.g. bf16 for
    many hub models); pass ``torch.float32`` to force full precision. Local folders with
    ``.safetensors`` files are loaded with ``use_safetensors=True``. A revision missing on the hub
    raises ``ValueError("checkpoint 'name' not found in repo: ...")``. With ``device_map`` (e.g.
    ``"auto"``: layers split over the visible GPUs, loaded straight there without a full copy in
    CPU memory) ``device`` is ignored.
    """
    cls = model_cls or transformers.AutoModelForCausalLM
    options = dict(kwargs)
    if dtype is not None:
        options["dtype"] = dtype  # transformers 5.x name; `torch_dtype` is deprecated
    if ckpt.revision is not None:
        options["revision"] = ckpt.revision
    folder = Path(ckpt.path)
    if folder.is_dir() and any(folder.glob("*.safetensors")):
        options.setdefault("use_safetensors", True)
    bars = transformers.utils.logging.is_progress_bar_enabled()
    if ckpt.revision is None:  # a local folder loads in a blink: no "Loading weights" bar per checkpoint
        transformers.utils.logging.disable_progress_bar()
    try:
        model = cls.from_pretrained(ckpt.path, trust_remote_code=trust_remote_code, **options)
    except (RevisionNotFoundError, OSError) as error:
        if ckpt.revision is not None and _is_revision_error(error):
            raise ValueError(f"checkpoint {ckpt.name!r} not found in {ckpt.path}: {error}") from error
        raise
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()
    if "device_map" in kwargs:  # already placed (and possibly split over devices) by from_pretrained
        return model.eval()
    return model.to(device).eval()


def _release(model) -> None:
    """Free a model's weights even if someone still holds the module (moved to the meta device)."""
    try:
        model.to("meta")
    except Exception:  # pragma: no cover - a model that cannot move keeps its weights until collected
        pass


def iter_models(checkpoints: Iterable[Checkpoint], **load_kwargs) -> Iterator[tuple[Checkpoint, object]]:
    """Yield ``(ckpt, model)`` for each checkpoint, loaded with :func:`load_checkpoint`, one in memory
    at a time: when the consumer asks for the next one, the previous model's weights are released
    (moved to the ``meta`` device, so a loop variable still pointing at it holds no memory),
    garbage-collected and the CUDA cache emptied before the next load. Do not keep yielded models.
    """
    for ckpt in checkpoints:
        model = load_checkpoint(ckpt, **load_kwargs)
        try:
            yield ckpt, model
        finally:
            _release(model)
            del model
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def trainer_state(checkpoint: Checkpoint) -> dict:
    """A checkpoint's ``trainer_state.json``, as transformers' Trainer and the built-in families
    keep it next to the weights: ``global_step`` and ``learning_rate`` (the pretraining LR at that
    step; for the built-in families, :func:`~ke_utils.pretrain.pretraining_lr`)."""
    path = Path(checkpoint.path) / "trainer_state.json"
    if not path.exists():
        raise FileNotFoundError(f"{checkpoint.name} has no trainer_state.json: its training state was not kept "
                                "(a built-in family built before version 2, or a hub checkpoint)")
    return json.loads(path.read_text())


def has_training_state(checkpoint: Checkpoint) -> bool:
    """Whether a checkpoint is a local folder that kept its optimizer state (``optimizer.pt``)."""
    return checkpoint.revision is None and (Path(checkpoint.path) / "optimizer.pt").exists()


def load_training_state(checkpoint: Checkpoint, opt, sched=None, gen: torch.Generator | None = None) -> None:
    """Load a checkpoint's saved AdamW state (``optimizer.pt``) into ``opt`` (built for the same
    model with :func:`~ke_utils.training.optimizer`), and optionally its scheduler
    (``scheduler.pt``) and a built-in family's data-order generator (``rng_state.pth``); every file
    read with ``weights_only=True``."""
    folder = Path(checkpoint.path)
    if not has_training_state(checkpoint):
        raise FileNotFoundError(f"{checkpoint.name} has no optimizer.pt: its optimizer state was not kept")
    opt.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    if sched is not None:
        sched.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    if gen is not None:
        gen.set_state(torch.load(folder / "rng_state.pth", weights_only=True)["data_order"])


WEIGHT_FILES = (".safetensors", ".bin")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_fingerprint(ckpt: Checkpoint, token: str | bool | None = None) -> str:
    """sha256 over the names and sha256 hashes of a checkpoint's weight files (``*.safetensors``,
    ``*.bin``), without loading the model: a hub checkpoint asks the hub for the hashes it keeps
    (Git LFS), a local folder hashes its files. Equal fingerprints mean identical weight files.
    Raises FileNotFoundError when the checkpoint has no weight file."""
    if ckpt.revision is None:
        files = {p.name: _file_sha256(p) for p in sorted(Path(ckpt.path).iterdir()) if p.name.endswith(WEIGHT_FILES)}
    else:
        tree = huggingface_hub.HfApi().list_repo_tree(ckpt.path, revision=ckpt.revision, recursive=True, token=token)
        # LFS files carry the sha256 of their content in the plain listing; small files their git id.
        files = {f.path: (f.lfs.sha256 if f.lfs else f.blob_id) for f in tree
                 if isinstance(f, RepoFile) and f.path.endswith(WEIGHT_FILES)}
    if not files:
        raise FileNotFoundError(f"checkpoint {ckpt.name!r} of {ckpt.path} has no weight files {WEIGHT_FILES}")
    return hashlib.sha256("\n".join(f"{name} {digest}" for name, digest in sorted(files.items())).encode()).hexdigest()


def duplicate_groups(fingerprints: dict[str, str]) -> list[list[str]]:
    """Groups (of 2 or more) of names sharing a fingerprint, each in insertion order, groups ordered
    by their first name."""
    groups: dict[str, list[str]] = {}
    for name, fingerprint in fingerprints.items():
        groups.setdefault(fingerprint, []).append(name)
    return [names for names in groups.values() if len(names) > 1]
