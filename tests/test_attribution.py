"""Where do the updates go (ke_utils.memory.attribution, issue 14): the per-neuron gradient and change
norms equal autograd computed by hand with explicit row/column indexing per layout, the tracker's
memory does not grow with steps, its hooks leave no trace, and the measures by hand."""

from __future__ import annotations

import math

import pytest
import torch
import transformers as tf
from helpers import SMALL, make_model

from ke_utils.memory.attribution import (
    BatchAttribution,
    UpdateTracker,
    batch_attribution,
    chance_jaccard,
    memory_parameters,
    rank_agreement,
    top_k_jaccard,
    update_entropy,
)
from ke_utils.memory.entropy import knowledge_entropy

D_FF, N_LAYERS = 64, 2

# Per family: the key parameters and the value parameter of layer {l}, written out by hand, with
# where neuron j lies: "row" = weight[j, :], "col" = weight[:, j], "entry" = bias[j].
LAYOUTS = {
    "llama": ([("model.layers.{l}.mlp.gate_proj.weight", "row"), ("model.layers.{l}.mlp.up_proj.weight", "row")],
              ("model.layers.{l}.mlp.down_proj.weight", "col")),
    "llama_bias": ([("model.layers.{l}.mlp.gate_proj.weight", "row"), ("model.layers.{l}.mlp.gate_proj.bias", "entry"),
                    ("model.layers.{l}.mlp.up_proj.weight", "row"), ("model.layers.{l}.mlp.up_proj.bias", "entry")],
                   ("model.layers.{l}.mlp.down_proj.weight", "col")),
    "gpt2": ([("transformer.h.{l}.mlp.c_fc.weight", "col"), ("transformer.h.{l}.mlp.c_fc.bias", "entry")],
             ("transformer.h.{l}.mlp.c_proj.weight", "row")),  # Conv1D: [in, out]
    "gpt_neox": ([("gpt_neox.layers.{l}.mlp.dense_h_to_4h.weight", "row"),
                  ("gpt_neox.layers.{l}.mlp.dense_h_to_4h.bias", "entry")],
                 ("gpt_neox.layers.{l}.mlp.dense_4h_to_h.weight", "col")),
    "opt": ([("model.decoder.layers.{l}.fc1.weight", "row"), ("model.decoder.layers.{l}.fc1.bias", "entry")],
            ("model.decoder.layers.{l}.fc2.weight", "col")),
}
FAMILIES = list(LAYOUTS)


def model_of(family: str, seed: int = 0):
    if family != "llama_bias":
        return make_model(family, seed)
    torch.manual_seed(seed)  # a gated MLP with biases on gate, up (and down: excluded)
    config = tf.LlamaConfig(**SMALL, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, mlp_bias=True)
    model = tf.LlamaForCausalLM._from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def neuron_sq(t: torch.Tensor, where: str) -> torch.Tensor:
    """``[d_ff]``: squared L2 norm of neuron j's slice, j by j, in float64."""
    t = t.detach().double()
    if where == "row":
        return torch.stack([t[j, :].pow(2).sum() for j in range(t.shape[0])])
    if where == "col":
        return torch.stack([t[:, j].pow(2).sum() for j in range(t.shape[1])])
    assert where == "entry" and t.ndim == 1
    return torch.stack([t[j] ** 2 for j in range(t.shape[0])])


