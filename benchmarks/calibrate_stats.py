"""Calibrate the verdict by simulation: coverage, false decisions and power of scaleaudit's statistics.

Prints, for 3, 5, 10 and 20 seeds and normal or heavy-tailed (t, 4 df) seed noise of sd 0.02 per paired
difference: the coverage of the per-cell 95 % interval, false "better" / "worse" / "equivalent" with the true
difference on a ROPE edge (±0.01), power (P(better)) at +0.02 and +0.05, the same for the across-task summary, and
how often a study with five large arms on the ROPE edge says "Scale pays". The percentile bootstrap that scaleaudit
used before is measured beside it as the reference. Adaptive seeds (3, 5, ..., 15): coverage at stopping, false
"better" on the ROPE edge and the expected seeds per comparison at true gains 0, 0.01, 0.02 and 0.05, for the
repeated confidence intervals and for the fixed-n interval re-checked each round (which inflates them). The scale
axis: coverage and false "better" of a ladder's gain per 10x (calibration.trend_table). One row per scenario of
issue 19 (calibration.scenarios): heterogeneous datasets, correlated val/test with 3 small arms, beta noise near
AUC 1, divergence 10 % and 20 % (and the divergence rules, calibration.divergence_table), per-cell FDR power,
test-sample noise crossed with seeds, and the sequential design with test-sample variance. ``--write`` stores the
figures (all but the scale axis's) in
src/scaleaudit/calibration.json, which the report's Methods quotes.

    python benchmarks/calibrate_stats.py [--replicates 20000] [--write]
"""

from __future__ import annotations

import argparse
import json
import time
from importlib import resources

from scaleaudit import calibration


