"""The test split as a sample (scaleaudit.testsample): the paired bootstrap over test images crossed with seeds, and
the per-cell interval that takes it."""

from __future__ import annotations

import numpy as np
import pytest
from runtable import make_runs

from scaleaudit import metrics, stats, testsample

VIT = "vit_b16_pretrained"


def binormal(n: int, rng, separation: float = 1.0):
    """Labels and two correlated score sets (a shared per-image part) of a binary test set."""
    y = (np.arange(n) % 3 == 0).astype(int)
    image = rng.normal(0, 1, n)
    a = separation * 1.4 * y + image + rng.normal(0, 0.7, n)
    b = separation * y + image + rng.normal(0, 0.7, n)
    return y, a, b


def probabilities(score):
    p = 1 / (1 + np.exp(-score))
    return np.column_stack([1 - p, p])


@pytest.mark.parametrize(
    "task, classes", [("binary", 2), ("multi-class", 4), ("multi-label", 3)], ids=["binary", "multi", "labels"]
)
def test_resampled_metrics_with_unit_weights_are_the_runs_metrics(task, classes):
    rng = np.random.default_rng(0)
    n = 90
    if task == "multi-label":
        y, p = rng.integers(0, 2, (n, classes)), rng.uniform(0, 1, (n, classes))
    else:
        y = rng.integers(0, classes, n).reshape(-1, 1)
        p = rng.dirichlet(np.ones(classes), n).round(2)  # ties, as saturated probabilities have
    ones = np.ones((1, n))
    for metric in ("auc", "acc", "bacc"):
        expected = metrics.evaluate(y, p, task)[metric]
        assert testsample.resampled(y, p, task, metric, ones)[0] == pytest.approx(expected, abs=1e-12), metric


def test_bootstrap_variance_of_a_paired_auc_difference_is_delongs():
    # DeLong, DeLong & Clarke-Pearson (1988): the variance of the difference of two correlated AUCs from their
    # structural components; the paired bootstrap over test images must estimate the same
    rng = np.random.default_rng(3)
    n = 300
    y, a, b = binormal(n, rng)
    w = testsample.weights(n, 4000)
    boot = testsample.resampled(y, probabilities(a), "binary", "auc", w)
    boot = boot - testsample.resampled(y, probabilities(b), "binary", "auc", w)

    def components(s):
        pos, neg = s[y == 1], s[y == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        return psi.mean(axis=1), psi.mean(axis=0)

    (a10, a01), (b10, b01) = components(a), components(b)
    delong = np.var(a10 - b10, ddof=1) / (y == 1).sum() + np.var(a01 - b01, ddof=1) / (y == 0).sum()
    assert boot.var(ddof=1) == pytest.approx(delong, rel=0.1)


def agreeing_seeds(n_test: int, seeds: int = 75):
    """A run table whose large arm gains over the small arms with (almost) the same predictions on every seed, and
    the test sample's variances of its comparisons (``testsample.variances``). 75 seeds: the large arm's runs, none
    diverged, bound its divergence rate enough that the seeds alone can claim "better"."""
    runs, resampled = agreeing_scores(n_test, seeds)
    return runs, testsample.variances(runs, resampled, "auc")


def agreeing_scores(n_test: int, seeds: int = 5):
    """``agreeing_seeds``' run table, and each run's metric on the bootstrap's resamples, keyed like the run table."""
    rng = np.random.default_rng(1)
    y, strong, weak = binormal(n_test, rng, separation=1.2)
    runs = make_runs(seeds=seeds)
    resampled = {}
    for i, r in runs.iterrows():
        score = {"vit_b16_pretrained": strong, "cnn_small": weak, "resnet18_scratch": weak - 0.3 * y}[r.arm]
        p = probabilities(score + rng.normal(0, 0.01, n_test))  # seeds agree
        auc = metrics.auc(y, p, "binary")
        runs.loc[i, ["test_auc", "val_auc"]] = auc, auc
        resampled[(r["dataset"], r["size"], r["fraction"], r["arm"], r["seed"])] = testsample.resampled(
            y, p, "binary", "auc", testsample.weights(n_test)
        )
    return runs, resampled


def test_seeds_that_agree_on_a_tiny_test_set_decide_nothing():
    runs, test_var = agreeing_seeds(24)
    seeds_only = stats.compare(runs).iloc[0]
    assert seeds_only["decision"] == "better"  # a claim about these 24 images
    both = stats.compare(runs, test_var=test_var).iloc[0]
    assert both["decision"] == "undecided" and both["diff"] == seeds_only["diff"]
    assert both["test_var"] > 10 * both["seed_var"] and both["lo"] < seeds_only["lo"]
    assert set(test_var["small_arm"]) == {"cnn_small", "resnet18_scratch"}  # every small arm bounds the interval
    # the same agreement on a large test set still decides: the test part shrinks with the images
    runs, test_var = agreeing_seeds(3000)
    assert stats.compare(runs, test_var=test_var).iloc[0]["decision"] == "better"


def test_a_run_without_predictions_leaves_its_comparison_seed_only_and_says_so():
    runs, test_var = agreeing_seeds(24)
    partial = test_var[test_var["small_arm"] != "resnet18_scratch"]
    row = stats.compare(runs, test_var=partial).iloc[0]
    assert row["decision"] == stats.compare(runs).iloc[0]["decision"]
    assert "test sample not accounted for" in row["note"]
    # the study-level won/tied/lost counts follow the per-cell decisions that take the test sample
    assert stats.overall(runs, test_var=test_var).iloc[0]["won"] == 0
    assert stats.overall(runs).iloc[0]["won"] == 1


def test_load_reads_each_runs_predictions_and_names_a_missing_file(tmp_path):
    from runtable import write_run_folders

    from scaleaudit.errors import ScaleauditError
    from scaleaudit.records import RunResult

    runs = make_runs(seeds=2)
    paths = write_run_folders(runs, tmp_path, n_test=40)
    sample = testsample.load(paths, "auc")
    assert set(sample.scores) == set(runs[["dataset", "size", "fraction", "arm", "seed"]].itertuples(index=False))
    assert sample.images == {("breastmnist", 28): 40}
    run = RunResult.load(paths[0]).run
    with np.load(paths[0].parent / "predictions.npz") as p:
        expected = testsample.resampled(p["labels"], p["probabilities"], "binary", "auc", testsample.weights(40))
    np.testing.assert_array_equal(sample.scores[run.dataset, run.size, run.fraction, run.arm, run.seed], expected)
    (paths[1].parent / "predictions.npz").unlink()
    with pytest.raises(ScaleauditError, match=f"{paths[1].parent / 'predictions.npz'} is missing"):
        testsample.load(paths, "auc")