def by_hand(family: str, tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(key, value)`` ``[n_layers, d_ff]`` from per-parameter tensors (gradients or changes) by name."""
    keys, value = LAYOUTS[family]
    key = torch.stack([sum(neuron_sq(tensors[n.format(l=l)], w) for n, w in keys) for l in range(N_LAYERS)])
    val = torch.stack([neuron_sq(tensors[value[0].format(l=l)], value[1]) for l in range(N_LAYERS)])
    return key, val


def names_of(family: str) -> list[str]:
    keys, value = LAYOUTS[family]
    return [n.format(l=l) for l in range(N_LAYERS) for n, _ in [*keys, value]]


def tokens(seed: int = 0, shape=(3, 12)) -> torch.Tensor:
    return torch.randint(3, 128, shape, generator=torch.Generator().manual_seed(seed))


def hand_grads(model, family, batch) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    names = names_of(family)
    loss = model(input_ids=batch, labels=batch).loss
    return dict(zip(names, torch.autograd.grad(loss, [params[n] for n in names])))


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape == (N_LAYERS, D_FF)
    assert bool((b > 0).any())  # a real comparison, not of zeros
    torch.testing.assert_close(a.cpu().double(), b.double(), rtol=1e-5, atol=1e-12)


def hooks_left(model) -> int:
    return sum(len(p._post_accumulate_grad_hooks or {}) for p in model.parameters())


# ----------------------------------------------------------------------------- layout


@pytest.mark.parametrize("family", FAMILIES)
def test_memory_parameters_follow_the_layout(family):
    model = model_of(family)
    layers = memory_parameters(model)
    axis = {"row": 0, "col": 1, "entry": 0}
    keys, value = LAYOUTS[family]
    assert len(layers) == N_LAYERS and all(m.d_ff == D_FF for m in layers)
    for l, mem in enumerate(layers):
        assert [(p.name, p.axis) for p in mem.keys] == [(n.format(l=l), axis[w]) for n, w in keys]
        assert (mem.value.name, mem.value.axis) == (value[0].format(l=l), axis[value[1]])
        params = dict(model.named_parameters())
        assert all(p.param is params[p.name] for p in (*mem.keys, mem.value))


def test_unknown_architecture_is_a_clear_error():
    model = make_model("llama")
    model.config.model_type = "mystery"
    names = [f"model.layers.{l}.mlp.down_proj" for l in range(N_LAYERS)]
    with pytest.raises(ValueError, match="no known up projection.*up_names"):
        memory_parameters(model, names)
    # ... and told the modules, it works (here without a gate: only the up projection as keys)
    layers = memory_parameters(model, names, up_names=[f"model.layers.{l}.mlp.up_proj" for l in range(N_LAYERS)])
    assert [p.name for p in layers[1].keys] == ["model.layers.1.mlp.up_proj.weight"]


# ----------------------------------------------------------------------------- equal to autograd


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_attribution_equals_autograd_by_hand(family):
    model = model_of(family)
    batch = tokens()
    result = batch_attribution(model, batch)
    assert isinstance(result, BatchAttribution)
    key, value = by_hand(family, hand_grads(model, family, batch))
    close(result.key_grad, key)
    close(result.value_grad, value)
    assert result.loss == pytest.approx(float(model(input_ids=batch, labels=batch).loss.detach()))


def test_batch_attribution_with_padding_ignores_the_padded_targets():
    model = model_of("llama")
    batch = tokens()
    mask = torch.ones_like(batch)
    mask[0, 8:] = 0
    result = batch_attribution(model, batch, attention_mask=mask)
    labels = batch.masked_fill(mask == 0, -100)
    params = dict(model.named_parameters())
    names = names_of("llama")
    loss = model(input_ids=batch, attention_mask=mask, labels=labels).loss
    key, value = by_hand("llama", dict(zip(names, torch.autograd.grad(loss, [params[n] for n in names]))))
    close(result.key_grad, key)
    close(result.value_grad, value)
    assert not torch.allclose(result.key_grad, batch_attribution(model, batch).key_grad)


@pytest.mark.parametrize("family", FAMILIES)
def test_tracker_equals_autograd_over_three_sgd_steps(family):
    model = model_of(family)
    params = dict(model.named_parameters())
    names = names_of(family)
    start = {n: params[n].detach().clone() for n in names}
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    expected_key, expected_value = torch.zeros(N_LAYERS, D_FF, dtype=torch.float64), 0
    with UpdateTracker(model) as tracker:
        for step in range(3):
            batch = tokens(step)
            loss = model(input_ids=batch, labels=batch).loss
            grads = torch.autograd.grad(loss, [params[n] for n in names], retain_graph=True)
            key, value = by_hand(family, dict(zip(names, grads)))
            expected_key, expected_value = expected_key + key, expected_value + value
            loss.backward()
            for n, g in zip(names, grads):  # the hooks leave .grad as autograd computed it
                torch.testing.assert_close(params[n].grad, g)
            opt.step()
            opt.zero_grad(set_to_none=True)
        assert tracker.steps == 3
        close(tracker.key_grad, expected_key)
        close(tracker.value_grad, expected_value)
        key, value = by_hand(family, {n: params[n].detach().double() - start[n].double() for n in names})
        close(tracker.key_change, key)
        close(tracker.value_change, value)
    # frozen on exit: later updates do not count
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    close(tracker.key_change, key)
    close(tracker.value_change, value)


def test_key_change_survives_a_dtype_change_after_entry():
    """``model.float()`` on a bf16 model keeps the Parameter objects (and their hooks): the change is
    the fp32 weights now minus the bf16 weights at entry, in float64."""
    model = model_of("llama").to(torch.bfloat16)
    params = dict(model.named_parameters())
    names = names_of("llama")
    start = {n: params[n].detach().clone() for n in names}
    with UpdateTracker(model) as tracker:
        model.float()
        assert all(params[n] is p for n, p in model.named_parameters() if n in params)
        assert params[names[0]].dtype == torch.float32
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        for step in range(2):
            batch = tokens(step)
            model(input_ids=batch, labels=batch).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        assert tracker.steps == 2 and bool((tracker.key_grad > 0).all())
        key, value = by_hand("llama", {n: params[n].detach().double() - start[n].double() for n in names})
        close(tracker.key_change, key)
        close(tracker.value_change, value)


# ----------------------------------------------------------------------------- memory and hooks


def owned_tensors(tracker) -> list[torch.Tensor]:
    """Every tensor the tracker object refers to, outside the model and its parameters."""
    found: list[torch.Tensor] = []

    def walk(x):
        if isinstance(x, torch.nn.Parameter) or isinstance(x, torch.nn.Module):
            return
        if isinstance(x, torch.Tensor):
            found.append(x)
        elif isinstance(x, (list, tuple)):
            for y in x:
                walk(y)
        elif isinstance(x, dict):
            for y in x.values():
                walk(y)

    for name, value in vars(tracker).items():
        if name != "layers":  # the model's own parameters, by reference
            walk(value)
    return found


def test_tracker_memory_does_not_grow_with_steps():
    model = model_of("gpt2")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = {}
    with UpdateTracker(model) as tracker:
        for step in range(1, 21):
            batch = tokens(step)
            model(input_ids=batch, labels=batch).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            tracker.key_change  # computed on demand: nothing kept
            if step in (1, 20):
                held = owned_tensors(tracker)
                seen[step] = (len(held), sum(t.numel() * t.element_size() for t in held), tracker.nbytes)
        assert tracker.steps == 20
    assert seen[1] == seen[20]
    # two accumulators + one snapshot of each memory parameter, nothing else
    n_params = sum(len(m.keys) + 1 for m in tracker.layers)
    assert seen[1][0] == 2 + n_params
    mlp = sum(p.param.numel() * 4 for m in tracker.layers for p in (*m.keys, m.value))
    assert seen[1][1] == 2 * N_LAYERS * D_FF * 8 + mlp


def _backward(model, seed=0):
    batch = tokens(seed)
    model(input_ids=batch, labels=batch).loss.backward()


def test_hooks_are_removed_on_exit_and_do_not_change_gradients():
    model = model_of("llama")
    _backward(model)
    reference = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    with UpdateTracker(model) as tracker:
        assert hooks_left(model) == sum(len(m.keys) + 1 for m in tracker.layers)
        _backward(model)
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, reference[n]), n
    assert hooks_left(model) == 0
    before = tracker.key_grad.clone(), tracker.value_grad.clone()
    _backward(model, seed=1)
    assert tracker.steps == 1
    assert torch.equal(tracker.key_grad, before[0]) and torch.equal(tracker.value_grad, before[1])
    tracker.remove()  # idempotent
    tracker.remove()
    with pytest.raises(RuntimeError, match="used once"):
        tracker.__enter__()


def test_hooks_are_removed_after_an_exception_in_the_body():
    model = model_of("gpt2")
    with pytest.raises(KeyError, match="boom"):
        with UpdateTracker(model) as tracker:
            _backward(model)
            raise KeyError("boom")
    assert hooks_left(model) == 0 and not tracker.active
    assert tracker.steps == 1 and bool((tracker.key_grad > 0).all())
    before = tracker.key_grad.clone()
    model.zero_grad(set_to_none=True)
    _backward(model, seed=1)
    assert torch.equal(tracker.key_grad, before) and tracker.steps == 1


# ----------------------------------------------------------------------------- batch_attribution side effects


@pytest.mark.parametrize("training", [True, False])
def test_batch_attribution_leaves_grad_and_modes_alone(training):
    model = model_of("gpt2")  # dropout 0.1: train mode would add noise
    model.train(training)
    model.transformer.h[0].eval()  # a mixed state is restored submodule by submodule
    modes = {n: m.training for n, m in model.named_modules()}
    result = batch_attribution(model, tokens())
    assert all(p.grad is None for p in model.parameters())
    assert {n: m.training for n, m in model.named_modules()} == modes
    # evaluated in eval mode: deterministic, equal to the eval-mode hand computation
    model.eval()
    key, value = by_hand("gpt2", hand_grads(model, "gpt2", tokens()))
    close(result.key_grad, key)
    close(result.value_grad, value)


def test_batch_attribution_on_a_frozen_model_refreezes_it():
    reference = batch_attribution(model_of("opt"), tokens())
    model = model_of("opt").requires_grad_(False)
    result = batch_attribution(model, tokens())
    close(result.key_grad, reference.key_grad)
    close(result.value_grad, reference.value_grad)
    assert not any(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())


# ----------------------------------------------------------------------------- measures


def test_top_k_jaccard_by_hand():
    d_ff = 10
    a = torch.arange(d_ff, 0, -1, dtype=torch.float64).repeat(3, 1)  # top 3: {0, 1, 2}
    b = a.clone()
    b[0, 2], b[0, 3] = 0.5, 100.0  # top 3 {0, 1, 3}: overlap 2, union 4
    b[1] = torch.arange(d_ff, dtype=torch.float64)  # top 3 {7, 8, 9}: disjoint
    out = top_k_jaccard(a, b, fraction=0.3)  # k = ceil(3) = 3
    assert out.k == 3 and out.d_ff == d_ff
    assert out.jaccard.tolist() == [0.5, 0.0, 1.0]
    assert out.chance == pytest.approx(3 / 17)
    assert top_k_jaccard(a, b, fraction=0.25).k == 3  # ceil(2.5)
    assert top_k_jaccard(a, b, fraction=0.1).jaccard.tolist() == [0.0, 0.0, 1.0]  # k = 1: {0} vs {3}
    with pytest.raises(ValueError):
        top_k_jaccard(a, b[:, :5])


def test_chance_jaccard_by_hand_and_by_simulation():
    assert chance_jaccard(100, 10) == pytest.approx(10 / 190)
    # d_ff = 4, k = 2: overlap 0, 1, 2 with probabilities 1/6, 4/6, 1/6 -> Jaccard 0, 1/3, 1
    assert chance_jaccard(4, 2, exact=True) == pytest.approx(4 / 6 / 3 + 1 / 6)
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(4000, 50, generator=g), torch.rand(4000, 50, generator=g)
    out = top_k_jaccard(a, b, fraction=0.2)
    assert float(out.jaccard.mean()) == pytest.approx(chance_jaccard(50, 10, exact=True), abs=0.005)
    assert abs(chance_jaccard(50, 10, exact=True) - out.chance) < 0.02


def test_rank_agreement_by_hand():
    x = torch.tensor([[3.0, 1.0, 2.0, 5.0, 4.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    assert rank_agreement(x, x).tolist() == pytest.approx([1.0, 1.0])
    assert rank_agreement(x, -x).tolist() == pytest.approx([-1.0, -1.0])
    assert rank_agreement(x, x.flip(1))[1] == pytest.approx(-1.0)
    assert rank_agreement(x, x ** 3 + 7).tolist() == pytest.approx([1.0, 1.0])  # ranks only
    # [3,1,2,5,4] vs [1,2,3,4,5]: d = [2,-1,-1,1,-1], 1 - 6 * 8 / (5 * 24) = 0.6
    assert float(rank_agreement(x[:1], x[1:])[0]) == pytest.approx(0.6)
    assert math.isnan(float(rank_agreement(x, torch.ones_like(x))[0]))


def test_update_entropy_is_knowledge_entropy():
    mass = torch.rand(3, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out, ref = update_entropy(mass), knowledge_entropy(mass)
    assert out.total == ref.total and out.normalized == ref.normalized
    assert torch.equal(out.per_layer, ref.per_layer)
    assert update_entropy(torch.ones(2, 8)).normalized == pytest.approx(1.0)
    one_hot = torch.zeros(2, 8)
    one_hot[:, 3] = 5.0
    assert update_entropy(one_hot).total == 0.0
