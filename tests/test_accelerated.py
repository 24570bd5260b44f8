"""Continued training's one loop at scale: micro-batches and gradient checkpointing give the update
of one large batch, the whole batch gives the plain language-model step's result bit for bit, and
the study's recipe has the study's shape."""

from __future__ import annotations


import pandas as pd
import pytest
import torch
from accelerate import Accelerator

from helpers import make_model
from ke_utils.continual import STUDY_RECIPE, ScaleConfig, TrainConfig, continue_training, micro_batches, start_training
from ke_utils.stream import Stream
from ke_utils.training import train_step

CONFIG = TrainConfig(lr=3e-2, warmup=1, precision="fp32")  # large steps: a wrong gradient shows


@pytest.fixture(scope="module")
def stream() -> Stream:
    """3 steps of 8 random sequences of 16 tokens."""
    batches = torch.randint(1, 128, (3, 8, 16), generator=torch.Generator().manual_seed(0))
    return Stream(batches, pd.DataFrame())


def _trained(stream, scale: ScaleConfig, model=None, config=CONFIG) -> dict[str, torch.Tensor]:
    model = make_model("llama") if model is None else model  # no dropout: micro-batches draw no noise
    continue_training(model, stream, config, progress=False, scale=scale)
    return model.state_dict()


def _assert_same_weights(a: dict, b: dict, tol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name].cpu(), b[name].cpu(), rtol=tol, atol=tol, msg=name)


def test_gradient_accumulation_gives_the_update_of_one_large_batch(stream, monkeypatch):
    """The gradients before clipping (AdamW and clipping would hide a wrong scale), and the weights."""
    seen: list[list[torch.Tensor]] = []
    clip = Accelerator.clip_grad_norm_

    def spy(self, parameters, *args, **kwargs):
        parameters = list(parameters)
        seen.append([p.grad.clone() for p in parameters])
        return clip(self, parameters, *args, **kwargs)

    monkeypatch.setattr(Accelerator, "clip_grad_norm_", spy)
    whole = _trained(stream, ScaleConfig(micro_batch=8, gradient_checkpointing=False))
    start = make_model("llama").state_dict()
    assert max(float((whole[k].cpu() - start[k]).abs().max()) for k in start) > 1e-2  # it did train
    accumulated = _trained(stream, ScaleConfig(micro_batch=2, gradient_checkpointing=False))
    assert len(seen) == 2 * len(stream.batches)
    for large, summed in zip(seen[0], seen[len(stream.batches)]):  # the first step's gradients
        torch.testing.assert_close(summed, large, rtol=1e-5, atol=1e-7)
    _assert_same_weights(accumulated, whole)


def test_the_whole_batch_is_the_plain_step_bit_for_bit(stream):
    """The loop with its default scale (one process, the whole batch at once) gives exactly what
    the plain language-model step does (``training.train_step``, as pretraining uses it)."""
    plain = make_model("llama")
    autocast, opt, sched = start_training(plain, CONFIG, len(stream.batches))
    plain.train()
    for batch in stream.batches:
        train_step(plain, batch, opt, sched, autocast)
    for scale in (ScaleConfig(), ScaleConfig(micro_batch=8)):
        trained = _trained(stream, scale)
        assert all(torch.equal(trained[k], v) for k, v in plain.state_dict().items())


def test_gradient_checkpointing_changes_memory_not_the_update(stream):
    model = make_model("llama")
    checkpointed = _trained(stream, ScaleConfig(micro_batch=4, gradient_checkpointing=True), model)
    assert not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())  # switched off again
    _assert_same_weights(checkpointed, _trained(stream, ScaleConfig(micro_batch=4, gradient_checkpointing=False)))


def test_a_bf16_model_trains_on_fp32_master_weights_under_autocast(stream):
    config = TrainConfig(lr=3e-2, warmup=1, precision="auto")
    device = "cuda" if torch.cuda.is_available() else "cpu"  # one process: the runner trains where the model is
    plain, accelerated = make_model("llama").bfloat16().to(device), make_model("llama").bfloat16().to(device)
    continue_training(plain, stream, config, progress=False)
    _trained(stream, ScaleConfig(micro_batch=8, gradient_checkpointing=False), accelerated, config)
    assert all(p.dtype == torch.float32 for p in accelerated.parameters())
    _assert_same_weights(accelerated.state_dict(), plain.state_dict(), tol=1e-4)


