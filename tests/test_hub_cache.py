"""Disk use of hub checkpoints in the hub cache and deleting their downloads, on a fake hub cache with
the real layout (``models--org--name/{blobs,snapshots,refs}``), offline."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import huggingface_hub
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ke_utils import checkpoint_sweep as sweep_module
from ke_utils.checkpoint_sweep import sweep
from ke_utils.checkpoints import Checkpoint, checkpoint_fingerprint, parse_checkpoint_name
from ke_utils.hub_cache import cached_revision, delete_revision, format_bytes, revision_disk_bytes

REPO = "org/tiny"
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Knowledge entropy falls as training goes on."]


def add_revision(cache: Path, repo_id: str, branch: str, files: dict[str, bytes]) -> str:
    """Put ``files`` in ``cache`` as huggingface_hub does: content-addressed blobs, a snapshot of
    relative symlinks named by the commit, ``refs/<branch>`` holding the commit. Returns the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(branch.encode()).hexdigest()
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / branch).write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        blob = hashlib.sha256(data).hexdigest()
        (repo / "blobs" / blob).write_bytes(data)
        (snapshot / name).symlink_to(f"../../blobs/{blob}")
    return commit


def hub_checkpoint(branch: str, repo_id: str = REPO) -> Checkpoint:
    step, tokens, stage = parse_checkpoint_name(branch)
    return Checkpoint(step=step, path=repo_id, revision=branch, tokens=tokens, stage=stage, name=branch)


def blob_bytes(cache: Path) -> int:
    return sum(p.stat().st_size for p in cache.glob("models--*/blobs/*"))


CONFIG = b"{" + b" " * 98 + b"}"  # 100 bytes, the same in every revision: one shared blob
SIZES = {"step0": 1000, "step10": 2000, "step20": 4000}


@pytest.fixture
def cache(tmp_path):
    """Three revisions of ``org/tiny`` sharing ``config.json``, weights of 1000, 2000, 4000 bytes."""
    root = tmp_path / "hub"
    for branch, size in SIZES.items():
        weights = branch.encode().ljust(size, b".")
        add_revision(root, REPO, branch, {"config.json": CONFIG, "model.safetensors": weights})
    return root


def test_disk_bytes_per_revision(cache):
    assert {b: revision_disk_bytes(hub_checkpoint(b), cache) for b in SIZES} == {
        "step0": 1100, "step10": 2100, "step20": 4100}  # the shared config counts in each
    by_commit = dataclasses.replace(hub_checkpoint("step10"), revision=hashlib.sha1(b"step10").hexdigest())
    assert revision_disk_bytes(by_commit, cache) == 2100


def test_deleting_a_revision_keeps_shared_blobs_and_other_revisions(cache):
    repo = cache / "models--org--tiny"
    assert delete_revision(hub_checkpoint("step10"), cache) == 2000  # its weights; the config stays shared
    assert not (repo / "snapshots" / hashlib.sha1(b"step10").hexdigest()).exists()
    assert sorted(p.name for p in (repo / "refs").iterdir()) == ["step0", "step20"]
    assert (repo / "blobs" / hashlib.sha256(CONFIG).hexdigest()).is_file()
    assert blob_bytes(cache) == 100 + 1000 + 4000
    assert revision_disk_bytes(hub_checkpoint("step10"), cache) == 0
    for branch in ("step0", "step20"):  # the others still resolve, through intact symlinks
        snapshot = cached_revision(hub_checkpoint(branch), cache)[1].snapshot_path
        assert (snapshot / "config.json").read_bytes() == CONFIG
        assert (snapshot / "model.safetensors").read_bytes().startswith(branch.encode())
    assert delete_revision(hub_checkpoint("step10"), cache) == 0  # already gone: nothing to do
    # the last revision takes the shared blob with it, and the repo folder
    assert [delete_revision(hub_checkpoint(b), cache) for b in ("step0", "step20")] == [1000, 4100]
    assert not repo.exists()


