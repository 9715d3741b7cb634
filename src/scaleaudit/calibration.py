"""The verdict tested like an instrument: simulated studies with a planted truth, and the figures measured on them.

``simulate_cell``, ``simulate_tasks`` and ``simulate_study`` draw many replicate studies at once (numpy arrays with
the replicates on the first axis) and run them through ``stats.assess``, the path the report uses. Seed noise is
normal or heavy-tailed (Student t with 4 degrees of freedom, scaled to the same sd). ``benchmarks/calibrate_stats.py``
prints the full table and stores it in ``calibration.json``, which the report's Methods quotes (``measured``); the
test suite re-measures a part of it. ``percentile_bootstrap`` is the interval scaleaudit used before (kept as the
reference that the calibration must tell apart from a calibrated one).
"""

from __future__ import annotations

import json
from functools import cache, partial
from importlib import resources

import numpy as np
from scipy.stats import norm

from . import design, metrics, scaling, sequential, stats, testsample

NOISE = ("normal", "t4")
SEED_SD = 0.02  # sd of a paired difference between two runs (seed noise of 0.01-0.03 AUC per run is typical)
TASK_SDS = (0.01, 0.015, 0.02, 0.025, 0.03, 0.02, 0.015)  # seven tasks of unequal noise for the across-task checks
TASK_OFFSETS = (-0.01, 0.005, 0.0, 0.01, -0.005, 0.0, 0.0)  # task effects around the planted mean (they sum to 0)
STUDY_ARMS = 5  # large arms in the study-level check, all planted on the ROPE edge


