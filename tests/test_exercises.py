"""The exercise checks pass the reference solutions and name the mistake of typical wrong ones."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from scipy import stats

from ke_utils.memory.entropy import coefficient_means, knowledge_entropy
from ke_utils.exercises import (check_acquisition, check_chance_jaccard, check_coefficient_means, check_forgetting,
                                check_ke_trend, check_knowledge_entropy, check_lr_jump, check_or_fallback,
                                check_probe_score, check_reactivation, check_top_k_jaccard)
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



def trend(steps, ke, start=0, method=stats.spearmanr, trained_only=True):
    peak = int(np.argmax(np.where(steps > 0, ke, -np.inf) if trained_only else ke))
    return float(method(steps[peak + start:], ke[peak + start:]).statistic)


@pytest.mark.parametrize("wrong, message", [
    (lambda s, k: trend(s, k, trained_only=False), "step 0 taken as the peak"),
    (lambda s, k: trend(s, k, method=stats.pearsonr), "Pearson, not Spearman"),
    (lambda s, k: trend(s, k, start=1), "started after the peak"),
    (lambda s, k: -trend(s, k), "the sign"),
    (lambda s, k: float(stats.spearmanr(s[int(np.argmax(np.where(s > 0, k, -np.inf))):],
                                        k[int(np.argmax(np.where(s > 0, k, -np.inf))):]).pvalue), "returned the p-value")])
def test_ke_trend_check(wrong, message, capsys):
    check_ke_trend(trend)
    check_ke_trend(check_ke_trend.reference)
    assert capsys.readouterr().out.count("KE trend after the peak: matches") == 2
    with pytest.raises(AssertionError, match=message):
        check_ke_trend(wrong)


def jump(step, peak, warmup, total, continued, final=0.1, warm=True, cap=True, shift=True, cosine=True):
    if warm and step < warmup:
        own = peak * step / warmup
    else:
        start = warmup if shift else 0
        progress = ((min(step, total) if cap else step) - start) / (total - start)
        own = peak * (final + (1 - final) * (0.5 * (1 + math.cos(math.pi * progress)) if cosine else 1 - progress))
    return continued / own


@pytest.mark.parametrize("wrong, message", [
    (lambda s, p, w, t, c: 1 / jump(s, p, w, t, c), "inverted"),
    (lambda s, p, w, t, c: c / p, "divided by the pretraining peak"),
    (lambda *a: jump(*a, final=0.0) if a[0] < a[3] else 1.0, "cosine down to 0"),
    (lambda *a: jump(*a, shift=False), "the cosine starts after the warmup"),
    (lambda *a: jump(*a, warm=False), "the warmup: before"),
    (lambda *a: jump(*a, cap=False), "past `total`"),
    (lambda *a: jump(*a, cosine=False), "a linear decay")])
def test_lr_jump_check(wrong, message, capsys):
    check_lr_jump(jump)
    assert "LR jump: matches" in capsys.readouterr().out
    with pytest.raises(AssertionError, match=message):
        check_lr_jump(wrong)


def jaccard(a, b, fraction, rounding=math.ceil, largest=True, union=True):
    k = rounding(fraction * a.shape[1])
    out = []
    for x, y in zip(a, b):
        top_x, top_y = set(x.topk(k, largest=largest).indices.tolist()), set(y.topk(k, largest=largest).indices.tolist())
        out.append(len(top_x & top_y) / (len(top_x | top_y) if union else k))
    return torch.tensor(out)


@pytest.mark.parametrize("wrong, message", [
    (lambda *a: jaccard(*a, rounding=math.floor), "k rounded down"),
    (lambda *a: jaccard(*a, union=False), "the overlap's share of k"),
    (lambda a, b, f: jaccard(a, b, f, union=False) / 2, "divided by 2k"),
    (lambda *a: jaccard(*a, largest=False), "the smallest k"),
    (lambda *a: jaccard(*a).mean(), "averaged over the layers"),
    (lambda *a: jaccard(*a)[:1], "returned shape")])
def test_top_k_jaccard_check(wrong, message, capsys):
    check_top_k_jaccard(jaccard)
    assert "top-k Jaccard: matches" in capsys.readouterr().out
    with pytest.raises(AssertionError, match=message):
        check_top_k_jaccard(wrong)


@pytest.mark.parametrize("wrong, message", [
    (lambda d_ff, k: k / d_ff, "k / d_ff is the expected overlap's share"), (lambda d_ff, k: k * k / d_ff, "k\\^2 / d_ff"),
    (lambda d_ff, k: k / (2 * d_ff), "divided by 2k"),
    (lambda d_ff, k: check_chance_jaccard.reference(d_ff, k, exact=True), "the exact expectation")])
def test_chance_jaccard_check(wrong, message, capsys):
    check_chance_jaccard(lambda d_ff, k: k / (2 * d_ff - k))
    assert "chance Jaccard: matches" in capsys.readouterr().out
    with pytest.raises(AssertionError, match=message):
        check_chance_jaccard(wrong)


def stub(*args):
    raise NotImplementedError("write it")


def test_check_or_fallback(capsys, monkeypatch):
    """A finished exercise is checked and kept, a wrong one fails, an unfinished one says so and
    gives the package's implementation, except under nbgrader, where it fails."""
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    mine = lambda before, after: (after - before) / abs(before)
    assert check_or_fallback(check_acquisition, mine) is mine
    with pytest.raises(AssertionError, match="swapped"):
        check_or_fallback(check_acquisition, lambda before, after: (before - after) / abs(before))
    capsys.readouterr()
    fallback = check_or_fallback(check_acquisition, stub)
    assert "exercise not done yet: using ke_utils' implementation" in capsys.readouterr().out
    check_acquisition(fallback)
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    with pytest.raises(NotImplementedError, match="write it"):
        check_or_fallback(check_acquisition, stub)


