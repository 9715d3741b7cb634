"""Shift evaluation of kept weights, and the verdict on clean and corrupted test sets."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tiny_study
import torch

from scaleaudit import files, job, provenance, sequential, shift, stats, train
from scaleaudit.errors import ScaleauditError
from scaleaudit.records import RunResult

# --- kept weights and their evaluation -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from mirror import write_sums

    from scaleaudit.synthetic import write_npz

    tmp = tmp_path_factory.mktemp("shift")
    write_npz(tmp / "mirror" / "breastmnist.npz")
    write_sums(tmp / "mirror")
    record = tiny_study.fetch(tmp / "mirror", tmp / "data")
    out = tmp / "run"
    job.run(tiny_study.spec(seed=1), record, out, None, None, threads=1)
    return out, record


def _corrupted(tmp_path, data_file, levels=5) -> dict:
    """A corrupted set of the layout corrupt.build writes (numpy-made: darker at each severity, black at 5)."""
    with np.load(data_file) as npz:
        clean, labels = npz["test_images"], npz["test_labels"]
    arrays = {
        "darken": np.stack([(clean * (1 - 0.2 * s)).astype(np.uint8) for s in range(1, levels + 1)]),
        "labels": labels,
    }
    np.savez(tmp_path / "c.npz", **arrays)
    return {
        "file": str(tmp_path / "c.npz"),
        "sha256": files.file_digest(tmp_path / "c.npz"),
        "corruptions": ["darken"],
        "severities": [1, 2, 3, 4, 5],
        "seed": 0,
        "families": {"darken": "color"},
        "versions": {"medmnistc": "0.1.0"},
    }


def test_training_keeps_the_selected_weights_and_records_them(finished_run):
    out, _ = finished_run
    result = RunResult.load(out / "metrics.json")
    assert result.best_weights["file"] == "best.safetensors" and (out / "best.safetensors").exists()
    assert result.best_weights["sha256"] == files.file_digest(out / "best.safetensors", "sha256")
    assert not (out / train.CHECKPOINT).exists()  # the checkpoint goes, the selected weights stay


def test_shift_eval_reproduces_the_clean_test_score_then_scores_each_severity(finished_run, tmp_path):
    out, record = finished_run
    result = RunResult.load(out / "metrics.json")
    rec = job.evaluate_shift(out, _corrupted(tmp_path, record["file"]), record, None, threads=1, log=lambda m: None)
    assert rec["clean"] == {k: result.test[k] for k in job.SHIFT_METRICS}
    assert len(rec["corrupted"]["darken"]) == 5
    assert rec["corrupted"]["darken"][-1]["auc"] == 0.5  # black images: the corrupted images were scored
    rows = pd.DataFrame(shift.rows(rec))
    assert list(rows["severity"]) == [0, 1, 2, 3, 4, 5] and list(rows["corruption"])[:2] == ["none", "darken"]
    assert list(rows["family"])[:2] == ["none", "color"]


@pytest.mark.parametrize("kind", ["linear_probe", "knn_probe"])
def test_shift_eval_of_a_probe_scores_through_its_features_like_training(kind, finished_run, tmp_path):
    """A probe trains on cached features (a kNN only votes on them): its clean score must come back through that path,
    and corrupted images through the backbone, or every probe arm of the study fails its shift evaluation."""
    import yaml

    from scaleaudit import config

    _, record = finished_run
    raw = yaml.safe_load(yaml.safe_dump(tiny_study.TINY_CONFIG))
    raw["arms"]["cnn_a"]["train"] = kind
    spec = config.run_spec(config.validate(raw), "breastmnist", 28, "cnn_a", 1.0, 1)
    out = tmp_path / kind
    job.run(spec, record, out, None, None, threads=1)
    result = RunResult.load(out / "metrics.json")
    rec = job.evaluate_shift(out, _corrupted(tmp_path, record["file"]), record, None, threads=1, log=lambda m: None)
    assert rec["clean"] == {k: result.test[k] for k in job.SHIFT_METRICS}
    assert rec["corrupted"]["darken"][-1]["auc"] == 0.5  # black images: every image gets the same score


def test_shift_recheck_is_exact_on_the_training_numerics_and_tolerant_elsewhere(finished_run, tmp_path):
    """On the device and libraries that trained the weights the clean scores must be the recorded ones; on another
    GPU model (or cuDNN, torch, timm) rounding may move them by the stated tolerance, and shift.json says which."""
    out, record = finished_run
    corrupted = _corrupted(tmp_path, record["file"])
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    result = RunResult.load(copy / "metrics.json")
    assert result.provenance["numerics"] == provenance.numerics(torch.device("cpu"))  # recorded by training
    result.test["acc"] += 0.003  # what a flipped prediction or two does on another GPU
    result.save(copy / "metrics.json")
    with pytest.raises(ScaleauditError, match="same device and libraries"):  # same numerics: exact
        job.evaluate_shift(copy, corrupted, record, None, threads=1, log=lambda m: None)

    result.provenance["numerics"] |= {"device": "cuda", "model": "NVIDIA H100 80GB HBM3", "cudnn": 91002}
    result.save(copy / "metrics.json")
    rec = job.evaluate_shift(copy, corrupted, record, None, threads=1, log=lambda m: None)
    assert rec["recheck"]["same_numerics"] is False and rec["recheck"]["tolerance"] == max(0.005, 2 / 156)
    assert (
        rec["recheck"]["trained_on"]["model"] == "NVIDIA H100 80GB HBM3" and "other kernels" in rec["recheck"]["reason"]
    )
    result.test["acc"] += 0.02  # beyond rounding: other weights or another pipeline
    result.save(copy / "metrics.json")
    with pytest.raises(ScaleauditError, match="does not give the test scores"):
        job.evaluate_shift(copy, corrupted, record, None, threads=1, log=lambda m: None)


def test_shift_eval_refuses_other_weights(finished_run, tmp_path):
    out, record = finished_run
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("metrics.json", "run_config.json"):
        (copy / name).write_bytes((out / name).read_bytes())
    state = load_file(str(out / "best.safetensors"))
    save_file({k: (v + 1 if v.is_floating_point() else v) for k, v in state.items()}, str(copy / "best.safetensors"))
    with pytest.raises(ScaleauditError, match="SHA-256"):
        job.evaluate_shift(copy, _corrupted(tmp_path, record["file"]), record, None, threads=1, log=lambda m: None)


# --- the verdict ---------------------------------------------------------------------------------------------------


def _tables(gains: dict[str, float], clean_gain: float, seeds=6, noise=0.002, seed=0):
    """A run table (small arm s, large arm L, one cell) and its shift table with planted gains of L over s."""
    rng = np.random.default_rng(seed)
    runs, shifted = [], []
    for sd in range(seeds):
        base = 0.8 + rng.normal(0, 0.02)  # the seed's difficulty, shared by the pair
        for arm, group in (("s", "small"), ("L", "large")):
            test = base + (clean_gain if arm == "L" else 0) + rng.normal(0, noise)
            key = {"dataset": "breastmnist", "size": 28, "fraction": 1.0, "arm": arm, "seed": sd}
            runs.append(key | {"group": group, "test_auc": test, "val_auc": 0.8})
            shifted.append(key | {"group": group, "corruption": "none", "family": "none", "severity": 0, "auc": test})
            for name, gain in gains.items():
                for sev in range(1, 6):
                    score = base - 0.02 * sev + (gain if arm == "L" else 0) + rng.normal(0, noise)
                    shifted.append(
                        key | {"group": group, "corruption": name, "family": name, "severity": sev, "auc": score}
                    )
    return pd.DataFrame(runs), pd.DataFrame(shifted)


def test_verdicts_tell_survives_shrinks_and_only_under_shift():
    # 210 seeds: the large arm's runs (none diverged) bound its divergence rate enough for "equivalent"
    runs, sh = _tables({"blur": 0.05, "noise": 0.0}, clean_gain=0.05, seeds=210)
    v = shift.verdicts(runs, sh).set_index("condition")
    assert list(v.index) == ["clean", "blur", "noise", "all"]
    assert v.loc["clean", "decision"] == "better" and v.loc["clean", "family"] == 1  # the per-cell family
    assert v.loc["blur", "reading"] == "gain survives" and v.loc["blur", "change_decision"] == "equivalent"
    assert v.loc["noise", "reading"] == "gain shrinks under shift" and v.loc["noise", "decision"] == "equivalent"
    assert v.loc["noise", "change"] == pytest.approx(-0.05, abs=0.01)
    assert v.loc["all", "diff"] == pytest.approx(0.025, abs=0.01)
    assert (v.loc[["blur", "noise", "all"], "family"] == 1 * 3 * 2).all()  # cells x arms x (corruptions + 1) x 2
    runs, sh = _tables({"blur": 0.05}, clean_gain=0.0, seeds=210)
    v = shift.verdicts(runs, sh).set_index("condition")
    assert v.loc["clean", "decision"] == "equivalent" and v.loc["blur", "reading"] == "gain only under shift"


def test_conditions_are_corruption_families_averaged_over_their_corruptions():
    runs, sh = _tables({"brightness_up": 0.04, "contrast_down": 0.0, "pixelate": 0.02}, clean_gain=0.02)
    sh["family"] = sh["corruption"].map(
        {"none": "none", "brightness_up": "color", "contrast_down": "color", "pixelate": "digital"}
    )
    scores = shift.condition_scores(sh).set_index(["arm", "seed", "condition"])["score"]
    bad = sh[(sh["arm"] == "L") & (sh["seed"] == 0) & sh["corruption"].isin(["brightness_up", "contrast_down"])]
    assert scores["L", 0, "color"] == pytest.approx(bad["auc"].mean())
    v = shift.verdicts(runs, sh)
    assert list(v["condition"]) == ["clean", "color", "digital", "all"]
    assert (v.loc[v["condition"] != "clean", "family"] == 1 * 3 * 2).all()  # cells x arms x (families + 1) x 2


def test_clean_condition_is_the_studys_own_verdict():
    runs, sh = _tables({"blur": 0.01}, clean_gain=0.02, noise=0.01)
    clean = shift.verdicts(runs, sh).query("condition == 'clean'").drop(columns=["condition", "reading"])
    expected = stats.compare(runs, "auc", 0.01, 0.95)
    pd.testing.assert_frame_equal(clean.reset_index(drop=True)[expected.columns], expected, check_dtype=False)


def test_the_shift_verdict_stands_on_the_main_verdict_s_footing():
    """The family is the design's (not the cells that have shift scores) and adaptive seeds use the repeated
    confidence intervals, as the main verdict does."""
    runs, sh = _tables({"blur": 0.03}, clean_gain=0.03, seeds=5, noise=0.01)
    v = shift.verdicts(runs, sh, cells=20).set_index("condition")
    main = stats.compare(runs, family=20).iloc[0]
    assert v.loc["clean", "family"] == 20 and v.loc["clean", "adj_lo"] == pytest.approx(main["adj_lo"])
    assert (v.loc[["blur", "all"], "family"] == 20 * 2 * 2).all()
    repeated = sequential.interval((3, 5))
    a = shift.verdicts(runs, sh, interval=repeated, fdr=False).set_index("condition")
    b = stats.compare(runs, interval=repeated, fdr=False).iloc[0]
    assert a.loc["clean", "adj_lo"] == pytest.approx(b["adj_lo"])
    fixed = shift.verdicts(runs, sh, fdr=False).set_index("condition")
    assert a.loc["blur", "adj_lo"] < fixed.loc["blur", "adj_lo"]  # the repeated interval is wider


def test_no_change_is_rarely_called_a_change():
    """Planted truth: the gain is the same under shift. The shift family's claims about the change are false at a
    rate at most alpha (simulation, 100 studies; a decision on the point estimate alone errs in ~40 %)."""
    false = 0
    for i in range(100):
        runs, sh = _tables({"blur": 0.03}, clean_gain=0.03, seeds=5, noise=0.02, seed=i)
        v = shift.verdicts(runs, sh).set_index("condition")
        false += v.loc["blur", "change_decision"] in ("better", "worse")
    assert false / 100 <= 0.05


def test_severity_curve_has_clean_and_five_severities():
    runs, sh = _tables({"blur": 0.05, "noise": 0.0}, clean_gain=0.05)
    curve = shift.severity_curve(sh)
    assert sorted(curve["severity"].unique()) == [0, 1, 2, 3, 4, 5]
    large = curve[curve["arm"] == "L"].set_index("severity")["mean"]
    assert large[5] < large[1] < large[0] + 0.05 and (curve["lo"] <= curve["mean"]).all()


# --- the report's section ------------------------------------------------------------------------------------------


def _shift_table(runs: pd.DataFrame, lost: dict[str, float]) -> pd.DataFrame:
    """runs_shift.csv for a run table: clean = test score; 'blur' lowers every arm by 0.02 per severity and takes
    ``lost[arm]`` off that arm (its gain lost under shift)."""
    rows = []
    for r in runs.itertuples():
        key = {k: getattr(r, k) for k in ("dataset", "size", "fraction", "arm", "seed", "group")} | {
            "medmnistc": "0.1.0",
            "shift_seed": 0,
        }
        rows.append(key | {"corruption": "none", "family": "none", "severity": 0, "auc": r.test_auc})
        for sev in range(1, 6):
            rows.append(
                key
                | {
                    "corruption": "motion_blur",
                    "family": "blur",
                    "severity": sev,
                    "auc": r.test_auc - 0.02 * sev - lost.get(r.arm, 0),
                }
            )
    return pd.DataFrame(rows)


def test_report_has_the_robustness_section_with_figure_and_table(tmp_path):
    import json

    pypdf = pytest.importorskip("pypdf")
    from runtable import make_config, make_runs

    from scaleaudit import report

    runs = make_runs({"vit_b16_pretrained": 0.05}, seeds=75)  # 75 runs of the large arm: enough for "better"
    runs.to_csv(tmp_path / "runs.csv", index=False)
    (tmp_path / "config.json").write_text(json.dumps(make_config(runs)))
    _shift_table(runs, {"vit_b16_pretrained": 0.05}).to_csv(tmp_path / "runs_shift.csv", index=False)
    pdf = tmp_path / "r.pdf"
    report.build(
        tmp_path / "runs.csv",
        tmp_path / "config.json",
        pdf,
        assets=tmp_path / "assets",
        shift_csv=tmp_path / "runs_shift.csv",
    )
    text = " ".join(" ".join(p.extract_text() for p in pypdf.PdfReader(pdf).pages).split())
    assert "Robustness under acquisition shift" in text and "gain shrinks under shift" in text
    assert "medmnistc package (version 0.1.0, seed 0)" in text
    assert "below 224 px that one decode is made to return colour" in text  # the one departure from medmnistc, said
    assert (tmp_path / "assets" / "shift_severity.png").exists()
    # without a shift table the section is absent
    report.build(tmp_path / "runs.csv", tmp_path / "config.json", tmp_path / "plain.pdf", assets=tmp_path / "plain")
    assert "Robustness" not in (tmp_path / "plain.md").read_text()
    assert not (tmp_path / "plain" / "shift_severity.png").exists()


def test_the_shift_verdict_cli_gives_the_report_s_table_and_names_a_missing_prediction(tmp_path, capsys):
    """`scaleaudit shift-verdict` reads the runs' predictions as the report does, so its clean rows take the test
    sample's variance (wider than over seeds only, which it outweighs here) and its table is the report's on the same inputs."""
    import json

    from runtable import make_config, make_runs, write_run_folders

    from scaleaudit import aggregate, cli, report
    from scaleaudit.records import read_runs
    from scaleaudit.report import curves

    runs = make_runs({"vit_b16_pretrained": 0.05}, seeds=8)
    paths = [str(p) for p in write_run_folders(runs, tmp_path / "runs", n_test=30)]
    aggregate.write(aggregate.collect(paths), tmp_path / "runs.csv")  # as the workflow writes the run table
    cfg = make_config(runs)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    sh = _shift_table(runs, {"vit_b16_pretrained": 0.05})
    sh.to_csv(tmp_path / "runs_shift.csv", index=False)
    out = tmp_path / "shift_verdict.csv"
    argv = ["shift-verdict", "--runs", str(tmp_path / "runs.csv"), "--shift", str(tmp_path / "runs_shift.csv")]
    argv += ["--config", str(tmp_path / "config.json"), "--out", str(out), "--metrics", *paths]
    assert cli.main(argv) == 0
    # the report's inputs as report.build reads them
    table, sh = read_runs(tmp_path / "runs.csv"), pd.read_csv(tmp_path / "runs_shift.csv")
    res = report.Results.of(table, cfg, curves=curves.load(paths, table), shift_table=sh)
    aggregate.write(res.shift_verdicts, tmp_path / "report_shift_verdict.csv")
    assert out.read_text() == (tmp_path / "report_shift_verdict.csv").read_text()
    got = pd.read_csv(out)
    clean = got[got["condition"] == "clean"].set_index(["arm", "small_arm"])
    seeds_only = report.Results.of(table, cfg, shift_table=sh).shift_verdicts
    seeds_only = seeds_only[seeds_only["condition"] == "clean"].set_index(["arm", "small_arm"])
    width = clean["adj_hi"] - clean["adj_lo"]
    # (8 runs of the arm, none diverged, leave its divergence rate's bound most of the width; the test part adds)
    assert (clean["test_var"] > clean["seed_var"]).all() and (width > seeds_only["adj_hi"] - seeds_only["adj_lo"]).all()
    gone = Path(paths[1]).parent / "predictions.npz"
    gone.unlink()
    out.unlink()
    assert cli.main(argv) == 2
    assert f"{gone} is missing" in capsys.readouterr().err and not out.exists()


def test_shift_eval_stops_with_the_workflow_like_training(monkeypatch, tmp_path):
    from scaleaudit import cli, jobcontrol

    calls = []
    monkeypatch.setattr(jobcontrol, "stop_with_workflow", lambda: calls.append("stop_with_workflow"))
    monkeypatch.setattr(
        job, "evaluate_shift", lambda *a, **k: calls.append("evaluate") or {"corrupted": {}, "severities": []}
    )
    for name in ("corrupted.json", "data.json"):
        files.write_json(tmp_path / name, {})
    argv = ["shift-eval", "--run", str(tmp_path), "--corrupted", str(tmp_path / "corrupted.json")]
    assert cli.main(argv + ["--data", str(tmp_path / "data.json"), "--out", str(tmp_path / "shift.json")]) == 0
    assert calls == ["stop_with_workflow", "evaluate"]


def test_the_clean_row_takes_the_test_sample_and_the_corrupted_rows_stay_seed_only():
    """The clean test split is the study's test images, so the clean verdict is the main one, test sample included;
    the corrupted sets have no per-image predictions, so their rows are over seeds only."""
    from test_testsample import agreeing_scores

    from scaleaudit import testsample

    runs, scores = agreeing_scores(24, seeds=75)  # 75 runs of the large arm: enough for "better" on seeds only
    sh = _shift_table(runs, {})
    v = shift.verdicts(runs, sh, scores=scores).set_index("condition")
    main = stats.compare(runs, test_var=testsample.variances(runs, scores, "auc")).iloc[0]
    assert v.loc["clean", "decision"] == main["decision"] == "undecided"
    assert v.loc["clean", "adj_lo"] == pytest.approx(main["adj_lo"]) and v.loc["clean", "test_var"] > 0
    seeds_only = shift.verdicts(runs, sh).set_index("condition")
    assert seeds_only.loc["clean", "decision"] == "better"  # a claim about these 24 images
    assert v.loc["blur", "adj_lo"] == pytest.approx(seeds_only.loc["blur", "adj_lo"])
    assert pd.isna(v.loc["blur", "test_var"])
    # adaptive seeds: the repeated intervals take it too
    repeated = sequential.interval((3, 5, 7))
    a = shift.verdicts(runs, sh, interval=repeated, fdr=False, scores=scores).set_index("condition")
    b = stats.compare(runs, interval=repeated, fdr=False, test_var=testsample.variances(runs, scores, "auc")).iloc[0]
    assert a.loc["clean", "adj_lo"] == pytest.approx(b["adj_lo"]) and a.loc["clean", "test_var"] > 0
