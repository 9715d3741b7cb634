"""Which comparisons get more seeds: adaptive rounds on planted run tables."""

from __future__ import annotations

import pandas as pd
import pytest
from runtable import make_config, make_runs

from scaleaudit import adaptive, design
from scaleaudit import config as study_config

SEEDS = {"initial": 3, "step": 2, "max": 7, "spending": "pocock"}  # looks at 3, 5, 7 seeds
DATASETS = (("breastmnist", 28), ("pneumoniamnist", 28))
# A gain the first look decides: a claim is on the expected gain, and 3 seeds x 2 datasets of an arm, none diverged,
# leave its divergence rate bounded at 46 % only; from AUC 0.6 a diverged run (~0.5) costs little, so +0.35 stays clear.
BASE, CLEAR = 0.6, 0.35


def planted(gains: dict, seeds: int = 7, base: float = BASE, **kw) -> tuple[pd.DataFrame, dict]:
    """Runs of every seed up to ``seeds`` with the large arm's gain per dataset, and the adaptive config."""
    tables = [
        make_runs({"vit_b16_pretrained": g}, seeds=seeds, datasets=((d, 28),), seed=i, base=base, **kw)
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
    runs, cfg = planted({"breastmnist": CLEAR, "pneumoniamnist": 0.0})
    first = upto(runs, 3)
    v = adaptive.verdict(first, cfg).set_index("dataset")
    assert v.loc["breastmnist", "decision"] == "better" and v.loc["pneumoniamnist", "decision"] == "undecided"
    nxt = pd.DataFrame(adaptive.next_round(first, cfg, 2))
    assert set(nxt["dataset"]) == {"pneumoniamnist"} and set(nxt["seed"]) == {4, 5}
    # every arm of the cell, so the pairs stay complete and the small partner is chosen as before
    assert set(nxt["arm"]) == {"cnn_small", "resnet18_scratch", "vit_b16_pretrained"} and len(nxt) == 6


def test_a_decided_comparison_is_frozen_and_never_gets_more_runs():
    runs, cfg = planted({"breastmnist": CLEAR, "pneumoniamnist": 0.0})
    # later seeds of the decided cell (had they run) would pull its mean onto the ROPE: they must change nothing
    late = (runs["dataset"] == "breastmnist") & (runs["seed"] > 3) & (runs["arm"] == "vit_b16_pretrained")
    runs.loc[late, "test_auc"] -= CLEAR
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
    runs, cfg = planted({"breastmnist": 0.0, "pneumoniamnist": 0.0})
    second = runs[runs["arm"] == "vit_b16_pretrained"].assign(arm="vit_probe")
    second["test_auc"] += CLEAR  # decided after round 1
    runs = pd.concat([runs, second], ignore_index=True)
    cfg["arms"]["vit_probe"] = dict(cfg["arms"]["vit_b16_pretrained"])
    cfg["design"]["arms"].append("vit_probe")
    nxt = pd.DataFrame(adaptive.next_round(upto(runs, 3), cfg, 2))
    assert set(nxt["arm"]) == {"cnn_small", "resnet18_scratch", "vit_b16_pretrained"}


def test_savings_count_the_seeds_and_hours_not_run():
    runs, cfg = planted({"breastmnist": CLEAR, "pneumoniamnist": 0.0})
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

    runs, cfg = planted({"breastmnist": CLEAR, "pneumoniamnist": 0.0})
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


AGREEING = {"initial": 75, "step": 5, "max": 85, "spending": "pocock"}  # test_testsample's 75 seeds, then 2 looks


def adaptive_agreeing(n_test: int = 24):
    """Round 1 of a comparison whose seeds agree on a tiny test set (test_testsample), under adaptive seeds, with each
    run's metric on the test resamples."""
    from test_testsample import agreeing_scores

    runs, scores = agreeing_scores(n_test, seeds=AGREEING["initial"])
    cfg = make_config(runs)
    cfg["design"]["seeds"] = dict(AGREEING)
    return runs, cfg, scores


def test_the_next_round_is_decided_with_the_test_sample_as_the_report_is():
    runs, cfg, scores = adaptive_agreeing()
    seeds_only = adaptive.verdict(runs, cfg).iloc[0]
    assert seeds_only["decision"] == "better" and adaptive.next_round(runs, cfg, 2) == []  # about these 24 images
    both = adaptive.verdict(runs, cfg, scores).iloc[0]
    assert both["decision"] == "undecided" and both["test_var"] > 10 * both["seed_var"]
    assert both["lo"] < seeds_only["lo"] and both["diff"] == seeds_only["diff"]
    nxt = pd.DataFrame(adaptive.next_round(runs, cfg, 2, scores))
    assert set(nxt["seed"]) == set(range(76, 81)) and len(nxt) == 3 * 5
    assert len(adaptive.planned(runs, cfg, scores)) == len(list(design.runs(cfg))) + 3 * 5


def test_next_round_cli_reads_the_predictions_and_names_a_missing_file(tmp_path, capsys):
    import json

    from runtable import write_run_folders

    from scaleaudit import aggregate, cli, testsample

    runs, cfg = planted({"breastmnist": 0.0}, seeds=3)
    paths = [str(p) for p in write_run_folders(runs, tmp_path / "runs", n_test=30)]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    args = ["next-round", "--round", "2", "--config", str(tmp_path / "config.json"), "--out", str(tmp_path / "r2.json")]
    assert cli.main(args + paths) == 0
    scores = testsample.load(paths, "auc").scores
    expected = adaptive.next_round(aggregate.collect(paths), cfg, 2, scores)
    assert json.loads((tmp_path / "r2.json").read_text())["runs"] == expected
    gone = tmp_path / "runs" / "breastmnist_28" / "cnn_small" / "frac1.0" / "seed2" / "predictions.npz"
    gone.unlink()
    (tmp_path / "r2.json").unlink()
    assert cli.main(args + paths) == 2
    assert f"{gone} is missing" in capsys.readouterr().err and not (tmp_path / "r2.json").exists()


def test_the_report_of_adaptive_seeds_takes_the_test_sample(tmp_path):
    from pathlib import Path

    from runtable import write_run_folders

    from scaleaudit import report
    from scaleaudit.report import curves

    runs, cfg = planted({"breastmnist": CLEAR, "pneumoniamnist": 0.0}, seeds=3)
    paths = write_run_folders(runs, tmp_path, n_test=60)
    given = curves.load(paths, runs)
    res = report.Results.of(runs, cfg, curves=given)
    assert (res.comparisons["test_var"] > 0).all() and list(res.test_sample["test_images"]) == [60, 60]
    expected = adaptive.verdict(runs, cfg, given.test_sample.scores)
    assert res.comparisons["adj_lo"].tolist() == pytest.approx(expected["adj_lo"].tolist())
    figs = {name: [Path(f"/figs/{name}_1.png")] for name in ("scores", "calibration", "pareto", "forest")}
    md = " ".join(report.to_markdown(report.document(res, figs), Path("/")).split())
    assert "With adaptive seeds each look's repeated interval takes the test-sample variance" in md
