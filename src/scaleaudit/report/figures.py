"""The report's figures, one function each, found by name in ``PER_PART`` and ``WHOLE``.

A per-part figure draws one part of the datasets (rows of at most ``DATASETS_PER_FIGURE`` datasets, so each part
stays readable on one page) and is saved as ``<name>_<k>.png``; a whole figure covers the study and is saved as
``<name>.png``, or is left out (None) where the study has nothing to show in it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .. import ledger  # noqa: E402
from .document import FIGURE_DPI  # noqa: E402
from .results import Results  # noqa: E402

PALETTE = "colorblind"
DATASETS_PER_FIGURE = 4
DECISION_STYLE = {  # colour-blind-safe colours (Okabe-Ito) and distinct markers, so print in grey still works
    "better": ("#0072B2", "^"), "equivalent": ("#999999", "o"), "worse": ("#D55E00", "v"), "undecided": ("#CC79A7", "D"),
}


@dataclass
class Canvas:
    """What every figure shares: the results, the arms in plotting order with their colours, the tasks."""

    res: Results
    runs: pd.DataFrame  # the run table with each arm's display label (arm_label)
    summary: pd.DataFrame  # the arm summary with its label and Pareto-front flag
    order: list[str]  # arm labels, small arms first
    colours: dict[str, tuple]
    tasks: list[tuple[str, int]]  # (dataset, size)
    fractions: list[float]

    @classmethod
    def of(cls, res: Results) -> Canvas:
        group = res.runs.groupby("arm")["group"].first()
        order = [res.labels[a] for a in sorted(res.labels, key=lambda a: (group[a] != "small", a))]
        runs = res.runs.assign(arm_label=res.runs["arm"].map(res.labels))
        return cls(res=res, runs=runs, order=order, colours=dict(zip(order, sns.color_palette(PALETTE, len(order)))),
                   summary=res.summary.assign(arm_label=res.summary["arm"].map(res.labels),
                                              front=ledger.pareto_front(res.summary)),
                   tasks=sorted(set(zip(runs["dataset"], runs["size"]))), fractions=sorted(runs["fraction"].unique()))

    @property
    def parts(self) -> list[list[tuple[str, int]]]:
        return [self.tasks[i:i + DATASETS_PER_FIGURE] for i in range(0, len(self.tasks), DATASETS_PER_FIGURE)]

    @property
    def verdict(self) -> dict:
        return self.res.config["verdict"]

    def title(self, ax, dataset, size, fraction):
        many = len(self.fractions) > 1
        ax.set_title(f"{dataset} @ {size} px" + (f"\n{fraction:g} of train" if many else ""), fontsize=9)

    def grid(self, part, height, width=None, **kw):
        """A row per dataset of the part, a column per training fraction."""
        ncol = len(self.fractions)
        return plt.subplots(len(part), ncol, squeeze=False, layout="constrained",
                            figsize=(width or min(max(3.3 * ncol, 5.0), 7.5), height * len(part)), **kw)

    def strips(self, part, column: str, xlabel: str):
        """Each seed's value of ``column`` per arm (a strip), with the mean ± sd, per dataset and fraction."""
        fig, axes = self.grid(part, 0.22 * len(self.order) + 0.8, width=6.5 if len(self.fractions) > 1 else 5.5,
                              sharey=True, sharex="row")
        runs, order = self.runs, self.order
        for i, (dataset, size) in enumerate(part):
            for j, fraction in enumerate(self.fractions):
                ax = axes[i, j]
                d = runs[(runs["dataset"] == dataset) & (runs["size"] == size) & (runs["fraction"] == fraction)]
                sns.stripplot(data=d, x=column, y="arm_label", order=order, hue="arm_label", hue_order=order,
                              palette=self.colours, size=5, jitter=0.15, legend=False, ax=ax)
                sns.pointplot(data=d, x=column, y="arm_label", order=order, color="black", markers="|",
                              errorbar="sd", linestyle="none", ax=ax)
                self.title(ax, dataset, size, fraction)
                ax.set(xlabel="", ylabel="")
        fig.supxlabel(xlabel, fontsize=9)
        return fig


def scores(cv: Canvas, part):
    """Test metric of every run per arm, per dataset and fraction."""
    return cv.strips(part, f"test_{cv.verdict['metric']}", f"test {cv.res.metric} (each point a seed; black: mean ± sd)")


