"""Command line: one subcommand per workflow step, so Snakemake rules stay thin.

Heavy imports (torch, timm, MLflow, the report stack) happen inside the subcommand that needs them,
so ``--help`` and light steps start fast.
"""

from __future__ import annotations

import argparse
import errno
import json
import re
import sys
from pathlib import Path

from . import __version__, design, devices
from .errors import ScaleauditError
from .files import read_json, write_json
from .provenance import package_versions

NO_SPACE, NOT_WRITABLE = "no space left on device", "the folder is not writable"
WRITE_ERRORS = {
    errno.ENOSPC: NO_SPACE,
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: NOT_WRITABLE,
    errno.EPERM: NOT_WRITABLE,
    errno.EROFS: "read-only file system",
}


def _json_arg(text: str):
    """A JSON value given inline, or ``@file`` to read it from a file."""
    return json.loads(Path(text[1:]).read_text() if text.startswith("@") else text)


def cmd_validate_config(args) -> None:
    from . import config

    if not args.configs and args.inline is None:
        raise ScaleauditError("no config given", "name YAML files, or pass --inline JSON")
    cfg = config.load(*args.configs, overrides=args.inline)
    n = sum(1 for _ in design.runs(cfg))
    rounds = " in the first round (adaptive seeds)" if design.is_adaptive(cfg) else ""
    print(f"{', '.join(args.configs) or 'inline config'}: valid; study {cfg['study']!r}, {n} training runs{rounds}")
    if args.resolved:
        from . import settings

        write_json(args.resolved, cfg | {"settings": settings.resolve(cfg)})


def cmd_fetch_data(args) -> None:
    from . import data, settings

    out = Path(args.out)
    mirror = data.resolve_mirror(args.mirror)
    record = data.fetch(args.dataset, args.size, out, mirror)
    used = settings.record("data.mirror", args.mirror)
    write_json(out.with_suffix(".json"), record | {"versions": package_versions(), "settings": used})
    print(f"{out}: sha256 {record['sha256']} ({record['verified_against']})")


def cmd_fetch_weights(args) -> None:
    from . import models, settings

    out = Path(args.out)
    record = models.resolve_weights(
        args.arm, args.arm_spec, args.weights_dir, args.allow_selfmade, out.parent / "selfmade"
    )
    used = settings.record("weights.dir", args.weights_dir)
    write_json(out, record | {"versions": package_versions(), "settings": used})
    flag = "" if record["published"] else "  [NOT the published weights]"
    print(f"{args.arm}: {record['source']} sha256 {record['sha256'][:16]}{flag}")


def cmd_init_tracking(args) -> None:
    from . import settings, tracking

    if args.system_metrics:
        tracking.check_system_metrics()
    uri = tracking.resolve_uri(args.uri)
    own = tracking.is_default_store(uri)
    record = tracking.init_experiment(
        uri, args.experiment, args.artifact_root, record_dir=Path(args.out).parent if own else None
    )
    write_json(
        args.out,
        record
        | {
            "system_metrics": args.system_metrics,
            "log_model": args.log_model,
            "versions": package_versions(),
            "settings": settings.record("tracking.uri", args.uri),
        },
    )
    print(f"MLflow experiment {record['experiment']!r} (id {record['experiment_id']}) at {uri}")


def cmd_train(args) -> None:
    from . import job, jobcontrol
    from .records import RunSpec
    from .tracking import job_tracking

    spec = RunSpec.from_dict(args.spec)
    weights = read_json(args.weights) if args.weights else None
    tracking = job_tracking(args.tracking) if args.tracking else None
    jobcontrol.stop_with_workflow()
    every = {} if args.checkpoint_every is None else {"checkpoint_every_s": args.checkpoint_every}
    job.run(
        spec,
        read_json(args.data),
        Path(args.out),
        tracking,
        weights,
        threads=args.threads,
        runs_per_gpu=args.runs_per_gpu,
        **every,
    )


def cmd_plan(args) -> None:
    from . import config, plan

    cfg = config.load(*args.configs)
    runs = Path(args.runs) if args.runs else design.run_table_path(cfg)
    measured = args.runs is not None or runs.exists()  # measured stop epochs, once the study has runs
    if measured:
        print(f"plan: stop epochs measured in {runs}", file=sys.stderr)
    estimate = plan.make(
        cfg,
        calibrate_steps=args.calibration_steps,
        gpu_name=args.gpu,
        utilization=args.utilization,
        log=lambda msg: print(msg, file=sys.stderr),
        stops=plan.measured_stops(runs) if measured else None,
        gpu_check=read_json(args.gpu_check) if args.gpu_check else None,
    )
    out = Path(args.out) if args.out else design.plan_path(cfg)
    write_json(out, estimate)
    if not args.brief:
        print(plan.table(estimate))
    print(f"{plan.summary_line(estimate)} ({out})")


