"""Checkpoint names, local and (faked) hub enumeration, selection, loading one at a time, fingerprints."""

from __future__ import annotations

import hashlib
import random
import re
import weakref
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
import transformers as tf
from huggingface_hub.errors import RevisionNotFoundError
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import httpx

from ke_utils import study
from ke_utils.checkpoints import (
    Checkpoint,
    checkpoint_fingerprint,
    duplicate_groups,
    hub_checkpoints,
    iter_models,
    load_checkpoint,
    local_checkpoints,
    parse_checkpoint_name,
    select,
)

STEPS = (0, 10, 200)
INPUT = torch.tensor([[1, 5, 9, 3, 60, 2, 7]])


def tiny_llama(seed: int) -> tf.LlamaForCausalLM:
    torch.manual_seed(seed)
    config = tf.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    return tf.LlamaForCausalLM._from_config(config, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """A folder with step0, step10, step200 (different random weights), a copy of step200 as
    step300, plus things to ignore; and the reference logits of each saved model."""
    root = tmp_path_factory.mktemp("family")
    logits = {}
    for i, step in enumerate(STEPS):
        model = tiny_llama(seed=i)
        model.save_pretrained(root / f"step{step}")
        with torch.no_grad():
            logits[step] = model(INPUT).logits
    tiny_llama(seed=len(STEPS) - 1).save_pretrained(root / "step300")  # same weights as step200
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "config.json").write_text("{}")
    (root / "step5").mkdir()  # no config.json: not a checkpoint
    (root / "step7").write_text("a file, not a folder")
    (root / "notes.txt").write_text("ignored")
    return root, logits


# ---------------------------------------------------------------- names


@pytest.mark.parametrize("name, expected", [
    ("step1000-tokens4B", (1000, 4_000_000_000, None)),
    ("step1000-tokens4194M", (1000, 4_194_000_000, None)),
    ("step20000-tokens84B", (20000, 84_000_000_000, None)),
    ("step117850-tokens494B", (117850, 494_000_000_000, None)),
    ("step738020-tokens3095B", (738020, 3_095_000_000_000, None)),
    ("step738020-tokens3094B", (738020, 3_094_000_000_000, None)),  # OLMo-1B-hf's name for that step
    ("stage1-step928646-tokens3896B", (928646, 3_896_000_000_000, "stage1")),
    ("stage2-ingredient1-step11931-tokens100B", (11931, 100_000_000_000, "stage2-ingredient1")),
    ("step143000", (143000, None, None)),
    ("step0", (0, None, None)),
    ("step120", (120, None, None)),
])
def test_parse_real_names(name, expected):
    assert parse_checkpoint_name(name) == expected


@pytest.mark.parametrize("name", ["main", "refs/pr/1", "dev", "step", "stepX", "step10-tokens", "step10-tokens4Q",
                                  "my-step10", "step10.bak", "stage-step10", "checkpoint-500", ""])
def test_parse_non_checkpoints(name):
    assert parse_checkpoint_name(name) is None


def test_label():
    ckpt = Checkpoint(step=1000, path="r", revision="step1000-tokens4194M", tokens=4_194_000_000, stage=None,
                      name="step1000-tokens4194M")
    assert ckpt.label == "step 1,000 (4.19B tokens)"
    staged = Checkpoint(step=5, path="r", revision="x", tokens=None, stage="stage2-ingredient1", name="x")
    assert staged.label == "stage2-ingredient1 step 5"


# ---------------------------------------------------------------- local


def test_local_checkpoints(family):
    root, _ = family
    ckpts = local_checkpoints(root)
    assert [c.step for c in ckpts] == [*STEPS, 300]
    assert [c.name for c in ckpts] == ["step0", "step10", "step200", "step300"]
    assert all(c.revision is None and c.tokens is None and c.stage is None for c in ckpts)
    assert ckpts[1].path == str(root / "step10")


def test_local_checkpoints_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        local_checkpoints(tmp_path / "nope")
    (tmp_path / "step3").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        local_checkpoints(tmp_path)


