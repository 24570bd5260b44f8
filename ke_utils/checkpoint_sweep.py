"""Knowledge entropy over a family of checkpoints, one cached result per checkpoint.

Each result is written atomically (temporary file + rename) with a checksum, so an interrupted
sweep resumes where it stopped, and a damaged entry is detected and recomputed.
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

from .batching import length_bucketed_batches, pad_token_id, tokenize_documents
from .cache import cache_dir, config_key
from .checkpoints import Checkpoint, duplicate_groups, load_checkpoint, weights_fingerprint
from .entropy import ORIGINAL_LOG_EPS, coefficient_means, knowledge_entropy
from .related import RelatedMeasures


def _digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()


def _save_entry(path: Path, means: torch.Tensor, info: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({"means": means.contiguous()}, str(tmp), metadata={"info": json.dumps(info), "sha256": _digest(means)})
    tmp.replace(path)


def _load_entry(path: Path) -> tuple[torch.Tensor, dict] | None:
    """The cached (means, info), or None if missing or damaged."""
    if not path.exists():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        means = load_file(str(path))["means"]
        if meta.get("sha256") != _digest(means):
            raise ValueError("checksum mismatch")
        return means, json.loads(meta["info"])
    except (SafetensorError, ValueError, KeyError, OSError, json.JSONDecodeError) as err:
        warnings.warn(f"damaged sweep cache entry {path.name} ({err}); recomputing it")
        return None


def sweep_dir(checkpoints: Sequence[Checkpoint], texts: Sequence[str], settings: dict) -> Path:
    """Cache folder keyed by the family, the texts and the measurement settings."""
    family = sorted({(c.path if c.revision else str(Path(c.path).parent)) for c in checkpoints})
    text_hash = hashlib.sha1("\x00".join(texts).encode()).hexdigest()
    return cache_dir() / "sweeps" / config_key({"family": family, "texts": text_hash, **settings})


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
) -> pd.DataFrame:
    """Knowledge entropy of each checkpoint on the same ``texts``; one row per checkpoint.

    Columns: ``name, step, tokens, ke, normalized, per_layer`` (array ``[n_layers]``),
    ``effective_sources``, ``means`` (tensor ``[n_layers, d_ff]``, for reactivation), ``fingerprint``,
    ``duplicate_of``, and with ``related=True`` also ``attention_entropy`` and
    ``next_token_entropy``. The tokenizer is the first checkpoint's unless given (checkpoints of
    one family share it). Results are cached in ``folder`` (default: keyed by all inputs).
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
    batches = length_bucketed_batches(
        docs, pad_token_id(tokenizer), max_batch_tokens,
        pad_to=max_tokens_per_doc if weighting == "original" else None,
    )
    rows = []
    for ckpt in tqdm(checkpoints, desc="checkpoints", unit="ckpt", disable=not progress):
        entry = folder / f"{ckpt.name.replace('/', '_')}.safetensors"
        cached = _load_entry(entry)
        if cached is None:
            model = load_checkpoint(ckpt, dtype=dtype, device=device,
                                    **({"attn_implementation": "eager"} if related else {}))
            extra = RelatedMeasures(model) if related else None
            means = coefficient_means(model, batches, weighting, on_batch=extra)
            info = {"fingerprint": weights_fingerprint(model), **(extra.result() if extra else {})}
            del model
            _save_entry(entry, means, info)
        else:
            means, info = cached
        ke = knowledge_entropy(means, log_eps=ORIGINAL_LOG_EPS if weighting == "original" else 0.0)
        rows.append({
            "name": ckpt.name, "step": ckpt.step, "tokens": ckpt.tokens, "ke": ke.total,
            "normalized": ke.normalized, "per_layer": ke.per_layer.numpy(),
            "effective_sources": ke.effective_sources.numpy(), "means": means, **info,
        })
    frame = pd.DataFrame(rows)
    frame["duplicate_of"] = None
    for group in duplicate_groups(dict(zip(frame["name"], frame["fingerprint"]))):
        warnings.warn(f"checkpoints {group} have identical weights (known hub duplicates?)")
        frame.loc[frame["name"].isin(group[1:]), "duplicate_of"] = group[0]
    return frame


def layer_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Long format: one row per (checkpoint, layer) with entropy and its normalised value."""
    d_ff = frame["means"].iloc[0].shape[1]
    rows = [
        {"step": r.step, "layer": l, "entropy": float(h), "normalized": float(h) / np.log(d_ff)}
        for r in frame.itertuples() for l, h in enumerate(r.per_layer)
    ]
    return pd.DataFrame(rows)
