"""Data parallelism on 2 gloo CPU processes (one ``torchrun`` launch of tests/distributed_worker.py):
the measurement command line (token and document weighting, uneven shares and last batches) and
continued training under accelerate equal a single process; a model split over devices gives the
same means."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from distributed_cases import DOCUMENTS, cli_args, train_tiny
from helpers import make_model, sentencepiece_tokenizer
from ke_utils.memory.batching import text_batches
from ke_utils.memory.entropy import coefficient_means
from ke_utils.commands.measure import main

pytestmark = pytest.mark.slow  # a torchrun launch of two processes

WORKER = Path(__file__).with_name("distributed_worker.py")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny Llama-shaped model and its tokenizer saved as a local checkpoint, and a texts file."""
    folder = tmp_path_factory.mktemp("measure")
    make_model("llama").save_pretrained(folder / "model")
    sentencepiece_tokenizer(DOCUMENTS * 5, 100).save_pretrained(folder / "model")
    (folder / "texts.txt").write_text("\n".join(DOCUMENTS) + "\n\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def two_processes(folder):
    """What the worker's rank 0 wrote: the printed JSON of both measurements and the loss log."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(WORKER), str(folder)]
    root = str(Path(__file__).resolve().parents[1])  # this checkout's ke_utils, whatever is installed
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",  # gloo on CPUs, also on a GPU machine
           "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run(command, capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((folder / "two.json").read_text())


def _reference(folder, weighting: str) -> torch.Tensor:
    """Means measured in this process with the plain API."""
    model = AutoModelForCausalLM.from_pretrained(folder / "model", dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder / "model")
    return coefficient_means(model, text_batches(tokenizer, DOCUMENTS, max_batch_tokens=16), weighting)


def test_cli_single_process_writes_means_and_json(folder, capsys):
    result = main(cli_args(folder, "document", "single.safetensors"))
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == result
    assert printed["processes"] == 1 and printed["documents_per_process"] == [len(DOCUMENTS)]
    means = load_file(str(folder / "single.safetensors"))["means"]
    assert means.dtype == torch.float64 and means.shape == (2, 64)
    torch.testing.assert_close(means, _reference(folder, "document"), rtol=1e-6, atol=0)
    with safe_open(str(folder / "single.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["result"])["ke"] == pytest.approx(printed["ke"])


@pytest.mark.parametrize("weighting", ["token", "document"])
def test_two_gloo_processes_measure_what_one_does(folder, two_processes, weighting):
    printed = two_processes["measure"][weighting]
    assert printed["processes"] == 2
    assert printed["documents_per_process"] == [4, 3]  # every document once, none repeated
    means = load_file(str(folder / f"two-{weighting}.safetensors"))["means"]
    torch.testing.assert_close(means, _reference(folder, weighting), rtol=1e-6, atol=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the reference would train on the GPU, the gloo processes on CPUs")
def test_two_gloo_processes_train_as_one(folder, two_processes):
    model, log = train_tiny()
    assert two_processes["train_loss"] == pytest.approx(log["train_loss"].tolist(), rel=1e-6)
    trained = load_file(str(folder / "two-trained.safetensors"))
    for name, value in model.state_dict().items():
        torch.testing.assert_close(trained[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_model_split_over_devices_gives_the_same_means(folder, tmp_path):
    """Embeddings and layer 1 offloaded (weights on ``meta``, streamed in by accelerate's hooks),
    layer 0 on the CPU: the accumulators follow each layer's coefficient, the input goes to the CPU."""
    device_map = {"model.embed_tokens": "disk", "model.layers.0": "cpu", "model.layers.1": "disk",
                  "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    split = AutoModelForCausalLM.from_pretrained(folder / "model", dtype=torch.float32, device_map=device_map,
                                                 offload_folder=str(tmp_path)).eval()
    assert split.get_input_embeddings().weight.device.type == "meta"
    tokenizer = AutoTokenizer.from_pretrained(folder / "model")
    batches = text_batches(tokenizer, DOCUMENTS, max_batch_tokens=40)
    torch.testing.assert_close(coefficient_means(split, batches), _reference(folder, "token"), rtol=1e-6, atol=0)
