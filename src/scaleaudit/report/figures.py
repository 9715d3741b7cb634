"""The report's figures, one function each, found by name in ``PER_PART``, ``WITH_CURVES`` and ``WHOLE``.

A per-part figure draws one part of the datasets (rows of at most ``DATASETS_PER_FIGURE`` datasets, so each part
stays readable on one page) and is saved as ``<name>_<k>.png``; a whole figure covers the study and is saved as
``<name>.png``, or is left out (None) where the study has nothing to show in it. The ``WITH_CURVES`` figures are
drawn per part from the run files (learning curves, reliability diagrams), where the report was given them.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker
import pandas as pd
import seaborn as sns

from .. import design, scaling
from .document import FIGURE_DPI
from .results import Results

PALETTE = "colorblind"
DATASETS_PER_FIGURE = 4
DECISION_STYLE = {  # colour-blind-safe colours (Okabe-Ito) and distinct markers, so print in grey still works
    "better": ("#0072B2", "^"),
    "equivalent": ("#999999", "o"),
    "worse": ("#D55E00", "v"),
    "undecided": ("#CC79A7", "D"),
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
        return cls(
            res=res,
            runs=runs,
            order=order,
            colours=dict(zip(order, sns.color_palette(PALETTE, len(order)))),
            summary=res.summary.assign(arm_label=res.summary["arm"].map(res.labels)),
            tasks=sorted(set(zip(runs["dataset"], runs["size"]))),
            fractions=sorted(runs["fraction"].unique()),
        )

    @property
    def parts(self) -> list[list[tuple[str, int]]]:
        return [self.tasks[i : i + DATASETS_PER_FIGURE] for i in range(0, len(self.tasks), DATASETS_PER_FIGURE)]

    @property
    def verdict(self) -> dict:
        return self.res.config["verdict"]

    def title(self, ax, dataset, size, fraction):
        many = len(self.fractions) > 1
        ax.set_title(f"{dataset} @ {size} px" + (f"\n{fraction:g} of train" if many else ""), fontsize=9)

    def grid(self, part, height, width=None, **kw):
        """A row per dataset of the part, a column per training fraction."""
        ncol = len(self.fractions)
        return plt.subplots(
            len(part),
            ncol,
            squeeze=False,
            layout="constrained",
            figsize=(width or min(max(3.3 * ncol, 5.0), 7.5), height * len(part)),
            **kw,
        )

    def panels(self, n: int, width: float, height: float):
        """``n`` panels with a shared y-axis, three to a row; the grid's unused panels are hidden."""
        wrap = min(n, 3)
        fig, axes = plt.subplots(
            math.ceil(n / wrap),
            wrap,
            squeeze=False,
            sharey=True,
            layout="constrained",
            figsize=(width * wrap, height * math.ceil(n / wrap)),
        )
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        return fig, list(axes.flat)[:n]

    def arm_legend(self, fig, labels):
        fig.legend(
            handles=[plt.Line2D([], [], marker="o", color=self.colours[lbl], label=lbl) for lbl in labels],
            loc="outside upper center",
            ncol=2,
            fontsize=8,
            frameon=False,
        )

    def per_run(self, table: pd.DataFrame, dataset, size, fraction):
        """The rows of a per-run table (curves) of one cell, grouped by run: ((arm label, seed), rows)."""
        d = table[(table["dataset"] == dataset) & (table["size"] == size) & (table["fraction"] == fraction)]
        return d.assign(arm_label=d["arm"].map(self.res.labels)).groupby(["arm_label", "seed"], sort=True)

    def strips(self, part, column: str, xlabel: str):
        """Each seed's value of ``column`` per arm (a strip), with the mean ± sd, per dataset and fraction."""
        fig, axes = self.grid(
            part, 0.22 * len(self.order) + 0.8, width=6.5 if len(self.fractions) > 1 else 5.5, sharey=True, sharex="row"
        )
        runs, order = self.runs, self.order
        for i, (dataset, size) in enumerate(part):
            for j, fraction in enumerate(self.fractions):
                ax = axes[i, j]
                d = runs[(runs["dataset"] == dataset) & (runs["size"] == size) & (runs["fraction"] == fraction)]
                sns.stripplot(
                    data=d,
                    x=column,
                    y="arm_label",
                    order=order,
                    hue="arm_label",
                    hue_order=order,
                    palette=self.colours,
                    size=5,
                    jitter=0.15,
                    legend=False,
                    ax=ax,
                )
                sns.pointplot(
                    data=d,
                    x=column,
                    y="arm_label",
                    order=order,
                    color="black",
                    markers="|",
                    errorbar="sd",
                    linestyle="none",
                    ax=ax,
                )
                self.title(ax, dataset, size, fraction)
                ax.set(xlabel="", ylabel="")
        fig.supxlabel(xlabel, fontsize=9)
        return fig


