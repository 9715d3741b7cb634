"""Issue 15, defect 5: a tracking server that goes down is retried visibly for a bounded time, then fails (exit 2);
waiting for it is never training time or energy. Against a real `mlflow server` on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time

import pytest
import tiny_study
from mlflow import MlflowClient
from mlflow_server import MlflowServer

from scaleaudit import cli, tracking, train
from scaleaudit.files import read_json, write_json


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module (a start takes ~30 s on a busy machine); a test that stops it starts it again
    unless it is the last (the tests run in file order)."""
    server = MlflowServer(tmp_path_factory.mktemp("server")).start()
    yield server
    server.stop()


@pytest.fixture
def job(server, tiny_mirror, tmp_path):
    tiny_study.fetch(tiny_mirror, tmp_path / "data")
    write_json(
        tmp_path / "tracking.json", tracking.init_experiment(server.uri, "scaleaudit/outage", tmp_path / "artifacts")
    )
    spec = tiny_study.spec(epochs=3)
    return [
        "train",
        "--spec",
        json.dumps(spec.to_dict()),
        "--data",
        str(tmp_path / "data" / "breastmnist_28.json"),
        "--tracking",
        str(tmp_path / "tracking.json"),
        "--out",
        str(tmp_path / "run"),
        "--threads",
        "1",
    ]


def _stop_after_first_epoch(monkeypatch, server, then=None):
    log_metrics = tracking.TrackedRun.log_metrics

    def log_then_stop(self, metrics, step):
        log_metrics(self, metrics, step)
        if step == 1 and "train_loss" in metrics and server.process is not None:
            server.stop()
            if then is not None:
                then()

    monkeypatch.setattr(tracking.TrackedRun, "log_metrics", log_then_stop)


@pytest.mark.slow  # a server start takes ~30 s on a busy 2-core machine
def test_server_back_within_the_limit_continues_and_the_wait_is_not_training_time(
    capsys, job, server, tmp_path, monkeypatch
):
    down = {}

    def restart_later():
        def restart():
            down["from"] = time.monotonic()
            time.sleep(3)
            server.start()
            down["seconds"] = time.monotonic() - down["from"]

        down["thread"] = threading.Thread(target=restart)
        down["thread"].start()

    monkeypatch.setattr(tracking, "OUTAGE_LIMIT_S", 600.0)  # a busy machine may take long to restart the server
    _stop_after_first_epoch(monkeypatch, server, then=restart_later)
    t0 = time.monotonic()
    code = cli.main(job)
    wall = time.monotonic() - t0
    down["thread"].join()
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"MLflow tracking server {server.uri} does not answer" in err
    result = read_json(tmp_path / "run" / "metrics.json")
    # everything the job did took `wall`; the server was down for `down` of it, and that is not training
    assert result["cost"]["train_seconds"] + down["seconds"] <= wall
    assert sum(row["seconds"] for row in result["history"]) <= result["cost"]["train_seconds"]
    client = MlflowClient(tracking_uri=server.uri)
    assert [m.step for m in client.get_metric_history(result["tracking"]["run_id"], "train_loss")] == [1, 2, 3]


@pytest.mark.slow  # last in the module: it leaves the server stopped
def test_server_gone_for_good_fails_clearly_after_bounded_visible_retries(capsys, job, server, tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "OUTAGE_LIMIT_S", 10.0)  # ~60 s in use; here retries after 2 and 4 s, then the error
    _stop_after_first_epoch(monkeypatch, server)
    code = cli.main(job)
    err = capsys.readouterr().err
    assert code == 2, err
    retries = [line for line in err.splitlines() if f"MLflow tracking server {server.uri} does not answer" in line]
    assert len(retries) >= 2 and all("retrying in" in line for line in retries), err
    assert f"the MLflow tracking server {server.uri} has not answered for" in err and "fix:" in err
    assert "Traceback" not in err
    # the re-run resumes from this checkpoint and MLflow run (test_tracking_identity: each step logged once)
    assert not (tmp_path / "run" / "metrics.json").exists() and (tmp_path / "run" / train.CHECKPOINT).exists()
