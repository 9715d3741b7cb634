#!/usr/bin/env bash
# Snakemake runs this once, inside the new conda environment, from the workflow's working directory:
# install the scaleaudit package (its pinned dependencies are already in the environment).
set -euo pipefail
[ -f pyproject.toml ] && grep -q '^name = "scaleaudit"' pyproject.toml || {
    echo "run snakemake from the scaleaudit repository root (no scaleaudit pyproject.toml in $PWD)" >&2
    exit 1
}
python -m pip install --no-deps -e .
