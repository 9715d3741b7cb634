"""Many small runs per GPU: how the workflow books them (local slots, one Slurm GPU per group) and how their
cost is split."""

from __future__ import annotations

import re
import shutil
import subprocess
from types import SimpleNamespace

import pytest
import tiny_study
from conftest import REPO

from scaleaudit import cost


def test_runs_sharing_a_gpu_are_charged_their_share_of_its_energy():
    meter = cost.EnergyMeter("USA")
    meter.seconds = 10.0
    data = SimpleNamespace(
        duration=10.0,
        energy_consumed=1.0,
        gpu_energy=0.8,
        emissions=0.4,
        codecarbon_version="x",
        country_iso_code="USA",
    )
    meter.tracker = SimpleNamespace(final_emissions_data=data, _hardware=["GPU"])
    alone, shared = meter.result(), meter.result(gpu_share=1 / 8)
    assert alone["energy_kwh"] == pytest.approx(1.0) and alone["co2e_kg"] == pytest.approx(0.4)
    assert shared["energy_kwh"] == pytest.approx(0.2 + 0.8 / 8)  # CPU and RAM are its own, the GPU 1/8
    assert shared["co2e_kg"] == pytest.approx(0.4 * 0.3)


def _jobs(dry_run: str, rule: str = "train", command: str = "train") -> dict[str, dict]:
    """Per arm, the resources (and shell command) a dry run printed for the rule's jobs."""
    jobs = {}
    for block in dry_run.split(f"rule {rule}:")[1:]:
        arm = re.search(r"arm=(\w+)", block).group(1)
        resources = dict(kv.split("=", 1) for kv in re.search(r"resources: (.*)", block).group(1).split(", "))
        jobs[arm] = resources | {"shell": re.search(rf"scaleaudit {command} .*", block).group(0)}
    return jobs


def _dry_run(work, targets) -> str:
    done = subprocess.run(
        [shutil.which("snakemake") or "snakemake", "-n", "-p", "--profile", "workflow/profiles/local", "--cores", "4"]
        + targets,
        cwd=work,
        env=tiny_study.env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


@pytest.mark.slow
def test_full_study_books_one_gpu_per_run_or_a_slot_of_a_shared_one(tmp_path):
    work = tiny_study.copy_workflow(tmp_path / "wf")
    targets = [
        f"results/full/runs/pathmnist_28/{arm}/frac1.0/seed1/metrics.json"
        for arm in ("resnet18_scratch", "vit_b16_pretrained", "cnn_small")
    ]
    jobs = _jobs(_dry_run(work, targets))
    # resnet18_scratch: 8 runs share a GPU: no whole GPU (--gpus) but one GPU per group (--gres=gpu:1), 1 of 8 slots
    assert (
        jobs["resnet18_scratch"]["gpu"],
        jobs["resnet18_scratch"]["gres"],
        jobs["resnet18_scratch"]["gpu_slots"],
    ) == ("0", "gpu:1", "1")
    assert "--runs-per-gpu 8" in jobs["resnet18_scratch"]["shell"]
    assert (
        jobs["vit_b16_pretrained"]["gpu"],
        jobs["vit_b16_pretrained"]["gres"],
        jobs["vit_b16_pretrained"]["gpu_slots"],
    ) == ("1", "", "8")
    assert "--runs-per-gpu 1" in jobs["vit_b16_pretrained"]["shell"]
    assert (jobs["cnn_small"]["gpu"], jobs["cnn_small"]["gpu_slots"]) == ("0", "0")


@pytest.mark.slow
def test_shift_evaluation_is_booked_grouped_and_shared_as_its_training(tmp_path):
    """The full config scores every run on MedMNIST-C on the run's own device: a GPU arm's shift job books what its
    training booked (a whole GPU, or a slot of a shared one; on Slurm grouped as its training), a CPU arm's no GPU."""
    work = tiny_study.copy_workflow(tmp_path / "wf")
    arms = ("resnet18_scratch", "vit_b16_pretrained", "cnn_small")
    dry = _dry_run(work, [f"results/full/runs/pathmnist_28/{arm}/frac1.0/seed1/shift.json" for arm in arms])
    train, shift = _jobs(dry), _jobs(dry, "shift_eval", "shift-eval")
    for arm in arms:
        assert {k: shift[arm][k] for k in ("gpu", "gres", "gpu_slots")} == {
            k: train[arm][k] for k in ("gpu", "gres", "gpu_slots")
        }
    assert shift["vit_b16_pretrained"]["gpu"] == "1" and shift["cnn_small"]["gpu_slots"] == "0"
    assert "--runs-per-gpu 8" in shift["resnet18_scratch"]["shell"]


def test_slurm_profile_groups_as_many_runs_as_share_a_gpu():
    import yaml

    from scaleaudit import config

    allowed = config.schema()["$defs"]["arm"]["properties"]["resources"]["properties"]["runs_per_gpu"]["enum"]
    profile = yaml.safe_load((REPO / "workflow" / "profiles" / "slurm" / "config.yaml").read_text())
    assert {n: profile["group-components"].get(f"gpu_share{n}") for n in allowed if n > 1} == {
        n: n for n in allowed if n > 1
    }