def cmd_aggregate(args) -> None:
    from . import aggregate, verify
    from .tracking import job_tracking

    table = aggregate.collect(args.metrics, job_tracking(args.tracking) if args.tracking else None)
    aggregate.write(table, args.out)
    compared = int(table[verify.MLFLOW_CHECKED].sum())
    print(f"{args.out}: {len(table)} runs, {compared} compared with their MLflow runs")


def cmd_shift_eval(args) -> None:
    from . import job, jobcontrol

    jobcontrol.stop_with_workflow()
    weights = read_json(args.weights) if args.weights else None
    record = job.evaluate_shift(
        Path(args.run),
        read_json(args.corrupted),
        read_json(args.data),
        weights,
        args.threads,
        runs_per_gpu=args.runs_per_gpu,
        log=lambda m: print(m, file=sys.stderr, flush=True),
    )
    write_json(args.out, record)
    print(f"{args.out}: {len(record['corrupted'])} corruptions x {len(record['severities'])} severities")


def cmd_aggregate_shift(args) -> None:
    from . import aggregate, shift

    table = shift.table(args.shift)
    aggregate.write(table, args.out)
    print(f"{args.out}: {len(table)} rows of {table[design.RUN_KEY].drop_duplicates().shape[0]} runs")


def cmd_shift_verdict(args) -> None:
    import pandas as pd

    from . import aggregate, shift, testsample, verify
    from .records import read_runs

    cfg = read_json(args.config)
    runs = read_runs(args.runs)
    # as the report: the given run folders are the table's runs, and their predictions give the clean rows' test
    # sample variance (a missing predictions.npz is named, exit 2)
    verify.rows(runs, args.metrics, args.runs)
    scores = testsample.load(args.metrics, cfg["verdict"]["metric"]).scores
    table = shift.study_verdicts(runs, pd.read_csv(args.shift), cfg, scores)
    aggregate.write(table, args.out)
    print(f"{args.out}: {len(table)} comparisons")


def cmd_next_round(args) -> None:
    from . import adaptive, aggregate, testsample

    cfg = read_json(args.config)
    if not design.is_adaptive(cfg):
        raise ScaleauditError(
            "design.seeds is a fixed count or list: there are no rounds to plan",
            "give design.seeds as {initial, step, max} for adaptive seeds",
        )
    table = aggregate.collect(args.metrics)
    # the test sample's variance in every look, as in the report: the runs' predictions beside their metrics.json
    scores = testsample.load(args.metrics, cfg["verdict"]["metric"]).scores
    runs = adaptive.next_round(table, cfg, args.round, scores)
    cells = sorted({(r["dataset"], r["size"], r["fraction"]) for r in runs})
    write_json(
        args.out,
        {"round": args.round, "seeds": design.round_seeds(design.adaptive_seeds(cfg), args.round), "runs": runs},
    )
    print(
        f"round {args.round}: {len(runs)} runs in {len(cells)} undecided cell(s)"
        + "".join(f"\n  {d} @ {s} px, fraction {f:g}" for d, s, f in cells)
    )


