"""Study configuration: schema validation with defaults, the cross-reference checks, and each run's resolved spec."""

from __future__ import annotations

import copy
import math
from importlib import resources
from pathlib import Path

import yaml

from . import data, design, modelnames, published
from .errors import ScaleauditError
from .records import RunSpec

SCHEMA_FILE = "config.schema.yaml"
NOT_TRAINING_KEYS = ("label", "reproduces", "resources", "ladder")


def schema() -> dict:
    return yaml.safe_load(resources.files(__package__).joinpath(SCHEMA_FILE).read_text())


def _fill_defaults(instance, sub: dict, root: dict) -> None:
    """Fill in schema defaults, as Snakemake's ``validate(..., set_default=True)`` does: of each object's
    properties (through ``$ref``, maps' ``additionalProperties``, arrays' items and object branches of ``oneOf``)."""
    if "$ref" in sub:
        sub = root["$defs"][sub["$ref"].rsplit("/", 1)[1]]
    if isinstance(instance, dict):
        properties = sub.get("properties", {})
        for name, prop in properties.items():
            if "default" in prop and name not in instance:
                instance[name] = copy.deepcopy(prop["default"])
            if name in instance:
                _fill_defaults(instance[name], prop, root)
        if isinstance(sub.get("additionalProperties"), dict):
            for name in instance.keys() - properties.keys():
                _fill_defaults(instance[name], sub["additionalProperties"], root)
        for branch in sub.get("oneOf", []):
            if branch.get("type") == "object":
                _fill_defaults(instance, branch, root)
    elif isinstance(instance, list) and isinstance(sub.get("items"), dict):
        for item in instance:
            _fill_defaults(item, sub["items"], root)


def _errors(config: dict, schema_: dict) -> list[str]:
    """The schema's complaints; none where jsonschema is not installed (a bare CUDA image running gpu_check.py:
    its configs are built by code, and the checks below still run)."""
    try:
        import jsonschema
    except ImportError:
        return []

    def where(error) -> str:
        return "/".join(str(p) for p in error.absolute_path) or "(top level)"

    def expected(error) -> str:
        """The failing key's schema description, so that e.g. a bad ``oneOf`` says what would be valid."""
        desc = error.schema.get("description") if isinstance(error.schema, dict) else None
        return f" (expected: {desc})" if desc else ""

    errors = sorted(jsonschema.Draft202012Validator(schema_).iter_errors(config), key=lambda e: list(e.absolute_path))
    return [f"  - at {where(e)}: {e.message}{expected(e)}" for e in errors]


def _non_finite(value, where: str = ""):
    """Paths of the NaN and infinite numbers in a parsed config (YAML's ``.nan``, ``.inf``)."""
    if isinstance(value, float) and not math.isfinite(value):
        yield f"{where or '(top level)'} = {value}"
    elif isinstance(value, dict):
        for key, sub in value.items():
            yield from _non_finite(sub, f"{where}/{key}" if where else str(key))
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            yield from _non_finite(sub, f"{where}/{i}" if where else str(i))


def validate(config: dict, registry: bool = True) -> dict:
    """Validate against the JSON schema (filling defaults) and check cross-references; return a copy.

    ``registry=False`` leaves out the model names' check against timm's registry (checked once by the process
    that plans the study; a cluster job re-reading the Snakefile need not import timm again)."""
    config = copy.deepcopy(config)
    # JSON-schema bounds compare false with NaN, so a NaN passes every minimum and maximum: refuse it first.
    if bad := list(_non_finite(config)):
        raise ScaleauditError(
            "invalid configuration: numbers must be finite:\n" + "\n".join(f"  - at {b}" for b in bad),
            "replace .nan / .inf with a finite number in range (workflow/schemas/config.schema.yaml gives each range)",
        )
    schema_ = schema()
    _fill_defaults(config, schema_, schema_)
    lines = _errors(config, schema_)
    if lines:
        raise ScaleauditError(
            "invalid configuration:\n" + "\n".join(lines),
            "correct these keys (workflow/schemas/config.schema.yaml lists every allowed key)",
        )
    check_references(config, registry)
    return config