def noise(kind: str, shape, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance noise: normal, or Student t with 4 degrees of freedom (variance 2, so divided by sqrt 2)."""
    if kind == "normal":
        return rng.standard_normal(shape)
    if kind == "t4":
        return rng.standard_t(4, shape) / np.sqrt(2)
    raise ValueError(f"unknown noise {kind!r}: one of {NOISE}")


def rates(decision: np.ndarray) -> dict:
    return {d: float(np.mean(decision == d)) for d in stats.DECISIONS}


def simulate_cell(
    seeds: int,
    true_diff: float,
    kind: str,
    replicates: int,
    rng: np.random.Generator,
    rope: float = 0.01,
    confidence: float = 0.95,
    interval: stats.Interval = stats.t_interval,
) -> dict:
    """One cell (one comparison, family of one) with ``seeds`` paired differences of sd SEED_SD around ``true_diff``:
    how often its interval covers the truth, and how often each decision is made."""
    d = true_diff + SEED_SD * noise(kind, (replicates, seeds), rng)
    a = stats.assess([d], rope, confidence, interval=interval)
    return {"coverage": float(np.mean((a["lo"] <= true_diff) & (true_diff <= a["hi"])))} | rates(a["decision"])


RUN_SD = SEED_SD / np.sqrt(2)  # sd of one run's score, so that a paired difference has sd SEED_SD
VAL_TEST_CORR = 0.9  # correlation of a run's validation and test scores, as in the demo


def simulate_partners(
    seeds: int,
    true_diff: float,
    small_arms: int,
    replicates: int,
    rng: np.random.Generator,
    rope: float = 0.01,
    confidence: float = 0.95,
    gap: float = 0.0,
) -> dict:
    """One cell with ``small_arms`` small arms (the first best, each next ``gap`` worse) and a large arm
    ``true_diff`` above the best; every run's validation score correlates VAL_TEST_CORR with its test score. The
    partner chosen on validation and the interval of ``stats.versus_best``: coverage of the gain over the best
    small arm and the decisions."""
    mu = -gap * np.arange(small_arms)[:, None]
    large = true_diff + RUN_SD * rng.standard_normal((replicates, seeds))
    test = mu + RUN_SD * rng.standard_normal((replicates, small_arms, seeds))
    val = mu + VAL_TEST_CORR * (test - mu) + np.sqrt(1 - VAL_TEST_CORR**2) * RUN_SD * rng.standard_normal(test.shape)
    chosen = test[np.arange(replicates), val.mean(axis=-1).argmax(axis=-1)]
    every = [large - test[:, j] for j in range(small_arms)]
    a = stats.assess([large - chosen, *every], rope, confidence, interval=stats.versus_best())
    return {"coverage": float(np.mean((a["lo"] <= true_diff) & (true_diff <= a["hi"])))} | rates(a["decision"])


SMALL_SCORE = 0.85  # a partner's mean test AUC in the divergence check
DIVERGENCE_RATES = (0.05, 0.1, 0.2)
DIVERGENCE_RULES = ("keep", "mixture")
STUDY_DATASETS = 7  # cells per large arm in the divergence check: the arm's rate is pooled over all of them


def simulate_divergence(
    seeds: int,
    gain: float,
    rate: float,
    replicates: int,
    rng: np.random.Generator,
    rule: str = "mixture",
    rope: float = 0.01,
    confidence: float = 0.95,
    datasets: int = STUDY_DATASETS,
) -> dict:
    """A large arm over ``datasets`` cells of ``seeds`` seeds, gaining ``gain`` over its partner when it trains and
    diverging in a share ``rate`` of its runs (its score then near chance, uniform on 0.45-0.55). The truth is the
    expected gain of training the arm, failures included. Rules: ``keep`` (diverged runs counted at their score in
    their cell, the rule before) and ``mixture`` (``stats.with_divergence``, the verdict's: the cell's non-diverged
    seeds mixed with the arm's rate pooled over all its runs). Coverage of the expected gain and the decisions, over all cells (family
    of one each)."""
    small = SMALL_SCORE + RUN_SD * rng.standard_normal((replicates, datasets, seeds))
    large = SMALL_SCORE + gain + RUN_SD * rng.standard_normal(small.shape)
    failed = rng.random(small.shape) < rate
    d = np.where(failed, rng.uniform(0.45, 0.55, small.shape), large) - small
    truth = (1 - rate) * gain + rate * (metrics.CHANCE_AUC - SMALL_SCORE)
    if rule == "keep":
        a = stats.assess([d], rope, confidence)
        lo, hi, decision = a["lo"], a["hi"], a["decision"]
    else:
        lo, hi = np.full(small.shape[:2], np.nan), np.full(small.shape[:2], np.nan)
        decision = np.full(small.shape[:2], "undecided", dtype=object)
        pooled = np.broadcast_to(failed.sum(axis=(1, 2))[:, None], small.shape[:2])
        score_lo, score_hi = stats.diverged_score("auc")
        counts = (~failed).sum(axis=-1)
        for k in range(stats.MIN_PAIRS, seeds + 1):
            cells = counts == k
            if cells.any():
                interval = stats.with_divergence(
                    stats.t_interval,
                    pooled[cells],
                    datasets * seeds,
                    score_lo - small[cells].max(axis=-1),
                    score_hi - small[cells].min(axis=-1),
                )
                a = stats.assess([d[cells][~failed[cells]].reshape(-1, k)], rope, confidence, interval=interval)
                lo[cells], hi[cells], decision[cells] = a["lo"], a["hi"], a["decision"]
    return {"truth": truth, "coverage": float(np.mean((lo <= truth) & (truth <= hi)))} | rates(decision.astype(str))


def trained_gain(expected: float, rate: float) -> float:
    """The gain when the arm trains that makes its expected gain ``expected`` with divergence ``rate``."""
    return (expected + rate * (SMALL_SCORE - metrics.CHANCE_AUC)) / (1 - rate)


def divergence_scenarios(replicates: int, rng: np.random.Generator, rope: float = 0.01) -> list[dict]:
    """The scenario rows of divergence 5 % / 10 % / 20 % under the verdict's rule: coverage of the expected gain and false
    "better" with it on the ROPE edge, power with it +0.05 (5 seeds, STUDY_DATASETS cells per arm)."""
    rows = []
    for rate in DIVERGENCE_RATES:
        edge, power = (
            simulate_divergence(5, trained_gain(expected, rate), rate, replicates, rng, rope=rope)
            for expected in (rope, 0.05)
        )
        rows.append(
            {"scenario": f"divergence {rate:.0%} (rate pooled over the arm's runs)", "coverage": edge["coverage"]}
            | {"false_better": edge["better"], "power_0.05": power["better"]}
        )
    return rows


def divergence_table(
    replicates: int, seeds: int = 5, rope: float = 0.01, seed: int = 0, rates_=(0.0, *DIVERGENCE_RATES)
) -> list[dict]:
    """Per divergence rate and rule (``simulate_divergence``): coverage of the expected gain and false "better" with
    it on the ROPE edge, and power with it +0.05."""
    rng = np.random.default_rng(seed)
    rows = []
    for rate in rates_:
        for rule in DIVERGENCE_RULES:
            edge, power = (
                simulate_divergence(seeds, trained_gain(expected, rate), rate, replicates, rng, rule, rope)
                for expected in (rope, 0.05)
            )
            rows.append(
                {"rate": rate, "rule": rule, "seeds": seeds, "datasets": STUDY_DATASETS}
                | {"coverage": edge["coverage"], "false_better": edge["better"], "power_0.05": power["better"]}
            )
    return rows


FDR_ARMS = 5  # the full design's large arms: each arm's runs (cells x seeds) bound its divergence rate
FDR_FAMILY = STUDY_DATASETS * 3 * 2 * FDR_ARMS  # its per-cell comparisons (datasets x 3 fractions x 2 sizes x arms)


def simulate_fdr(
    seeds: int,
    gain: float,
    true_share: float,
    replicates: int,
    rng: np.random.Generator,
    family: int = FDR_FAMILY,
    rope: float = 0.01,
    confidence: float = 0.95,
    fdr: bool = True,
) -> dict:
    """A per-cell family of ``family`` comparisons, a share ``true_share`` of them with a true gain ``gain`` and the
    others on the ROPE edge (+rope: any claim there is false), each with ``seeds`` paired differences of sd SEED_SD,
    decided as ``stats.compare`` does: Benjamini-Hochberg (``fdr``) or Bonferroni, each claim on the expected gain
    with the divergence rate that the arm's runs (``family`` / FDR_ARMS cells x ``seeds``, none diverged) cannot
    exclude (``stats.with_divergence``, a partner at SMALL_SCORE). Power: the share of true gains called better; fdr:
    the mean share of false claims among the claims; any_false: the chance of one or more."""
    real = np.arange(family) < round(true_share * family)
    truth = np.where(real, gain, rope)[:, None]
    tasks = [truth + SEED_SD * rng.standard_normal((replicates, family, seeds))]
    score_lo, score_hi = stats.diverged_score("auc")
    interval = stats.with_divergence(
        stats.t_interval, 0, family // FDR_ARMS * seeds, score_lo - SMALL_SCORE, score_hi - SMALL_SCORE
    )
    if fdr:
        level = stats.fdr_confidence(stats.claim_level(tasks, rope, interval), confidence, family)[:, None]
    else:
        level = stats.family_confidence(confidence, family)
    _, lo, hi = interval(tasks, level)
    decision = stats.decide(lo, hi, rope)
    claims, false = decision != "undecided", (decision != "undecided") & ~real
    return {
        "power": float((decision[:, real] == "better").mean()) if real.any() else float("nan"),
        "fdr": float(np.mean(false.sum(axis=1) / np.maximum(claims.sum(axis=1), 1))),
        "any_false": float(false.any(axis=1).mean()),
    }


def fdr_table(replicates: int, seeds=(3, 5), gain: float = 0.05, seed: int = 0) -> list[dict]:
    """The per-cell criterion: power at +``gain`` and the false discovery rate with 10 %, 50 % and 100 % of the
    comparisons true (none: every claim false), Benjamini-Hochberg against Bonferroni, per number of seeds."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in seeds:
        for share in (0.0, 0.1, 0.5, 1.0):
            for fdr in (True, False):
                r = simulate_fdr(n, gain, share, replicates, rng, fdr=fdr)
                rows.append({"seeds": n, "true_share": share, "criterion": "fdr" if fdr else "bonferroni"} | r)
    return rows


def simulate_beta(
    seeds: int, true_diff: float, replicates: int, rng: np.random.Generator, rope: float = 0.01, mean: float = 0.97
) -> dict:
    """Skewed, bounded noise near AUC 1: each run's score is beta-distributed around ``mean`` (sd RUN_SD), the large
    arm's around ``mean`` + ``true_diff``; the paired t-interval's coverage of the true difference and decisions."""

    def beta(m: float) -> np.ndarray:
        k = m * (1 - m) / RUN_SD**2 - 1  # a + b for sd RUN_SD
        return rng.beta(m * k, (1 - m) * k, (replicates, seeds))

    a = stats.assess([beta(mean + true_diff) - beta(mean)], rope, 0.95)
    return {"coverage": float(np.mean((a["lo"] <= true_diff) & (true_diff <= a["hi"])))} | rates(a["decision"])


TEST_IMAGES = 156  # BreastMNIST's test split, the smallest of the study
PREVALENCE = 0.27  # its share of malignant images (42 of 156)
# A run's score of an image: y * mu + the image's effect shared by every run (sd 1) + the arm's own view of it,
# the same for every seed (ARM_IMAGE_SD: what makes the test sample matter beyond the seeds) + the seed's (RUN_IMAGE_SD)
ARM_IMAGE_SD, RUN_IMAGE_SD = 0.7, 0.3
SEQUENTIAL_TEST_SAMPLE = "sequential design with test-sample variance"


def test_sample_differences(
    seeds: int,
    true_diff: float,
    replicates: int,
    rng: np.random.Generator,
    images: int = TEST_IMAGES,
    small_auc: float = 0.85,
) -> np.ndarray:
    """Test-sample noise crossed with seeds, paired AUC differences of shape (replicates, seeds, 1 + resamples):
    each replicate draws a test set of ``images`` patients (labels at PREVALENCE) and, per arm and seed, scores
    (ARM_IMAGE_SD), mu varying over seeds so that a run's AUC has seed sd ~RUN_SD; column 0 on the test set itself,
    then on each of ``testsample``'s resamples. The truth is the population gain ``true_diff``, the expected AUC over
    seeds and patients (binormal: Phi(mu / sqrt(c^2 + tau^2)), c^2 twice the score variance), ``small_auc`` for the
    small arm."""
    c = np.sqrt(2 * (1 + ARM_IMAGE_SD**2 + RUN_IMAGE_SD**2))
    tau = RUN_SD * c / norm.pdf(norm.ppf(small_auc))  # seed sd of mu that gives a run's AUC seed sd ~RUN_SD
    wide = np.sqrt(c**2 + tau**2)
    mu = np.array([norm.ppf(small_auc + true_diff), norm.ppf(small_auc)]) * wide  # large, small
    w = np.vstack([np.ones(images), testsample.weights(images)])  # row 0: the test set itself
    out = np.empty((replicates, seeds, len(w)))
    for r in range(replicates):
        y = (rng.uniform(size=images) < PREVALENCE).astype(int)
        image = rng.standard_normal(images) + ARM_IMAGE_SD * rng.standard_normal((2, 1, images))
        mus = mu[:, None] + tau * rng.standard_normal((2, seeds))
        score = mus[..., None] * y + image + RUN_IMAGE_SD * rng.standard_normal((2, seeds, images))
        auc = np.array([[testsample.resampled(y, np.stack([-s, s], 1), "binary", "auc", w) for s in a] for a in score])
        out[r] = auc[0] - auc[1]
    return out


def test_variance(d: np.ndarray) -> np.ndarray:
    """The test sample's variance of the mean over seeds (``testsample.variances``) of ``test_sample_differences``."""
    return d[..., 1:].mean(axis=-2).var(axis=-1, ddof=1)


def simulate_test_sample(
    seeds: int,
    true_diff: float,
    replicates: int,
    rng: np.random.Generator,
    rope: float = 0.01,
    images: int = TEST_IMAGES,
    small_auc: float = 0.85,
) -> dict:
    """The per-cell interval with the test sample's bootstrap variance (``testsample``, the report's) against the
    seeds' alone, on ``test_sample_differences``: coverage of the population gain, decisions, and the test sample's
    share of the variance."""
    d = test_sample_differences(seeds, true_diff, replicates, rng, images, small_auc)
    diffs, test_var = d[..., 0], test_variance(d)
    interval = partial(stats.t_interval, extra=[test_var], extra_df=testsample.RESAMPLES - 1)
    a, seeds_only = stats.assess([diffs], rope, 0.95, interval=interval), stats.assess([diffs], rope, 0.95)
    seed_var = np.maximum(diffs.var(axis=1, ddof=1), stats.SD_FLOOR**2) / seeds
    return {
        "coverage": float(np.mean((a["lo"] <= true_diff) & (true_diff <= a["hi"]))),
        "coverage_seeds_only": float(np.mean((seeds_only["lo"] <= true_diff) & (true_diff <= seeds_only["hi"]))),
        "test_share": float(np.mean(test_var / (test_var + seed_var))),
    } | rates(a["decision"])


def scenarios(replicates: int, seed: int = 0, rope: float = 0.01) -> list[dict]:
    """One row per scenario of issue 19, nominal against measured: heterogeneous datasets (tau 0.02, the population
    mean on the ROPE edge; random effects), correlated validation and test with 3 small arms (the partner's
    interval), skewed beta noise near AUC 1, divergence 10 % / 20 % (``divergence_scenarios``), test-sample noise
    crossed with seeds (the per-cell interval with the bootstrap's variance, beside the seeds' alone; its replicates
    an eighth, each bootstraps), per-cell FDR (power at +0.05 with half the family true, and the false discovery
    rate), and the same test sample under adaptive seeds (``simulate_sequential_test_sample``, the gain on the ROPE
    edge). Beside each error rate, the power: how often the same scenario with a true +0.05 says "better" (the beta
    noise's arms then at 0.94 and 0.99)."""
    rng = np.random.default_rng(seed)
    power = np.random.default_rng([seed, 5])  # its own generator, so that the error rows keep their draws
    het = simulate_heterogeneous(5, rope, 0.02, replicates, rng, rope)
    partners = simulate_partners(5, rope, 3, replicates, rng, rope)
    skew = simulate_beta(5, rope, replicates, rng, rope)
    found = (
        simulate_heterogeneous(5, 0.05, 0.02, replicates, power, rope),
        simulate_partners(5, 0.05, 3, replicates, power, rope),
        simulate_beta(5, 0.05, replicates, power, rope, mean=0.94),
    )
    rows = [
        {"scenario": "heterogeneous datasets (tau 0.02)", "coverage": het["coverage"], "false_better": het["better"]},
        {"scenario": "val/test correlated, 3 small arms", "coverage": partners["coverage"]}
        | {"false_better": partners["better"]},
        {"scenario": "beta noise near AUC 1", "coverage": skew["coverage"], "false_better": skew["better"]},
    ]
    rows = [r | {"power_0.05": f["better"]} for r, f in zip(rows, found)]
    rows += divergence_scenarios(replicates, rng, rope)
    f = simulate_fdr(5, 0.05, 0.5, max(replicates // 20, 50), rng)
    rows.append({"scenario": "per-cell FDR, half the family +0.05", "power_0.05": f["power"], "fdr": f["fdr"]})
    # its own generator, so that the rows above keep their draws
    few = max(replicates // 8, 100)
    t = simulate_test_sample(5, rope, few, np.random.default_rng([seed, 19]), rope)
    rows.append(
        {"scenario": f"test sample of {TEST_IMAGES} images x seeds", "coverage": t["coverage"]}
        | {"false_better": t["better"], "coverage_seeds_only": t["coverage_seeds_only"], "test_share": t["test_share"]}
        | {"power_0.05": simulate_test_sample(5, 0.05, few, power, rope)["better"]}
    )
    nominal = {"nominal_coverage": 0.95, "nominal_false": 0.025}
    rows = [{"seeds": 5} | nominal | r for r in rows]
    # adaptive seeds (looks at 3, 5, ..., 15) with the test sample (a tenth of the replicates: each bootstraps every seed)
    looked = max(replicates // 10, 100)
    q = simulate_sequential_test_sample(rope, looked, np.random.default_rng([seed, 19, 1]))
    rows.append(
        {"seeds": list(design.looks(ADAPTIVE))}
        | nominal
        | {"scenario": SEQUENTIAL_TEST_SAMPLE}
        | {"coverage": q["coverage"], "false_better": q["better"]}
        | {k: q[k] for k in ("coverage_seeds_only", "better_seeds_only", "mean_seeds")}
        | {"power_0.05": simulate_sequential_test_sample(0.05, looked, power)["better"]}
    )
    return rows


def planted_tasks(seeds: int, true_mean, kind: str, shape: tuple, rng: np.random.Generator) -> list[np.ndarray]:
    """Paired differences of the seven tasks of TASK_SDS, each of shape ``shape`` + (seeds,)."""
    return [true_mean + off + sd * noise(kind, shape + (seeds,), rng) for sd, off in zip(TASK_SDS, TASK_OFFSETS)]


def simulate_tasks(
    seeds: int,
    true_mean: float,
    kind: str,
    replicates: int,
    rng: np.random.Generator,
    rope: float = 0.01,
    confidence: float = 0.95,
) -> dict:
    """The across-task summary of one large arm over the seven tasks of TASK_SDS (true task differences
    ``true_mean`` + TASK_OFFSETS): coverage of the mean difference and the decisions."""
    a = stats.assess(planted_tasks(seeds, true_mean, kind, (replicates,), rng), rope, confidence)
    return {"coverage": float(np.mean((a["lo"] <= true_mean) & (true_mean <= a["hi"])))} | rates(a["decision"])


TAUS = (0.0, 0.01, 0.02, 0.03)  # sd of the true gains between datasets


def simulate_heterogeneous(
    seeds: int,
    true_mean: float,
    tau: float,
    replicates: int,
    rng: np.random.Generator,
    rope: float = 0.01,
    confidence: float = 0.95,
    kind: str = "normal",
) -> dict:
    """The study-level claim (``stats.between_tasks``) over the seven tasks of TASK_SDS whose true gains are drawn
    around the population mean ``true_mean`` with sd ``tau``: coverage of the population mean and the decisions."""
    gains = true_mean + tau * rng.standard_normal((replicates, len(TASK_SDS), 1))
    tasks = [gains[:, i] + sd * noise(kind, (replicates, seeds), rng) for i, sd in enumerate(TASK_SDS)]
    a = stats.assess(tasks, rope, confidence, interval=stats.between_tasks)
    return {"coverage": float(np.mean((a["lo"] <= true_mean) & (true_mean <= a["hi"])))} | rates(a["decision"])


def simulate_study(
    seeds: int,
    kind: str,
    replicates: int,
    rng: np.random.Generator,
    rope: float = 0.01,
    confidence: float = 0.95,
    arms: int = STUDY_ARMS,
) -> float:
    """How often a study says "Scale pays" (some large arm's across-task summary is better, at the family's
    simultaneous level) when every one of ``arms`` large arms sits exactly on the ROPE edge (+rope)."""
    a = stats.assess(planted_tasks(seeds, rope, kind, (replicates, arms), rng), rope, confidence, family=arms)
    return float(np.mean((a["decision"] == "better").any(axis=1)))


def percentile_bootstrap(tasks, confidence: float, n_boot: int = 1000, seed: int = 0) -> tuple:
    """The interval scaleaudit used before: percentile bootstrap of the mean of task means, resampling seeds within
    each task (vectorised like ``stats.t_interval``). At 3 seeds it is about [min, max] of the values."""
    rng = np.random.default_rng(seed)
    tasks = [np.asarray(t, dtype=float) for t in tasks]
    boot = sum(t[..., rng.integers(0, t.shape[-1], (n_boot, t.shape[-1]))].mean(axis=-1) for t in tasks) / len(tasks)
    alpha = (1 - confidence) / 2
    estimate = sum(t.mean(axis=-1) for t in tasks) / len(tasks)
    return estimate, np.quantile(boot, alpha, axis=-1), np.quantile(boot, 1 - alpha, axis=-1)


def table(
    replicates: int,
    seeds=(3, 5, 10, 20),
    rope: float = 0.01,
    confidence: float = 0.95,
    seed: int = 0,
    interval: stats.Interval = stats.t_interval,
) -> dict:
    """The full calibration: per cell (coverage; false better/worse/equivalent with the truth on a ROPE edge; power
    at +0.02 and +0.05), across tasks (coverage, false better at the edge) and the study-level false "Scale pays"."""
    rng = np.random.default_rng(seed)
    cell, tasks, study = [], [], []
    for kind in NOISE:
        for n in seeds:
            at = {
                t: simulate_cell(n, t, kind, replicates, rng, rope, confidence, interval)
                for t in (0.0, rope, -rope, 0.02, 0.05)
            }
            cell.append(
                {
                    "noise": kind,
                    "seeds": n,
                    "coverage": at[0.02]["coverage"],
                    "false_better": at[rope]["better"],
                    "false_worse": at[-rope]["worse"],
                    "false_equivalent": at[rope]["equivalent"],
                    "power_0.02": at[0.02]["better"],
                    "power_0.05": at[0.05]["better"],
                    "equivalent_at_0": at[0.0]["equivalent"],
                }
            )
            if interval is stats.t_interval:
                edge = simulate_tasks(n, rope, kind, replicates, rng, rope, confidence)
                tasks.append(
                    {
                        "noise": kind,
                        "seeds": n,
                        "tasks": len(TASK_SDS),
                        "coverage": edge["coverage"],
                        "false_better": edge["better"],
                    }
                )
                study.append(
                    {
                        "noise": kind,
                        "seeds": n,
                        "arms": STUDY_ARMS,
                        "false_scale_pays": simulate_study(n, kind, replicates, rng, rope, confidence),
                    }
                )
    return {
        "confidence": confidence,
        "rope": rope,
        "replicates": replicates,
        "seed_sd": SEED_SD,
        "interval": interval.__name__,
        "cell": cell,
        "tasks": tasks,
        "study": study,
    }


@cache
def measured() -> dict:
    """The figures ``benchmarks/calibrate_stats.py --write`` stored (calibration.json)."""
    return json.loads(resources.files(__package__).joinpath("calibration.json").read_text())


# --- adaptive seeds: the sequential procedure under repeated looks ------------------------------------------------

ADAPTIVE = {"initial": 3, "step": 2, "max": 15, "spending": "pocock"}  # looks at 3, 5, ..., 15 seeds
ADAPTIVE_GAINS = (0.0, 0.01, 0.02, 0.05)


def stopped(looks: tuple[int, ...], assess_at, shape: tuple) -> tuple:
    """Comparisons (``shape``) looked at after every round, each stopped at its first decision or at the last look:
    ``assess_at(n)`` is ``stats.assess`` on the first ``n`` seeds. The decisions, the seeds used and the interval at
    stopping."""
    decision = np.full(shape, "undecided", dtype=object)
    used = np.full(shape, looks[-1])
    lo, hi = np.full(shape, np.nan), np.full(shape, np.nan)
    for n in looks:
        a = assess_at(n)
        stop = (decision == "undecided") & ((a["decision"] != "undecided") | (n == looks[-1]))
        decision[stop], used[stop], lo[stop], hi[stop] = a["decision"][stop], n, a["lo"][stop], a["hi"][stop]
    return decision, used, lo, hi


def simulate_sequential(
    true_diff: float,
    kind: str,
    replicates: int,
    rng: np.random.Generator,
    seeds: dict = ADAPTIVE,
    rope: float = 0.01,
    confidence: float = 0.95,
    family: int = 1,
    rechecked_fixed: bool = False,
) -> dict:
    """Adaptive seeds as the workflow runs them: a family of ``family`` comparisons, each with paired differences of
    sd SEED_SD around ``true_diff``, looked at after every round (seeds ``design.looks``) and stopped at its first
    decision. The repeated confidence intervals of ``sequential``, or (``rechecked_fixed``) the fixed-n t-interval
    re-checked each round, the error this procedure must not make. Returns the decisions' rates and the coverage of
    the interval at stopping (first comparison of the family), the rate of any false "better" in the family (with
    the truth on the ROPE edge, every "better" is false) and the mean number of seeds per comparison."""
    looks = design.looks(seeds)
    interval = stats.t_interval if rechecked_fixed else sequential.interval(looks, seeds.get("spending", "pocock"))
    d = true_diff + SEED_SD * noise(kind, (replicates, family, looks[-1]), rng)
    decision, used, lo, hi = stopped(
        looks, lambda n: stats.assess([d[..., :n]], rope, confidence, family, interval), (replicates, family)
    )
    covered = (lo[:, 0] <= true_diff) & (true_diff <= hi[:, 0])
    return {
        "coverage": float(covered.mean()),
        "any_better": float((decision == "better").any(axis=1).mean()),
        "mean_seeds": float(used.mean()),
    } | rates(decision[:, 0].astype(str))


def sequential_table(
    replicates: int,
    rope: float = 0.01,
    confidence: float = 0.95,
    seed: int = 0,
    seeds: dict = ADAPTIVE,
    family: int = 5,
) -> dict:
    """Adaptive seeds, per noise and true gain, for the repeated confidence intervals and for the fixed-n interval
    re-checked each round: coverage at stopping, false better with the truth on the ROPE edge, the decisions and
    the expected seeds per comparison, and any false better in a family of ``family`` comparisons on the edge."""
    rng = np.random.default_rng(seed)
    rows = []
    for method, fixed in (("repeated", False), ("fixed_rechecked", True)):
        for kind in NOISE:
            for gain in sorted({rope, *ADAPTIVE_GAINS}):
                r = simulate_sequential(gain, kind, replicates, rng, seeds, rope, confidence, rechecked_fixed=fixed)
                rows.append({"method": method, "noise": kind, "true_diff": gain} | r)
            fam = simulate_sequential(rope, kind, replicates // family, rng, seeds, rope, confidence, family, fixed)
            rows.append(
                {"method": method, "noise": kind, "true_diff": rope, "family": family, "any_better": fam["any_better"]}
            )
    return {"seeds": dict(seeds), "rows": rows}


def simulate_sequential_test_sample(
    true_diff: float,
    replicates: int,
    rng: np.random.Generator,
    seeds: dict = ADAPTIVE,
    rope: float = 0.01,
    confidence: float = 0.95,
    images: int = TEST_IMAGES,
) -> dict:
    """Adaptive seeds with the test sample's variance (``adaptive``'s looks with ``testsample``'s): per-image noise
    crossed with seed noise (``test_sample_differences``, one test set per replicate), looked at after every round,
    each look's repeated interval adding the test-sample variance of that look's seeds, stopped at the first
    decision. Coverage of the population gain at stopping and the decisions, beside the repeated interval of the
    seeds alone (``coverage_seeds_only``, ``better_seeds_only``: claims about the test images drawn), and the mean
    seeds."""
    looks = design.looks(seeds)
    interval = sequential.interval(looks, seeds.get("spending", "pocock"))
    d = test_sample_differences(looks[-1], true_diff, replicates, rng, images)
    out = {}
    for name, extra in (("", True), ("_seeds_only", False)):

        def assess_at(n: int, extra: bool = extra) -> dict:
            kw = {"extra": [test_variance(d[:, :n])], "extra_df": testsample.RESAMPLES - 1} if extra else {}
            return stats.assess([d[:, :n, 0]], rope, confidence, interval=partial(interval, **kw))

        decision, used, lo, hi = stopped(looks, assess_at, (replicates,))
        out[f"coverage{name}"] = float(np.mean((lo <= true_diff) & (true_diff <= hi)))
        out[f"better{name}"] = float(np.mean(decision == "better"))
        if extra:
            out |= {"mean_seeds": float(used.mean())} | rates(decision.astype(str))
    return out


# --- the scale axis: the trend of a ladder (scaling.slope_interval) -----------------------------------------------

LADDER_LOG10_PARAMS = (6.76, 7.34, 7.94)  # ViT-Ti/S/B: 5.7M, 22M, 86M parameters
BEND_SD = 0.01  # sd of each rung's true mean around the line: the true curve need not be a line in log10 x


def planted_ladder(
    log10_x,
    seeds: int,
    slope,
    kind: str,
    shape: tuple,
    rng: np.random.Generator,
    bend_sd: float = BEND_SD,
    task_sd: float = SEED_SD,
) -> np.ndarray:
    """Runs' test scores along a ladder, shape ``shape`` + (rungs, seeds): a line of ``slope`` per 10x, each rung off
    it by its own bend (sd ``bend_sd``) and each run by its separate seed noise (sd ``task_sd``)."""
    x = np.asarray(log10_x, dtype=float)
    line = np.asarray(slope, dtype=float)[..., None, None] * (x - x.mean())[:, None]
    bend = bend_sd * rng.standard_normal(shape + (len(x), 1))
    return 0.8 + line + bend + task_sd * noise(kind, shape + (len(x), seeds), rng)


def simulate_trend(
    log10_x,
    seeds: int,
    slope: float,
    kind: str,
    replicates: int,
    rng: np.random.Generator,
    rope: float = 0.01,
    confidence: float = 0.95,
    bend_sd: float = BEND_SD,
    pooled: bool = False,
) -> dict:
    """One ladder's trend (family of one): how often the interval of the gain per 10x covers the planted slope, and
    how often each decision is made. ``pooled``: the naive reference that regresses every run on its rung's x
    (k * seeds - 2 degrees of freedom), blind to the bend of the curve."""
    x = np.asarray(log10_x, dtype=float)
    y = planted_ladder(x, seeds, slope, kind, (replicates,), rng, bend_sd)
    points = (np.repeat(x, seeds), y.reshape(replicates, -1)) if pooled else (x, y.mean(axis=-1))
    a = stats.assess(points, rope, confidence, interval=scaling.slope_interval)
    return {"coverage": float(np.mean((a["lo"] <= slope) & (slope <= a["hi"])))} | rates(a["decision"])


def simulate_trend_tasks(
    log10_x,
    seeds: int,
    slope: float,
    kind: str,
    replicates: int,
    rng: np.random.Generator,
    rope: float = 0.01,
    confidence: float = 0.95,
    bend_sd: float = BEND_SD,
) -> dict:
    """The across-task trend of one ladder over the seven tasks of TASK_SDS (true task slopes ``slope`` +
    TASK_OFFSETS): coverage of the mean slope and the decisions, through ``scaling.across_tasks``'s path."""
    slopes = [
        scaling.slope_interval(
            (log10_x, planted_ladder(log10_x, seeds, slope + off, kind, (replicates,), rng, bend_sd, sd).mean(axis=-1)),
            confidence,
        )[0]
        for sd, off in zip(TASK_SDS, TASK_OFFSETS)
    ]
    a = stats.assess([np.stack(slopes, axis=-1)], rope, confidence)
    return {"coverage": float(np.mean((a["lo"] <= slope) & (slope <= a["hi"])))} | rates(a["decision"])


def trend_table(
    replicates: int, seeds=(3, 5), rope: float = 0.01, confidence: float = 0.95, seed: int = 0
) -> list[dict]:
    """The ladder trend's figures per noise and seeds: coverage of the gain per 10x (planted +0.02), false "better"
    with the truth on the ROPE edge (three rungs; five rungs), the naive run-level regression's coverage and false
    "better" beside them, and the across-task summary's coverage, false "better" and power at +0.05 per 10x."""
    rng = np.random.default_rng(seed)
    five = np.linspace(6.0, 9.0, 5)
    rows = []
    for kind in NOISE:
        for n in seeds:
            three = LADDER_LOG10_PARAMS
            rows.append(
                {
                    "noise": kind,
                    "seeds": n,
                    "coverage": simulate_trend(three, n, 0.02, kind, replicates, rng, rope, confidence)["coverage"],
                    "false_better": simulate_trend(three, n, rope, kind, replicates, rng, rope, confidence)["better"],
                    "false_better_5_rungs": simulate_trend(five, n, rope, kind, replicates, rng, rope, confidence)[
                        "better"
                    ],
                    "pooled_coverage": simulate_trend(
                        three, n, 0.02, kind, replicates, rng, rope, confidence, pooled=True
                    )["coverage"],
                    "pooled_false_better": simulate_trend(
                        three, n, rope, kind, replicates, rng, rope, confidence, pooled=True
                    )["better"],
                    "tasks_coverage": simulate_trend_tasks(three, n, rope, kind, replicates, rng, rope, confidence)[
                        "coverage"
                    ],
                    "tasks_false_better": simulate_trend_tasks(three, n, rope, kind, replicates, rng, rope, confidence)[
                        "better"
                    ],
                    "tasks_power_0.05": simulate_trend_tasks(three, n, 0.05, kind, replicates, rng, rope, confidence)[
                        "better"
                    ],
                }
            )
    return rows
