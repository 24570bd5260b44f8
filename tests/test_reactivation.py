"""Reactivation: exact scaling of the chosen coefficients, nothing else touched, controls, errors;
a model's weights kept in host memory and put back exactly."""

from __future__ import annotations

import pytest
import torch

from helpers import make_model
from ke_utils import coefficient_means, knowledge_entropy
from ke_utils.memory.hooks import capture_coefficients
from ke_utils.memory.reactivation import kept, measure_reactivation, reactivate, restore, snapshot, up_projection_names

GATED = ["llama", "olmo", "olmo2", "mistral", "qwen2", "gemma"]
NON_GATED = ["gpt_neox", "gpt2", "opt", "phi"]


def _batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 128, (3, 12), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _coefficients(model, batch) -> dict[int, torch.Tensor]:
    with torch.no_grad(), capture_coefficients(model) as captured:
        model(**batch)
    return dict(captured)


@pytest.mark.parametrize("family", GATED)
def test_gated_coefficients_scaled_exactly_and_nothing_else(family):
    model, batch = make_model(family), _batch()
    means = coefficient_means(model, [batch])
    before = _coefficients(model, batch)
    n_layers = means.shape[0]
    for layer in range(n_layers):
        modified, report = reactivate(model, means, ratio=0.3, factor=2.0, layers=[layer])
        assert report.exact
        after = _coefficients(modified, batch)
        for earlier in range(layer):  # layers before the modified one see identical inputs
            torch.testing.assert_close(after[earlier], before[earlier], rtol=0, atol=0)
        rows, scales = report.indices[layer], report.scales[layer]
        assert len(rows) == round(0.3 * means.shape[1]) and len(scales) == len(rows)
        expected = before[layer].clone()
        expected[..., rows] *= scales.float()
        torch.testing.assert_close(after[layer], expected, rtol=1e-5, atol=1e-6)
        # the scale lifts the chosen neurons to q * layer mean on the measurement data
        lifted = after[layer].abs().reshape(-1, means.shape[1]).double().mean(0)[rows]
        torch.testing.assert_close(lifted, torch.full_like(lifted, 2.0 * float(means[layer].mean())), rtol=1e-4, atol=0)
        # every parameter other than the chosen rows of this layer's up projection is unchanged
        changed = {n for n, p in modified.state_dict().items() if not torch.equal(p, model.state_dict()[n])}
        assert changed == {report.modules[layer] + ".weight"} | (
            {report.modules[layer] + ".bias"} if getattr(dict(model.named_modules())[report.modules[layer]], "bias", None)
            is not None else set())
        weight, orig = dict(modified.named_parameters())[report.modules[layer] + ".weight"], \
            dict(model.named_parameters())[report.modules[layer] + ".weight"]
        untouched = torch.ones(weight.shape[0], dtype=torch.bool)
        untouched[rows] = False
        assert torch.equal(weight[untouched], orig[untouched])


@pytest.mark.parametrize("family", GATED + ["opt"])
def test_ke_rises_for_q_1(family):
    model, batch = make_model(family), _batch(1)
    modified, report = measure_reactivation(model, [batch], ratio=0.5, factor=1.0)
    if family != "opt":  # a random ReLU model has nearly dead neurons: factors in the thousands
        assert report.ke_after > report.ke_before  # distort the next layer (see report.notes)
    else:
        assert any("very large" in note for note in report.notes)
    # the first layer sees unchanged inputs, so its least-used half sits exactly at the layer mean
    first = coefficient_means(modified, [batch])[0]
    means = coefficient_means(model, [batch])[0]
    assert knowledge_entropy(first[None]).total > knowledge_entropy(means[None]).total
    torch.testing.assert_close(first[report.indices[0]], torch.full((len(report.indices[0]),), float(means.mean()),
                                                                     dtype=torch.float64), rtol=1e-4, atol=0)
    # the report keeps the means its KE values come from: those of the model and of the copy
    torch.testing.assert_close(report.means_before, coefficient_means(model, [batch]))
    torch.testing.assert_close(report.means_after, coefficient_means(modified, [batch]))
    assert report.ke_after == knowledge_entropy(report.means_after).total


