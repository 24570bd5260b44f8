"""The knowledge-entropy core against an independent float64 reference, for every family."""

from __future__ import annotations

import gc
import math

import pytest
import torch
import torch.nn.functional as F

import ke_utils
from ke_utils import coefficient_means, knowledge_entropy, length_bucketed_batches, pad_batch
from ke_utils.memory.hooks import find_coefficient_modules
from helpers import FAMILIES, make_model

DOCS = [[5, 9, 17, 33, 8, 21, 40], [7, 3 + 8, 12], [44, 45, 46, 47, 48], [60], [70, 71, 72, 73, 74, 75, 76, 77, 78]]


def _linear(module, x):
    """Linear or transformers Conv1D applied in float64."""
    w = module.weight.double()
    b = None if module.bias is None else module.bias.double()
    return x @ w + b if type(module).__name__ == "Conv1D" else F.linear(x, w, b)


def _reference_parts(family, model, layer):
    """(module whose *input* x to capture, function x -> c in float64), written per family
    from the architecture, independently of ke_utils' registry."""
    if family in ("llama", "olmo", "olmo2", "mistral", "qwen2", "gemma"):
        mlp = model.model.layers[layer].mlp
        return mlp, lambda x: mlp.act_fn(_linear(mlp.gate_proj, x)) * _linear(mlp.up_proj, x)
    if family == "gpt_neox":
        mlp = model.gpt_neox.layers[layer].mlp
        return mlp, lambda x: mlp.act(_linear(mlp.dense_h_to_4h, x))
    if family == "gpt2":
        mlp = model.transformer.h[layer].mlp
        return mlp, lambda x: mlp.act(_linear(mlp.c_fc, x))
    if family == "opt":
        block = model.model.decoder.layers[layer]
        return block.fc1, lambda x: block.activation_fn(_linear(block.fc1, x))
    if family == "phi":
        mlp = model.model.layers[layer].mlp
        return mlp, lambda x: mlp.activation_fn(_linear(mlp.fc1, x))
    inter = getattr(model, family).encoder.layer[layer].intermediate  # bert, roberta
    return inter, lambda x: inter.intermediate_act_fn(_linear(inter.dense, x))


def reference_means(family, model, batches, weighting="token"):
    """Mean |c| computed from captured MLP inputs in float64, one document at a time."""
    n_layers = model.config.num_hidden_layers
    parts = [_reference_parts(family, model, l) for l in range(n_layers)]
    sums, count = [0.0] * n_layers, 0.0
    for batch in batches:
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
            real = ids[mask.bool()] if weighting != "original" else ids
            xs = {}
            handles = [m.register_forward_pre_hook(lambda mod, a, l=l: xs.__setitem__(l, a[0])) for l, (m, _) in enumerate(parts)]
            with torch.no_grad():
                model(input_ids=real[None])
            for h in handles:
                h.remove()
            for l, (_, coeff) in enumerate(parts):
                c = coeff(xs[l].reshape(-1, xs[l].shape[-1]).double()).abs()  # OPT flattens to 2-D
                sums[l] = sums[l] + (c.mean(0) if weighting == "document" else c.sum(0))
            count += 1 if weighting in ("document", "original") else len(real)
    return torch.stack([s / count for s in sums]).detach()


@pytest.mark.parametrize("family", FAMILIES)
def test_means_match_float64_reference(family):
    model = make_model(family)
    pad = model.config.pad_token_id
    batches = length_bucketed_batches(DOCS, pad, max_batch_tokens=20)
    ours = coefficient_means(model, batches)
    ref = reference_means(family, model, batches)
    assert ours.shape == (2, 64)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("family", FAMILIES)
def test_invariant_to_batch_size_padding_side_and_length(family):
    model = make_model(family)
    pad = model.config.pad_token_id
    base = coefficient_means(model, [pad_batch([d], pad) for d in DOCS])
    variants = {
        "one batch, right": [pad_batch(DOCS, pad, "right")],
        "one batch, left": [pad_batch(DOCS, pad, "left")],
        "long padding": [pad_batch(DOCS, pad, "right", pad_to=30)],
        "buckets": length_bucketed_batches(DOCS, pad, max_batch_tokens=16),
    }
    for name, batches in variants.items():
        torch.testing.assert_close(coefficient_means(model, batches), base, rtol=1e-5, atol=1e-7, msg=name)


