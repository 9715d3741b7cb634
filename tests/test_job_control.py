"""Issue 15, defect 7: a training job dies with the workflow that started it, a run folder has one trainer,
and a study name fits every output path (checked at parse time)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tiny_study
import yaml
from mlflow import MlflowClient

from scaleaudit import cli, config, tracking, train
from scaleaudit.errors import ScaleauditError
from scaleaudit.files import write_json, write_text


@pytest.fixture
def job(tiny_mirror, tmp_path):
    """A long training job (`scaleaudit train` arguments) and its MLflow store."""
    tiny_study.fetch(tiny_mirror, tmp_path / "data")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    write_json(tmp_path / "tracking.json", tracking.init_experiment(uri, "scaleaudit/jobs", tmp_path / "artifacts"))
    args = [
        "train",
        "--spec",
        json.dumps(tiny_study.spec(epochs=500).to_dict()),
        "--data",
        str(tmp_path / "data" / "breastmnist_28.json"),
        "--tracking",
        str(tmp_path / "tracking.json"),
        "--out",
        str(tmp_path / "run"),
        "--threads",
        "1",
        "--checkpoint-every",
        "0",
    ]
    return uri, args


def _wait_for(path, text, proc, timeout=720):
    deadline = time.monotonic() + timeout
    while text not in (path.read_text() if path.exists() else ""):
        assert proc.poll() is None, path.read_text()
        assert time.monotonic() < deadline, f"no {text!r} within {timeout} s"
        time.sleep(0.2)


def _trainer_in_session(session: int) -> int:
    """The pid of the `scaleaudit train` process in a session (the workflow stand-in leads it)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[3]) == session and b"scaleaudit\0train" in cmdline:
            return int(stat.parent.name)
    raise AssertionError(f"no trainer in session {session}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _kill_once_training(workflow: subprocess.Popen, log) -> None:
    """SIGKILL ``workflow`` (alone, as `kill -9` does: nothing is sent to its jobs) once its job has trained
    two epochs; its training job must be gone within a minute."""
    try:
        _wait_for(log, "epoch 2/", workflow, timeout=900)
        trainer = _trainer_in_session(workflow.pid)
        os.kill(workflow.pid, signal.SIGKILL)
        workflow.wait(timeout=30)
        deadline = time.monotonic() + 60
        while _alive(trainer) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(trainer), "the training job outlived its workflow"
    finally:
        os.killpg(workflow.pid, signal.SIGKILL)  # whatever is left of the session


def test_second_trainer_in_the_same_run_folder_refuses_to_start(capsys, job, tmp_path):
    uri, args = job
    log = tmp_path / "first.log"
    with open(log, "w") as fh:
        first = subprocess.Popen(
            tiny_study.scaleaudit_cli() + args, env=tiny_study.env(), stderr=fh, start_new_session=True
        )
    try:
        _wait_for(log, "epoch 1/", first)
        code = cli.main(args)
        err = capsys.readouterr().err
        assert code == 2, err
        assert f"run folder {tmp_path / 'run'} is in use by another trainer (pid {first.pid})" in err and "fix:" in err
        assert first.poll() is None  # the first one trains on, undisturbed
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    client = MlflowClient(tracking_uri=uri)
    assert len(client.search_runs([client.get_experiment_by_name("scaleaudit/jobs").experiment_id])) == 1


# A stand-in for Snakemake: it runs the job through bash as Snakemake's shell directive does, then waits.
WORKFLOW = """
import subprocess, sys
job = subprocess.Popen(["bash", "-c", "set -euo pipefail; " + sys.argv[1] + " 2> " + sys.argv[2]])
job.wait()
"""


def test_training_job_dies_with_the_workflow_that_started_it(job, tmp_path):
    uri, args = job
    log = tmp_path / "job.log"
    command = " ".join(map(repr, tiny_study.scaleaudit_cli() + args))
    workflow = subprocess.Popen(
        [sys.executable, "-c", WORKFLOW, command, str(log)], env=tiny_study.env(), start_new_session=True
    )
    _kill_once_training(workflow, log)
    assert "that started this job has ended" in log.read_text()
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("scaleaudit/jobs").experiment_id])
    assert run.info.status == "KILLED"
    assert (tmp_path / "run" / train.CHECKPOINT).exists() and not (tmp_path / "run" / "metrics.json").exists()


# -- study names ------------------------------------------------------------------------------------


def _study(name: str) -> dict:
    return yaml.safe_load(yaml.safe_dump(tiny_study.TINY_CONFIG)) | {"study": name}


def test_longest_study_name_fits_every_output_path(tmp_path):
    longest = "s" * config.schema()["properties"]["study"]["maxLength"]
    config.validate(_study(longest))
    # the longest file name made from it: the atomic temporary of the report, .<study>.pdf.XXXXXXXX.tmp
    write_text(tmp_path / "reports" / f"{longest}.pdf", "x")
    write_text(tmp_path / "results" / longest / "runs.csv", "x")


def test_too_long_study_name_is_rejected_at_parse_time(tmp_path):
    with pytest.raises(ScaleauditError, match="at study: .* is too long") as err:
        config.validate(_study("s" * 238))
    assert "at most 237 characters" in str(err.value)


@pytest.mark.slow
def test_sigkilled_snakemake_leaves_no_training_job_behind(tiny_mirror, tmp_path):
    work = tiny_study.copy_workflow(tmp_path / "wf")
    study = tiny_study.TINY_CONFIG | {"design": {"arms": ["cnn_a"], "fractions": [1.0], "seeds": 1}}
    study["recipes"] = {"tiny": tiny_study.TINY_CONFIG["recipes"]["tiny"] | {"epochs": 500}}
    (work / "tiny.yaml").write_text(yaml.safe_dump(study))
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--profile",
        "workflow/profiles/local",
        "--configfile",
        "tiny.yaml",
        "--cores",
        "1",
        "results/tiny/runs.csv",
    ]
    snakemake = subprocess.Popen(
        cmd,
        cwd=work,
        env=tiny_study.env(SCALEAUDIT_MIRROR=str(tiny_mirror)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    log = work / "logs" / "tiny" / "train" / "breastmnist_28" / "cnn_a" / "frac1.0_seed1.log"
    _kill_once_training(snakemake, log)
    assert "that started this job has ended" in log.read_text()
    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'results' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("scaleaudit/tiny").experiment_id])
    assert run.info.status == "KILLED"
