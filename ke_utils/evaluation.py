"""Evaluating a model during continued training: probe scores on the new knowledge, retention of
the old, and held-out language-model loss."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd
import torch

from .memory.batching import text_batches
from .downstream import multiple_choice_accuracy
from .probes import probe_table, score_probes, shuffled_targets, summarize
from .setups import KnowledgeSetup
from .memory.modes import eval_mode


@torch.inference_mode()
def lm_loss(model, tokenizer, texts: Sequence[str], max_tokens: int = 256) -> float:
    """Mean next-token loss (nats per token) over ``texts``."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in text_batches(tokenizer, texts, max_tokens):
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        logp = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float().log_softmax(-1)
        nll = -logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
        real = mask[:, 1:].bool()
        total, count = total + float(nll[real].sum()), count + int(real.sum())
    return total / count


def evaluator(tokenizer, setup: KnowledgeSetup) -> Callable[[object, int], dict]:
    """``evaluate(model, step)``: log-prob K and exact match per regime and probe kind
    (``logprob_<regime>_<kind>``) and over all kinds (``_all``: the study's K, the mean over items
    of the mean over all of an item's probes), the
    retention score P (exact match on retention probes, or mean downstream accuracy; none when
    the setup has neither, e.g. no downstream task), for retention probes also their mean
    log-probability (``retention_logprob``) and, when they name their ``attribute``, the floor of P
    (``retention_floor``: exact match against another person's value of the same attribute,
    :func:`~ke_utils.probes.shuffled_targets`), and held-out LM loss."""
    regimes = {"paraphrase": setup.paraphrase, "once": setup.once, "control": setup.control}
    table = pd.concat([probe_table(records).assign(regime=regime) for regime, records in regimes.items() if records],
                      ignore_index=True)
    memorisation = table[table["kind"] == "mem"]
    has_groups = setup.retention is not None and "attribute" in setup.retention
    floor = shuffled_targets(setup.retention) if has_groups else None

    def evaluate(model, step: int, with_retention: bool = True) -> dict:
        """``with_retention=False``: the memorisation probes of the new knowledge only, what the
        learning curves show (a third of the probes; for evaluations mid-run). Runs the model in
        eval mode and gives it back in the mode it came in."""
        with eval_mode(model):
            return _evaluate(model, with_retention)

    def _evaluate(model, with_retention: bool) -> dict:
        scored = score_probes(model, tokenizer, table if with_retention else memorisation)
        summary = summarize(scored, by=("regime", "kind"))
        out = {f"{m}_{r}_{k}": float(summary.loc[(r, k), m]) for r, k in summary.index for m in ("logprob", "exact")}
        if not with_retention:
            return out
        overall = summarize(scored, by=("regime",))  # the study's K: every probe of an item, all kinds
        out.update({f"{m}_{r}_all": float(overall.loc[r, m]) for r in overall.index for m in ("logprob", "exact")})
        if setup.tasks:
            scores = {name: multiple_choice_accuracy(model, tokenizer, items, metric)
                      for name, (items, metric) in setup.tasks.items()}
            out.update({f"task_{name}": v for name, v in scores.items()}, retention_score=sum(scores.values()) / len(scores))
        elif setup.retention is not None:
            kept = score_probes(model, tokenizer, setup.retention)
            out.update(retention_score=float(kept["exact"].mean()), retention_logprob=float(kept["logprob"].mean()))
            if floor is not None:
                out["retention_floor"] = float(score_probes(model, tokenizer, floor)["exact"].mean())
        out["heldout_loss"] = lm_loss(model, tokenizer, setup.heldout)
        return out

    return evaluate
