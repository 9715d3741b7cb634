"""MLflow tracking: where runs go, one experiment per study, one MLflow run per training job.

The default store is an embedded SQLite file under ``results/``; a tracking server is used when
``tracking.uri`` (else ``$MLFLOW_TRACKING_URI``) names one. The experiment is created once, before
training jobs fan out, because parallel ``set_experiment`` calls race in MLflow.
"""

from __future__ import annotations

import os
import random
import time
import urllib.request
from pathlib import Path
from typing import Callable, TypeVar

from . import settings
from .errors import ScaleauditError

T = TypeVar("T")
DEFAULT_DB = "results/mlflow.db"


def resolve_uri(configured: str | None, root: str | os.PathLike = ".") -> str:
    """config > ``$MLFLOW_TRACKING_URI`` (settings.py) > ``sqlite:///<root>/results/mlflow.db`` (absolute)."""
    uri = settings.value("tracking.uri", configured)
    if uri:
        return uri
    db = (Path(root) / DEFAULT_DB).resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """A tracking server that does not answer is an error now, not a hang in every training job."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
            resp.read()
    except OSError as exc:
        raise ScaleauditError(
            f"the MLflow tracking server {uri} does not answer ({exc})",
            "start it (mlflow server --backend-store-uri ... --host ... --port ...), or unset "
            "MLFLOW_TRACKING_URI / tracking.uri to use the embedded SQLite store",
        ) from exc


def retry(fn: Callable[[], T], attempts: int = 8) -> T:
    """Run an MLflow call, retrying the transient 'database is locked' of concurrent SQLite writers."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - MLflow wraps SQLAlchemy errors in its own types
            if "locked" not in str(exc).lower() or attempt == attempts - 1:
                raise
            time.sleep(min(0.2 * 2**attempt, 5) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def init_experiment(uri: str, name: str, artifact_root: str | os.PathLike) -> dict:
    """Create (or find) the study's experiment; its id is handed to every training job."""
    import mlflow

    check_reachable(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = retry(lambda: client.get_experiment_by_name(name))
    if experiment is None:
        location = None
        if not uri.startswith(("http://", "https://")):
            location = Path(artifact_root).resolve().as_uri()
        experiment_id = retry(lambda: client.create_experiment(name, artifact_location=location))
    else:
        experiment_id = experiment.experiment_id
    return {"tracking_uri": uri, "experiment": name, "experiment_id": experiment_id}


class TrackedRun:
    """One MLflow run per training job, resumed (never duplicated) when the job restarts.

    The run id is kept in ``run_id_file`` as soon as the run exists, so a job killed at any point
    continues the same run when it is started again.
    """

    def __init__(self, tracking: dict, run_id_file: Path, run_name: str, tags: dict[str, str]):
        import mlflow
        from mlflow.exceptions import MlflowException

        check_reachable(tracking["tracking_uri"])  # a server gone since init-tracking: fail now, not after retries
        self.client = mlflow.MlflowClient(tracking_uri=tracking["tracking_uri"])
        run_id = run_id_file.read_text().strip() if run_id_file.exists() else None
        if run_id is not None:
            try:
                retry(lambda: self.client.update_run(run_id, status="RUNNING"))
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                run_id = None  # the store was reset since: a new run cleanly replaces the lost one
        if run_id is None:
            run = retry(lambda: self.client.create_run(tracking["experiment_id"], run_name=run_name, tags=tags))
            run_id = run.info.run_id
            from .files import write_text

            write_text(run_id_file, run_id + "\n")
        self.run_id = run_id

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        existing = retry(lambda: self.client.get_run(self.run_id)).data.params
        new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
        if new:
            retry(lambda: self.client.log_batch(self.run_id, params=new))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        retry(lambda: self.client.log_batch(self.run_id, metrics=batch))

    def log_artifacts(self, paths: list[Path]) -> None:
        for path in paths:
            retry(lambda: self.client.log_artifact(self.run_id, str(path)))

    def log_dict(self, obj: dict, name: str) -> None:
        retry(lambda: self.client.log_dict(self.run_id, obj, name))

    def finish(self, status: str = "FINISHED") -> None:
        retry(lambda: self.client.set_terminated(self.run_id, status=status))
