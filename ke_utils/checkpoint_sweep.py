"""Knowledge entropy over a family of checkpoints, one cached result per checkpoint.

Each result is written atomically (temporary file + rename) with a checksum, so an interrupted
sweep resumes where it stopped, and a damaged entry is detected and recomputed. The cache is keyed
on ``MEASUREMENT_VERSION`` and every entry records it with the dtype the model was loaded in, so a
change to the measurement never reuses results of the old one.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from . import study
from .memory.batching import measurement_batches, pad_token_id, tokenize_documents
from .cache import atomic_path, cache_dir, config_key
from .checkpoints import Checkpoint, checkpoint_fingerprint, duplicate_groups, iter_models
from .memory.entropy import coefficient_means, knowledge_entropy
from .hub_cache import delete_revision, format_bytes, hub_cache_dir, revision_disk_bytes
from .probes import score_probes
from .report import Finding
from .stats import Correlation, correlation
from .memory.related import RelatedMeasures

# Bump when a change to the code alters what a sweep measures: cached results of other versions
# are then neither found (the cache folder is keyed on it) nor accepted (entries record it).
MEASUREMENT_VERSION = 2


def _digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()


def _save_entry(path: Path, means: torch.Tensor, info: dict) -> None:
    """Write an entry via a temporary file of this writer's own and an atomic rename: two processes
    that measure the same checkpoint at once each leave a whole entry (the last rename wins)."""
    with atomic_path(path) as tmp:
        save_file({"means": means.contiguous()}, str(tmp), metadata={"info": json.dumps(info), "sha256": _digest(means)})


def _load_entry(path: Path) -> tuple[torch.Tensor, dict] | None:
    """The cached (means, info), or None if missing, damaged or measured by another version."""
    if not path.exists():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        means = load_file(str(path))["means"]
        if meta.get("sha256") != _digest(means):
            raise ValueError("checksum mismatch")
        info = json.loads(meta["info"])
        if info.get("version") != MEASUREMENT_VERSION:
            warnings.warn(f"sweep cache entry {path.name} was measured by version {info.get('version')} "
                          f"(now {MEASUREMENT_VERSION}); recomputing it")
            return None
        return means, info
    except (SafetensorError, ValueError, KeyError, OSError, json.JSONDecodeError) as err:
        warnings.warn(f"damaged sweep cache entry {path.name} ({err}); recomputing it")
        return None


def sweep_dir(checkpoints: Sequence[Checkpoint], texts: Sequence[str], settings: dict) -> Path:
    """Cache folder keyed by the family, the texts, the measurement settings and version."""
    family = sorted({(c.path if c.revision else str(Path(c.path).parent)) for c in checkpoints})
    text_hash = hashlib.sha1("\x00".join(texts).encode()).hexdigest()
    return cache_dir() / "sweeps" / config_key({"family": family, "texts": text_hash, **settings,
                                                "version": MEASUREMENT_VERSION})


def sweep(
    checkpoints: Sequence[Checkpoint],
    texts: Sequence[str],
    *,
    tokenizer=None,
    weighting: str = "token",
    max_tokens_per_doc: int = 512,
    max_batch_tokens: int = 8192,
    related: bool = False,
    dtype: torch.dtype | None = None,
    device: str = "cpu",
    folder: Path | None = None,
    progress: bool = True,
    delete_downloads: bool = False,
) -> pd.DataFrame:
    """Knowledge entropy of each checkpoint on the same ``texts``; one row per checkpoint.

    Columns: ``name, step, tokens, ke, normalized, per_layer`` (array ``[n_layers]``),
    ``effective_sources``, ``means`` (tensor ``[n_layers, d_ff]``, for reactivation), ``fingerprint``
    (:func:`~ke_utils.checkpoints.checkpoint_fingerprint`), ``duplicate_of`` (the earlier checkpoint
    with identical weight files, whose result it shares: it is neither loaded nor measured), and with ``related=True`` also ``attention_entropy`` and
    ``next_token_entropy``; ``dtype``: the dtype the weights were loaded in. The tokenizer is the first checkpoint's unless given (checkpoints of
    one family share it). Results are cached in ``folder`` (default: keyed by all inputs).

    Disk: ``disk_bytes`` is the size (bytes) of a hub checkpoint's files in the Hugging Face hub cache
    (:mod:`~ke_utils.hub_cache`) right after it was loaded to be measured, stored with its result, so
    a result read back from ``folder`` reports the download it was measured from (NaN for results
    stored before this column existed); 0 for local folders and duplicates (neither takes hub cache
    space). ``delete_downloads=True`` deletes each hub checkpoint's revision from the hub cache once
    its result is stored (blobs that revisions still cached share are kept; local folders are never
    touched): results already in ``folder`` before the loop, measured ones right after saving,
    duplicates at the end (they may share their original's commit). A sweep of 20 OLMo-1B
    checkpoints then holds one download at a time instead of about 100 GB. Column ``freed_bytes``
    (only then): bytes this call deleted for that checkpoint, 0 if it was not in the hub cache.
    ``progress=True`` prints one line per hub checkpoint measured or deleted.
    """
    if not checkpoints:
        raise ValueError("no checkpoints to sweep")
    texts = list(texts)
    if not texts:
        raise ValueError("no evaluation texts")
    settings = dict(weighting=weighting, max_tokens_per_doc=max_tokens_per_doc, related=related,
                    dtype=str(dtype))
    folder = Path(folder) if folder else sweep_dir(checkpoints, texts, settings)
    folder.mkdir(parents=True, exist_ok=True)
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(checkpoints[0].path, revision=checkpoints[0].revision)
    docs = list(tokenize_documents(tokenizer, texts, max_tokens_per_doc))
    batches = measurement_batches(docs, pad_token_id(tokenizer), weighting, max_tokens_per_doc, max_batch_tokens)
    fingerprints = {c.name: checkpoint_fingerprint(c) for c in checkpoints}
    duplicate_of = {}
    for group in duplicate_groups(fingerprints):
        warnings.warn(f"checkpoints {group} have identical weight files (known hub duplicates?); "
                      f"measuring {group[0]!r} once")
        duplicate_of.update({name: group[0] for name in group[1:]})
    entries = {c.name: folder / f"{c.name.replace('/', '_')}.safetensors" for c in checkpoints}
    results = {c.name: _load_entry(entries[c.name]) for c in checkpoints if c.name not in duplicate_of}
    missing = [c for c in checkpoints if c.name in results and results[c.name] is None]
    freed: dict[str, int] = {}
    if delete_downloads:  # results stored by an earlier call: their downloads can go before any new one
        freed |= _delete_downloads([c for c in checkpoints if results.get(c.name) is not None], progress)
    load_options = {"dtype": dtype, "device": device, **({"attn_implementation": "eager"} if related else {})}
    for ckpt, model in tqdm(iter_models(missing, **load_options), total=len(missing), desc="checkpoints",
                            unit="ckpt", disable=not progress or not missing):  # all cached: no empty 0/0 bar
        extra = RelatedMeasures(model, weighting) if related else None
        means = coefficient_means(model, batches, weighting, on_batch=extra)
        info = {**(extra.result() if extra else {}), "version": MEASUREMENT_VERSION,
                "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
                "disk_bytes": revision_disk_bytes(ckpt)}
        _save_entry(entries[ckpt.name], means, info)
        results[ckpt.name] = means, info
        if delete_downloads and ckpt.revision is not None:
            freed[ckpt.name] = delete_revision(ckpt)
            if not info["disk_bytes"]:
                warnings.warn(f"checkpoint {ckpt.name!r} is not in the hub cache {hub_cache_dir()} "
                              "(downloaded to another folder? `hf cache ls` lists it): nothing deleted")
        if progress and ckpt.revision is not None:
            tqdm.write(_disk_line(ckpt.name, info["disk_bytes"], freed.get(ckpt.name)))
    if delete_downloads:  # last: a duplicate may share its commit with the checkpoint it duplicates
        freed |= _delete_downloads([c for c in checkpoints if c.name in duplicate_of], progress)
    rows = []
    for ckpt in checkpoints:
        means, info = results[duplicate_of.get(ckpt.name, ckpt.name)]
        ke = knowledge_entropy(means, weighting)
        rows.append({
            "name": ckpt.name, "step": ckpt.step, "tokens": ckpt.tokens, "ke": ke.total,
            "normalized": ke.normalized, "per_layer": ke.per_layer.numpy(),
            "effective_sources": ke.effective_sources.numpy(), "means": means,
            **{k: v for k, v in info.items() if k not in ("version", "disk_bytes")},
            "fingerprint": fingerprints[ckpt.name], "duplicate_of": duplicate_of.get(ckpt.name),
            "disk_bytes": 0 if ckpt.name in duplicate_of else info.get("disk_bytes", float("nan")),
            **({"freed_bytes": freed.get(ckpt.name, 0)} if delete_downloads else {}),
        })
    return pd.DataFrame(rows)


def _disk_line(name: str, disk_bytes: int, freed_bytes: int | None) -> str:
    """E.g. ``"step20000: 4.7 GB in the hub cache, deleted (4.7 GB freed)"``; ``freed_bytes=None``:
    not deleted."""
    line = f"{name}: {format_bytes(disk_bytes)} in the hub cache"
    return line if freed_bytes is None else f"{line}, deleted ({format_bytes(freed_bytes)} freed)"


def _delete_downloads(checkpoints: Sequence[Checkpoint], progress: bool) -> dict[str, int]:
    """Delete the hub checkpoints' revisions from the hub cache (local folders are skipped); bytes
    freed by name. ``progress``: a line per revision that freed space."""
    freed = {c.name: delete_revision(c) for c in checkpoints if c.revision is not None}
    for name, size in freed.items():
        if progress and size:
            tqdm.write(f"{name}: {format_bytes(size)} deleted from the hub cache (result stored)")
    return freed


def facts_known(checkpoints: Sequence[Checkpoint], probes: pd.DataFrame, device: str = "cpu",
                progress: bool = True) -> pd.DataFrame:
    """For each checkpoint, how well it knows the facts of ``probes`` (columns ``input, target``,
    e.g. the built-in world's ``KnowledgeSetup.retention``): ``known``, the share answered exactly
    by greedy decoding, and ``logprob``, the mean log-probability per target token (nats).
    One row per checkpoint: ``step, known, logprob``."""
    rows = []
    for ckpt, model in tqdm(iter_models(checkpoints, device=device), total=len(checkpoints), desc="facts known",
                            disable=not progress):
        tokenizer = AutoTokenizer.from_pretrained(ckpt.path, revision=ckpt.revision)
        scored = score_probes(model, tokenizer, probes)
        rows.append({"step": ckpt.step, "known": float(scored["exact"].mean()), "logprob": float(scored["logprob"].mean())})
    return pd.DataFrame(rows)


def trained_peak(steps: Sequence[int], ke: Sequence[float]) -> int:
    """Position of the highest knowledge entropy among trained checkpoints (``step > 0``; step 0 is
    the random initialisation): where the first steps' abrupt change ends."""
    steps, ke = np.asarray(steps), np.asarray(ke, float)
    if not (steps > 0).any():
        raise ValueError("no trained checkpoint (step > 0)")
    return int(np.argmax(np.where(steps > 0, ke, -np.inf)))


def trend_after_peak(steps: Sequence[int], ke: Sequence[float]) -> Correlation | None:
    """Spearman correlation of knowledge entropy with step from the :func:`trained_peak` on (the
    peak included; ``steps`` in order); None when the peak is the last checkpoint."""
    steps, ke = np.asarray(steps), np.asarray(ke, float)
    peak = trained_peak(steps, ke)
    return correlation(steps[peak:], ke[peak:], "spearman") if peak < len(steps) - 1 else None


def findings(frame: pd.DataFrame) -> dict[str, Finding]:
    """Notebook 02's claims from a :func:`sweep` frame (checkpoints in order): KE declines from the
    :func:`trained_peak` on (Spearman of KE with step < -0.8; a check, asserted at the notebook's
    defaults: docs/findings_over_seeds.md), and the last layer loses the most entropy from the peak."""
    peak = trained_peak(frame["step"], frame["normalized"])
    rho = trend_after_peak(frame["step"], frame["ke"])
    per_layer_drop = frame["per_layer"].iloc[-1] - frame["per_layer"].iloc[peak]
    layer, n_layers = int(per_layer_drop.argmin()), len(per_layer_drop)
    return {
        "knowledge entropy declines as pretraining advances (Spearman of KE with step < -0.8 from the trained peak on)":
            Finding(rho is not None and rho.r < -0.8, rho.r if rho else None, check=True, study=study.DECAY_REPORTED,
                    threshold="Spearman < -0.8"),
        "as in the study, the last layer loses the most entropy from the peak":
            Finding(layer == n_layers - 1, layer, study="the last layer (16 of 16 in OLMo-1B)",
                    threshold=f"the layer with the largest drop (counted from 0) = {n_layers - 1}"),
    }


def key_numbers(frame: pd.DataFrame) -> dict[str, float]:
    """KE at the first and last checkpoint, normalised KE at the trained peak and the last, and the
    Spearman correlation of KE with step over all checkpoints and from the peak on (NaN: none)."""
    peak = trained_peak(frame["step"], frame["normalized"])
    rho = trend_after_peak(frame["step"], frame["ke"])
    return {"ke_first": frame["ke"].iloc[0], "ke_last": frame["ke"].iloc[-1],
            "normalized_peak": frame["normalized"].iloc[peak], "normalized_last": frame["normalized"].iloc[-1],
            "spearman_all": correlation(frame["step"], frame["ke"], "spearman").r,
            "spearman_after_peak": rho.r if rho else float("nan")}
