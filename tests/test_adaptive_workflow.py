"""Adaptive seeds through the real workflow: tiny training, a checkpoint per round, MLflow, the report."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tiny_study
import yaml
from mirror import write_sums

from scaleaudit import jobcontrol
from scaleaudit.synthetic import write_npz

SEEDS = {"initial": 3, "step": 1, "max": 4}  # rounds at 3 and 4 seeds


def config(rope: float) -> dict:
    cfg = yaml.safe_load(yaml.safe_dump(tiny_study.TINY_CONFIG))
    cfg["design"]["seeds"] = dict(SEEDS)
    cfg["recipes"]["fast"] = dict(cfg["recipes"]["tiny"], lr=3e-3)
    cfg["arms"]["cnn_b"] = {"model": "scaleaudit_cnn_small", "recipe": "fast", "group": "large"}
    return cfg | {"verdict": {"rope": rope}}


@pytest.fixture
def study(tmp_path):
    """The workflow in a scratch folder, on a synthetic BreastMNIST with a quarter of the labels flipped (so that
    scores differ between seeds and arms)."""
    mirror = tmp_path / "mirror"
    path = write_npz(mirror / "breastmnist.npz")
    arrays = dict(np.load(path))
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        y = arrays[f"{split}_labels"]
        flip = rng.random(len(y)) < 0.25
        y[flip] = 1 - y[flip]
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    write_sums(mirror)
    work = tiny_study.copy_workflow(tmp_path / "wf")
    return work, tiny_study.env(SCALEAUDIT_MIRROR=str(mirror))


def snakemake(work, env, *args) -> list[str]:
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--profile",
        "workflow/profiles/local",
        "--cores",
        "2",
        "--configfile",
        "tiny.yaml",
        *args,
    ]


def run(work, env, *args) -> str:
    done = subprocess.run(snakemake(work, env, *args), cwd=work, env=env, capture_output=True, text=True, timeout=2700)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def jobs(log: str, rule: str) -> int:
    m = re.search(rf"^{rule}\s+(\d+)\s*$", log, re.MULTILINE)
    return int(m.group(1)) if m else 0


def seeds_run(work) -> set[tuple[str, int]]:
    return {
        (p.parts[-4], int(p.parts[-2].removeprefix("seed")))
        for p in (work / "results" / "tiny" / "runs").glob("*/*/*/seed*/metrics.json")
    }


@pytest.mark.slow
def test_rounds_stop_when_decided_run_to_max_when_not_and_resume_after_a_crash(study):
    from mlflow import MlflowClient

    work, env = study
    (work / "tiny.yaml").write_text(yaml.safe_dump(config(rope=10.0)))

    # a fresh study shows the first round: every arm's seeds 1..initial, then the checkpoint that plans round 2
    dry = run(work, env, "-n")
    assert jobs(dry, "train") == 6 and jobs(dry, "next_round") == 1

    # a very wide ROPE: every comparison is decided (equivalent) after round 1, nothing more runs
    run(work, env)
    assert seeds_run(work) == {(a, s) for a in ("cnn_a", "cnn_b") for s in (1, 2, 3)}
    plan = json.loads((work / "results" / "tiny" / "rounds" / "round2.json").read_text())
    assert plan["runs"] == [] and plan["seeds"] == [4]
    md = (work / "reports" / "tiny.md").read_text()
    assert "| breastmnist @ 28 px | 1 | cnn\\_b | 1 | 3 | equivalent | round 1 (3 pairs) | decided |" in md
    assert "6 of 8 runs trained (2 saved" in md
    assert "Nothing to be done" in run(work, env, "-n")

    # rope 0: nothing can be equivalent and 3-4 noisy pairs decide nothing else, so every cell runs to max. Round 2
    # crashes (one of its runs cannot start: its folder is held, as by a trainer still running elsewhere), then the
    # workflow is started again: it resumes and finishes round 2. (A Ctrl-C raced the tiny runs' few seconds.)
    (work / "tiny.yaml").write_text(yaml.safe_dump(config(rope=0.0)))
    held = work / "results" / "tiny" / "runs" / "breastmnist_28" / "cnn_a" / "frac1.0" / "seed4"
    with jobcontrol.locked_run_folder(held):
        crashed = subprocess.run(snakemake(work, env), cwd=work, env=env, capture_output=True, text=True, timeout=2700)
    seen = crashed.stdout + crashed.stderr
    assert crashed.returncode != 0 and "Finished jobid" in seen, seen[-3000:]
    assert ("cnn_a", 4) not in seeds_run(work) and len(seeds_run(work)) < 8
    assert len(json.loads((work / "results" / "tiny" / "rounds" / "round2.json").read_text())["runs"]) == 2

    before = seeds_run(work)
    again = run(work, env)
    assert jobs(again, "train") == 8 - len(before)  # only the unfinished runs of round 2; round 1 is not retrained
    assert seeds_run(work) == {(a, s) for a in ("cnn_a", "cnn_b") for s in (1, 2, 3, 4)}
    assert not (work / "results" / "tiny" / "rounds" / "round3.json").exists()  # no round past max
    runs = pd.read_csv(work / "results" / "tiny" / "runs.csv")
    assert dict(zip(runs["seed"], runs["round"])) == {1: 1, 2: 1, 3: 1, 4: 2}
    md = (work / "reports" / "tiny.md").read_text()
    assert "| breastmnist @ 28 px | 1 | cnn\\_b | 2 | 4 | undecided | – | max (4) |" in md

    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'results' / 'mlflow.db'}")
    tracked = client.search_runs([client.get_experiment_by_name("scaleaudit/tiny").experiment_id])
    assert (
        sorted((r.data.params["seed"], r.data.params["round"]) for r in tracked)
        == [("1", "1")] * 2 + [("2", "1")] * 2 + [("3", "1")] * 2 + [("4", "2")] * 2
    )

    # a finished study plans nothing more
    assert "Nothing to be done" in run(work, env, "-n")