def test_load_checkpoint_same_logits(family):
    root, logits = family
    ckpts = local_checkpoints(root)
    model = load_checkpoint(ckpts[1], attn_implementation="eager")
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(model(INPUT).logits, logits[10])
    half = load_checkpoint(ckpts[1], dtype=torch.bfloat16)
    assert next(half.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.allclose(half(INPUT).logits.float(), logits[10], atol=0.1)


def test_load_checkpoint_options(family, monkeypatch):
    root, _ = family
    seen = {}

    def fake(path, **kwargs):
        seen.update(kwargs, path=path)
        return tiny_llama(0)

    monkeypatch.setattr(tf.AutoModelForCausalLM, "from_pretrained", fake)
    load_checkpoint(local_checkpoints(root)[0])
    assert seen["use_safetensors"] is True and seen["trust_remote_code"] is False
    assert "revision" not in seen and "dtype" not in seen and "torch_dtype" not in seen
    seen.clear()
    load_checkpoint(Checkpoint(1, "org/model", "step1-tokens4B", 4_000_000_000, None, "step1-tokens4B"),
                    dtype=torch.float16)
    assert seen["revision"] == "step1-tokens4B" and seen["dtype"] == torch.float16
    assert "use_safetensors" not in seen and seen["trust_remote_code"] is False


# ---------------------------------------------------------------- hub (faked)

OLMO_BRANCHES = ["step0-tokens0B", "step1000-tokens4B", "step2000-tokens8B", "step10000-tokens41B",
                 "step738000-tokens3095B", "step20000-tokens83B", "step500-tokens2M"]


def fake_refs(names):
    def list_repo_refs(repo_id, **kwargs):
        return SimpleNamespace(branches=[SimpleNamespace(name=n) for n in names], tags=[], converts=[])
    return list_repo_refs


def test_hub_checkpoints_sorted(monkeypatch):
    names = [*OLMO_BRANCHES, "main", "refs/pr/1", "experiment"]
    random.Random(0).shuffle(names)
    monkeypatch.setattr(huggingface_hub, "list_repo_refs", fake_refs(names))
    ckpts = hub_checkpoints("allenai/OLMo-1B-hf")
    assert [c.step for c in ckpts] == [0, 500, 1000, 2000, 10000, 20000, 738000]
    assert [c.tokens for c in ckpts][:3] == [0, 2_000_000, 4_000_000_000]
    assert all(c.path == "allenai/OLMo-1B-hf" and c.revision == c.name for c in ckpts)

    with_main = hub_checkpoints("allenai/OLMo-1B-hf", include_main=True)
    assert with_main[-1].name == "main" and with_main[-1].step == 738000 and with_main[-1].revision == "main"

    filtered = hub_checkpoints("allenai/OLMo-1B-hf", revision_filter=r"tokens\d+B$")
    assert 500 not in [c.step for c in filtered]
    assert [c.step for c in hub_checkpoints("x", revision_filter=lambda n: n.startswith("step1"))] == [1000, 10000]


def test_hub_checkpoints_stages(monkeypatch):
    names = ["stage2-ingredient2-step100-tokens1B", "stage1-step928646-tokens3896B",
             "stage2-ingredient1-step11931-tokens100B", "stage1-step1000-tokens5B", "stage2-ingredient1-step0-tokens0B", "main"]
    monkeypatch.setattr(huggingface_hub, "list_repo_refs", fake_refs(names))
    ckpts = hub_checkpoints("allenai/OLMo-2-1124-7B")
    assert [c.name for c in ckpts] == ["stage1-step1000-tokens5B", "stage1-step928646-tokens3896B",
                                       "stage2-ingredient1-step0-tokens0B", "stage2-ingredient1-step11931-tokens100B",
                                       "stage2-ingredient2-step100-tokens1B"]
    with pytest.raises(ValueError, match="one stage"):
        select(ckpts, n_log=3)
    stage1 = hub_checkpoints("allenai/OLMo-2-1124-7B", revision_filter="^stage1-")
    assert [c.step for c in select(stage1, n_log=2)] == [1000, 928646]


def test_hub_checkpoints_none(monkeypatch):
    monkeypatch.setattr(huggingface_hub, "list_repo_refs", fake_refs(["main", "dev"]))
    with pytest.raises(ValueError, match="no checkpoint branches"):
        hub_checkpoints("org/model")


OLMO_1B_BRANCHES = Path(__file__).parent / "data" / "olmo_1b_branches.txt"


def olmo_1b_names() -> list[str]:
    """The checkpoint branch names of allenai/OLMo-1B (its revisions.txt), in training order."""
    lines = OLMO_1B_BRANCHES.read_text().splitlines()
    return [line for line in lines if line and not line.startswith("#")]


@pytest.fixture
def olmo_1b(monkeypatch):
    """hub_checkpoints of allenai/OLMo-1B on its real branch names, given shuffled and with `main`."""
    names = [*olmo_1b_names(), "main"]
    random.Random(1).shuffle(names)
    monkeypatch.setattr(huggingface_hub, "list_repo_refs", fake_refs(names))
    return hub_checkpoints(study.OLMO_1B_REPO)


def test_hub_checkpoints_real_olmo_1b(olmo_1b):
    names = olmo_1b_names()
    assert len(names) == 335 and len(set(names)) == 335
    ckpts = olmo_1b
    assert len(ckpts) == 335  # every checkpoint branch parsed, `main` dropped
    assert [c.name for c in ckpts] == names  # the file is in training order: sorted back into it
    steps = [c.step for c in ckpts]
    assert steps[:3] == [20000, 30000, 40000] and steps[-2:] == [738000, 738020]
    assert all(a < b for a, b in zip(steps, steps[1:]))
    assert [s for s in steps if 117850 < s < 330000] == []  # the gap in the run's checkpoints
    assert steps[steps.index(117850) + 1] == 330000
    assert all(c.revision == c.name and c.path == "allenai/OLMo-1B" and c.stage is None for c in ckpts)
    # tokens: step x 2048 x 2048, rounded to whole billions in the name
    assert ckpts[0].tokens == 84_000_000_000 and ckpts[-1].tokens == 3_095_000_000_000
    for c in ckpts:
        assert c.tokens == int(re.fullmatch(r"step\d+-tokens(\d+)B", c.name)[1]) * 10**9
        assert c.tokens == round(c.step * 2048 * 2048 / 1e9) * 10**9
    assert ckpts[-1].label == "step 738,020 (3.1T tokens)"

    with_main = hub_checkpoints(study.OLMO_1B_REPO, include_main=True)
    assert len(with_main) == 336 and with_main[-1].name == "main" and with_main[-1].step == 738020


def test_study_checkpoints_on_the_hub(olmo_1b):
    chosen = select(olmo_1b, steps=study.OLMO_1B_CHECKPOINT_STEPS)
    assert tuple(c.name for c in chosen) == study.OLMO_1B_REVISIONS
    assert tuple(c.revision for c in chosen) == study.OLMO_1B_REVISIONS
    assert [c.tokens for c in chosen] == [494 * 10**9, 1548 * 10**9, 2324 * 10**9, 3095 * 10**9]
    # the paper's rounded steps: 118k is not a checkpoint, and the error names 117850 next to it
    with pytest.raises(ValueError, match=r"steps not available: 118000 \(nearest: \[117000, 117850\]\)$"):
        select(olmo_1b, steps=study.OLMO_1B_STEPS)
    # 738k exists as a step too, but it is not the final checkpoint the study started from
    assert [c.name for c in select(olmo_1b, steps=[738_000])] == ["step738000-tokens3095B"]


def test_study_constants_agree():
    assert study.OLMO_1B_REPO == "allenai/OLMo-1B" and study.OLMO_1B_HF_REPO == "allenai/OLMo-1B-hf"
    parsed = [parse_checkpoint_name(name) for name in study.OLMO_1B_REVISIONS]
    assert tuple(step for step, _, _ in parsed) == study.OLMO_1B_CHECKPOINT_STEPS
    pairs = zip(study.OLMO_1B_CHECKPOINT_STEPS, study.OLMO_1B_STEPS)
    assert all(abs(exact - rounded) <= 200 for exact, rounded in pairs)
    assert set(study.OLMO_1B_REVISIONS) <= set(olmo_1b_names())


def test_missing_revision_is_clear(monkeypatch):
    def raise_not_found(path, **kwargs):
        response = httpx.Response(404, request=httpx.Request("GET", f"https://huggingface.co/{path}/resolve/x"))
        raise RevisionNotFoundError("404 Revision Not Found", response=response)

    ckpt = Checkpoint(5, "org/model", "step5-tokens1B", 10**9, None, "step5-tokens1B")
    monkeypatch.setattr(tf.AutoModelForCausalLM, "from_pretrained", raise_not_found)
    with pytest.raises(ValueError, match=r"checkpoint 'step5-tokens1B' not found in org/model"):
        load_checkpoint(ckpt)

    def raise_wrapped(path, revision=None, **kwargs):  # what transformers turns it into
        raise OSError(f"{revision} is not a valid git identifier (branch name, tag name or commit id)")

    monkeypatch.setattr(tf.AutoModelForCausalLM, "from_pretrained", raise_wrapped)
    with pytest.raises(ValueError, match="not found in org/model"):
        load_checkpoint(ckpt)

    def raise_other(path, **kwargs):
        raise OSError("disk on fire")

    monkeypatch.setattr(tf.AutoModelForCausalLM, "from_pretrained", raise_other)
    with pytest.raises(OSError, match="disk on fire"):
        load_checkpoint(ckpt)


# ---------------------------------------------------------------- select


def _ckpts(steps):
    return [Checkpoint(s, f"/f/step{s}", None, None, None, f"step{s}") for s in steps]


def test_select_every():
    ckpts = _ckpts(range(0, 100, 10))  # 10 checkpoints
    assert [c.step for c in select(ckpts, every=3)] == [0, 30, 60, 90]
    assert [c.step for c in select(ckpts, every=4)] == [0, 40, 80, 90]
    assert select(ckpts, every=1) == ckpts
    assert select(ckpts) == ckpts
    assert select([], every=2) == []


def test_select_log():
    ckpts = _ckpts([0, 15, 30, 60, 120, 200, 300, 450, 600, 800, 1000, 1200])
    chosen = [c.step for c in select(ckpts, n_log=5)]
    assert chosen[0] == 0 and chosen[-1] == 1200 and len(chosen) == 5
    assert chosen == sorted(set(chosen))
    assert [c.step for c in select(ckpts, n_log=2)] == [0, 1200]
    assert [c.step for c in select(ckpts, n_log=1)] == [1200]
    assert select(ckpts, n_log=100) == ckpts  # deduplicated: every checkpoint once
    dense = _ckpts(range(0, 10001))  # log1p spacing: targets (10001 ** (i / 4)) - 1
    assert [c.step for c in select(dense, n_log=5)] == [0, 9, 99, 999, 10000]


def test_select_steps():
    ckpts = _ckpts([0, 10, 200, 300])
    assert [c.step for c in select(ckpts, steps=[200, 0])] == [0, 200]
    with pytest.raises(ValueError, match=r"150 \(nearest: \[10, 200\]\)"):
        select(ckpts, steps=[150, 10])


def test_select_errors():
    ckpts = _ckpts([0, 10])
    with pytest.raises(ValueError, match="at most one"):
        select(ckpts, every=2, n_log=3)
    with pytest.raises(ValueError):
        select(ckpts, every=0)
    with pytest.raises(ValueError):
        select(ckpts, n_log=0)


# ---------------------------------------------------------------- iteration and fingerprints


def test_iter_models_one_at_a_time(family):
    root, logits = family
    ckpts = local_checkpoints(root)[:3]
    models = iter_models(ckpts, attn_implementation="eager")
    first_ckpt, first = next(models)
    assert first_ckpt.step == 0
    with torch.no_grad():
        assert torch.equal(first(INPUT).logits, logits[0])
    alive = weakref.ref(first)
    del first
    second_ckpt, second = next(models)  # the generator has already collected the first
    assert second_ckpt.step == 10 and alive() is None
    kept = second  # a consumer keeping a reference gets an emptied module (no memory held)
    rest = [c.step for c, _ in models]
    assert rest == [200] and next(kept.parameters()).is_meta


def test_fingerprints_from_file_hashes(family, tmp_path, monkeypatch):
    root, _ = family
    ckpts = {c.name: c for c in local_checkpoints(root)}
    prints = {name: checkpoint_fingerprint(c) for name, c in ckpts.items()}
    assert prints["step200"] == prints["step300"]  # saved twice from the same weights
    assert len({prints["step0"], prints["step10"], prints["step200"]}) == 3
    assert duplicate_groups(prints) == [["step200", "step300"]]
    assert duplicate_groups({"a": "1", "b": "2"}) == []
    assert duplicate_groups({"a": "1", "b": "2", "c": "1", "d": "2", "e": "3"}) == [["a", "c"], ["b", "d"]]
    # one changed weight changes it
    model = tiny_llama(len(STEPS) - 1)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] += 1
    model.save_pretrained(tmp_path / "step400")
    assert checkpoint_fingerprint(local_checkpoints(tmp_path)[0]) != prints["step200"]
    with pytest.raises(FileNotFoundError, match="no weight files"):
        checkpoint_fingerprint(Checkpoint(1, str(root / "tokenizer"), None, None, None, "tokenizer"))

    # On the hub: the LFS sha256 of each file, from the listing; nothing is downloaded.
    def listing(repo_id, revision=None, **kwargs):
        folder = root / revision
        files = [RepoFile(path=p.name, size=p.stat().st_size, oid="git-" + p.name,
                          lfs={"size": p.stat().st_size, "oid": hashlib.sha256(p.read_bytes()).hexdigest(),
                               "pointerSize": 130}) for p in folder.iterdir() if p.suffix == ".safetensors"]
        return files + [RepoFile(path="config.json", size=10, oid="git-config-" + revision)]

    def no_download(*args, **kwargs):
        raise AssertionError("a fingerprint must not download weights")

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_tree", lambda self, *a, **k: listing(*a, **k))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_download)
    hub = {n: checkpoint_fingerprint(Checkpoint(1, "someone/tiny", n, None, None, n)) for n in ckpts}
    assert hub == prints  # the hub's LFS hashes are the sha256 of the same bytes
