"""Preemption on a cluster: a training job killed by the scheduler and requeued resumes from its checkpoint.

Slurm preempts a job with SIGTERM (then SIGKILL after KillWait) and starts it again from the top. Here
`scaleaudit train` runs as a subprocess on the CPU, is stopped by SIGTERM after its first checkpoint,
restarted, stopped again by SIGKILL, and restarted to the end: its results must equal those of an
uninterrupted run exactly (CPU training is deterministic), and MLflow must hold one finished run for it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mirror import REPO, write_sums

from scaleaudit import config as study_config
from scaleaudit import data, tracking
from scaleaudit.files import write_json
from scaleaudit.synthetic import write_npz

EPOCHS = 6


@pytest.fixture
def job(tmp_path):
    """Everything `scaleaudit train` needs: data record, run spec and an MLflow experiment (SQLite)."""
    mirror = tmp_path / "mirror"
    # BreastMNIST's 546 training images: an epoch takes a noticeable time, so the kills land mid-run.
    write_npz(mirror / "breastmnist.npz")
    write_sums(mirror)
    npz = tmp_path / "data" / "breastmnist_28.npz"
    record = data.fetch("breastmnist", 28, npz, mirror)
    write_json(tmp_path / "data" / "breastmnist_28.json", record)
    recipe = {
        "optimizer": "adam",
        "lr": 1e-3,
        "batch_size": 32,
        "epochs": EPOCHS,
        "scheduler": "multistep",
        "augment": "flip",
        "select": "val_loss",
    }
    cfg = study_config.load(
        REPO / "config" / "config.yaml",
        overrides={
            "study": "preempt",
            "design": {"arms": ["cnn_small"], "seeds": 1},
            "data": {"datasets": [{"flag": "breastmnist", "sizes": [28]}]},
            "recipes": {"preempt": recipe},
            "arms": {"cnn_small": {"recipe": "preempt"}},
        },
    )
    spec = study_config.run_spec(cfg, "breastmnist", 28, "cnn_small", 1.0, 1)
    write_json(tmp_path / "spec.json", spec.to_dict())
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    write_json(tmp_path / "tracking.json", tracking.init_experiment(uri, "preempt", tmp_path / "mlartifacts"))
    return tmp_path


def start(job: Path, out: Path) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "scaleaudit",
        "train",
        "--spec",
        f"@{job / 'spec.json'}",
        "--data",
        str(job / "data" / "breastmnist_28.json"),
        "--tracking",
        str(job / "tracking.json"),
        "--out",
        str(out),
        "--threads",
        "1",
        "--checkpoint-every",
        "0",
    ]
    env = os.environ | {"PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def checkpoint_epoch(out: Path) -> int:
    path = out / "checkpoint.pt"
    if not path.exists():
        return 0
    return torch.load(path, weights_only=True)["state"]["epoch"]  # replaced atomically: always whole


def kill_after(proc: subprocess.Popen, out: Path, epoch: int, sig: signal.Signals) -> int:
    """Send ``sig`` once a checkpoint after ``epoch`` exists; return the epoch it was killed after."""
    deadline = time.monotonic() + 120
    while checkpoint_epoch(out) <= epoch:
        assert proc.poll() is None, f"training exited before its checkpoint:\n{proc.communicate()[0]}"
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.02)
    proc.send_signal(sig)
    log = proc.communicate(timeout=60)[0]
    reached = checkpoint_epoch(out)
    assert not (out / "metrics.json").exists() and reached < EPOCHS, f"the run finished before the {sig.name}:\n{log}"
    return reached


def finish(proc: subprocess.Popen) -> str:
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, log
    return log


def comparable(out: Path) -> dict:
    """What must not depend on interruptions: selection, test metrics, and the per-epoch history."""
    m = json.loads((out / "metrics.json").read_text())
    history = [{k: v for k, v in row.items() if k != "seconds"} for row in m["history"]]
    return {
        "best_epoch": m["best_epoch"],
        "epochs_run": m["epochs_run"],
        "val": m["val"],
        "test": m["test"],
        "history": history,
    }


def test_sigterm_and_sigkill_then_requeue_equals_uninterrupted(job):
    straight, preempted = job / "straight", job / "preempted"
    uninterrupted = start(job, straight)  # side by side with the interrupted one: 2 cores

    proc = start(job, preempted)
    after_term = kill_after(proc, preempted, 0, signal.SIGTERM)
    assert proc.returncode == 128 + signal.SIGTERM  # exited through the handler, not killed outright
    assert not list(preempted.glob(".*.tmp")), "a temporary file was left behind"
    record = json.loads((job / "tracking.json").read_text())
    client = mlflow.MlflowClient(tracking_uri=record["tracking_uri"])
    run_id = (preempted / "mlflow_run_id").read_text().strip()
    assert client.get_run(run_id).info.status == "KILLED"

    proc = start(job, preempted)
    after_kill = kill_after(proc, preempted, after_term, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL and after_kill > after_term

    log = finish(start(job, preempted))
    finish(uninterrupted)
    assert f"resuming after epoch {after_kill}" in log
    assert comparable(preempted) == comparable(straight)
    for name in ("labels", "probabilities"):
        assert np.array_equal(np.load(preempted / "predictions.npz")[name], np.load(straight / "predictions.npz")[name])
    assert not (preempted / "checkpoint.pt").exists()

    # One MLflow run per training job, resumed (not duplicated) across the requeues, and finished.
    runs = client.search_runs([record["experiment_id"]])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert json.loads((preempted / "metrics.json").read_text())["tracking"]["run_id"] == run_id