def scores(cv: Canvas, part):
    """Test metric of every run per arm, per dataset and fraction."""
    return cv.strips(
        part, f"test_{cv.verdict['metric']}", f"test {cv.res.metric} (each point a seed; black: mean ± sd)"
    )


def calibration(cv: Canvas, part):
    """Test expected calibration error of every run per arm."""
    return cv.strips(part, "test_ece", "test expected calibration error (lower is better; each point a seed)")


def forest(cv: Canvas):
    """Each comparison's mean paired difference with its interval and the interval that decides, against the ROPE."""
    c, v, res, fractions = cv.res.comparisons, cv.verdict, cv.res, cv.fractions
    if not len(c):
        return None
    rows = sorted(set(zip(c["dataset"], c["size"], c["arm"])), reverse=True)
    fig, axes = plt.subplots(
        1,
        len(fractions),
        squeeze=False,
        sharey=True,
        sharex=True,
        layout="constrained",
        figsize=(7.0 if len(fractions) > 1 else 5.0, 0.28 * len(rows) + 1.2),
    )
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
    handles += [
        plt.Line2D([], [], marker=m, color=col, ls="none", label=d)
        for d, (col, m) in DECISION_STYLE.items()
        if d in set(c["decision"])
    ]
    fig.legend(handles=handles, loc="outside upper center", ncol=len(handles), fontsize=8, frameon=False)
    fig.supxlabel(
        f"{res.metric}: large arm − small partner (mean paired difference; thick: {v['confidence']:.0%} CI, "
        "thin: simultaneous CI)",
        fontsize=9,
    )
    return fig


def task_forest(cv: Canvas, arm: str):
    """One large arm's study-level claim: each dataset's gain and interval, and where ``results.task_forest`` has
    them the pooled estimate with its simultaneous interval and a new task's prediction interval, against the ROPE;
    one panel per fraction."""
    f, v, res = cv.res.task_forest, cv.verdict, cv.res
    f = f[f["arm"] == arm]
    kinds = set(f["kind"])
    labels = list(dict.fromkeys(f.loc[f["kind"] == "dataset", "label"]))
    labels += ["pooled"] * ("pooled" in kinds) + ["a new task"] * ("prediction" in kinds)
    fractions = sorted(f["fraction"].unique())
    fig, axes = plt.subplots(
        1,
        len(fractions),
        squeeze=False,
        sharey=True,
        layout="constrained",
        figsize=(3.2 * len(fractions) + 1.8, 0.32 * len(labels) + 1.2),
    )
    for ax, fraction in zip(axes[0], fractions):
        ax.axvspan(-v["rope"], v["rope"], color="0.85", zorder=0)
        ax.axvline(0, color="0.4", lw=0.8)
        for r in f[f["fraction"] == fraction].itertuples():
            y = len(labels) - 1 - labels.index("pooled" if r.kind == "pooled" else r.label)
            colour, marker = DECISION_STYLE[r.decision] if r.kind != "prediction" else ("0.3", "")
            if not math.isnan(r.lo):
                ax.plot([r.lo, r.hi], [y, y], color=colour, lw=2.5 if r.kind == "pooled" else 1.5)
            if r.kind != "prediction":
                ax.plot(r.estimate, y, marker="D" if r.kind == "pooled" else marker, color=colour, ms=6, ls="none")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=4))
        ax.tick_params(axis="x", labelsize=8)
        ax.set_title(f"{res.labels[arm]}" + (f", {fraction:g} of train" if len(fractions) > 1 else ""), fontsize=9)
    axes[0, 0].set_yticks(range(len(labels)), labels[::-1], fontsize=8)
    pooled = "; pooled: simultaneous CI" if "pooled" in kinds else ""
    fig.supxlabel(
        f"{res.metric} gain over the best small arm ({v['confidence']:.0%} CI per dataset{pooled}; "
        f"grey band: ROPE ±{v['rope']:g})",
        fontsize=8,
    )
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
                ax.errorbar(
                    r.energy_kwh,
                    r.score_mean,
                    yerr=0 if math.isnan(r.score_sd) else r.score_sd,
                    fmt="o",
                    color=colours[r.arm_label],
                    ms=6,
                    mec="black" if r.front else "none",
                    capsize=2,
                    zorder=2,
                )
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
    fig, axes = cv.panels(len(tasks), 2.4, 2.3)
    for ax, (dataset, size) in zip(axes, tasks):
        ax.axhspan(-v["rope"], v["rope"], color="0.85", zorder=0)
        for arm, d in c[(c["dataset"] == dataset) & (c["size"] == size)].groupby("arm"):
            d, colour = d.sort_values("fraction"), cv.colours[res.labels[arm]]
            ax.fill_between(d["fraction"], d["lo"], d["hi"], color=colour, alpha=0.2)
            ax.plot(d["fraction"], d["diff"], marker="o", color=colour)
        ax.set_xscale("log")
        ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(f"{dataset} @ {size} px", fontsize=9)
    fig.supxlabel("fraction of the training split (log scale)", fontsize=9)
    fig.supylabel(f"{res.metric} gain over best small arm", fontsize=9)
    cv.arm_legend(fig, [lbl for lbl in cv.order if lbl in set(c["arm"].map(res.labels))])
    return fig


