"""The same family on every machine: pinned CPU kernels, reference digests, race-safe builds and caches."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from helpers import MINI
from ke_utils import pretrain
from ke_utils.checkpoint_sweep import _load_entry, _save_entry
from ke_utils.cpu_kernels import PINNED
from ke_utils.pretrain import builtin_family, family_dir

ROOT = Path(__file__).resolve().parents[1]
# Big enough that AVX2 and AVX-512 kernels give different weights after a few steps (shown below).
SHORT = dataclasses.replace(pretrain.FAMILIES["overtrained"], n_train_docs=600, n_heldout_docs=20, steps=10,
                            checkpoint_steps=(0, 10))


def _python(code: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    """``code`` in a fresh interpreter, with the environment less any kernel choice, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if k not in PINNED}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env={**base, **(env or {})}, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _start_build(root: Path, env: dict | None = None, before: str = "") -> subprocess.Popen:
    """Build SHORT under ``root`` in a fresh process that prints its last checkpoint's digest."""
    return _python(f"""
        {before}
        import dataclasses, sys
        sys.path.insert(0, "tests")
        from test_reproducibility import SHORT
        from ke_utils import pretrain
        pretrain.builtin_family(SHORT, root=r"{root}", progress=False)
        print(pretrain.fingerprint(SHORT, r"{root}"))
    """, env)


def _digest(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=900)
    assert process.returncode == 0, err
    return out.split()[-1]


