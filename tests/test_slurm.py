"""The tiny study through the slurm profile on a real single-node Slurm cluster (tests/slurm/cluster.sh).

The cluster is installed from Debian and started once per session; where that is impossible (not root,
no apt-get, no packages) the test is skipped with the reason, unless SCALEAUDIT_REQUIRE_SLURM=1 (CI) makes
that a failure. Tracking goes to a real `mlflow server`, the supported mode on a cluster.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tiny_study
from mirror import REPO, write_sums
from mlflow_server import MlflowServer

from scaleaudit.synthetic import write_npz

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

CLUSTER = REPO / "tests" / "slurm" / "cluster.sh"
TEST_PROFILE = REPO / "tests" / "slurm" / "profile"
BIN = Path(sys.executable).parent
CANNOT = 3  # cluster.sh: Slurm cannot run on this machine


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    state = tmp_path_factory.mktemp("slurm-state")
    t0 = time.monotonic()
    started = subprocess.run(["bash", str(CLUSTER), "start", str(state)], capture_output=True, text=True, timeout=2700)
    if started.returncode != 0:
        subprocess.run(["bash", str(CLUSTER), "stop", str(state)], timeout=60)  # whatever it had started
        if started.returncode == CANNOT and os.environ.get("SCALEAUDIT_REQUIRE_SLURM") != "1":
            pytest.skip(started.stderr.strip().splitlines()[-1])
        pytest.fail(f"cluster.sh start failed:\n{started.stdout}\n{started.stderr}")
    print(f"local Slurm cluster up in {time.monotonic() - t0:.1f} s (packages installed if missing)")
    yield state
    subprocess.run(["bash", str(CLUSTER), "stop", str(state)], check=True, timeout=60)


@pytest.fixture
def mlflow_server(tmp_path):
    """A tracking server as a user would start it on a login node: SQLite stays local to the server."""
    server = MlflowServer(tmp_path).start()
    try:
        yield server.uri
    finally:
        server.stop()


def test_tiny_study_through_slurm(slurm_cluster, mlflow_server, tmp_path):
    work = tiny_study.copy_workflow(tmp_path / "repo")  # results do not land in the repository
    mirror = tmp_path / "mirror"
    write_npz(mirror / "breastmnist.npz")
    write_sums(mirror)
    env = os.environ | {
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(REPO / "src"),  # jobs inherit the environment (sbatch --export=ALL)
        "SCALEAUDIT_MIRROR": str(mirror),
        "MLFLOW_TRACKING_URI": mlflow_server,
        "HF_HUB_OFFLINE": "1",
    }
    cmd = [
        str(BIN / "snakemake"),
        "--profile",
        "workflow/profiles/slurm",
        "--profile",
        str(TEST_PROFILE),
        "--configfile",
        "config/test.yaml",
    ]
    t0 = time.monotonic()
    done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=2700)
    print(f"tiny study through Slurm: {time.monotonic() - t0:.1f} s")
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-6000:]

    # Every training job went through sbatch: Snakemake logged a Slurm job id for it, and that job's
    # Slurm log shows it running the job; short CPU-only jobs shared bookings (group short_train).
    submitted = {
        m.group(1): m.group(2)
        for m in re.finditer(r"Job (\S+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)", log)
    }
    slurm_logs = {p.stem: p.read_text() for p in (work / ".snakemake" / "slurm_logs").rglob("*.log")}
    assert set(submitted.values()) == set(slurm_logs)
    with open(work / "results" / "test" / "runs.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted((r["arm"], r["seed"]) for r in rows) == [(a, s) for a in ("cnn_gpu", "cnn_small") for s in ("1", "2")]
    for r in rows:
        out = f"results/test/runs/breastmnist_28/{r['arm']}/frac1.0/seed{r['seed']}/metrics.json"
        ran_in = [job for job, text in slurm_logs.items() if out in text]
        assert len(ran_in) == 1, f"{out} ran in Slurm jobs {ran_in}"
    assert len(submitted) < len(rows), "the short jobs were not grouped"
    gpu_jobs = [job for job, text in slurm_logs.items() if "/cnn_gpu/" in text]
    assert len(gpu_jobs) == 2
    for job in gpu_jobs:  # cluster.sh's MinJobAge keeps finished jobs known for a day
        shown = subprocess.run(
            ["scontrol", "-o", "show", "job", job], capture_output=True, text=True, check=True
        ).stdout
        assert re.search(r"TresPer(Job|Node)=\S*gpu:1", shown), shown

    assert (work / "reports" / "test.pdf").stat().st_size > 0

    # Every run is in the tracking server, finished, under the id the run table cites.
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("scaleaudit/test")
    runs = client.search_runs([experiment.experiment_id])
    assert {r.info.run_id for r in runs} == {r["mlflow_run_id"] for r in rows}
    assert {r.info.status for r in runs} == {"FINISHED"}
