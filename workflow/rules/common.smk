import json
import shlex
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from scaleaudit import design, devices
from scaleaudit import config as study_config
from scaleaudit import settings
from scaleaudit.errors import ScaleauditError
from scaleaudit.tracking import experiment_name

min_version("9.0")

# The package's validation (schema with defaults + names the schema cannot check), so that a bad
# config fails at parse time with the same problem-and-fix message as `scaleaudit validate-config`.
# A job on a cluster node parses this file again: the registry check (timm, ~10 s to import) ran here before.
try:
    config.update(study_config.validate(config, registry=not workflow.remote_exec))
except ScaleauditError as exc:
    raise WorkflowError(f"config: {exc}") from None
validate(config, schema="../schemas/config.schema.yaml")

STUDY = config["study"]
RESULTS = f"results/{STUDY}"
LOGS = f"logs/{STUDY}"
RUN_DIR = f"{RESULTS}/runs/{{dataset}}_{{size}}/{{arm}}/frac{{fraction}}/seed{{seed}}"
RUN_TABLE = str(design.run_table_path(config))
REPORT = f"reports/{STUDY}.pdf"
PLAN = str(design.plan_path(config))  # written by `scaleaudit plan` before the study (make study), if at all
RUNS = list(design.runs(config))  # with adaptive seeds: the first round
ADAPTIVE = design.adaptive_seeds(config)
ROUND_PLAN = f"{RESULTS}/rounds/round{{round}}.json"
# data.mirror, weights.dir, tracking.uri: the config's value, else the environment's (settings.py). The
# steps that use them run here (localrules), so they resolve them the same way and record what they used.
SETTINGS = settings.resolve(config)
# One software environment for every rule (used with --software-deployment-method conda); it installs
# the scaleaudit package of this version, pinned to the tested versions (envs/requirements.lock.txt).
CONDA_ENV = "../../envs/scaleaudit.yaml"
# Training jobs of CPU-only arms at small input sizes last seconds to minutes: on a cluster they are
# grouped (the slurm profile's group-components says how many share one booking).
SHORT_TRAIN_GROUP = "short_train"
SHORT_TRAIN_MAX_SIZE = 64
# A GPU is GPU_SLOTS of the `gpu_slots` resource (devices.py; the local profile has one GPU); each job claims
# its slots on one GPU when it starts (runtime.claim_gpu).
GPU_SLOTS = devices.GPU_SLOTS


wildcard_constraints:
    dataset=r"[a-z0-9]+",
    size=r"\d+",
    arm=r"[A-Za-z0-9_.-]+",
    fraction=r"[0-9.]+",
    seed=r"\d+",
    round=r"\d+",


def optional_flag(flag, value):
    """``--flag 'value'`` for a configured value; nothing for null (the step then reads the environment)."""
    return f"{flag} {shlex.quote(str(value))}" if value else ""


def arm(wildcards):
    return config["arms"][wildcards.arm]


def run_spec(wildcards):
    """The resolved spec of one training run; a change to it re-runs only that run."""
    spec = study_config.run_spec(
        config, wildcards.dataset, int(wildcards.size), wildcards.arm, float(wildcards.fraction), int(wildcards.seed)
    )
    return json.dumps(spec.to_dict(), sort_keys=True)


def weights_record(wildcards):
    return f"{RESULTS}/weights/{wildcards.arm}.json" if arm(wildcards)["pretrained"] else []


def train_resource(name, default):
    """An arm's declared resource, else a default that grows with its input size; retries escalate it."""

    def get(wildcards, attempt):
        declared = arm(wildcards)["resources"].get(name)
        if declared is None:
            size = arm(wildcards)["input_size"] or int(wildcards.size)
            declared = default * max(1, size // 64)
        return declared * attempt if name in ("mem_mb", "runtime") else declared

    return get


def runs_per_gpu(wildcards):
    """How many runs of the arm share one GPU: 1 unless it books a GPU and declares resources.runs_per_gpu."""
    declared = arm(wildcards)["resources"]
    return declared.get("runs_per_gpu", 1) if declared.get("gpu") else 1


def train_gpu(wildcards):
    """Whole GPUs for one job (Slurm --gpus); shared runs book theirs once per group instead (gres)."""
    return 0 if runs_per_gpu(wildcards) > 1 else arm(wildcards)["resources"].get("gpu", 0)


def train_gres(wildcards):
    """``gpu:1`` for runs that share a GPU: a string resource, so a group of them books one GPU, not n."""
    return "gpu:1" if runs_per_gpu(wildcards) > 1 else ""


def train_gpu_slots(wildcards):
    return GPU_SLOTS * arm(wildcards)["resources"].get("gpu", 0) // runs_per_gpu(wildcards)


def train_group(wildcards):
    """``gpu_share<n>`` for runs that share a GPU, ``short_train`` for CPU-only arms at <= 64 px (grouped
    on a cluster), else no group (one job each)."""
    declared = arm(wildcards)["resources"]
    if runs_per_gpu(wildcards) > 1:
        return f"gpu_share{runs_per_gpu(wildcards)}"
    size = arm(wildcards)["input_size"] or int(wildcards.size)
    return SHORT_TRAIN_GROUP if not declared.get("gpu") and size <= SHORT_TRAIN_MAX_SIZE else None


def metrics_of(runs):
    return expand(f"{RUN_DIR}/metrics.json", zip, **{k: [run[k] for run in runs] for k in RUNS[0]})


def runs_upto(last):
    """The runs of rounds 1..last: the design's first round, then each round the checkpoint next_round planned
    (an empty round ends the study; Snakemake evaluates the checkpoint before it reads its output)."""
    runs = list(RUNS)
    for r in range(2, last + 1):
        planned = json.loads(Path(checkpoints.next_round.get(round=r).output[0]).read_text())["runs"]
        if not planned:
            break
        runs += planned
    return runs


def all_metrics(wildcards):
    """metrics.json of every run; with adaptive seeds, of every round up to the first empty one or the last."""
    return metrics_of(runs_upto(len(design.looks(ADAPTIVE))) if ADAPTIVE else RUNS)
