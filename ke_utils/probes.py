"""Scoring cloze probes: log-probability of a target given an input, and greedy exact match.

Input and target are joined by a space; they are tokenised separately (input, then " " + target)
so that the target's tokens are exactly the ones scored, as in lm-evaluation-harness.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from .batching import pad_batch, pad_token_id
from .records import PROBE_KINDS
from .training import eval_mode


def encode_pairs(tokenizer, inputs: Sequence[str], targets: Sequence[str]) -> list[tuple[list[int], int]]:
    """``(ids, n_input)`` per pair: ids of input + " " + target, and how many belong to the input."""
    if len(inputs) != len(targets):
        raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
    ctx = tokenizer(list(inputs), add_special_tokens=False)["input_ids"]
    cont = tokenizer([" " + t for t in targets], add_special_tokens=False)["input_ids"]
    for i, (c, t) in enumerate(zip(ctx, cont)):
        if not c or not t:
            raise ValueError(f"probe {i}: empty input or target after tokenisation")
    return [(c + t, len(c)) for c, t in zip(ctx, cont)]


@torch.inference_mode()
def score_pairs(model, tokenizer, inputs: Sequence[str], targets: Sequence[str], batch_size: int = 64) -> pd.DataFrame:
    """Per pair: ``logprob`` (mean over target tokens, nats), ``logprob_sum``, ``n_target`` and
    ``exact`` (greedy decoding reproduces every target token)."""
    pairs = encode_pairs(tokenizer, inputs, targets)
    device = next(model.parameters()).device
    pad = pad_token_id(tokenizer)
    rows = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        batch = pad_batch([ids for ids, _ in chunk], pad, "right")
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
        logp = logits.log_softmax(-1)
        for row, (seq, n_in) in enumerate(chunk):
            positions = torch.arange(n_in - 1, len(seq) - 1, device=device)  # predict token t+1 at t
            target = ids[row, n_in:len(seq)]
            token_logp = logp[row, positions].gather(-1, target[:, None]).squeeze(-1)
            exact = bool((logits[row, positions].argmax(-1) == target).all())
            rows.append({"logprob": float(token_logp.mean()), "logprob_sum": float(token_logp.sum()),
                         "n_target": len(target), "exact": exact})
    return pd.DataFrame(rows)


def score_probes(model, tokenizer, probes: pd.DataFrame, batch_size: int = 64) -> pd.DataFrame:
    """``probes`` with columns ``input`` and ``target`` (and any labels, e.g. ``item``, ``kind``),
    returned with the score columns of :func:`score_pairs` added."""
    with eval_mode(model):
        scores = score_pairs(model, tokenizer, list(probes["input"]), list(probes["target"]), batch_size)
    return pd.concat([probes.reset_index(drop=True), scores], axis=1)


def probe_table(records: Sequence[dict], kinds: Sequence[str] = PROBE_KINDS) -> pd.DataFrame:
    """All probes of fictional-knowledge records: one row per (item, kind, probe)."""
    rows = [
        {"item": i, "kind": kind, "probe": j, "input": inp, "target": tgt}
        for i, record in enumerate(records)
        for kind in kinds
        for j, (inp, tgt) in enumerate(zip(record[f"{kind}_input"], record[f"{kind}_target"]))
    ]
    return pd.DataFrame(rows)


def summarize(scored: pd.DataFrame, by: Sequence[str] = ("kind",)) -> pd.DataFrame:
    """Probe score K per group: mean over items of the mean over their probes (log-prob), and the
    exact-match rate."""
    per_item = scored.groupby([*by, "item"])[["logprob", "exact"]].mean()
    return per_item.groupby(list(by)).mean()