@pytest.mark.parametrize("family", ["llama", "opt"])  # gated; non-gated ReLU
def test_preserve_function_changes_knowledge_entropy_but_not_the_logits(family):
    """q = 1, p = 0.5 with ``preserve_function=True``: the logits stay (float32 rounding), KE rises
    by a clear amount, and every layer's means are the old ones with the chosen neurons' multiplied
    by their factors (later layers see the same inputs). Without it the logits move."""
    model, batch = make_model(family), _batch(1)
    modified, report = measure_reactivation(model, [batch], ratio=0.5, factor=1.0, preserve_function=True)
    plain, _ = reactivate(model, report.means_before, 0.5, 1.0)
    with torch.no_grad():
        logits, kept_logits, moved = (m(**batch).logits for m in (model, modified, plain))
    assert report.preserve_function
    torch.testing.assert_close(kept_logits, logits, rtol=0, atol=1e-5)
    assert float((moved - logits).abs().max()) > 1e-2
    assert report.ke_after > report.ke_before + 0.03
    expected = report.means_before.clone()
    for layer, (rows, scales) in enumerate(zip(report.indices, report.scales)):
        expected[layer, rows] *= scales
    torch.testing.assert_close(report.means_after, expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("family", NON_GATED)
def test_non_gated_is_flagged_approximate_unless_relu(family):
    model, batch = make_model(family), _batch()
    means = coefficient_means(model, [batch])
    if family == "opt":  # ReLU: positively homogeneous, scaling the input row is exact
        _, report = reactivate(model, means, 0.3, 2.0)
        assert report.exact
    else:
        with pytest.warns(UserWarning, match="approximately"):
            _, report = reactivate(model, means, 0.3, 2.0)
        assert not report.exact
    assert [len(i) for i in report.indices] == [round(0.3 * means.shape[1])] * means.shape[0]


def test_p_zero_changes_nothing_and_inplace_switch():
    model = make_model("llama")
    means = coefficient_means(model, [_batch()])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    copy, report = reactivate(model, means, ratio=0.0, factor=3.0)
    assert copy is not model and all(len(i) == 0 for i in report.indices)
    assert all(torch.equal(copy.state_dict()[k], v) for k, v in state.items())
    same, _ = reactivate(model, means, ratio=0.5, factor=2.0)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())  # not in place by default
    assert same is not model
    inplace, _ = reactivate(model, means, ratio=0.5, factor=2.0, inplace=True)
    assert inplace is model and any(not torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_controls_use_the_same_factors_on_other_neurons():
    """Means 1..64 in a shuffled order per layer (mean 32.5): with p = 0.25 and q = 2 the method
    scales the 16 neurons of means 1..16 by 2 * 32.5 / a_j; "most" puts the same factors on the
    neurons of means 64..49 (65 on the most used), "random" on 16 neurons that are not the least used."""
    model = make_model("llama")
    g = torch.Generator().manual_seed(0)
    means = torch.stack([torch.randperm(64, generator=g) + 1.0 for _ in range(2)]).double()
    factors = torch.tensor([65.0 / v for v in range(1, 17)], dtype=torch.float64)  # largest first
    expected_rows = {"least": [[means[l].tolist().index(v) for v in range(1, 17)] for l in range(2)],
                     "most": [[means[l].tolist().index(v) for v in range(64, 48, -1)] for l in range(2)]}
    for select in ("least", "most", "random"):
        modified, report = reactivate(model, means, 0.25, 2.0, select=select, seed=3)
        assert report.per_layer["touched"].tolist() == [16, 16]
        changed = {n for n, p in modified.state_dict().items() if not torch.equal(p, model.state_dict()[n])}
        assert changed == {f"model.layers.{l}.mlp.up_proj.weight" for l in range(2)}
        for l in range(2):
            rows, scales = report.indices[l], report.scales[l]
            torch.testing.assert_close(scales, factors)
            if select == "random":
                assert len(set(rows.tolist())) == 16 and set(rows.tolist()) != set(expected_rows["least"][l])
            else:
                assert rows.tolist() == expected_rows[select][l]
            old = model.model.layers[l].mlp.up_proj.weight
            new = modified.model.layers[l].mlp.up_proj.weight
            untouched = torch.ones(64, dtype=torch.bool)
            untouched[rows] = False
            assert torch.equal(new[untouched], old[untouched])
            torch.testing.assert_close(new[rows], old[rows] * scales[:, None].float(), rtol=1e-6, atol=0)
    drawn = [reactivate(model, means, 0.25, 2.0, select="random", seed=s)[1].indices[0] for s in (3, 3, 4)]
    assert torch.equal(drawn[0], drawn[1]) and not torch.equal(drawn[0], drawn[2])  # the seed decides


@pytest.mark.parametrize("kwargs, match", [
    (dict(ratio=-0.1, factor=1.0), "ratio"), (dict(ratio=1.5, factor=1.0), "ratio"),
    (dict(ratio=0.5, factor=0.0), "factor"), (dict(ratio=0.5, factor=float("nan")), "factor"),
    (dict(ratio=0.5, factor=1.0, select="biggest"), "select"),
])
def test_bad_arguments_are_clear_errors(kwargs, match):
    model = make_model("llama")
    means = coefficient_means(model, [_batch()])
    with pytest.raises(ValueError, match=match):
        reactivate(model, means, **kwargs)


def test_wrong_means_shape_and_unknown_architecture():
    model = make_model("llama")
    with pytest.raises(ValueError, match="n_layers"):
        reactivate(model, torch.ones(5, 64), 0.5, 1.0)
    bert = make_model("bert")
    assert up_projection_names(bert)[0].endswith("layer.0.intermediate.dense")
    model.config.model_type = "mystery"
    with pytest.raises(ValueError, match="up_names"):
        reactivate(model, torch.ones(2, 64), 0.5, 1.0)


def _state(model) -> dict[str, torch.Tensor]:
    return {name: t.clone() for name, t in model.state_dict().items()}


def _same(model, state: dict[str, torch.Tensor]) -> bool:
    """Same names, dtypes and values."""
    now = model.state_dict()
    return now.keys() == state.keys() and all(now[k].dtype == v.dtype and torch.equal(now[k], v) for k, v in state.items())


@pytest.mark.parametrize("family", ["gemma", "opt"])  # both tie their embeddings
def test_restore_brings_back_values_dtypes_and_tied_weights(family):
    """A bf16 model reactivated in place, cast to fp32 and trained (what a variant run does) comes
    back from its host snapshot exactly, twice: restoring hands out a copy, so the next run does
    not write into the snapshot; tied weights stay one parameter."""
    model = make_model(family).to(torch.bfloat16)
    state, saved = _state(model), snapshot(model)
    assert all(t.device.type == "cpu" for t in saved.values())
    for _ in range(2):
        reactivate(model, coefficient_means(model, [_batch()]), 0.5, 3.0, inplace=True)
        model.float()
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        model(**_batch(), labels=_batch()["input_ids"]).loss.backward()
        opt.step()
        assert not _same(model, state)
        restore(model, saved)
        assert _same(model, state)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_kept_gives_back_the_memory_vectors_preserve_function_changed():
    model = make_model("opt")
    state = _state(model)
    with kept(model):
        reactivate(model, coefficient_means(model, [_batch()]), 0.5, 3.0, inplace=True, preserve_function=True)
        assert not torch.equal(model.model.decoder.layers[0].fc2.weight, state["model.decoder.layers.0.fc2.weight"])
    assert _same(model, state)


def test_kept_gives_the_model_back_after_an_exception_too():
    """Values, dtypes and every submodule's mode, as they came in."""
    model = make_model("llama").to(torch.bfloat16)
    model.model.layers[0].train()
    state, modes = _state(model), {name: m.training for name, m in model.named_modules()}
    with pytest.raises(RuntimeError, match="mid-run"):
        with kept(model):
            reactivate(model.float().train(), coefficient_means(model, [_batch()]), 0.5, 3.0, inplace=True)
            raise RuntimeError("mid-run")
    assert _same(model, state)
    assert {name: m.training for name, m in model.named_modules()} == modes
