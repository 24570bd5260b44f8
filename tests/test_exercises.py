"""The exercise checks pass the reference solutions and name the mistake of typical wrong ones."""

from __future__ import annotations

import copy

import pytest
import torch

from ke_utils.memory.entropy import coefficient_means, knowledge_entropy
from ke_utils.exercises import (check_acquisition, check_coefficient_means, check_forgetting, check_knowledge_entropy,
                                check_probe_score, check_reactivation)
from ke_utils.memory.reactivation import reactivate


def entropy_right(means):
    p = means / means.sum(-1, keepdim=True)
    return float(-(p * p.log()).sum())


def entropy_log2(means):
    p = means / means.sum(-1, keepdim=True)
    return float(-(p * p.log2()).sum())


def entropy_unnormalised(means):
    return float(-(means * means.log()).sum())


def entropy_per_layer(means):
    p = means / means.sum(-1, keepdim=True)
    return -(p * p.log()).sum(-1)


def entropy_normalised(means):
    return knowledge_entropy(means).normalized


@pytest.mark.parametrize("wrong, message", [
    (entropy_log2, "log base 2"), (entropy_unnormalised, "normalise each layer's means"),
    (entropy_per_layer, "one entropy per layer"), (entropy_normalised, "normalised by n_layers ln d_ff"),
    (lambda m: -entropy_right(m), "the sign"), (lambda m: entropy_right(m) + 0.01, "off by up to")])
def test_knowledge_entropy_check(wrong, message, capsys):
    check_knowledge_entropy(entropy_right)
    assert "knowledge entropy: matches the reference" in capsys.readouterr().out
    with pytest.raises(AssertionError, match=message):
        check_knowledge_entropy(wrong)


def _capture(model, batch):
    captured = {}
    handles = [layer.mlp.down_proj.register_forward_pre_hook(lambda m, a, i=i: captured.__setitem__(i, a[0].detach()))
               for i, layer in enumerate(model.model.layers)]
    with torch.no_grad():
        model.model(**batch)
    for h in handles:
        h.remove()
    return torch.stack([captured[i] for i in range(len(captured))]).double()  # [L, batch, seq, d_ff]


def means_right(model, batch):
    c, mask = _capture(model, batch), batch["attention_mask"].double()
    return (c.abs() * mask[None, :, :, None]).sum((1, 2)) / mask.sum()


def means_no_mask(model, batch):
    return _capture(model, batch).abs().mean((1, 2))


def means_signed(model, batch):
    c, mask = _capture(model, batch), batch["attention_mask"].double()
    return (c * mask[None, :, :, None]).sum((1, 2)) / mask.sum()


def means_output(model, batch):
    with torch.no_grad():
        out = model.model(**batch, output_hidden_states=True).hidden_states
    return torch.stack([h.abs().mean((0, 1)) for h in out[1:]]).double()  # d_model wide, like down_proj's output


@pytest.mark.parametrize("wrong, message", [
    (means_no_mask, "padding counted"), (means_signed, "signed coefficients"),
    (means_output, "the model width, not d_ff")])
def test_coefficient_means_check(wrong, message, capsys):
    check_coefficient_means(means_right)
    check_coefficient_means(lambda model, batch: coefficient_means(model, [batch]))
    assert capsys.readouterr().out.count("coefficient means: matches") == 2
    with pytest.raises(AssertionError, match=message):
        check_coefficient_means(wrong)


def test_acquisition_and_forgetting_checks(capsys):
    check_acquisition(lambda before, after: (after - before) / abs(before))
    check_forgetting(lambda before, after: 1 - after / before)
    assert "acquisition: matches" in capsys.readouterr().out
    with pytest.raises(AssertionError, match=r"not \|K_before\|"):
        check_acquisition(lambda before, after: (after - before) / before)
    with pytest.raises(AssertionError, match="swapped"):
        check_acquisition(lambda before, after: (before - after) / abs(before))
    with pytest.raises(AssertionError, match="that is retention"):
        check_forgetting(lambda before, after: after / before)
    with pytest.raises(AssertionError, match="divided by P_after"):
        check_forgetting(lambda before, after: (before - after) / after)


