"""MLflow tracking: where runs go, one experiment per study, one MLflow run per training job.

The default store is an embedded SQLite file under ``results/``; a tracking server is used when
``tracking.uri`` (else ``$MLFLOW_TRACKING_URI``) names one. The experiment is created once, before
training jobs fan out, because parallel ``set_experiment`` calls race in MLflow; every job then finds
it again by name in the store the study's own folder resolves to (a cached id can name another
study's experiment once the store was reset, copied or moved).

A tracking server that stops answering is retried for about a minute, with a line per retry, and the
job then fails with exit 2 (Snakemake's retry resumes it from its checkpoint). Metrics are not
buffered on disk to be flushed later: ``metrics.json`` already holds every number of a run, and a
failed job is cheaper to understand than a run whose MLflow history silently lags behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from . import settings
from .errors import ScaleauditError
from .files import read_json, write_text

T = TypeVar("T")
DEFAULT_DB = "results/mlflow.db"
# One request may wait this long for the server; failed requests are retried (by us, not by MLflow's
# client, whose defaults wait ~4 minutes per call in silence) until OUTAGE_LIMIT_S have passed.
REQUEST_TIMEOUT_S = 10
OUTAGE_LIMIT_S = 60.0
# Tags that make a run's identity: a resumed job continues an MLflow run only when all of them match.
IDENTITY_TAGS = ("config_hash", "data_sha256", "weights_sha256")


class TrackingUnavailable(ScaleauditError):
    """The tracking server stopped answering and did not come back in time."""


def experiment_name(configured: str | None, study: str) -> str:
    """``tracking.experiment``, else ``scaleaudit/<study>`` (plain study names collide on a shared server)."""
    return configured or f"scaleaudit/{study}"


def resolve_uri(configured: str | None, root: str | os.PathLike = ".") -> str:
    """config > ``$MLFLOW_TRACKING_URI`` (settings.py) > ``sqlite:///<root>/results/mlflow.db`` (absolute)."""
    uri = settings.value("tracking.uri", configured)
    if uri:
        return uri
    db = (Path(root) / DEFAULT_DB).resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def is_default_store(uri: str, root: str | os.PathLike = ".") -> bool:
    """Whether ``uri`` is the study folder's own embedded store (what ``resolve_uri`` gives with nothing configured)."""
    return uri == f"sqlite:///{(Path(root) / DEFAULT_DB).resolve()}"


