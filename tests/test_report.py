"""The report: rendered to PDF and Markdown from a synthetic run table, its text checked."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from runtable import make_config, make_runs, write_run_folders

from scaleaudit import calibration, report

pypdf = pytest.importorskip("pypdf")

DATASETS = (("breastmnist", 28), ("pneumoniamnist", 28))
THREE = DATASETS + (("dermamnist", 28),)  # a study-level claim about such tasks needs a few datasets
# seeds per cell that give the large arm enough runs, none diverged, to bound its divergence rate for the claim
# (stats.with_divergence): 75 runs over THREE for +0.05, the full design's 210 for "equivalent"
CLAIMS, TIES = 25, 70
FIGS = {name: [Path(f"/figs/{name}_1.png")] for name in ("scores", "calibration", "pareto", "forest")}


def markdown(runs, **verdict) -> str:
    """The report's content without drawing figures (fast)."""
    res = report.Results.of(runs, make_config(runs, **verdict))
    return report.to_markdown(report.document(res, FIGS), Path("/"))


def test_pdf_and_markdown_carry_summary_table_and_appendix(tmp_path):
    # 13 seeds: 78 runs of the large arm, enough for "better" at +0.05
    runs = make_runs({"vit_b16_pretrained": 0.05}, seeds=13, datasets=THREE, fractions=(0.3, 1.0), published=False)
    runs.to_csv(tmp_path / "runs.csv", index=False)
    (tmp_path / "config.json").write_text(json.dumps(make_config(runs)))
    pdf = tmp_path / "reports" / "synthetic.pdf"

    report.build(tmp_path / "runs.csv", tmp_path / "config.json", pdf, assets=tmp_path / "assets")

    text = " ".join(" ".join(page.extract_text() for page in pypdf.PdfReader(pdf).pages).split())
    # the one-page summary: verdict table per dataset and the overall sentence that the numbers support
    assert "Verdict per dataset" in text
    assert "breastmnist @ 28 px" in text and "pneumoniamnist @ 28 px" in text
    assert "better" in text and "Overall: Scale pays" in text
    # the sections the issue asks for
    for section in (
        "Methods",
        "Results",
        "Paired differences",
        "Across datasets",
        "Performance against cost",
        "Data efficiency",
        "Calibration",
        "Reproduction check",
        "Costs",
        "Appendix: provenance",
    ):
        assert section in text, section
    # the appendix: every run's MLflow id and config hash, the data checksums, versions and commit
    for r in runs.itertuples():
        assert r.mlflow_run_id in text and r.config_hash in text
    assert "breastmnist-sha256-0123456789abcdef" in text and "2.14.1" in text and runs["code_commit"][0] in text
    # weights that are not the published ones are flagged, and their source is shown
    assert f"Vit B16 Pretrained {report.NOT_PUBLISHED}" in text and "NOT the published" in text
    assert "vit_base_patch16_224.augreg_in21k_ft_in1k" in text
    # reproduction beside the published MedMNIST v2 number (breastmnist ResNet-18 at 28 px: AUC 0.901)
    assert "0.901" in text and "medmnist_v2/resnet18_28" in text

    md = (pdf.with_suffix(".md")).read_text()
    assert "Overall: Scale pays" in md and "| breastmnist @ 28 px |" in md
    for name in ("scores_1", "forest", "pareto_1", "efficiency", "calibration_1"):
        assert (tmp_path / "assets" / f"{name}.png").stat().st_size > 0
        assert f"](../assets/{name}.png)" in md  # relative to the .md file


def test_verdict_follows_the_runs():
    gain = markdown(make_runs({"vit_b16_pretrained": 0.05}, seeds=CLAIMS, datasets=THREE))
    none = markdown(make_runs({"vit_b16_pretrained": 0.0}, seeds=TIES, noise=0.002, datasets=THREE))
    assert "Overall: Scale pays" in gain and "Overall: Scale does not pay" in none
    assert "scale won on 3, tied on 0, lost on 0 and is undecided on 0 of 3 dataset(s)" in gain
    # the threshold comes from the config
    rope = markdown(make_runs({"vit_b16_pretrained": 0.05}, seeds=CLAIMS, datasets=THREE), rope=0.1)
    assert "Overall: Scale pays" not in rope
    # one dataset says nothing about such tasks, even with the arm's runs of all three in it
    assert "Overall: Scale pays" not in markdown(make_runs({"vit_b16_pretrained": 0.05}, seeds=3 * CLAIMS))