def _scale(model, means, ratio, factor, projection="up_proj", most=False):
    model = copy.deepcopy(model)
    for layer, block in enumerate(model.model.layers):
        a = means[layer]
        k = int(round(ratio * len(a)))
        chosen = a.argsort(descending=most)[:k]
        scales = factor * a.mean() / a[chosen]
        weight = getattr(block.mlp, projection).weight
        with torch.no_grad():
            weight[chosen] = (weight[chosen].double() * scales[:, None]).to(weight.dtype)
    return model


def test_reactivation_check(capsys):
    check_reactivation(lambda model, means, ratio, factor: reactivate(model, means, ratio, factor)[0])
    check_reactivation(_scale)
    assert capsys.readouterr().out.count("reactivation: matches") == 2
    with pytest.raises(AssertionError, match="gate projection changed"):
        check_reactivation(lambda *args: _scale(*args, projection="gate_proj"))
    with pytest.raises(AssertionError, match="least used"):
        check_reactivation(lambda *args: _scale(*args, most=True))
    with pytest.raises(AssertionError, match="factors differ"):
        check_reactivation(lambda model, means, ratio, factor: _scale(model, means, ratio, factor * 1.5))
    with pytest.raises(AssertionError, match="work on a copy"):
        check_reactivation(lambda model, means, ratio, factor: reactivate(model, means, ratio, factor, inplace=True)[0])


def _target_logp(model, tokenizer, inp, tgt, shift=1):
    n_in = len(tokenizer(inp)["input_ids"])
    ids = tokenizer(f"{inp} {tgt}")["input_ids"]
    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0].log_softmax(-1)
    return torch.stack([logp[t - shift, ids[t]] for t in range(n_in, len(ids))])


@pytest.mark.parametrize("wrong, message", [
    (lambda *a: float(_target_logp(*a, shift=0).mean()), "off by one"),
    (lambda *a: float(_target_logp(*a).sum()), "summed over the target"),
    (lambda *a: float(_target_logp(*a).exp().mean()), "probabilities, not log")])
def test_probe_score_check(wrong, message, capsys):
    check_probe_score(lambda *a: float(_target_logp(*a).mean()))
    assert "probe score: matches" in capsys.readouterr().out
    with pytest.raises(AssertionError, match=message):
        check_probe_score(wrong)


def test_student_copies_are_in_sync_and_stubbed():
    """notebooks/exercises/ is what ke-exercises makes of the main notebooks,
    and there every solution is replaced by a NotImplementedError that carries the hint."""
    import nbformat

    from ke_utils.commands.exercise_notebooks import NOTEBOOKS, build

    assert build(check=True) == [], "run ke-exercises"
    copies = sorted((NOTEBOOKS / "exercises").glob("*.ipynb"))
    assert [p.name for p in copies] == ["01_what_is_knowledge_entropy.ipynb", "03_acquisition_and_retention.ipynb",
                                        "04_reactivation.ipynb"]
    for path in copies:
        cells = [c for c in nbformat.read(path, as_version=4).cells if "exercise" in c.metadata.get("tags", [])]
        assert cells and all("BEGIN SOLUTION" not in c.source and "NotImplementedError(" in c.source for c in cells)
        assert all(c.get("outputs", []) == [] for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")


def test_stub_solution():
    from ke_utils.commands.exercise_notebooks import stub_solution

    source = "def f(x):\n    ### BEGIN SOLUTION\n    ### HINT: double it\n    return 2 * x\n    ### END SOLUTION\n\ncheck(f)"
    stubbed = stub_solution(source)
    assert stubbed == "def f(x):\n    raise NotImplementedError('double it')\n\ncheck(f)"
    namespace = {}
    exec(stubbed.replace("check(f)", ""), namespace)
    with pytest.raises(NotImplementedError, match="double it"):
        namespace["f"](1)
    for bad in ("### BEGIN SOLUTION\nx = 1", "x = 1\n### END SOLUTION", "### BEGIN SOLUTION\nx = 1\n### END SOLUTION"):
        with pytest.raises(ValueError):
            stub_solution(bad)