def cmd_report(args) -> None:
    from . import report

    report.build(
        args.runs,
        args.config,
        args.out,
        assets=args.assets,
        metrics=args.metrics,
        shift_csv=args.shift,
        plan_json=args.plan,
    )
    print(f"report written to {args.out}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scaleaudit",
        description="Do large pretrained vision models pay off on narrow medical-imaging tasks? "
        "The steps of the study; the Snakemake workflow calls them (see README.md).",
    )
    p.add_argument("--version", action="version", version=f"scaleaudit {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("validate-config", help="check study config files (merged in order) against the schema")
    s.add_argument("configs", nargs="*", help="YAML files, later ones override earlier ones")
    s.add_argument("--inline", type=_json_arg, help="a config as JSON (or @file), merged over the files")
    s.add_argument("--resolved", help="also write the validated config with defaults filled in (JSON)")
    s.set_defaults(func=cmd_validate_config)

    s = sub.add_parser("fetch-data", help="download (or copy from a mirror) and verify one MedMNIST file")
    s.add_argument("--dataset", required=True, help="MedMNIST 2D flag, e.g. breastmnist")
    s.add_argument("--size", type=int, default=28, help="image size: 28, 64, 128 or 224 (default 28)")
    s.add_argument("--out", required=True, help="destination .npz; provenance goes next to it as .json")
    s.add_argument("--mirror", help="local mirror folder (default: $SCALEAUDIT_MIRROR, else download)")
    s.set_defaults(func=cmd_fetch_data)

    s = sub.add_parser("fetch-weights", help="find an arm's pretrained weights and record their provenance")
    s.add_argument("--arm", required=True, help="arm name")
    s.add_argument("--arm-spec", type=_json_arg, required=True, help="the arm's config (JSON, or @file)")
    s.add_argument("--weights-dir", help="local weights folder (default: $SCALEAUDIT_WEIGHTS_DIR, else the hub)")
    s.add_argument("--allow-selfmade", action="store_true", help="make a flagged stand-in when nothing can be had")
    s.add_argument("--out", required=True, help="provenance record (JSON)")
    s.set_defaults(func=cmd_fetch_weights)

    s = sub.add_parser("init-tracking", help="create the study's MLflow experiment once, before jobs fan out")
    s.add_argument("--uri", help="tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite under results/)")
    s.add_argument("--experiment", required=True, help="experiment name")
    s.add_argument("--artifact-root", default="results/mlartifacts", help="artifact folder for a SQLite store")
    s.add_argument(
        "--system-metrics", action="store_true", help="training jobs log MLflow's system metrics (needs psutil)"
    )
    s.add_argument(
        "--log-model", action="store_true", help="training jobs also log their selected weights as an MLflow model"
    )
    s.add_argument("--out", required=True, help="where to record the experiment (JSON)")
    s.set_defaults(func=cmd_init_tracking)

    s = sub.add_parser("train", help="train and test one run (resumes from its checkpoint)")
    s.add_argument("--spec", type=_json_arg, required=True, help="resolved run spec (JSON, or @file)")
    s.add_argument("--data", required=True, help="the dataset's provenance record written by fetch-data")
    s.add_argument("--weights", help="the arm's weights record written by fetch-weights")
    s.add_argument("--tracking", help="the experiment record written by init-tracking (omit: no MLflow)")
    s.add_argument("--out", required=True, help="run folder: metrics.json, predictions.npz, checkpoint")
    s.add_argument("--threads", type=int, help="CPU threads for torch")
    s.add_argument(
        "--checkpoint-every",
        type=float,
        metavar="SECONDS",
        help="checkpoint after the first epoch, then at most this often, and after the last (default 30)",
    )
    s.add_argument(
        "--runs-per-gpu",
        type=int,
        default=1,
        help="runs sharing this GPU at once: each is charged 1/n of its energy and hours (default 1)",
    )
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("plan", help="estimate the study's runs, FLOPs, device-hours and energy before it starts")
    s.add_argument("configs", nargs="+", help="YAML files, later ones override earlier ones")
    s.add_argument(
        "--out", help="plan (JSON) for the report to set against the measured cost (default: results/<study>/plan.json)"
    )
    s.add_argument(
        "--gpu",
        help="estimate GPU arms for this device (its full CUDA name, see devices.py) from FLOPs; "
        f"default: measured on this machine's GPU, else {devices.DEFAULT_GPU}",
    )
    s.add_argument(
        "--utilization",
        type=float,
        default=devices.DEFAULT_UTILIZATION,
        help="share of the GPU's bf16 peak where GPU arms are estimated from FLOPs (default %(default)s)",
    )
    s.add_argument("--calibration-steps", type=int, default=2, help="timed training steps per arm (0: no calibration)")
    s.add_argument(
        "--runs",
        help="run table whose median epochs_run per arm replaces the modelled early stop "
        "(default: results/<study>/runs.csv if it exists)",
    )
    s.add_argument(
        "--gpu-check",
        help="figures of benchmarks/gpu_check.py --out: its measured share of the bf16 peak per model (and kNN rate) "
        "replace the assumed ones",
    )
    s.add_argument("--brief", action="store_true", help="print only the summary line")
    s.set_defaults(func=cmd_plan)

    s = sub.add_parser("aggregate", help="one table of all runs from their metrics.json files")
    s.add_argument("metrics", nargs="+", help="metrics.json files")
    s.add_argument(
        "--tracking", help="the study's tracking record (init-tracking's): compare each run with its MLflow run"
    )
    s.add_argument("--out", required=True, help="CSV table")
    s.set_defaults(func=cmd_aggregate)

    s = sub.add_parser("shift-eval", help="score a finished run's kept weights on a MedMNIST-C corrupted test set")
    s.add_argument("--run", required=True, help="the run folder (metrics.json, run_config.json, best.safetensors)")
    s.add_argument("--corrupted", required=True, help="the corrupted set's record (results/data/corrupted/*.json)")
    s.add_argument("--data", required=True, help="the clean dataset's record (results/data/*.json)")
    s.add_argument("--weights", help="the arm's pretrained weights record (pretrained arms)")
    s.add_argument("--threads", type=int, help="CPU threads")
    s.add_argument(
        "--runs-per-gpu", type=int, default=1, help="jobs sharing this GPU at once (its slot on a multi-GPU node)"
    )
    s.add_argument("--out", required=True, help="shift.json of the run")
    s.set_defaults(func=cmd_shift_eval)

    s = sub.add_parser("aggregate-shift", help="one table (run x corruption x severity) from the runs' shift.json")
    s.add_argument("shift", nargs="+", help="shift.json files")
    s.add_argument("--out", required=True, help="CSV table")
    s.set_defaults(func=cmd_aggregate_shift)

    s = sub.add_parser(
        "shift-verdict",
        help="the verdict on clean and on corrupted test sets, and the change of gain (the report's shift table)",
    )
    s.add_argument("--runs", required=True, help="the run table (runs.csv)")
    s.add_argument("--shift", required=True, help="the shift table (runs_shift.csv)")
    s.add_argument(
        "--metrics",
        nargs="+",
        required=True,
        metavar="METRICS_JSON",
        help="the runs' metrics.json files (predictions.npz beside each): the clean rows take the test sample's "
        "variance, as the report's do",
    )
    s.add_argument(
        "--config", required=True, help="the resolved config (verdict metric, ROPE, confidence, design, seeds)"
    )
    s.add_argument("--out", required=True, help="CSV table")
    s.set_defaults(func=cmd_shift_verdict)

    s = sub.add_parser("next-round", help="adaptive seeds: the runs of the next round (comparisons still undecided)")
    s.add_argument(
        "metrics", nargs="+", help="metrics.json files of every run of the earlier rounds (predictions.npz beside each)"
    )
    s.add_argument("--config", required=True, help="resolved study config (JSON) written by validate-config")
    s.add_argument("--round", type=int, required=True, help="the round to plan (2, 3, ...)")
    s.add_argument("--out", required=True, help="the round's runs (JSON)")
    s.set_defaults(func=cmd_next_round)

    s = sub.add_parser("report", help="render the study report (PDF and Markdown) from the run table")
    s.add_argument("--runs", required=True, help="CSV table written by aggregate")
    s.add_argument("--config", required=True, help="resolved study config (JSON) written by validate-config")
    s.add_argument("--assets", help="folder for figures and the report source (default: next to --out)")
    s.add_argument(
        "--metrics",
        nargs="+",
        metavar="METRICS_JSON",
        help="the runs' metrics.json files (predictions.npz beside each): learning curves and reliability "
        "diagrams; without them the report says they were not drawn",
    )
    s.add_argument("--out", required=True, help="PDF file; the Markdown version goes next to it (.md)")
    s.add_argument("--shift", help="the shift table (runs_shift.csv): adds the robustness section")
    s.add_argument(
        "--plan",
        help="the plan `scaleaudit plan` wrote before the study (plan.json): sets the estimate against the cost",
    )
    s.set_defaults(func=cmd_report)
    return p


# How a full disk (or a read-only or forbidden folder) surfaces when a library, not Python, wrote:
# torch's zip writer, SQLite via SQLAlchemy/MLflow, and Rust's io errors (typst) carry no errno.
# The text -> what to tell the user: torch's "file write failed" is almost always a full disk.
WRITE_FAILURE_TEXTS = {
    "no space left on device": NO_SPACE,
    "disk quota exceeded": "disk quota exceeded",
    "database or disk is full": NO_SPACE,
    "file write failed": f"{NO_SPACE} (or {NOT_WRITABLE})",
    "read-only file system": "read-only file system",
    "attempt to write a readonly database": NOT_WRITABLE,
}
RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def write_failure(exc: BaseException) -> str | None:
    """Why ``exc`` (or an error it was raised from) is a write refused by the disk or the folder (e.g. no space left
    on device); None when it is not one."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRORS:
            return WRITE_ERRORS[exc.errno]
        text = str(exc).lower()
        if found := next((why for t, why in WRITE_FAILURE_TEXTS.items() if t in text), None):
            return found
        if found := next((WRITE_ERRORS[int(c)] for c in RUST_OS_ERROR.findall(text) if int(c) in WRITE_ERRORS), None):
            return found
        exc = exc.__cause__ or exc.__context__
    return None


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except ScaleauditError as exc:
        print(f"scaleaudit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if not (why := write_failure(exc)):
            raise
        # Outputs are written atomically, so nothing half-written was left behind.
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(
            f"scaleaudit {args.command}: error: could not write: {why} ({first})\n  fix: free disk space or fix the "
            "folder's permissions, then run the step again (no partial output was kept; a training job "
            "resumes from its last checkpoint)",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
