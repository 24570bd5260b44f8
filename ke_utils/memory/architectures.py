"""The one table of per-architecture facts, keyed by transformers' ``config.model_type``.

A layer's MLP maps ``x`` (``[..., d_model]``) to the coefficients ``c`` (``[..., d_ff]``):
``c = act(gate(x)) * up(x)`` (gated) or ``c = act(up(x))``, and writes ``down(c)`` back to the
residual stream. Hooks, reactivation, attribution, probe scoring and knowledge entropy read where
these projections are and how the model runs from here, and nowhere else.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Projection:
    """A Linear / Conv1D by name whose outputs are ``[d_ff]`` pre-activations; ``half`` 0 or 1 if it
    is one of two fused in one module with ``[2 * d_ff]`` outputs (0: outputs ``0 .. d_ff - 1``,
    1: ``d_ff .. 2 d_ff - 1``), None if the module is this projection alone."""

    name: str
    half: int | None = None

    def start(self, d_ff: int) -> int:
        """Index of the module's output that is neuron 0 of this projection."""
        return 0 if self.half is None else self.half * d_ff

    def width(self, d_ff: int) -> int:
        """The module's output width: ``d_ff``, or ``2 * d_ff`` when fused."""
        return d_ff if self.half is None else 2 * d_ff


@dataclass(frozen=True)
class Architecture:
    """Where one architecture keeps its MLP and how its forward pass behaves.

    layers: regex of a layer's module name (matched at a dot boundary), its one group the layer index.
    down, up, gate: module names relative to a layer. ``down`` (``[d_ff] -> [d_model]``, never fused)
    has the coefficient ``c`` as its input: neuron j's memory vector is column j of a Linear's
    ``[d_model, d_ff]`` weight, row j of a Conv1D's ``[d_ff, d_model]`` (GPT-2); its bias is one per
    output, not per neuron. ``up`` gives neuron j's linear factor; ``gate`` is None for a non-gated MLP.
    head_on_hidden: the causal LM's logits are its output layer on the base model's last hidden
    states (then ``final_logit_softcapping`` if the config sets it), so the output layer may run
    on the needed positions only.
    own_positions: the model derives its position ids itself (passing ``position_ids`` is wrong).
    """

    layers: str
    down: str
    up: Projection
    gate: Projection | None = None
    head_on_hidden: bool = False
    own_positions: bool = False

    @property
    def coefficient_pattern(self) -> str:
        """Regex of the down projections' full names (matched at a dot boundary); group 1: the layer."""
        return rf"{self.layers}\.{re.escape(self.down)}"

    def locate(self, projection: Projection, coefficient_modules: Sequence[str]) -> list[Projection]:
        """``projection`` (``self.up`` or ``self.gate``) by full name in the layer of each of
        ``coefficient_modules`` (full names of the down projections)."""
        bad = [n for n in coefficient_modules if not n.endswith(self.down)]
        if bad:
            raise ValueError(f"cannot locate {projection.name!r} next to {bad}: they do not end in {self.down!r}")
        return [Projection(n[: -len(self.down)] + projection.name, projection.half) for n in coefficient_modules]


_DECODER = r"layers\.(\d+)"
_GATED = Architecture(_DECODER, "mlp.down_proj", Projection("mlp.up_proj"), Projection("mlp.gate_proj"),
                      head_on_hidden=True)
_ENCODER = Architecture(r"layer\.(\d+)", "output.dense", Projection("intermediate.dense"))

ARCHITECTURES: dict[str, Architecture] = {
    # SmolLM3 (HuggingFaceTB/SmolLM3-3B, and the checkpoints of its pretraining): Llama's MLP; some layers have no RoPE
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "olmo", "olmo2", "olmo3", "gemma", "gemma2", "gemma3_text",
                     "smollm3"), _GATED),
    # Phi3MLP: gate, up = gate_up_proj(x).chunk(2, dim=-1)
    "phi3": Architecture(_DECODER, "mlp.down_proj", Projection("mlp.gate_up_proj", half=1),
                         Projection("mlp.gate_up_proj", half=0), head_on_hidden=True),
    "gpt_neox": Architecture(_DECODER, "mlp.dense_4h_to_h", Projection("mlp.dense_h_to_4h"), head_on_hidden=True),
    "gpt2": Architecture(r"h\.(\d+)", "mlp.c_proj", Projection("mlp.c_fc"), head_on_hidden=True),  # Conv1D
    "opt": Architecture(_DECODER, "fc2", Projection("fc1"), head_on_hidden=True, own_positions=True),
    "phi": Architecture(_DECODER, "mlp.fc2", Projection("mlp.fc1"), head_on_hidden=True),
    "bert": _ENCODER,
    # RoBERTa and its kin offset positions by padding_idx + 1
    **dict.fromkeys(("roberta", "xlm-roberta", "camembert"), replace(_ENCODER, own_positions=True)),
}


def architecture(model_type: str | None) -> Architecture:
    """The table's entry for ``model_type``; ValueError naming the known types if there is none."""
    if model_type not in ARCHITECTURES:
        raise ValueError(f"unknown architecture model_type={model_type!r} (known: {', '.join(sorted(ARCHITECTURES))})")
    return ARCHITECTURES[model_type]