def _learning(cv: Canvas, part, column: str, ylabel: str, selected: bool):
    """One line per run of ``column`` against the epoch (seeds overlaid, coloured by arm); ``selected`` marks the
    epoch whose weights were tested."""
    history = cv.res.curves.history
    if column not in history:
        return None
    best = cv.runs.set_index(["arm_label", "seed", "dataset", "size", "fraction"])["best_epoch"]
    fig, axes = cv.grid(part, 2.2, sharex="row")
    for i, (dataset, size) in enumerate(part):
        for j, fraction in enumerate(cv.fractions):
            ax = axes[i, j]
            for (label, seed), g in cv.per_run(history, dataset, size, fraction):
                g = g.dropna(subset=[column]).sort_values("epoch")
                colour = cv.colours[label]
                ax.plot(g["epoch"], g[column], color=colour, lw=1, alpha=0.8, marker="o" if len(g) < 4 else None, ms=3)
                if selected:
                    at = g[g["epoch"] == best.get((label, seed, dataset, size, fraction))]
                    ax.plot(at["epoch"], at[column], marker="o", ms=5, mfc="white", mec=colour, ls="none")
            cv.title(ax, dataset, size, fraction)
    fig.supxlabel("epoch", fontsize=9)
    fig.supylabel(ylabel, fontsize=9)
    cv.arm_legend(fig, cv.order)
    return fig


def learning_loss(cv: Canvas, part):
    """Training loss per epoch of every run."""
    return _learning(cv, part, "train_loss", "training loss (mean over the epoch)", selected=False)


def learning_val(cv: Canvas, part):
    """Validation metric per epoch of every run, the epoch whose weights were tested marked."""
    metric = cv.verdict["metric"]
    return _learning(cv, part, f"val_{metric}", f"validation {cv.res.metric}", selected=True)


def reliability(cv: Canvas, part):
    """Reliability diagram of every run's test predictions: observed accuracy against confidence per bin."""
    fig, axes = cv.grid(part, 2.6, width=2.7 * len(cv.fractions) + 0.8, sharex=True, sharey=True)  # square panels
    for i, (dataset, size) in enumerate(part):
        for j, fraction in enumerate(cv.fractions):
            ax = axes[i, j]
            ax.plot([0, 1], [0, 1], color="0.5", lw=0.8, ls="--")
            for (label, _), g in cv.per_run(cv.res.curves.reliability, dataset, size, fraction):
                ax.plot(g["confidence"], g["accuracy"], color=cv.colours[label], lw=0.9, alpha=0.8, marker="o", ms=2.5)
            ax.set(xlim=(0, 1), ylim=(0, 1), aspect="equal")
            cv.title(ax, dataset, size, fraction)
    fig.supxlabel("confidence of the predicted label (mean per bin)", fontsize=9)
    fig.supylabel("observed accuracy in the bin", fontsize=9)
    cv.arm_legend(fig, cv.order)
    return fig


