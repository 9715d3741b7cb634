"""MedMNIST-C corrupted test sets: equal to medmnistc's own output, deterministic, verified before use."""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys

import numpy as np
import pytest
from mirror import REPO
from PIL import Image

from scaleaudit import corrupt, files

MC_PYTHON = REPO / ".venv-medmnistc" / "bin" / "python"
BREAST_CORRUPTIONS = [
    "pixelate",
    "jpeg_compression",
    "speckle_noise",
    "motion_blur",
    "brightness_up",
    "brightness_down",
    "contrast_down",
]


@pytest.fixture(scope="session")
def medmnistc_python():
    """The corruption environment (make test builds it first; built here when missing)."""
    if not MC_PYTHON.exists():
        subprocess.run(["make", "medmnistc-env", f"PYTHON={sys.executable}"], cwd=REPO, check=True)
    return MC_PYTHON


def _compare(python, tmp_path, images: np.ndarray, labels: np.ndarray, size: int) -> dict:
    data = tmp_path / "clean.npz"
    np.savez(data, test_images=images, test_labels=labels)
    env = os.environ | {"PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(
        [str(python), str(REPO / "tests" / "medmnistc_compare.py"), str(tmp_path), str(data), str(size)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_real_breastmnist_at_28px_equals_medmnistc_and_is_deterministic(medmnistc_python, real_mirror, tmp_path):
    with np.load(real_mirror / "breastmnist.npz") as npz:
        images, labels = npz["test_images"], npz["test_labels"]
    out = _compare(medmnistc_python, tmp_path, images, labels, 28)
    assert list(out["fixed"]) == BREAST_CORRUPTIONS
    # medmnistc's own path, untouched: byte for byte, except its motion blur, which garbles grey images below
    # 224 px (it tests the shape (224, 224)): (780, 28, 3) columns instead of images
    assert {n: r["equal"] for n, r in out["native"].items()} == {n: n != "motion_blur" for n in BREAST_CORRUPTIONS}
    assert out["native"]["motion_blur"]["shape"] == [5 * 156, 28, 3]
    # ... and with its grey decode made colour, DatasetManager gives exactly ours for every corruption
    assert all(r["equal"] for r in out["fixed"].values()), out["fixed"]
    assert out["twice"] is True
    rec = out["record"]
    assert rec["seed"] == 0 and rec["severities"] == [1, 2, 3, 4, 5] and rec["versions"]["medmnistc"] == "0.1.0"
    assert rec["shape"] == [5, 156, 28, 28] and "motion_blur's grey decode" in rec["generator"]


def test_at_224px_medmnistc_path_is_untouched(medmnistc_python, real_mirror, tmp_path):
    """MedMNIST-C's own size: nothing is changed, every corruption equals DatasetManager's file."""
    with np.load(real_mirror / "breastmnist.npz") as npz:
        sample, labels = npz["test_images"][:6], npz["test_labels"][:6]
    images = np.stack([np.array(Image.fromarray(i).resize((224, 224), Image.BICUBIC)) for i in sample])
    out = _compare(medmnistc_python, tmp_path, images, labels, 224)
    assert all(r["equal"] for r in out["native"].values()), out["native"]
    assert out["record"]["generator"].endswith("procedure)")


def _fake_set(tmp_path, n=4, size=8):
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 255, (n, size, size), dtype=np.uint8)
    labels = np.arange(n) % 2
    np.savez(tmp_path / "clean.npz", test_images=clean, test_labels=labels)
    arrays = {"blur": np.stack([clean // (s + 2) for s in range(5)]), "labels": labels}
    np.savez(tmp_path / "c.npz", **arrays)
    record = {"file": str(tmp_path / "c.npz"), "sha256": files.file_digest(tmp_path / "c.npz"), "corruptions": ["blur"]}
    return record, arrays, clean, labels


def test_check_refuses_changed_files_and_wrong_contents(tmp_path):
    record, arrays, clean, labels = _fake_set(tmp_path)
    assert set(corrupt.check(record, tmp_path / "clean.npz")) == {"blur", "labels"}
    with pytest.raises(corrupt.CorruptedSetError, match="SHA-256"):
        corrupt.check(record | {"sha256": "0" * 64}, tmp_path / "clean.npz")
    # a no-op severity, a wrong shape and other labels are named
    bad = dict(arrays, blur=np.concatenate([clean[None], arrays["blur"][1:]]))
    assert corrupt.check_arrays(bad, clean, labels, ["blur"]) == ["blur leaves the images unchanged at severity 1"]
    assert "shape" in corrupt.check_arrays(dict(arrays, blur=arrays["blur"][:4]), clean, labels, ["blur"])[0]
    assert corrupt.check_arrays(dict(arrays, labels=1 - labels), clean, labels, ["blur"]) == [
        "its labels are not the clean test labels"
    ]
    assert corrupt.check_arrays({"labels": labels}, clean, labels, ["blur"]) == ["missing arrays blur"]


def test_cli_help_and_wrong_interpreter(tmp_path):
    env = os.environ | {"PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(
        [sys.executable, "-m", "scaleaudit.corrupt", "--help"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0 and "medmnistc" in done.stdout
    _fake_set(tmp_path)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "scaleaudit.corrupt",
            "--data",
            str(tmp_path / "clean.npz"),
            "--dataset",
            "breastmnist",
            "--size",
            "8",
            "--out",
            str(tmp_path / "o.npz"),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 2 and "make medmnistc-env" in done.stderr and not (tmp_path / "o.npz").exists()


# A corruption step whose medmnistc work blocks until the test lets it go; medmnistc itself is stubbed (only the
# step's control flow runs, in the main environment).
BLOCKING_STEP = """
import sys, types
sys.modules["medmnistc"] = types.ModuleType("medmnistc")
from scaleaudit import corrupt

def generate(images, flag, seed, progress=None):
    print("ready", flush=True)
    sys.stdin.readline()  # blocks until the test closes stdin
    raise AssertionError("the step was not stopped")

corrupt.generate, corrupt.corruptions = generate, lambda flag: {"blur": None}
sys.exit(corrupt.main(sys.argv[1:]))
"""


def test_corruption_step_stops_with_the_workflow_and_leaves_nothing(tmp_path):
    """Snakemake killed outright (SIGKILL): the step it started is told at once (SIGTERM) and writes nothing."""
    _fake_set(tmp_path)
    out = tmp_path / "out" / "c.npz"
    step = [sys.executable, "-c", BLOCKING_STEP, "--data", str(tmp_path / "clean.npz"), "--dataset", "breastmnist"]
    step += ["--size", "8", "--out", str(out)]
    log = tmp_path / "step.log"
    env = os.environ | {"PYTHONPATH": str(REPO / "src")}
    # the shell stands for the workflow's job shell: killing it is what a killed Snakemake does to the job
    shell = subprocess.Popen(
        ["bash", "-c", f"{shlex.join(step)} 2> {shlex.quote(str(log))}; echo after"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert shell.stdout.readline() == "ready\n"
    shell.kill()
    shell.wait()
    shell.stdin.close()  # lets a step that was not stopped run on (and fail the test below)
    assert shell.stdout.read() == ""  # the pipe closes once the step has ended
    assert "stopped (SIGTERM, or the workflow that started it ended): nothing written" in log.read_text()
    assert not out.exists() and not (out.parent.exists() and list(out.parent.iterdir()))


def test_corrupted_set_is_written_with_the_mode_of_any_new_file(medmnistc_python, tmp_path):
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "clean.npz",
        test_images=rng.integers(0, 255, (2, 28, 28), dtype=np.uint8),
        test_labels=np.array([[0], [1]]),
    )
    out = tmp_path / "c.npz"
    args = [str(medmnistc_python), "-m", "scaleaudit.corrupt", "--data", str(tmp_path / "clean.npz")]
    args += ["--dataset", "breastmnist", "--size", "28", "--out", str(out)]
    env = os.environ | {"PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(["bash", "-c", f"umask 022; {shlex.join(args)}"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert stat.S_IMODE(out.stat().st_mode) == 0o644 and stat.S_IMODE(out.with_suffix(".json").stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "c.npz", "clean.npz"]


def test_corruption_counts_are_medmnistc_s(medmnistc_python):
    """corrupt.N_CORRUPTIONS (the plan's count, without the corruption environment) is what medmnistc defines."""
    done = subprocess.run(
        [
            str(medmnistc_python),
            "-c",
            "import json; from medmnistc.corruptions.registry import CORRUPTIONS_DS as c; "
            "print(json.dumps({k: len(v) for k, v in c.items()}))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(done.stdout) == corrupt.N_CORRUPTIONS
