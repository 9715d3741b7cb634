localrules:
    fetch_data,
    fetch_weights,
    init_tracking,


rule fetch_data:
    """Download (or copy from the mirror) one MedMNIST file, verified before it lands."""
    output:
        npz="results/data/{dataset}_{size}.npz",
        record="results/data/{dataset}_{size}.json",
    log:
        "logs/data/{dataset}_{size}.log",
    conda:
        CONDA_ENV
    params:
        # null in the config: the command takes $SCALEAUDIT_MIRROR (settings.py), and records which it used
        mirror=optional_flag("--mirror", config["data"]["mirror"]),
    shell:
        "scaleaudit fetch-data --dataset {wildcards.dataset} --size {wildcards.size} --out {output.npz} "
        "{params.mirror} > {log} 2>&1"


rule fetch_weights:
    """Find a pretrained arm's weights (hub, local folder or file) and record their provenance."""
    output:
        f"{RESULTS}/weights/{{arm}}.json",
    log:
        f"{LOGS}/weights/{{arm}}.log",
    conda:
        CONDA_ENV
    params:
        spec=lambda wc: json.dumps(arm(wc)),
        weights_dir=optional_flag("--weights-dir", config["weights"]["dir"]),  # else $SCALEAUDIT_WEIGHTS_DIR
        selfmade="--allow-selfmade" if config["weights"]["allow_selfmade"] else "",
    shell:
        "scaleaudit fetch-weights --arm {wildcards.arm} --arm-spec {params.spec:q} {params.weights_dir} {params.selfmade} "
        "--out {output} > {log} 2>&1"


rule init_tracking:
    """Create the study's MLflow experiment once, before training jobs fan out."""
    output:
        f"{RESULTS}/tracking.json",
    log:
        f"{LOGS}/init_tracking.log",
    conda:
        CONDA_ENV
    params:
        uri=optional_flag("--uri", config["tracking"]["uri"]),  # else $MLFLOW_TRACKING_URI
        experiment=experiment_name(config["tracking"]["experiment"], STUDY),
        system_metrics="--system-metrics" if config["tracking"]["system_metrics"] else "",
        log_model="--log-model" if config["tracking"]["log_model"] else "",
    shell:
        "scaleaudit init-tracking --experiment {params.experiment:q} --out {output} "
        "--artifact-root results/mlartifacts {params.uri} {params.system_metrics} {params.log_model} > {log} 2>&1"