def test_local_folders_are_never_touched(cache, tmp_path):
    snapshot = cached_revision(hub_checkpoint("step0"), cache)[1].snapshot_path
    folder = tmp_path / "step5"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    before = sorted(p.relative_to(cache) for p in cache.rglob("*"))
    # a local folder, a snapshot used as a local folder, and a local path spelled like the repo id
    for path in (folder, snapshot, Path(REPO)):
        local = Checkpoint(step=5, path=str(path), revision=None, tokens=None, stage=None, name="step5")
        assert revision_disk_bytes(local, cache) == 0
        assert delete_revision(local, cache) == 0
    assert sorted(p.relative_to(cache) for p in cache.rglob("*")) == before
    assert (folder / "model.safetensors").read_bytes() == b"weights"


def test_revisions_not_in_the_cache_give_zero(cache, tmp_path):
    before = sorted(p.relative_to(cache) for p in cache.rglob("*"))
    for ckpt in (hub_checkpoint("step30"), hub_checkpoint("step0", repo_id="org/other")):
        assert revision_disk_bytes(ckpt, cache) == 0 and delete_revision(ckpt, cache) == 0
    assert sorted(p.relative_to(cache) for p in cache.rglob("*")) == before
    assert delete_revision(hub_checkpoint("step0"), tmp_path / "no-cache-here") == 0  # no cache folder at all


def test_the_default_cache_is_huggingface_hubs(cache, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))  # what HF_HUB_CACHE / HF_HOME set
    assert revision_disk_bytes(hub_checkpoint("step20")) == 4100


def test_format_bytes():
    assert [format_bytes(n) for n in (0, 999, 1000, 4_700_000_000)] == ["0 B", "999 B", "1.0 kB", "4.7 GB"]


# --- a sweep over hub checkpoints whose files sit in a fake hub cache, loaded offline ---------------


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory, tiny_tokenizer) -> dict[str, dict[str, bytes]]:
    """Files of three tiny checkpoints by name; step20 has step10's weights (a hub duplicate)."""
    root = tmp_path_factory.mktemp("tiny")
    config = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, pad_token_id=tiny_tokenizer.pad_token_id)
    files = {}
    for name, seed in [("step0-tokens0B", 0), ("step10-tokens1B", 1), ("step20-tokens2B", 1)]:
        torch.manual_seed(seed)
        LlamaForCausalLM(config).save_pretrained(root / name)
        tiny_tokenizer.save_pretrained(root / name)
        files[name] = {p.name: p.read_bytes() for p in (root / name).iterdir()}
    return files


@pytest.fixture
def hub_family(tiny_files, tmp_path, monkeypatch):
    """The three as branches of ``org/tiny`` in a fake hub cache (offline), plus a local folder step30."""
    cache = tmp_path / "hub"
    for branch, files in tiny_files.items():
        add_revision(cache, REPO, branch, files)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    local = tmp_path / "local" / "step30"
    local.mkdir(parents=True)
    for name, data in tiny_files["step0-tokens0B"].items():
        (local / name).write_bytes(data)

    def fingerprint(ckpt):  # offline: hash the weights where they sit (the hub's hashes need the network)
        if ckpt.revision is None:
            return checkpoint_fingerprint(ckpt)
        return hashlib.sha256(tiny_files[ckpt.revision]["model.safetensors"]).hexdigest()

    monkeypatch.setattr(sweep_module, "checkpoint_fingerprint", fingerprint)
    hub = [hub_checkpoint(branch) for branch in tiny_files]
    return cache, hub + [Checkpoint(step=30, path=str(local), revision=None, tokens=None, stage=None, name="step30")]


def cached_branches(cache: Path) -> list[str]:
    refs = cache / "models--org--tiny" / "refs"
    return sorted(p.name for p in refs.iterdir()) if refs.exists() else []


