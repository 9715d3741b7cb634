"""Faults lose no result: SIGKILL and resume, corrupt checkpoints, full disks, Ctrl-C of the whole workflow."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import tiny_study
import yaml

from scaleaudit import cli, files, job, runtime, train
from scaleaudit.files import read_json, write_json
from scaleaudit.synthetic import write_npz

# Runs `scaleaudit train`, but SIGKILLs itself right after the first optimiser step of epoch 2:
# model and optimiser have moved on in memory, the checkpoint still holds epoch 1.
KILL_MID_EPOCH_2 = """
import os, signal, sys
from scaleaudit import cli, train

fit_epoch = train.Trainer.train_epoch

def train_epoch(self):
    if self.state["epoch"] == 1:
        step = self.optimizer.step
        def step_then_die(*args, **kwargs):
            step(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        self.optimizer.step = step_then_die
    return fit_epoch(self)

train.Trainer.train_epoch = train_epoch
sys.exit(cli.main(sys.argv[1:]))
"""


def _outcome(result: dict) -> dict:
    """What must not depend on interruptions: everything but wall-clock times."""
    history = [{k: v for k, v in row.items() if k != "seconds"} for row in result["history"]]
    return {"val": result["val"], "test": result["test"], "history": history, "best_epoch": result["best_epoch"]}


@pytest.fixture
def tiny_data(tiny_mirror, tmp_path):
    return tiny_study.fetch(tiny_mirror, tmp_path / "data")


def test_sigkill_mid_epoch_then_rerun_resumes_to_the_same_result_and_one_mlflow_run(tiny_data, tmp_path):
    from mlflow import MlflowClient

    from scaleaudit import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    record = tracking.init_experiment(uri, "faults", tmp_path / "artifacts")
    write_json(tmp_path / "tracking.json", record)
    spec = tiny_study.spec()
    reference = job.run(spec, tiny_data, tmp_path / "reference", record, None, threads=1)

    out = tmp_path / "killed"
    args = [
        "train",
        "--spec",
        json.dumps(spec.to_dict()),
        "--data",
        str(tmp_path / "data" / "breastmnist_28.json"),
        "--tracking",
        str(tmp_path / "tracking.json"),
        "--out",
        str(out),
        "--threads",
        "1",
    ]
    killed = subprocess.run(
        [sys.executable, "-c", KILL_MID_EPOCH_2, *args],
        env=tiny_study.env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (out / "metrics.json").exists()
    assert _checkpoint_epoch(out / train.CHECKPOINT) == 1
    run_id = (out / "mlflow_run_id").read_text().strip()

    rerun = subprocess.run(
        tiny_study.scaleaudit_cli() + args, env=tiny_study.env(), capture_output=True, text=True, timeout=900
    )
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming after epoch 1" in rerun.stderr
    resumed = read_json(out / "metrics.json")
    assert _outcome(resumed) == _outcome(reference)
    assert not (out / train.CHECKPOINT).exists()

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([record["experiment_id"]])
    assert sorted(r.info.run_id for r in runs) == sorted([run_id, reference["tracking"]["run_id"]])
    assert resumed["tracking"]["run_id"] == run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "train_loss")]
    assert sorted(steps) == [1, 2, 3]


def _checkpoint_epoch(path) -> int:
    import torch

    return torch.load(path, weights_only=True)["state"]["epoch"]


def test_truncated_checkpoint_starts_over(capsys, tiny_data, tmp_path):
    spec = tiny_study.spec(epochs=2)
    reference = job.run(spec, tiny_data, tmp_path / "reference", None, None, threads=1)

    out = tmp_path / "run"
    trainer = train.Trainer(spec, tiny_data["file"], None, runtime.pick_device("cpu"))
    trainer.save(out / train.CHECKPOINT)
    ckpt = out / train.CHECKPOINT
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    capsys.readouterr()

    result = job.run(spec, tiny_data, out, None, None, threads=1)
    assert "is unreadable" in capsys.readouterr().err
    assert _outcome(result) == _outcome(reference)


def test_mlflow_run_lost_from_the_store_is_replaced_not_crashed(tmp_path):
    from mlflow import MlflowClient

    from scaleaudit import tracking

    record = tracking.init_experiment(f"sqlite:///{tmp_path / 'mlflow.db'}", "x", tmp_path / "artifacts")
    id_file = tmp_path / "mlflow_run_id"
    id_file.write_text("0123456789abcdef0123456789abcdef\n")  # a run of a store that was since reset
    run = tracking.TrackedRun(record, id_file, "r", {})
    assert id_file.read_text().strip() == run.run_id != "0123456789abcdef0123456789abcdef"
    assert MlflowClient(tracking_uri=record["tracking_uri"]).get_run(run.run_id).info.status == "RUNNING"


# -- disk full and permission errors ---------------------------------------------------------------


def _no_temporaries(folder) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES])
def test_failed_move_leaves_neither_partial_nor_temporary_file(tmp_path, monkeypatch, code):
    def refuse(src, dst):
        raise OSError(code, os.strerror(code), str(dst))

    good = tmp_path / "kept.json"
    write_json(good, {"good": True})
    monkeypatch.setattr(files.os, "replace", refuse)
    with pytest.raises(OSError):
        write_json(tmp_path / "new.json", {"x": 1})
    with pytest.raises(OSError):
        write_json(good, {"good": False})
    assert not (tmp_path / "new.json").exists()
    assert read_json(good) == {"good": True}
    assert _no_temporaries(tmp_path)


def test_disk_full_while_fetching_leaves_nothing_and_says_so(capsys, tiny_mirror, tmp_path, monkeypatch):
    def copy_half_then_fill(src, dst):
        with open(src, "rb") as fh, open(dst, "wb") as out:
            out.write(fh.read(1000))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))

    monkeypatch.setattr("shutil.copyfile", copy_half_then_fill)
    out = tmp_path / "data" / "breastmnist_28.npz"
    code = cli.main(["fetch-data", "--dataset", "breastmnist", "--out", str(out), "--mirror", str(tiny_mirror)])
    err = capsys.readouterr().err
    assert code == 2 and "No space left on device" in err and "free disk space" in err
    assert list(out.parent.iterdir()) == []


def test_disk_full_at_the_end_of_training_keeps_no_output_and_resumes(capsys, tiny_data, tmp_path, monkeypatch):
    def savez_half_then_fill(fh, **arrays):
        fh.write(b"PK\x03\x04 half a file")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    spec = tiny_study.spec(epochs=2)
    out = tmp_path / "run"
    monkeypatch.setattr(np, "savez_compressed", savez_half_then_fill)
    with pytest.raises(OSError):
        job.run(spec, tiny_data, out, None, None, threads=1)
    assert not (out / "metrics.json").exists() and not (out / "predictions.npz").exists()
    assert _no_temporaries(out) and (out / train.CHECKPOINT).exists()

    monkeypatch.undo()  # space freed: the re-run tests the checkpoint's weights without training again
    capsys.readouterr()
    result = job.run(spec, tiny_data, out, None, None, threads=1)
    err = capsys.readouterr().err
    assert "resuming after epoch 2" in err and "epoch 1/2" not in err
    assert result["epochs_run"] == 2 and (out / "predictions.npz").exists()


# -- the whole workflow ----------------------------------------------------------------------------


def _metrics(work):
    return sorted((work / "results" / "tiny" / "runs").glob("**/metrics.json"))


@pytest.mark.slow
def test_ctrl_c_of_the_workflow_then_rerun_does_not_retrain_finished_runs(tiny_mirror, tmp_path):
    from mlflow import MlflowClient

    work = tiny_study.copy_workflow(tmp_path / "wf")
    study = tiny_study.TINY_CONFIG | {"design": {"arms": ["cnn_a"], "fractions": [1.0], "seeds": 1}}
    study["data"] = {"datasets": [{"flag": "breastmnist", "sizes": [28, 64]}]}
    (work / "tiny.yaml").write_text(yaml.safe_dump(study))
    # The 64 px file is staged as a FIFO: its fetch blocks until the file is written, so the 64 px run cannot
    # have started, whatever the load, when Ctrl-C follows the 28 px run's end (before, under load, both runs of
    # a two-run study had finished first).
    staged = tmp_path / "breastmnist_64.npz"
    write_npz(staged, size=64)
    pending = tiny_mirror / staged.name
    sums = tiny_mirror / "SHA256SUMS"
    sums.write_text(sums.read_text() + f"{files.file_digest(staged)}  {staged.name}\n")
    os.mkfifo(pending)
    env = tiny_study.env(SCALEAUDIT_MIRROR=str(tiny_mirror))
    cmd = [
        "snakemake",
        "--profile",
        "workflow/profiles/local",
        "--configfile",
        "tiny.yaml",
        "--cores",
        "2",
        "results/tiny/runs.csv",
    ]
    proc = subprocess.Popen(
        cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        first = []
        for line in proc.stdout:  # interrupt once Snakemake has recorded the 28 px run's finished training job
            first.append(line)
            if re.search(r"Finished jobid: \d+ \(Rule: train\)", line):
                break
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        first = "".join(first) + proc.communicate(timeout=360)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    pending.unlink()
    staged.rename(pending)
    finished = {p: p.stat().st_mtime_ns for p in _metrics(work)}
    assert len(finished) == 1, first

    rerun = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=1800)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    jobs = re.search(r"^train\s+(\d+)\s*$", rerun.stdout + rerun.stderr, re.MULTILINE)
    assert jobs and int(jobs.group(1)) == 1  # only the run that had not started
    assert len(_metrics(work)) == 2
    assert {p: p.stat().st_mtime_ns for p in finished} == finished

    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'results' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("scaleaudit/tiny")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
