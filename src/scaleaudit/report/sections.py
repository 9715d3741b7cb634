"""The report's sections, one function each, in reading order in ``document``; their prose is in
``templates/<section>.j2`` (see ``prose``), their numbers come from ``Results``."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .. import calibration, design, fidelity, ledger, metrics, provenance, scaling, shift, stats, testsample, verify
from .document import Document, Figure, Heading, PageBreak, Para, Table
from .prose import text
from .results import NOT_PUBLISHED, Results, cell_name, ci, listed, num, partner


def verdict_sentence(
    over: pd.DataFrame, rope: float, metric: str, confidence: float, labels: dict | None = None
) -> str:
    """One sentence that the study-level decisions support; its wording follows from them, never fixed."""
    name = metric.upper()
    if over.empty:
        return text("verdict", "no_verdict", name=name)
    several = over["fraction"].nunique() > 1

    def desc(r) -> str:
        arm, where = (labels or {}).get(r.arm, r.arm), f" at training fraction {r.fraction:g}" if several else ""
        if math.isnan(r.adj_lo):
            return text("verdict", "arm_without_interval", arm=arm, where=where, r=r, min_pairs=stats.MIN_PAIRS)
        return text(
            "verdict",
            "arm_with_interval",
            arm=arm,
            where=where,
            r=r,
            name=name,
            thin=len(r.thin.split("; ")) if r.thin else 0,
        )

    by = {d: over[over["decision"] == d].sort_values("mean_diff", ascending=False) for d in stats.DECISIONS}
    margin = text("verdict", "margin", rope=rope, name=name)
    level = text("verdict", "level", confidence=confidence, family=over["family"].iloc[0])
    if len(by["better"]):
        return text(
            "verdict",
            "pays",
            better=", ".join(desc(r) for r in by["better"].itertuples()),
            margin=margin,
            others=len(over) - len(by["better"]),
            level=level,
        )
    # undecided with its interval ending below +rope: not better at the stated level, only worse-or-equivalent is open
    still_open = by["undecided"][~(by["undecided"]["adj_hi"] <= rope)]
    if len(still_open):
        return text(
            "verdict",
            "not_decided",
            margin=margin,
            still_open=", ".join(desc(r) for r in still_open.itertuples()),
            few_datasets=bool(still_open["adj_lo"].isna().any()),
        )
    best = over.sort_values("mean_diff", ascending=False).iloc[0]
    if len(by["worse"]) == len(over):
        return text("verdict", "all_worse", margin=margin, best=desc(best), level=level)
    if best.decision == "undecided":
        return text("verdict", "best_undecided", margin=margin, rope=rope, best=desc(best), level=level)
    return text("verdict", "best_decided", margin=margin, best=desc(best), decision=best.decision, level=level)


def flags(res: Results) -> list:
    """What the verdict could not use, said where the verdict is: dropped runs, missing seeds, thin cells."""
    L, out = res.labels, []
    if len(res.dropped):
        out.append(
            Para(
                text(
                    "summary",
                    "left_out",
                    n=len(res.dropped),
                    runs=listed(
                        [
                            f"{L.get(r.arm, r.arm)} on {cell_name(r)}, fraction {r.fraction:g}, seed {r.seed} ({r.reason})"
                            for r in res.dropped.itertuples()
                        ]
                    ),
                )
            )
        )
    if len(res.missing):
        out.append(
            Para(
                text(
                    "summary",
                    "fewer_seeds",
                    cells=listed(
                        [
                            f"{L.get(r.arm, r.arm)} on {cell_name(r)}, fraction {r.fraction:g}: {r.present} of {r.designed}"
                            for r in res.missing.itertuples()
                        ]
                    ),
                )
            )
        )
    thin = res.comparisons[res.comparisons["n"] < stats.MIN_PAIRS]
    if len(thin):
        out.append(
            Para(
                text(
                    "summary",
                    "no_decision",
                    min_pairs=stats.MIN_PAIRS,
                    cells=listed(
                        [f"{L[r.arm]} on {cell_name(r)}, fraction {r.fraction:g}: {r.note}" for r in thin.itertuples()]
                    ),
                )
            )
        )
    return out


def summary_section(res: Results) -> list:
    v, c = res.config["verdict"], res.comparisons
    large = [a for a in sorted(res.labels) if a in set(c["arm"])]
    rows = []
    for (dataset, size, fraction), g in c.groupby(design.CELL, sort=True):
        first = g.dropna(subset=["small_arm"]).head(1)
        partner = "–" if first.empty else f"{res.labels[first.iloc[0].small_arm]}\n{first.iloc[0].small_mean:.3f}"
        row = [f"{dataset} @ {size} px", f"{fraction:g}", partner]
        for arm in large:
            r = g[g["arm"] == arm]
            row.append(
                "–"
                if r.empty
                else f"{r.iloc[0].decision}\n{num(r.iloc[0]['diff'], '+.3f')} {ci(r.iloc[0].adj_lo, r.iloc[0].adj_hi, '.3f')}"
            )
        rows.append(row)
    blocks = [
        Heading("Summary"),
        Para(text("summary", "question", title=res.config["title"])),
        Para(
            text(
                "summary",
                "how_decided",
                metric=res.metric,
                rope=v["rope"],
                confidence=v["confidence"],
                adaptive=design.is_adaptive(res.config),
            )
        ),
        Table(
            ["dataset", "train frac.", "small partner"] + [res.labels[a] for a in large],
            rows,
            widths=[1.2, 0.6, 1.1] + [1.6] * len(large),
            size=8 if len(large) < 4 else 6.5,
            caption=text(
                "summary", "verdict_caption", metric=res.metric, family=int(c["family"].max()) if len(c) else 0
            ),
        ),
        Para(
            text(
                "summary",
                "overall",
                sentence=verdict_sentence(res.overall, v["rope"], v["metric"], v["confidence"], res.labels),
            ),
            strong=True,
        ),
        *flags(res),
        Para(text("summary", "total", t=res.total)),
    ]
    if NOT_PUBLISHED in "".join(res.labels.values()):
        blocks.append(Para(text("summary", "not_published", mark=NOT_PUBLISHED)))
    return blocks + [PageBreak()]


def methods_section(res: Results) -> list:
    cfg, runs = res.config, res.runs
    design = cfg["design"]
    arms = design["arms"]
    data_rows = []
    for entry in cfg["data"]["datasets"]:
        for size in entry["sizes"]:
            r = runs[(runs["dataset"] == entry["flag"]) & (runs["size"] == size)]
            full = r.loc[r["fraction"] == r["fraction"].max(), "n_train"] if len(r) else pd.Series(dtype=float)
            data_rows.append(
                [
                    entry["flag"],
                    f"{size} px",
                    r["task"].iloc[0] if len(r) else "–",
                    num(full.max() if len(full) else math.nan, ".0f"),
                ]
            )
    arm_rows = []
    for name in arms:
        a = cfg["arms"][name]
        weights = (f"pretrained ({a['weights_tag'] or 'timm default'})" if a["pretrained"] else "scratch") + (
            f", file {a['weights_file']}" if a.get("weights_file") else ""
        )
        arm_rows.append(
            [
                f"{name}\n{res.labels.get(name, a.get('label') or name)}",
                a["group"],
                a["model"],
                weights,
                a["train"],
                str(a["input_size"] or "data size"),
                a["recipe"],
                a.get("reproduces") or "–",
            ]
        )
    recipe_rows = []
    for name in sorted({cfg["arms"][a]["recipe"] for a in arms}):
        r = cfg["recipes"][name]
        sched = r["scheduler"] + (f" at {r['milestones']} ×{r['gamma']}" if r["scheduler"] == "multistep" else "")
        recipe_rows.append(
            [
                name,
                r["optimizer"],
                f"{r['lr']:g}",
                f"{r['weight_decay']:g}",
                r["batch_size"],
                r["epochs"],
                sched,
                r["resize"],
                r["normalize"],
                r["augment"],
                r["select"],
                r.get("early_stop_patience") or "–",
            ]
        )
    hw = cfg["hardware"]
    devices = ", ".join(f"{d}: {h} ({n} runs)" for (d, h), n in runs.groupby(["device", "hardware"]).size().items())
    return [
        Heading("Methods"),
        Para(
            text(
                "methods",
                "design",
                study=cfg["study"],
                arms=len(arms),
                tasks=sum(len(d["sizes"]) for d in cfg["data"]["datasets"]),
                fractions=design["fractions"],
                seeds=seeds_text(cfg),
                runs=len(runs),
            )
        ),
        Table(
            ["dataset", "image size", "task", "training images (largest fraction)"],
            data_rows,
            widths=[1.5, 1, 1, 1.5],
            caption=text("methods", "datasets_caption"),
        ),
        Table(
            ["arm", "group", "timm model", "weights", "training", "input size", "recipe", "reproduces"],
            arm_rows,
            widths=[2.2, 0.8, 2.2, 1.8, 1.1, 0.9, 1.3, 1.8],
            size=7.5,
            caption=text("methods", "arms_caption"),
        ),
        Table(
            [
                "recipe",
                "optimizer",
                "lr",
                "weight decay",
                "batch",
                "epochs",
                "schedule",
                "resize",
                "normalise",
                "augment",
                "select on",
                "early stop",
            ],
            recipe_rows,
            widths=[1.5, 1, 0.8, 0.8, 0.7, 0.7, 1.6, 0.9, 1, 0.9, 0.9, 0.7],
            size=7,
            caption=text("methods", "recipes_caption"),
        ),
        Para(
            text(
                "methods",
                "hardware",
                device=hw["device"],
                devices=devices,
                energy_methods=runs["energy_method"].unique(),
                country=hw["country_iso_code"],
            )
        ),
        Para(checked_text(res)),
        *statistics_paras(res),
    ]


def checked_text(res: Results) -> str:
    """What was verified of the numbers (scaleaudit.verify), and against what."""
    if not res.verified:
        return text("methods", "unchecked")
    runs, col = res.runs, stats.score_column(res.config["verdict"]["metric"])
    folders = 0 if res.curves is None else len(runs) - len(res.curves.missing)
    # aggregate records per run whether its MLflow metrics were compared (a table written otherwise: none)
    mlflow = int(runs[verify.MLFLOW_CHECKED].sum()) if verify.MLFLOW_CHECKED in runs else 0
    return text(
        "methods", "checked", runs=len(runs), folders=folders, without=int(runs[col].isna().sum()), mlflow=mlflow
    )


def fidelity_section(res: Results) -> list:
    """Fidelity to the published protocols that recipes follow (fidelity.py): what differs, and why."""
    protocols = fidelity.protocols_used(res.config)
    if not protocols:
        return []
    diff = res.fidelity
    blocks = [Heading("Fidelity to the published protocols", 2), Para(text("fidelity", "intro", protocols=protocols))]
    if diff.empty:
        blocks.append(Para(text("fidelity", "faithful")))
    else:
        blocks.append(
            Table(
                ["recipe", "protocol", "setting", "protocol's value", "this recipe"],
                [[r.recipe, r.protocol, r.setting, str(r.theirs), str(r.ours)] for r in diff.itertuples()],
                widths=[1.5, 1.3, 1.5, 1.5, 1.5],
                size=8,
                caption=text("fidelity", "table_caption"),
            )
        )
    notes = {"medmnist_v2": text("fidelity", "medmnist_v2"), "medmnist_plus": text("fidelity", "medmnist_plus")}
    return blocks + [Para(notes[p]) for p in protocols]


def seeds_text(cfg: dict) -> str:
    s = design.adaptive_seeds(cfg)
    if not s:
        return text("methods", "fixed_seeds", seeds=design.seeds(cfg))
    return text("methods", "adaptive_seeds", s=s, looks=design.looks(s))


def sequential_paras(res: Results, cal: dict) -> list:
    """Methods of adaptive seeds: the procedure, named and cited, and its calibration (``cal``: calibration.json)."""
    s = design.adaptive_seeds(res.config)
    if not s:
        return []
    seq = cal.get("sequential")
    paras = [Para(text("statistics", "adaptive_seeds", s=s, spending=s["spending"], looks=design.looks(s)))]
    if seq:
        rows = {(r["method"], r["noise"], r["true_diff"]): r for r in seq["rows"] if "family" not in r}
        edge = [r for k, r in rows.items() if k[0] == "repeated" and abs(k[2] - 0.01) < 1e-9]
        fixed = [r for k, r in rows.items() if k[0] == "fixed_rechecked" and abs(k[2] - 0.01) < 1e-9]
        expected = [
            r
            for k, r in sorted(rows.items())
            if k[0] == "repeated" and k[1] == "normal" and r["true_diff"] in calibration.ADAPTIVE_GAINS
        ]
        paras.append(
            Para(
                text(
                    "statistics",
                    "adaptive_calibration",
                    q=seq["seeds"],
                    seed_sd=calibration.SEED_SD,
                    edge_better=max(r["better"] for r in edge),
                    coverage=min(r["coverage"] for r in rows.values() if r["method"] == "repeated"),
                    fixed_better=max(r["better"] for r in fixed),
                    fixed_coverage=min(r["coverage"] for r in fixed),
                    expected=expected,
                )
            )
        )
    return paras


def adaptive_section(res: Results) -> list:
    """Per comparison the rounds, seeds and when it was decided; the compute saved against max seeds everywhere."""
    if res.savings is None:
        return []
    L, c, s = res.labels, res.comparisons, design.adaptive_seeds(res.config)
    rows = [
        [
            cell_name(r),
            f"{r.fraction:g}",
            L[r.arm],
            r.rounds,
            r.n,
            r.decision,
            "–" if r.decided_round is pd.NA else f"round {r.decided_round} ({r.n} pairs)",
            {"decided": "decided", "max": f"max ({s['max']})"}.get(r.stopped, "still running"),
        ]
        for r in c.itertuples()
    ]
    t = res.savings_total
    unit = t["hours_column"].replace("_hours", "-hours")
    saved_rows = [
        [
            cell_name(r),
            f"{r.fraction:g}",
            L[r.arm],
            r.rounds,
            f"{r.seeds} of {r.max}",
            r.saved_seeds,
            num(r.hours, ".3g"),
            num(r.saved_hours, ".3g"),
        ]
        for r in res.savings.itertuples()
    ]
    return [
        Heading("Adaptive seeds", 2),
        Table(
            ["dataset", "fraction", "large arm", "rounds", "pairs", "decision", "decided at", "stopped"],
            rows,
            widths=[1.4, 0.6, 1.8, 0.6, 0.6, 0.9, 1.4, 1],
            size=7.5,
            caption=text("adaptive", "rounds_caption"),
        ),
        Table(
            ["dataset", "fraction", "arm", "rounds", "seeds", "seeds saved", unit, f"{unit} saved"],
            saved_rows,
            widths=[1.4, 0.6, 1.8, 0.6, 0.8, 0.8, 0.8, 0.9],
            size=7.5,
            caption=text("adaptive", "seeds_caption", max=s["max"], unit=unit),
        ),
        Para(text("adaptive", "saved", max=s["max"], t=t, unit=unit, share=num(100 * t["share_saved"], ".0f"))),
    ]


def calibration_text(cal: dict, confidence: float) -> str:
    """What the simulation of benchmarks/calibrate_stats.py measured (``cal``: calibration.json), in one sentence."""
    cell, tasks, study = cal["cell"], cal["tasks"], cal["study"]

    def span(rows, key):
        return f"{min(r[key] for r in rows):.1%}–{max(r[key] for r in rows):.1%}"

    power = {r["seeds"]: r["power_0.05"] for r in cell if r["noise"] == "normal"}
    return text(
        "statistics",
        "calibration",
        cal=cal,
        cell_coverage=span(cell, "coverage"),
        edge_false=max(max(r["false_better"], r["false_worse"]) for r in cell),
        tasks_coverage=span(tasks, "coverage"),
        false_scale_pays=max(r["false_scale_pays"] for r in study),
        power=sorted(power.items()),
        confidence=confidence,
    )


def statistics_paras(res: Results) -> list:
    v, c, over = res.config["verdict"], res.comparisons, res.overall
    cells, summaries = design.families(res.config)
    cal = calibration.measured()
    return [
        Para(text("statistics", "estimators", metric=res.metric, min_pairs=stats.MIN_PAIRS)),
        Para(
            text(
                "statistics",
                "decisions",
                metric=res.metric,
                rope=v["rope"],
                confidence=v["confidence"],
                alpha=1 - v["confidence"],
                m_cells=int(c["family"].max()) if len(c) else cells,
                m_summaries=int(over["family"].max()) if len(over) else summaries,
                adaptive=design.is_adaptive(res.config),
                cell_level=float(c["adj_level"].min())
                if len(c) and c["adj_level"].notna().any()  # none when no cell has pairs enough for an interval
                else stats.family_confidence(v["confidence"], cells),
            )
        ),
        Para(
            text(
                "statistics",
                "test_sample",
                given=res.curves is not None,
                resamples=testsample.RESAMPLES,
                floor=stats.SD_FLOOR,
                metric=res.metric,
                adaptive=design.is_adaptive(res.config),
            )
        ),
        Para(calibration_text(cal, v["confidence"])),
        scenario_table(cal),
        *sequential_paras(res, cal),
    ]


def scenario_table(cal: dict) -> Table:
    """The conditions real studies produce (``cal``: calibration.json's scenarios), each error rate beside its nominal
    and its power."""
    rows = [
        [
            r["scenario"],
            f"{r['seeds'][0]}–{r['seeds'][-1]}" if isinstance(r["seeds"], list) else r["seeds"],
            num(r.get("coverage", math.nan), ".1%"),
            num(r.get("false_better", math.nan), ".1%"),
            num(r["power_0.05"], ".0%"),
            num(r.get("fdr", math.nan), ".1%"),
        ]
        for r in cal["scenarios"]
    ]
    return Table(
        ["scenario", "seeds", "coverage", "false “better”", "“better” at +0.05", "false discoveries"],
        rows,
        widths=[3.2, 0.7, 0.9, 1, 1.1, 1.1],
        size=7.5,
        caption=text(
            "statistics",
            "scenarios_caption",
            nominal=cal["scenarios"][0],
            datasets=calibration.STUDY_DATASETS,
            family=calibration.FDR_FAMILY,
        ),
    )


def figure_blocks(paths: list[Path], caption: str) -> list:
    """One figure block per part, numbered when a figure was split (see figures.DATASETS_PER_FIGURE)."""
    return [
        Figure(p, text("results", "part", caption=caption, k=k, parts=len(paths)) if len(paths) > 1 else caption)
        for k, p in enumerate(paths, 1)
    ]


def results_section(res: Results, figs: dict[str, list[Path]]) -> list:
    v, c = res.config["verdict"], res.comparisons
    L = res.labels
    summary_rows = [
        [
            cell_name(r),
            f"{r.fraction:g}",
            L[r.arm],
            r.n if r.n == r.runs else f"{r.n} of {r.runs}",  # runs without a score are not counted as seeds
            f"{num(r.score_mean)} ± {num(r.score_sd)}",
            num(r.acc_mean),
            num(r.ece_mean),
        ]
        for r in res.summary.itertuples()
    ]
    comp_rows = [
        [
            cell_name(r),
            f"{r.fraction:g}",
            L[r.arm],
            partner(r, L),
            r.n,
            num(r.diff, "+.3f"),
            ci(r.lo, r.hi),
            ci(r.adj_lo, r.adj_hi),
            num(r.p_improve, ".2f"),
            r.decision,
            "–" if r.seeds_needed is pd.NA else f"≈{r.seeds_needed}",
        ]
        for r in c.itertuples()
    ]
    over_rows = [
        [
            L[r.arm],
            f"{r.fraction:g}",
            r.tasks,
            r.pairs,
            num(r.mean_diff, "+.3f"),
            num(r.iqm_diff, "+.3f"),
            ci(r.adj_lo, r.adj_hi),
            ci(r.fe_lo, r.fe_hi),
            num(r.tau, ".3f"),
            "–" if math.isnan(r.i2) else f"{r.i2 * 100:.0f}%",
            ci(r.pred_lo, r.pred_hi),
            f"{r.won}/{r.tied}/{r.lost}/{r.undecided}",
            r.decision,
        ]
        for r in res.overall.itertuples()
    ]
    thin = [f"{L[r.arm]}, fraction {r.fraction:g}: {r.thin}" for r in res.overall.itertuples() if r.thin]
    kinds = set(res.task_forest["kind"])  # the forest plot's rows: pooled and a new task only where defined
    pooled, predicted = "pooled" in kinds, "prediction" in kinds
    score_rows = [
        [L[r.arm], r.group, f"{r.fraction:g}", r.tasks, num(r.iqm), num(r.mean), ci(r.lo, r.hi, ".3f")]
        for r in res.scores.itertuples()
    ]
    hours = "accelerator-hour" if c.empty or c["hours"].iloc[0] == "accelerator_hours" else "device-hour"
    cost_rows = [
        [
            cell_name(r),
            f"{r.fraction:g}",
            L[r.arm],
            num(r.diff, "+.3f"),
            num(r.extra_kwh, ".3g"),
            num(r.energy_ratio, ".3g") + "×",
            num(r.gain_per_kwh, ".3g"),
            num(r.extra_hours, ".3g"),
            num(r.gain_per_hour, ".3g"),
        ]
        for r in c.itertuples()
    ]
    blocks = [
        Heading("Results"),
        Heading("Scores per dataset", 2),
        *figure_blocks(figs["scores"], text("results", "scores_figure", metric=res.metric)),
        Table(
            ["dataset", "fraction", "arm", "seeds", f"test {res.metric} (mean ± sd)", "test ACC", "test ECE"],
            summary_rows,
            widths=[1.5, 0.7, 2.2, 0.6, 1.5, 0.8, 0.8],
            size=8,
            caption=text("results", "metrics_caption"),
        ),
        Heading("Paired differences", 2),
    ]
    if "forest" in figs:
        blocks += figure_blocks(figs["forest"], text("results", "forest_figure", confidence=v["confidence"]))
    blocks += [
        Table(
            [
                "dataset",
                "frac.",
                "large arm",
                "small partner",
                "pairs",
                f"Δ {res.metric}",
                f"{v['confidence']:.0%} CI",
                "adjusted CI",
                "P(impr.)",
                "decision",
                "seeds needed",
            ],
            comp_rows,
            widths=[1.3, 0.5, 1.6, 1.6, 0.5, 0.7, 1.4, 1.4, 0.6, 0.9, 0.7],
            size=7,
            caption=text(
                "results",
                "comparisons_caption",
                family=int(c["family"].max()) if len(c) else 0,
                max_seeds=stats.MAX_SEEDS,
            ),
        ),
        *test_sample_blocks(res),
        Heading("Across datasets", 2),
        *figure_blocks(
            figs.get("task_forest", []),
            text("results", "task_forest_figure", confidence=v["confidence"], pooled=pooled, prediction=predicted),
        ),
        Table(
            [
                "large arm",
                "fraction",
                "datasets",
                "pairs",
                f"mean Δ {res.metric}",
                "IQM Δ",
                "simultaneous CI",
                f"these datasets {v['confidence']:.0%}",
                "τ",
                "I²",
                "prediction",
                "won/tied/lost/undecided",
                "decision",
            ],
            over_rows,
            widths=[1.5, 0.6, 0.6, 0.5, 0.7, 0.6, 1.3, 1.3, 0.5, 0.5, 1.3, 0.7, 0.8],
            size=7.5,
            caption=text("results", "across_caption"),
        ),
        *([Para(text("results", "thin", min_pairs=stats.MIN_PAIRS, summaries=listed(thin)))] if thin else []),
        *divergence_blocks(res),
        Table(
            ["arm", "group", "fraction", "datasets", f"IQM test {res.metric}", "mean", f"{v['confidence']:.0%} CI"],
            score_rows,
            widths=[2.2, 0.7, 0.7, 0.7, 1, 0.8, 1.4],
            size=8,
            caption=text("results", "scores_caption"),
        ),
        Heading("Performance against cost", 2),
        *figure_blocks(figs["pareto"], text("results", "pareto_figure", metric=res.metric)),
        Table(
            [
                "dataset",
                "fraction",
                "large arm",
                f"Δ {res.metric}",
                "extra kWh",
                "energy ×",
                "Δ per extra kWh",
                f"extra {hours}s",
                f"Δ per extra {hours}",
            ],
            cost_rows,
            widths=[1.4, 0.6, 1.8, 0.7, 0.8, 0.7, 0.9, 0.8, 0.9],
            size=7.5,
            caption=text("results", "cost_caption"),
        ),
    ]
    if hours == "device-hour":
        blocks.append(Para(text("results", "device_hours")))
    blocks += adaptive_section(res)
    blocks.append(Heading("Data efficiency", 2))
    if res.runs["fraction"].nunique() > 1 and len(c):
        eff = res.efficiency
        fracs = [col for col in eff.columns if isinstance(col, float)]
        blocks += [
            *figure_blocks(
                figs.get("efficiency", []), text("results", "efficiency_figure", confidence=v["confidence"])
            ),
            Table(
                ["dataset", "large arm"] + [f"Δ at {f:g}" for f in fracs],
                [
                    [f"{r['dataset']} @ {r['size']} px", L[r["arm"]]] + [num(r[f], "+.3f") for f in fracs]
                    for _, r in eff.iterrows()
                ],
                size=8,
                caption=text("results", "efficiency_caption"),
            ),
        ]
    else:
        blocks.append(Para(text("results", "one_fraction", fractions=sorted(res.runs["fraction"].unique()))))
    blocks += [
        Heading("Calibration", 2),
        *figure_blocks(figs["calibration"], text("results", "calibration_figure")),
    ]
    return blocks


def test_sample_blocks(res: Results) -> list:
    """How much of each dataset's uncertainty is seeds and how much the test sample (a table and one sentence, the
    test sample's heaviest first); without run files, that the claims are about these test images."""
    t = res.test_sample
    if t is None or t.empty:
        return [Para(text("results", "no_test_sample"))]
    rows = [
        [cell_name(r), num(r.test_images, "d"), num(r.seed_var**0.5, ".4f"), num(r.test_var**0.5, ".4f")]
        + [f"{r.test_share:.0%}"]
        for r in t.itertuples()
    ]
    shares = [
        (cell_name(r), r.test_images, r.test_share) for r in t.sort_values("test_share", ascending=False).itertuples()
    ]
    return [
        Table(
            ["dataset", "test images", "sd from seeds", "sd from test sample", "test-sample share of variance"],
            rows,
            widths=[1.6, 0.9, 1.1, 1.3, 1.6],
            size=8,
            caption=text("results", "test_sample_caption"),
        ),
        Para(text("results", "test_sample_share", shares=shares)),
    ]


def divergence_blocks(res: Results) -> list:
    """Every arm's divergence rate with its exact interval, and the comparisons whose runs diverged."""
    d, c, L = res.divergence, res.comparisons, res.labels
    rows = [
        [L[r.arm], r.group, r.runs, r.diverged, f"{r.rate:.0%}", ci(r.lo, r.hi, ".0%"), r.which or "–"]
        for r in d.itertuples()
    ]
    hit = c[c["note"].str.contains("diverged:", regex=False)]
    named = [f"{L[r.arm]} on {cell_name(r)}, fraction {r.fraction:g}: {r.note}" for r in hit.itertuples()]
    return [
        Heading("Diverged runs", 2),
        Table(
            ["arm", "group", "runs", "diverged", "rate", f"{res.config['verdict']['confidence']:.0%} CI", "which"],
            rows,
            widths=[1.8, 0.6, 0.5, 0.7, 0.5, 1.1, 4.0],
            size=7.5,
            caption=text("results", "divergence_caption", margin=f"{metrics.CHANCE_AUC + metrics.DIVERGED_MARGIN:g}"),
        ),
        *([Para(text("results", "diverged_cells", cells=listed(named)))] if named else []),
    ]


def curves_section(res: Results, figs: dict[str, list[Path]]) -> list:
    """Learning curves and reliability diagrams of every run, where the report was given the run files."""
    blocks = [Heading("Learning curves and reliability")]
    if res.curves is None:
        return blocks + [Para(text("curves", "not_given"))]
    bins = metrics.CALIBRATION_BINS
    blocks += [
        Para(text("curves", "learning", metric=res.metric)),
        *figure_blocks(figs.get("learning_loss", []), text("curves", "loss_figure")),
        *figure_blocks(figs.get("learning_val", []), text("curves", "val_figure", metric=res.metric)),
        Para(text("curves", "reliability", bins=bins)),
        *figure_blocks(figs.get("reliability", []), text("curves", "reliability_figure", bins=bins)),
    ]
    missing = res.curves.missing
    if len(missing):
        blocks.append(
            Para(
                text(
                    "curves",
                    "without_files",
                    n=len(missing),
                    runs=listed(
                        [
                            f"{res.labels.get(r.arm, r.arm)} on {cell_name(r)}, fraction {r.fraction:g}, seed {r.seed}"
                            for r in missing.itertuples()
                        ]
                    ),
                )
            )
        )
    return blocks


def _trend_rows(res: Results, axis: str, per_task: pd.DataFrame, overall: pd.DataFrame) -> list[list]:
    name = scaling.AXES[axis]
    rows = [
        [
            name,
            r.ladder,
            cell_name(r),
            f"{r.fraction:g}",
            r.rungs,
            num(r.slope, "+.3f"),
            ci(r.lo, r.hi),
            ci(r.adj_lo, r.adj_hi),
            r.decision,
            r.note,
        ]
        for r in per_task.itertuples()
    ]
    rows += [
        [
            name,
            r.ladder,
            f"across {r.tasks} datasets",
            f"{r.fraction:g}",
            "",
            num(r.mean_slope, "+.3f"),
            ci(r.lo, r.hi),
            ci(r.adj_lo, r.adj_hi),
            r.decision,
            "",
        ]
        for r in overall.itertuples()
        if r.tasks >= 2
    ]
    return rows


def scaling_methods(res: Results) -> list:
    """How a trend along a model-size ladder is fitted and judged (Methods); nothing without a ladder."""
    if not res.ladders:
        return []
    v = res.config["verdict"]
    return [
        Heading("The scale axis", 2),
        Para(text("scaling", "method", metric=res.metric, rope=v["rope"], confidence=v["confidence"])),
    ]


def scaling_section(res: Results, figs: dict[str, list[Path]]) -> list:
    """The scale axis: the metric along each model-size ladder against parameters and training FLOPs, what the next
    10x buys (per dataset and across datasets), and the metric against the number of training images."""
    v, L, metric = res.config["verdict"], res.labels, res.metric
    blocks = [Heading("Scaling")]
    ladders = res.ladders
    if not ladders:
        blocks.append(Para(text("scaling", "no_ladder")))
    else:
        named = "; ".join(f"{name} ({', '.join(L[a] for a in arms)})" for name, arms in ladders.items())
        blocks.append(Para(text("scaling", "ladders", ladders=named)))
        rows, answers, family = [], [], 0
        captions = {
            "scale_params": text("scaling", "params_figure", confidence=v["confidence"]),
            "scale_flops": text("scaling", "flops_figure", confidence=v["confidence"]),
        }
        for axis, figure in (("params", "scale_params"), ("train_flops", "scale_flops")):
            _, per_task, overall = res.model_scale[axis]
            blocks += figure_blocks(figs.get(figure, []), captions[figure])
            rows += _trend_rows(res, axis, per_task, overall)
            family = max(family, int(per_task["family"].max()) if len(per_task) else 0)
            for r in res.scale_headlines[axis].itertuples():
                where = f"across {r.tasks} datasets" if r.tasks >= 2 else cell_name(r)
                where += f", fraction {r.fraction:g}"
                answers.append(
                    text(
                        "scaling",
                        "answer",
                        ladder=r.ladder,
                        axis=scaling.AXES[axis],
                        where=where,
                        slope=r.slope,
                        lo=r.lo,
                        hi=r.hi,
                        confidence=v["confidence"],
                        decision=r.decision,
                        metric=metric,
                    )
                    if not math.isnan(r.lo)
                    else text("scaling", "no_interval", ladder=r.ladder, axis=scaling.AXES[axis], where=where)
                )
        blocks += [
            Table(
                [
                    "axis",
                    "ladder",
                    "dataset",
                    "frac.",
                    "rungs",
                    "gain per 10x",
                    f"{v['confidence']:.0%} CI",
                    "simultaneous CI",
                    "decision",
                    "note",
                ],
                rows,
                widths=[1.1, 1.1, 1.4, 0.5, 0.5, 0.8, 1.3, 1.3, 0.9, 1.6],
                size=7,
                caption=text("scaling", "trend_caption", family=family),
            )
        ]
        blocks += [Para(a) for a in answers]
        if min(len(arms) for arms in ladders.values()) == scaling.MIN_RUNGS:
            blocks.append(
                Para(text("scaling", "few_rungs", rungs=scaling.MIN_RUNGS, t=scaling.t_quantile(1, v["confidence"])))
            )
    blocks.append(Heading("Scaling with data", 2))
    if res.data_scale is not None:
        _, per_task, _ = res.data_scale
        blocks += figure_blocks(figs.get("data_scale", []), text("scaling", "data_figure", confidence=v["confidence"]))
        blocks.append(
            Table(
                ["dataset", "arm", "fractions", "gain per 10x images", f"{v['confidence']:.0%} CI", "decision"],
                [
                    [cell_name(r), L[r.arm], r.rungs, num(r.slope, "+.3f"), ci(r.lo, r.hi), r.decision]
                    for r in per_task.itertuples()
                ],
                widths=[1.4, 2.2, 0.7, 1, 1.4, 0.9],
                size=8,
                caption=text("scaling", "data_caption"),
            )
        )
    else:
        blocks.append(
            Para(text("scaling", "one_fraction", fractions=[f"{f:g}" for f in sorted(res.runs["fraction"].unique())]))
        )
    return blocks


def reproduction_section(res: Results) -> list:
    rep = res.reproduction
    blocks = [Heading("Reproduction check")]
    if rep.empty:
        return blocks + [Para(text("reproduction", "nothing_published"))]
    rows = [
        [
            res.labels[r.arm],
            f"{r.dataset} @ {r.size} px",
            f"{r.paper}\n{r.reference}",
            r.n,
            f"{num(r.auc)} ± {num(r.auc_sd)}",
            num(r.pub_auc),
            num(r.auc_diff, "+.3f"),  # no AUC published: kNN
            f"{num(r.acc)} ± {num(r.acc_sd)}",
            f"{r.pub_acc:.3f}",
            num(r.acc_diff, "+.3f"),
            "–" if r.within is None else ("yes" if r.within else "no"),
        ]
        for r in rep.itertuples()
    ]
    blocks.append(
        Table(
            [
                "arm",
                "dataset",
                "published (id)",
                "seeds",
                "AUC here",
                "AUC paper",
                "Δ AUC",
                "ACC here",
                "ACC paper",
                "Δ ACC",
                "within spread",
            ],
            rows,
            widths=[1.5, 1.2, 2.6, 0.5, 1.1, 0.7, 0.7, 1.1, 0.7, 0.7, 0.7],
            size=7,
            caption=text("reproduction", "caption"),
        )
    )
    differs = rep[rep["recipe"] != rep["protocol"]]
    for r in differs.drop_duplicates(["arm", "recipe"]).itertuples():
        blocks.append(
            Para(text("reproduction", "other_recipe", arm=res.labels[r.arm], recipe=r.recipe, protocol=r.protocol))
        )
    return blocks


def plan_versus_measured(plan: dict, measured: dict) -> str:
    """The estimate set against what the study's runs measured: the training runs only (their kNN votes included;
    the plan's shift stage is no run's), with per-run start-up in the plan."""
    est = plan["total"]
    hours, energy = est["training_hours"], est["training_energy_kwh"]
    text_ = (
        f"Before the study started, scaleaudit plan estimated {hours:.3g} device-hours and "
        f"{energy:.3g} kWh for {est['runs']} training runs; the {measured['runs']} runs measured "
        f"{measured['device_hours']:.3g} device-hours and {measured['energy_kwh']:.3g} kWh"
    )
    if est["runs"] == measured["runs"] and measured["device_hours"] > 0 and measured["energy_kwh"] > 0:
        text_ += (
            f" (estimate / measured: {hours / measured['device_hours']:.2f}x in time, "
            f"{energy / measured['energy_kwh']:.2f}x in energy)"
        )
    return (
        text_
        + f"; the estimate counts {plan['startup_s']:.0f} s of start-up per run, the measurement training time only."
    )


def costs_section(res: Results) -> list:
    s, L = res.summary, res.labels
    hours = ledger.hours_column(res.runs).replace("_", "-").replace("hours", "h")
    rows = [
        [
            cell_name(r),
            f"{r.fraction:g}",
            L[r.arm],
            f"{r.params / 1e6:.2f}",
            f"{r.flops / 1e9:.3g}",
            f"{r.train_seconds:.0f}",
            f"{r.hours:.3g}",
            f"{r.peak_mem_mb:.0f}",
            f"{r.energy_kwh:.3g}",
            f"{1000 * r.co2e_kg:.3g}",
        ]
        for r in s.itertuples()
    ]
    t = res.total
    blocks = [
        Heading("Costs"),
        Table(
            [
                "dataset",
                "fraction",
                "arm",
                "params (M)",
                "GFLOPs / image",
                "train s / run",
                f"{hours} / run",
                "peak MB",
                "kWh / run",
                "g CO2e / run",
            ],
            rows,
            widths=[1.4, 0.6, 2, 0.7, 0.8, 0.8, 0.8, 0.7, 0.8, 0.8],
            size=7.5,
            caption=text("costs", "caption"),
        ),
        Para(text("costs", "total", t=t)),
    ]
    blocks += [Para(text("costs", "sharing", s=shared))] if (shared := ledger.sharing(res.runs)) else []
    return blocks + ([Para(plan_versus_measured(res.estimate, t))] if res.estimate else [])


def appendix_section(res: Results) -> list:
    runs, L = res.runs, res.labels
    versions = runs.groupby(["torch_version", "timm_version"]).size()
    commits = runs.groupby(["code_commit", "code_dirty"]).size()
    data = runs.drop_duplicates(["dataset", "size"])
    weights = runs.drop_duplicates("arm")
    run_rows = [
        [
            L[r.arm],
            cell_name(r),
            f"{r.fraction:g}",
            r.seed,
            f"{getattr(r, 'test_' + res.config['verdict']['metric']):.3f}",
            r.config_hash,
            r.mlflow_run_id or "–",
        ]
        for r in runs.sort_values(["dataset", "size", "arm", "fraction", "seed"]).itertuples()
    ]
    return [
        PageBreak(),
        Heading("Appendix: provenance"),
        Table(
            ["torch", "timm", "runs"],
            [[t, m, n] for (t, m), n in versions.items()],
            widths=[1, 1, 1],
            size=8,
            caption=text("appendix", "versions_caption"),
        ),
        Para(text("appendix", "rendered_with", packages=provenance.package_versions())),
        Table(
            ["code commit", "uncommitted changes", "runs"],
            [[c, str(d), n] for (c, d), n in commits.items()],
            widths=[3, 1, 0.6],
            size=8,
            caption=text("appendix", "code_caption"),
        ),
        Table(
            ["dataset", "data SHA-256"],
            [[cell_name(r), r.data_sha256] for r in data.itertuples()],
            widths=[1, None],
            size=7.5,
            caption=text("appendix", "data_caption"),
        ),
        Table(
            ["arm", "weights", "published", "weights SHA-256"],
            [
                [
                    L[r.arm],
                    r.weights_source,
                    "yes" if r.weights_published else f"NO {NOT_PUBLISHED}",
                    r.weights_sha256 or "–",
                ]
                for r in weights.itertuples()
            ],
            widths=[1.2, 1.6, 0.6, None],
            size=6.5,
            caption=text("appendix", "weights_caption"),
        ),
        Table(
            ["arm", "dataset", "fraction", "seed", f"test {res.metric}", "config hash", "MLflow run id"],
            run_rows,
            widths=[1.8, 1.4, 0.6, 0.4, 0.6, None, None],
            size=7,
            caption=text("appendix", "runs_caption"),
        ),
    ]


def shift_methods(res: Results) -> list:
    """The corrupted test sets (MedMNIST-C) and how the gain is judged under them (Methods); nothing without them."""
    if res.shift is None:
        return []
    v, table = res.config["verdict"], res.shift_verdicts
    bad = res.shift[res.shift["severity"] > 0]
    corruptions = [f"{fam} ({', '.join(sorted(g['corruption'].unique()))})" for fam, g in bad.groupby("family")]
    return [
        Heading("Corrupted test sets (MedMNIST-C)", 2),
        Para(
            text(
                "shift",
                "intro",
                corruptions=listed(corruptions),
                seed=res.shift["shift_seed"].iloc[0],
                medmnistc=res.shift["medmnistc"].iloc[0],
                rope=v["rope"],
                metric=res.metric,
                # no large arm with a small partner: no corrupted comparison, so no family
                family=int(table.loc[table["condition"] != shift.CLEAN, "family"].max()) if paired(table) else None,
                below_224=bool((res.shift["size"] < 224).any()),
                test_sample=res.curves is not None,
            )
        ),
    ]


def paired(shift_verdicts: pd.DataFrame) -> bool:
    """Whether any large arm has a small partner under shift (else there is no comparison, and no verdict)."""
    return bool(shift_verdicts["diff"].notna().any()) if len(shift_verdicts) else False


def shift_section(res: Results, figs: dict[str, list[Path]]) -> list:
    """Robustness under acquisition shift (MedMNIST-C): the verdict clean vs corrupted, per corruption family."""
    if res.shift is None:
        return []
    v, L, table = res.config["verdict"], res.labels, res.shift_verdicts
    blocks = [Heading("Robustness under acquisition shift"), Para(text("shift", "see_methods"))]
    if not paired(table):
        blocks.append(Para(text("shift", "no_pair", large=[L.get(a, a) for a in design.arms(res.config, "large")])))
    if "shift_severity" in figs:
        blocks += figure_blocks(figs["shift_severity"], text("shift", "severity_figure", metric=res.metric))
    for (dataset, size, fraction), g in table.groupby(design.CELL, sort=True):
        rows = [
            [
                r.condition,
                L[r.arm],
                num(r.diff, "+.3f"),
                ci(r.adj_lo, r.adj_hi),
                r.decision,
                "" if r.condition == shift.CLEAN else num(r.change, "+.3f"),
                "" if r.condition == shift.CLEAN else ci(r.change_lo, r.change_hi),
                r.reading or "–",
            ]
            for r in g.itertuples()
        ]
        blocks.append(Heading(f"{dataset} @ {size} px, fraction {fraction:g}", 2))
        blocks.append(
            Table(
                [
                    "condition",
                    "large arm",
                    f"Δ {res.metric}",
                    "simultaneous CI",
                    "decision",
                    "change",
                    "change CI",
                    "reading",
                ],
                rows,
                widths=[1.3, 1.6, 0.6, 1.3, 0.9, 0.6, 1.3, 1.6],
                size=7,
                caption=text("shift", "table_caption", metric=res.metric, confidence=v["confidence"]),
            )
        )
    return blocks


def document(res: Results, figs: dict[str, list[Path]]) -> Document:
    """The report's blocks, section by section in reading order."""
    code = provenance.code_version()
    doc = Document(
        res.config["title"], f"study {res.config['study']}: {len(res.runs)} runs; report code {code['commit'][:12]}"
    )
    sections = [
        summary_section(res),
        methods_section(res),
        fidelity_section(res),
        scaling_methods(res),
        shift_methods(res),
        results_section(res, figs),
        scaling_section(res, figs),
        shift_section(res, figs),
        reproduction_section(res),
        curves_section(res, figs),
        costs_section(res),
        appendix_section(res),
    ]
    doc.blocks = [block for section in sections for block in section]
    return doc
