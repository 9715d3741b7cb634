"""Many training jobs logging to the embedded SQLite MLflow store at once: every run and metric is kept."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

JOBS, STEPS = 8, 15


def _job(tracking: dict, folder: Path, job: int) -> None:
    """One training job's tracking, as train.run does it: create the run, params, per-epoch metrics, finish."""
    from scaleaudit.tracking import TrackedRun

    run = TrackedRun(tracking, folder / "mlflow_run_id", run_name=f"job{job}", tags={"job": str(job)})
    run.log_params({"job": job, "seed": job})
    for step in range(1, STEPS + 1):
        run.log_metrics({"train_loss": job + step / 100, "val_auc": step / STEPS, "lr": 1e-3}, step=step)
    run.log_dict({"job": job}, "metrics.json")
    run.finish()


def test_eight_processes_log_to_one_sqlite_store(tmp_path):
    from mlflow import MlflowClient

    from scaleaudit import tracking

    record = tracking.init_experiment(f"sqlite:///{tmp_path / 'mlflow.db'}", "concurrency", tmp_path / "artifacts")
    # Separate processes, each with its own database connections; forked from a server that imported
    # MLflow once, so that the test pays for one import instead of eight.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["mlflow", "scaleaudit.tracking"])
    procs = [ctx.Process(target=_job, args=(record, tmp_path / f"job{j}", j)) for j in range(JOBS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=1800)
    assert [p.exitcode for p in procs] == [0] * JOBS  # a 'database is locked' would have failed a job

    client = MlflowClient(tracking_uri=record["tracking_uri"])
    runs = client.search_runs([record["experiment_id"]])
    assert sorted(r.data.tags["job"] for r in runs) == [str(j) for j in range(JOBS)]
    for run in runs:
        job = int(run.data.tags["job"])
        assert run.info.status == "FINISHED"
        assert run.data.params == {"job": str(job), "seed": str(job)}
        assert (tmp_path / f"job{job}" / "mlflow_run_id").read_text().strip() == run.info.run_id
        for key in ("train_loss", "val_auc", "lr"):
            assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == list(range(1, STEPS + 1))


def test_retry_rides_out_locked_database_but_not_other_errors(monkeypatch):
    from sqlalchemy.exc import OperationalError

    from scaleaudit import tracking

    monkeypatch.setattr(tracking.time, "sleep", lambda s: None)
    calls = []

    def locked_twice():
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("INSERT ...", {}, Exception("database is locked"))
        return "ok"

    assert tracking.retry(locked_twice) == "ok" and len(calls) == 3
    calls.clear()

    def broken():
        calls.append(1)
        raise ValueError("no such table: runs")

    with pytest.raises(ValueError):
        tracking.retry(broken)
    assert len(calls) == 1