def test_micro_batches_are_contiguous_shares_that_must_divide_evenly():
    batch = torch.arange(8)[:, None].expand(8, 3)
    parts = [micro_batches(batch, p, 2, 2) for p in range(2)]
    assert [[part[:, 0].tolist() for part in process] for process in parts] == [[[0, 1], [2, 3]], [[4, 5], [6, 7]]]
    with pytest.raises(ValueError, match="does not split"):
        micro_batches(batch, 0, 2, 3)


def test_the_study_recipe_has_the_study_shape():
    stream, train = STUDY_RECIPE.stream, STUDY_RECIPE.train
    assert (stream.batch_size, stream.seq_len, stream.steps, stream.interval) == (128, 1024, 1600, 160)
    assert stream.max_injected_rows == 76  # 70 paraphrase items + 6 once items per round
    assert (train.protocol, train.lr, train.warmup, train.min_lr_ratio, train.betas) == ("study", 4e-4, 80, 0.1, (0.9, 0.95))
    assert stream.batch_size % STUDY_RECIPE.scale.micro_batch == 0


def test_train_command_line_runs_a_small_recipe(tmp_path, capsys):
    """``python -m ke_utils.train`` on a local model, the built-in world's records and background
    text, without retention tasks (offline): the log, the outcome and the saved model."""
    import json

    import transformers as tf

    from helpers import sentencepiece_tokenizer
    from ke_utils.commands.train import main
    from ke_utils.world import WorldConfig, generate_world, generic_documents, knowledge_records

    world = generate_world(WorldConfig(n_people=8, n_paraphrase_people=2, n_once_people=2, n_control_people=0))
    records = knowledge_records(world)
    background = generic_documents(world, 50, seed=1)
    (tmp_path / "records.json").write_text(json.dumps(records["paraphrase"] + records["once"]))
    (tmp_path / "texts.txt").write_text("\n".join(background))
    paragraphs = [r["train_context"] for r in records["paraphrase"] + records["once"]] + background
    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=512, pad_token_id=0)
    tf.LlamaForCausalLM(config).save_pretrained(tmp_path / "model")
    sentencepiece_tokenizer(paragraphs, 128).save_pretrained(tmp_path / "model")
    result = main([str(tmp_path / "model"), "--records", str(tmp_path / "records.json"), "--texts",
                   str(tmp_path / "texts.txt"), "--out", str(tmp_path / "run"), "--n-paraphrase", "2",
                   "--n-background", "45", "--n-heldout", "5", "--tasks", "none", "--rounds", "2", "--interval", "2",
                   "--batch-size", "4", "--seq-len", "256", "--max-injected-rows", "4", "--micro-batch", "2",
                   "--lr", "1e-2", "--warmup", "1", "--dtype", "float32", "--save-model"])
    log = pd.read_csv(tmp_path / "run" / "log.csv")
    assert log["step"].tolist() == [0, 4]
    assert result["steps"] == 4 and result["processes"] == 1
    assert result["gain_paraphrase_mem"] > 0  # it learned what was injected
    assert json.loads((tmp_path / "run" / "outcome.json").read_text()) == pytest.approx(result)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 4
    trained = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    assert not torch.equal(trained.model.layers[0].mlp.down_proj.weight,
                           tf.AutoModelForCausalLM.from_pretrained(tmp_path / "model").model.layers[0].mlp.down_proj.weight)


@pytest.mark.parametrize("name, kind", [("multi_gpu.yaml", "MULTI_GPU"), ("fsdp_7b.yaml", "FSDP")])
def test_the_documented_accelerate_configurations_parse(name, kind):
    from pathlib import Path

    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(Path(__file__).resolve().parents[1] / "docs" / "accelerate" / name)
    assert config.distributed_type.name == kind and config.num_processes == 8
    assert config.mixed_precision == ("bf16" if kind == "FSDP" else "no")  # DDP: ke_utils autocasts itself
