"""Paths the tests share and the mirror helper: the checkout, the real BreastMNIST mirror, SHA256SUMS writing."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_MIRROR = Path(os.environ.get("SCALEAUDIT_TEST_MIRROR", REPO.parent / "shared" / "data" / "medmnist"))


def write_sums(mirror: Path) -> None:
    """List every ``*.npz`` of ``mirror`` in its SHA256SUMS, as a staged mirror does."""
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}" for p in sorted(mirror.glob("*.npz"))]
    (mirror / "SHA256SUMS").write_text("\n".join(lines) + "\n")
