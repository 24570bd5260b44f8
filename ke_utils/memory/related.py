"""Measures the study reported next to knowledge entropy (its appendix), from the same forward pass.

- attention entropy: per head, the entropy of each (real) query's attention row, averaged over
  query positions of all documents, then over heads, summed over layers (nats);
- next-token entropy: the entropy of the predicted next-token distribution, averaged over real
  tokens (nats).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .entropy import _forward_kwargs


@dataclass
class RelatedMeasures:
    """Running sums of both measures; call the instance on each batch (it runs the model).

    ``weighting`` must be the one :func:`~ke_utils.memory.entropy.coefficient_means` uses in the same pass,
    so that the pass it runs for both is the one that weighting defines (``"original"``: without
    the attention mask). Both measures average over real tokens whatever the weighting."""

    model: torch.nn.Module
    weighting: str = "token"  # the forward pass of coefficient_means with this weighting
    attention_sums: torch.Tensor | None = None  # [n_layers], sum over real queries of head-mean entropy
    next_token_sum: float = 0.0
    tokens: float = 0.0

    def __call__(self, batch: dict) -> None:
        out = self.model(**_forward_kwargs(self.model, batch, self.weighting), output_attentions=True)
        real = batch["attention_mask"].bool()
        logp = out.logits.float().log_softmax(-1)
        self.next_token_sum += float(-(logp.exp() * logp).sum(-1)[real].sum())
        if not out.attentions or out.attentions[0] is None:
            raise RuntimeError("the model returned no attention weights; load it with attn_implementation='eager'")
        # each [batch, heads, query, key]; rows of padded queries are dropped
        per_layer = torch.stack(
            [(-torch.special.xlogy(a.float(), a.float()).sum(-1)).mean(1)[real].sum() for a in out.attentions]
        ).double()
        self.attention_sums = per_layer if self.attention_sums is None else self.attention_sums + per_layer
        self.tokens += float(real.sum())

    def result(self) -> dict[str, float]:
        if self.tokens == 0:
            raise ValueError("no tokens seen")
        return {
            "attention_entropy": float(self.attention_sums.sum() / self.tokens),
            "next_token_entropy": self.next_token_sum / self.tokens,
        }