def _has_avx512() -> bool:
    """Whether ATen would run AVX-512 kernels here (the flags it needs, from /proc/cpuinfo on Linux)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags


@pytest.mark.slow
@pytest.mark.skipif(not _has_avx512(), reason="this CPU has no AVX-512: its native kernels are the pinned ones")
def test_a_family_is_the_same_with_native_and_with_forced_avx2_kernels(tmp_path):
    """On an AVX-512 machine: the default (ke_utils pins the kernels), explicitly forced AVX2 kernels and a
    process that ran tensor work before importing ke_utils (the build then runs in a fresh process) all
    give the same weights; the AVX-512 kernels, chosen by the user, give other weights (so the test can fail)."""
    one = {"OMP_NUM_THREADS": "1"}  # four builds side by side; the thread count does not change the weights
    builds = [_start_build(tmp_path / "default", {"OMP_NUM_THREADS": "2"}), _start_build(tmp_path / "forced", {**PINNED, **one}),
              _start_build(tmp_path / "late", one, before="import torch; torch.ones(2) @ torch.ones(2)"),
              _start_build(tmp_path / "native", {"ATEN_CPU_CAPABILITY": "avx512", **one})]
    default, forced, late, native = (_digest(b) for b in builds)
    assert default == forced == late
    assert native != forced


def test_the_users_own_kernel_choice_is_respected():
    process = _python("""
        import os, ke_utils, torch
        print(torch.backends.cpu.get_cpu_capability(), os.environ.get("MKL_CBWR"), ke_utils.cpu_kernels.kernels_pinned())
    """, {"ATEN_CPU_CAPABILITY": "default"})
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert out.split() == ["DEFAULT", "None", "True"]


def test_kernels_are_pinned_on_import_and_late_imports_are_told():
    process = _python("""
        import warnings
        import ke_utils, torch
        print(torch.backends.cpu.get_cpu_capability(), ke_utils.cpu_kernels.kernels_pinned())
    """)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert out.split()[1] == "True" and out.split()[0] in ("AVX2", "DEFAULT")
    late = _python("import torch; torch.ones(2) + 1; import ke_utils; print(ke_utils.cpu_kernels.kernels_pinned())")
    out, err = late.communicate(timeout=120)
    assert late.returncode == 0, err
    if _has_avx512():
        assert out.strip() == "False" and "imported after this process ran tensor work" in err
    else:
        assert out.strip() == "True"


@pytest.mark.slow
def test_two_builders_at_once_both_get_the_whole_family(tmp_path):
    """A builder waits for another one (a file lock) instead of deleting its temporary folder. The
    test holds the lock until both builders have said they wait (so they surely overlap, however
    slowly the machine starts them), then lets them race for it."""
    from filelock import FileLock

    code = f"""
        import sys
        sys.path.insert(0, "tests")
        from helpers import MINI
        from ke_utils.pretrain import builtin_family
        print(len(builtin_family(MINI, root=r"{tmp_path}", progress=False)))
    """
    final = family_dir(MINI, tmp_path)
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        builders = [_python(code), _python(code)]
        waiting = [p.stdout.readline() for p in builders]  # each blocks until its builder prints
    assert all("waiting for another process" in line for line in waiting), waiting
    results = [p.communicate(timeout=600) for p in builders]
    assert [p.returncode for p in builders] == [0, 0], [err for _, err in results]
    assert [out.split()[-1] for out, _ in results] == ["3", "3"]
    assert sorted(p.name for p in final.iterdir() if p.name.startswith("step")) == ["step0", "step3", "step6"]


@pytest.mark.slow
@pytest.mark.skipif(pretrain._cores() < 2, reason="one core: families are built one after the other")
def test_families_built_side_by_side_are_the_ones_built_one_after_the_other(tmp_path, capsys):
    """Two missing families are built at once, in two processes of one thread each; each has the
    weights this process gives it at two threads, one after the other (the thread count does not
    change a family)."""
    configs = [dataclasses.replace(SHORT, seed=seed) for seed in (0, 1)]
    pretrain.builtin_families(configs, root=tmp_path / "side", progress=False)
    assert "side by side" in capsys.readouterr().out
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for config in configs:
            builtin_family(config, root=tmp_path / "serial", progress=False)
    finally:
        torch.set_num_threads(threads)
    for root, expected in ((tmp_path / "side", 1), (tmp_path / "serial", 2)):
        assert [json.loads((family_dir(c, root) / "family.json").read_text())["threads"] for c in configs] == [expected] * 2
    digests = [pretrain.fingerprint(c, tmp_path / "side") for c in configs]
    assert digests == [pretrain.fingerprint(c, tmp_path / "serial") for c in configs]
    assert digests[0] != digests[1]  # two families, not one built twice


def test_an_incomplete_cached_family_is_rebuilt_with_a_warning(tmp_path):
    builtin_family(MINI, root=tmp_path, progress=False)
    digest = pretrain.fingerprint(MINI, tmp_path)
    for name in ("step3", "step6"):  # what an older raced build left: a folder without some checkpoints
        for file in (family_dir(MINI, tmp_path) / name).iterdir():
            file.unlink()
        (family_dir(MINI, tmp_path) / name).rmdir()
    with pytest.warns(UserWarning, match="incomplete"):
        checkpoints = builtin_family(MINI, root=tmp_path, progress=False)
    assert [c.step for c in checkpoints] == [0, 3, 6] and pretrain.fingerprint(MINI, tmp_path) == digest


def test_a_build_is_compared_with_its_reference_digest(tmp_path, monkeypatch):
    builtin_family(MINI, root=tmp_path, progress=False)
    digest = pretrain.fingerprint(MINI, tmp_path)
    built = json.loads((family_dir(MINI, tmp_path) / "family.json").read_text())["environment"]
    table = tmp_path / "fingerprints.json"
    monkeypatch.setattr(pretrain, "FINGERPRINTS", table)
    assert pretrain.check_fingerprint(MINI, tmp_path) is None  # no reference at all
    table.write_text(json.dumps({"environment": built, "families": {"mini": {"key": MINI.key(), "sha256": digest}}}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pretrain.check_fingerprint(MINI, tmp_path) is True
    other = {**built, "cpu_capability": "AVX512", "torch": "0.0"}
    table.write_text(json.dumps({"environment": other, "families": {"mini": {"key": MINI.key(), "sha256": "0" * 64}}}))
    with pytest.warns(UserWarning) as record:
        assert pretrain.check_fingerprint(MINI, tmp_path) is False
    message = str(record[0].message)
    for part in ("'mini'", digest, "0" * 64, "cpu_capability AVX512 vs", "torch 0.0 vs", "differ from the README"):
        assert part in message


def test_the_recorded_fingerprints_name_the_notebook_families():
    """data/family_fingerprints.json holds every family the notebooks use, by its current key."""
    table = json.loads(pretrain.FINGERPRINTS.read_text())
    for name in [*pretrain.NOTEBOOK_FAMILIES, *(f"{n}-seed{s}" for n in pretrain.NOTEBOOK_FAMILIES for s in (1, 2, 3))]:
        entry = table["families"][name]
        assert entry["key"] == pretrain.family_config(name).key() and len(entry["sha256"]) == 64
    assert table["environment"]["cpu_capability"] == "AVX2"


def test_sweep_entries_written_by_two_processes_at_once_stay_whole(tmp_path):
    """Each writer renames its own temporary file: no half entry, no writer failing on another's rename."""
    code = f"""
        import torch
        from pathlib import Path
        from ke_utils.checkpoint_sweep import _save_entry
        for i in range(200):
            _save_entry(Path(r"{tmp_path}") / "step6.safetensors", torch.full((2, 64), float(i % 7)), {{"version": 2}})
    """
    writers = [_python(code) for _ in range(2)]
    errors = [p.communicate(timeout=300)[1] for p in writers]
    assert [p.returncode for p in writers] == [0, 0], errors
    means, info = _load_entry(tmp_path / "step6.safetensors")
    assert means.shape == (2, 64) and info == {"version": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["step6.safetensors"]  # no temporary files left
    _save_entry(tmp_path / "x.safetensors", torch.ones(1, 2), {"version": 2})
    assert torch.equal(_load_entry(tmp_path / "x.safetensors")[0], torch.ones(1, 2))
