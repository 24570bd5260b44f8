"""The checkpoint sweep: equals per-checkpoint knowledge entropy, resumes, detects damage."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from huggingface_hub.hf_api import RepoFile
from transformers import LlamaConfig, LlamaForCausalLM

import ke_utils
from ke_utils import coefficient_means
from ke_utils import checkpoint_sweep as sweep_module
from ke_utils.memory.batching import length_bucketed_batches, tokenize_documents
from ke_utils.checkpoints import hub_checkpoints, load_checkpoint, local_checkpoints
from ke_utils.checkpoint_sweep import sweep

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Knowledge entropy falls as training goes on.",
         "Memory vectors store facts.", "The lazy dog sleeps over the quick fox."]


@pytest.fixture(scope="module")
def family(tmp_path_factory, tiny_tokenizer):
    """Three tiny checkpoints; step20 is a copy of step10 (a 'hub duplicate')."""
    root = tmp_path_factory.mktemp("family")
    config = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, pad_token_id=tiny_tokenizer.pad_token_id)
    for step, seed in [(0, 0), (10, 1), (20, 1), (30, 2)]:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        model.save_pretrained(root / f"step{step}")
        tiny_tokenizer.save_pretrained(root / f"step{step}")
    return local_checkpoints(root)


def test_sweep_equals_per_checkpoint_knowledge_entropy(family, tiny_tokenizer, tmp_path):
    with pytest.warns(UserWarning, match="identical weight files"):
        frame = sweep(family, TEXTS, folder=tmp_path, progress=False)
    assert list(frame["step"]) == [0, 10, 20, 30]
    for ckpt, row in zip(family, frame.itertuples()):
        direct = ke_utils.measure_knowledge_entropy(load_checkpoint(ckpt), tiny_tokenizer, TEXTS, progress=False)
        assert row.ke == pytest.approx(direct.total, rel=1e-12)
        assert row.normalized == pytest.approx(direct.normalized, rel=1e-12)
        torch.testing.assert_close(row.means, direct.means, rtol=0, atol=0)
    assert frame.loc[frame.step == 20, "duplicate_of"].item() == "step10"
    assert frame["duplicate_of"].isna().sum() == 3


@pytest.mark.parametrize("weighting", ["token", "document", "original"])
def test_related_measures_do_not_change_knowledge_entropy(family, tiny_tokenizer, tmp_path, weighting):
    with pytest.warns(UserWarning, match="identical weight"):
        plain = sweep(family, TEXTS, folder=tmp_path / "plain", progress=False, weighting=weighting)
        related = sweep(family, TEXTS, folder=tmp_path / "related", progress=False, related=True, weighting=weighting)
    # The related pass runs the same forward as coefficient_means with this weighting: exactly the
    # means of that weighting on the same (eager-attention) model ...
    docs = list(tokenize_documents(tiny_tokenizer, TEXTS, 512))
    batches = length_bucketed_batches(docs, tiny_tokenizer.pad_token_id, 8192,
                                      pad_to=512 if weighting == "original" else None)
    for ckpt, row in zip(family, related.itertuples()):
        direct = coefficient_means(load_checkpoint(ckpt, attn_implementation="eager"), batches, weighting)
        torch.testing.assert_close(row.means, direct, rtol=0, atol=0)
    # ... and the plain sweep's KE up to the rounding of eager vs fused attention.
    assert list(related["ke"]) == pytest.approx(list(plain["ke"]), rel=1e-7, abs=0)
    assert (related["attention_entropy"] > 0).all() and (related["next_token_entropy"] > 0).all()
    # a random tiny model predicts almost uniformly over its vocabulary
    assert related["next_token_entropy"].iloc[0] > 0.9 * torch.log(torch.tensor(320.0)).item()


def test_resume_recomputes_nothing_cached(family, tmp_path, monkeypatch):
    real, calls, fail_at = sweep_module.coefficient_means, [], [3]

    def counting(*a, **k):
        calls.append(1)
        if len(calls) == fail_at[0]:
            raise KeyboardInterrupt  # the third checkpoint is interrupted mid-way
        return real(*a, **k)

    monkeypatch.setattr(sweep_module, "coefficient_means", counting)
    with pytest.raises(KeyboardInterrupt):
        sweep(family, TEXTS, folder=tmp_path, progress=False)
    # step20 has step10's weight files: it is never measured, so the third one is step30
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step0.safetensors", "step10.safetensors"]  # no partial file
    calls.clear(), fail_at.clear(), fail_at.append(0)
    frame = sweep(family, TEXTS, folder=tmp_path, progress=False)
    assert len(calls) == 1 and len(frame) == 4  # only step30 was computed
    calls.clear()
    sweep(family, TEXTS, folder=tmp_path, progress=False)
    assert calls == []


def test_corrupted_entry_is_detected_and_recomputed(family, tmp_path):
    first = sweep(family, TEXTS, folder=tmp_path, progress=False)
    entry = tmp_path / "step10.safetensors"
    data = bytearray(entry.read_bytes())
    data[-8:] = b"\x00\x01\x02\x03\x04\x05\x06\x07"  # flip bytes of the tensor payload
    entry.write_bytes(bytes(data))
    (tmp_path / "step30.safetensors").write_bytes(b"not a safetensors file")
    with pytest.warns(UserWarning, match="damaged"):
        again = sweep(family, TEXTS, folder=tmp_path, progress=False)
    assert list(again["ke"]) == pytest.approx(list(first["ke"]), rel=1e-12)


def test_hub_family_through_a_local_stand_in(family, monkeypatch, tmp_path):
    """A hub repository whose branches are checkpoints; loading is redirected to local folders."""
    import types

    import huggingface_hub
    import transformers

    branches = [types.SimpleNamespace(name=n) for n in ["main", "step30-tokens1B", "step0-tokens0B", "step10-tokens1B"]]
    monkeypatch.setattr(huggingface_hub, "list_repo_refs", lambda repo_id, **k: types.SimpleNamespace(branches=branches))
    folders = {c.step: c.path for c in family}

    def listing(self, repo_id, revision=None, **kwargs):
        folder = Path(folders[int(revision.split("-")[0][4:])])
        return [RepoFile(path=p.name, size=1, oid="x", lfs={"size": 1, "oid": hashlib.sha256(p.read_bytes()).hexdigest(),
                                                             "pointerSize": 1}) for p in folder.glob("*.safetensors")]

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_tree", listing)
    hub = hub_checkpoints("someone/tiny")
    assert [(c.step, c.revision) for c in hub] == [(0, "step0-tokens0B"), (10, "step10-tokens1B"), (30, "step30-tokens1B")]

    asked = []

    def redirect(cls_from_pretrained):
        def load(path, *args, revision=None, **kwargs):
            if path != "someone/tiny":
                return cls_from_pretrained(path, *args, revision=revision, **kwargs)
            asked.append(revision)  # the hub path always names its branch
            return cls_from_pretrained(folders[int(revision.split("-")[0][4:])], *args, **kwargs)
        return load

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        redirect(transformers.AutoModelForCausalLM.from_pretrained))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        redirect(transformers.AutoTokenizer.from_pretrained))
    frame = sweep(hub, TEXTS, folder=tmp_path, progress=False)
    local = sweep([c for c in family if c.step in (0, 10, 30)], TEXTS, folder=tmp_path / "local", progress=False)
    assert list(frame["ke"]) == pytest.approx(list(local["ke"]), rel=1e-12)
    assert list(frame["tokens"]) == [0, 1_000_000_000, 1_000_000_000]
    assert set(asked) == {"step0-tokens0B", "step10-tokens1B", "step30-tokens1B"}


def test_cache_is_keyed_on_the_measurement_version_and_records_the_loaded_dtype(family, tmp_path, monkeypatch):
    folder = sweep_module.sweep_dir(family, TEXTS, {"weighting": "token"})
    with pytest.warns(UserWarning, match="identical weight"):
        first = sweep(family, TEXTS, folder=tmp_path, progress=False)
        half = sweep(family[:2], TEXTS, folder=tmp_path / "bf16", dtype=torch.bfloat16, progress=False)
    assert set(first["dtype"]) == {"float32"} and set(half["dtype"]) == {"bfloat16"}
    monkeypatch.setattr(sweep_module, "MEASUREMENT_VERSION", sweep_module.MEASUREMENT_VERSION + 1)
    assert sweep_module.sweep_dir(family, TEXTS, {"weighting": "token"}) != folder  # a new version, a new folder
    calls, real = [], sweep_module.coefficient_means
    monkeypatch.setattr(sweep_module, "coefficient_means", lambda *a, **k: calls.append(1) or real(*a, **k))
    with pytest.warns(UserWarning, match="measured by version"):  # an entry of the old version, given the folder
        sweep(family, TEXTS, folder=tmp_path, progress=False)
    assert len(calls) == 3  # every distinct checkpoint measured again
