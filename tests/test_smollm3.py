"""SmolLM3-3B's pretraining checkpoints (HuggingFaceTB/SmolLM3-3B-checkpoints) as a subject, offline:
its ``stage1-step-N`` branches parsed into steps, only stage 1 taken, its learning-rate schedule per
checkpoint (and an error where the schedule is not known), default stages for notebooks 03-06, and
knowledge entropy measured through the hooks on a tiny random SmolLM3 standing in for the hub
(nothing is downloaded: the branch list, the file listing and ``from_pretrained`` are redirected)."""

from __future__ import annotations

import hashlib
import types
from pathlib import Path

import huggingface_hub
import pytest
import torch
import transformers
from huggingface_hub.hf_api import RepoFile

from helpers import make_model, sentencepiece_tokenizer
from ke_utils import study
from ke_utils.checkpoint_sweep import sweep
from ke_utils.checkpoints import Checkpoint, hub_checkpoints, local_checkpoints, parse_checkpoint_name
from ke_utils.continual import pretraining_lr_of
from ke_utils.experiments.confound import stage_table
from ke_utils.memory.architectures import ARCHITECTURES
from ke_utils.memory.hooks import find_coefficient_modules
from ke_utils.stream import fitting_seq_len
from ke_utils.subjects import default_stages, load_subject

REPO = study.SMOLLM3_REPO
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Knowledge entropy falls as training goes on.",
         "Memory vectors in feed-forward layers store facts.", "Paris is the capital of France."]
STAGE1 = [40_000, 560_000, 1_720_000, 2_600_000, 3_440_000]
# What the stand-in hub lists: stage-1 branches in the card's naming, main, and a later-stage branch
# (its exact name on the hub is not known here; any name outside stage 1 must be left out).
BRANCHES = ["main", *(f"stage1-step-{s}" for s in reversed(STAGE1)), "stage2-step-3480000"]


def _checkpoint(name: str) -> Checkpoint:
    step, tokens, stage = parse_checkpoint_name(name)
    return Checkpoint(step=step, path=REPO, revision=name, tokens=tokens, stage=stage, name=name)


@pytest.mark.parametrize("name, expected", [
    ("stage1-step-40000", (40_000, None, "stage1")),
    ("stage1-step-3440000", (3_440_000, None, "stage1")),
    ("stage2-step-3480000", (3_480_000, None, "stage2")),
    ("step143000", (143_000, None, None)),  # the other schemes are unchanged
    ("stage1-step928646-tokens3896B", (928_646, 3_896_000_000_000, "stage1")),
    ("stage1-step-", None),
    ("stage1-step--40000", None),
])
def test_stage1_revision_names_parse_into_steps(name, expected):
    assert parse_checkpoint_name(name) == expected


def test_the_schedule_warms_up_then_holds_2e_4_and_is_unknown_once_it_decays():
    lr = study.smollm3_lr
    assert [lr(s) for s in (0, 500, 1_000, 1_999)] == pytest.approx([0.0, 5e-5, 1e-4, 2e-4 * 1_999 / 2_000], abs=1e-15)
    assert [lr(s) for s in (2_000, 40_000, 3_440_000, 3_450_000, 4_198_001)] == [2e-4] * 5
    with pytest.raises(ValueError, match=r"4,198,002 is unknown.*decays linearly to 0 after step 4,198,001.*LR_OF"):
        lr(4_198_002)
    with pytest.raises(ValueError, match=">= 0"):
        lr(-1)
    # the defaults sit in stage 1, on its 40,000-step checkpoint grid, early to late
    assert list(study.SMOLLM3_STAGES) == sorted(study.SMOLLM3_STAGES)
    assert all(s % study.SMOLLM3_CHECKPOINT_EVERY == 0 and s < study.SMOLLM3_STAGE_STARTS[0] for s in study.SMOLLM3_STAGES)


def test_pretraining_lr_of_each_checkpoint():
    """2e-4 for every stage-1 branch, the warmup's value at a small step, and an error for a
    branch outside stage 1 (its steps' meaning and LR are not recorded here) and past the decay."""
    lr_of = pretraining_lr_of(REPO)
    assert [lr_of(_checkpoint(f"stage1-step-{s}")) for s in STAGE1] == [2e-4] * len(STAGE1)
    assert lr_of(_checkpoint("stage1-step-1000")) == pytest.approx(1e-4, abs=1e-15)
    with pytest.raises(ValueError, match=r"'stage2-step-3480000' is unknown.*LR_OF"):
        lr_of(_checkpoint("stage2-step-3480000"))
    with pytest.raises(ValueError, match="decays linearly"):
        lr_of(_checkpoint("stage1-step-4240000"))
    assert pretraining_lr_of(REPO, 3e-4)(_checkpoint("stage2-step-3480000")) == 3e-4  # LR_OF still overrides
    # the OLMo-1B repositories read the same table, as before
    assert pretraining_lr_of(study.OLMO_1B_HF_REPO)(_checkpoint("stage1-step-40000")) == study.olmo_1b_lr(40_000)


