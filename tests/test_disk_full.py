"""Issue 15, defect 6: a full disk anywhere (checkpoint, metrics, MLflow store, report) is exit 2 with the problem and
the fix, and the MLflow run of a failed job is FAILED, never left RUNNING.

Real full filesystems (a small tmpfs) where this process may mount one (root); the same write points with
the errors those libraries raise (torch's writer, SQLite, typst carry no errno) everywhere else.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess

import pytest
import tiny_study
import torch
from mlflow import MlflowClient
from runtable import make_config, make_runs

from scaleaudit import cli, records, tracking, train
from scaleaudit.files import read_json, write_json


@pytest.fixture
def small_fs(tmp_path):
    """A 2 MiB tmpfs (skipped where mounting is not allowed); ``fill`` leaves no free byte on it."""
    mnt = tmp_path / "small-fs"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill(folder) -> None:
    with open(folder / "filler", "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


@pytest.fixture
def job(tiny_mirror, tmp_path):
    tiny_study.fetch(tiny_mirror, tmp_path / "data")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    write_json(tmp_path / "tracking.json", tracking.init_experiment(uri, "scaleaudit/disk", tmp_path / "artifacts"))

    def args(out, tracking_json=tmp_path / "tracking.json"):
        return [
            "train",
            "--spec",
            json.dumps(tiny_study.spec(epochs=2).to_dict()),
            "--data",
            str(tmp_path / "data" / "breastmnist_28.json"),
            "--tracking",
            str(tracking_json),
            "--out",
            str(out),
            "--threads",
            "1",
        ]

    return uri, args


def _only_run(uri):
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("scaleaudit/disk").experiment_id])
    return run


def _says_disk_full(code, err):
    assert code == 2, err
    assert "error: could not write: no space left on device" in err and "fix: free disk space" in err, err
    assert "Traceback" not in err


def test_checkpoint_on_a_full_disk(capsys, job, small_fs):
    uri, args = job  # the run folder takes run_config.json; the checkpoint (~6 MB) does not fit
    _says_disk_full(cli.main(args(small_fs / "run")), capsys.readouterr().err)
    assert _only_run(uri).info.status == "FAILED"
    assert not [p for p in (small_fs / "run").iterdir() if p.name.endswith(".tmp")]


def test_mlflow_store_on_a_full_disk(capsys, job, small_fs, tmp_path):
    _, args = job
    uri = f"sqlite:///{small_fs / 'mlflow.db'}"
    write_json(tmp_path / "full.json", tracking.init_experiment(uri, "scaleaudit/disk", small_fs / "artifacts"))
    fill(small_fs)
    _says_disk_full(cli.main(args(tmp_path / "run", tmp_path / "full.json")), capsys.readouterr().err)
    assert not (tmp_path / "run" / "metrics.json").exists()


def _report_args(tmp_path, out):
    runs = make_runs({"vit_b16_pretrained": 0.05}, seeds=2)
    runs.to_csv(tmp_path / "runs.csv", index=False)
    (tmp_path / "config.json").write_text(json.dumps(make_config(runs)))
    return [
        "report",
        "--runs",
        str(tmp_path / "runs.csv"),
        "--config",
        str(tmp_path / "config.json"),
        "--assets",
        str(tmp_path / "assets"),
        "--out",
        str(out),
    ]


def test_report_on_a_full_disk(capsys, small_fs, tmp_path):
    fill(small_fs)
    _says_disk_full(cli.main(_report_args(tmp_path, small_fs / "study.pdf")), capsys.readouterr().err)
    assert sorted(p.name for p in small_fs.iterdir()) == ["filler"]


# -- the same write points, simulated ------------------------------------------------------------


def test_checkpoint_write_failure_from_torch(capsys, job, tmp_path, monkeypatch):
    """torch's zip writer reports a full disk as a RuntimeError without errno."""
    uri, args = job

    def full(obj, f, *a, **k):
        raise RuntimeError(
            "[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0: "
            "PytorchStreamWriter failed writing file data/0: file write failed"
        )

    monkeypatch.setattr(torch, "save", full)
    code = cli.main(args(tmp_path / "run"))
    err = capsys.readouterr().err
    _says_disk_full(code, err)
    assert "could not write: no space left on device (or the folder is not writable)" in err
    assert _only_run(uri).info.status == "FAILED"


def test_metrics_write_failure_marks_the_run_failed(capsys, job, tmp_path, monkeypatch):
    """Past training (predictions, MLflow artifacts, metrics.json): the run was left RUNNING before."""
    uri, args = job
    write = records.write_json  # metrics.json is written by records.RunResult.save

    def full_at_metrics(path, obj):
        if str(path).endswith("metrics.json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        write(path, obj)

    monkeypatch.setattr(records, "write_json", full_at_metrics)
    _says_disk_full(cli.main(args(tmp_path / "run")), capsys.readouterr().err)
    assert _only_run(uri).info.status == "FAILED"
    assert (tmp_path / "run" / train.CHECKPOINT).exists() and not (tmp_path / "run" / "metrics.json").exists()

    monkeypatch.undo()  # space freed: the same run finishes, without training again
    assert cli.main(args(tmp_path / "run")) == 0
    assert _only_run(uri).info.status == "FINISHED"
    assert read_json(tmp_path / "run" / "metrics.json")["epochs_run"] == 2


def test_report_write_failure_from_typst(capsys, tmp_path, monkeypatch):
    """typst raises an OSError without errno; its text carries Rust's 'os error 28'."""
    import typst

    def full(*a, **k):
        raise OSError("failed to write PDF file (No space left on device (os error 28))")

    monkeypatch.setattr(typst, "compile", full)
    out = tmp_path / "reports" / "study.pdf"
    _says_disk_full(cli.main(_report_args(tmp_path, out)), capsys.readouterr().err)
    assert list(out.parent.iterdir()) == []


def test_unrelated_errors_still_raise(tmp_path, monkeypatch):
    """Only write failures become exit 2: a bug keeps its traceback."""
    import typst

    monkeypatch.setattr(typst, "compile", lambda *a, **k: (_ for _ in ()).throw(OSError("unknown font family")))
    with pytest.raises(OSError, match="unknown font"):
        cli.main(_report_args(tmp_path, tmp_path / "study.pdf"))
