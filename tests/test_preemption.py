"""Preemption on a cluster: a training job killed by the scheduler and requeued resumes from its checkpoint.

Slurm preempts a job with SIGTERM (then SIGKILL after KillWait) and starts it again from the top. Here
`scaleaudit train` runs as a subprocess on the CPU, is stopped by SIGTERM after its first checkpoint,
restarted, stopped again by SIGKILL two checkpoints later, and restarted to the end: its results must equal those
of an uninterrupted run exactly (CPU training is deterministic), and MLflow must hold one finished run for it.
The signals come at a fixed point, right after a given epoch's checkpoint is saved (a signal from the test could
arrive after the run had ended, under load).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
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

# `scaleaudit train` that signals itself (as a scheduler would) right after saving the checkpoint of epoch
# $SIGNAL_AFTER_EPOCH: signal $SIGNAL_NUMBER.
SIGNAL_AFTER_CHECKPOINT = """
import os, sys
from scaleaudit import cli, train

save = train.Trainer.save

def save_then_signal(self, path):
    save(self, path)
    if self.state["epoch"] == int(os.environ["SIGNAL_AFTER_EPOCH"]):
        os.kill(os.getpid(), int(os.environ["SIGNAL_NUMBER"]))

train.Trainer.save = save_then_signal
sys.exit(cli.main(sys.argv[1:]))
"""


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


def start(job: Path, out: Path, signal_after: tuple[int, signal.Signals] | None = None) -> subprocess.Popen:
    """`scaleaudit train` of the job into ``out``; with ``signal_after`` (epoch, signal) it signals itself then."""
    args = [
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
    if signal_after is None:
        cmd = [sys.executable, "-m", "scaleaudit", *args]
    else:
        cmd = [sys.executable, "-c", SIGNAL_AFTER_CHECKPOINT, *args]
        env |= {"SIGNAL_AFTER_EPOCH": str(signal_after[0]), "SIGNAL_NUMBER": str(int(signal_after[1]))}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def checkpoint_epoch(out: Path) -> int:
    return torch.load(out / "checkpoint.pt", weights_only=True)["state"]["epoch"]


def stopped(proc: subprocess.Popen, out: Path) -> int:
    """Wait for ``proc``, stopped by its signal before the end; return the epoch its checkpoint holds."""
    log = proc.communicate(timeout=900)[0]
    assert not (out / "metrics.json").exists(), f"the run finished despite the signal:\n{log}"
    return checkpoint_epoch(out)


def finish(proc: subprocess.Popen) -> str:
    log = proc.communicate(timeout=900)[0]
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


@pytest.mark.slow
def test_sigterm_and_sigkill_then_requeue_equals_uninterrupted(job):
    straight, preempted = job / "straight", job / "preempted"
    uninterrupted = start(job, straight)  # side by side with the interrupted one: 2 cores

    proc = start(job, preempted, signal_after=(1, signal.SIGTERM))
    assert stopped(proc, preempted) == 1
    assert proc.returncode == 128 + signal.SIGTERM  # exited through the handler, not killed outright
    assert not list(preempted.glob(".*.tmp")), "a temporary file was left behind"
    record = json.loads((job / "tracking.json").read_text())
    client = mlflow.MlflowClient(tracking_uri=record["tracking_uri"])
    run_id = (preempted / "mlflow_run_id").read_text().strip()
    assert client.get_run(run_id).info.status == "KILLED"

    proc = start(job, preempted, signal_after=(3, signal.SIGKILL))
    assert stopped(proc, preempted) == 3
    assert proc.returncode == -signal.SIGKILL

    log = finish(start(job, preempted))
    finish(uninterrupted)
    assert "resuming after epoch 3" in log
    assert comparable(preempted) == comparable(straight)
    for name in ("labels", "probabilities"):
        assert np.array_equal(np.load(preempted / "predictions.npz")[name], np.load(straight / "predictions.npz")[name])
    assert not (preempted / "checkpoint.pt").exists()

    # One MLflow run per training job, resumed (not duplicated) across the requeues, and finished.
    runs = client.search_runs([record["experiment_id"]])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert json.loads((preempted / "metrics.json").read_text())["tracking"]["run_id"] == run_id
