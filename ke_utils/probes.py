"""Scoring cloze probes: log-probability of a target given an input, and greedy exact match.

Input and target are joined by a space and encoded as one text, with the tokenizer's BOS first
when it adds one; the target's tokens (the ones scored) are found by character offsets, so every
tokenizer scores the tokens it would produce for the whole sentence.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from .memory.batching import pad_batch, pad_token_id
from .memory.architectures import ARCHITECTURES
from .records import PROBE_KINDS
from .memory.modes import eval_mode


def adds_bos(tokenizer) -> bool:
    """True if the tokenizer puts its beginning-of-sequence token first when asked for special
    tokens (Llama, Mistral, Gemma, OLMo-2 do; GPT-2, Pythia, OLMo-1B and the built-in family do not)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]


def _target_start(offsets: Sequence[tuple[int, int]], boundary: int) -> int:
    """Index of the first token that covers a character at or after ``boundary`` (the target's
    first token; a token that spans the boundary counts as the target's)."""
    return next((k for k, (_, end) in enumerate(offsets) if end > boundary), len(offsets))


def encode_pairs(tokenizer, inputs: Sequence[str], targets: Sequence[str]) -> list[tuple[list[int], int]]:
    """``(ids, n_input)`` per pair: the ids of ``input + " " + target`` encoded as one text (the
    tokenizer's BOS first when it adds one), and how many of them come before the target.

    The target's tokens are found by character offsets (fast tokenizers) or, for a slow tokenizer,
    as what follows the input's own encoding (as lm-evaluation-harness splits a pair). Encoding the
    target on its own instead would give SentencePiece tokenizers (Llama-2, Mistral, Gemma) a stray
    word-boundary token."""
    if len(inputs) != len(targets):
        raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
    for i, (inp, tgt) in enumerate(zip(inputs, targets)):
        if not inp.strip() or not tgt.strip():
            raise ValueError(f"probe {i}: empty input or target")
    texts = [f"{inp} {tgt}" for inp, tgt in zip(inputs, targets)]
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        starts = [_target_start(offsets, len(inp)) for offsets, inp in zip(encoded["offset_mapping"], inputs)]
        whole = encoded["input_ids"]
    else:
        whole = tokenizer(texts, add_special_tokens=False)["input_ids"]
        alone = tokenizer(list(inputs), add_special_tokens=False)["input_ids"]
        starts = []
        for i, (ids, ctx) in enumerate(zip(whole, alone)):
            if ids[: len(ctx)] != ctx:
                raise ValueError(f"probe {i}: the input's tokens change when the target follows it; "
                                 "use a fast tokenizer (offsets) for this tokenizer")
            starts.append(len(ctx))
    bos = [tokenizer.bos_token_id] if adds_bos(tokenizer) else []
    pairs = []
    for i, (ids, start) in enumerate(zip(whole, starts)):
        if start == 0 or start == len(ids):
            raise ValueError(f"probe {i}: the input or the target has no token of its own")
        pairs.append((bos + ids, len(bos) + start))
    return pairs


def head_on_hidden(model) -> bool:
    """Whether ``model``'s logits are its output layer on its base model's last hidden states (then
    capped by ``final_logit_softcapping`` if set), as the architectures table says
    (``Architecture.head_on_hidden``; False for a model it does not know): then only the scored
    positions need go through the output layer."""
    arch = ARCHITECTURES.get(getattr(getattr(model, "config", None), "model_type", None))
    return arch is not None and arch.head_on_hidden


def _scored_logits(model, ids: torch.Tensor, mask: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """Logits ``[n_scored, vocab]`` (fp32) at the positions where ``scored`` (``[batch, seq - 1]``,
    the positions that predict ``ids[:, 1:]``) is true. A model with :func:`head_on_hidden` runs its base
    model and its output layer sees the ``n_scored`` hidden states only; any other (a masked LM, a
    causal LM that scales its logits after the output layer) gives its full logits, then selected."""
    if not head_on_hidden(model):
        return model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1][scored].float()
    hidden = model.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state[:, :-1]
    logits = model.get_output_embeddings()(hidden[scored])
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap is not None:  # as Gemma2ForCausalLM.forward does it
        logits = torch.tanh(logits / cap) * cap
    return logits.float()


