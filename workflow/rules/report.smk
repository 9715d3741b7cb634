localrules:
    resolve_config,
    aggregate,
    report,


rule resolve_config:
    """The validated config with every default filled in, and how each setting was resolved (config, else
    environment: scaleaudit/settings.py); the report's Methods are generated from it."""
    output:
        f"{RESULTS}/config.resolved.json",
    log:
        f"{LOGS}/resolve_config.log",
    conda:
        CONDA_ENV
    params:
        config=json.dumps(config, sort_keys=True),
        # not read by the command (it resolves them itself, in this environment): a changed override re-runs it
        settings=json.dumps(SETTINGS, sort_keys=True),
    shell:
        "scaleaudit validate-config --inline {params.config:q} --resolved {output} > {log} 2>&1"


rule aggregate:
    """One table of every run, from the per-run metrics files, each compared with its MLflow run."""
    input:
        metrics=all_metrics,
        tracking=f"{RESULTS}/tracking.json",
    output:
        report(RUN_TABLE, caption="../report/runs.rst", category="Runs"),
    log:
        f"{LOGS}/aggregate.log",
    conda:
        CONDA_ENV
    shell:
        "scaleaudit aggregate {input.metrics} --tracking {input.tracking} --out {output} > {log} 2>&1"


rule report:
    """The study report: the verdict, methods, results, costs and provenance, as PDF and the same as Markdown."""
    input:
        runs=RUN_TABLE,
        config=f"{RESULTS}/config.resolved.json",
        metrics=all_metrics,  # their folders hold the learning curves and test predictions
        shift=SHIFT_TABLE if config["shift"]["enabled"] else [],
        plan=lambda wildcards: PLAN if Path(PLAN).exists() else [],
    output:
        pdf=report(REPORT, caption="../report/pdf.rst", category="Report"),
        markdown=REPORT.removesuffix(".pdf") + ".md",
        assets=report(
            directory(f"{RESULTS}/report"),
            patterns=["{figure}.png"],
            caption="../report/figures.rst",
            category="Figures",
            labels={"figure": "{figure}"},
        ),
    log:
        f"{LOGS}/report.log",
    conda:
        CONDA_ENV
    params:
        shift=lambda wildcards, input: f"--shift {input.shift}" if input.shift else "",
        plan=lambda wildcards, input: f"--plan {input.plan}" if input.plan else "",
    shell:
        "scaleaudit report --runs {input.runs} --config {input.config} --metrics {input.metrics} "
        "--assets {output.assets} --out {output.pdf} {params.shift} {params.plan} > {log} 2>&1"
