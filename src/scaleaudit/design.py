"""The study design, read off a validated config: the run grid, its seeds (fixed, or adaptive rounds), the arms by
group and by ladder, the multiplicity families of the verdict. Every other module asks here instead of re-deriving
them.

A *cell* is one (dataset, size, fraction), a *task* one dataset at one image size. Adaptive seeds
(``design.seeds: {initial, step, max, spending}``): round 1 trains seeds 1..initial of every run, round r >= 2 the
next ``step`` seeds (the last round cut to ``max``), only where ``adaptive`` finds the verdict still open. A run's
round follows from its seed, so the run table alone re-derives every round.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

from .errors import ScaleauditError

RUN_KEY = ["dataset", "size", "fraction", "arm", "seed"]
CELL = ["dataset", "size", "fraction"]
TASK = ["dataset", "size"]


def adaptive_seeds(config: dict) -> dict | None:
    """The adaptive form of ``design.seeds`` ({initial, step, max, spending}); None for a fixed count or list."""
    s = config["design"]["seeds"]
    return s if isinstance(s, dict) else None


def is_adaptive(config: dict) -> bool:
    return adaptive_seeds(config) is not None


def looks(s: dict) -> tuple[int, ...]:
    """Seeds of a cell after each round of adaptive seeds ``s``: initial, initial + step, ..., max."""
    n = list(range(s["initial"], s["max"], s.get("step", 2))) + [s["max"]]
    return tuple(dict.fromkeys(n))


def round_of(s: dict, seed: int) -> int:
    """The round that trains ``seed`` (seeds 1..initial: round 1)."""
    return 1 + sum(seed > n for n in looks(s))


def round_seeds(s: dict, r: int) -> list[int]:
    """The seeds round ``r`` adds."""
    n = (0,) + looks(s)
    return list(range(n[r - 1] + 1, n[r] + 1)) if 1 <= r < len(n) else []


def seeds(config: dict) -> list[int]:
    """The seeds of every run; with adaptive seeds, those of the first round (``adaptive`` plans the others)."""
    s = config["design"]["seeds"]
    if isinstance(s, dict):
        return list(range(1, s["initial"] + 1))
    return list(range(1, s + 1)) if isinstance(s, int) else list(s)


def tasks(config: dict) -> list[tuple[str, int]]:
    """(dataset flag, image size) of every task of the study."""
    return [(d["flag"], int(size)) for d in config["data"]["datasets"] for size in d["sizes"]]


def arms(config: dict, group: str | None = None) -> list[str]:
    """The design's arms in config order, or only those of ``group`` ('small' or 'large')."""
    return [a for a in config["design"]["arms"] if group is None or config["arms"][a]["group"] == group]


def runs(config: dict) -> Iterator[dict]:
    """Every (dataset, size, arm, fraction, seed) of the study (with adaptive seeds: round 1), as wildcard values."""
    for (flag, size), arm, fraction, seed in itertools.product(
        tasks(config), config["design"]["arms"], config["design"]["fractions"], seeds(config)
    ):
        yield {"dataset": flag, "size": size, "arm": arm, "fraction": float(fraction), "seed": int(seed)}


def families(config: dict) -> tuple[int, int]:
    """The multiplicity families: per-cell comparisons (tasks x fractions x large arms) and study-level summaries
    (large arms x fractions). Counted from the design, so cells that did not run do not loosen them."""
    large, fractions = len(arms(config, "large")), len(config["design"]["fractions"])
    return len(tasks(config)) * fractions * large, large * fractions


def plan_path(config: dict) -> Path:
    """Where ``scaleaudit plan`` writes the study's cost plan; the workflow and the report read it from there."""
    return Path("results") / config["study"] / "plan.json"


def run_table_path(config: dict) -> Path:
    """Where the workflow aggregates the study's run table (runs.csv); the plan reads measured stop epochs there."""
    return Path("results") / config["study"] / "runs.csv"


LADDER_SHARED = ("group", "pretrained", "weights_tag", "train", "recipe", "input_size")


def check_ladders(config: dict) -> None:
    """The rungs of a ladder (the arms of design.arms that name it) differ in model size only: a rung with another
    pretraining, recipe, training mode or input size would put its difference on the size axis."""
    by_ladder: dict[str, list[str]] = {}
    for name in config["design"]["arms"]:
        if config["arms"][name].get("ladder"):
            by_ladder.setdefault(config["arms"][name]["ladder"], []).append(name)
    for ladder, names in by_ladder.items():
        for key in LADDER_SHARED:
            values = {n: config["arms"][n].get(key) for n in names}
            if len(set(map(repr, values.values()))) > 1:
                listed = ", ".join(f"{n}: {v!r}" for n, v in values.items())
                raise ScaleauditError(
                    f"the rungs of ladder {ladder!r} differ in {key} ({listed})",
                    f"give every arm of ladder {ladder!r} the same {key}, or put the odd arm on "
                    "another ladder (arms.<name>.ladder)",
                )
