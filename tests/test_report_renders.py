"""Every study the config accepts gets a report: one arm, no large/small pair, MedMNIST-C with no pair, one seed,
every run diverged. Where there is no verdict, the report says why instead of crashing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from runtable import make_config, make_runs
from test_shift import _shift_table

from scaleaudit import report


def _only(arms):
    def pick(runs):
        return runs[runs["arm"].isin(arms)].reset_index(drop=True), list(arms)

    return pick


def _diverged(runs):
    runs = runs.copy()
    scores = [c for c in runs.columns if c.startswith(("test_", "val_"))]
    runs[scores] = np.nan
    return runs, None


SMALL, LARGE = ["cnn_small", "resnet18_scratch"], ["vit_b16_pretrained"]
# name -> (seeds, how the run table is cut, with MedMNIST-C, what the report says instead of a verdict)
STUDIES = {
    "one arm": (3, _only(["cnn_small"]), False, ["Overall: No verdict: the study has no large arm paired"]),
    "no large arm": (3, _only(SMALL), False, ["Overall: No verdict: the study has no large arm paired"]),
    "no small arm": (3, _only(LARGE), False, ["fraction 1: no small arm in this cell."]),
    "MedMNIST-C, no large arm": (3, _only(SMALL), True, ["No verdict under shift: the study has no large arm"]),
    "MedMNIST-C, no small arm": (
        3,
        _only(LARGE),
        True,
        ["No verdict under shift: no large arm (Vit B16 Pretrained) has a small partner"],
    ),
    "one seed": (1, lambda r: (r, None), False, ["1 pair(s): at least 3 needed for a decision."]),
    "every run diverged": (
        3,
        _diverged,
        True,
        ["Left out of the pairs: 9 run(s)", "| 0 of 3 |", "No verdict under shift"],
    ),
}


@pytest.mark.parametrize("name", STUDIES)
def test_every_study_renders_and_says_why_there_is_no_verdict(tmp_path, name):
    seeds, cut, with_shift, expected = STUDIES[name]
    runs, arms = cut(make_runs(seeds=seeds))
    config = make_config(runs)
    config["design"]["arms"] = arms or config["design"]["arms"]
    runs.to_csv(tmp_path / "runs.csv", index=False)
    (tmp_path / "config.json").write_text(json.dumps(config))
    shift_csv = None
    if with_shift:
        shift_csv = tmp_path / "runs_shift.csv"
        _shift_table(runs, {}).to_csv(shift_csv, index=False)
    pdf = tmp_path / "r.pdf"
    report.build(tmp_path / "runs.csv", tmp_path / "config.json", pdf, assets=tmp_path / "a", shift_csv=shift_csv)
    md = pdf.with_suffix(".md").read_text()
    assert pdf.stat().st_size > 0 and "nan" not in md.split("## Appendix")[0].lower()
    for text in expected:
        assert text in md
