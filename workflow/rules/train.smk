localrules:
    next_round,


rule train:
    """Train one arm on one dataset, fraction and seed; resumes from its checkpoint when re-run."""
    input:
        data="results/data/{dataset}_{size}.npz",
        record="results/data/{dataset}_{size}.json",
        weights=weights_record,
        tracking=f"{RESULTS}/tracking.json",
    output:
        metrics=f"{RUN_DIR}/metrics.json",
    log:
        f"{LOGS}/train/{{dataset}}_{{size}}/{{arm}}/frac{{fraction}}_seed{{seed}}.log",
    group:
        train_group
    conda:
        CONDA_ENV
    threads: train_resource("cpus", 1)
    resources:
        mem_mb=train_resource("mem_mb", 2000),
        runtime=train_resource("runtime", 30),
        gpu=train_gpu,
        gres=train_gres,
        gpu_slots=train_gpu_slots,
    params:
        spec=run_spec,
        outdir=lambda wildcards, output: Path(output.metrics).parent,
        weights=lambda wildcards, input: f"--weights {input.weights}" if input.weights else "",
        share=runs_per_gpu,
    shell:
        "scaleaudit train --spec {params.spec:q} --data {input.record} {params.weights} "
        "--tracking {input.tracking} --out {params.outdir} --threads {threads} --runs-per-gpu {params.share} > {log} 2>&1"


checkpoint next_round:
    """Adaptive seeds: after round r - 1, the runs of round r (the comparisons still undecided)."""
    input:
        metrics=lambda wildcards: metrics_of(runs_upto(int(wildcards.round) - 1)),
        config=f"{RESULTS}/config.resolved.json",
    output:
        ROUND_PLAN,
    log:
        f"{LOGS}/rounds/round{{round}}.log",
    conda:
        CONDA_ENV
    shell:
        "scaleaudit next-round --round {wildcards.round} --config {input.config} --out {output} "
        "{input.metrics} > {log} 2>&1"