def test_single_fraction_and_cpu_runs_are_said_not_hidden():
    md = markdown(make_runs(accelerator=False))
    assert "One fraction only (1)" in md
    assert "device-hours" in md and "accelerator-hours are 0" in md
    assert "accelerator-hours are 0" not in markdown(make_runs(accelerator=True))


def test_typst_escapes_markup_in_values():
    assert report.esc("a//b #x [y] *z* -1 = _") == r"a\/\/b \#x \[y\] \*z\* \-1 \= \_"


def test_reproduces_is_checked_and_leaves_training_alone():
    from mirror import REPO

    from scaleaudit import config
    from scaleaudit.errors import ScaleauditError

    full, demo = REPO / "config" / "config.yaml", REPO / "config" / "demo.yaml"
    cfg = config.load(full, demo)
    assert cfg["arms"]["resnet18_scratch"]["reproduces"] == "medmnist_v2/resnet18_28"
    # a report-only key: the run's spec and hash (and so Snakemake's re-run decision) do not see it
    other = config.load(full, demo, overrides={"arms": {"resnet18_scratch": {"reproduces": None}}})
    assert config.run_spec(cfg, "breastmnist", 28, "resnet18_scratch", 1.0, 1) == config.run_spec(
        other, "breastmnist", 28, "resnet18_scratch", 1.0, 1
    )
    with pytest.raises(ScaleauditError, match="unknown published result 'medmnist_v2/resnet19_28'"):
        config.load(full, demo, overrides={"arms": {"resnet18_scratch": {"reproduces": "medmnist_v2/resnet19_28"}}})


def test_report_needs_no_training_stack():
    import subprocess
    import sys

    code = "import sys, scaleaudit.report; print(sorted({'torch', 'timm', 'mlflow', 'codecarbon'} & set(sys.modules)))"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    )


def test_methods_state_the_interval_equivalence_test_multiplicity_and_measured_coverage():
    md = markdown(make_runs({"vit_b16_pretrained": 0.05}, datasets=DATASETS, fractions=(0.3, 1.0)))
    assert "two-sided t-interval" in md and "Welch–Satterthwaite" in md
    assert "two one-sided tests at α/2 each" in md
    assert "Multiplicity:" in md and "(m = 4: datasets" in md and "(m = 2: large arms" in md
    assert "false discovery rate (Benjamini–Hochberg at q = α)" in md and "family-wise (Bonferroni)" in md
    assert "gain over the best small arm" in md and "random effects, k − 1 degrees of freedom" in md
    cell = calibration.measured()["cell"]
    lo, hi = min(r["coverage"] for r in cell), max(r["coverage"] for r in cell)
    assert f"covered the planted difference in {lo:.1%}–{hi:.1%} of the studies" in md
    # the seeds' interval is the t-interval, not a percentile bootstrap of seeds (the bootstrap is over test images)
    assert "Wilcoxon" not in md and "percentile bootstrap" not in md and "bootstrap over test images" in md
    # every scenario of real studies, its error rates and its power beside them (calibration.json)
    het = next(r for r in calibration.measured()["scenarios"] if r["scenario"].startswith("heterogeneous"))
    assert (
        f"| {het['scenario']} | 5 | {het['coverage']:.1%} | {het['false_better']:.1%} | {het['power_0.05']:.0%} |" in md
    )
    assert md.count("| divergence ") == 3 and "| sequential design with test-sample variance | 3–15 |" in md
    # the seeds-needed column says what its dash means
    assert "– where none up to 1000 would (a mean on a ROPE edge, or a test sample too small" in " ".join(md.split())


def test_verdict_sentence_is_a_claim_for_the_study_per_fraction():
    runs = make_runs(
        {"vit_b16_pretrained": lambda f: 0.05 if f == 1.0 else 0.0},
        seeds=10,
        noise=0.002,
        fractions=(0.3, 1.0),
        datasets=THREE,
    )
    md = markdown(runs)
    assert "Overall: Scale pays: Vit B16 Pretrained at training fraction 1 (+0.050 AUC mean over 3 dataset(s)" in md
    assert "1 other summary(ies) do not; a claim at 95% confidence about tasks like these datasets" in md
    assert "Bonferroni over 2 large arm" in md


