"""The report's Scaling section and figures, from a synthetic run table with a ViT-Ti/S/B ladder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from runtable import make_config, make_runs

from scaleaudit import report

LADDER = {
    "vit_ti16_pretrained": ("vit_tiny_patch16_224", 5.7e6),
    "vit_s16_pretrained": ("vit_small_patch16_224", 2.2e7),
    "vit_b16_pretrained": ("vit_base_patch16_224", 8.6e7),
}
FIGS = {
    name: [Path(f"/figs/{name}_1.png")]
    for name in ("scores", "calibration", "pareto", "forest", "scale_params", "scale_flops")
}


def with_ladder(
    gain_per_10x: float, datasets=(("breastmnist", 28),), fractions=(1.0,), seeds: int = 3, noise: float = 0.005
) -> tuple[pd.DataFrame, dict]:
    """The synthetic study with ViT-Ti and ViT-S beside its ViT-B, all rungs of ladder ``vit_augreg`` whose test AUC
    rises by ``gain_per_10x`` per 10x parameters (ViT-B as make_runs draws it)."""
    runs = make_runs(seeds=seeds, datasets=datasets, fractions=fractions, noise=noise)
    b = runs[runs["arm"] == "vit_b16_pretrained"]
    rng = np.random.default_rng(1)
    rungs = [b]
    for arm in ("vit_ti16_pretrained", "vit_s16_pretrained"):
        model, params = LADDER[arm]
        drop = gain_per_10x * math.log10(8.6e7 / params) + rng.normal(0, noise, len(b))  # each run its own noise
        rungs.append(
            b.assign(
                arm=arm,
                model=model,
                params=int(params),
                train_flops=b["train_flops"] * params / 8.6e7,
                test_auc=b["test_auc"] - drop,
                val_auc=b["val_auc"] - drop,
                config_hash=[f"{arm}{i}" for i in range(len(b))],
                mlflow_run_id=[f"{arm}{i}" for i in range(len(b))],
            )
        )
    runs = pd.concat([runs[runs["arm"] != "vit_b16_pretrained"], *rungs], ignore_index=True)
    config = make_config(runs)
    for arm, (model, _) in LADDER.items():
        config["arms"][arm] = config["arms"]["vit_b16_pretrained"] | {
            "model": model,
            "label": arm,
            "ladder": "vit_augreg",
        }
    config["design"]["arms"] = list(config["arms"])
    return runs, config


def markdown(runs, config) -> str:
    md = report.to_markdown(report.document(report.Results.of(runs, config), FIGS), Path("/"))
    return md.replace("\\_", "_")  # Markdown escapes


def test_scaling_section_states_the_gain_per_10x_and_its_decision():
    runs, config = with_ladder(0.05, datasets=(("breastmnist", 28), ("pneumoniamnist", 28), ("pathmnist", 28)))
    md = markdown(runs, config)
    section = md[md.index("# Scaling") :]
    assert "vit_augreg (vit_ti16_pretrained, vit_s16_pretrained, vit_b16_pretrained)" in section
    # per dataset one degree of freedom, said so; across the three datasets the gain of 0.05 per 10x is decided
    assert "1 degree(s) of freedom: a wide interval" in section and "t = 12.7" in section
    assert "vit_augreg, across 3 datasets, fraction 1: the next 10x parameters buys +0.05" in section
    assert "more than the ROPE, scale pays along this ladder" in section
    assert "| training FLOPs | vit_augreg | across 3 datasets |" in section
    assert "one training fraction (1)" in section  # no data axis with one fraction


def test_a_flat_ladder_on_one_dataset_is_undecided_and_a_study_without_ladder_says_so():
    runs, config = with_ladder(0.0)
    section = markdown(runs, config)
    section = section[section.index("# Scaling") :]
    assert "vit_augreg, breastmnist @ 28 px, fraction 1: the next 10x parameters buys" in section
    assert "undecided" in section
    plain = make_runs(seeds=3)
    md = markdown(plain, make_config(plain))
    assert "no trend against parameters" in md[md.index("# Scaling") :]


def test_scaling_figures_are_drawn_with_log_axes(tmp_path):
    runs, config = with_ladder(0.03, datasets=(("breastmnist", 28), ("pathmnist", 28)), fractions=(0.3, 1.0))
    runs.to_csv(tmp_path / "runs.csv", index=False)
    (tmp_path / "config.json").write_text(json.dumps(config))
    pdf = tmp_path / "reports" / "synthetic.pdf"
    report.build(tmp_path / "runs.csv", tmp_path / "config.json", pdf, assets=tmp_path / "assets")
    md = pdf.with_suffix(".md").read_text()
    for name in ("scale_params_1", "scale_flops_1", "data_scale"):
        assert (tmp_path / "assets" / f"{name}.png").stat().st_size > 0
        assert f"](../assets/{name}.png)" in md
    assert "Scaling with data" in md and "gain per 10x images" in md
    pypdf = pytest.importorskip("pypdf")
    text = " ".join(" ".join(p.extract_text() for p in pypdf.PdfReader(pdf).pages).split())
    assert "Scaling" in text and "gain per 10x" in text


def test_the_parameters_figure_puts_each_rung_at_its_size_with_the_trend(tmp_path):
    import matplotlib.pyplot as plt

    from scaleaudit.report import figures

    runs, config = with_ladder(0.03)
    cv = figures.Canvas.of(report.Results.of(runs, config))
    fig = figures.scale_params(cv, cv.parts[0])
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    xs = sorted(
        {round(float(x)) for line in ax.lines for x in np.atleast_1d(line.get_xdata()) if len(line.get_xdata()) == 1}
    )
    assert {round(5.7e6), round(2.2e7), round(8.6e7), round(4e5), round(1.1e7)} <= set(xs)
    trend = [line for line in ax.lines if len(line.get_xdata()) > 2]
    assert max(max(line.get_xdata()) for line in trend) == pytest.approx(8.6e8, rel=1e-6)  # the next 10x, dashed
    plt.close(fig)
