"""MedMNIST 2D datasets: official sources, verified fetching (network or local mirror), loading, subsets.

Official URLs and MD5s come from the ``medmnist`` package's INFO table (``medmnist_info.json``).
A mirror is a folder laid out like Zenodo (``{flag}.npz`` for 28 px, ``{flag}_{size}.npz`` otherwise)
with a ``SHA256SUMS`` file, the way air-gapped clusters stage data on a shared filesystem.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import urllib.request
import zipfile
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

from . import settings
from .errors import ScaleauditError
from .files import atomic_path, file_digest

MIRROR_ENV = settings.BY_KEY["data.mirror"].env
SPLITS = ("train", "val", "test")
TASKS = ("binary", "multi-class", "ordinal", "multi-label")


@cache
def catalogue() -> dict:
    return json.loads(resources.files(__package__).joinpath("medmnist_info.json").read_text())["datasets"]


def info(flag: str) -> dict:
    """Task, channels, classes and official files of a MedMNIST 2D dataset."""
    known = catalogue()
    if flag not in known:
        raise ScaleauditError(
            f"unknown dataset flag {flag!r}",
            f"use one of the MedMNIST 2D flags: {', '.join(sorted(known))}",
        )
    return known[flag]


def file_name(flag: str, size: int) -> str:
    return f"{flag}.npz" if int(size) == 28 else f"{flag}_{size}.npz"


def official_source(flag: str, size: int) -> dict:
    files = info(flag)["files"]
    if str(size) not in files:
        raise ScaleauditError(
            f"{flag} has no {size} px release", f"choose a size from {', '.join(sorted(files, key=int))}"
        )
    return files[str(size)]


def resolve_mirror(configured: str | None) -> Path | None:
    """The mirror folder: the config key, else ``$SCALEAUDIT_MIRROR`` (settings.py); None means the network."""
    chosen = settings.value("data.mirror", configured)
    if not chosen:
        return None
    mirror = Path(chosen).expanduser()
    if not mirror.is_dir():
        raise ScaleauditError(
            f"data mirror {mirror} is not a folder",
            f"create it and stage the MedMNIST files there, or unset {MIRROR_ENV} / data.mirror to download",
        )
    return mirror


def _mirror_sums(mirror: Path) -> dict[str, str]:
    """File name -> SHA-256 of the mirror's ``SHA256SUMS`` (empty without one)."""
    sums = mirror / "SHA256SUMS"
    if not sums.exists():
        return {}
    return {
        parts[1].lstrip("*"): parts[0].lower()
        for line in sums.read_text().splitlines()
        if len(parts := line.split()) == 2
    }


def _download(url: str, dest: Path, attempts: int = 3) -> None:
    for attempt in range(1, attempts + 1):
        try:
            with urllib.request.urlopen(url, timeout=60) as resp, open(dest, "wb") as out:
                total = int(resp.headers.get("Content-Length") or 0)
                done, shown = 0, -1
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    done += len(chunk)
                    pct = int(100 * done / total) if total else -1
                    if pct // 10 != shown // 10:
                        shown = pct
                        print(f"  {dest.name}: {done / 1e6:.1f} MB ({pct}%)", file=sys.stderr, flush=True)
            return
        except OSError as exc:
            if attempt == attempts:
                raise ScaleauditError(
                    f"download of {url} failed: {exc}",
                    f"check the network, or stage the file in a mirror folder and set {MIRROR_ENV}",
                ) from exc
            time.sleep(2**attempt)


def _array_headers(path: Path) -> dict[str, tuple[tuple, np.dtype]]:
    """Shape and dtype of every array of an npz, read from the .npy headers (the images stay on disk)."""
    headers = {}
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            if not member.endswith(".npy"):
                continue
            with archive.open(member) as fh:
                version = np.lib.format.read_magic(fh)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
                if version not in read_header:
                    raise ValueError(f"{member} has .npy format version {version}")
                shape, _, dtype = read_header[version](fh)
            headers[member.removesuffix(".npy")] = (tuple(shape), np.dtype(dtype))
    return headers


