"""Checks for the exercises: each takes the student's function, compares it with the package's own
implementation on fresh random inputs, and raises an AssertionError that names the mistake (or
prints one line when the function is right). In the style of ARENA's exercise checks.

    from ke_utils.exercises import check_knowledge_entropy
    check_knowledge_entropy(my_knowledge_entropy)   # fn(means [n_layers, d_ff]) -> KE in nats

Each check carries the package's implementation with the student's signature (``check.reference``);
:func:`check_or_fallback` runs a check and, while the exercise is not done (its stub raises
``NotImplementedError``), says so and returns that implementation, so the notebook goes on.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch
from scipy import stats

from .checkpoint_sweep import trend_after_peak
from .memory.attribution import chance_jaccard, top_k_jaccard
from .memory.entropy import coefficient_means, knowledge_entropy
from .memory.hooks import capture_coefficients
from .outcomes import acquisition, forgetting
from .probes import encode_pairs, score_pairs
from .memory.reactivation import reactivate, up_projection_names
from .training import lr_jump

F = TypeVar("F", bound=Callable)


def _close(value, expected, rtol: float = 1e-4) -> bool:
    value, expected = torch.as_tensor(value, dtype=torch.float64), torch.as_tensor(expected, dtype=torch.float64)
    return value.shape == expected.shape and bool(torch.allclose(value, expected, rtol=rtol, atol=1e-8))


def _diagnose(value, expected, suspects: dict[str, object], what: str) -> None:
    """Raise naming the first suspect (a known mistake's result) that ``value`` matches."""
    if _close(value, expected):
        return
    for mistake, result in suspects.items():
        if _close(value, result):
            raise AssertionError(f"{what}: {mistake}")
    value_t, expected_t = torch.as_tensor(value, dtype=torch.float64), torch.as_tensor(expected, dtype=torch.float64)
    if value_t.shape != expected_t.shape:
        raise AssertionError(f"{what}: returned shape {tuple(value_t.shape)}, expected {tuple(expected_t.shape)}")
    raise AssertionError(f"{what}: off by up to {float((value_t - expected_t).abs().max()):.3g} "
                         f"(expected e.g. {expected_t.flatten()[0].item():.6g}, got {value_t.flatten()[0].item():.6g})")


def _ok(name: str, cases: int) -> None:
    print(f"\N{CHECK MARK} {name}: matches the reference on {cases} random cases")


def _reference(implementation: Callable) -> Callable[[F], F]:
    """Attach ``implementation`` (the package's, with the exercise's signature) to a check."""
    def attach(check: F) -> F:
        check.reference = implementation
        return check
    return attach


def check_or_fallback(check: Callable[[Callable], None], fn: Callable) -> Callable:
    """Run ``check(fn)`` and return ``fn``; if ``fn`` is still a stub (raises ``NotImplementedError``),
    say so and return the package's implementation (``check.reference``) so the notebook goes on.
    Under nbgrader (``NBGRADER_EXECUTION`` set: autograde, validate) an unfinished exercise fails."""
    try:
        check(fn)
    except NotImplementedError:
        if os.environ.get("NBGRADER_EXECUTION"):
            raise
        print(f"exercise not done yet: using ke_utils' implementation ({check.__name__} checks it)")
        return check.reference
    return fn


@_reference(lambda means: knowledge_entropy(means).total)
def check_knowledge_entropy(fn: Callable[[torch.Tensor], float], cases: int = 4) -> None:
    """``fn(means)``: mean ``|c|`` ``[n_layers, d_ff]`` -> total knowledge entropy in nats (sum over
    layers of the entropy of each layer's means normalised to a distribution)."""
    gen = torch.Generator().manual_seed(1234)
    for case in range(cases):
        n_layers, d_ff = 2 + case, 16 * (case + 1)
        means = torch.distributions.Gamma(0.5, 1.0).sample((n_layers, d_ff)).double() + 1e-6
        means = means[torch.randperm(n_layers, generator=gen)]
        ke = knowledge_entropy(means)
        p = means / means.sum(-1, keepdim=True)
        suspects = {
            "log base 2 instead of the natural log (nats)": ke.total / math.log(2),
            "normalised by n_layers ln d_ff: return the total in nats": ke.normalized,
            "returned one entropy per layer: sum them": ke.per_layer,
            "averaged the layers: knowledge entropy is their sum": ke.total / n_layers,
            "the sign: entropy is -sum p ln p, positive": -ke.total,
            "normalise each layer's means to sum to 1 before the entropy": float(-(means * means.log()).sum()),
            "normalised over all layers at once: each layer is its own distribution":
                float(-(means / means.sum() * (means / means.sum()).log()).sum()),
            "the log of the means instead of p": float(-(p * means.log()).sum()),
        }
        _diagnose(fn(means.clone()), ke.total, suspects, f"knowledge entropy ({n_layers} layers x {d_ff})")
    _ok("knowledge entropy", cases)


def _tiny_llama(seed: int, n_layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=n_layers,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32, pad_token_id=0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _padded_batch(gen: torch.Generator, lengths: list[int]) -> dict[str, torch.Tensor]:
    ids = torch.randint(1, 64, (len(lengths), max(lengths)), generator=gen)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    return {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask}


@_reference(lambda model, batch: coefficient_means(model, [batch]))
def check_coefficient_means(fn: Callable[[object, dict], torch.Tensor], cases: int = 3) -> None:
    """``fn(model, batch)``: a Llama-style model and one right-padded batch (``input_ids``,
    ``attention_mask``) -> mean ``|c|`` per layer and memory neuron ``[n_layers, d_ff]`` over the
    real tokens, ``c`` being the input of each layer's ``mlp.down_proj``."""
    gen = torch.Generator().manual_seed(99)
    for case in range(cases):
        model = _tiny_llama(case, n_layers=2 + case % 2)
        batch = _padded_batch(gen, [9, 5, 3][: 2 + case % 2] if case else [7, 4])
        expected = coefficient_means(model, [batch])
        suspects = {}
        with torch.no_grad(), capture_coefficients(model) as captured:
            model.model(**batch)
        c = torch.stack([captured[i].double() for i in range(len(captured))])  # [L, batch, seq, d_ff]
        mask = batch["attention_mask"].double()
        real = mask.sum()
        suspects["padding counted: average over the real tokens only (attention_mask == 1)"] = c.abs().mean((1, 2))
        suspects["signed coefficients: average |c|, not c"] = (c * mask[None, :, :, None]).sum((1, 2)) / real
        suspects["summed, not averaged: divide by the number of real tokens"] = (c.abs() * mask[None, :, :, None]).sum((1, 2))
        per_doc = (c.abs() * mask[None, :, :, None]).sum(2) / mask.sum(1)[None, :, None]
        suspects["averaged per document first (the 'document' weighting): average over all real tokens"] = per_doc.mean(1)
        value = fn(model, {k: v.clone() for k, v in batch.items()})
        if torch.as_tensor(value).shape[-1] == model.config.hidden_size:
            raise AssertionError("coefficient means: the last dimension is the model width, not d_ff: c is the *input* of "
                                 "down_proj (a forward pre-hook), not its output")
        _diagnose(value, expected, suspects, f"coefficient means (case {case})")
    _ok("coefficient means", cases)


@_reference(acquisition)
def check_acquisition(fn: Callable[[float, float], float]) -> None:
    """``fn(before, after)``: the study's acquisition ``(K_after - K_before) / |K_before|`` for
    log-probability scores K (negative numbers)."""
    for before, after in ((0.5, 1.0), (-4.0, -3.0), (-2.5, -2.75), (-6.0, -1.5)):
        suspects = {"divided by K_before, not |K_before|: log-probabilities are negative": (after - before) / before,
                    "before and after swapped": (before - after) / abs(before),
                    "divided by |K_after|: the study divides by where the run started": (after - before) / abs(after),
                    "not divided: that is the gain in nats, A is relative": after - before}
        _diagnose(fn(before, after), acquisition(before, after), suspects, f"acquisition({before}, {after})")
    _ok("acquisition", 4)


@_reference(forgetting)
def check_forgetting(fn: Callable[[float, float], float]) -> None:
    """``fn(before, after)``: the study's forgetting ``(P_before - P_after) / P_before`` for a score
    P where higher is better (accuracy, exact match)."""
    for before, after in ((0.8, 0.6), (0.5, 0.55), (0.9, 0.3)):
        suspects = {"that is retention, P_after / P_before: forgetting is 1 minus it": after / before,
                    "before and after swapped": (after - before) / before,
                    "divided by P_after: the study divides by P_before": (before - after) / after,
                    "not divided: F is relative to P_before": before - after}
        _diagnose(fn(before, after), forgetting(before, after), suspects, f"forgetting({before}, {after})")
    _ok("forgetting", 3)


@_reference(lambda model, means, ratio, factor: reactivate(model, means, ratio, factor)[0])
def check_reactivation(fn: Callable[[object, torch.Tensor, float, float], object], cases: int = 2) -> None:
    """``fn(model, means, ratio, factor)``: a reactivated *copy* of a Llama-style model: in every
    layer, the fraction ``ratio`` of neurons with the lowest ``means[l]`` get row j of
    ``mlp.up_proj`` multiplied by ``factor * mean(means[l]) / means[l, j]``."""
    gen = torch.Generator().manual_seed(7)
    for case in range(cases):
        model = _tiny_llama(10 + case)
        means = torch.rand(model.config.num_hidden_layers, model.config.intermediate_size, generator=gen).double() + 0.05
        ratio, factor = (0.5, 2.0) if case == 0 else (0.25, 1.0)
        before = copy.deepcopy(model.state_dict())
        result = fn(model, means.clone(), ratio, factor)
        changed = [name for name, tensor in model.state_dict().items() if not torch.equal(tensor, before[name])]
        if changed:
            raise AssertionError(f"reactivation modified the model it was given ({changed[0]}, ...): work on a copy")
        expected, _ = reactivate(model, means, ratio, factor)
        ups = up_projection_names(model)
        got, want = dict(result.named_modules()), dict(expected.named_modules())
        for layer, name in enumerate(ups):
            gate = name.replace("up_proj", "gate_proj")
            if not torch.equal(got[gate].weight, want[gate].weight):
                raise AssertionError(f"layer {layer}: the gate projection changed: scale the up projection (c = act(gate x) "
                                     "* up x is linear in up x only, so only there does the factor reach c exactly)")
            mine_w, want_w = got[name].weight.detach().double(), want[name].weight.detach().double()
            diff = (mine_w / want_w - 1).abs().max(dim=1).values
            if bool((diff < 1e-5).all()):
                continue
            start = before[f"{name}.weight"].double()
            mine, ref = (mine_w != start).any(1), (want_w != start).any(1)
            if mine.sum() == ref.sum() and not torch.equal(mine, ref):
                raise AssertionError(f"layer {layer}: other neurons were scaled than the {ratio:.0%} least used (lowest means)")
            raise AssertionError(f"layer {layer}: the factors differ: row j of up_proj gets factor * mean(means[l]) / "
                                 f"means[l, j] (max relative difference {float(diff.max()):.3g})")
    _ok("reactivation", cases)


SENTENCES = ["Zorbu Kal was born in Vemra.", "The market of Vemra opens at dawn.", "Kal works for Shaeth Foundry.",
             "Vemra lies on the river Tasse."]


def _tiny_tokenizer():
    """A byte-level BPE trained in memory on :data:`SENTENCES` (no files, no network)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(SENTENCES * 10, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<eos>"],
                                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                                show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


@_reference(lambda model, tokenizer, input, target:
            float(score_pairs(model, tokenizer, [input], [target])["logprob"].iloc[0]))
def check_probe_score(fn: Callable[[object, object, str, str], float]) -> None:
    """``fn(model, tokenizer, input, target)``: the probe score, the mean over the target's tokens of
    their log-probability (nats) given everything before them, for ``input + " " + target``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _tiny_tokenizer()
    torch.manual_seed(3)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=64)).eval()
    pairs = [("Zorbu Kal was born in", "Vemra."), ("Kal works for", "Shaeth Foundry."), ("Vemra lies on the", "river Tasse.")]
    for inp, tgt in pairs:
        expected = float(score_pairs(model, tokenizer, [inp], [tgt])["logprob"].iloc[0])
        ids, n_in = encode_pairs(tokenizer, [inp], [tgt])[0]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].double()
        logp, target = logits.log_softmax(-1), torch.tensor(ids[n_in:])
        shifted = logp[n_in - 1 : len(ids) - 1].gather(-1, target[:, None]).squeeze(-1)
        suspects = {
            "off by one: the token at position t is predicted by the logits at t - 1":
                float(logp[n_in:].gather(-1, target[:, None]).mean()),
            "summed over the target's tokens: the score is their mean": float(shifted.sum()),
            "averaged over the input's tokens too: score the target's only":
                float(logp[:-1].gather(-1, torch.tensor(ids[1:])[:, None]).mean()),
            "raw logits: take log_softmax first": float(logits[n_in - 1 : len(ids) - 1].gather(-1, target[:, None]).mean()),
            "probabilities, not log-probabilities": float(shifted.exp().mean()),
        }
        _diagnose(fn(model, tokenizer, inp, tgt), expected, suspects, f"probe score of {inp!r} -> {tgt!r}")
    _ok("probe score", len(pairs))