def test_document_weighting_matches_reference():
    model = make_model("llama")
    batches = length_bucketed_batches(DOCS, 0, max_batch_tokens=20)
    ours = coefficient_means(model, batches, weighting="document")
    torch.testing.assert_close(ours, reference_means("llama", model, batches, "document"), rtol=1e-5, atol=1e-7)
    assert not torch.allclose(ours, coefficient_means(model, batches, weighting="token"))


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_original_mode_equals_original_formula(family):
    """The original code: pad to a fixed length, run without the mask, sum every position,
    divide by documents, entropy with log(p + 1e-9)."""
    model = make_model(family)
    batches = [pad_batch(DOCS, model.config.pad_token_id, "right", pad_to=12)]
    ours = coefficient_means(model, batches, weighting="original")
    ref = reference_means(family, model, batches, "original")
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-7)
    p = ref / ref.sum(-1, keepdim=True)
    original_ke = float((-(p * torch.log(p + 1e-9)).sum(-1)).sum())
    assert knowledge_entropy(ours, "original").total == pytest.approx(original_ke, rel=1e-6)
    # Padding changes the value: the mode is not the clean default under another name.
    assert not torch.allclose(ours / ours.sum(-1, keepdim=True), coefficient_means(model, batches) / coefficient_means(model, batches).sum(-1, keepdim=True))


def test_entropy_formula_and_bounds():
    uniform = torch.ones(3, 100)
    ke = knowledge_entropy(uniform)
    assert ke.total == pytest.approx(3 * math.log(100))
    assert ke.normalized == pytest.approx(1.0)
    torch.testing.assert_close(ke.effective_sources, torch.full((3,), 100.0, dtype=torch.float64))
    one_hot = torch.zeros(2, 10)
    one_hot[:, 3] = 5.0
    assert knowledge_entropy(one_hot).total == pytest.approx(0.0, abs=1e-12)
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    p = a / a.sum()
    assert knowledge_entropy(a).total == pytest.approx(float(-(p * p.log()).sum()))
    assert knowledge_entropy(7 * a).total == pytest.approx(knowledge_entropy(a).total)  # scale-free


@pytest.mark.parametrize("bad", [torch.ones(5), -torch.ones(2, 4), torch.zeros(2, 4), torch.full((2, 4), float("nan"))])
def test_entropy_rejects_bad_means(bad):
    with pytest.raises(ValueError):
        knowledge_entropy(bad)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_fp32(dtype):
    """Measured in bf16 or fp16, normalised KE (total and per layer, H_l / ln d_ff) stays within 3e-4
    of fp32: a tenth of the study's whole effect (about 3e-3). The means stay within three rounding
    steps of the dtype. (Near uniform use, as here and in the study, KE is second order in
    per-neuron errors, so the KE bound only catches gross precision loss; the means bound is tighter.)"""
    model = make_model("llama")
    batches = [pad_batch(DOCS, 0)]
    ref = coefficient_means(model, batches)
    low = coefficient_means(model.to(dtype), batches)
    assert low.dtype == torch.float64
    torch.testing.assert_close(low, ref, rtol=3 * torch.finfo(dtype).eps, atol=0)
    ke_ref, ke_low = knowledge_entropy(ref), knowledge_entropy(low)
    assert ke_low.normalized == pytest.approx(ke_ref.normalized, abs=3e-4)
    torch.testing.assert_close(ke_low.per_layer / math.log(64), ke_ref.per_layer / math.log(64), rtol=0, atol=3e-4)


def test_fallback_finds_unregistered_architectures(monkeypatch):
    for family, expected in [("llama", "model.layers.1.mlp.down_proj"), ("gpt2", "transformer.h.1.mlp.c_proj"),
                             ("gpt_neox", "gpt_neox.layers.1.mlp.dense_4h_to_h")]:
        model = make_model(family)
        registered = find_coefficient_modules(model)
        monkeypatch.setattr(model.config, "model_type", "never-seen")
        assert find_coefficient_modules(model) == registered
        assert registered[-1] == expected


def test_unknown_architecture_error_names_class_and_explains():
    class Mystery(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(2)])

    with pytest.raises(ValueError, match=r"Mystery.*module_names="):
        find_coefficient_modules(Mystery())
    with pytest.raises(ValueError, match="not found"):
        find_coefficient_modules(Mystery(), ["blocks.7"])
    assert find_coefficient_modules(Mystery(), ["blocks.0", "blocks.1"]) == ["blocks.0", "blocks.1"]


def test_empty_and_all_padding_inputs_raise():
    model = make_model("llama")
    with pytest.raises(ValueError, match="no real tokens"):
        coefficient_means(model, [])
    all_pad = {"input_ids": torch.zeros(2, 5, dtype=torch.long), "attention_mask": torch.zeros(2, 5, dtype=torch.long)}
    with pytest.raises(ValueError, match="no real tokens"):
        coefficient_means(model, [all_pad])
    with pytest.raises(ValueError, match="weighting"):
        coefficient_means(model, [pad_batch(DOCS, 0)], weighting="softmax")
    with pytest.raises(ValueError, match="empty"):
        length_bucketed_batches([], 0)