def test_default_stages_are_stage_1_checkpoints_in_the_studys_places():
    assert default_stages(REPO, [300, 1200]) == list(study.SMOLLM3_STAGES)
    # notebook 05: the study's first and last -> SmolLM3's first and last; notebook 06: first, second, last
    assert default_stages(REPO, [300, 1200], study=study.OLMO_1B_CHECKPOINT_STEPS[::3]) == [560_000, 3_440_000]
    olmo = study.OLMO_1B_CHECKPOINT_STEPS
    assert default_stages(REPO, [300], study=olmo[:2] + olmo[3:]) == [560_000, 1_720_000, 3_440_000]
    with pytest.raises(ValueError, match="set STAGES"):
        default_stages(REPO, [300], study=[100_000])


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    """One folder of a tiny random SmolLM3 (its own seed; 2 layers, d_ff 64) per listed checkpoint
    branch, with a SentencePiece-shaped tokenizer whose ids fit its 128-token vocabulary."""
    root = tmp_path_factory.mktemp("smollm3")
    tokenizer = sentencepiece_tokenizer(TEXTS * 20, 120)
    folders = {}
    for seed, name in enumerate(n for n in BRANCHES if n != "main"):
        make_model("smollm3", seed=seed).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        folders[name] = str(root / name)
    return folders


@pytest.fixture
def offline_hub(stand_in, monkeypatch, tmp_path):
    """The hub repository REPO served from ``stand_in``: its branch list, file listing (for the
    fingerprints) and loading of models, tokenizers and configs; the sweep cache in ``tmp_path``."""
    monkeypatch.setenv("KE_UTILS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(huggingface_hub, "list_repo_refs", lambda repo_id, **k: types.SimpleNamespace(
        branches=[types.SimpleNamespace(name=n) for n in BRANCHES], tags=[], converts=[]))

    def listing(self, repo_id, revision=None, **kwargs):
        return [RepoFile(path=p.name, size=1, oid="x", lfs={"size": 1, "oid": hashlib.sha256(p.read_bytes()).hexdigest(),
                                                             "pointerSize": 1})
                for p in Path(stand_in[revision]).glob("*.safetensors")]

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_tree", listing)
    asked = []

    def redirect(from_pretrained):
        def load(path, *args, revision=None, **kwargs):
            if path != REPO:
                return from_pretrained(path, *args, revision=revision, **kwargs)
            asked.append(revision)
            return from_pretrained(stand_in[revision], *args, **kwargs)
        return load

    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer, transformers.AutoConfig):
        monkeypatch.setattr(cls, "from_pretrained", redirect(cls.from_pretrained))
    return asked


def test_the_subject_takes_stage_1_only(offline_hub, tmp_path):
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS), encoding="utf-8")
    everything = hub_checkpoints(REPO)  # what the listing parses into: stage 2 too ...
    assert [c.name for c in everything][-1] == "stage2-step-3480000"
    subject = load_subject(REPO, n_docs=4, texts=str(tmp_path / "texts.txt"))  # ... what the subject keeps: stage 1
    assert [(c.step, c.stage, c.revision) for c in subject.checkpoints] == [(s, "stage1", f"stage1-step-{s}") for s in STAGE1]
    # notebook 02's log-spaced subset works within the one stage
    assert [c.step for c in load_subject(REPO, n_docs=4, texts=str(tmp_path / "texts.txt"), n_checkpoints=3).checkpoints] == \
        [40_000, 560_000, 3_440_000]
    assert offline_hub == []  # listing branches loads nothing


def test_knowledge_entropy_through_the_hooks_and_notebook_05s_stage_table(offline_hub, stand_in, tmp_path):
    """Notebook 05's first steps on the stand-in: default stages, the subject, KE and the LR of
    each checkpoint (stage_table), the training sequence length; the KE is the one measured on the
    same weights loaded from their folders, through the gated MLP's down projections."""
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS), encoding="utf-8")
    stages = default_stages(REPO, [300, 1200], study=study.OLMO_1B_CHECKPOINT_STEPS[::3])
    subject = load_subject(REPO, steps=stages, n_docs=4, texts=str(tmp_path / "texts.txt"))
    assert [c.revision for c in subject.checkpoints] == ["stage1-step-560000", "stage1-step-3440000"]
    table = stage_table([subject], pretraining_lr_of(REPO), study.CONTINUED_PEAK_LR)
    assert list(table["step"]) == [560_000, 3_440_000] and list(table["lr"]) == [2e-4, 2e-4]
    assert list(table["study_jump"]) == pytest.approx([2.0, 2.0])  # 4e-4 over a constant 2e-4: no LR confound
    assert set(offline_hub) == {"stage1-step-560000", "stage1-step-3440000"}
    assert fitting_seq_len(subject.checkpoints[0]) == 64  # the tiny model's context, read from its config

    model = transformers.AutoModelForCausalLM.from_pretrained(stand_in["stage1-step-560000"])
    assert type(model).__name__ == "SmolLM3ForCausalLM"
    assert find_coefficient_modules(model) == [f"model.layers.{l}.mlp.down_proj" for l in range(2)]
    assert ARCHITECTURES["smollm3"].gate.name == "mlp.gate_proj"  # the gated MLP, for reactivation and attribution
    same = [c for c in local_checkpoints(Path(stand_in["stage1-step-560000"]).parent) if c.name in offline_hub]
    local = sweep(same, TEXTS, folder=tmp_path / "local", progress=False).set_index("name")
    frame = sweep(subject.checkpoints, TEXTS, folder=tmp_path / "hub", progress=False)
    assert frame["means"].iloc[0].shape == (2, 64)
    assert list(frame["ke"]) == pytest.approx([local.loc[c.revision, "ke"] for c in subject.checkpoints], rel=1e-12)
    assert list(table["ke"]) == pytest.approx(list(frame["ke"]), rel=1e-12)
    assert frame["ke"].iloc[0] != pytest.approx(frame["ke"].iloc[1], rel=1e-6)  # two different checkpoints measured
    assert all(0 < ke < 2 * torch.log(torch.tensor(64.0)).item() for ke in frame["ke"])
