from snakemake.settings.types import DeploymentMethod

SHIFT = config["shift"]
CORRUPTED = "results/data/corrupted/{dataset}_{size}"
SHIFT_TABLE = f"{RESULTS}/runs_shift.csv"
SHIFT_VERDICT = f"{RESULTS}/shift_verdict.csv"
# Under --software-deployment-method conda the rule's own env (envs/medmnistc.yaml) provides `python`;
# otherwise shift.python, else $SCALEAUDIT_MEDMNISTC_PYTHON (settings.py), else the corruption venv that
# `make medmnistc-env` builds beside the Snakefile.
SHIFT_PYTHON = (
    "python"
    if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
    else settings.value("shift.python", SHIFT["python"])
    or str(Path(workflow.basedir) / ".venv-medmnistc" / "bin" / "python")
)


localrules:
    aggregate_shift,
    shift_verdict,


rule corrupt_test_set:
    """MedMNIST-C: every corruption of the dataset at 5 severities, made with medmnistc in its own environment,
    checked and recorded (seed, corruptions, versions, SHA-256); built once per dataset and size."""
    input:
        data="results/data/{dataset}_{size}.npz",
        record="results/data/{dataset}_{size}.json",
    output:
        npz=f"{CORRUPTED}.npz",
        record=f"{CORRUPTED}.json",
    log:
        "logs/data/corrupted/{dataset}_{size}.log",
    conda:
        "../../envs/medmnistc.yaml"
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        python=SHIFT_PYTHON,
        seed=SHIFT["seed"],
    shell:
        "{params.python} -m scaleaudit.corrupt --data {input.data} --dataset {wildcards.dataset} "
        "--size {wildcards.size} --seed {params.seed} --out {output.npz} --record {output.record} > {log} 2>&1"


rule shift_eval:
    """One finished run's kept weights on every corruption and severity of its dataset (no retraining), on the
    run's device: booked, grouped and shared as its training is (a GPU arm's job gets a GPU, or a slot of one)."""
    input:
        metrics=f"{RUN_DIR}/metrics.json",
        corrupted=f"{CORRUPTED}.json",
        corrupted_npz=f"{CORRUPTED}.npz",
        record="results/data/{dataset}_{size}.json",
        weights=weights_record,
    output:
        f"{RUN_DIR}/shift.json",
    log:
        f"{LOGS}/shift/{{dataset}}_{{size}}/{{arm}}/frac{{fraction}}_seed{{seed}}.log",
    group:
        train_group
    conda:
        CONDA_ENV
    threads: train_resource("cpus", 1)
    resources:
        mem_mb=train_resource("mem_mb", 2000),
        runtime=train_resource("runtime", 10),
        gpu=train_gpu,
        gres=train_gres,
        gpu_slots=train_gpu_slots,
    params:
        run=lambda wildcards, input: Path(input.metrics).parent,
        weights=lambda wildcards, input: f"--weights {input.weights}" if input.weights else "",
        share=runs_per_gpu,
    shell:
        "scaleaudit shift-eval --run {params.run} --corrupted {input.corrupted} --data {input.record} "
        "{params.weights} --threads {threads} --runs-per-gpu {params.share} --out {output} > {log} 2>&1"


rule aggregate_shift:
    """One table of every run under every corruption and severity (severity 0: clean)."""
    input:
        # shift.json of every run that all_metrics lists (adaptive rounds included)
        lambda wildcards: [str(Path(m).with_name("shift.json")) for m in all_metrics(wildcards)],
    output:
        SHIFT_TABLE,
    log:
        f"{LOGS}/aggregate_shift.log",
    conda:
        CONDA_ENV
    shell:
        "scaleaudit aggregate-shift {input} --out {output} > {log} 2>&1"


rule shift_verdict:
    """The verdict on clean and on corrupted test sets (per corruption family and averaged), and the change of gain:
    the report's shift table (its clean rows take the test sample from the runs' predictions, as the report's do)."""
    input:
        runs=RUN_TABLE,
        shift=SHIFT_TABLE,
        metrics=all_metrics,  # their folders hold the test predictions
        config=f"{RESULTS}/config.resolved.json",
    output:
        SHIFT_VERDICT,
    log:
        f"{LOGS}/shift_verdict.log",
    conda:
        CONDA_ENV
    shell:
        "scaleaudit shift-verdict --runs {input.runs} --shift {input.shift} --metrics {input.metrics} "
        "--config {input.config} --out {output} > {log} 2>&1"