def check_references(config: dict, registry: bool = True) -> None:
    """Names that the schema cannot check: datasets, arms, recipes, sizes, published results and (``registry``)
    timm models and weights."""
    if registry:
        from . import models  # timm's registry: the one part of config that needs torch (~10 s to import)

    for entry in config["data"]["datasets"]:
        for size in entry["sizes"]:
            data.official_source(entry["flag"], size)
    s = design.adaptive_seeds(config)
    if s and s["max"] < s["initial"]:
        raise ScaleauditError(
            f"design.seeds: max ({s['max']}) is below initial ({s['initial']})",
            "set max to at least initial (max = initial runs one round only, like a fixed count)",
        )
    arms = config["arms"]
    for name in config["design"]["arms"]:
        if name not in arms:
            raise ScaleauditError(
                f"design.arms names an unknown arm {name!r}", f"define it under `arms:` or use one of {', '.join(arms)}"
            )
    for name, arm in arms.items():
        if arm["recipe"] not in config["recipes"]:
            raise ScaleauditError(
                f"arm {name!r} uses an unknown recipe {arm['recipe']!r}",
                f"define it under `recipes:` or use one of {', '.join(config['recipes'])}",
            )
        if arm.get("reproduces"):
            published.check(arm["reproduces"], where=f"arm {name!r}")
            if registry:
                published.check_weights(
                    arm["reproduces"], models.pretrained_name(arm) if arm["pretrained"] else None, where=f"arm {name!r}"
                )
        if registry and name in config["design"]["arms"]:
            models.check_arm(arm, where=f"arm {name!r}")
            if config["recipes"][arm["recipe"]]["normalize"] == "pretrained":
                try:
                    models.pretrained_mean_std(arm)
                except ScaleauditError as exc:
                    raise ScaleauditError(f"arm {name!r} (recipe {arm['recipe']!r}): {exc.problem}", exc.fix) from None
    design.check_ladders(config)


def load(*paths: str | Path, overrides: dict | None = None) -> dict:
    """Read YAML files (later ones deep-merged over earlier ones, as Snakemake does) and validate."""
    merged: dict = {}
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise ScaleauditError(f"config file {path} does not exist", "pass the path of a YAML study config")
        _merge(merged, yaml.safe_load(path.read_text()) or {})
    _merge(merged, overrides or {})
    return validate(merged)


def _merge(base: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)


def device_request(device: str, arm: dict) -> str:
    """Where an arm's runs train: ``hardware.device``, or under ``auto`` CUDA exactly for arms that book a GPU."""
    if device != "auto":
        return device
    return "cuda" if arm.get("resources", {}).get("gpu") else "cpu"


def run_spec(config: dict, dataset: str, size: int, arm: str, fraction: float, seed: int) -> RunSpec:
    """Everything one training job needs, resolved; its hash identifies the run's configuration."""
    # Display, comparison and scheduling keys do not change what is trained: they must not re-run it.
    arm_spec = {k: v for k, v in config["arms"][arm].items() if k not in NOT_TRAINING_KEYS}
    if definition := modelnames.DEFINITIONS.get(modelnames.split_name(arm_spec["model"])[0]):
        arm_spec["definition"] = definition  # a model scaleaudit defines: which definition trained it
    # the protocol a recipe follows is documentation for the report, not a training setting
    recipe = {k: v for k, v in config["recipes"][arm_spec["recipe"]].items() if k != "protocol"} | {
        "name": arm_spec["recipe"]
    }
    s = design.adaptive_seeds(config)  # adaptive seeds: the round is bookkeeping, not in the hash
    return RunSpec.create(
        study=config["study"],
        dataset=dataset,
        size=size,
        arm=arm,
        arm_spec=arm_spec,
        recipe=recipe,
        fraction=fraction,
        seed=seed,
        hardware=config["hardware"],
        device=device_request(config["hardware"]["device"], config["arms"][arm]),
        round=design.round_of(s, int(seed)) if s else None,
    )
