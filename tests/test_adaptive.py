"""Which comparisons get more seeds: adaptive rounds on planted run tables."""

from __future__ import annotations

import pandas as pd
import pytest
from runtable import make_config, make_runs

from scaleaudit import adaptive, design
from scaleaudit import config as study_config

SEEDS = {"initial": 3, "step": 2, "max": 7, "spending": "pocock"}  # looks at 3, 5, 7 seeds
DATASETS = (("breastmnist", 28), ("pneumoniamnist", 28))


def planted(gains: dict, seeds: int = 7, **kw) -> tuple[pd.DataFrame, dict]:
    """Runs of every seed up to ``seeds`` with the large arm's gain per dataset, and the adaptive config."""
    tables = [
        make_runs({"vit_b16_pretrained": g}, seeds=seeds, datasets=((d, 28),), seed=i, **kw)
        for i, (d, g) in enumerate(gains.items())
    ]
    runs = pd.concat(tables, ignore_index=True)
    cfg = make_config(runs)
    cfg["design"]["seeds"] = dict(SEEDS)
    return runs, cfg


def upto(runs, seeds):
    return runs[runs["seed"] <= seeds]


def test_schedule_of_rounds():
    assert design.looks({"initial": 3, "step": 2, "max": 8}) == (3, 5, 7, 8)
    assert design.looks({"initial": 4, "step": 4, "max": 4}) == (4,)
    assert [design.round_of(SEEDS, s) for s in range(1, 8)] == [1, 1, 1, 2, 2, 3, 3]
    assert design.round_seeds(SEEDS, 2) == [4, 5] and design.round_seeds(SEEDS, 4) == []


def test_only_the_undecided_cell_gets_the_next_round_for_all_its_arms():
    runs, cfg = planted({"breastmnist": 0.1, "pneumoniamnist": 0.0})
    first = upto(runs, 3)
    v = adaptive.verdict(first, cfg).set_index("dataset")
    assert v.loc["breastmnist", "decision"] == "better" and v.loc["pneumoniamnist", "decision"] == "undecided"
    nxt = pd.DataFrame(adaptive.next_round(first, cfg, 2))
    assert set(nxt["dataset"]) == {"pneumoniamnist"} and set(nxt["seed"]) == {4, 5}
    # every arm of the cell, so the pairs stay complete and the small partner is chosen as before
    assert set(nxt["arm"]) == {"cnn_small", "resnet18_scratch", "vit_b16_pretrained"} and len(nxt) == 6


def test_a_decided_comparison_is_frozen_and_never_gets_more_runs():
    runs, cfg = planted({"breastmnist": 0.1, "pneumoniamnist": 0.0})
    # later seeds of the decided cell (had they run) would pull its mean onto the ROPE: they must change nothing
    late = (runs["dataset"] == "breastmnist") & (runs["seed"] > 3) & (runs["arm"] == "vit_b16_pretrained")
    runs.loc[late, "test_auc"] -= 0.3
    v = adaptive.verdict(runs, cfg).set_index("dataset")
    assert v.loc["breastmnist", "decision"] == "better" and v.loc["breastmnist", "decided_round"] == 1
    assert v.loc["breastmnist", "n"] == 3 and v.loc["breastmnist", "stopped"] == "decided"
    plan = adaptive.planned(runs, cfg)
    assert set(plan.loc[plan["dataset"] == "breastmnist", "seed"]) == {1, 2, 3}


def test_rope_zero_runs_every_comparison_to_max():
    runs, cfg = planted({"breastmnist": 0.0, "pneumoniamnist": 0.0})
    cfg["verdict"]["rope"] = 0.0
    plan = adaptive.planned(runs, cfg)
    assert plan.groupby("dataset")["seed"].max().to_dict() == {"breastmnist": 7, "pneumoniamnist": 7}
    assert sorted(plan["round"].unique()) == [1, 2, 3]
    v = adaptive.verdict(runs, cfg)
    assert (v["rounds"] == 3).all() and (v["n"] == 7).all() and set(v["stopped"]) <= {"max", "decided"}
    assert adaptive.next_round(runs, cfg, 4) == []  # no round past max


