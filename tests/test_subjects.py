"""A subject's evaluation texts: the reader's own file or ``datasets`` folder, with no network."""

from __future__ import annotations

import datasets
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ke_utils import setups, subjects
from ke_utils.setups import subject_setup
from ke_utils.subjects import load_subject, read_texts

DOCS = ["The first document.", "", "  The second one.  ", "A third.", "And a fourth."]


def no_network(*args, **kwargs):
    raise AssertionError("tried to stream texts from the hub")


def test_a_local_folder_and_a_text_file_need_no_network(tmp_path, tiny_tokenizer, monkeypatch):
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(variable, "1")
    monkeypatch.setattr(subjects, "hub_texts", no_network)
    config = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, pad_token_id=tiny_tokenizer.pad_token_id)
    for step in (0, 10):
        torch.manual_seed(step)
        LlamaForCausalLM(config).save_pretrained(tmp_path / "family" / f"step{step}")
        tiny_tokenizer.save_pretrained(tmp_path / "family" / f"step{step}")
    (tmp_path / "docs.txt").write_text("\n".join(DOCS), encoding="utf-8")
    subject = load_subject(str(tmp_path / "family"), texts=str(tmp_path / "docs.txt"), n_docs=3)
    assert [c.step for c in subject.checkpoints] == [0, 10] and not subject.is_builtin
    assert subject.texts == ["The first document.", "The second one.", "A third."]  # blank lines skipped
    # the continued-training setup reads its background and held-out text from the same file
    monkeypatch.setattr(setups, "hub_texts", no_network)
    monkeypatch.setattr(setups, "load_task", lambda name, n: ([{"context": "Q:", "choices": ["a", "b"], "label": 0}], "acc"))
    setup = subject_setup(subject, n_background=3, n_heldout=1, tasks=("sciq",))
    assert setup.background == ["The first document.", "The second one.", "A third."]
    assert setup.heldout == ["And a fourth."] and list(setup.tasks) == ["sciq"]
    assert setup.describe().endswith("retention on the downstream tasks sciq (1 items)")


def test_a_datasets_folder(tmp_path):
    datasets.Dataset.from_dict({"text": DOCS[2:], "id": [1, 2, 3]}).save_to_disk(str(tmp_path / "one"))
    assert read_texts(str(tmp_path / "one"), 2) == ["  The second one.  ", "A third."]
    splits = datasets.DatasetDict({"validation": datasets.Dataset.from_dict({"text": ["v1", "v2"]}),
                                   "train": datasets.Dataset.from_dict({"text": ["t1"]})})
    splits.save_to_disk(str(tmp_path / "splits"))
    assert read_texts(str(tmp_path / "splits"), 1) == ["v1"]  # the first split
    datasets.Dataset.from_dict({"body": ["x"]}).save_to_disk(str(tmp_path / "other"))
    with pytest.raises(ValueError, match="no 'text' column"):
        read_texts(str(tmp_path / "other"), 1)


def test_too_few_documents(tmp_path):
    (tmp_path / "two.txt").write_text("one\n\ntwo\n", encoding="utf-8")
    with pytest.warns(UserWarning, match="has 2 documents, fewer than the 5"):
        assert read_texts(str(tmp_path / "two.txt"), 5) == ["one", "two"]
    (tmp_path / "empty.txt").write_text("\n \n", encoding="utf-8")
    with pytest.raises(ValueError, match="no documents"):
        read_texts(str(tmp_path / "empty.txt"), 5)


def test_anything_else_is_a_hub_dataset(monkeypatch):
    calls = []
    monkeypatch.setattr(subjects, "hub_texts", lambda n, source: calls.append((n, source)) or ["a", "b"])
    assert read_texts("someone/corpus", 2) == ["a", "b"]
    assert calls == [(2, ("someone/corpus", None, "train", "text"))]


def test_default_stages():
    """The study's exact OLMo-1B checkpoints for both of its repositories, the notebook's own for
    the built-in family, and a clear error for a model the project knows no stages of."""
    from ke_utils import study
    from ke_utils.subjects import default_stages

    assert default_stages("builtin:decayed", [300, 1200]) == [300, 1200]
    for repo in ("allenai/OLMo-1B", "allenai/OLMo-1B-hf"):
        assert default_stages(repo, [300, 1200]) == [117850, 369000, 554000, 738020]
        assert default_stages(repo, [300], study=study.OLMO_1B_CHECKPOINT_STEPS[::3]) == [117850, 738020]
    with pytest.raises(ValueError, match="set STAGES"):
        default_stages("EleutherAI/pythia-160m", [300])


def test_a_pretraining_seed_picks_the_seeded_builtin_family(monkeypatch):
    asked = []
    monkeypatch.setattr(subjects, "builtin_family", lambda family: asked.append(family) or [])
    monkeypatch.setattr(subjects, "builtin_texts", lambda split, n, family: ["a text"])
    assert load_subject("builtin", pretrain_seed=3).name == "builtin:overtrained-seed3"
    assert load_subject("builtin:decayed", pretrain_seed=2).family == "decayed-seed2"
    assert load_subject("builtin:decayed", pretrain_seed=0).name == "builtin:decayed"
    assert asked == ["overtrained-seed3", "decayed-seed2", "decayed"]
    for subject in ("allenai/OLMo-1B-hf", "builtin:decayed-seed1"):
        with pytest.raises(ValueError, match="PRETRAIN_SEED=1 applies to a built-in subject"):
            load_subject(subject, pretrain_seed=1)


def test_records_json_in_the_study_split_and_never_ignored(tmp_path, monkeypatch):
    """The study's data comes as two files (paraphrase, once); one file is split at n_paraphrase.
    On the built-in subject RECORDS_JSON is an error, not silently ignored."""
    import json

    from ke_utils.world import WorldConfig, generate_world, knowledge_records

    records = knowledge_records(generate_world(WorldConfig(n_people=4, n_paraphrase_people=3, n_once_people=5,
                                                           n_control_people=0)))
    (tmp_path / "paraphrase.json").write_text(json.dumps(records["paraphrase"]))
    (tmp_path / "once.json").write_text(json.dumps(records["once"]))
    (tmp_path / "all.json").write_text(json.dumps(records["paraphrase"] + records["once"]))
    given = []
    monkeypatch.setattr(setups, "hub_setup", lambda split, **options: given.append(split))
    hub = subjects.Subject("a/model", [], [], text_source=None)
    subject_setup(hub, [str(tmp_path / "paraphrase.json"), str(tmp_path / "once.json")], n_control=2)
    subject_setup(hub, str(tmp_path / "all.json"), n_paraphrase=3, n_control=2)
    for split in given:
        assert split["paraphrase"] == records["paraphrase"]
        assert split["once"] == records["once"][:3] and split["control"] == records["once"][3:]
    with pytest.raises(ValueError, match="one file or"):
        subject_setup(hub, [str(tmp_path / "once.json")] * 3)
    with pytest.raises(ValueError, match="RECORDS_JSON.*real models only"):
        subject_setup(subjects.Subject("builtin", [], [], family="overtrained"), str(tmp_path / "all.json"))