def test_an_undecided_arm_whose_interval_ends_below_the_rope_cannot_still_pay():
    """The demo's case: gain -0.14, simultaneous CI [-0.28, -0.005]; undecided between worse and equivalent, never better."""
    row = {
        "arm": "vit",
        "fraction": 1.0,
        "tasks": 1,
        "pairs": 3,
        "thin": "",
        "dropped": 0,
        "mean_diff": -0.144,
        "iqm_diff": -0.144,
        "lo": -0.25,
        "hi": -0.03,
        "family": 1,
        "p_improve": 0.0,
        "decision": "undecided",
        "won": 0,
        "tied": 0,
        "lost": 0,
        "undecided": 1,
    }
    below = pd.DataFrame([row | {"adj_lo": -0.283, "adj_hi": -0.005}])
    across = pd.DataFrame([row | {"adj_lo": -0.283, "adj_hi": 0.02}])
    assert report.verdict_sentence(below, 0.01, "auc", 0.95).startswith("Scale does not pay: no large arm beats")
    assert "worse or equivalent to it is not decided yet" in report.verdict_sentence(below, 0.01, "auc", 0.95)
    assert report.verdict_sentence(across, 0.01, "auc", 0.95).startswith("Not decided yet")


def test_more_comparisons_in_the_design_widen_the_intervals_that_decide():
    # 35 seeds: 105 runs of the large arm bound its divergence rate for +0.03
    runs = make_runs({"vit_b16_pretrained": 0.03}, seeds=35, noise=0.004, seed=1, datasets=THREE)
    assert "Overall: Scale pays" in markdown(runs)
    config = make_config(runs)
    config["design"]["fractions"] = [1.0] + [round(0.05 * k, 2) for k in range(1, 15)]  # 15 fractions, 14 not run
    md = report.to_markdown(report.document(report.Results.of(runs, config), FIGS), Path("/"))
    assert "Overall: Not decided yet" in md and "(m = 15: large arms × fractions)" in md


def test_dropped_scores_missing_seeds_and_thin_cells_are_flagged():
    runs = make_runs({"vit_b16_pretrained": 0.05}, seeds=3, datasets=THREE)
    runs.loc[
        (runs["arm"] == "resnet18_scratch") & (runs["seed"] == 1) & (runs["dataset"] == "breastmnist"), "test_auc"
    ] = float("nan")
    runs = runs[~((runs["arm"] == "vit_b16_pretrained") & (runs["dataset"] == "pneumoniamnist") & (runs["seed"] == 3))]
    md = markdown(runs)
    assert (
        "Left out of the pairs: 1 run(s): Resnet18 Scratch on breastmnist @ 28 px, fraction 1, seed 1 "
        "(non-finite test\\_auc)."
    ) in md
    assert "Fewer seeds than designed: Vit B16 Pretrained on pneumoniamnist @ 28 px, fraction 1: 2 of 3." in md
    assert (
        "No decision (fewer than 3 pairs): Vit B16 Pretrained on pneumoniamnist @ 28 px, fraction 1: "
        "2 pair(s): at least 3 needed for a decision."
    ) in md
    assert (
        "Thin datasets left out of the summary (fewer than 3 pairs): Vit B16 Pretrained, fraction 1: "
        "pneumoniamnist @ 28 px (2 pair(s))." in md
    )
    assert "mean over 2 dataset(s)" in md and "1 thin dataset(s) left out" in md  # the thin cell does not void it


def test_each_arm_has_a_divergence_rate_and_the_comparisons_name_diverged_runs():
    runs = make_runs({"vit_b16_pretrained": 0.05}, seeds=5, datasets=THREE)
    hit = (runs["arm"] == "vit_b16_pretrained") & (runs["dataset"] == "breastmnist") & (runs["seed"] == 2)
    runs.loc[hit, ["diverged", "test_auc", "val_auc"]] = [True, float("nan"), float("nan")]
    res = report.Results.of(runs, make_config(runs))
    d = res.divergence.set_index("arm").loc["vit_b16_pretrained"]
    assert (d["runs"], d["diverged"]) == (15, 1)
    assert d["lo"] == pytest.approx(0.0017, abs=1e-4) and d["hi"] == pytest.approx(0.3195, abs=1e-4)  # exact 1/15
    md = report.to_markdown(report.document(res, FIGS), Path("/"))
    assert "Diverged runs" in md and "Clopper-Pearson" in md
    assert "Vit B16 Pretrained on breastmnist @ 28 px, fraction 1: diverged: vit\\_b16\\_pretrained seed 2" in md


def test_one_seed_is_never_decided():
    md = markdown(make_runs({"vit_b16_pretrained": 0.05}, seeds=1))
    assert "Overall: Not decided yet" in md and "no interval: fewer than 2 datasets with 3 or more pairs" in md
    # one dataset: the sentence still counts it, and says what a claim about such tasks needs
    assert "undecided on 1 of 1 dataset(s)" in md and "a claim about such tasks needs at least 2 datasets" in md