# --- the scale axis (scaleaudit.scaling) ---------------------------------------------------------------------------


TREND_COLOURS = ("#0072B2", "#009E73", "#CC79A7", "#E69F00")  # one per ladder (Okabe-Ito), cycled past four


def _error(r) -> list[list[float]]:
    """Asymmetric error bar of a rung point; none where its interval is missing (a single seed)."""
    return [[0.0 if math.isnan(r.lo) else r.mean - r.lo], [0.0 if math.isnan(r.hi) else r.hi - r.mean]]


def _scale(cv: Canvas, part, axis: str):
    """Test metric of every arm against ``axis`` (log x; mean and t-interval over seeds), the ROPE band around the
    best small arm, and each ladder's fitted trend with its pointwise band, dashed for the next 10x."""
    res, v = cv.res, cv.verdict
    points, every, curves = res.model_scale[axis][0], res.rungs[axis], res.trend_curves[axis]
    if not len(points):
        return None
    group = res.runs.groupby("arm")["group"].first()
    trend_colour = dict(zip(sorted(points["ladder"].unique()), itertools.cycle(TREND_COLOURS)))
    fig, axes = cv.grid(part, 2.6)
    for i, (dataset, size) in enumerate(part):
        for j, fraction in enumerate(cv.fractions):
            ax, cell = axes[i, j], (dataset, size, fraction)
            here = every[(every[design.CELL] == cell).all(axis=1)]
            edges = list(here["mean"])
            small = here[here["arm"].map(group) == "small"]
            if len(small):
                best = small["mean"].max()
                ax.axhspan(best - v["rope"], best + v["rope"], color="0.88", zorder=0)
                edges += [best - v["rope"], best + v["rope"]]
            for r in here.itertuples():
                ax.errorbar(
                    r.x,
                    r.mean,
                    yerr=_error(r),
                    fmt="s" if group[r.arm] == "small" else "o",
                    ms=5,
                    capsize=2,
                    color=cv.colours[res.labels[r.arm]],
                    zorder=3,
                )
                edges += [e for e in (r.lo, r.hi) if not math.isnan(e)]
            for ladder, g in curves[(curves[design.CELL] == cell).all(axis=1)].groupby("ladder"):
                grid, fit, seen, colour = 10 ** g["log10_x"], g["fit"], g["observed"], trend_colour[ladder]
                ax.plot(grid[seen], fit[seen], color=colour, lw=1.2, zorder=2)
                ax.plot(grid[~seen], fit[~seen], color=colour, lw=1.2, ls="--", zorder=2)
                ax.fill_between(grid, g["lo"], g["hi"], color=colour, alpha=0.12, lw=0, zorder=1)
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            if edges:  # the rungs decide the view, not a trend band that one degree of freedom makes huge
                lo_y, hi_y = min(edges), max(edges)
                pad = max(0.15 * (hi_y - lo_y), 0.01)
                ax.set_ylim(lo_y - pad, hi_y + pad)
            cv.title(ax, dataset, size, fraction)
    fig.supxlabel(f"{scaling.AXES[axis]}{' per run' if axis == 'train_flops' else ''} (log scale)", fontsize=9)
    fig.supylabel(f"test {res.metric} (mean, {v['confidence']:.0%} CI over seeds)", fontsize=9)
    shown = [lbl for lbl in cv.order if lbl in set(cv.runs["arm_label"])]
    handles = [
        plt.Line2D(
            [],
            [],
            marker="s" if group[a] == "small" else "o",
            ls="none",
            color=cv.colours[res.labels[a]],
            label=res.labels[a],
        )
        for a in sorted(group.index, key=lambda a: shown.index(res.labels[a]))
    ]
    handles += [
        plt.Rectangle((0, 0), 1, 1, color="0.88", label=f"best small arm ± ROPE ({v['rope']:g})"),
        *(
            plt.Line2D([], [], color=c, label=f"{ladder}: trend (dashed: the next 10x), {v['confidence']:.0%} band")
            for ladder, c in trend_colour.items()
        ),
    ]
    fig.legend(handles=handles, loc="outside upper center", ncol=2, fontsize=8, frameon=False)
    return fig


