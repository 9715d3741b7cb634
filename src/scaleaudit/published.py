"""The published numbers of docs/study.md (published.json) that reproduced arms are set beside."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from .errors import ScaleauditError


@cache
def rows() -> tuple[dict, ...]:
    """Every published result: id (model under a protocol), paper, protocol, model, size, dataset, auc, acc."""
    doc = json.loads(resources.files(__package__).joinpath("published.json").read_text())
    return tuple(doc["rows"])


def ids() -> list[str]:
    return sorted({r["id"] for r in rows()})


def check(reference: str, where: str) -> None:
    """Reject an arm's ``reproduces:`` that names no published result (a typo would silently drop the check)."""
    if reference not in ids():
        raise ScaleauditError(
            f"{where} reproduces an unknown published result {reference!r}",
            f"use one of {', '.join(ids())} (src/scaleaudit/published.json)",
        )


def check_weights(reference: str, weights: str | None, where: str) -> None:
    """Reject an arm that reproduces a pretrained model's published result with other weights than the paper's
    (``weights``: the arm's timm ``arch.tag``, None when it trains from scratch)."""
    paper = {r.get("weights") for r in rows() if r["id"] == reference} - {None}
    if paper and weights not in paper:
        raise ScaleauditError(
            f"{where} reproduces {reference!r}, published with the weights {', '.join(sorted(paper))}, "
            f"but uses {weights or 'no pretrained weights'}",
            "use the paper's weights (model and weights_tag) for this arm, or remove `reproduces:`",
        )


def find(reference: str, dataset: str, size: int) -> dict | None:
    """The published row of ``reference`` for this dataset and image size, if the paper reported one."""
    for r in rows():
        if r["id"] == reference and r["dataset"] == dataset and r["size"] == int(size):
            return r
    return None