def show_cells(rows: list[dict], title: str) -> None:
    print(f"\n{title}")
    print(
        f"{'noise':6} {'seeds':>5} {'coverage':>9} {'better@+rope':>13} {'worse@-rope':>12} {'equiv@+rope':>12} "
        f"{'P(better)+0.02':>15} {'P(better)+0.05':>15} {'equiv@0':>8}"
    )
    for r in rows:
        print(
            f"{r['noise']:6} {r['seeds']:5d} {r['coverage']:9.3f} {r['false_better']:13.3f} {r['false_worse']:12.3f} "
            f"{r['false_equivalent']:12.3f} {r['power_0.02']:15.3f} {r['power_0.05']:15.3f} {r['equivalent_at_0']:8.3f}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--replicates", type=int, default=20000, help="simulated studies per setting (default 20000)")
    p.add_argument("--write", action="store_true", help="store the figures in src/scaleaudit/calibration.json")
    args = p.parse_args()
    start = time.perf_counter()
    t = calibration.table(args.replicates)
    ref = calibration.table(min(args.replicates, 4000), interval=calibration.percentile_bootstrap)
    print(
        f"scaleaudit verdict calibration: {args.replicates} replicates per setting, confidence {t['confidence']:.0%}, "
        f"ROPE ±{t['rope']:g}, sd of a paired difference {t['seed_sd']:g} (nominal: coverage 0.95, each false "
        f"decision <= 0.025)"
    )
    show_cells(t["cell"], "Per cell (paired t-interval, family of one):")
    show_cells(ref["cell"], f"Reference, the percentile bootstrap used before ({ref['replicates']} replicates):")
    print(
        f"\nAcross tasks ({t['tasks'][0]['tasks']} tasks of unequal noise; mean of task means, Welch t-interval; "
        "true mean on the ROPE edge +0.01):"
    )
    print(f"{'noise':6} {'seeds':>5} {'coverage':>9} {'better@+rope':>13}")
    for r in t["tasks"]:
        print(f"{r['noise']:6} {r['seeds']:5d} {r['coverage']:9.3f} {r['false_better']:13.3f}")
    print(
        f"\nStudy level: {t['study'][0]['arms']} large arms all on the ROPE edge, Bonferroni over the arms "
        "(nominal <= 0.05):"
    )
    print(f"{'noise':6} {'seeds':>5} {'false Scale pays':>17}")
    for r in t["study"]:
        print(f"{r['noise']:6} {r['seeds']:5d} {r['false_scale_pays']:17.3f}")
    print(
        f"\nScale axis: the gain per 10x of a ladder (3 rungs at ViT-Ti/S/B's log10 parameters, a bend of sd "
        f"{calibration.BEND_SD:g} per rung plus seed noise of sd {calibration.SEED_SD:g} per run; scaling.slope_interval), "
        "beside a regression on every run (pooled), and across 7 tasks:"
    )
    print(
        f"{'noise':6} {'seeds':>5} {'coverage':>9} {'better@+rope':>13} {'5 rungs':>8} {'pooled cov':>11} "
        f"{'pooled better':>14} {'tasks cov':>10} {'tasks better':>13} {'tasks P(+0.05)':>15}"
    )
    for r in calibration.trend_table(args.replicates):
        print(
            f"{r['noise']:6} {r['seeds']:5d} {r['coverage']:9.3f} {r['false_better']:13.3f} "
            f"{r['false_better_5_rungs']:8.3f} {r['pooled_coverage']:11.3f} {r['pooled_false_better']:14.3f} "
            f"{r['tasks_coverage']:10.3f} {r['tasks_false_better']:13.3f} {r['tasks_power_0.05']:15.3f}"
        )
    seq = calibration.sequential_table(args.replicates)
    s = seq["seeds"]
    print(
        f"\nAdaptive seeds {s}: looks after each round, each comparison stopped at its first decision; repeated "
        "confidence intervals (Lan-DeMets spending) against the fixed-n t-interval re-checked each round:"
    )
    print(
        f"{'method':16} {'noise':6} {'true':>6} {'coverage':>9} {'better':>7} {'equiv':>7} {'worse':>7} "
        f"{'undecided':>9} {'E[seeds]':>9}"
    )
    for r in seq["rows"]:
        if "family" in r:
            continue
        print(
            f"{r['method']:16} {r['noise']:6} {r['true_diff']:+6.2f} {r['coverage']:9.3f} {r['better']:7.3f} "
            f"{r['equivalent']:7.3f} {r['worse']:7.3f} {r['undecided']:9.3f} {r['mean_seeds']:9.2f}"
        )
    print("(true +0.01 is the ROPE edge: there `better` is a false claim, nominal <= 0.025)")
    for r in (r for r in seq["rows"] if "family" in r):
        print(
            f"{r['method']:16} {r['noise']:6}: {r['family']} comparisons on the ROPE edge, Bonferroni: any false "
            f"better {r['any_better']:.3f} (nominal <= 0.05)"
        )
    scen = calibration.scenarios(min(args.replicates, 4000))
    print(
        "\nScenarios (5 seeds, the sequential row adaptive; nominal coverage 0.95, false better <= 0.025; FDR row: power "
        "and false discovery rate):"
    )
    print(f"{'scenario':44} {'coverage':>9} {'false better':>13} {'P(better)+0.05':>15} {'FDR':>6}")
    for r in scen:
        print(
            f"{r['scenario']:44} {r.get('coverage', float('nan')):9.3f} {r.get('false_better', float('nan')):13.3f} "
            f"{r.get('power_0.05', float('nan')):15.3f} {r.get('fdr', float('nan')):6.3f}"
        )
    for r in (r for r in scen if "test_share" in r):
        print(
            f"(test sample: the seeds' interval alone covers {r['coverage_seeds_only']:.3f}; the test sample holds "
            f"{r['test_share']:.0%} of the variance)"
        )
    for r in (r for r in scen if r["scenario"] == calibration.SEQUENTIAL_TEST_SAMPLE):
        print(
            f"(sequential, seeds {r['seeds']}, gain on the ROPE edge: the seeds' repeated interval alone covers "
            f"{r['coverage_seeds_only']:.3f} and says better in {r['better_seeds_only']:.3f}; mean seeds "
            f"{r['mean_seeds']:.1f})"
        )
    print("(divergence: the truth is the expected gain, failures included; the arm's rate pooled over its runs)")
    print(
        f"\nDivergence rules ({calibration.STUDY_DATASETS} cells x 5 seeds per arm; expected gain on the ROPE edge, "
        "then +0.05):"
    )
    print(f"{'rate':>5} {'rule':12} {'coverage':>9} {'false better':>13} {'P(better)+0.05':>15}")
    div = calibration.divergence_table(min(args.replicates, 2000))
    for r in div:
        print(f"{r['rate']:5.0%} {r['rule']:12} {r['coverage']:9.3f} {r['false_better']:13.3f} {r['power_0.05']:15.3f}")
    print(f"\n({time.perf_counter() - start:.0f} s)")
    if args.write:
        path = resources.files("scaleaudit").joinpath("calibration.json")
        path.write_text(json.dumps(t | {"sequential": seq, "scenarios": scen, "divergence": div}, indent=1) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