def _is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _local_db(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def _without_traceback(record: logging.LogRecord) -> bool:
    return not record.exc_info


def configure_client() -> None:
    """MLflow's HTTP client gives up on its own after one request; ``retry`` does the retrying, visibly.

    MLflow's SQLite store logs a traceback for every database error it then raises anyway (a locked
    database, a full disk): the error is retried or reported once, with its fix, by us.
    """
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(REQUEST_TIMEOUT_S)
    db_log = logging.getLogger("mlflow.store.db.utils")
    if _without_traceback not in db_log.filters:
        db_log.addFilter(_without_traceback)


def check_system_metrics() -> None:
    """MLflow samples system metrics with psutil, which it does not require: check before jobs start."""
    try:
        import psutil  # noqa: F401
    except ImportError as exc:
        raise ScaleauditError(
            "tracking.system_metrics is on but psutil is not installed",
            "pip install psutil, or set tracking.system_metrics: false",
        ) from exc


def check_store(uri: str) -> None:
    """A store scaleaudit can use: not MLflow's file store, and a SQLite file in a folder that exists (a mistyped
    folder would otherwise start a new, empty store)."""
    default = f"unset MLFLOW_TRACKING_URI / tracking.uri for the study's own store ({DEFAULT_DB})"
    if uri.startswith("file:") or "://" not in uri:
        raise ScaleauditError(
            f"the MLflow tracking URI {uri} is a file store: scaleaudit tracks runs in a database or on a server",
            f"use sqlite:///<absolute path>/mlflow.db or an http(s):// server, or {default}",
        )
    db = _local_db(uri)
    if db is not None and not db.parent.is_dir():
        raise ScaleauditError(
            f"the MLflow tracking URI {uri} points into {db.parent}, which does not exist",
            f"correct the path, create the folder (mkdir -p {db.parent}) if the store is to be made there, or {default}",
        )


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """A tracking server that does not answer is an error now, not a hang in every training job."""
    if not _is_server(uri):
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


def _server_outage(exc: Exception) -> bool:
    """MLflow's wording for a request that reached no server (refused, reset, timed out, or a 5xx proxy)."""
    text = str(exc)
    return text.startswith("API request to") and (
        "failed with exception" in text or "timeout exception" in text or "error code 5" in text
    )


def retry(fn: Callable[[], T], attempts: int = 8, server: str | None = None) -> T:
    """Run an MLflow call, retrying SQLite's transient 'database is locked' and a tracking server's outage.

    An outage is retried until ``OUTAGE_LIMIT_S`` have passed, with a line per retry that names the
    server; then it is an error (exit 2) that says what to do.
    """
    started, attempt = time.monotonic(), 0
    while True:
        try:
            return fn()
        except Exception as exc:
            attempt += 1
            if server is not None and _server_outage(exc):
                delay = min(2.0**attempt, 15.0)
                waited = time.monotonic() - started
                if waited + delay > OUTAGE_LIMIT_S:
                    raise TrackingUnavailable(
                        f"the MLflow tracking server {server} has not answered for {waited:.0f} s ({exc})",
                        "check the server (or the network to it) and run the step again: the job resumes "
                        "from its last checkpoint and its MLflow run; or unset MLFLOW_TRACKING_URI / "
                        "tracking.uri to track in the embedded SQLite store",
                    ) from exc
                print(
                    f"MLflow tracking server {server} does not answer (attempt {attempt}, {waited:.0f} s): "
                    f"retrying in {delay:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
                time.sleep(delay)
                continue
            if "locked" not in str(exc).lower() or attempt >= attempts:
                raise
            time.sleep(min(0.2 * 2 ** (attempt - 1), 5) * (0.5 + random.random()))


def _artifact_location(uri: str, artifact_root: str | os.PathLike | None) -> str | None:
    if _is_server(uri) or artifact_root is None:
        return None  # the server decides where artifacts go
    return Path(artifact_root).resolve().as_uri()


def find_experiment(
    client, uri: str, name: str, artifact_root: str | os.PathLike | None = None, own_store: bool = False
) -> str:
    """The id of experiment ``name`` in this store, created when missing; looked up by name, never cached.

    In a local store the experiment must keep its artifacts where this study's folder says. The
    study's own store (``own_store``), copied or moved with its folder, still names the old folder:
    it is pointed at the new one. Any other store is the user's to fix.
    """
    server = uri if _is_server(uri) else None
    experiment = retry(lambda: client.get_experiment_by_name(name), server=server)
    location = _artifact_location(uri, artifact_root)
    if experiment is None:
        return retry(lambda: client.create_experiment(name, artifact_location=location), server=server)
    if experiment.lifecycle_stage == "deleted":
        raise ScaleauditError(
            f"the MLflow experiment {name!r} in {uri} is deleted",
            f"restore it (mlflow experiments restore --experiment-id {experiment.experiment_id}), "
            "or name another one in tracking.experiment",
        )
    if location is not None and experiment.artifact_location.rstrip("/") != location.rstrip("/"):
        if not own_store:
            raise ScaleauditError(
                f"the MLflow store {uri} was copied or moved: its experiment {name!r} keeps artifacts in "
                f"{experiment.artifact_location}, not in {location}",
                "keep the store where it was made, or start a fresh store (delete or rename its database and "
                "artifact folder; metrics.json and runs.csv keep every result), or name another experiment",
            )
        retry(lambda: _relocate_artifacts(_local_db(uri), experiment.artifact_location, location))
        print(
            f"MLflow store {uri} was copied or moved: experiment {name!r} now keeps its artifacts in {location} "
            f"(was {experiment.artifact_location})",
            file=sys.stderr,
            flush=True,
        )
    return experiment.experiment_id


def _relocate_artifacts(db: Path, old: str, new: str) -> None:
    """Point an experiment and its runs from the artifact folder ``old`` to ``new`` (MLflow has no API for it)."""
    import sqlite3

    old, new = old.rstrip("/"), new.rstrip("/")
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as con, con:
        con.execute(
            "UPDATE experiments SET artifact_location = ? WHERE artifact_location IN (?, ?)", (new, old, old + "/")
        )
        con.execute(
            "UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) WHERE substr(artifact_uri, 1, ?) = ?",
            (new, len(old) + 1, len(old) + 1, old + "/"),
        )


def init_experiment(
    uri: str, name: str, artifact_root: str | os.PathLike, record_dir: str | os.PathLike | None = None
) -> dict:
    """Create (or find) the study's experiment, once before training jobs fan out; return its record.

    The study's own store (given ``record_dir``, the folder of the record) is recorded relative to it,
    so that a copied or moved study folder resolves it to its own store (see ``job_tracking``).
    """
    import mlflow

    configure_client()
    check_store(uri)
    check_reachable(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment_id = find_experiment(client, uri, name, artifact_root, own_store=record_dir is not None)
    record = {"tracking_uri": uri, "experiment": name, "experiment_id": experiment_id}
    db = _local_db(uri)
    if record_dir is not None and db is not None:
        record["local_store"] = {
            "db": os.path.relpath(db, record_dir),
            "artifacts": os.path.relpath(artifact_root, record_dir),
        }
    if db is not None:
        record["artifact_root"] = str(Path(artifact_root).resolve())
    return record


def job_tracking(record_path: str | os.PathLike) -> dict:
    """A training job's view of the record: a local store resolved against the record's own folder."""
    record_path = Path(record_path)
    record = read_json(record_path)
    local = record.get("local_store")
    if local:
        base = record_path.resolve().parent
        record["tracking_uri"] = f"sqlite:///{(base / local['db']).resolve()}"
        record["artifact_root"] = str((base / local["artifacts"]).resolve())
    return record


def final_metrics(record: dict, run_ids: list[str]) -> dict[str, dict[str, float] | None]:
    """The last logged value of every metric of each MLflow run (None: the store has no such run), read from the
    study's store (``record``: ``job_tracking``'s). Only reads: a missing SQLite file is unreachable, not created; a
    server that does not answer is not waited for."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = record["tracking_uri"]
    configure_client()
    db = _local_db(uri)
    if db is not None and not db.is_file():
        raise TrackingUnavailable(f"the MLflow store {db} does not exist")
    try:
        check_reachable(uri)
    except ScaleauditError as exc:
        raise TrackingUnavailable(exc.problem, exc.fix) from None
    client = mlflow.MlflowClient(tracking_uri=uri)

    def run_metrics(run_id: str) -> dict[str, float] | None:
        try:
            return retry(lambda: client.get_run(run_id)).data.metrics
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            if _server_outage(exc):
                raise TrackingUnavailable(f"the MLflow tracking server {uri} stopped answering ({exc})") from None
            raise

    return {run_id: run_metrics(run_id) for run_id in run_ids}


class TrackedRun:
    """One MLflow run per training job and run identity, resumed (never duplicated) when the job restarts.

    The run id is kept in ``run_id_file`` as soon as the run exists, so a job killed at any point
    continues the same run when it is started again, provided the run is in this study's experiment
    and has the same identity (config hash, data and weights checksums). A run of another identity
    (the spec changed, the data or weights were replaced) is tagged as superseded and a new run starts.
    A resumed run logs only the steps it has not logged yet, so its history has each step once.
    """

    def __init__(self, tracking: dict, run_id_file: Path, run_name: str, tags: dict[str, str]):
        import mlflow
        from mlflow.exceptions import MlflowException

        uri = tracking["tracking_uri"]
        self.server = uri if _is_server(uri) else None
        configure_client()
        check_reachable(uri)  # a server gone since init-tracking: fail now, not after retries
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        experiment_id = find_experiment(
            self.client, uri, tracking["experiment"], tracking.get("artifact_root"), own_store="local_store" in tracking
        )
        self.experiment_id = experiment_id
        identity = {k: tags[k] for k in IDENTITY_TAGS if k in tags}
        run_id = run_id_file.read_text().strip() if run_id_file.exists() else None
        old = None
        if run_id is not None:
            try:
                old = self._call(lambda: self.client.get_run(run_id))
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                # the store was reset since: a new run cleanly replaces the lost one
        self.logged: dict[str, set[int]] = {}
        # a run of another study's experiment (a reset store) or a deleted run is left alone
        ours = old is not None and old.info.experiment_id == experiment_id and old.info.lifecycle_stage == "active"
        if ours and all(old.data.tags.get(k) == v for k, v in identity.items()):
            self.run_id = run_id
            self._call(lambda: self.client.update_run(run_id, status="RUNNING"))
            self.logged = {
                key: {m.step for m in self._call(lambda key=key: self.client.get_metric_history(run_id, key))}
                for key in old.data.metrics
            }
            return
        if ours:
            tags = tags | {"scaleaudit.supersedes": old.info.run_id}
        run = self._call(lambda: self.client.create_run(experiment_id, run_name=run_name, tags=tags))
        self.run_id = run.info.run_id
        if ours:
            # the old run keeps what it logged; it is marked, and ended if its job died while it ran
            self._call(lambda: self.client.set_tag(old.info.run_id, "scaleaudit.superseded_by", self.run_id))
            if old.info.status == "RUNNING":
                self._call(lambda: self.client.set_terminated(old.info.run_id, status="KILLED"))
        write_text(run_id_file, self.run_id + "\n")

    def _call(self, fn: Callable[[], T]) -> T:
        return retry(fn, server=self.server)

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        existing = self._call(lambda: self.client.get_run(self.run_id)).data.params
        new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
        if new:
            self._call(lambda: self.client.log_batch(self.run_id, params=new))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log the metrics of ``step`` that this run does not hold yet (a resumed job repeats epochs)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), now, step)
            for k, v in metrics.items()
            if v is not None and step not in self.logged.get(k, ())
        ]
        if batch:
            self._call(lambda: self.client.log_batch(self.run_id, metrics=batch))
            for m in batch:
                self.logged.setdefault(m.key, set()).add(step)

    def log_input(self, path: Path, name: str, digest: str, context: str) -> None:
        """The data file as a dataset input of the run (name, digest, source), once per run."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        inputs = self._call(lambda: self.client.get_run(self.run_id)).inputs.dataset_inputs
        if any(i.dataset.digest == digest[:36] for i in inputs):
            return
        dataset = Dataset(name=name, digest=digest[:36], source_type="local", source=str(Path(path).resolve()))
        tags = [
            InputTag("mlflow.data.context", context),
            InputTag("sha256", digest),
        ]  # MLflow's digest holds 36 characters
        self._call(lambda: self.client.log_inputs(self.run_id, [DatasetInput(dataset, tags)]))

    def log_artifacts(self, paths: list[Path]) -> None:
        for path in paths:
            self._call(lambda path=path: self.client.log_artifact(self.run_id, str(path)))

    def log_model(self, model, staging: Path) -> None:
        """The model as an MLflow model (``mlflow.pytorch`` flavour, artifact ``model``), staged in ``staging``; the
        requirements are named, not inferred (inference imports the model in a subprocess). Pickled: MLflow's 'pt2'
        format would trace (torch.export) every architecture; the safe copy is best.safetensors beside it."""
        import shutil

        import mlflow.pytorch
        import torch

        shutil.rmtree(staging, ignore_errors=True)
        mlflow.pytorch.save_model(
            model,
            str(staging),
            serialization_format="pickle",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "timm", "scaleaudit"],
        )
        self._call(lambda: self.client.log_artifacts(self.run_id, str(staging), "model"))
        shutil.rmtree(staging, ignore_errors=True)

    def set_tag(self, key: str, value: str) -> None:
        self._call(lambda: self.client.set_tag(self.run_id, key, value))

    def log_dict(self, obj: dict, name: str) -> None:
        self._call(lambda: self.client.log_dict(self.run_id, obj, name))

    def finish(self, status: str = "FINISHED") -> None:
        self._call(lambda: self.client.set_terminated(self.run_id, status=status))
