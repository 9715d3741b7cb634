"""Deployment as a user meets it: the wheel outside the checkout, the catalog's .test run with the
default profile and `snakemake --report`, and the workflow used as a Snakemake module elsewhere."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import tiny_study
import yaml
from mirror import REPO

import scaleaudit

NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".venv-medmnistc",
    "results",
    "logs",
    ".snakemake",
    "dist",
    "build",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    "reports",
    "report.html",
    "mlruns",
)


def run(cmd, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, **kw)
    # Snakemake's first failed job (rule, log, command) is often far above the end of its output
    failed = done.stderr.find("Error in rule")
    first = done.stderr[failed : failed + 3000] if failed >= 0 else ""
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-3000:]}\n{first}\n...\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_wheel_works_outside_the_checkout(tmp_path, tiny_mirror):
    src = tmp_path / "src-copy"  # build from a copy: building writes egg-info into the source tree
    shutil.copytree(REPO, src, ignore=NOT_SOURCE)
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(src)])
    wheel = next(dist.glob("*.whl"))
    sdist = next(dist.glob("*.tar.gz"))
    assert wheel.name == f"scaleaudit-{scaleaudit.__version__}-py3-none-any.whl" and sdist.exists()
    shipped = set(zipfile.ZipFile(wheel).namelist())
    for data_file in ("config.schema.yaml", "medmnist_info.json", "published.json", "report/templates/summary.j2"):
        assert f"scaleaudit/{data_file}" in shipped
    print(f"wheel {wheel.stat().st_size / 1024:.0f} KiB, sdist {sdist.stat().st_size / 1024:.0f} KiB")

    # A fresh venv outside the checkout. Its dependencies are the tested ones of this interpreter (a .pth
    # line adds their folder after its own, so no GBs of torch are installed again); scaleaudit itself
    # comes only from the wheel: a path line does not run the editable-install hooks of that folder.
    fresh = tmp_path / "fresh"
    venv.create(fresh, with_pip=True)
    py = fresh / "bin" / "python"
    purelib = run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    (Path(purelib) / "tested_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([str(py), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)])

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in tiny_study.env().items() if k != "PYTHONPATH"} | {
        "PATH": f"{fresh / 'bin'}:{os.environ['PATH']}"
    }
    where = run([str(py), "-c", "import scaleaudit; print(scaleaudit.__file__)"], cwd=work, env=env).stdout.strip()
    assert where.startswith(purelib) and not where.startswith(str(REPO)), where
    assert run(["scaleaudit", "--version"], cwd=work, env=env).stdout.strip() == f"scaleaudit {scaleaudit.__version__}"
    prose = "from scaleaudit.report import prose; print(prose.text('results', 'metrics_caption'))"
    caption = run([str(py), "-c", prose], cwd=work, env=env).stdout.strip()
    assert caption.startswith("Test metrics per arm; seeds:")  # templates shipped

    (work / "study.yaml").write_text(yaml.safe_dump(tiny_study.TINY_CONFIG))
    checked = run(["scaleaudit", "validate-config", "study.yaml"], cwd=work, env=env)
    assert "valid; study 'tiny', 4 training runs" in checked.stdout
    run(
        [
            "scaleaudit",
            "fetch-data",
            "--dataset",
            "breastmnist",
            "--out",
            "data/breastmnist_28.npz",
            "--mirror",
            str(tiny_mirror),
        ],
        cwd=work,
        env=env,
    )
    (work / "spec.json").write_text(json.dumps(tiny_study.spec(epochs=1).to_dict()))
    run(
        [
            "scaleaudit",
            "train",
            "--spec",
            "@spec.json",
            "--data",
            "data/breastmnist_28.json",
            "--out",
            "run",
            "--threads",
            "1",
        ],
        cwd=work,
        env=env,
    )
    metrics = json.loads((work / "run" / "metrics.json").read_text())
    assert metrics["epochs_run"] == 1 and metrics["provenance"]["versions"]["scaleaudit"] == scaleaudit.__version__


def catalog_copy(dest: Path) -> Path:
    """A checkout as users have it: the workflow, the root `profiles` link and the catalog's .test config."""
    work = tiny_study.copy_workflow(dest)
    (work / "profiles").symlink_to("workflow/profiles")
    shutil.copytree(REPO / ".test", work / ".test")
    return work


KEY = ["dataset", "size", "fraction", "arm", "seed"]


