"""Settings that the config or the environment can give, resolved in one place with one precedence.

A value set in the config (or on a step's command line, where the workflow passes the config's value)
wins; a key the config leaves null is taken from its environment variable; else the built-in default
applies. The config is what a study records and hashes, so a stray shell variable never redirects a
study whose config names the place; to override a configured value, override the config
(``snakemake --config data.mirror=...``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Setting:
    key: str  # dotted config key
    env: str  # environment variable that fills it when the config leaves it null
    default: str  # what applies when neither gives a value (documentation only)


SETTINGS = (
    Setting("data.mirror", "SCALEAUDIT_MIRROR", "download from the official URLs (Zenodo)"),
    Setting("weights.dir", "SCALEAUDIT_WEIGHTS_DIR", "the timm / Hugging Face hub"),
    Setting("tracking.uri", "MLFLOW_TRACKING_URI", "sqlite:///<working dir>/results/mlflow.db"),
    Setting("shift.python", "SCALEAUDIT_MEDMNISTC_PYTHON", ".venv-medmnistc/bin/python beside the Snakefile"),
)
BY_KEY = {s.key: s for s in SETTINGS}


def lookup(key: str, configured: str | None, environ: Mapping[str, str] = os.environ) -> tuple[str | None, str]:
    """The value of setting ``key`` and where it came from: 'config', '$VAR' or 'default' (value None)."""
    setting = BY_KEY[key]
    if configured:
        return configured, "config"
    if environ.get(setting.env):
        return environ[setting.env], f"${setting.env}"
    return None, "default"


def value(key: str, configured: str | None) -> str | None:
    return lookup(key, configured)[0]


def configured(config: dict, key: str) -> str | None:
    section, name = key.split(".")
    return config.get(section, {}).get(name)


def record(key: str, configured: str | None, environ: Mapping[str, str] = os.environ) -> dict[str, dict]:
    """``{key: {"value", "source", "env"}}``: how one setting was resolved, for a step's output record."""
    val, source = lookup(key, configured, environ)
    return {key: {"value": val, "source": source, "env": BY_KEY[key].env}}


def resolve(config: dict, environ: Mapping[str, str] = os.environ) -> dict[str, dict]:
    """Every setting of a validated config, resolved (``record`` of each), for config.resolved.json."""
    out = {}
    for s in SETTINGS:
        out |= record(s.key, configured(config, s.key), environ)
    return out


def recorded(*records: dict | None) -> dict[str, dict]:
    """The settings that the step records (data, weights, tracking) carry, merged."""
    return {k: v for r in records if r for k, v in r.get("settings", {}).items()}


def as_params(resolution: dict[str, dict]) -> dict[str, str]:
    """A resolution as flat MLflow params: ``setting.<key>`` = value, ``setting.<key>.source`` = where from."""
    params = {}
    for key, r in resolution.items():
        params[f"setting.{key}"] = r["value"] if r["value"] is not None else "(default)"
        params[f"setting.{key}.source"] = r["source"]
    return params
