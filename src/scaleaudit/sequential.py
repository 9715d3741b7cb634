"""Repeated confidence intervals: intervals that stay valid when a cell is looked at after every round of seeds.

The group-sequential method of Jennison & Turnbull (1989, "Interim analyses: the repeated confidence interval
approach", JRSS B 51:305-361) with the alpha-spending function of Lan & DeMets (1983, Biometrika 70:659-663): the
looks are planned at ``looks`` = (n_1 < n_2 < ... < n_K) paired differences, the information fraction of look k is
t_k = n_k / n_K, and a two-sided error of alpha is spent over them, alpha(t_k) in all by look k. The critical values
c_k solve P(|Z_1| < c_1, ..., |Z_k-1| < c_k-1, |Z_k| >= c_k) = alpha(t_k) - alpha(t_k-1) for the canonical joint
normal distribution of the z-statistics (corr(Z_j, Z_k) = sqrt(t_j / t_k)), computed by recursive numerical
integration (Armitage, McPherson & Rowe 1969). With an unknown variance each look uses the t quantile at the same
nominal level, 2 (1 - Phi(c_k)) (Jennison & Turnbull 2000, "Group Sequential Methods with Applications to Clinical
Trials", on group-sequential t-tests: the "same nominal significance level" approximation). Then P(the truth is in the interval of every look) >= 1 - alpha, so a decision made at
any look, under any stopping rule, is a decision at level alpha. ``benchmarks/calibrate_stats.py`` measures it.

``interval(looks, spending)`` is a ``stats.Interval``: the t-interval of ``stats.t_interval`` at the nominal
confidence of the look that the number of values reached, so the one path of ``stats.assess`` serves it, and
Bonferroni families combine as with the fixed-n interval (alpha / m spent over the looks of each comparison).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from scipy import optimize
from scipy import stats as sps

from .stats import t_interval

SPENDING = ("pocock", "obrien_fleming")
GRID = 801  # points of the numerical integration per look: critical values to ~1e-4


def spent(spending: str, alpha: float, t: float) -> float:
    """Two-sided error spent by information fraction ``t``: Lan-DeMets' Pocock-type alpha ln(1 + (e - 1) t), or
    O'Brien-Fleming-type, alpha/2 per side each spent as 2 - 2 Phi(z_{1-alpha/4} / sqrt t) (as gsDesign/ldbounds)."""
    if spending == "pocock":
        return alpha * math.log(1 + (math.e - 1) * t)
    if spending == "obrien_fleming":
        return 4 * sps.norm.sf(sps.norm.isf(alpha / 4) / math.sqrt(t)) if t > 0 else 0.0
    raise ValueError(f"unknown spending function {spending!r}: one of {SPENDING}")


def _unspent(c: float, tk: float, sd: float, grid: np.ndarray, mass: np.ndarray, step: float) -> float:
    """Probability of first crossing +-c at look k (information ``tk``) from the continuation region (``mass`` on
    ``grid``, the score's increment since the last look of sd ``sd``), less the error ``step`` to spend there."""
    b = c * math.sqrt(tk)
    return float(np.sum(mass * (sps.norm.sf((b - grid) / sd) + sps.norm.cdf((-b - grid) / sd)))) - step


@lru_cache(maxsize=256)
def boundaries(looks: tuple[int, ...], alpha: float, spending: str = "pocock") -> tuple[float, ...]:
    """The critical values c_1..c_K (z scale) of two-sided repeated confidence intervals at the planned ``looks``."""
    if not looks or list(looks) != sorted(set(looks)) or looks[0] < 1:
        raise ValueError(f"looks must be increasing positive sample sizes, got {looks}")
    t = np.asarray(looks, dtype=float) / looks[-1]
    cum = [spent(spending, alpha, tk) for tk in t]
    out: list[float] = []
    grid = weights = density = None  # sub-density of the score S_k = Z_k sqrt(t_k) on the continuation region
    for k, tk in enumerate(t):
        step = cum[k] - (cum[k - 1] if k else 0.0)
        if k == 0:
            c = sps.norm.isf(step / 2)
        else:
            sd = math.sqrt(tk - t[k - 1])
            args = (tk, sd, grid, weights * density, step)
            c = optimize.brentq(_unspent, 1e-6, 40.0, args=args, xtol=1e-10) if step > 0 else math.inf
        out.append(float(c))
        if k + 1 == len(t):
            break
        b = min(c, 12.0) * math.sqrt(tk)
        new_grid = np.linspace(-b, b, GRID)
        new_weights = np.full(GRID, new_grid[1] - new_grid[0])
        new_weights[[0, -1]] /= 2  # trapezoid rule
        if k == 0:
            density = sps.norm.pdf(new_grid, scale=math.sqrt(tk))
        else:
            kernel = sps.norm.pdf((new_grid[:, None] - grid[None, :]) / sd) / sd
            density = kernel @ (weights * density)
        grid, weights = new_grid, new_weights
    return tuple(out)


def nominal_confidence(looks: tuple[int, ...], n: int, confidence: float, spending: str = "pocock") -> float:
    """The per-look confidence of the look at which a cell has ``n`` values: the planned look n_k = n; between
    planned looks (runs dropped) the cell is at a later look than the last n_k < n, and the widest of those is used."""
    c = boundaries(tuple(looks), 1 - confidence, spending)
    k = int(np.searchsorted(looks, n, side="left"))
    crit = c[k] if k < len(looks) and looks[k] == n else max(c[min(k, len(c) - 1) :])
    return 1 - 2 * sps.norm.sf(crit)


def interval(looks, spending: str = "pocock"):
    """A ``stats.Interval``: the repeated confidence interval at the look the tasks' values reached. ``extra``,
    ``extra_df``: as ``t_interval``'s (the test sample's variance, ``testsample``), at the same nominal confidence.
    The test images are the same at every look, so their error is shared by all looks (not an increment per round,
    as the boundaries model the seeds): the looks are more alike than the boundaries assume, which in the calibration
    keeps the intervals conservative (``calibration.simulate_sequential_test_sample``)."""
    looks = tuple(int(n) for n in looks)

    def repeated_t_interval(
        tasks, confidence: float, extra: Sequence | None = None, extra_df: float = math.inf
    ) -> tuple:
        n = min(np.shape(t)[-1] for t in tasks) if len(tasks) else 0
        nominal = nominal_confidence(looks, n, confidence, spending) if n else confidence
        return t_interval(tasks, nominal, extra, extra_df)

    repeated_t_interval.__name__ = f"repeated_t_interval({spending}, looks {list(looks)})"
    return repeated_t_interval