def scale_params(cv: Canvas, part):
    """Test metric against parameters (log), with each ladder's trend."""
    return _scale(cv, part, "params")


def scale_flops(cv: Canvas, part):
    """Test metric against training FLOPs (log), with each ladder's trend."""
    return _scale(cv, part, "train_flops")


def data_scale(cv: Canvas):
    """Test metric of every arm against the number of training images (log), mean and t-interval over seeds; only
    with several training fractions."""
    res, v, tasks = cv.res, cv.verdict, cv.tasks
    if res.data_scale is None:
        return None
    points = res.data_scale[0]
    fig, axes = cv.panels(len(tasks), 2.6, 2.4)
    for ax, (dataset, size) in zip(axes, tasks):
        task = points[(points["dataset"] == dataset) & (points["size"] == size)]
        for arm, d in task.groupby("arm"):
            colour = cv.colours[res.labels[arm]]
            ax.fill_between(d["x"], d["lo"], d["hi"], color=colour, alpha=0.15, lw=0)
            ax.plot(d["x"], d["mean"], marker="o", color=colour)
        ax.set_xscale("log")
        ticks = task.groupby("fraction")["x"].median()  # a log axis under a decade has no labelled ticks of its own
        ax.set_xticks(ticks.to_numpy(), [f"{x:.0f}\n({f:g})" for f, x in ticks.items()], fontsize=7)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(f"{dataset} @ {size} px", fontsize=9)
    fig.supxlabel("training images (log scale; the training fraction in brackets)", fontsize=9)
    fig.supylabel(f"test {res.metric} (mean, {v['confidence']:.0%} CI)", fontsize=9)
    cv.arm_legend(fig, cv.order)
    return fig


def shift_severity(cv: Canvas):
    """Test metric against MedMNIST-C severity (0: clean) per arm, mean over corruptions; only with shift results."""
    if cv.res.severity is None:
        return None
    curve = cv.res.severity
    curve = curve.assign(arm_label=curve["arm"].map(cv.res.labels))
    keys = sorted(set(zip(curve["dataset"], curve["size"], curve["fraction"])))
    fig, axes = cv.panels(len(keys), 2.6, 2.4)
    for ax, (dataset, size, fraction) in zip(axes, keys):
        for label in cv.order:
            d = curve[
                (curve["dataset"] == dataset)
                & (curve["size"] == size)
                & (curve["fraction"] == fraction)
                & (curve["arm_label"] == label)
            ].sort_values("severity")
            if len(d):
                ax.fill_between(d["severity"], d["lo"], d["hi"], color=cv.colours[label], alpha=0.2)
                ax.plot(d["severity"], d["mean"], marker="o", ms=3, color=cv.colours[label])
        ax.set_xticks(range(6))
        cv.title(ax, dataset, size, fraction)
    fig.supxlabel("MedMNIST-C severity (0: clean)", fontsize=9)
    fig.supylabel(f"test {cv.res.metric}", fontsize=9)
    cv.arm_legend(fig, cv.order)
    return fig


PER_PART = {
    "scores": scores,
    "calibration": calibration,
    "pareto": pareto,
    "scale_params": scale_params,
    "scale_flops": scale_flops,
}
WITH_CURVES = {"learning_loss": learning_loss, "learning_val": learning_val, "reliability": reliability}  # per part
WHOLE = {"forest": forest, "efficiency": efficiency, "data_scale": data_scale, "shift_severity": shift_severity}


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

    for name, draw in ((PER_PART | WITH_CURVES) if res.curves is not None else PER_PART).items():
        for k, part in enumerate(cv.parts, 1):
            save(name, f"{name}_{k}", draw(cv, part))
    for name, draw in WHOLE.items():
        save(name, name, draw(cv))
    for k, arm in enumerate(sorted(res.task_forest["arm"].unique()), 1):
        save("task_forest", f"task_forest_{k}", task_forest(cv, arm))
    return out
