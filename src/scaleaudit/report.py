"""The study report: the verdict, its methods, results, costs and provenance, as PDF (Typst) and Markdown.

The content is built once as a list of blocks (headings, paragraphs, tables, figures) and rendered twice,
so the PDF and the Markdown version cannot drift apart. Every number comes from the run table and the
resolved config; the statistics come from ``scaleaudit.stats``, the costs from ``scaleaudit.ledger``.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import config as study_config
from . import adaptive, calibration, ledger, plan, provenance, reproduction, stats
from .aggregate import RUN_KEY
from .files import atomic_path, read_json, write_text

PALETTE = "colorblind"
DATASETS_PER_FIGURE = 4
FIGURE_DPI = 200
TEXT_WIDTH_CM, MAX_FIGURE_HEIGHT_CM = 21.0 - 2 * 1.8, 20.0  # A4 less the margins set in to_typst
TEXT_COLUMNS = ["weights_source", "weights_sha256", "mlflow_run_id", "code_commit", "config_hash", "data_sha256"]
NOT_PUBLISHED = "†"
DECISION_STYLE = {  # colour-blind-safe colours (Okabe-Ito) and distinct markers, so print in grey still works
    "better": ("#0072B2", "^"), "equivalent": ("#999999", "o"), "worse": ("#D55E00", "v"), "undecided": ("#CC79A7", "D"),
}


# --- the document model and its two renderings ------------------------------------------------------------


@dataclass
class Heading:
    text: str
    level: int = 1


@dataclass
class Para:
    text: str
    strong: bool = False


@dataclass
class Table:
    header: list[str]
    rows: list[list]
    widths: list[float | None] | None = None  # relative column widths (Typst fr units); None: as wide as its text
    size: float = 8.5  # font size in pt: wide tables get smaller type so they fit the page
    caption: str = ""


@dataclass
class Figure:
    path: Path
    caption: str


@dataclass
class PageBreak:
    pass


@dataclass
class Document:
    title: str
    subtitle: str
    blocks: list = field(default_factory=list)


def esc(text) -> str:
    """Escape a value for Typst markup (every markup character, so no value can start a list or comment)."""
    out = str(text)
    for ch in "\\#$*_@<>`[]~/-+=":
        out = out.replace(ch, "\\" + ch)
    return out


def _print_width(png: Path) -> float:
    """Width in cm at which a figure prints at its drawn size (fonts as designed), shrunk only to fit the page."""
    width, height = struct.unpack(">II", png.read_bytes()[16:24])  # the PNG header (IHDR)
    natural = width / FIGURE_DPI * 2.54
    return min(natural, TEXT_WIDTH_CM, MAX_FIGURE_HEIGHT_CM * width / height)


def _typst_cell(value) -> str:
    return "[" + " \\ ".join(esc(line) for line in str(value).split("\n")) + "]"


def to_typst(doc: Document) -> str:
    out = [
        '#set page(paper: "a4", margin: (x: 1.8cm, y: 2cm), numbering: "1")',
        "#set text(size: 10pt)",
        '#set heading(numbering: "1.1")',
        "#set par(justify: false)",
        "#show figure.caption: set text(size: 9pt)",
        f'#align(center)[#text(size: 15pt, weight: "bold")[{esc(doc.title)}] \\ #text(size: 9pt)[{esc(doc.subtitle)}]]',
    ]
    for b in doc.blocks:
        if isinstance(b, Heading):
            out.append("=" * b.level + " " + esc(b.text))
        elif isinstance(b, Para):
            out.append(f"*{esc(b.text)}*" if b.strong else esc(b.text))
        elif isinstance(b, Table):
            cols = "(" + ", ".join(f"{w}fr" if w else "auto" for w in b.widths) + ")" if b.widths else str(len(b.header))
            head = ", ".join(f"[*{esc(h)}*]" for h in b.header)
            body = ", ".join(_typst_cell(c) for r in b.rows for c in r)
            table = (f"#[#set text(size: {b.size}pt)\n#table(columns: {cols}, stroke: 0.4pt + gray, inset: 2.5pt, "
                     f"align: left, table.header({head}), {body})]")
            out.append(f"#figure(kind: table, caption: [{esc(b.caption)}])[{table}]" if b.caption else table)
        elif isinstance(b, Figure):
            out.append(f'#figure(image("{b.path.name}", width: {_print_width(b.path):.1f}cm), caption: [{esc(b.caption)}])')
        elif isinstance(b, PageBreak):
            out.append("#pagebreak()")
    return "\n\n".join(out) + "\n"


def _md(text) -> str:
    out = str(text)
    for ch in "\\*_`|<>[]":
        out = out.replace(ch, "\\" + ch)
    return out.replace("\n", "<br>")


def to_markdown(doc: Document, figures_from: Path) -> str:
    """Markdown of the same blocks; figure links are relative to ``figures_from`` (the .md file's folder)."""
    out = [f"# {_md(doc.title)}", f"_{_md(doc.subtitle)}_"]
    for b in doc.blocks:
        if isinstance(b, Heading):
            out.append("#" * (b.level + 1) + " " + _md(b.text))
        elif isinstance(b, Para):
            out.append(f"**{_md(b.text)}**" if b.strong else _md(b.text))
        elif isinstance(b, Table):
            lines = ["| " + " | ".join(_md(h) for h in b.header) + " |", "|" + "---|" * len(b.header)]
            lines += ["| " + " | ".join(_md(c) for c in r) + " |" for r in b.rows]
            out.append((f"_{_md(b.caption)}_\n\n" if b.caption else "") + "\n".join(lines))
        elif isinstance(b, Figure):
            out.append(f"![{_md(b.caption)}]({os.path.relpath(b.path, figures_from)})\n\n_{_md(b.caption)}_")
    return "\n\n".join(out) + "\n"


# --- formatting -------------------------------------------------------------------------------------------------


def num(x, spec: str = ".3f") -> str:
    """A number for a table; a dash where there is none."""
    if x is None or (isinstance(x, float) and math.isnan(x)) or x is pd.NA:
        return "–"
    return format(x, spec)


def ci(lo, hi, spec: str = "+.3f") -> str:
    return "–" if math.isnan(lo) else f"[{format(lo, spec)}, {format(hi, spec)}]"


def cell_name(r) -> str:
    return f"{r.dataset} @ {r.size} px"


def partner(r, labels: dict) -> str:
    """The small arm a comparison is paired with; how the seeds split when they chose different ones."""
    if r.small_arm is None or (isinstance(r.small_arm, float) and math.isnan(r.small_arm)):
        return "–"
    return labels[r.small_arm] + (f"\n({r.small_choice})" if r.small_choice else "")


def arm_labels(runs: pd.DataFrame, config: dict) -> dict[str, str]:
    """Display label of each arm, marked when any of its runs used weights that are not the published ones."""
    off_release = set(runs.loc[~runs["weights_published"].astype(bool), "arm"])
    return {
        a: (config["arms"].get(a, {}).get("label") or a) + (f" {NOT_PUBLISHED}" if a in off_release else "")
        for a in runs["arm"].unique()
    }


# --- what the report shows -----------------------------------------------------------------------------------


@dataclass
class Results:
    """Everything the report shows, computed once from the run table."""

    runs: pd.DataFrame
    config: dict
    labels: dict
    summary: pd.DataFrame
    comparisons: pd.DataFrame
    overall: pd.DataFrame
    scores: pd.DataFrame
    reproduction: pd.DataFrame
    dropped: pd.DataFrame
    missing: pd.DataFrame
    savings: pd.DataFrame | None = None  # adaptive seeds: per cell and arm, the seeds and hours not run

    @classmethod
    def of(cls, runs: pd.DataFrame, config: dict) -> Results:
        v = config["verdict"]
        cells, summaries = families(config)
        kw = dict(metric=v["metric"], rope=v["rope"], confidence=v["confidence"])
        why = stats.unusable(runs, v["metric"])
        seq = adaptive.settings(config)
        # adaptive seeds: each comparison's decision frozen at its round; the study-level summaries from the first
        # round, the seeds every cell ran whatever the data (see scaleaudit.adaptive)
        cells_verdict = adaptive.verdict(runs, config) if seq else stats.compare(runs, family=cells, **kw)
        first = runs[adaptive.with_rounds(runs, config)["round"] == 1] if seq else runs
        return cls(
            runs=runs, config=config, labels=arm_labels(runs, config), summary=ledger.arm_summary(runs, v["metric"]),
            comparisons=ledger.cost_normalised(runs, cells_verdict),
            overall=stats.overall(first, family=summaries, **kw),
            scores=stats.score_summary(runs, v["metric"], v["confidence"]),
            reproduction=reproduction.reproduction(runs, config["arms"]),
            dropped=runs[why != ""].assign(reason=why[why != ""]), missing=missing_runs(runs, config),
            savings=adaptive.savings(runs, config) if seq else None,
        )

    @property
    def metric(self) -> str:
        return self.config["verdict"]["metric"].upper()


def families(config: dict) -> tuple[int, int]:
    """The design's multiplicity families: per-cell comparisons (tasks x fractions x large arms) and study-level
    summaries (large arms x fractions). Counted from the design, so cells that did not run do not loosen them."""
    large = sum(config["arms"][a]["group"] == "large" for a in config["design"]["arms"])
    tasks = sum(len(d["sizes"]) for d in config["data"]["datasets"])
    fractions = len(config["design"]["fractions"])
    return tasks * fractions * large, large * fractions


def missing_runs(runs: pd.DataFrame, config: dict) -> pd.DataFrame:
    """Per cell and arm of the design with fewer runs in the table than designed: runs present and designed."""
    designed = (adaptive.planned(runs, config) if adaptive.settings(config) else
                pd.DataFrame(study_config.runs(config)))[RUN_KEY]
    have = designed.merge(runs[RUN_KEY].drop_duplicates(), on=RUN_KEY, how="left", indicator=True)
    have["present"] = have.pop("_merge") == "both"
    count = have.groupby(stats.CELL + ["arm"], sort=True)["present"].agg(present="sum", designed="count").reset_index()
    return count[count["present"] < count["designed"]]


def data_efficiency(comparisons: pd.DataFrame) -> pd.DataFrame:
    """The gain of each large arm as a function of training fraction: one row per (dataset, size, arm),
    one column per fraction (mean paired difference)."""
    if comparisons.empty:
        return pd.DataFrame()
    wide = comparisons.pivot_table(index=["dataset", "size", "arm"], columns="fraction", values="diff")
    return wide.reset_index()


# --- figures ---------------------------------------------------------------------------------------------------


def figures(res: Results, outdir: Path) -> dict[str, list[Path]]:
    """The report's figures as PNG files; per-dataset figures are split into parts of at most
    ``DATASETS_PER_FIGURE`` datasets (rows) so that each part stays readable on one page."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper", font_scale=1.1)
    v = res.config["verdict"]
    group = res.runs.groupby("arm")["group"].first()
    order = [res.labels[a] for a in sorted(res.labels, key=lambda a: (group[a] != "small", a))]
    colours = dict(zip(order, sns.color_palette(PALETTE, len(order))))
    runs = res.runs.assign(arm_label=res.runs["arm"].map(res.labels))
    summary = res.summary.assign(arm_label=res.summary["arm"].map(res.labels), front=ledger.pareto_front(res.summary))
    tasks = sorted(set(zip(runs["dataset"], runs["size"])))
    fractions = sorted(runs["fraction"].unique())
    parts = [tasks[i:i + DATASETS_PER_FIGURE] for i in range(0, len(tasks), DATASETS_PER_FIGURE)]
    out: dict[str, list[Path]] = {}

    def save(fig, name):
        path = outdir / f"{name}.png"
        fig.savefig(path, dpi=FIGURE_DPI, bbox_inches="tight")
        plt.close(fig)
        out.setdefault(name.rsplit("_", 1)[0], []).append(path)

    def title(ax, dataset, size, fraction):
        many = len(fractions) > 1
        ax.set_title(f"{dataset} @ {size} px" + (f"\n{fraction:g} of train" if many else ""), fontsize=9)

    def grid(part, height, width=None, **kw):
        ncol = len(fractions)
        return plt.subplots(len(part), ncol, squeeze=False, layout="constrained",
                            figsize=(width or min(max(3.3 * ncol, 5.0), 7.5), height * len(part)), **kw)

    def strips(column, xlabel, name):
        for k, part in enumerate(parts, 1):
            fig, axes = grid(part, 0.22 * len(order) + 0.8, width=6.5 if len(fractions) > 1 else 5.5,
                             sharey=True, sharex="row")
            for i, (dataset, size) in enumerate(part):
                for j, fraction in enumerate(fractions):
                    ax = axes[i, j]
                    d = runs[(runs["dataset"] == dataset) & (runs["size"] == size) & (runs["fraction"] == fraction)]
                    sns.stripplot(data=d, x=column, y="arm_label", order=order, hue="arm_label", hue_order=order,
                                  palette=colours, size=5, jitter=0.15, legend=False, ax=ax)
                    sns.pointplot(data=d, x=column, y="arm_label", order=order, color="black", markers="|",
                                  errorbar="sd", linestyle="none", ax=ax)
                    title(ax, dataset, size, fraction)
                    ax.set(xlabel="", ylabel="")
            fig.supxlabel(xlabel, fontsize=9)
            save(fig, f"{name}_{k}")

    metric = v["metric"]
    strips(f"test_{metric}", f"test {res.metric} (each point a seed; black: mean ± sd)", "scores")
    strips("test_ece", "test expected calibration error (lower is better; each point a seed)", "calibration")

    c = res.comparisons
    if len(c):
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
        save(fig, "forest")

    for k, part in enumerate(parts, 1):
        fig, axes = grid(part, 2.5)
        for i, (dataset, size) in enumerate(part):
            for j, fraction in enumerate(fractions):
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
                title(ax, dataset, size, fraction)
        fig.supxlabel("energy per training run (kWh, log scale)", fontsize=9)
        fig.supylabel(f"test {res.metric} (mean ± sd over seeds)", fontsize=9)
        handles = [plt.Line2D([], [], marker="o", ls="none", color=colours[lbl], ms=6, label=lbl) for lbl in order]
        handles.append(plt.Line2D([], [], color="0.3", ls="--", label="Pareto front (outlined points)"))
        fig.legend(handles=handles, loc="outside upper center", ncol=2, fontsize=8, frameon=False)
        save(fig, f"pareto_{k}")

    if len(fractions) > 1 and len(c):
        wrap = min(len(tasks), 3)
        fig, axes = plt.subplots(math.ceil(len(tasks) / wrap), wrap, squeeze=False, sharey=True, layout="constrained",
                                 figsize=(2.4 * wrap, 2.3 * math.ceil(len(tasks) / wrap)))
        for ax, (dataset, size) in zip(axes.flat, tasks):
            ax.axhspan(-v["rope"], v["rope"], color="0.85", zorder=0)
            for arm, d in c[(c["dataset"] == dataset) & (c["size"] == size)].groupby("arm"):
                d, colour = d.sort_values("fraction"), colours[res.labels[arm]]
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
        large = [lbl for lbl in order if lbl in set(c["arm"].map(res.labels))]
        fig.legend(handles=[plt.Line2D([], [], marker="o", color=colours[lbl], label=lbl) for lbl in large],
                   loc="outside upper center", ncol=2, fontsize=8, frameon=False)
        save(fig, "efficiency")
    return out


# --- the sections ----------------------------------------------------------------------------------------------


def verdict_sentence(over: pd.DataFrame, rope: float, metric: str, confidence: float, labels: dict | None = None) -> str:
    """One sentence that the study-level decisions support; its wording follows from them, never fixed."""
    name = metric.upper()
    if over.empty:
        return f"No verdict: the study has no large arm paired with a small arm (same cells and seeds) on {name}."
    several = over["fraction"].nunique() > 1

    def desc(r) -> str:
        where = f" at training fraction {r.fraction:g}" if several else ""
        if math.isnan(r.adj_lo):
            return f"{(labels or {}).get(r.arm, r.arm)}{where} (no interval: no dataset with {stats.MIN_PAIRS} or more pairs)"
        thin = f"; {len(r.thin.split('; '))} thin dataset(s) left out" if r.thin else ""
        return (f"{(labels or {}).get(r.arm, r.arm)}{where} ({r.mean_diff:+.3f} {name} mean over {r.tasks} dataset(s), "
                f"simultaneous CI [{r.adj_lo:+.3f}, {r.adj_hi:+.3f}]{thin})")

    by = {d: over[over["decision"] == d].sort_values("mean_diff", ascending=False) for d in stats.DECISIONS}
    margin = f"more than the practical threshold of ±{rope:g} {name}"
    level = (f"a claim at {confidence:.0%} confidence for the study as a whole (Bonferroni over "
             f"{over['family'].iloc[0]} large arm × fraction summaries)")
    if len(by["better"]):
        others = len(over) - len(by["better"])
        tail = f"; {others} other summary(ies) do not" if others else ""
        return (f"Scale pays: {', '.join(desc(r) for r in by['better'].itertuples())} beat(s) the best small model by "
                f"{margin}{tail}; {level}.")
    # undecided with its interval ending below +rope: not better at the stated level, only worse-or-equivalent is open
    still_open = by["undecided"][~(by["undecided"]["adj_hi"] <= rope)]
    if len(still_open):
        return (f"Not decided yet: no large arm is shown to beat the best small model by {margin}, but "
                f"{', '.join(desc(r) for r in still_open.itertuples())} could still; more seeds are needed.")
    best = over.sort_values("mean_diff", ascending=False).iloc[0]
    if len(by["worse"]) == len(over):
        return (f"Scale does not pay: every large arm is worse than the best small model by {margin}; the closest is "
                f"{desc(best)}; {level}.")
    if best.decision == "undecided":
        return (f"Scale does not pay: no large arm beats the best small model by {margin} (every simultaneous interval "
                f"ends below +{rope:g}); the best large arm is {desc(best)}, whether worse or equivalent to it is not "
                f"decided yet; {level}.")
    return (f"Scale does not pay: no large arm beats the best small model by {margin}; the best large arm is "
            f"{desc(best)}, {best.decision} to it; {level}.")


def listed(items: list[str], most: int = 12) -> str:
    return "; ".join(items[:most]) + (f"; and {len(items) - most} more" if len(items) > most else "")


def flags(res: Results) -> list:
    """What the verdict could not use, said where the verdict is: dropped runs, missing seeds, thin cells."""
    L, out = res.labels, []
    if len(res.dropped):
        out.append(Para(f"Left out: {len(res.dropped)} run(s) with a non-finite score: " + listed(
            [f"{L.get(r.arm, r.arm)} on {cell_name(r)}, fraction {r.fraction:g}, seed {r.seed} ({r.reason})"
             for r in res.dropped.itertuples()]) + "."))
    if len(res.missing):
        out.append(Para("Fewer seeds than designed: " + listed(
            [f"{L.get(r.arm, r.arm)} on {cell_name(r)}, fraction {r.fraction:g}: {r.present} of {r.designed}"
             for r in res.missing.itertuples()]) + "."))
    thin = res.comparisons[res.comparisons["n"] < stats.MIN_PAIRS]
    if len(thin):
        out.append(Para(f"No decision (fewer than {stats.MIN_PAIRS} pairs): " + listed(
            [f"{L[r.arm]} on {cell_name(r)}, fraction {r.fraction:g}: {r.note}" for r in thin.itertuples()]) + "."))
    return out


def summary_section(res: Results) -> list:
    v, c = res.config["verdict"], res.comparisons
    large = [a for a in sorted(res.labels) if a in set(c["arm"])]
    rows = []
    for (dataset, size, fraction), g in c.groupby(stats.CELL, sort=True):
        first = g.dropna(subset=["small_arm"]).head(1)
        partner = "–" if first.empty else f"{res.labels[first.iloc[0].small_arm]}\n{first.iloc[0].small_mean:.3f}"
        row = [f"{dataset} @ {size} px", f"{fraction:g}", partner]
        for arm in large:
            r = g[g["arm"] == arm]
            row.append("–" if r.empty else
                       f"{r.iloc[0].decision}\n{num(r.iloc[0]['diff'], '+.3f')} {ci(r.iloc[0].adj_lo, r.iloc[0].adj_hi, '.3f')}")
        rows.append(row)
    blocks = [
        Heading("Summary"),
        Para(f"Question: {res.config['title']}"),
        Para(f"How it is decided: each large arm is paired by seed with a small arm of the same dataset, image size and "
             f"training fraction (for each seed, the small arm with the highest mean validation {res.metric} on the "
             f"other seeds). The t-interval of the mean paired difference in test {res.metric} decides against a "
             f"region of practical equivalence (ROPE) of ±{v['rope']:g}: better if it lies above +{v['rope']:g}, worse "
             f"if below −{v['rope']:g}, equivalent if inside, undecided otherwise. The intervals that decide are "
             f"simultaneous: all the decisions of a family hold together at {v['confidence']:.0%} confidence "
             f"(see Methods)." + (" Seeds were added in rounds where a comparison was still undecided, and each "
                                  "look used a repeated confidence interval that stays valid under such stopping "
                                  "(see Adaptive seeds)." if res.savings is not None else "")),
        Table(["dataset", "train frac.", "small partner"] + [res.labels[a] for a in large], rows,
              widths=[1.2, 0.6, 1.1] + [1.6] * len(large), size=8 if len(large) < 4 else 6.5,
              caption=f"Verdict per dataset: decision, then mean difference in test {res.metric} with its simultaneous "
                      f"CI (large arm minus small partner; family of {int(c['family'].max()) if len(c) else 0} "
                      f"comparisons)."),
        Para("Overall: " + verdict_sentence(res.overall, v["rope"], v["metric"], v["confidence"], res.labels),
             strong=True),
        *flags(res),
    ]
    total = ledger.study_total(res.runs)
    blocks.append(Para(f"The study's {total['runs']} training runs took {total['train_hours']:.2f} h of training, "
                       f"{total['energy_kwh']:.3g} kWh and {1000 * total['co2e_kg']:.3g} g CO2e (see Costs)."))
    if NOT_PUBLISHED in "".join(res.labels.values()):
        blocks.append(Para(f"{NOT_PUBLISHED} At least one run of this arm used weights that are NOT the published "
                           "pretrained weights (a self-made or local file): its numbers do not stand for the published "
                           "model and must not be cited as such."))
    return blocks + [PageBreak()]


def methods_section(res: Results) -> list:
    cfg, runs = res.config, res.runs
    design, v = cfg["design"], cfg["verdict"]
    arms = design["arms"]
    seeds = study_config.seeds(cfg)
    data_rows = []
    for entry in cfg["data"]["datasets"]:
        for size in entry["sizes"]:
            r = runs[(runs["dataset"] == entry["flag"]) & (runs["size"] == size)]
            full = r.loc[r["fraction"] == r["fraction"].max(), "n_train"] if len(r) else pd.Series(dtype=float)
            data_rows.append([entry["flag"], f"{size} px", r["task"].iloc[0] if len(r) else "–",
                              num(full.max() if len(full) else math.nan, ".0f")])
    arm_rows = []
    for name in arms:
        a = cfg["arms"][name]
        weights = (f"pretrained ({a['weights_tag'] or 'timm default'})" if a["pretrained"] else "scratch") + (
            f", file {a['weights_file']}" if a.get("weights_file") else "")
        arm_rows.append([f"{name}\n{res.labels.get(name, a.get('label') or name)}", a["group"], a["model"], weights,
                         a["train"], str(a["input_size"] or "data size"), a["recipe"], a.get("reproduces") or "–"])
    recipe_rows = []
    for name in sorted({cfg["arms"][a]["recipe"] for a in arms}):
        r = cfg["recipes"][name]
        sched = r["scheduler"] + (f" at {r['milestones']} ×{r['gamma']}" if r["scheduler"] == "multistep" else "")
        recipe_rows.append([name, r["optimizer"], f"{r['lr']:g}", f"{r['weight_decay']:g}", r["batch_size"], r["epochs"],
                            sched, r["resize"], r["normalize"], r["augment"], r["select"],
                            r.get("early_stop_patience") or "–"])
    hw = cfg["hardware"]
    devices = ", ".join(f"{d}: {h} ({n} runs)" for (d, h), n in runs.groupby(["device", "hardware"]).size().items())
    return [
        Heading("Methods"),
        Para(f"Generated from the resolved configuration of study {cfg['study']}. Design: {len(arms)} arms × "
             f"{sum(len(d['sizes']) for d in cfg['data']['datasets'])} dataset(s) × {len(design['fractions'])} training "
             f"fraction(s) ({', '.join(f'{f:g}' for f in design['fractions'])}; stratified, seeded subsets of the training "
             f"split) × {seeds_text(cfg, seeds)}; the seed drives initialisation, subsampling, "
             f"shuffling and augmentation. {len(runs)} runs are in the run table. The study design, the metric "
             f"conventions and the sources of the published numbers: docs/study.md of the scaleaudit repository."),
        Table(["dataset", "image size", "task", "training images (largest fraction)"], data_rows,
              widths=[1.5, 1, 1, 1.5], caption="Datasets (MedMNIST 2D; official train / validation / test splits)."),
        Table(["arm", "group", "timm model", "weights", "training", "input size", "recipe", "reproduces"], arm_rows,
              widths=[2.2, 0.8, 2.2, 1.8, 1.1, 0.9, 1.3, 1.8], size=7.5, caption="Arms (model recipes)."),
        Table(["recipe", "optimizer", "lr", "weight decay", "batch", "epochs", "schedule", "resize", "normalise",
               "augment", "select on", "early stop"], recipe_rows,
              widths=[1.5, 1, 0.8, 0.8, 0.7, 0.7, 1.6, 0.9, 1, 0.9, 0.9, 0.7], size=7,
              caption="Training recipes; the weights of the epoch best on `select on` are tested once."),
        Para(f"Hardware: device setting {hw['device']}; runs ran on {devices}. Energy is measured per run "
             f"({'; '.join(runs['energy_method'].unique())}); CO2e uses the grid intensity of {hw['country_iso_code']}."),
        *statistics_paras(res),
    ]


def seeds_text(cfg: dict, seeds: list[int]) -> str:
    s = adaptive.settings(cfg)
    if not s:
        return f"{len(seeds)} seeds ({', '.join(map(str, seeds))})"
    return (f"adaptive seeds (seeds 1–{s['initial']} in round 1, then {s['step']} more per round for each comparison "
            f"still undecided, at most {s['max']}: rounds at {', '.join(map(str, adaptive.looks(s)))} seeds)")


def sequential_paras(res: Results) -> list:
    """Methods of adaptive seeds: the procedure, named and cited, and its calibration (calibration.json)."""
    s = adaptive.settings(res.config)
    if not s:
        return []
    spending = {"pocock": "Pocock-type spending α·ln(1 + (e − 1)·t)",
                "obrien_fleming": "O'Brien–Fleming-type spending (α/2 per side spent as 2 − 2Φ(z(1 − α/4)/√t))"}
    seq = calibration.measured().get("sequential")
    text = [Para(
        f"Adaptive seeds. Round 1 trains seeds 1–{s['initial']} of every run; after each round every comparison (a "
        f"cell and one large arm) is judged on the runs of the rounds so far, and each one still undecided gets the "
        f"next {s['step']} seed(s) for its large arm and for every small arm of its cell (pairs stay complete), "
        f"until it is decided or has {s['max']} seeds. A comparison keeps the first decision it reaches, and a "
        f"decided comparison gets no more runs. Because the data choose when to stop, each look uses a repeated "
        f"confidence interval (Jennison & Turnbull, J. R. Stat. Soc. B 51:305–361, 1989): a group-sequential "
        f"boundary with Lan–DeMets alpha spending (Biometrika 70:659–663, 1983), {spending[s['spending']]} over the "
        f"planned looks at {', '.join(map(str, adaptive.looks(s)))} seeds (information fraction t = n / {s['max']}), "
        f"critical values by recursive numerical integration and t quantiles at each look's nominal level (Jennison "
        f"& Turnbull, Group Sequential Methods, 2000). All looks hold together: with the Bonferroni share α/m of a "
        f"family spent over the looks of each comparison, every decision of the family holds at the stated "
        f"confidence whenever it was made. The intervals shown are those of the round at which a comparison was "
        f"decided (or of its last round). The study-level summaries across datasets use round 1 only, the seeds "
        f"every cell ran whatever the data: later rounds were chosen by the data and serve only their own cell.")]
    if seq:
        rows = {(r["method"], r["noise"], r["true_diff"]): r for r in seq["rows"] if "family" not in r}
        edge = [r for k, r in rows.items() if k[0] == "repeated" and abs(k[2] - 0.01) < 1e-9]
        fixed = [r for k, r in rows.items() if k[0] == "fixed_rechecked" and abs(k[2] - 0.01) < 1e-9]
        expected = [f"{r['mean_seeds']:.1f} at {r['true_diff']:+g}" for k, r in sorted(rows.items())
                    if k[0] == "repeated" and k[1] == "normal" and r["true_diff"] in calibration.ADAPTIVE_GAINS]
        q = seq["seeds"]
        text.append(Para(
            f"Calibration of adaptive seeds (benchmarks/calibrate_stats.py; rounds of {q['initial']}, +{q['step']}, "
            f"up to {q['max']} seeds, {q['spending']} spending, sd {calibration.SEED_SD:g} per paired difference, "
            f"normal and t4 noise): with the truth on the ROPE edge a comparison was called better in at most "
            f"{max(r['better'] for r in edge):.1%} (nominal 2.5%; the t quantiles at each look's nominal level are "
            f"slightly liberal with 2 degrees of freedom at the first look), and the interval at stopping covered the truth in "
            f"at least {min(r['coverage'] for r in rows.values() if r['method'] == 'repeated'):.1%}; the fixed-n "
            f"interval re-checked each round would have said better in up to {max(r['better'] for r in fixed):.1%} "
            f"and covered in {min(r['coverage'] for r in fixed):.1%}. Expected seeds per comparison: "
            + ", ".join(expected) + " AUC true gain (normal noise)."))
    return text


def adaptive_section(res: Results) -> list:
    """Per comparison the rounds, seeds and when it was decided; the compute saved against max seeds everywhere."""
    if res.savings is None:
        return []
    L, c, s = res.labels, res.comparisons, adaptive.settings(res.config)
    rows = [[cell_name(r), f"{r.fraction:g}", L[r.arm], r.rounds, r.n, r.decision,
             "–" if r.decided_round is pd.NA else f"round {r.decided_round} ({r.n} pairs)",
             {"decided": "decided", "max": f"max ({s['max']})"}.get(r.stopped, "still running")]
            for r in c.itertuples()]
    t = adaptive.summary(res.savings)
    unit = t["hours_column"].replace("_hours", "-hours")
    saved_rows = [[cell_name(r), f"{r.fraction:g}", L[r.arm], r.rounds, f"{r.seeds} of {r.max}", r.saved_seeds,
                   num(r.hours, ".3g"), num(r.saved_hours, ".3g")] for r in res.savings.itertuples()]
    return [
        Heading("Adaptive seeds", 2),
        Table(["dataset", "fraction", "large arm", "rounds", "pairs", "decision", "decided at", "stopped"], rows,
              widths=[1.4, 0.6, 1.8, 0.6, 0.6, 0.9, 1.4, 1], size=7.5,
              caption="Each comparison: the rounds it ran, its pairs, its decision and the round it was reached."),
        Table(["dataset", "fraction", "arm", "rounds", "seeds", "seeds saved", unit, f"{unit} saved"], saved_rows,
              widths=[1.4, 0.6, 1.8, 0.6, 0.8, 0.8, 0.8, 0.9], size=7.5,
              caption=f"Seeds per cell and arm against running {s['max']} seeds everywhere; the {unit} saved are "
                      "priced at the arm's mean per run in that cell."),
        Para(f"Compute saved against {s['max']} seeds everywhere: {t['runs']} of {t['runs_at_max']} runs trained "
             f"({t['runs_saved']} saved), {t['hours']:.3g} of an estimated {t['hours_at_max']:.3g} {unit} "
             f"({t['hours_saved']:.3g} saved, {num(100 * t['share_saved'], '.0f')} %)."),
    ]


def calibration_text(confidence: float) -> str:
    """What the simulation of benchmarks/calibrate_stats.py measured (calibration.json), in one sentence."""
    cal = calibration.measured()
    cell, tasks, study = cal["cell"], cal["tasks"], cal["study"]

    def span(rows, key):
        return f"{min(r[key] for r in rows):.1%}–{max(r[key] for r in rows):.1%}"

    power = {r["seeds"]: r["power_0.05"] for r in cell if r["noise"] == "normal"}
    text = (f"Calibration, measured by simulation (benchmarks/calibrate_stats.py: {cal['replicates']} simulated studies "
            f"per setting; paired differences of sd {cal['seed_sd']:g} with normal or heavy-tailed (t, 4 df) noise; "
            f"{', '.join(str(n) for n in sorted(power))} seeds): the per-cell {cal['confidence']:.0%} intervals covered "
            f"the planted difference in {span(cell, 'coverage')} of the studies; a true difference exactly on a ROPE "
            f"edge (±{cal['rope']:g}) was called better or worse in at most "
            f"{max(max(r['false_better'], r['false_worse']) for r in cell):.1%} (nominal {(1 - cal['confidence']) / 2:.1%}); "
            f"across {tasks[0]['tasks']} tasks of unequal noise the summary interval covered the mean in "
            f"{span(tasks, 'coverage')}; with {study[0]['arms']} large arms all on the ROPE edge a study said "
            f"\"Scale pays\" in at most {max(r['false_scale_pays'] for r in study):.1%} (nominal at most "
            f"{1 - cal['confidence']:.0%}). One cell (family of one) detects a true gain of +0.05 with probability "
            + ", ".join(f"{p:.0%} at {n} seeds" for n, p in sorted(power.items())) + " (normal noise).")
    if abs(confidence - cal["confidence"]) > 1e-9:
        text += f" These figures are for {cal['confidence']:.0%}; this study uses {confidence:.0%}."
    return text


def statistics_paras(res: Results) -> list:
    v, c, over = res.config["verdict"], res.comparisons, res.overall
    alpha = 1 - v["confidence"]
    cells, summaries = families(res.config)
    m_cells = int(c["family"].max()) if len(c) else cells
    m_summaries = int(over["family"].max()) if len(over) else summaries
    return [
        Para(f"Statistics (scaleaudit.stats). Pairing: each large-arm run is paired with the run of the same seed of a "
             f"small arm of its cell; for each seed that small arm is the one with the highest mean validation "
             f"{res.metric} over the cell's other seeds (leave one seed out), so the seed whose test scores are compared "
             f"plays no part in choosing its partner. Per cell: the mean paired difference in test {res.metric} with its "
             f"two-sided t-interval (n − 1 degrees of freedom). Across datasets (a task is a dataset at one image "
             f"size; one summary per large arm and training fraction): the mean of the task mean differences with a "
             f"t-interval from the per-task variances (Welch–Satterthwaite degrees of freedom); the interquartile mean "
             f"(IQM) of all paired differences (Agarwal et al., NeurIPS 2021) stands beside it as a robust description, "
             f"without an interval. Tasks with fewer than {stats.MIN_PAIRS} pairs are left out of the summary and "
             f"named; no cell is decided on fewer than {stats.MIN_PAIRS} pairs. Probability of improvement: the share "
             f"of seeds on which the large arm beat its partner (ties count half), averaged over tasks across datasets."),
        Para(f"Decisions: an interval above +{v['rope']:g} is better, below −{v['rope']:g} worse, inside the ROPE "
             f"equivalent (the equivalence test is the whole 1 − α interval inside the ROPE, i.e. two one-sided tests "
             f"at α/2 each), otherwise undecided. Multiplicity (Bonferroni): the per-cell comparisons form one family "
             f"(m = {m_cells}: datasets × sizes × fractions × large arms of the design), the study-level summaries "
             f"another (m = {m_summaries}: large arms × fractions). Every decision of a family is made from its "
             f"simultaneous interval at confidence 1 − α/m ({1 - alpha / max(m_cells, 1):.4%} per cell, "
             f"{1 - alpha / max(m_summaries, 1):.4%} per summary here; α = {alpha:.2g}), so the chance that any better, "
             f"worse or equivalent claim of a family is false is at most α. The overall sentence (\"Scale pays\" or "
             f"not) is made from the study-level family only, so it is a claim at {v['confidence']:.0%} for the study "
             f"as a whole. Undecided cells get the seeds that would likely decide them: the smallest n whose "
             f"t-interval half-width t(n − 1)·sd/√n at the simultaneous level falls below the distance from the "
             f"observed mean difference to the nearest ROPE edge, assuming mean and sd stay as observed. The intervals "
             f"are closed-form, without resampling, so a cell's result depends only on its own runs and the size of "
             f"its family. Runs with a "
             f"non-finite score are left out and listed; a run that appears twice in the run table stops the report. "
             f"Metric: test {res.metric} (MedMNIST conventions); ROPE ±{v['rope']:g}."),
        Para(calibration_text(v["confidence"])),
        *sequential_paras(res),
    ]


def figure_blocks(paths: list[Path], caption: str) -> list:
    """One figure block per part, numbered when a figure was split (see DATASETS_PER_FIGURE)."""
    return [Figure(p, caption + (f" (part {k} of {len(paths)})" if len(paths) > 1 else ""))
            for k, p in enumerate(paths, 1)]


def results_section(res: Results, figs: dict[str, list[Path]]) -> list:
    v, c = res.config["verdict"], res.comparisons
    L = res.labels
    summary_rows = [[cell_name(r), f"{r.fraction:g}", L[r.arm], r.n, f"{r.score_mean:.3f} ± {num(r.score_sd)}",
                     num(r.acc_mean), num(r.ece_mean)] for r in res.summary.itertuples()]
    comp_rows = [[cell_name(r), f"{r.fraction:g}", L[r.arm], partner(r, L), r.n, num(r.diff, "+.3f"), ci(r.lo, r.hi),
                  ci(r.adj_lo, r.adj_hi), num(r.p_improve, ".2f"), r.decision,
                  "–" if r.seeds_needed is pd.NA else f"≈{r.seeds_needed}"] for r in c.itertuples()]
    over_rows = [[L[r.arm], f"{r.fraction:g}", r.tasks, r.pairs, num(r.mean_diff, "+.3f"), num(r.iqm_diff, "+.3f"),
                  ci(r.lo, r.hi), ci(r.adj_lo, r.adj_hi), num(r.p_improve, ".2f"), r.decision]
                 for r in res.overall.itertuples()]
    thin = [f"{L[r.arm]}, fraction {r.fraction:g}: {r.thin}" for r in res.overall.itertuples() if r.thin]
    score_rows = [[L[r.arm], r.group, f"{r.fraction:g}", r.tasks, num(r.iqm), num(r.mean), ci(r.lo, r.hi, ".3f")]
                  for r in res.scores.itertuples()]
    hours = "accelerator-hour" if c.empty or c["hours"].iloc[0] == "accelerator_hours" else "device-hour"
    cost_rows = [[cell_name(r), f"{r.fraction:g}", L[r.arm], f"{r.diff:+.3f}", num(r.extra_kwh, ".3g"),
                  num(r.energy_ratio, ".3g") + "×", num(r.gain_per_kwh, ".3g"), num(r.extra_hours, ".3g"),
                  num(r.gain_per_hour, ".3g")] for r in c.itertuples()]
    blocks = [
        Heading("Results"),
        Heading("Scores per dataset", 2),
        *figure_blocks(figs["scores"], f"Test {res.metric} of every run, per dataset (each point one seed; black bar: mean ± sd)."),
        Table(["dataset", "fraction", "arm", "seeds", f"test {res.metric} (mean ± sd)", "test ACC", "test ECE"],
              summary_rows, widths=[1.5, 0.7, 2.2, 0.6, 1.5, 0.8, 0.8], size=8, caption="Test metrics per arm."),
        Heading("Paired differences", 2),
    ]
    if "forest" in figs:
        blocks += figure_blocks(figs["forest"], f"Forest plot: mean paired difference to the small partner; thick: "
                                              f"{v['confidence']:.0%} t-interval, thin: simultaneous interval that decides; "
                                              "grey band: ROPE.")
    blocks += [
        Table(["dataset", "frac.", "large arm", "small partner", "pairs", f"Δ {res.metric}", f"{v['confidence']:.0%} CI",
               "simultaneous CI", "P(impr.)", "decision", "seeds needed"], comp_rows,
              widths=[1.3, 0.5, 1.6, 1.6, 0.5, 0.7, 1.4, 1.4, 0.6, 0.9, 0.7], size=7,
              caption=f"Each large arm against its small partner, paired by seed; the simultaneous CI (confidence "
                      f"1 − α/m, m = {int(c['family'].max()) if len(c) else 0}) decides."),
        Heading("Across datasets", 2),
        Table(["large arm", "fraction", "datasets", "pairs", f"mean Δ {res.metric}", "IQM Δ", f"{v['confidence']:.0%} CI",
               "simultaneous CI", "P(improve)", "decision"], over_rows,
              widths=[1.8, 0.7, 0.7, 0.6, 0.8, 0.7, 1.4, 1.4, 0.8, 0.9], size=7.5,
              caption="Per large arm and training fraction, across datasets (each dataset at one image size a task): "
                      "mean of the task mean differences with its t-interval; the simultaneous CI decides."),
        *([Para("Thin datasets left out of the summary (fewer than "
                f"{stats.MIN_PAIRS} pairs): " + listed(thin) + ".")] if thin else []),
        Table(["arm", "group", "fraction", "datasets", f"IQM test {res.metric}", "mean", f"{v['confidence']:.0%} CI"],
              score_rows, widths=[2.2, 0.7, 0.7, 0.7, 1, 0.8, 1.4], size=8,
              caption="Test score of each arm across datasets: interquartile mean of all runs, mean of the dataset "
                      "means with its t-interval."),
        Heading("Performance against cost", 2),
        *figure_blocks(figs["pareto"], f"Test {res.metric} against training energy per run (log scale); dashed: the "
                                       "Pareto front (no other arm is both cheaper and better)."),
        Table(["dataset", "fraction", "large arm", f"Δ {res.metric}", "extra kWh", "energy ×", "Δ per extra kWh",
               f"extra {hours}s", f"Δ per extra {hours}"], cost_rows,
              widths=[1.4, 0.6, 1.8, 0.7, 0.8, 0.7, 0.9, 0.8, 0.9], size=7.5,
              caption="Cost-normalised gain against the best small arm (per-run means); – where the large arm costs no more."),
    ]
    if hours == "device-hour":
        blocks.append(Para("No run used an accelerator (accelerator-hours are 0), so the time cost is given in "
                           "device-hours (wall-clock hours on the CPU) instead."))
    blocks += adaptive_section(res)
    blocks.append(Heading("Data efficiency", 2))
    if "efficiency" in figs:
        eff = data_efficiency(c)
        fracs = [col for col in eff.columns if isinstance(col, float)]
        blocks += [
            *figure_blocks(figs["efficiency"], f"Gain over the best small arm against the training fraction (band: "
                                       f"{v['confidence']:.0%} CI; grey: ROPE)."),
            Table(["dataset", "large arm"] + [f"Δ at {f:g}" for f in fracs],
                  [[f"{r['dataset']} @ {r['size']} px", L[r["arm"]]] + [num(r[f], "+.3f") for f in fracs]
                   for _, r in eff.iterrows()], size=8, caption="Mean paired gain per training fraction."),
        ]
    else:
        only = ", ".join(f"{f:g}" for f in sorted(res.runs["fraction"].unique()))
        blocks.append(Para(f"One fraction only ({only}): the gain as a function of training-set size needs several "
                           "values under design.fractions (e.g. 0.1, 0.3, 1.0)."))
    blocks += [
        Heading("Calibration", 2),
        *figure_blocks(figs["calibration"], "Expected calibration error on the test split (15 bins; each point one seed)."),
    ]
    return blocks


def reproduction_section(res: Results) -> list:
    rep = res.reproduction
    blocks = [Heading("Reproduction check")]
    if rep.empty:
        return blocks + [Para("No arm of this study names a published result (arm key `reproduces:`) for the "
                              "datasets and sizes it ran, so nothing is compared with the literature.")]
    rows = [[res.labels[r.arm], f"{r.dataset} @ {r.size} px", f"{r.paper}\n{r.reference}", r.n,
             f"{r.auc:.3f} ± {num(r.auc_sd)}", f"{r.pub_auc:.3f}", f"{r.auc_diff:+.3f}",
             f"{r.acc:.3f} ± {num(r.acc_sd)}", f"{r.pub_acc:.3f}", f"{r.acc_diff:+.3f}",
             "–" if r.within is None else ("yes" if r.within else "no")] for r in rep.itertuples()]
    blocks.append(Table(["arm", "dataset", "published (id)", "seeds", "AUC here", "AUC paper", "Δ AUC", "ACC here",
                         "ACC paper", "Δ ACC", "within spread"], rows,
                        widths=[1.5, 1.2, 2.6, 0.5, 1.1, 0.7, 0.7, 1.1, 0.7, 0.7, 0.7], size=7,
                        caption="Reproduced test metrics (full training set, mean ± sd over seeds) beside the published "
                                "ones; within spread: the published AUC lies within 2 sd of the reproduced mean."))
    differs = rep[rep["recipe"] != rep["protocol"]]
    for r in differs.drop_duplicates(["arm", "recipe"]).itertuples():
        blocks.append(Para(f"{res.labels[r.arm]} was trained with recipe {r.recipe}, not the published protocol "
                           f"{r.protocol}: the comparison shows how far this recipe is from the paper, not a failed "
                           "reproduction of it."))
    return blocks


def costs_section(res: Results, estimate: dict | None = None) -> list:
    s, L = res.summary, res.labels
    hours = ledger.hours_column(res.runs).replace("_", "-").replace("hours", "h")
    rows = [[cell_name(r), f"{r.fraction:g}", L[r.arm], f"{r.params / 1e6:.2f}", f"{r.flops / 1e9:.3g}",
             f"{r.train_seconds:.0f}", f"{r.hours:.3g}", f"{r.peak_mem_mb:.0f}", f"{r.energy_kwh:.3g}",
             f"{1000 * r.co2e_kg:.3g}"] for r in s.itertuples()]
    t = ledger.study_total(res.runs)
    return [
        Heading("Costs"),
        Table(["dataset", "fraction", "arm", "params (M)", "GFLOPs / image", "train s / run", f"{hours} / run",
               "peak MB", "kWh / run", "g CO2e / run"], rows,
              widths=[1.4, 0.6, 2, 0.7, 0.8, 0.8, 0.8, 0.7, 0.8, 0.8], size=7.5,
              caption="Cost per arm (means over seeds; peak memory: the maximum; FLOPs: one forward pass)."),
        Para(f"Total spent by the study's training runs: {t['runs']} runs, {t['train_hours']:.3g} h training time, "
             f"{t['device_hours']:.3g} device-hours, {t['accelerator_hours']:.3g} accelerator-hours, "
             f"{t['energy_kwh']:.3g} kWh, {1000 * t['co2e_kg']:.3g} g CO2e (data download and this report not included)."),
    ] + ([Para(plan.versus_measured(estimate, t))] if estimate else [])


def appendix_section(res: Results) -> list:
    runs, L = res.runs, res.labels
    versions = runs.groupby(["torch_version", "timm_version"]).size()
    commits = runs.groupby(["code_commit", "code_dirty"]).size()
    data = runs.drop_duplicates(["dataset", "size"])
    weights = runs.drop_duplicates("arm")
    report_env = provenance.package_versions()
    run_rows = [[L[r.arm], cell_name(r), f"{r.fraction:g}", r.seed, f"{getattr(r, 'test_' + res.config['verdict']['metric']):.3f}",
                 r.config_hash, r.mlflow_run_id or "–"] for r in runs.sort_values(["dataset", "size", "arm", "fraction", "seed"]).itertuples()]
    return [
        PageBreak(),
        Heading("Appendix: provenance"),
        Table(["torch", "timm", "runs"], [[t, m, n] for (t, m), n in versions.items()], widths=[1, 1, 1], size=8,
              caption="Software versions the runs were trained with."),
        Para("Report rendered with: " + ", ".join(f"{k} {v}" for k, v in report_env.items()) + "."),
        Table(["code commit", "uncommitted changes", "runs"], [[c, str(d), n] for (c, d), n in commits.items()],
              widths=[3, 1, 0.6], size=8, caption="Code the runs were trained with."),
        Table(["dataset", "data SHA-256"], [[cell_name(r), r.data_sha256] for r in data.itertuples()],
              widths=[1, None], size=7.5, caption="Checksums of the data files."),
        Table(["arm", "weights", "published", "weights SHA-256"],
              [[L[r.arm], r.weights_source, "yes" if r.weights_published else f"NO {NOT_PUBLISHED}", r.weights_sha256 or "–"]
               for r in weights.itertuples()], widths=[1.2, 1.6, 0.6, None], size=6.5, caption="Model weights."),
        Table(["arm", "dataset", "fraction", "seed", f"test {res.metric}", "config hash", "MLflow run id"], run_rows,
              widths=[1.8, 1.4, 0.6, 0.4, 0.6, None, None], size=7, caption="Every run."),
    ]


def document(res: Results, figs: dict[str, Path], estimate: dict | None = None) -> Document:
    code = provenance.code_version()
    doc = Document(res.config["title"],
                   f"study {res.config['study']}: {len(res.runs)} runs; report code {code['commit'][:12]}")
    doc.blocks = (summary_section(res) + methods_section(res) + results_section(res, figs) + reproduction_section(res)
                  + costs_section(res, estimate) + appendix_section(res))
    return doc


def build(runs_csv: str | os.PathLike, config_json: str | os.PathLike, out_pdf: str | os.PathLike,
          assets: str | os.PathLike | None = None) -> None:
    """Write the PDF and, next to it, the same report as Markdown (``.md``); figures go to ``assets``."""
    import typst

    # hashes and ids stay text (an all-digit hash is no number); an empty cell means none
    runs = pd.read_csv(runs_csv, dtype=dict.fromkeys(TEXT_COLUMNS, str))
    runs[TEXT_COLUMNS] = runs[TEXT_COLUMNS].fillna("")
    config = read_json(config_json)
    out_pdf = Path(out_pdf)
    assets = Path(assets) if assets else out_pdf.with_suffix("")
    assets.mkdir(parents=True, exist_ok=True)
    res = Results.of(runs, config)
    # the cost estimate `scaleaudit plan` wrote before the study started, if it was of this study
    plan_file = Path(runs_csv).parent / plan.PLAN_FILE
    estimate = read_json(plan_file) if plan_file.exists() else None
    doc = document(res, figures(res, assets), estimate if estimate and estimate["study"] == config["study"] else None)
    source = assets / "report.typ"
    write_text(source, to_typst(doc))
    with atomic_path(out_pdf) as tmp:
        typst.compile(str(source), output=str(tmp), root=str(assets), format="pdf")
    md = out_pdf.with_suffix(".md")
    write_text(md, to_markdown(doc, md.parent))
