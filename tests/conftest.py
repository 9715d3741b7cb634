"""Shared fixtures: a synthetic MedMNIST mirror (hermetic) and the real BreastMNIST mirror when present."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mirror import SHARED_MIRROR, write_sums

from scaleaudit import jobcontrol
from scaleaudit.synthetic import write_npz


def pytest_collection_modifyitems(items):
    """Files holding end-to-end tests (marked slow) first. ``make test`` hands whole files to the workers in
    collection order (``--dist loadfile --no-loadscope-reorder``): a file of minutes started last keeps one worker
    busy while the other idles; started first, the short files fill the other worker meanwhile."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: each group keeps its collection order


@pytest.fixture(autouse=True)
def steps_called_in_process_leave_the_test_runner_alone(monkeypatch):
    """A step called in-process (``cli.main``) would arm its job control in the test runner itself: SIGTERM
    raised as an exception anywhere, and a parent-death signal that a pytest-xdist worker gets when the thread
    that spawned it ends. Job control is tested on steps run as processes, as a workflow runs them."""
    monkeypatch.setattr(jobcontrol, "stop_with_workflow", lambda: None)


@pytest.fixture
def tiny_mirror(tmp_path) -> Path:
    """A mirror folder with a small synthetic breastmnist.npz and its SHA256SUMS."""
    mirror = tmp_path / "mirror"
    write_npz(mirror / "breastmnist.npz")
    write_sums(mirror)
    return mirror


@pytest.fixture
def real_mirror() -> Path:
    """The real BreastMNIST mirror of ../shared/data/medmnist (or $SCALEAUDIT_TEST_MIRROR)."""
    if not (SHARED_MIRROR / "breastmnist.npz").exists():
        pytest.skip(f"no real BreastMNIST mirror at {SHARED_MIRROR} (set SCALEAUDIT_TEST_MIRROR)")
    return SHARED_MIRROR


@pytest.fixture
def copy_mirror(tmp_path):
    def copy(src: Path) -> Path:
        dst = tmp_path / "mirror-copy"
        shutil.copytree(src, dst)
        return dst

    return copy
