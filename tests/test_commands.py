"""The command lines on bad input: one line naming the argument and what to do, exit status 2, no
traceback, nothing written at ``--out``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ke_utils.commands import measure, train


def run_cli(cli, argv, monkeypatch, capsys) -> str:
    """``cli`` with ``argv``; asserts exit status 2 and returns the one line it printed."""
    monkeypatch.setattr(sys, "argv", ["prog", *map(str, argv)])
    with pytest.raises(SystemExit) as exit_:
        cli()
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def texts(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("one document\nanother one\n")
    return path


@pytest.fixture
def model_dir(tmp_path):
    """A folder that claims to be a checkpoint (config.json) but holds no weights."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return folder


def test_measure_names_the_bad_texts(tmp_path, model_dir, monkeypatch, capsys):
    out = tmp_path / "out" / "means.safetensors"
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    line = run_cli(measure.cli, [model_dir, "--texts", latin1, "--out", out], monkeypatch, capsys)
    assert line.startswith("ke-measure: error: --texts") and "not UTF-8" in line and "0xe9" in line and "iconv" in line
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    assert "holds no document" in run_cli(measure.cli, [model_dir, "--texts", empty, "--out", out], monkeypatch, capsys)
    missing = run_cli(measure.cli, [model_dir, "--texts", tmp_path / "nope.txt", "--out", out], monkeypatch, capsys)
    assert "--texts" in missing and "no such file" in missing
    assert "is not a file" in run_cli(measure.cli, [model_dir, "--texts", tmp_path, "--out", out], monkeypatch, capsys)
    assert not (tmp_path / "out").exists()


def test_measure_names_the_bad_model_and_out(tmp_path, texts, model_dir, monkeypatch, capsys):
    out = tmp_path / "means.safetensors"
    not_a_checkpoint = tmp_path / "folder"
    not_a_checkpoint.mkdir()
    line = run_cli(measure.cli, [not_a_checkpoint, "--texts", texts, "--out", out], monkeypatch, capsys)
    assert "MODEL" in line and "config.json" in line
    assert "no such folder" in run_cli(measure.cli, ["./no/such/model", "--texts", texts, "--out", out], monkeypatch, capsys)
    assert "is a file" in run_cli(measure.cli, [texts, "--texts", texts, "--out", out], monkeypatch, capsys)
    broken = run_cli(measure.cli, [model_dir, "--texts", texts, "--out", out], monkeypatch, capsys)
    assert "MODEL" in broken and "could not be loaded" in broken  # a config.json and no weights
    assert "is a folder" in run_cli(measure.cli, [model_dir, "--texts", texts, "--out", tmp_path], monkeypatch, capsys)
    assert not out.exists() and not list(tmp_path.glob(".means*"))


def test_train_names_the_bad_records_and_texts(tmp_path, texts, model_dir, monkeypatch, capsys):
    out = tmp_path / "run"
    bad_json = tmp_path / "records.json"
    bad_json.write_text("[{not json")
    line = run_cli(train.cli, [model_dir, "--records", bad_json, "--texts", texts, "--out", out], monkeypatch, capsys)
    assert line.startswith("ke-train: error: --records") and "could not be loaded" in line
    bad_json.write_text(json.dumps([{"train_context": "x"}]))  # a record without its probes
    line = run_cli(train.cli, [model_dir, "--records", bad_json, "--texts", texts, "--out", out], monkeypatch, capsys)
    assert "--records" in line and "record 0" in line
    line = run_cli(train.cli, [model_dir, "--records", bad_json, "--texts", tmp_path / "nope.txt", "--out", out],
                   monkeypatch, capsys)
    assert "--texts" in line and "no such file" in line
    assert not out.exists()


def test_a_bad_input_ends_the_process_in_one_line():
    """End to end, through the old ``python -m`` path: exit status 2 and no traceback."""
    result = subprocess.run([sys.executable, "-m", "ke_utils.measure", "./no/such/model", "--texts", "x.txt",
                             "--out", "y.safetensors"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("ke-measure: error: MODEL ./no/such/model")
