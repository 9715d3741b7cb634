"""Many small runs per GPU: how the workflow books them (local slots, one Slurm GPU per group) and how their
cost is split."""

from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import tiny_study
from mirror import REPO

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
        timeout=900,
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


@pytest.fixture
def fake_gpus(monkeypatch, tmp_path):
    """A node with ``n`` visible CUDA devices, on the CPU: what pick_device sees and which device it makes current."""
    import tempfile

    import torch

    from scaleaudit import runtime

    current = []
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the node's slot locks, fresh for the test
    monkeypatch.setattr(runtime, "_claimed", [])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)

    def layout(n):
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        return current

    yield layout
    for fh in runtime._claimed:
        fh.close()


def test_each_job_binds_its_own_gpu_on_a_multi_gpu_node(fake_gpus):
    """Jobs that gpu_slots=8k lets run at once on k GPUs fill them one after the other, never all on GPU 0."""
    from scaleaudit import runtime

    current = fake_gpus(3)
    shared = [runtime.pick_device("cuda", runs_per_gpu=8) for _ in range(8)]  # 8 ResNet-18 runs: one GPU
    whole = runtime.pick_device("cuda")  # a ViT-B run: a GPU of its own
    halves = [runtime.pick_device("cuda", runs_per_gpu=2) for _ in range(2)]
    assert [d.index for d in shared] == [0] * 8 and whole.index == 1 and [d.index for d in halves] == [2, 2]
    assert str(whole) == "cuda:1" and current == [0] * 8 + [1, 2, 2]  # made current: kernels and caches go there


def test_a_single_visible_gpu_is_the_jobs_own(fake_gpus, monkeypatch):
    """On Slurm a job sees only the GPUs it booked: the one visible device, without slot locks."""
    from scaleaudit import runtime

    fake_gpus(1)
    assert [runtime.pick_device("cuda", runs_per_gpu=8).index for _ in range(9)] == [0] * 9
    assert runtime._claimed == []


def test_gpu_slots_are_named_by_the_nodes_gpu(fake_gpus, monkeypatch, tmp_path):
    """Slot locks name the physical GPU (CUDA_VISIBLE_DEVICES), so jobs that see different subsets still agree."""
    from scaleaudit import runtime

    fake_gpus(2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    assert runtime.pick_device("cuda").index == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7,5")
    assert runtime.pick_device("cuda").index == 0  # GPU 7, the first this job sees, is free (by index it was not)
    assert {p.name.split(".")[0] for p in tmp_path.glob("scaleaudit-gpu-slots-*/*")} == {"gpu5", "gpu7"}


@pytest.fixture
def fake_mps(monkeypatch, tmp_path):
    """A fake ``nvidia-cuda-mps-control`` on PATH that records each call (arguments, stdin, pipe folder); this
    process's MPS client settings and share are restored after the test."""
    from scaleaudit import sharing

    calls = tmp_path / "calls"
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    script = bin_ / sharing.MPS_CONTROL
    script.write_text(
        f'#!/bin/sh\nif [ "$1" = "-d" ]; then echo "start $CUDA_MPS_PIPE_DIRECTORY" >> {calls}; '
        f'else read cmd; echo "$cmd $CUDA_MPS_PIPE_DIRECTORY" >> {calls}; fi\n'
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}:{os.environ['PATH']}")
    for key in ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY"):
        monkeypatch.setenv(key, "unset")  # restored after the test, whatever join sets
    monkeypatch.setattr(sharing, "_current", sharing.Share())
    monkeypatch.setattr(atexit, "register", lambda *a: None)  # the test's members leave by hand

    def recorded() -> list[str]:
        return calls.read_text().splitlines() if calls.exists() else []

    return recorded


def test_a_booking_starts_mps_once_and_its_last_member_stops_it(fake_mps, monkeypatch, tmp_path):
    from scaleaudit import sharing

    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    members = [sharing.join(4, root=tmp_path / "tmp") for _ in range(4)]  # one sbatch job of group gpu_share4
    pipe = str(tmp_path / "tmp" / "scaleaudit-mps-4242" / "pipe")
    assert {(m.mode, m.booking, m.runs_per_gpu) for m in members} == {("mps", "4242", 4)}
    assert fake_mps() == [f"start {pipe}"] and os.environ["CUDA_MPS_PIPE_DIRECTORY"] == pipe  # the clients' pipe
    for m in members[:3]:
        sharing.leave(m, tmp_path / "tmp")
    assert fake_mps() == [f"start {pipe}"]  # a member still runs on the daemon
    sharing.leave(members[3], tmp_path / "tmp")
    sharing.leave(members[3], tmp_path / "tmp")  # leaving twice (by hand, then at exit) stops nothing again
    assert fake_mps() == [f"start {pipe}", f"quit {pipe}"]


def test_a_killed_member_stops_counting_and_its_booking_is_closed_by_the_next(fake_mps, tmp_path):
    """A member killed without leaving (its lock dropped by the kernel): the next member to arrive finds no one
    running, stops the orphaned daemon and opens a new booking."""
    from scaleaudit import sharing

    root = tmp_path / "tmp"
    first = sharing.join(2, root=root)
    first.member.close()  # killed: its file stays, its lock is gone
    second = sharing.join(2, root=root)
    assert [c.split()[0] for c in fake_mps()] == ["start", "quit", "start"]
    sharing.leave(second, root)
    assert [c.split()[0] for c in fake_mps()] == ["start", "quit", "start", "quit"]


def test_without_the_mps_binary_the_gpu_is_time_sliced(fake_mps, monkeypatch, tmp_path):
    from scaleaudit import sharing

    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    members = [sharing.join(2, root=tmp_path) for _ in range(2)]
    assert {(m.mode, m.booking) for m in members} == {("time-slicing", "7")}
    assert os.environ["CUDA_MPS_PIPE_DIRECTORY"] == "unset" and fake_mps() == []


def test_a_run_alone_on_its_gpu_or_on_the_cpu_shares_nothing(fake_mps, fake_gpus, tmp_path):
    """A whole-GPU run is exclusive (no daemon, no state); a CPU run does not touch the GPU machinery at all."""
    from scaleaudit import runtime, sharing

    assert runtime.pick_device("cpu", runs_per_gpu=8).type == "cpu" and sharing.current().since is None
    fake_gpus(1)
    runtime.pick_device("cuda")
    assert sharing.current().mode == "exclusive" and fake_mps() == []
    assert not list(tmp_path.glob("scaleaudit-share-*"))


def test_mps_is_set_up_before_cuda_starts(fake_mps, fake_gpus, monkeypatch):
    """An MPS client finds the daemon when CUDA initialises: the pipe is set before the device is made current."""
    import torch

    from scaleaudit import runtime, sharing

    fake_gpus(1)
    pipes = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: pipes.append(os.environ["CUDA_MPS_PIPE_DIRECTORY"]))
    runtime.pick_device("cuda", runs_per_gpu=8)
    share = sharing.current()
    assert share.mode == "mps" and pipes == [
        sharing.mps_env(share.booking, Path(tempfile.gettempdir()))["CUDA_MPS_PIPE_DIRECTORY"]
    ]
    sharing.leave(share)
    assert [c.split()[0] for c in fake_mps()] == ["start", "quit"]