def calibration(cv: Canvas, part):
    """Test expected calibration error of every run per arm."""
    return cv.strips(part, "test_ece", "test expected calibration error (lower is better; each point a seed)")


def forest(cv: Canvas):
    """Each comparison's mean paired difference with its interval and the interval that decides, against the ROPE."""
    c, v, res, fractions = cv.res.comparisons, cv.verdict, cv.res, cv.fractions
    if not len(c):
        return None
    rows = sorted(set(zip(c["dataset"], c["size"], c["arm"])), reverse=True)
    fig, axes = plt.subplots(1, len(fractions), squeeze=False, sharey=True, sharex=True, layout="constrained",
                             figsize=(7.0 if len(fractions) > 1 else 5.0, 0.28 * len(rows) + 1.2))
    for ax, fraction in zip(axes[0], fractions):
        ax.axvspan(-v["rope"], v["rope"], color="0.85", zorder=0)
        ax.axvline(0, color="0.4", lw=0.8)
        for y, (dataset, size, arm) in enumerate(rows):
            r = c[(c["dataset"] == dataset) & (c["size"] == size) & (c["arm"] == arm) & (c["fraction"] == fraction)]
            if r.empty:
                continue
            r = r.iloc[0]
            colour, marker = DECISION_STYLE[r["decision"]]
            if not math.isnan(r["lo"]):
                ax.plot([r["adj_lo"], r["adj_hi"]], [y, y], color=colour, lw=0.8)
                ax.plot([r["lo"], r["hi"]], [y, y], color=colour, lw=2.5)
            ax.plot(r["diff"], y, marker=marker, color=colour, ms=6, ls="none")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=3))
        if len(fractions) > 1:
            ax.set_title(f"{fraction:g} of train", fontsize=9)
    axes[0, 0].set_yticks(range(len(rows)), [f"{d} @ {s} px: {res.labels[a]}" for d, s, a in rows])
    handles = [plt.Rectangle((0, 0), 1, 1, color="0.85", label=f"ROPE ±{v['rope']:g}")]
    handles += [plt.Line2D([], [], marker=m, color=col, ls="none", label=d)
                for d, (col, m) in DECISION_STYLE.items() if d in set(c["decision"])]
    fig.legend(handles=handles, loc="outside upper center", ncol=len(handles), fontsize=8, frameon=False)
    fig.supxlabel(f"{res.metric}: large arm − small partner (mean paired difference; thick: {v['confidence']:.0%} CI, "
                  "thin: simultaneous CI)", fontsize=9)
    return fig


def pareto(cv: Canvas, part):
    """Test metric against training energy per arm, with the Pareto front."""
    summary, colours = cv.summary, cv.colours
    fig, axes = cv.grid(part, 2.5)
    for i, (dataset, size) in enumerate(part):
        for j, fraction in enumerate(cv.fractions):
            ax = axes[i, j]
            g = summary[(summary["dataset"] == dataset) & (summary["size"] == size) & (summary["fraction"] == fraction)]
            front = g[g["front"]].sort_values("energy_kwh")
            ax.step(front["energy_kwh"], front["score_mean"], where="post", color="0.3", lw=1, ls="--", zorder=1)
            for r in g.itertuples():
                ax.errorbar(r.energy_kwh, r.score_mean, yerr=0 if math.isnan(r.score_sd) else r.score_sd, fmt="o",
                            color=colours[r.arm_label], ms=6, mec="black" if r.front else "none", capsize=2, zorder=2)
            ax.set_xscale("log")
            lo, hi = g["energy_kwh"].min(), g["energy_kwh"].max()
            ax.set_xlim(lo / 2, max(hi * 2, lo * 20))  # at least a decade, so the log axis gets labelled ticks
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            cv.title(ax, dataset, size, fraction)
    fig.supxlabel("energy per training run (kWh, log scale)", fontsize=9)
    fig.supylabel(f"test {cv.res.metric} (mean ± sd over seeds)", fontsize=9)
    handles = [plt.Line2D([], [], marker="o", ls="none", color=colours[lbl], ms=6, label=lbl) for lbl in cv.order]
    handles.append(plt.Line2D([], [], color="0.3", ls="--", label="Pareto front (outlined points)"))
    fig.legend(handles=handles, loc="outside upper center", ncol=2, fontsize=8, frameon=False)
    return fig