def _contents_problems(path: Path, flag: str, size: int, headers: dict, synthetic: bool = False) -> list[str]:
    """What in the file contradicts the dataset's INFO (array names, dtypes, shapes, lengths, labels); a
    ``synthetic`` stand-in of the dataset's shape (benchmarks, cost calibration) may have any split lengths."""
    meta = info(flag)
    n_classes, channels, task = meta["n_classes"], meta["n_channels"], meta["task"]
    missing = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels") if f"{s}_{k}" not in headers]
    if missing:
        return [f"missing arrays {', '.join(missing)}"]
    problems = []
    image_shape = (size, size) if channels == 1 else (size, size, channels)
    for split in SPLITS:
        (ishape, idtype), (lshape, ldtype) = headers[f"{split}_images"], headers[f"{split}_labels"]
        n = meta["n_samples"][split]
        if idtype != np.uint8:
            problems.append(f"{split}_images are {idtype}, MedMNIST images are uint8 (0-255)")
        if ishape[1:] not in (image_shape, image_shape + (1,) * (channels == 1)):
            problems.append(f"{split}_images have shape {ishape}, {flag} at {size} px has {(n, *image_shape)}")
        if ishape[:1] != (n,) and not synthetic:
            problems.append(f"{split} has {ishape[0] if ishape else 0} images, {flag} has {n}")
        label_width = n_classes if task == "multi-label" else 1
        if lshape[:1] != ishape[:1] or lshape[1:] not in ((label_width,), () if label_width == 1 else None):
            problems.append(
                f"{split}_labels have shape {lshape} for {ishape[0] if ishape else 0} images "
                f"(expected ({ishape[0] if ishape else n}, {label_width}))"
            )
        elif not np.issubdtype(ldtype, np.integer):
            problems.append(f"{split}_labels are {ldtype}, MedMNIST labels are integers")
    if problems:
        return problems
    top = 1 if task == "multi-label" else n_classes - 1
    with np.load(path) as npz:
        for split in SPLITS:
            labels = npz[f"{split}_labels"]
            if labels.size and (labels.min() < 0 or labels.max() > top):
                problems.append(
                    f"{split}_labels range from {labels.min()} to {labels.max()}, "
                    f"{flag} ({task}, {n_classes} classes) has labels 0..{top}"
                )
    return problems


def check_npz(path: Path, flag: str, size: int, synthetic: bool = False, shown: str | None = None) -> dict[str, tuple]:
    """Check a MedMNIST npz against the dataset's INFO and return the shape of every array.

    A checksum only proves that a file is the one listed; this proves that its contents are the
    dataset's: array names, uint8 images of the size and channel count, the split lengths, and labels
    of the task's shape and range. Only the labels are read; images are checked from their headers. Messages name
    ``shown`` (the mirror file or URL a fetch checks a temporary copy of), else ``path``.
    """
    shown = shown or str(path)
    try:
        headers = _array_headers(path)
        problems = _contents_problems(path, flag, int(size), headers, synthetic)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # a read error of the disk, not of the file's contents
        raise ScaleauditError(
            f"{shown} is corrupt or truncated ({exc})", "delete it and fetch it again from the source or mirror"
        ) from exc
    if problems:
        raise ScaleauditError(
            f"{shown} is not {file_name(flag, size)} of MedMNIST {flag}:\n" + "\n".join(f"  - {p}" for p in problems),
            f"stage the official file ({official_source(flag, size)['url']}) and list its SHA-256 in the mirror's "
            "SHA256SUMS; delete the fetched copy (results/data/) so that it is fetched again",
        )
    return {k: shape for k, (shape, _) in headers.items()}


