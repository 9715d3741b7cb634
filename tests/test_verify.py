"""The run table is verified, not trusted: a hand-edited metrics.json or runs.csv, a score out of range and a missing
seed stop aggregate and report (exit 2, the run named); a run legitimately without a score is counted as one."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from runtable import make_config, make_runs, write_run_folders

from scaleaudit import adaptive, cli, report, tracking, verify
from scaleaudit.errors import ScaleauditError
from scaleaudit.files import file_digest, read_json, write_json
from scaleaudit.records import PREDICTIONS

VIT_SEED2 = "vit_b16_pretrained on breastmnist @ 28 px, fraction 1, seed 2"


@pytest.fixture
def study(tmp_path):
    """Three seeds of three arms: run folders, the run table aggregated from them, and the resolved config."""
    runs = make_runs({"vit_b16_pretrained": 0.05}, seeds=3)
    paths = write_run_folders(runs, tmp_path / "runs")
    (tmp_path / "config.json").write_text(json.dumps(make_config(runs)))
    assert cli.main(["aggregate", *map(str, paths), "--out", str(tmp_path / "runs.csv")]) == 0
    return tmp_path, paths


def vit_seed2(paths) -> Path:
    return next(p for p in paths if "vit_b16_pretrained" in str(p) and "seed2" in str(p))


def run_report(capsys, tmp, paths=None) -> tuple[int, str]:
    argv = ["report", "--runs", str(tmp / "runs.csv"), "--config", str(tmp / "config.json")]
    argv += ["--out", str(tmp / "r.pdf")] + (["--metrics", *map(str, paths)] if paths else [])
    code = cli.main(argv)
    return code, capsys.readouterr().err


def edit_table(tmp, column, value, where=VIT_SEED2):
    runs = report.read_runs(tmp / "runs.csv")
    arm, seed = where.split(" on ")[0], int(where.rsplit(" ", 1)[1])
    runs.loc[(runs["arm"] == arm) & (runs["seed"] == seed), column] = value
    runs.to_csv(tmp / "runs.csv", index=False)


def test_a_hand_edited_metrics_json_stops_aggregate(capsys, study):
    tmp, paths = study
    d = read_json(vit_seed2(paths))
    d["test"]["auc"] = 0.99
    write_json(vit_seed2(paths), d)
    assert cli.main(["aggregate", *map(str, paths), "--out", str(tmp / "again.csv")]) == 2
    err = capsys.readouterr().err
    assert f"does not match its predictions ({VIT_SEED2}): test auc 0.99 in metrics.json" in err
    assert "delete the run folder" in err and not (tmp / "again.csv").exists()


def keep_weights(folder: Path, content: bytes = b"selected weights") -> Path:
    """The run folder keeps its selected weights (as job.save_best_weights does), recorded in its metrics.json."""
    (folder / "best.safetensors").write_bytes(content)
    d = read_json(folder / "metrics.json")
    d["best_weights"] = {
        "file": "best.safetensors",
        "format": "safetensors",
        "sha256": file_digest(folder / "best.safetensors"),
        "tensors": 1,
    }
    write_json(folder / "metrics.json", d)
    return folder / "best.safetensors"


@pytest.mark.parametrize("change", ["replaced", "deleted"])
def test_selected_weights_that_are_not_the_recorded_file_stop_aggregate(capsys, study, change):
    tmp, paths = study
    weights = keep_weights(vit_seed2(paths).parent)
    assert cli.main(["aggregate", *map(str, paths), "--out", str(tmp / "again.csv")]) == 0  # kept and recorded: passes
    weights.write_bytes(b"other weights") if change == "replaced" else weights.unlink()
    assert cli.main(["aggregate", *map(str, paths), "--out", str(tmp / "again2.csv")]) == 2
    err = capsys.readouterr().err
    what = "is not the file its run recorded" if change == "replaced" else "(the run's selected weights"
    assert f"{weights} {what}" in err and VIT_SEED2 in err
    assert f"delete the run folder {weights.parent}" in err and not (tmp / "again2.csv").exists()


@pytest.fixture
def tracked_study(study):
    """The study's runs logged to a SQLite MLflow store (their final test metrics, as job.py logs them), and its
    tracking record."""
    tmp, paths = study
    record = tracking.init_experiment(f"sqlite:///{tmp / 'mlflow.db'}", "scaleaudit/verify", tmp / "artifacts")
    write_json(tmp / "tracking.json", record)
    client = mlflow.MlflowClient(tracking_uri=record["tracking_uri"])
    for path in paths:
        d = read_json(path)
        run_id = client.create_run(record["experiment_id"]).info.run_id
        for k, v in d["test"].items():
            client.log_metric(run_id, f"test_{k}", v, step=d["epochs_run"])
        d["tracking"] = {"run_id": run_id} | {k: record[k] for k in ("tracking_uri", "experiment", "experiment_id")}
        write_json(path, d)
    return tmp, paths, client


def aggregate(tmp, paths, record: Path) -> int:
    return cli.main(["aggregate", *map(str, paths), "--tracking", str(record), "--out", str(tmp / "runs.csv")])


def test_aggregate_compares_every_run_with_its_mlflow_run(capsys, tracked_study):
    tmp, paths, client = tracked_study
    assert aggregate(tmp, paths, tmp / "tracking.json") == 0
    assert "9 runs, 9 compared with their MLflow runs" in capsys.readouterr().out
    assert report.read_runs(tmp / "runs.csv")["mlflow_checked"].all()

    run_id = read_json(vit_seed2(paths))["tracking"]["run_id"]
    client.log_metric(run_id, "test_auc", 0.5, step=99)  # the MLflow run says otherwise (files of another run)
    assert aggregate(tmp, paths, tmp / "tracking.json") == 2
    err = capsys.readouterr().err
    assert f"differ from the runs' metrics.json: {VIT_SEED2} (MLflow run {run_id}): test_auc 0.5 in MLflow" in err
    assert "delete the named run folders" in err


@pytest.mark.parametrize("uri", ["http://127.0.0.1:9/", "sqlite:///{tmp}/gone/mlflow.db"])
def test_an_unreachable_tracking_store_is_a_warning_and_the_report_says_so(capsys, tracked_study, uri):
    tmp, paths, _ = tracked_study
    record = read_json(tmp / "tracking.json") | {"tracking_uri": uri.format(tmp=tmp)}
    write_json(tmp / "down.json", record)
    assert aggregate(tmp, paths, tmp / "down.json") == 0
    out, err = capsys.readouterr()
    assert "9 runs, 0 compared with their MLflow runs" in out
    assert "warning: MLflow metrics not compared with metrics.json: the MLflow " in err
    assert not (tmp / "gone").exists()  # reading never creates a store
    runs = report.read_runs(tmp / "runs.csv")
    res = report.Results.of(runs, read_json(tmp / "config.json"), verified=True)
    figs = {name: [Path(f"/figs/{name}_1.png")] for name in ("scores", "calibration", "pareto", "forest")}
    assert "The runs' metrics were not compared with MLflow" in report.to_markdown(
        report.document(res, figs), Path("/")
    )


def test_a_hand_edited_row_stops_the_report(capsys, study):
    tmp, paths = study
    edit_table(tmp, "test_auc", 0.99)
    code, err = run_report(capsys, tmp, paths)
    assert code == 2 and f"{VIT_SEED2}: test_auc 0.99, metrics.json" in err and "do not edit the run table" in err
    assert not (tmp / "r.pdf").exists()


def test_a_nan_score_the_run_did_not_give_stops_the_report(capsys, study):
    tmp, paths = study
    edit_table(tmp, "test_auc", float("nan"))
    code, err = run_report(capsys, tmp, paths)
    assert code == 2 and f"{VIT_SEED2}: test_auc nan, metrics.json" in err


@pytest.mark.parametrize("value", [1.7, -0.1, float("inf")])
def test_a_score_out_of_range_stops_the_report_even_without_run_folders(capsys, study, value):
    tmp, _ = study
    edit_table(tmp, "test_auc", value)
    code, err = run_report(capsys, tmp)
    assert code == 2 and f"score(s) out of range or infinite: {VIT_SEED2}: test_auc = {value}" in err


def test_a_missing_seed_stops_the_report(capsys, study):
    tmp, _ = study
    runs = pd.read_csv(tmp / "runs.csv")
    runs[~((runs["arm"] == "vit_b16_pretrained") & (runs["seed"] == 2))].to_csv(tmp / "runs.csv", index=False)
    code, err = run_report(capsys, tmp)
    assert code == 2 and f"lacks 1 run(s) the design asks for: {VIT_SEED2}" in err


def test_a_run_folder_the_table_lacks_stops_the_report(capsys, study):
    tmp, paths = study
    runs = pd.read_csv(tmp / "runs.csv")
    runs.loc[runs["seed"] == 3, "seed"] = 4  # the table no longer has seed 3 (but one seed 4 of each arm)
    runs.to_csv(tmp / "runs.csv", index=False)
    make = make_config(runs)
    make["design"]["seeds"] = [1, 2, 4]
    (tmp / "config.json").write_text(json.dumps(make))
    code, err = run_report(capsys, tmp, paths)
    assert code == 2 and "has no row for 3 run(s) given" in err


def test_a_run_without_a_score_is_counted_as_none(capsys, study):
    """A diverged run (non-finite predictions) has no test score: it passes, and no table counts it as a seed."""
    tmp, paths = study
    folder = vit_seed2(paths).parent
    with np.load(folder / PREDICTIONS) as p:
        labels, probs = p["labels"], np.full_like(p["probabilities"], np.nan)
    np.savez_compressed(folder / PREDICTIONS, labels=labels, probabilities=probs)
    d = read_json(folder / "metrics.json")
    d["test"] |= dict.fromkeys(("auc", "acc", "bacc", "ece"), float("nan"))
    write_json(folder / "metrics.json", d)
    assert cli.main(["aggregate", *map(str, paths), "--out", str(tmp / "runs.csv")]) == 0

    from scaleaudit.verify import rows, scores, seeds

    runs, config = report.read_runs(tmp / "runs.csv"), read_json(tmp / "config.json")
    scores(runs), seeds(adaptive.designed(runs, config)), rows(runs, paths)  # what `report` checks first: all pass
    res = report.Results.of(runs, config, verified=True)
    figs = {name: [Path(f"/figs/{name}_1.png")] for name in ("scores", "calibration", "pareto", "forest")}
    md = report.to_markdown(report.document(res, figs), Path("/"))
    vit = res.summary[res.summary["arm"] == "vit_b16_pretrained"].iloc[0]
    assert (vit.n, vit.runs) == (2, 3) and "| 2 of 3 |" in md
    assert "Every number was checked before this report was built" in md
    assert "(1 run(s) have no test score and are counted without one" in md


def test_a_document_not_built_by_the_report_step_says_it_was_not_checked():
    runs = make_runs()
    res = report.Results.of(runs, make_config(runs))
    figs = {name: [Path(f"/figs/{name}_1.png")] for name in ("scores", "calibration", "pareto", "forest")}
    assert "The run table was not checked" in report.to_markdown(report.document(res, figs), Path("/"))


def test_a_plan_from_an_older_scaleaudit_is_refused_not_compared(tmp_path):
    """Its total counted the shift stage and no kNN votes: set against the training runs, it would misstate the
    estimate's error; the report stops and says how to write it again."""
    old = tmp_path / "plan.json"
    write_json(old, {"study": "demo", "startup_s": 20.0, "total": {"runs": 12, "device_hours": 1.0, "energy_kwh": 0.1}})
    with pytest.raises(ScaleauditError, match="older scaleaudit plan: its total has no training_hours"):
        verify.plan(old)