def test_only_the_undecided_large_arm_continues_with_the_small_arms():
    runs, cfg = planted({"breastmnist": 0.0})
    second = runs[runs["arm"] == "vit_b16_pretrained"].assign(arm="vit_probe")
    second["test_auc"] += 0.1  # clearly better: decided after round 1
    runs = pd.concat([runs, second], ignore_index=True)
    cfg["arms"]["vit_probe"] = dict(cfg["arms"]["vit_b16_pretrained"])
    cfg["design"]["arms"].append("vit_probe")
    nxt = pd.DataFrame(adaptive.next_round(upto(runs, 3), cfg, 2))
    assert set(nxt["arm"]) == {"cnn_small", "resnet18_scratch", "vit_b16_pretrained"}


def test_savings_count_the_seeds_and_hours_not_run():
    runs, cfg = planted({"breastmnist": 0.1, "pneumoniamnist": 0.0})
    plan = adaptive.planned(runs, cfg)
    done = runs.merge(plan[["dataset", "arm", "seed"]], on=["dataset", "arm", "seed"])
    saved = adaptive.savings(done, cfg).set_index(["dataset", "arm"])
    assert saved.loc[("breastmnist", "vit_b16_pretrained"), "saved_seeds"] == 4
    per_run = runs.loc[runs["arm"] == "vit_b16_pretrained", "device_hours"].iloc[0]
    assert saved.loc[("breastmnist", "vit_b16_pretrained"), "saved_hours"] == pytest.approx(4 * per_run)
    total = adaptive.summary(adaptive.savings(done, cfg))
    assert total["runs_at_max"] == 2 * 3 * 7 and total["runs"] == len(done)


def test_the_round_is_recorded_but_leaves_the_run_hash_alone():
    runs, cfg = planted({"breastmnist": 0.0})
    fixed = dict(cfg, design=dict(cfg["design"], seeds=7))
    a = study_config.run_spec(cfg, "breastmnist", 28, "cnn_small", 1.0, 6)
    b = study_config.run_spec(fixed, "breastmnist", 28, "cnn_small", 1.0, 6)
    assert a.round == 3 and b.round is None and a.config_hash == b.config_hash
    # the first round is the design's run grid
    assert {r["seed"] for r in design.runs(cfg)} == {1, 2, 3}


def test_max_below_initial_is_rejected():
    from scaleaudit.errors import ScaleauditError

    raw = {
        "study": "x",
        "data": {"datasets": [{"flag": "breastmnist"}]},
        "design": {"arms": ["a"], "seeds": {"initial": 5, "max": 4}},
        "recipes": {"r": {"optimizer": "adam", "lr": 1e-3, "batch_size": 8, "epochs": 1}},
        "arms": {"a": {"model": "scaleaudit_cnn_small", "recipe": "r", "group": "small"}},
    }
    with pytest.raises(ScaleauditError, match="max .4. is below initial .5."):
        study_config.validate(raw)
    raw["design"]["seeds"] = {"initial": 2, "max": 4}
    with pytest.raises(ScaleauditError, match="design/seeds"):
        study_config.validate(raw)


def test_report_shows_rounds_decisions_and_compute_saved():
    from pathlib import Path

    from scaleaudit import report

    runs, cfg = planted({"breastmnist": 0.1, "pneumoniamnist": 0.0})
    plan = adaptive.planned(runs, cfg)
    done = runs.merge(plan[["dataset", "arm", "seed"]], on=["dataset", "arm", "seed"])
    res = report.Results.of(done, cfg)
    figs = {name: [Path(f"/figs/{name}_1.png")] for name in ("scores", "calibration", "pareto", "forest")}
    md = report.to_markdown(report.document(res, figs), Path("/"))
    assert "Adaptive seeds" in md and "Lan–DeMets" in md and "Jennison" in md
    assert "| breastmnist @ 28 px | 1 | Vit B16 Pretrained | 1 | 3 | better | round 1 (3 pairs) | decided |" in md
    assert f"{len(done)} of 42 runs trained" in md and "Fewer seeds than designed" not in md
    # the study-level summary is made from round 1 only (3 pairs per dataset)
    assert res.overall["pairs"].tolist() == [6]
    # a planned run that is missing is flagged
    short = report.Results.of(done[~((done["dataset"] == "pneumoniamnist") & (done["seed"] == 4))], cfg)
    assert len(short.missing) == 3
