"""Adaptive seeds tested like an instrument: repeated looks at planted effects (>= 500 sequential studies per
setting), with the repeated confidence intervals and with the fixed-n interval re-checked each round."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from scaleaudit import calibration, sequential, stats

REPLICATES = 10_000  # a rate of 0.025: Monte-Carlo sd 0.0016
ROPE = 0.01


def test_one_look_is_the_fixed_interval():
    assert sequential.boundaries((7,), 0.05) == pytest.approx((sps.norm.isf(0.025),))
    fixed = stats.t_interval([np.array([0.01, 0.03, 0.02, 0.05])], 0.95)
    assert sequential.interval((4,))([np.array([0.01, 0.03, 0.02, 0.05])], 0.95) == pytest.approx(fixed)


def test_a_look_takes_the_test_samples_variance_at_its_nominal_level():
    d, looks = [np.array([0.01, 0.03, 0.02, 0.05, 0.04])], (3, 5, 7)
    both = sequential.interval(looks)(d, 0.95, extra=[0.02**2], extra_df=199)
    nominal = sequential.nominal_confidence(looks, 5, 0.95)
    assert both == pytest.approx(stats.t_interval(d, nominal, extra=[0.02**2], extra_df=199))
    seeds_only = sequential.interval(looks)(d, 0.95)
    assert both[1] < seeds_only[1] < seeds_only[2] < both[2]


def test_boundaries_match_published_lan_demets_values():
    # five equally spaced looks, two-sided alpha 0.05 (gsDesign sfLDOF / sfLDPocock; Jennison & Turnbull 2000)
    of = sequential.boundaries((1, 2, 3, 4, 5), 0.05, "obrien_fleming")
    assert of == pytest.approx((4.8769, 3.3569, 2.6803, 2.2898, 2.0310), abs=2e-3)
    pocock = sequential.boundaries((1, 2, 3, 4, 5), 0.05, "pocock")
    assert pocock == pytest.approx((2.4380, 2.4268, 2.4101, 2.3966, 2.3860), abs=2e-3)


def test_each_look_is_wider_than_the_fixed_interval_and_a_short_look_counts_early():
    looks = (3, 5, 7)
    assert all(sequential.nominal_confidence(looks, n, 0.95) > 0.95 for n in looks)
    # a run dropped in round 2 (4 pairs): the widest interval of the looks it may be at (rounds 2 and 3)
    c = sequential.boundaries(looks, 0.05)
    assert c[0] < c[1]  # Pocock-type at unequal information steps: not monotone, so counting short is no remedy
    assert sequential.nominal_confidence(looks, 4, 0.95) == pytest.approx(1 - 2 * sps.norm.sf(max(c[1:])))
    assert sequential.nominal_confidence(looks, 3, 0.95) == pytest.approx(1 - 2 * sps.norm.sf(c[0]))
    assert sequential.nominal_confidence(looks, 6, 0.95) == pytest.approx(1 - 2 * sps.norm.sf(c[2]))
    # Bonferroni: a family of m spends alpha / m over the looks
    assert sequential.nominal_confidence(looks, 5, stats.family_confidence(0.95, 4)) > sequential.nominal_confidence(
        looks, 5, 0.95
    )


@pytest.mark.parametrize("kind", calibration.NOISE)
def test_repeated_looks_keep_false_better_and_coverage_at_the_nominal_level(kind):
    rng = np.random.default_rng(11)
    edge = calibration.simulate_sequential(ROPE, kind, REPLICATES, rng)
    assert edge["better"] <= 0.035 and edge["coverage"] >= 0.94
    assert calibration.simulate_sequential(-ROPE, kind, REPLICATES, rng)["worse"] <= 0.035
    assert calibration.simulate_sequential(0.02, kind, REPLICATES, rng)["coverage"] >= 0.94
    # a family of five comparisons on the edge, Bonferroni over them: any false better at most alpha
    assert calibration.simulate_sequential(ROPE, kind, REPLICATES // 5, rng, family=5)["any_better"] <= 0.05


@pytest.mark.parametrize("kind", calibration.NOISE)
def test_the_fixed_interval_rechecked_each_round_is_inflated(kind):
    """The test above has teeth: re-checking the fixed-n interval after every round fails its bounds."""
    rng = np.random.default_rng(12)
    edge = calibration.simulate_sequential(ROPE, kind, REPLICATES, rng, rechecked_fixed=True)
    assert edge["better"] > 0.05 and edge["coverage"] < 0.9
    assert (
        calibration.simulate_sequential(ROPE, kind, REPLICATES // 5, rng, family=5, rechecked_fixed=True)["any_better"]
        > 0.05
    )


def test_expected_seeds_per_cell_fall_with_the_true_gain():
    rng = np.random.default_rng(13)
    seeds = {
        g: calibration.simulate_sequential(g, "normal", 2000, rng)["mean_seeds"] for g in calibration.ADAPTIVE_GAINS
    }
    print(
        "expected seeds per cell (3, 5, ..., 15 seeds; sd 0.02; ROPE ±0.01):",
        ", ".join(f"gain {g:+.2f}: {n:.1f}" for g, n in seeds.items()),
    )
    assert seeds[0.05] < 7 < seeds[0.02] < seeds[0.01] <= 15 and seeds[0.0] > 14


def test_repeated_looks_with_the_test_sample_cover_the_population_gain():
    """Per-image noise crossed with seeds (156 images): the seeds' repeated interval alone is about the test images
    drawn; with the test sample's variance each look holds its level for the population gain."""
    r = calibration.simulate_sequential_test_sample(ROPE, 200, np.random.default_rng(13))
    assert r["coverage"] >= 0.93 and r["better"] <= 0.035
    assert r["coverage_seeds_only"] < 0.8 and r["better_seeds_only"] > 0.1


def test_stored_sequential_figures_are_those_of_the_current_code():
    stored = {
        (r["method"], r["noise"], r["true_diff"], r.get("family")): r
        for r in calibration.measured()["sequential"]["rows"]
    }
    fresh = calibration.sequential_table(3000, seed=1)
    for r in fresh["rows"]:
        old = stored[r["method"], r["noise"], r["true_diff"], r.get("family")]
        for key, value in r.items():
            if isinstance(value, float) and key != "true_diff":
                tol = 0.5 if key == "mean_seeds" else 0.03
                assert abs(value - old[key]) < tol, (r["method"], r["noise"], r["true_diff"], key)