def _hook_count(model):
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def test_nan_coefficient_names_the_layer_and_hooks_are_removed():
    model = make_model("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"layer 1 \(model\.layers\.1\.mlp\.down_proj\)"):
        coefficient_means(model, [pad_batch(DOCS, 0)])
    assert _hook_count(model) == 0


def test_no_hook_left_after_exception_in_forward():
    model = make_model("llama")
    before = _hook_count(model)
    bad = pad_batch([[5, 6, 10_000]], 0)  # token id outside the vocabulary
    with pytest.raises(IndexError):
        coefficient_means(model, [bad])
    assert _hook_count(model) == before == 0


def _live_tensor_bytes(exclude: set[int]) -> int:
    """Bytes of the distinct storages of all tensors the garbage collector sees, but ``exclude``
    (storage data pointers)."""
    storages = {}
    for obj in gc.get_objects():
        if issubclass(type(obj), torch.Tensor):  # type(), not isinstance: no __class__ lookups
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(n for ptr, n in storages.items() if ptr not in exclude)


def test_memory_does_not_grow_with_dataset():
    """Tensors alive at the end of every forward pass (weights aside) peak at the same size for N
    and 4N documents, and none is left after: the accumulator keeps sums, nothing per batch."""
    model = make_model("llama")
    weights = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    coefficient_means(model, [pad_batch(DOCS, 0)])  # warm-up: anything created once is there before
    peaks, start = [], 0

    def record(*_):
        peaks[-1] = max(peaks[-1], _live_tensor_bytes(weights) - start)

    handle = model.model.register_forward_hook(record)
    try:
        for n_batches in (2, 8):  # N = 10 and 4N = 40 documents, 5 per batch
            start = _live_tensor_bytes(weights)
            peaks.append(0)
            means = coefficient_means(model, (pad_batch(DOCS, 0) for _ in range(n_batches)))
            assert _live_tensor_bytes(weights) - start == means.nbytes
            del means
    finally:
        handle.remove()
    assert 0 < peaks[1] <= 1.2 * peaks[0], peaks


def test_measure_accepts_list_dataset_and_stream(tiny_tokenizer):
    import datasets
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, pad_token_id=0)).eval()
    texts = ["The lazy dog sleeps.", "Facts live in memory vectors of the feed-forward layers.", "", "Entropy falls."]
    from_list = ke_utils.measure_knowledge_entropy(model, tiny_tokenizer, texts, progress=False)
    from_ds = ke_utils.measure_knowledge_entropy(model, tiny_tokenizer, datasets.Dataset.from_dict({"text": texts}), progress=False)
    from_stream = ke_utils.measure_knowledge_entropy(model, tiny_tokenizer, ({"text": t} for t in texts), progress=False)
    assert from_list.total == pytest.approx(from_ds.total, rel=1e-12)
    assert from_list.total == pytest.approx(from_stream.total, rel=1e-12)
    capped = ke_utils.measure_knowledge_entropy(model, tiny_tokenizer, texts, max_docs=1, progress=False)
    assert capped.total != pytest.approx(from_list.total)
    assert 0 < from_list.normalized < 1
    with pytest.raises(TypeError):
        ke_utils.measure_knowledge_entropy(model, tiny_tokenizer, "one string", progress=False)


def test_dropout_is_off_while_measuring_and_the_mode_is_restored():
    """GPT-2, OPT, BERT and Phi have dropout: in train mode it would add noise to c."""
    model = make_model("gpt2")
    model.config.resid_pdrop = model.config.embd_pdrop = 0.5
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5
    batches = length_bucketed_batches(DOCS, model.config.pad_token_id, max_batch_tokens=20)
    expected = coefficient_means(model, batches)  # made in eval mode
    model.train()
    model.transformer.h[0].eval()  # a mixed state must come back as it was
    torch.testing.assert_close(coefficient_means(model, batches), expected, rtol=0, atol=0)
    assert model.training and model.transformer.h[1].training and not model.transformer.h[0].training
    with pytest.raises(ValueError):
        coefficient_means(model, [{"input_ids": torch.ones(1, 3, dtype=torch.long),
                                   "attention_mask": torch.zeros(1, 3, dtype=torch.long)}])
    assert model.training and not model.transformer.h[0].training  # restored after an error too


def test_the_weighting_decides_padding_and_epsilon_in_one_place():
    """``measurement_batches`` pads by the weighting (fixed length only for "original"), and
    ``knowledge_entropy`` takes its epsilon from it; an unknown weighting is an error."""
    from ke_utils.memory.batching import measurement_batches

    widths = {w: {b["input_ids"].shape[1] for b in measurement_batches(DOCS, 0, w, max_tokens_per_doc=12)}
              for w in ("token", "original")}
    assert widths["original"] == {12} and max(widths["token"]) == max(len(d) for d in DOCS)
    means = torch.tensor([[0.0, 1.0, 3.0], [2.0, 2.0, 0.0]])
    assert knowledge_entropy(means).total != knowledge_entropy(means, "original").total
    assert knowledge_entropy(means, "document").total == knowledge_entropy(means).total
    with pytest.raises(ValueError, match="weighting must be one of"):
        knowledge_entropy(means, "tokens")