def fetch(flag: str, size: int, dest: str | os.PathLike, mirror: Path | None = None) -> dict:
    """Copy or download one dataset file to ``dest``, verified; return its provenance.

    The file is verified in a temporary location and only then moved into place, so a failed or
    corrupt fetch never leaves a file that looks valid, and never replaces a good earlier one.
    """
    dest = Path(dest)
    name = file_name(flag, size)
    official = official_source(flag, size)
    if mirror is not None:
        src = mirror / name
        if not src.exists():
            raise ScaleauditError(
                f"the mirror {mirror} has no {name}",
                f"stage {official['url']} there (and add it to SHA256SUMS), or unset the mirror",
            )
        listed = _mirror_sums(mirror)
        expected_sha = listed.get(name)
        source = str(src.resolve())
    else:
        src, expected_sha, source, listed = None, None, official["url"], {}

    with atomic_path(dest) as tmp:
        if src is not None:
            print(f"copying {name} from mirror {mirror}", file=sys.stderr, flush=True)
            shutil.copyfile(src, tmp)
        else:
            print(f"downloading {official['url']}", file=sys.stderr, flush=True)
            _download(official["url"], tmp)
        sha256 = file_digest(tmp, "sha256")
        md5 = file_digest(tmp, "md5")
        if expected_sha is not None:
            verified = "mirror SHA256SUMS"
            if sha256 != expected_sha:
                raise ScaleauditError(
                    f"checksum mismatch for {name} from {source}: sha256 {sha256}, SHA256SUMS says {expected_sha}",
                    "the mirror copy is corrupt or was changed: stage the file again",
                )
        else:
            verified = "official MD5"
            if md5 != official["md5"] and listed:
                raise ScaleauditError(
                    f"{mirror}/SHA256SUMS does not list {name} (it lists {', '.join(sorted(listed))}), and {source} "
                    f"is not the official file (md5 {md5}, official {official['md5']})",
                    f"add the line '{sha256}  {name}' to SHA256SUMS if this copy is meant, or stage the official file "
                    f"({official['url']})",
                )
            if md5 != official["md5"]:
                raise ScaleauditError(
                    f"checksum mismatch for {name} from {source}: md5 {md5}, official {official['md5']}",
                    "the download is corrupt or truncated: fetch it again (or list the file in the mirror's SHA256SUMS)",
                )
        shapes = check_npz(tmp, flag, size, shown=source)
    return {
        "dataset": flag,
        "size": int(size),
        "file": str(dest),
        "source": source,
        "official_url": official["url"],
        "official_md5": official["md5"],
        "sha256": sha256,
        "md5": md5,
        "verified_against": verified,
        "license": info(flag)["license"],
        "shapes": {k: list(v) for k, v in shapes.items()},
        "fetched_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def load_splits(
    path: str | os.PathLike, flag: str, size: int, synthetic: bool = False
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Images as uint8 (N, H, W, C) and labels as int64: (N,) for single-label, (N, L) for multi-label.

    The contents are checked again here: a file fetched by an older version, or changed since, is
    refused before any training. MedMNIST labels are stored as (N, 1) officially and (N,) in some
    re-saved copies; both are accepted.
    """
    meta = info(flag)
    check_npz(Path(path), flag, size, synthetic)
    out = {}
    with np.load(path) as npz:
        for split in SPLITS:
            images = npz[f"{split}_images"]
            if images.ndim == 3:
                images = images[..., None]
            labels = npz[f"{split}_labels"].astype(np.int64)
            labels = labels if meta["task"] == "multi-label" else labels.reshape(-1)
            out[split] = (np.ascontiguousarray(images, dtype=np.uint8), labels)
    return out


def stratified_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a seeded, class-stratified ``fraction`` of the rows (all rows at 1.0).

    Each class keeps its share (largest-remainder rounding) and at least one example, so rare
    classes survive small fractions. Multi-label rows are stratified on their full label pattern.
    """
    if not 0 < fraction <= 1:
        raise ScaleauditError(f"training fraction {fraction} is outside (0, 1]", "use a value such as 0.1, 0.3 or 1.0")
    n = len(labels)
    if fraction == 1:
        return np.arange(n)
    keys = labels if labels.ndim == 1 else np.unique(labels, axis=0, return_inverse=True)[1].reshape(-1)
    classes, counts = np.unique(keys, return_counts=True)
    quota = counts * fraction
    take = np.maximum(np.floor(quota).astype(int), 1)
    short = max(round(n * fraction) - take.sum(), 0)
    take[np.argsort(-(quota - np.floor(quota)), kind="stable")[:short]] += 1
    take = np.minimum(take, counts)
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(keys == c), size=k, replace=False) for c, k in zip(classes, take)]
    return np.sort(np.concatenate(chosen))
