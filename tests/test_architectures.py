"""Every capability on every measured architecture (issue 24), against module names written out by
hand from transformers' modeling code: coefficient modules and knowledge entropy, exact
reactivation (Phi-3's fused gate/up projection included), attribution to the d_ff neurons, probe
scores with and without the output-layer shortcut; and the architectures table as the one place."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from helpers import SMALL, make_model, sentencepiece_tokenizer
from ke_utils import coefficient_means, knowledge_entropy, probes
from ke_utils.memory import attribution, entropy, hooks, reactivation
from ke_utils.memory.attribution import UpdateTracker, batch_attribution
from ke_utils.memory.hooks import capture_coefficients, find_coefficient_modules
from ke_utils.memory.architectures import ARCHITECTURES, architecture
from ke_utils.memory.reactivation import reactivate

D_FF, N_LAYERS = 64, 2
_LLAMA = ("model.layers.{l}.mlp.down_proj", ("model.layers.{l}.mlp.up_proj", 0), ("model.layers.{l}.mlp.gate_proj", 0))
# model_type -> (down projection, (up projection, its first output row), (gate, first row) or None)
# in layer {l}. Phi3MLP: ``gate, up = gate_up_proj(x).chunk(2, dim=-1)``: up is rows 64..127.
LAYOUT = {
    **dict.fromkeys(("llama", "mistral", "qwen3", "olmo", "olmo2", "gemma2", "gemma3_text", "smollm3"), _LLAMA),
    "phi3": ("model.layers.{l}.mlp.down_proj", ("model.layers.{l}.mlp.gate_up_proj", D_FF),
             ("model.layers.{l}.mlp.gate_up_proj", 0)),
    "gpt_neox": ("gpt_neox.layers.{l}.mlp.dense_4h_to_h", ("gpt_neox.layers.{l}.mlp.dense_h_to_4h", 0), None),
    "gpt2": ("transformer.h.{l}.mlp.c_proj", ("transformer.h.{l}.mlp.c_fc", 0), None),  # Conv1D
}
FAMILIES = list(LAYOUT)
GATED = [f for f in FAMILIES if LAYOUT[f][2] is not None]
PAIRS = (["The quick brown fox jumps over the", "Paris is the capital of", "Memory vectors store"],
         ["lazy dog", "France", "facts"])


def _batch(seed: int = 0) -> dict:
    ids = torch.randint(3, SMALL["vocab_size"], (3, 12), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _modules(model, layer: int):
    """(down, (up, start), (gate, start) or None) of ``layer`` as modules, from LAYOUT."""
    named = dict(model.named_modules())
    down, up, gate = LAYOUT[model.config.model_type]
    return (named[down.format(l=layer)], (named[up[0].format(l=layer)], up[1]),
            None if gate is None else (named[gate[0].format(l=layer)], gate[1]))


def _outputs(module: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """``[out, ...]``: a module's weight-shaped ``t`` by output (a Conv1D's ``[in, out]`` transposed) or its bias."""
    return t if t.ndim == 1 or isinstance(module, nn.Linear) else t.T


def _neurons(module: nn.Module, t: torch.Tensor, start: int) -> torch.Tensor:
    """``[d_ff, ...]``: the neurons' outputs ``start .. start + d_ff - 1`` of a key module's ``t``."""
    return _outputs(module, t)[start : start + D_FF]


def _coefficients(model, batch) -> dict[int, torch.Tensor]:
    with torch.no_grad(), capture_coefficients(model) as captured:
        model(**batch)
    return dict(captured)


@pytest.fixture(scope="module")
def small_vocab():
    """A SentencePiece-shaped tokenizer whose ids fit the 128-token tiny models."""
    return sentencepiece_tokenizer(["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France.",
                                    "Memory vectors in feed-forward layers store facts."] * 20, 120)


@pytest.mark.parametrize("family", FAMILIES)
def test_coefficient_modules_and_knowledge_entropy(family):
    """One coefficient module per layer, the hand-named down projection; the means are those of
    its input; knowledge entropy is between 0 and n_layers ln d_ff."""
    model, batch = make_model(family), _batch()
    downs = [_modules(model, l)[0] for l in range(N_LAYERS)]
    assert find_coefficient_modules(model) == [LAYOUT[family][0].format(l=l) for l in range(N_LAYERS)]
    seen = []
    handles = [m.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().abs())) for m in downs]
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    real = batch["attention_mask"].bool()
    reference = torch.stack([c[real].double().mean(0) for c in seen])
    means = coefficient_means(model, [batch])
    torch.testing.assert_close(means, reference, rtol=1e-5, atol=1e-7)
    ke = knowledge_entropy(means)
    assert means.shape == (N_LAYERS, D_FF) and 0 < ke.total < ke.maximum


@pytest.mark.parametrize("family", FAMILIES)
def test_reactivation_scales_exactly_the_chosen_neurons(family, recwarn):
    """Per layer: only the chosen rows of the up projection change (Phi-3: rows d_ff + j of
    ``gate_up_proj``, its up half), each by its factor; earlier layers and the other neurons'
    coefficients stay as they were; a gated MLP's chosen coefficients scale by exactly the factor."""
    model, batch = make_model(family), _batch()
    means = coefficient_means(model, [batch])
    before = _coefficients(model, batch)
    for layer in range(N_LAYERS):
        modified, report = reactivate(model, means, ratio=0.3, factor=2.0, layers=[layer])
        rows, scales = report.indices[layer], report.scales[layer]
        assert report.exact == (family in GATED) and len(rows) == round(0.3 * D_FF)
        (up, start), (new_up, _) = _modules(model, layer)[1], _modules(modified, layer)[1]
        changed = {n for n, p in modified.state_dict().items() if not torch.equal(p, model.state_dict()[n])}
        assert changed == {f"{report.modules[layer]}.{p}" for p, _ in up.named_parameters()}
        touched = start + rows
        for old, new in zip(up.parameters(), new_up.parameters()):
            old, new = _outputs(up, old.detach()), _outputs(new_up, new.detach())
            untouched = torch.ones(len(old), dtype=torch.bool)
            untouched[touched] = False
            assert torch.equal(new[untouched], old[untouched])
            factor = scales.float().view(-1, *[1] * (old.ndim - 1))
            torch.testing.assert_close(new[touched], old[touched] * factor, rtol=1e-6, atol=0)
        after = _coefficients(modified, batch)
        for earlier in range(layer):
            torch.testing.assert_close(after[earlier], before[earlier], rtol=0, atol=0)
        others = torch.ones(D_FF, dtype=torch.bool)
        others[rows] = False
        torch.testing.assert_close(after[layer][..., others], before[layer][..., others], rtol=1e-6, atol=1e-7)
        if report.exact:
            expected = before[layer][..., rows] * scales.float()
            torch.testing.assert_close(after[layer][..., rows], expected, rtol=1e-5, atol=1e-6)
    if family not in GATED:  # GELU: the activation is not linear, and a warning says so
        assert any("approximately" in str(w.message) for w in recwarn)