def test_duplicated_run_stops_the_report(tmp_path):
    from scaleaudit import cli

    runs = make_runs()
    pd.concat([runs, runs.iloc[[0]]]).to_csv(tmp_path / "runs.csv", index=False)
    (tmp_path / "config.json").write_text(json.dumps(make_config(runs)))
    rc = cli.main(
        [
            "report",
            "--runs",
            str(tmp_path / "runs.csv"),
            "--config",
            str(tmp_path / "config.json"),
            "--out",
            str(tmp_path / "r.pdf"),
        ]
    )
    assert rc == 2 and not (tmp_path / "r.pdf").exists()


def test_every_paragraph_the_sections_name_is_a_template_macro():
    """A misspelt paragraph name would only fail in the rare branch that renders it: check every call site."""
    import ast
    import inspect

    from scaleaudit.report import prose, sections

    calls = {
        (c.args[0].value, c.args[1].value)
        for c in ast.walk(ast.parse(inspect.getsource(sections)))
        if isinstance(c, ast.Call) and getattr(c.func, "id", None) == "text"
    }
    assert len(calls) > 40
    for template, paragraph in calls:
        assert callable(getattr(prose._environment().get_template(f"{template}.j2").module, paragraph, None)), (
            f"{template}.j2 has no macro {paragraph}"
        )


def test_every_large_arm_worse_is_said_so():
    row = {
        "arm": "vit",
        "fraction": 1.0,
        "tasks": 1,
        "pairs": 3,
        "thin": "",
        "dropped": 0,
        "mean_diff": -0.2,
        "iqm_diff": -0.2,
        "lo": -0.25,
        "hi": -0.15,
        "adj_lo": -0.3,
        "adj_hi": -0.1,
        "family": 1,
        "p_improve": 0.0,
        "decision": "worse",
        "won": 0,
        "tied": 0,
        "lost": 1,
        "undecided": 0,
    }
    text = report.verdict_sentence(pd.DataFrame([row]), 0.01, "auc", 0.95, {"vit": "ViT"})
    assert text == (
        "Scale does not pay: every large arm is worse than the best small model by more than the practical "
        "threshold of ±0.01 AUC; the closest is ViT (-0.200 AUC mean over 1 dataset(s), simultaneous CI for such "
        "tasks [-0.300, -0.100]; scale won on 0, tied on 0, lost on 1 and is undecided on 0 of 1 dataset(s)); a claim at 95% "
        "confidence about tasks like these datasets (random effects across datasets; Bonferroni over 1 large arm × "
        "fraction summaries)."
    )


def test_learning_curves_and_reliability_diagrams_come_from_the_run_folders(tmp_path):
    from scaleaudit import aggregate

    runs = make_runs({"vit_b16_pretrained": 0.05}, seeds=3, datasets=DATASETS)
    paths = write_run_folders(runs, tmp_path / "runs")
    table = aggregate.collect(paths)  # the folders are the runs of the table
    assert table[["arm", "seed", "test_auc", "config_hash"]].equals(
        runs.sort_values(["dataset", "size", "arm", "fraction", "seed"], ignore_index=True)[
            ["arm", "seed", "test_auc", "config_hash"]
        ]
    )
    table.to_csv(tmp_path / "runs.csv", index=False)  # as aggregate writes it: the report checks it against the runs
    (tmp_path / "config.json").write_text(json.dumps(make_config(runs)))
    pdf = tmp_path / "r.pdf"
    given = [p for p in paths if "seed3" not in str(p) or "cnn_small" not in str(p) or "pneumonia" not in str(p)]

    report.build(tmp_path / "runs.csv", tmp_path / "config.json", pdf, assets=tmp_path / "assets", metrics=given)

    md = pdf.with_suffix(".md").read_text()
    assert "## Learning curves and reliability" in md
    for name in ("learning_loss_1", "learning_val_1", "reliability_1"):
        assert (tmp_path / "assets" / f"{name}.png").stat().st_size > 0 and f"]({'assets'}/{name}.png)" in md
    assert (
        "Not drawn, no run files given: 1 run(s) of the run table (Cnn Small on pneumoniamnist @ 28 px, "
        "fraction 1, seed 3)." in md
    )
    text = " ".join(" ".join(page.extract_text() for page in pypdf.PdfReader(pdf).pages).split())
    assert "Reliability diagram of the test split" in text and "Validation AUC per epoch" in text


