"""The built-in family: a miniature one trains, saves, reloads, is cached and rebuilt on change."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from ke_utils import checkpoints, pretrain
from helpers import MINI
from ke_utils.pretrain import FamilyConfig, builtin_family, builtin_texts, family_dir
from ke_utils.training import optimizer


@pytest.fixture(scope="module")
def mini_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    builtin_family(MINI, root=root, progress=False)
    return root


def test_family_has_checkpoints_that_reload_identically(mini_root):
    ckpts = builtin_family(MINI, root=mini_root)
    assert [c.step for c in ckpts] == [0, 3, 6]
    tok = AutoTokenizer.from_pretrained(ckpts[-1].path)
    model = AutoModelForCausalLM.from_pretrained(ckpts[-1].path).eval()
    assert any(p.suffix == ".safetensors" for p in (family_dir(MINI, mini_root) / "step6").iterdir())
    ids = tok(builtin_texts("heldout", 2, MINI, mini_root), return_tensors="pt", padding=True)
    again = AutoModelForCausalLM.from_pretrained(ckpts[-1].path).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**ids).logits, again(**ids).logits, rtol=0, atol=0)
    first = load_file(str(family_dir(MINI, mini_root) / "step0" / "model.safetensors"))
    last = load_file(str(family_dir(MINI, mini_root) / "step6" / "model.safetensors"))
    assert any(not torch.equal(first[k], last[k]) for k in first)  # training changed the weights


def test_build_is_deterministic(mini_root, tmp_path):
    builtin_family(MINI, root=tmp_path, progress=False)
    for step in (0, 6):
        a = load_file(str(family_dir(MINI, mini_root) / f"step{step}" / "model.safetensors"))
        b = load_file(str(family_dir(MINI, tmp_path) / f"step{step}" / "model.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_tokenizer_round_trips_the_corpus(mini_root):
    tok = AutoTokenizer.from_pretrained(builtin_family(MINI, root=mini_root)[0].path)
    texts = builtin_texts("train", None, MINI, mini_root)
    assert len(texts) == MINI.n_train_docs
    for text in texts[:50]:
        assert tok.decode(tok(text)["input_ids"]) == text
    assert tok.pad_token and tok.eos_token and tok.pad_token_id != tok.eos_token_id


def test_cache_is_reused_and_rebuilt_on_config_change(mini_root, monkeypatch):
    calls = []
    real = pretrain.build_family
    monkeypatch.setattr(pretrain, "build_family", lambda *a, **k: calls.append(a) or real(*a, **k))
    builtin_family(MINI, root=mini_root)
    assert calls == []  # cached
    changed = dataclasses.replace(MINI, lr=1e-3)
    assert family_dir(changed, mini_root) != family_dir(MINI, mini_root)
    builtin_family(changed, root=mini_root, progress=False)
    assert len(calls) == 1


def test_interrupted_build_is_not_taken_as_done(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrain, "_save", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        builtin_family(MINI, root=tmp_path, progress=False)
    assert not family_dir(MINI, tmp_path).exists()


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown built-in family"):
        builtin_family("enormous")
    for name in ("enormous-seed1", "decayed-seedx", "decayed-seed"):
        with pytest.raises(ValueError, match="unknown built-in family"):
            pretrain.family_config(name)
    with pytest.raises(ValueError, match="checkpoint_steps"):
        FamilyConfig(steps=10, checkpoint_steps=(0, 20))
    with pytest.raises(ValueError, match="split"):
        builtin_texts("validation", 3, MINI)


@pytest.mark.parametrize("schedule", ["constant", "cosine", "wsd"])
def test_each_checkpoint_records_the_schedules_learning_rate(tmp_path, schedule):
    config = dataclasses.replace(MINI, schedule=schedule, warmup=2, steps=6, checkpoint_steps=(0, 1, 3, 6),
                                 decay_steps=3 if schedule == "wsd" else 0)
    ckpts = builtin_family(config, root=tmp_path, progress=False)

    def by_hand(step: int) -> float:  # warmup from 0, then constant, cosine to 0.1 x lr at step 6, or linear from step 3
        if step < 2:
            return config.lr * step / 2
        if schedule == "wsd":
            return config.lr * (1 - 0.9 * max(0, step - 3) / 3)
        return config.lr if schedule == "constant" else config.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * (step - 2) / 4)))

    for ckpt in ckpts:
        recorded = checkpoints.trainer_state(ckpt)
        assert recorded["global_step"] == ckpt.step
        assert recorded["learning_rate"] == pytest.approx(by_hand(ckpt.step), rel=1e-12, abs=1e-15)
        assert pretrain.pretraining_lr(config, ckpt.step) == pytest.approx(by_hand(ckpt.step), rel=1e-12, abs=1e-15)
    log = pretrain.family_info(config, tmp_path)["log"]
    assert log["lr"] == pytest.approx([by_hand(s - 1) for s in log["step"]], rel=1e-12)  # update s uses lr(s - 1)
    if schedule == "cosine":
        assert checkpoints.trainer_state(ckpts[-1])["learning_rate"] == pytest.approx(0.1 * config.lr)


def test_annealed_family_branches_from_its_constant_twin_bit_identically(mini_root, tmp_path, monkeypatch):
    annealed = dataclasses.replace(MINI, schedule="wsd", decay_steps=3)
    assert annealed.branch_point() == (MINI, 3) and MINI.branch_point() is None
    assert MINI.key() == family_dir(MINI, mini_root).name.removeprefix("family-")  # the new field left old keys alone
    branched = builtin_family(annealed, root=mini_root, progress=False)  # from the cached twin's step 3
    monkeypatch.setattr(FamilyConfig, "branch_point", lambda self: None)
    straight = builtin_family(annealed, root=tmp_path, progress=False)  # every update from step 0
    for a, b in zip(branched, straight, strict=True):
        x, y = (load_file(str(Path(c.path) / "model.safetensors")) for c in (a, b))
        assert a.step == b.step and all(torch.equal(x[k], y[k]) for k in y)
    twin_last = load_file(str(family_dir(MINI, mini_root) / "step6" / "model.safetensors"))
    assert any(not torch.equal(twin_last[k], x[k]) for k in x)  # the decay changed the last updates
    log = pretrain.family_info(annealed, mini_root)["log"]
    assert log["step"] == list(range(1, 7)) and log == pretrain.family_info(annealed, tmp_path)["log"]
    with pytest.raises(ValueError, match="decay_steps"):
        FamilyConfig(schedule="wsd")
    with pytest.raises(ValueError, match="branches"):
        dataclasses.replace(MINI, schedule="wsd", decay_steps=2)  # step 4 is no checkpoint


def test_resumed_pretraining_continues_bit_identically(mini_root, tmp_path):
    ckpts = builtin_family(MINI, root=mini_root)
    middle, last = ckpts[1], ckpts[2]  # steps 3 and 6
    pretrain.resume_pretraining(middle, MINI, until=6, folder=tmp_path)
    resumed = load_file(str(tmp_path / "step6" / "model.safetensors"))
    straight = load_file(str(Path(last.path) / "model.safetensors"))
    assert resumed.keys() == straight.keys() and all(torch.equal(resumed[k], straight[k]) for k in straight)
    a = torch.load(tmp_path / "step6" / "optimizer.pt", weights_only=True)["state"]
    b = torch.load(Path(last.path) / "optimizer.pt", weights_only=True)["state"]
    assert all(torch.equal(a[i][k], b[i][k]) for i in b for k in b[i])
    model = AutoModelForCausalLM.from_pretrained(middle.path)
    opt = optimizer(model, MINI.lr, MINI.weight_decay, MINI.betas)
    with pytest.raises(ValueError, match="until"):
        pretrain.resume_pretraining(middle, MINI, until=3, folder=tmp_path)
    pretrain.load_training_state(middle, opt)  # the moments of step 3, not fresh zeros
    saved = torch.load(Path(middle.path) / "optimizer.pt", weights_only=True)["state"]
    assert all(torch.equal(opt.state_dict()["state"][i]["exp_avg"], saved[i]["exp_avg"]) for i in saved)
    assert opt.state_dict()["state"][0]["exp_avg"].abs().sum() > 0


def test_a_pretraining_seed_changes_initialisation_and_data_order_not_the_world(mini_root, tmp_path):
    decayed, seeded = pretrain.family_config("decayed"), pretrain.family_config("decayed-seed2")
    assert seeded == dataclasses.replace(decayed, seed=2) and pretrain.family_config("decayed-seed0") == decayed
    assert seeded.key() != decayed.key()
    other = dataclasses.replace(MINI, seed=1)
    builtin_family(other, root=tmp_path, progress=False)
    assert builtin_texts("train", None, other, tmp_path) == builtin_texts("train", None, MINI, mini_root)
    first, second = (load_file(str(family_dir(c, r) / "step0" / "model.safetensors")) for c, r in ((MINI, mini_root), (other, tmp_path)))
    assert not torch.equal(first["model.layers.0.mlp.up_proj.weight"], second["model.layers.0.mlp.up_proj.weight"])
    losses = [pretrain.family_info(c, r)["log"]["loss"][0] for c, r in ((MINI, mini_root), (other, tmp_path))]
    assert losses[0] != losses[1]