@pytest.mark.parametrize("check", [check_knowledge_entropy, check_acquisition, check_forgetting, check_ke_trend,
                                   check_lr_jump, check_top_k_jaccard, check_chance_jaccard, check_coefficient_means,
                                   check_reactivation, check_probe_score])
def test_every_reference_passes_its_check(check, capsys):
    check(check.reference)
    assert "matches the reference" in capsys.readouterr().out


def test_student_copies_are_in_sync_and_stubbed():
    """notebooks/exercises/ is what ke-exercises makes of the main notebooks, every exercise has its graded
    check cell, and in the copies every solution is replaced by a NotImplementedError that carries the hint:
    no line of a solution is left anywhere in a student copy."""
    import nbformat

    from ke_utils.commands.exercise_notebooks import BEGIN, END, NOTEBOOKS, build, grading_pairs, problems

    assert problems() == []
    assert build(check=True) == [], "run ke-exercises"
    copies = sorted((NOTEBOOKS / "exercises").glob("*.ipynb"))
    assert [p.name for p in copies] == sorted(p.name for p in NOTEBOOKS.glob("0[1-6]_*.ipynb"))
    for path in copies:
        student = nbformat.read(path, as_version=4)
        pairs, _ = grading_pairs(student)
        assert pairs and all("BEGIN SOLUTION" not in c.source and "NotImplementedError(" in c.source for c, _ in pairs)
        assert all(c.get("outputs", []) == [] for c in student.cells if c.cell_type == "code")
        text = "\n".join(c.source for c in student.cells)
        for exercise, _ in grading_pairs(nbformat.read(NOTEBOOKS / path.name, as_version=4))[0]:
            lines = exercise.source.split("\n")
            solution = lines[lines.index(next(l for l in lines if l.strip() == BEGIN)) + 2:]
            solution = [l.strip() for l in solution[: [l.strip() for l in solution].index(END)]]
            assert not [l for l in solution if len(l) > 12 and l in text], (path.name, exercise.id)


def _exercise_notebook(check: bool = True) -> str:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    solution = new_code_cell("def f(x):\n    ### BEGIN SOLUTION\n    ### HINT: double it\n    return 2 * x\n    ### END SOLUTION",
                             id="ex-double", metadata={"tags": ["exercise"]})
    cells = [solution] + ([new_code_cell("f = check_or_fallback(check_double, f)", id="ex-double-check")] if check else [])
    return nbformat.writes(new_notebook(cells=cells))


def test_ke_exercises_adds_and_checks_nbgrader_metadata(tmp_path, monkeypatch):
    """--check fails while the nbgrader metadata is missing (ke-exercises writes it: solution cell and a
    one-point locked test cell) and always fails for an exercise without its check cell."""
    import nbformat

    from ke_utils.commands import exercise_notebooks as ex

    monkeypatch.setattr(ex, "NOTEBOOKS", tmp_path)
    (tmp_path / "01_a.ipynb").write_text(_exercise_notebook(), encoding="utf-8")
    assert ex.build(tmp_path, check=True) == ["01_a.ipynb: nbgrader metadata of ex-double, ex-double-check",
                                              "01_a.ipynb: student copy"]
    with pytest.raises(SystemExit):
        ex.main(["--check"])
    ex.main([])
    ex.main(["--check"])
    cells = {c.id: c for c in nbformat.read(tmp_path / "01_a.ipynb", as_version=4).cells}
    assert cells["ex-double"].metadata.nbgrader == {"grade": False, "grade_id": "ex-double", "locked": False,
                                                    "schema_version": 3, "solution": True, "task": False}
    assert cells["ex-double-check"].metadata.nbgrader == {"grade": True, "grade_id": "ex-double-check", "locked": True,
                                                          "points": 1, "schema_version": 3, "solution": False,
                                                          "task": False}
    (tmp_path / "02_b.ipynb").write_text(_exercise_notebook(check=False), encoding="utf-8")
    assert ex.problems(tmp_path) == ["02_b.ipynb: exercise cell 'ex-double' has no check cell with id 'ex-double-check'"]
    with pytest.raises(SystemExit):
        ex.main([])


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
