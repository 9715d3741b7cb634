"""MedMNIST-C corrupted test sets (Di Salvo et al., 2024), built as the ``medmnistc`` package builds them.

``build`` runs in the corruption environment (``make medmnistc-env`` -> ``.venv-medmnistc``, or
``envs/medmnistc.yaml``): it needs numpy and ``medmnistc`` only, never the training stack, because
``medmnistc`` pins ``medmnist`` and ``scikit-image`` and needs ImageMagick's MagickWand and OpenCV.
It repeats ``medmnistc.dataset_manager.DatasetManager.create_single_dataset`` step for step: one
``seed_everything(seed)`` per dataset, the dataset's corruptions (``CORRUPTIONS_DS``) in their order,
severities 1..5, images in order, each image through PIL RGB and back to grey for grey datasets; the
random stream therefore runs through all corruptions, and only the whole set is reproducible from the
seed (which is why no subset of corruptions can be chosen). ``tests/test_corrupt.py`` compares the
result byte for byte with ``DatasetManager``'s own files.

MedMNIST-C is defined at 224 px, and ``medmnistc`` 0.1.0's motion blur tells grey from colour by the shape
``(224, 224)``: at any other size it garbles grey images (it returns (H, 3) columns). Below 224 px the
decode of that one corruption is made to return colour (``grey_decoded_as_colour``), which keeps its random
draws and is exact for grey (PIL's "L" of equal channels is the grey value); at 224 px nothing is changed.

``check`` (numpy only, any environment) verifies a cached set before it is used: its SHA-256 against
its record, and its contents against the clean test split.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import numpy as np

from . import jobcontrol
from .files import atomic_path, file_digest, write_text

SEVERITIES = (1, 2, 3, 4, 5)
# The number of corruptions medmnistc 0.1.0 defines per dataset (len(CORRUPTIONS_DS[flag])), for what needs the
# count without the corruption environment (the plan); tests/test_corrupt.py checks it against medmnistc.
N_CORRUPTIONS = {
    "pathmnist": 11,
    "chestmnist": 13,
    "dermamnist": 15,
    "octmnist": 6,
    "pneumoniamnist": 13,
    "retinamnist": 8,
    "breastmnist": 7,
    "bloodmnist": 11,
    "tissuemnist": 8,
    "organamnist": 13,
    "organcmnist": 13,
    "organsmnist": 13,
}
LABELS = "labels"


class CorruptedSetError(Exception):
    """A corrupted test set that does not match its record or its clean test split."""


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in (
        "medmnistc",
        "numpy",
        "scikit-image",
        "opencv-python-headless",
        "opencv-python",
        "Wand",
        "pillow",
        "scipy",
        "torch",
        "torchvision",
    ):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    from wand.version import MAGICK_VERSION  # the MagickWand library the blur corruptions ran on

    out["ImageMagick"] = MAGICK_VERSION
    return out


def corruptions(flag: str) -> dict:
    """The dataset's corruptions as ``medmnistc`` defines them (name -> corruptor), in its order."""
    from medmnistc.corruptions.registry import CORRUPTIONS_DS

    if flag not in CORRUPTIONS_DS:
        raise CorruptedSetError(f"medmnistc defines no corruptions for {flag!r} (it has {', '.join(CORRUPTIONS_DS)})")
    return CORRUPTIONS_DS[flag]


@contextlib.contextmanager
def grey_decoded_as_colour():
    """Inside: medmnistc's filter module decodes grey images as 3-channel BGR (see the module docstring)."""
    from medmnistc.corruptions import filter as filters

    real = filters.cv2

    class Cv2:
        def __getattr__(self, name):
            return getattr(real, name)

        @staticmethod
        def imdecode(buf, flags):
            img = real.imdecode(buf, flags)
            return real.cvtColor(img, real.COLOR_GRAY2BGR) if img.ndim == 2 else img

    filters.cv2 = Cv2()
    try:
        yield
    finally:
        filters.cv2 = real


def generate(images: np.ndarray, flag: str, seed: int, progress=None) -> dict[str, np.ndarray]:
    """Every corruption of ``flag`` at every severity: name -> uint8 (5, N, *image shape), as DatasetManager makes
    them from the same images and seed."""
    from medmnistc.corruptions.registry import DATASET_RGB
    from medmnistc.utils.utils import seed_everything
    from PIL import Image

    rng = seed_everything(seed)
    out = {}
    native = images.shape[1:3] == (224, 224)
    with contextlib.nullcontext() if native else grey_decoded_as_colour():
        for name, corruptor in corruptions(flag).items():
            if name == "impulse_noise":  # as DatasetManager: the seeded Generator for skimage's noise
                corruptor.rng = rng
            levels = []
            for severity in range(len(SEVERITIES)):
                level = []
                for img in images:
                    corrupted = corruptor.apply(Image.fromarray(img).convert("RGB"), severity)
                    if not DATASET_RGB[flag]:
                        corrupted = Image.fromarray(corrupted).convert("L")
                    level.append(np.array(corrupted))
                levels.append(np.stack(level))
            out[name] = np.stack(levels)
            if progress:
                progress(name)
    return out