def _ke_curve(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Steps from 0 and a KE curve like a sweep's: the highest at step 0 (random initialisation),
    an abrupt drop, a rise to a trained peak, then a noisy decline."""
    steps = np.concatenate([[0], np.cumsum(rng.integers(5, 60, n - 1))])
    peak = int(rng.integers(2, n - 4))
    rise = np.sort(rng.uniform(8.0, 8.6, peak))
    decline = 8.6 - np.cumsum(rng.uniform(0.0, 0.06, n - 1 - peak)) + rng.normal(0, 0.04, n - 1 - peak)
    return steps, np.concatenate([[9.0], rise, np.minimum(decline, 8.599)])


@_reference(lambda steps, ke: trend_after_peak(steps, ke).r)
def check_ke_trend(fn: Callable[[np.ndarray, np.ndarray], float], cases: int = 4) -> None:
    """``fn(steps, ke)``: checkpoints' steps (in order, the first 0) and knowledge entropies -> the
    Spearman correlation of KE with step from the highest KE of a trained checkpoint (step > 0) on,
    that peak included."""
    rng = np.random.default_rng(2024)
    for case in range(cases):
        steps, ke = _ke_curve(rng, 9 + 3 * case)
        expected = trend_after_peak(steps, ke)
        peak = len(steps) - expected.n
        after = (steps[peak:], ke[peak:])
        suspects = {
            "all checkpoints, or step 0 taken as the peak: the trend starts at the highest KE of a trained checkpoint (step > 0)":
                stats.spearmanr(steps, ke).statistic,
            "Pearson, not Spearman: the trend is a rank correlation": stats.pearsonr(*after).statistic,
            "started after the peak: the peak is the trend's first point": stats.spearmanr(steps[peak + 1:], ke[peak + 1:]).statistic,
            "the sign: Spearman(step, KE) is negative when KE declines": -expected.r,
            "returned the p-value: return the correlation": stats.spearmanr(*after).pvalue,
        }
        _diagnose(fn(steps.copy(), ke.copy()), expected.r, suspects, f"KE trend after the peak ({len(steps)} checkpoints)")
    _ok("KE trend after the peak", cases)


def _cosine_lr(step: int, peak: float, warmup: int, total: int, final: float = 0.1, warm: bool = True,
               after_warmup: bool = True, capped: bool = True, linear: bool = False) -> float:
    """A warmup-cosine LR written out, with switches for the mistakes :func:`check_lr_jump` names."""
    if warm and step < warmup:
        return peak * step / warmup
    progress = ((min(step, total) if capped else step) - (warmup if after_warmup else 0)) / (total - (warmup if after_warmup else 0))
    return peak * (final + (1 - final) * ((1 - progress) if linear else 0.5 * (1 + math.cos(math.pi * progress))))


@_reference(lr_jump)
def check_lr_jump(fn: Callable[[int, float, int, int, float], float]) -> None:
    """``fn(step, peak, warmup, total, continued_peak)``: ``continued_peak`` divided by the LR at which
    a checkpoint saved after ``step`` updates sat in its pretraining schedule (linear warmup from 0 to
    ``peak`` over ``warmup`` updates, then cosine decay to 0.1 x ``peak`` at ``total``, constant after)."""
    cases = ((300, 1e-3, 1_000, 10_000, 3e-3), (4_000, 1e-3, 1_000, 10_000, 3e-3), (9_500, 2e-4, 200, 10_000, 4e-4),
             (12_000, 1e-3, 1_000, 10_000, 3e-3), (60_000, 3e-4, 5_000, 100_000, 3e-4))
    for step, peak, warmup, total, continued in cases:
        def jump(**mistake) -> float:
            own = _cosine_lr(step, peak, warmup, total, **mistake)
            return continued / own if own > 0 else math.nan

        suspects = {
            "inverted: the jump is continued_peak / the checkpoint's own LR": 1 / jump(),
            "divided by the pretraining peak, not by the LR the checkpoint sat at": continued / peak,
            "cosine down to 0: the schedule ends at 0.1 x the peak": jump(final=0.0),
            "the cosine starts after the warmup: progress = (step - warmup) / (total - warmup)": jump(after_warmup=False),
            "the warmup: before `warmup` updates the LR rises linearly from 0 to the peak": jump(warm=False),
            "past `total` the LR stays at its end value, 0.1 x the peak": jump(capped=False),
            "a linear decay: the schedule decays along a cosine": jump(linear=True),
        }
        _diagnose(fn(step, peak, warmup, total, continued), lr_jump(step, peak, warmup, total, continued), suspects,
                  f"LR jump at step {step} (warmup {warmup}, total {total})")
    _ok("LR jump", len(cases))


@_reference(lambda a, b, fraction: top_k_jaccard(a, b, fraction).jaccard)
def check_top_k_jaccard(fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor], cases: int = 4) -> None:
    """``fn(a, b, fraction)``: two per-neuron maps ``[n_layers, d_ff]`` -> per layer ``[n_layers]``, the
    Jaccard index |A & B| / |A | B| of the sets A and B of the ``k = ceil(fraction * d_ff)`` largest
    neurons of ``a`` and of ``b`` in that layer."""
    gen = torch.Generator().manual_seed(6)
    for n_layers, d_ff, fraction in ((2, 40, 0.1), (3, 45, 0.1), (2, 64, 0.25), (4, 50, 0.15))[:cases]:
        a = torch.rand(n_layers, d_ff, generator=gen, dtype=torch.float64)
        b = a + 0.3 * torch.rand(n_layers, d_ff, generator=gen, dtype=torch.float64)
        k = math.ceil(fraction * d_ff - 1e-9)
        expected = top_k_jaccard(a, b, fraction)

        def overlap(k: int, largest: bool = True) -> torch.Tensor:
            top_a, top_b = a.topk(k, dim=1, largest=largest).indices, b.topk(k, dim=1, largest=largest).indices
            return torch.tensor([float(np.intersect1d(x, y).size) for x, y in zip(top_a, top_b)], dtype=torch.float64)

        inter, low = overlap(k), math.floor(fraction * d_ff)
        suspects = {
            "k rounded down: k = ceil(fraction * d_ff)": overlap(low) / (2 * low - overlap(low)),
            "the overlap's share of k, |A & B| / k: the Jaccard index divides by the union |A | B|": inter / k,
            "divided by 2k: the union of the two top-k sets is 2k minus their overlap": inter / (2 * k),
            "the smallest k neurons: take the largest": overlap(k, largest=False) / (2 * k - overlap(k, largest=False)),
            "averaged over the layers: return one index per layer": expected.jaccard.mean(),
        }
        _diagnose(fn(a.clone(), b.clone(), fraction), expected.jaccard, suspects,
                  f"top-{fraction:.0%} Jaccard ({n_layers} layers x {d_ff})")
    _ok("top-k Jaccard", cases)


@_reference(chance_jaccard)
def check_chance_jaccard(fn: Callable[[int, int], float]) -> None:
    """``fn(d_ff, k)``: the chance level of the top-k Jaccard index, the Jaccard index of two random
    k-subsets of ``d_ff`` neurons at their expected overlap ``k^2 / d_ff``."""
    cases = ((30, 3), (64, 16), (100, 10), (50, 8))
    for d_ff, k in cases:
        suspects = {
            "k / d_ff is the expected overlap's share of k: the Jaccard index divides the overlap by the union": k / d_ff,
            "k^2 / d_ff is the expected overlap: divide it by the union, 2k minus the overlap": k * k / d_ff,
            "divided by 2k: the union is 2k minus the overlap": k / (2 * d_ff),
            "the exact expectation over the hypergeometric overlap: ke_utils takes the index at the expected overlap":
                chance_jaccard(d_ff, k, exact=True),
        }
        _diagnose(fn(d_ff, k), chance_jaccard(d_ff, k), suspects, f"chance Jaccard (d_ff {d_ff}, k {k})")
    _ok("chance Jaccard", len(cases))