def _memory_vectors(down: nn.Module) -> torch.Tensor:
    """``[d_ff, d_model]``: row j is neuron j's memory vector (a Linear's column j, a Conv1D's row j)."""
    return down.weight.detach().T if isinstance(down, nn.Linear) else down.weight.detach()


@pytest.mark.parametrize("family, overrides", [pytest.param(f, {}, id=f) for f in GATED]
                         + [pytest.param("gpt2", {"activation_function": "relu"}, id="gpt2-relu")])
def test_preserve_function_keeps_the_logits_and_scales_the_coefficients(family, overrides):
    """``preserve_function=True`` (float64): the logits equal the model's to 1e-12 while every chosen
    coefficient is its factor times what it was; besides the up projections (as without it) only
    the chosen memory vectors change, divided by the factors (GPT-2's Conv1D ``c_proj``: its rows);
    the down projection's bias stays. Without it the logits move."""
    model, batch = make_model(family, **overrides).double(), _batch()
    means = coefficient_means(model, [batch])
    modified, report = reactivate(model, means, ratio=0.5, factor=2.0, preserve_function=True)
    plain, _ = reactivate(model, means, ratio=0.5, factor=2.0)
    assert report.preserve_function and report.exact
    with torch.no_grad():
        logits, kept, moved = (m(**batch).logits for m in (model, modified, plain))
    torch.testing.assert_close(kept, logits, rtol=0, atol=1e-12)
    assert float((moved - logits).abs().max()) > 1e-2
    before, after = _coefficients(model, batch), _coefficients(modified, batch)
    changed = {n for n, p in modified.state_dict().items() if not torch.equal(p, model.state_dict()[n])}
    expected_changes = set()
    for layer in range(N_LAYERS):
        rows, scales = report.indices[layer], report.scales[layer]
        expected = before[layer].clone()
        expected[..., rows] *= scales
        torch.testing.assert_close(after[layer], expected, rtol=1e-10, atol=1e-12)
        (down, (up, _), _), new_down = _modules(model, layer), _modules(modified, layer)[0]
        down_name, (up_name, _), _ = LAYOUT[family]
        old, new = _memory_vectors(down), _memory_vectors(new_down)
        untouched = torch.ones(D_FF, dtype=torch.bool)
        untouched[rows] = False
        assert torch.equal(new[untouched], old[untouched])
        torch.testing.assert_close(new[rows], old[rows] / scales[:, None], rtol=1e-15, atol=0)
        expected_changes |= {f"{up_name.format(l=layer)}.{p}" for p, _ in up.named_parameters()}
        expected_changes.add(f"{down_name.format(l=layer)}.weight")
    assert changed == expected_changes


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in GATED])
def test_preserve_function_refuses_a_non_gated_gelu_mlp(family):
    """No scaling keeps a GELU MLP's function: an error that names the model type and activation."""
    model = make_model(family)
    with pytest.raises(ValueError, match=rf"preserve_function.*model_type='{family}'.*activation 'gelu"):
        reactivate(model, coefficient_means(model, [_batch()]), 0.5, 2.0, preserve_function=True)


