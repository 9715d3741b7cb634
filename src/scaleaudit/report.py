"""The study report: seaborn figures and tables from the run table, typeset to PDF with Typst."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from . import provenance
from .files import atomic_path, read_json, write_text

PALETTE = "colorblind"
NOT_PUBLISHED = "†"


def esc(text) -> str:
    """Escape a value for Typst markup."""
    out = str(text)
    for ch in "\\#$*_@<>`[]~":
        out = out.replace(ch, "\\" + ch)
    return out


def table(header: list[str], rows: list[list], columns: str | None = None) -> str:
    cells = ", ".join(f"[*{esc(h)}*]" for h in header)
    body = ", ".join(f"[{c}]" for r in rows for c in r)
    cols = columns or f"{len(header)}"
    return f"#table(columns: {cols}, stroke: 0.4pt + gray, inset: 4pt, align: left, {cells}, {body})\n"


def arm_labels(runs: pd.DataFrame, config: dict) -> dict[str, str]:
    """Display label of each arm, marked when any of its runs used weights that are not the published ones."""
    off_release = set(runs.loc[~runs["weights_published"].astype(bool), "arm"])
    return {
        a: (config["arms"][a].get("label") or a) + (f" {NOT_PUBLISHED}" if a in off_release else "")
        for a in runs["arm"].unique()
    }


def summary_by_arm(runs: pd.DataFrame) -> pd.DataFrame:
    grouped = runs.groupby(["dataset", "size", "arm"], sort=False)
    return grouped.agg(
        n=("seed", "size"), auc_mean=("test_auc", "mean"), auc_sd=("test_auc", "std"), acc_mean=("test_acc", "mean"),
        acc_sd=("test_acc", "std"), params=("params", "first"), flops=("flops_per_image", "first"),
        train_seconds=("train_seconds", "mean"), energy_kwh=("energy_kwh", "mean"), co2e_kg=("co2e_kg", "mean"),
    ).reset_index()


def figures(runs: pd.DataFrame, labels: dict[str, str], outdir: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper", palette=PALETTE)
    data = runs.assign(arm_label=runs["arm"].map(labels), panel=runs["dataset"] + " @ " + runs["size"].astype(str) + " px")
    out = {}

    g = sns.catplot(data=data, x="test_auc", y="arm_label", col="panel", kind="strip", hue="arm_label",
                    palette=PALETTE, size=6, jitter=0.15, height=3.2, aspect=1.6, legend=False)
    g.map_dataframe(sns.pointplot, x="test_auc", y="arm_label", color="black", markers="|", errorbar="sd",
                    linestyle="none")
    g.set_axis_labels("test AUC (each point a seed; bar: mean ± sd)", "")
    g.set_titles("{col_name}")
    out["auc"] = outdir / "auc_by_arm.png"
    g.savefig(out["auc"], dpi=200, bbox_inches="tight")
    plt.close(g.figure)

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    sns.scatterplot(data=data, x="energy_kwh", y="test_auc", hue="arm_label", style="panel", s=60, ax=ax)
    ax.set_xscale("log")
    ax.set_xlabel("training energy per run (kWh, log scale)")
    ax.set_ylabel("test AUC")
    ax.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    out["cost"] = outdir / "auc_vs_energy.png"
    fig.savefig(out["cost"], dpi=200, bbox_inches="tight")
    plt.close(fig)
    return out


def document(runs: pd.DataFrame, config: dict, figs: dict[str, Path]) -> str:
    labels = arm_labels(runs, config)
    summary = summary_by_arm(runs)
    code = provenance.code_version()
    doc = [
        '#set page(paper: "a4", margin: 2cm, numbering: "1")',
        '#set text(size: 10pt)',
        '#set heading(numbering: "1.")',
        f"#align(center)[#text(size: 16pt, weight: \"bold\")[{esc(config['title'])}] \\ "
        f"study {esc(config['study'])}: {len(runs)} runs, code {esc(code['commit'][:12])}]",
        "= Verdict",
        "_The paired statistics and the verdict are not computed yet in this version of the report._",
        "= Results",
        f"Test metrics per arm (mean ± sd over seeds). {NOT_PUBLISHED}: at least one run of this arm used "
        "weights that are *not* the published pretrained weights (a local or self-made file); its numbers do "
        "not stand for the published model.",
        table(
            ["dataset", "arm", "n", "AUC", "ACC", "params (M)", "MFLOPs/img", "train s", "kWh", "CO2e g"],
            [[esc(f"{r.dataset}@{r.size}"), esc(labels[r.arm]), r.n, f"{r.auc_mean:.3f} ± {r.auc_sd:.3f}",
              f"{r.acc_mean:.3f} ± {r.acc_sd:.3f}", f"{r.params / 1e6:.2f}", f"{r.flops / 1e6:.0f}",
              f"{r.train_seconds:.0f}", f"{r.energy_kwh:.2e}", f"{1000 * r.co2e_kg:.2f}"]
             for r in summary.itertuples()],
        ),
        f'#figure(image("{figs["auc"].name}", width: 100%), caption: [Test AUC of every run.])',
        f'#figure(image("{figs["cost"].name}", width: 90%), caption: [Test AUC against training energy.])',
        "= Appendix: runs",
        table(
            ["arm", "data", "frac", "seed", "AUC", "MLflow run", "weights"],
            [[esc(labels[r.arm]), esc(f"{r.dataset}@{r.size}"), r.fraction, r.seed, f"{r.test_auc:.3f}",
              f"#text(size: 7pt)[{esc(r.mlflow_run_id)}]", f"#text(size: 7pt)[{esc(r.weights_source)}]"]
             for r in runs.itertuples()],
        ),
    ]
    return "\n\n".join(doc)


def build(runs_csv: str | os.PathLike, config_json: str | os.PathLike, out_pdf: str | os.PathLike,
          assets: str | os.PathLike | None = None) -> None:
    import typst

    runs = pd.read_csv(runs_csv)
    config = read_json(config_json)
    assets = Path(assets) if assets else Path(out_pdf).with_suffix("")
    assets.mkdir(parents=True, exist_ok=True)
    figs = figures(runs, arm_labels(runs, config), assets)
    source = assets / "report.typ"
    write_text(source, document(runs, config, figs))
    with atomic_path(out_pdf) as tmp:
        typst.compile(str(source), output=str(tmp), root=str(assets), format="pdf")