def check_arrays(
    arrays: dict[str, np.ndarray], clean_images: np.ndarray, clean_labels: np.ndarray, names: list[str]
) -> list[str]:
    """What in a corrupted set contradicts its clean test split: names, dtype, shape, labels, and corruptions that
    left every image unchanged at some severity (a silent no-op)."""
    problems = []
    missing = [n for n in names if n not in arrays]
    if missing or LABELS not in arrays:
        return [f"missing arrays {', '.join(missing + ([LABELS] if LABELS not in arrays else []))}"]
    expected = (len(SEVERITIES), *clean_images.shape)
    if not np.array_equal(arrays[LABELS], clean_labels):
        problems.append("its labels are not the clean test labels")
    for name in names:
        a = arrays[name]
        if a.dtype != np.uint8:
            problems.append(f"{name} is {a.dtype}, images are uint8")
        elif a.shape != expected:
            problems.append(f"{name} has shape {a.shape}, expected {expected} (severities x clean test images)")
        else:
            same = [s for s, level in zip(SEVERITIES, a) if np.array_equal(level, clean_images)]
            if same:
                problems.append(f"{name} leaves the images unchanged at severity {', '.join(map(str, same))}")
    return problems


def _clean_test(data: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(data) as npz:
        return npz["test_images"], npz["test_labels"]


def build(data: Path, flag: str, size: int, seed: int, out: Path, record_out: Path) -> dict:
    """Corrupt the test split of ``data`` (a verified MedMNIST npz), check it, write ``out`` and its record."""
    import medmnistc  # noqa: F401  - fail here, with the environment named, if the wrong interpreter runs this

    images, labels = _clean_test(data)
    names = list(corruptions(flag))
    print(
        f"{flag} @ {size} px: {len(images)} test images x {len(names)} corruptions x {len(SEVERITIES)} severities",
        file=sys.stderr,
        flush=True,
    )
    arrays = generate(images, flag, seed, progress=lambda n: print(f"  {n} done", file=sys.stderr, flush=True))
    arrays[LABELS] = labels
    problems = check_arrays(arrays, images, labels, names)
    if problems:
        raise CorruptedSetError("the corrupted set fails its checks:\n" + "\n".join(f"  - {p}" for p in problems))
    # atomic, with the mode of any new file: a stopped or failed step leaves neither a partial set nor its record
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
        sha = file_digest(tmp)
        from medmnistc.corruptions.registry import CORRUPTIONS_DS_FOLDS, DATASET_RGB

        family = {name: fam for fam, members in CORRUPTIONS_DS_FOLDS.items() for name in members}

        record = {
            "dataset": flag,
            "size": int(size),
            "file": str(out),
            "sha256": sha,
            "generator": "medmnistc (DatasetManager.create_single_dataset's procedure)"
            + (
                ""
                if arrays[names[0]].shape[2:4] == (224, 224)
                else "; motion_blur's grey decode as colour (below 224 px)"
            ),
            "seed": int(seed),
            "corruptions": names,
            "families": {
                n: family[n] for n in names
            },  # medmnistc's grouping: digital, noise, blur, color, task-specific
            "parameters": {n: repr(c.severity_params) for n, c in corruptions(flag).items()},
            "severities": list(SEVERITIES),
            "rgb": bool(DATASET_RGB[flag]),
            "shape": list(arrays[names[0]].shape),
            "source": {"file": str(data), "sha256": file_digest(data)},
            "versions": _versions(),
        }
    write_text(record_out, json.dumps(record, indent=2) + "\n")
    return record


def check(record: dict, clean_data: Path) -> dict[str, np.ndarray]:
    """Load a cached corrupted set after checking it against its record (SHA-256) and its clean test split."""
    path = Path(record["file"])
    fix = f"delete {path} and its .json record so that the corruption step builds it again"
    if not path.exists():
        raise CorruptedSetError(f"{path} is missing; {fix}")
    if file_digest(path) != record["sha256"]:
        raise CorruptedSetError(f"{path} does not have the SHA-256 of its record (changed since it was built); {fix}")
    images, labels = _clean_test(clean_data)
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    problems = check_arrays(arrays, images, labels, record["corruptions"])
    if problems:
        raise CorruptedSetError(
            f"{path} is not a corrupted copy of {clean_data}'s test split:\n"
            + "\n".join(f"  - {p}" for p in problems)
            + f"\n  fix: {fix}"
        )
    return arrays


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scaleaudit.corrupt",
        description="Build a MedMNIST-C corrupted copy of a dataset's test split with medmnistc (run it with the "
        "corruption environment's Python: make medmnistc-env -> .venv-medmnistc/bin/python).",
    )
    parser.add_argument("--data", type=Path, required=True, help="the verified MedMNIST npz (results/data/...)")
    parser.add_argument("--dataset", required=True, help="MedMNIST flag, e.g. breastmnist")
    parser.add_argument("--size", type=int, required=True, help="image size of --data (px)")
    parser.add_argument("--seed", type=int, default=0, help="medmnistc's random seed (default 0, its own default)")
    parser.add_argument("--out", type=Path, required=True, help="the corrupted set (.npz); its record goes beside it")
    parser.add_argument("--record", type=Path, help="where the record goes (default: --out with .json)")
    args = parser.parse_args(argv)
    jobcontrol.stop_with_workflow()
    try:
        record = build(
            args.data, args.dataset, args.size, args.seed, args.out, args.record or args.out.with_suffix(".json")
        )
    except ModuleNotFoundError as exc:
        print(
            f"error: {exc}\n  fix: run this with the corruption environment's Python (make medmnistc-env; "
            f"{sys.executable} is not it)",
            file=sys.stderr,
        )
        return 2
    except CorruptedSetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except jobcontrol.Terminated:
        print("stopped (SIGTERM, or the workflow that started it ended): nothing written", file=sys.stderr)
        raise
    print(f"wrote {args.out} (sha256 {record['sha256'][:12]})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