def test_sweep_reports_disk_use_and_deletes_each_download_once_stored(hub_family, tmp_path, monkeypatch, capsys,
                                                                      tiny_tokenizer):
    cache, checkpoints = hub_family
    sizes = {c.name: revision_disk_bytes(c) for c in checkpoints}
    total, local_files = blob_bytes(cache), sorted(Path(checkpoints[-1].path).iterdir())
    seen, real = [], sweep_module.coefficient_means
    monkeypatch.setattr(sweep_module, "coefficient_means",
                        lambda *a, **k: seen.append(cached_branches(cache)) or real(*a, **k))
    with pytest.warns(UserWarning, match="identical weight files") as caught:
        frame = sweep(checkpoints, TEXTS, folder=tmp_path / "sweep", delete_downloads=True)
    assert not [w for w in caught if "not in the hub cache" in str(w.message)]  # all found; local step30 not looked up
    # one download at a time: each revision is gone before the next checkpoint is measured
    assert seen == [["step0-tokens0B", "step10-tokens1B", "step20-tokens2B"], ["step10-tokens1B", "step20-tokens2B"],
                    ["step20-tokens2B"]]
    assert list(frame["disk_bytes"]) == [sizes["step0-tokens0B"], sizes["step10-tokens1B"], 0, 0]
    assert sizes["step0-tokens0B"] > 10_000
    assert frame["freed_bytes"].sum() == total and frame["freed_bytes"].iloc[-1] == 0
    assert not (cache / "models--org--tiny").exists()
    assert sorted(Path(checkpoints[-1].path).iterdir()) == local_files
    out = capsys.readouterr().out
    assert f"step0-tokens0B: {format_bytes(sizes['step0-tokens0B'])} in the hub cache, deleted (" in out
    assert f"step20-tokens2B: {format_bytes(frame['freed_bytes'].iloc[2])} deleted from the hub cache" in out
    assert "step30:" not in out  # a local folder has nothing in the hub cache
    # the measurements are those of the revisions named
    assert frame["ke"].iloc[1] == frame["ke"].iloc[2] and frame["ke"].iloc[0] == frame["ke"].iloc[3]
    assert frame["ke"].iloc[0] != frame["ke"].iloc[1]

    seen.clear()  # a rerun reads every result back: the disk use they were measured with, nothing freed
    with pytest.warns(UserWarning, match="identical weight files"):
        again = sweep(checkpoints, TEXTS, folder=tmp_path / "sweep", tokenizer=tiny_tokenizer,
                      delete_downloads=True, progress=False)
    assert seen == [] and list(again["disk_bytes"]) == list(frame["disk_bytes"])
    assert list(again["freed_bytes"]) == [0, 0, 0, 0]


def test_sweep_keeps_downloads_unless_asked_and_frees_stored_ones_first(hub_family, tmp_path, monkeypatch, capsys):
    cache, checkpoints = hub_family
    total = blob_bytes(cache)
    with pytest.warns(UserWarning, match="identical weight files"):
        kept = sweep(checkpoints, TEXTS, folder=tmp_path / "sweep", progress=False)
    assert "freed_bytes" not in kept and blob_bytes(cache) == total
    assert list(kept["disk_bytes"]) == [revision_disk_bytes(c) for c in checkpoints[:2]] + [0, 0]
    monkeypatch.setattr(sweep_module, "coefficient_means", lambda *a, **k: pytest.fail("all results are stored"))
    with pytest.warns(UserWarning, match="identical weight files"):
        freed = sweep(checkpoints, TEXTS, folder=tmp_path / "sweep", delete_downloads=True)
    assert freed["freed_bytes"].sum() == total and not (cache / "models--org--tiny").exists()
    assert list(freed["disk_bytes"]) == list(kept["disk_bytes"])
    assert "step0-tokens0B: " in capsys.readouterr().out


def test_sweep_warns_when_a_measured_revision_is_not_found_in_the_hub_cache(hub_family, tmp_path):
    cache, checkpoints = hub_family
    # a ref to a commit with no snapshot: huggingface_hub's scan skips the repo as damaged (loading still works)
    (cache / "models--org--tiny" / "refs" / "stale").write_text("f" * 40)
    total = blob_bytes(cache)
    with pytest.warns(UserWarning, match="'step0-tokens0B' is not in the hub cache .*nothing deleted"):
        frame = sweep(checkpoints[:1], TEXTS, folder=tmp_path / "sweep", delete_downloads=True, progress=False)
    assert list(frame["disk_bytes"]) == [0] and list(frame["freed_bytes"]) == [0] and blob_bytes(cache) == total
