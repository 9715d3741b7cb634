"""The scale axis: the trend of a ladder tested like an instrument (planted slopes), and its tables on a run table."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from scaleaudit import calibration, scaling

REPLICATES = 10_000
ROPE = 0.01
LADDER = calibration.LADDER_LOG10_PARAMS
FIVE_RUNGS = (6.0, 6.75, 7.5, 8.25, 9.0)


def test_slope_interval_is_the_least_squares_t_interval():
    rng = np.random.default_rng(0)
    x, y = np.array([6.7, 7.3, 7.9, 8.6]), rng.normal(0.8, 0.02, 4)
    fit = sps.linregress(x, y)
    slope, lo, hi = scaling.slope_interval((x, y), 0.9)
    assert slope == pytest.approx(fit.slope)
    assert hi - slope == pytest.approx(sps.t.ppf(0.95, 2) * fit.stderr)
    # vectorised over leading axes, as the simulations use it
    many = scaling.slope_interval((x, np.stack([y, 2 * y])), 0.9)[0]
    assert many == pytest.approx([fit.slope, 2 * fit.slope])


def test_slope_interval_has_no_interval_without_residual_degrees_of_freedom():
    two = scaling.slope_interval(([6.8, 7.8], [0.8, 0.85]), 0.95)
    assert two[0] == pytest.approx(0.05) and math.isnan(two[1]) and math.isnan(two[2])
    assert all(math.isnan(v) for v in scaling.slope_interval(([7.0, 7.0, 7.0], [0.8, 0.81, 0.82]), 0.95))
    exact = scaling.slope_interval(([6.0, 7.0, 8.0], [0.80, 0.82, 0.84]), 0.95)
    assert exact == pytest.approx((0.02, 0.02, 0.02))


@pytest.mark.parametrize("kind", calibration.NOISE)
@pytest.mark.parametrize("seeds", [3, 5])
def test_ladder_trend_holds_its_coverage_and_false_claims(kind, seeds):
    rng = np.random.default_rng(30 + seeds)
    assert 0.935 <= calibration.simulate_trend(LADDER, seeds, 0.02, kind, REPLICATES, rng)["coverage"] <= 0.965
    # the true gain per 10x exactly on the ROPE edge: "better" (the next 10x pays) is a false claim
    assert calibration.simulate_trend(LADDER, seeds, ROPE, kind, REPLICATES, rng)["better"] <= 0.035
    assert calibration.simulate_trend(FIVE_RUNGS, seeds, ROPE, kind, REPLICATES, rng)["better"] <= 0.035
    assert calibration.simulate_trend(FIVE_RUNGS, seeds, -ROPE, kind, REPLICATES, rng)["worse"] <= 0.035


def test_the_calibration_fails_a_trend_blind_to_the_bend_of_the_curve():
    """The bounds have teeth: regressing every run on its rung's x (seeds as if they were rungs) ignores that the
    true rung means are off the line, and claims a paying 10x too often."""
    rng = np.random.default_rng(4)
    assert calibration.simulate_trend(LADDER, 5, 0.02, "normal", 4000, rng, pooled=True)["coverage"] < 0.88
    assert calibration.simulate_trend(LADDER, 5, ROPE, "normal", 4000, rng, pooled=True)["better"] > 0.06


@pytest.mark.parametrize("kind", calibration.NOISE)
def test_across_task_trend_holds_its_coverage_and_decides_a_real_gain(kind):
    rng = np.random.default_rng(40)
    edge = calibration.simulate_trend_tasks(LADDER, 3, ROPE, kind, REPLICATES, rng)
    assert 0.93 <= edge["coverage"] <= 0.975 and edge["better"] <= 0.035
    # not a test that cannot fail: seven tasks do find a gain of 5 points per 10x
    assert calibration.simulate_trend_tasks(LADDER, 3, 0.05, kind, 2000, rng)["better"] > 0.9


# --- the tables on a run table --------------------------------------------------------------------------------

PARAMS = {"vit_ti": 5.7e6, "vit_s": 2.2e7, "vit_b": 8.6e7}
CONFIG = {
    "verdict": {"metric": "auc", "rope": ROPE, "confidence": 0.95},
    "arms": {
        "cnn": {"ladder": None},
        "vit_ti": {"ladder": "vit"},
        "vit_s": {"ladder": "vit"},
        "vit_b": {"ladder": "vit"},
        "two_a": {"ladder": "short"},
        "two_b": {"ladder": "short"},
    },
}


def run_table(gain_per_10x: dict, seeds=(1, 2, 3), noise: float = 0.0) -> pd.DataFrame:
    """Runs on a line per dataset: test AUC = 0.8 + gain * log10(params / 5.7M), ± noise by seed."""
    rows = []
    for dataset, gain in gain_per_10x.items():
        for arm, params in PARAMS.items():
            for fraction in (0.1, 1.0):
                for seed in seeds:
                    rows.append(
                        {
                            "dataset": dataset,
                            "size": 28,
                            "fraction": fraction,
                            "arm": arm,
                            "seed": seed,
                            "group": "large",
                            "params": params,
                            "train_flops": 3 * 546 * 8 * params * fraction,
                            "n_train": int(546 * fraction),
                            "test_auc": 0.8 + gain * math.log10(params / 5.7e6) + noise * (seed - 2),
                        }
                    )
        rows += [
            {
                "dataset": dataset,
                "size": 28,
                "fraction": 1.0,
                "arm": a,
                "seed": s,
                "group": "large",
                "params": p,
                "train_flops": p,
                "n_train": 546,
                "test_auc": 0.8,
            }
            for a, p in (("two_a", 1e6), ("two_b", 1e7))
            for s in seeds
        ]
        rows += [
            {
                "dataset": dataset,
                "size": 28,
                "fraction": 1.0,
                "arm": "cnn",
                "seed": s,
                "group": "small",
                "params": 4e5,
                "train_flops": 1e12,
                "n_train": 546,
                "test_auc": 0.9,
            }
            for s in seeds
        ]
    return pd.DataFrame(rows)


def test_model_scale_fits_each_ladder_per_cell_and_across_tasks():
    runs = run_table({"breastmnist": 0.05, "pathmnist": 0.03})
    points, per_task, overall = scaling.model_scale(runs, CONFIG, "params")
    assert set(points["ladder"]) == {"vit", "short"}  # the CNN is no rung of a ladder
    vit = per_task[(per_task["ladder"] == "vit") & (per_task["fraction"] == 1.0)].set_index("dataset")
    assert vit.loc["breastmnist", "slope"] == pytest.approx(0.05) and vit.loc["pathmnist", "slope"] == pytest.approx(
        0.03
    )
    assert (vit["decision"] == "better").all() and (vit["df"] == 1).all() and "wide" in vit["note"].iloc[0]
    short = per_task[per_task["ladder"] == "short"].iloc[0]
    assert short["decision"] == "undecided" and math.isnan(short["lo"]) and "at least 3" in short["note"]
    assert (per_task["family"] == len(per_task)).all()  # every trend of the axis is one family
    row = overall[(overall["ladder"] == "vit") & (overall["fraction"] == 1.0)].iloc[0]
    assert row["tasks"] == 2 and row["mean_slope"] == pytest.approx(0.04) and row["lo"] < 0.03
    # on training FLOPs the same runs give the same slope here (FLOPs proportional to parameters within a cell)
    flops = scaling.model_scale(runs, CONFIG, "train_flops")[1].set_index(["dataset", "fraction", "ladder"])
    assert flops.loc[("breastmnist", 1.0, "vit"), "slope"] == pytest.approx(0.05)


def test_rung_points_carry_the_seed_interval_and_leave_out_unusable_runs():
    runs = run_table({"breastmnist": 0.02}, noise=0.01)
    runs.loc[(runs["arm"] == "vit_b") & (runs["seed"] == 3) & (runs["fraction"] == 1.0), "test_auc"] = math.nan
    points = scaling.model_scale(runs, CONFIG, "params")[0].set_index(["fraction", "arm"])
    b = points.loc[(1.0, "vit_b")]
    assert b["n"] == 2 and b["x"] == pytest.approx(8.6e7) and b["lo"] < b["mean"] < b["hi"]
    s = points.loc[(1.0, "vit_s")]
    assert s["hi"] - s["mean"] == pytest.approx(sps.t.ppf(0.975, 2) * 0.01 / math.sqrt(3))


def test_a_flat_precise_ladder_is_equivalent_and_a_noisy_one_undecided():
    flat = scaling.model_scale(run_table({"breastmnist": 0.0}), CONFIG, "params")[1]
    assert (flat.loc[flat["ladder"] == "vit", "decision"] == "equivalent").all()
    rng = np.random.default_rng(0)
    noisy = run_table({"breastmnist": 0.0})
    noisy["test_auc"] += rng.normal(0, 0.05, len(noisy))
    out = scaling.model_scale(noisy, CONFIG, "params")[1]
    assert (out.loc[out["ladder"] == "vit", "decision"] == "undecided").all()


def test_data_scale_fits_the_gain_per_10x_training_images_per_arm():
    runs = run_table({"breastmnist": 0.05})
    runs["test_auc"] += 0.04 * np.log10(runs["fraction"])  # every arm gains 4 points per 10x data
    points, per_task, overall = scaling.data_scale(runs, CONFIG)
    assert set(points["fraction"]) == {0.1, 1.0}
    # two fractions: a slope but no interval, so no decision
    vit_b = per_task.set_index("arm").loc["vit_b"]
    assert math.isnan(vit_b["lo"]) and vit_b["decision"] == "undecided" and vit_b["rungs"] == 2


# --- the ladders in config -----------------------------------------------------------------------------------


def test_shipped_ladders_have_three_rungs_that_differ_in_size_only():
    from mirror import REPO

    from scaleaudit import config

    full = config.load(REPO / "config" / "config.yaml")
    demo = config.load(REPO / "config" / "config.yaml", REPO / "config" / "demo.yaml")
    for cfg, ladders in ((full, {"vit_augreg", "vit_scratch"}), (demo, {"vit_augreg"})):
        rungs_of = {}
        for arm in cfg["design"]["arms"]:
            if cfg["arms"][arm]["ladder"]:
                rungs_of.setdefault(cfg["arms"][arm]["ladder"], []).append(cfg["arms"][arm]["model"])
        assert set(rungs_of) == ladders
        assert all(
            sorted(m) == ["vit_base_patch16_224", "vit_small_patch16_224", "vit_tiny_patch16_224"]
            for m in rungs_of.values()
        )
    assert {demo["arms"][a]["input_size"] for a in demo["design"]["arms"] if demo["arms"][a]["ladder"]} == {32}
    assert all(
        full["arms"][a]["weights_tag"] == "augreg_in21k_ft_in1k"
        for a in full["design"]["arms"]
        if full["arms"][a]["ladder"] == "vit_augreg"
    )


def test_a_rung_that_differs_in_more_than_size_is_a_clear_error():
    from mirror import REPO

    from scaleaudit import config
    from scaleaudit.errors import ScaleauditError

    odd = {"arms": {"vit_s16_pretrained": {"input_size": 64}}}
    with pytest.raises(ScaleauditError, match="ladder 'vit_augreg' differ in input_size") as err:
        config.load(REPO / "config" / "config.yaml", overrides=odd)
    assert "vit_s16_pretrained: 64" in str(err.value) and "same input_size" in err.value.fix


def test_trend_band_is_the_pointwise_t_band_of_the_line():
    x, y = np.array([6.76, 7.34, 7.94]), np.array([0.80, 0.83, 0.84])
    fit = sps.linregress(x, y)
    k, grid = len(x), np.array([x.mean(), 8.94])
    line, lo, hi = scaling.trend_band((x, y), grid, 0.95)
    s = math.sqrt(((y - fit.intercept - fit.slope * x) ** 2).sum() / (k - 2))
    sxx = ((x - x.mean()) ** 2).sum()
    t = sps.t.ppf(0.975, k - 2)
    assert line == pytest.approx(fit.intercept + fit.slope * grid)
    assert hi - line == pytest.approx(t * s * np.sqrt(1 / k + (grid - x.mean()) ** 2 / sxx))
    assert np.isnan(scaling.trend_band((x[:2], y[:2]), grid, 0.95)[1]).all()


def test_headline_answers_across_datasets_where_there_are_two_else_per_dataset():
    runs = run_table({"breastmnist": 0.05, "pathmnist": 0.03})
    _, per_task, overall = scaling.model_scale(runs, CONFIG, "params")
    head = scaling.headline(per_task, overall)
    vit = head[(head["ladder"] == "vit") & (head["fraction"] == 1.0)].iloc[0]
    assert vit["tasks"] == 2 and vit["slope"] == pytest.approx(0.04)
    # two rungs: no interval per dataset, but two datasets' slopes give one across them; identical (flat) slopes
    # decide nothing, as identical paired differences do not (the sd floor)
    short = head[(head["ladder"] == "short")].iloc[0]
    assert short["tasks"] == 2 and short["slope"] == 0 and short["decision"] == "undecided"
    one = scaling.headline(*scaling.model_scale(run_table({"breastmnist": 0.05}), CONFIG, "params")[1:])
    vit = one[one["ladder"] == "vit"]
    assert list(vit["dataset"]) == ["breastmnist", "breastmnist"] and vit["slope"].to_numpy() == pytest.approx(0.05)
    assert scaling.ladders(runs, CONFIG) == {"short": ["two_a", "two_b"], "vit": ["vit_ti", "vit_s", "vit_b"]}
    assert scaling.t_quantile(1, 0.95) == pytest.approx(12.706, abs=1e-3)


def test_the_benchmark_table_sets_the_trend_beside_the_pooled_reference():
    rows = calibration.trend_table(2000, seeds=(5,), seed=3)
    assert [r["noise"] for r in rows] == list(calibration.NOISE)
    assert all(r["pooled_coverage"] < r["coverage"] - 0.05 and r["tasks_power_0.05"] > 0.9 for r in rows)