def _hand_attribution(model, grads: dict[nn.Parameter, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(key, value)`` ``[n_layers, d_ff]``: squared norms of each neuron's gate and up rows
    (and bias entries) and of its down projection column, from ``grads`` by parameter, neuron by neuron."""
    key, value = torch.zeros(N_LAYERS, D_FF, dtype=torch.float64), torch.zeros(N_LAYERS, D_FF, dtype=torch.float64)
    for l in range(N_LAYERS):
        down, up, gate = _modules(model, l)
        for module, start in [up] + ([gate] if gate else []):
            for p in module.parameters():
                g = _neurons(module, grads[p], start).double()
                key[l] += torch.stack([g[j].square().sum() for j in range(D_FF)])
        g = grads[down.weight].double()
        g = g if isinstance(down, nn.Linear) else g.T  # [d_model, d_ff]: neuron j is column j
        value[l] = torch.stack([g[:, j].square().sum() for j in range(D_FF)])
    return key, value


@pytest.mark.parametrize("family", FAMILIES)
def test_attribution_to_the_d_ff_neurons_of_every_layer(family):
    """``batch_attribution`` and one step under ``UpdateTracker`` give, per layer and neuron, the
    squared gradient norms of its key (gate and up rows: both halves of Phi-3's ``gate_up_proj``)
    and value computed by hand; after one SGD step of rate lr the change is lr^2 times them."""
    model, batch = make_model(family), _batch()["input_ids"]
    params = list(model.parameters())
    loss = model(input_ids=batch, labels=batch).loss
    key, value = _hand_attribution(model, dict(zip(params, torch.autograd.grad(loss, params))))
    result = batch_attribution(model, batch)
    assert result.key_grad.shape == result.value_grad.shape == (N_LAYERS, D_FF) and bool((key > 0).all())
    torch.testing.assert_close(result.key_grad, key, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(result.value_grad, value, rtol=1e-5, atol=1e-12)
    lr = 0.1
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    with UpdateTracker(model) as tracker:
        model(input_ids=batch, labels=batch).loss.backward()
        opt.step()
    assert tracker.steps == 1
    torch.testing.assert_close(tracker.key_grad, key, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(tracker.value_grad, value, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(tracker.key_change, lr**2 * key, rtol=1e-3, atol=1e-12)
    torch.testing.assert_close(tracker.value_change, lr**2 * value, rtol=1e-3, atol=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
def test_probe_scores_same_with_and_without_the_head_shortcut(family, small_vocab, monkeypatch):
    """Only the scored positions through the output layer (and Gemma-2's soft cap after it) scores
    what the full logits do."""
    model = make_model(family)
    assert probes.head_on_hidden(model)
    shortcut = probes.score_pairs(model, small_vocab, *PAIRS, batch_size=2)
    monkeypatch.setattr(probes, "head_on_hidden", lambda model: False)
    full = probes.score_pairs(model, small_vocab, *PAIRS, batch_size=2)
    assert (shortcut["n_target"] > 0).all() and (shortcut["exact"] == full["exact"]).all()
    torch.testing.assert_close(torch.tensor(shortcut["logprob_sum"].to_numpy()),
                               torch.tensor(full["logprob_sum"].to_numpy()), rtol=1e-5, atol=1e-5)


def test_unknown_model_type_is_a_clear_error():
    with pytest.raises(ValueError, match=r"model_type='mystery'.*known: .*gemma3_text.*phi3"):
        architecture("mystery")
    model = make_model("llama")
    model.config.model_type = "mystery"
    with pytest.raises(ValueError, match=r"LlamaForCausalLM.*known: .*llama.*up_names"):
        reactivate(model, torch.ones(N_LAYERS, D_FF), 0.5, 1.0)
    with pytest.raises(ValueError, match=r"known: .*up_names"):
        UpdateTracker(model)
    assert not probes.head_on_hidden(model)


def test_the_table_is_the_only_place(monkeypatch):
    """No module keeps a table of its own, and an entry added to the table is what every
    capability then reads: coefficient modules, up and gate projections, the output-layer
    shortcut and who computes the positions."""
    for module, name in [(reactivation, "UP_PROJECTIONS"), (attribution, "GATE_PROJECTIONS"),
                         (probes, "HEAD_ON_HIDDEN"), (entropy, "_OWN_POSITIONS")]:
        assert not hasattr(module, name)
    assert hooks.COEFFICIENT_MODULES == {t: a.coefficient_pattern for t, a in ARCHITECTURES.items()}
    model = make_model("phi3")
    model.config.model_type = "mystery"
    assert not probes.head_on_hidden(model)
    monkeypatch.setitem(ARCHITECTURES, "mystery", dataclasses.replace(ARCHITECTURES["phi3"], own_positions=True))
    assert probes.head_on_hidden(model)
    assert "position_ids" not in entropy._forward_kwargs(model, _batch(), "token")
    assert reactivation.up_projection_names(model) == [f"model.layers.{l}.mlp.gate_up_proj" for l in range(N_LAYERS)]
    keys = attribution.memory_parameters(model)[0].keys
    assert [(p.name, p.start) for p in keys] == [("model.layers.0.mlp.gate_up_proj.weight", 0),
                                                 ("model.layers.0.mlp.gate_up_proj.weight", D_FF)]