def shift_steps_ran(work: Path, study: str) -> None:
    """MedMNIST-C built once in its own env, every run's kept weights scored (a linear probe's too), the verdict and
    its report section, the MLflow models of tracking.log_model."""
    results = work / "results" / study
    record = json.loads((work / "results" / "data" / "corrupted" / "breastmnist_28.json").read_text())
    assert record["corruptions"][0] == "pixelate" and record["versions"]["medmnistc"] == "0.1.0"
    runs = pd.read_csv(results / "runs.csv")
    shifted = pd.read_csv(results / "runs_shift.csv")
    assert len(shifted) == len(runs) * (1 + 7 * 5)  # runs x (clean + 7 corruptions x 5 severities)
    clean = shifted[shifted["severity"] == 0].merge(runs, on=KEY)
    assert len(clean) == len(runs) and (clean["auc"] == clean["test_auc"]).all()  # the kept weights are the tested ones
    verdict = pd.read_csv(results / "shift_verdict.csv")
    assert record["families"] == {
        "pixelate": "digital",
        "jpeg_compression": "digital",
        "speckle_noise": "noise",
        "motion_blur": "blur",
        "brightness_up": "color",
        "brightness_down": "color",
        "contrast_down": "color",
    }  # medmnistc's own grouping of BreastMNIST's corruptions
    assert list(verdict["condition"]) == ["clean", "blur", "color", "digital", "noise", "all"]  # families, then all
    assert verdict["reading"].fillna("").str.len().iloc[1:].gt(0).all()
    assert "Robustness under acquisition shift" in (work / "reports" / f"{study}.md").read_text()
    assert (results / "report" / "shift_severity.png").exists()
    client = mlflow.MlflowClient(f"sqlite:///{work / 'results' / 'mlflow.db'}")
    for run_id in runs["mlflow_run_id"]:
        names = {a.path for a in client.list_artifacts(run_id)} | {
            a.path for a in client.list_artifacts(run_id, "model")
        }
        assert {"best.safetensors", "model/MLmodel"} <= names


@pytest.mark.slow
def test_catalog_test_config_runs_with_the_default_profile_and_gives_an_html_report(tmp_path, tiny_mirror):
    work = catalog_copy(tmp_path / "repo")
    env = tiny_study.env(SCALEAUDIT_MIRROR=str(tiny_mirror))
    snakemake = [sys.executable, "-m", "snakemake", "--directory", ".test"]
    done = run([*snakemake, "--cores", "2"], cwd=work, env=env)
    assert "Using workflow specific profile profiles/default" in done.stdout + done.stderr
    test_dir = work / ".test"
    resolved = json.loads((test_dir / "results" / "catalog-test" / "config.resolved.json").read_text())
    assert resolved["settings"]["data.mirror"] == {
        "value": str(tiny_mirror),
        "source": "$SCALEAUDIT_MIRROR",
        "env": "SCALEAUDIT_MIRROR",
    }

    shift_steps_ran(test_dir, "catalog-test")

    run([*snakemake, "--report", "report.html"], cwd=work, env=env)
    html = (test_dir / "report.html").read_text()
    for item in ('"name": "runs.csv"', '"name": "catalog-test.pdf"', '"name": "forest.png"', '"name": "scores_1.png"'):
        assert item in html, item
    assert "One row per training run" in html and "The study report: summary verdict" in html  # the captions
    assert 'Figure <tt class=\\"docutils literal\\">forest</tt>' in html  # caption filled per figure
    assert "docs/study.md" in html


@pytest.mark.slow
def test_workflow_as_a_module_from_another_directory(tmp_path, tiny_mirror):
    outer = tmp_path / "my-analysis"
    (outer / "config").mkdir(parents=True)
    config = yaml.safe_load((REPO / ".test" / "config" / "config.yaml").read_text())
    config |= {"study": "via-module", "design": config["design"] | {"arms": ["cnn_small"], "seeds": 1}}
    (outer / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    (outer / "Snakefile").write_text(f"""\
configfile: "config/config.yaml"


module scaleaudit:
    snakefile:
        "{REPO / "Snakefile"}"
    config:
        config


use rule * from scaleaudit as scaleaudit_*
""")
    env = tiny_study.env(SCALEAUDIT_MIRROR=str(tiny_mirror))
    run([sys.executable, "-m", "snakemake", "--cores", "2", "results/via-module/runs.csv"], cwd=outer, env=env)
    table = (outer / "results" / "via-module" / "runs.csv").read_text().splitlines()
    assert len(table) == 2 and ",cnn_small," in table[1]
    assert (outer / "logs" / "via-module" / "init_tracking.log").exists()
    listed = run([sys.executable, "-m", "snakemake", "--list-rules"], cwd=outer, env=env).stdout.split()
    assert {"scaleaudit_train", "scaleaudit_report", "scaleaudit_all"} <= set(listed)


def test_default_profile_only_holds_what_every_profile_agrees_on():
    """Snakemake lays the default workflow profile over --profile key by key: a key set there would override
    the slurm profile's (e.g. its retries with growing resources), so it may only repeat their values."""
    profiles = REPO / "workflow" / "profiles"
    default = yaml.safe_load((profiles / "default" / "config.yaml").read_text())
    assert (REPO / "profiles").resolve() == profiles.resolve()  # where Snakemake looks, next to the Snakefile
    for name in ("local", "slurm"):
        other = yaml.safe_load((profiles / name / "config.yaml").read_text())
        clashes = {k: (v, other[k]) for k, v in default.items() if k in other and other[k] != v}
        assert not clashes, f"workflow/profiles/default overrides the {name} profile: {clashes}"
    assert "retries" not in default and "executor" not in default