def test_curves_are_the_runs_history_and_binned_predictions(tmp_path):
    import numpy as np

    from scaleaudit import metrics
    from scaleaudit.report import curves

    runs = make_runs(seeds=2)
    paths = write_run_folders(runs, tmp_path)
    c = curves.load(paths, runs)
    assert len(c.history) == runs["epochs_run"].sum() and c.missing.empty
    one = c.history[(c.history["arm"] == "cnn_small") & (c.history["seed"] == 2)]
    assert one["epoch"].tolist() == [1, 2, 3, 4] and one["train_loss"].tolist() == [0.7 / e for e in range(1, 5)]
    with np.load(paths[0].parent / "predictions.npz") as p:
        expected = metrics.reliability(p["labels"], p["probabilities"], "binary")
    first = c.reliability[(c.reliability["arm"] == runs["arm"][0]) & (c.reliability["seed"] == runs["seed"][0])]
    assert first["accuracy"].tolist() == expected["accuracy"].tolist() and first["count"].sum() == 200


def test_a_run_folder_not_in_the_run_table_stops_the_report(tmp_path):
    from scaleaudit.errors import ScaleauditError
    from scaleaudit.report import curves

    runs = make_runs(seeds=2)
    paths = write_run_folders(runs, tmp_path)
    stale = runs.assign(config_hash=runs["config_hash"].where(runs.index != 0, "f" * 16))  # the table moved on
    with pytest.raises(ScaleauditError, match="is not a run of the run table"):
        curves.load(paths, stale)
    (paths[1].parent / "predictions.npz").unlink()
    with pytest.raises(ScaleauditError, match="predictions.npz is missing"):
        curves.load(paths[1:], runs)


def test_without_run_files_the_report_says_how_to_get_the_curves():
    md = markdown(make_runs())
    assert "## Learning curves and reliability" in md and "scaleaudit report --metrics" in md


def test_each_dataset_says_how_much_of_its_uncertainty_is_seeds_and_how_much_the_test_sample(tmp_path):
    from scaleaudit.report import curves

    runs = make_runs({"vit_b16_pretrained": 0.05}, seeds=3, datasets=DATASETS)
    paths = write_run_folders(runs, tmp_path, n_test=60)
    res = report.Results.of(runs, make_config(runs), curves=curves.load(paths, runs))
    md = report.to_markdown(report.document(res, FIGS), Path("/"))
    split = res.test_sample.set_index("dataset")
    assert list(split["test_images"]) == [60, 60] and (split["test_var"] > 0).all()
    share = split["test_share"].max()
    assert "| dataset | test images | sd from seeds | sd from test sample | test-sample share of variance |" in md
    assert f"the test sample's 60 images account for {share:.0%} of the variance of the gain" in md
    assert "a per-cell claim is about patients like those of these test images, and these seeds" in " ".join(md.split())
    # without the run files the claims are about these test images, and the cells' intervals are narrower
    seeds_only = report.Results.of(runs, make_config(runs))
    text = " ".join(report.to_markdown(report.document(seeds_only, FIGS), Path("/")).split())
    assert "a claim about these test images and these seeds, not about patients like them" in text
    width = res.comparisons["hi"] - res.comparisons["lo"]
    assert (width > seeds_only.comparisons["hi"] - seeds_only.comparisons["lo"]).all()


def test_forest_plot_pools_and_predicts_only_across_datasets():
    """One dataset has no pooled claim and no new task's range: the forest plot and its caption show neither."""
    from scaleaudit.report import figures

    one, three = (
        report.Results.of(runs, make_config(runs))
        for runs in (make_runs({"vit_b16_pretrained": 0.05}), make_runs({"vit_b16_pretrained": 0.05}, datasets=THREE))
    )
    assert set(one.task_forest["kind"]) == {"dataset"}
    assert set(three.task_forest["kind"]) == {"dataset", "pooled", "prediction"}
    figs = FIGS | {"task_forest": [Path("/figs/task_forest_1.png")]}
    caption = " ".join(report.to_markdown(report.document(one, figs), Path("/")).split())
    assert "No pooled gain and no range for a new task" in caption and "the pooled gain" not in caption
    caption = " ".join(report.to_markdown(report.document(three, figs), Path("/")).split())
    assert "the pooled gain across datasets (diamond)" in caption and "a new task's gain would likely fall" in caption
    fig = figures.task_forest(figures.Canvas.of(one), "vit_b16_pretrained")
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert ticks == ["breastmnist @ 28 px"] and "pooled" not in fig.get_supxlabel()
    figures.plt.close(fig)