@torch.inference_mode()
def score_pairs(model, tokenizer, inputs: Sequence[str], targets: Sequence[str], batch_size: int = 64) -> pd.DataFrame:
    """Per pair: ``logprob`` (mean over target tokens, nats), ``logprob_sum``, ``n_target`` and
    ``exact`` (greedy decoding reproduces every target token). Pairs are batched by length (little
    padding); only the target tokens' positions go through the output layer (``[n_scored, vocab]``
    logits, no ``[batch, length, vocab]`` tensor; a model without :func:`head_on_hidden` computes its
    full logits) and each token's log-probability is its logit minus the log-sum-exp over the
    vocabulary."""
    pairs = encode_pairs(tokenizer, inputs, targets)
    device = next(model.parameters()).device
    pad = pad_token_id(tokenizer)
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]))
    columns = {name: torch.empty(len(pairs), dtype=torch.float64) for name in ("logprob_sum", "n_target", "exact")}
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = pad_batch([pairs[i][0] for i in rows], pad, "right")
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        nxt = ids[:, 1:]  # what positions 0 .. length - 2 predict
        position = torch.arange(nxt.shape[1], device=device)
        n_input = torch.tensor([pairs[i][1] for i in rows], device=device)
        scored = (position >= n_input[:, None] - 1) & mask[:, 1:].bool()  # the target's tokens, no padding
        logits = _scored_logits(model, ids, mask, scored)
        target = nxt[scored]
        token_logp = torch.zeros(scored.shape, device=device, dtype=logits.dtype)
        token_logp[scored] = logits.gather(-1, target[:, None]).squeeze(-1) - logits.logsumexp(-1)
        missed = torch.zeros_like(scored)
        missed[scored] = logits.argmax(-1) != target
        index = torch.tensor(rows)
        columns["logprob_sum"][index] = token_logp.sum(-1).double().cpu()
        columns["n_target"][index] = scored.sum(-1).double().cpu()
        columns["exact"][index] = (~missed.any(-1)).double().cpu()
    n = columns["n_target"]
    return pd.DataFrame({"logprob": (columns["logprob_sum"] / n).numpy(), "logprob_sum": columns["logprob_sum"].numpy(),
                         "n_target": n.long().numpy(), "exact": columns["exact"].bool().numpy()})


def score_probes(model, tokenizer, probes: pd.DataFrame, batch_size: int = 64) -> pd.DataFrame:
    """``probes`` with columns ``input`` and ``target`` (and any labels, e.g. ``item``, ``kind``),
    returned with the score columns of :func:`score_pairs` added."""
    with eval_mode(model):
        scores = score_pairs(model, tokenizer, list(probes["input"]), list(probes["target"]), batch_size)
    return pd.concat([probes.reset_index(drop=True), scores], axis=1)


def shuffled_targets(probes: pd.DataFrame, by: str = "attribute", seed: int = 0) -> pd.DataFrame:
    """``probes`` with each ``target`` replaced by another probe's target of the same ``by`` group
    (e.g. the same attribute of another person) that differs from it, where the group has one.
    Scored, they give the floor of exact match: what a model that answers with the group's values
    but knows nothing of each probe's subject would get (about the share of its most frequent
    answer, not 0)."""
    rng = np.random.default_rng(seed)
    out = probes.copy()
    for _, group in probes.groupby(by, sort=False):
        targets = group["target"].to_numpy()
        for index, target in zip(group.index, targets):
            others = targets[targets != target]
            if len(others):
                out.at[index, "target"] = others[rng.integers(len(others))]
    return out


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