def efficiency(cv: Canvas):
    """The gain of each large arm against the training fraction, with its interval; only with several fractions."""
    c, v, res, tasks, fractions = cv.res.comparisons, cv.verdict, cv.res, cv.tasks, cv.fractions
    if len(fractions) < 2 or not len(c):
        return None
    wrap = min(len(tasks), 3)
    fig, axes = plt.subplots(math.ceil(len(tasks) / wrap), wrap, squeeze=False, sharey=True, layout="constrained",
                             figsize=(2.4 * wrap, 2.3 * math.ceil(len(tasks) / wrap)))
    for ax, (dataset, size) in zip(axes.flat, tasks):
        ax.axhspan(-v["rope"], v["rope"], color="0.85", zorder=0)
        for arm, d in c[(c["dataset"] == dataset) & (c["size"] == size)].groupby("arm"):
            d, colour = d.sort_values("fraction"), cv.colours[res.labels[arm]]
            ax.fill_between(d["fraction"], d["lo"], d["hi"], color=colour, alpha=0.2)
            ax.plot(d["fraction"], d["diff"], marker="o", color=colour)
        ax.set_xscale("log")
        ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(f"{dataset} @ {size} px", fontsize=9)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    fig.supxlabel("fraction of the training split (log scale)", fontsize=9)
    fig.supylabel(f"{res.metric} gain over best small arm", fontsize=9)
    large = [lbl for lbl in cv.order if lbl in set(c["arm"].map(res.labels))]
    fig.legend(handles=[plt.Line2D([], [], marker="o", color=cv.colours[lbl], label=lbl) for lbl in large],
               loc="outside upper center", ncol=2, fontsize=8, frameon=False)
    return fig


def shift_severity(cv: Canvas):
    """Test metric against MedMNIST-C severity (0: clean) per arm, mean over corruptions; only with shift results."""
    from .. import shift

    if cv.res.shift is None or cv.res.shift.empty:
        return None
    curve = shift.severity_curve(cv.res.shift, cv.verdict["metric"], cv.verdict["confidence"])
    curve = curve.assign(arm_label=curve["arm"].map(cv.res.labels))
    keys = sorted(set(zip(curve["dataset"], curve["size"], curve["fraction"])))
    wrap = min(len(keys), 3)
    fig, axes = plt.subplots(math.ceil(len(keys) / wrap), wrap, squeeze=False, sharey=True, layout="constrained",
                             figsize=(2.6 * wrap + 0.6, 2.4 * math.ceil(len(keys) / wrap)))
    for ax, (dataset, size, fraction) in zip(axes.flat, keys):
        for label in cv.order:
            d = curve[(curve["dataset"] == dataset) & (curve["size"] == size) & (curve["fraction"] == fraction)
                      & (curve["arm_label"] == label)].sort_values("severity")
            if len(d):
                ax.fill_between(d["severity"], d["lo"], d["hi"], color=cv.colours[label], alpha=0.2)
                ax.plot(d["severity"], d["mean"], marker="o", ms=3, color=cv.colours[label])
        ax.set_xticks(range(6))
        cv.title(ax, dataset, size, fraction)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.supxlabel("MedMNIST-C severity (0: clean)", fontsize=9)
    fig.supylabel(f"test {cv.res.metric}", fontsize=9)
    fig.legend(handles=[plt.Line2D([], [], marker="o", color=cv.colours[lbl], label=lbl) for lbl in cv.order],
               loc="outside upper center", ncol=2, fontsize=8, frameon=False)
    return fig


PER_PART = {"scores": scores, "calibration": calibration, "pareto": pareto}
WHOLE = {"forest": forest, "efficiency": efficiency, "shift_severity": shift_severity}


def figures(res: Results, outdir: Path) -> dict[str, list[Path]]:
    """Draw every figure into ``outdir`` as PNG: name -> its files (one per part; whole figures one file)."""
    sns.set_theme(style="whitegrid", context="paper", font_scale=1.1)
    cv = Canvas.of(res)
    out: dict[str, list[Path]] = {}

    def save(name, stem, fig):
        if fig is not None:
            path = outdir / f"{stem}.png"
            fig.savefig(path, dpi=FIGURE_DPI, bbox_inches="tight")
            plt.close(fig)
            out.setdefault(name, []).append(path)

    for name, draw in PER_PART.items():
        for k, part in enumerate(cv.parts, 1):
            save(name, f"{name}_{k}", draw(cv, part))
    for name, draw in WHOLE.items():
        save(name, name, draw(cv))
    return out
