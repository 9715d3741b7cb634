# scaleaudit: do large pretrained vision models pay off on narrow medical-imaging tasks?
#   snakemake --profile workflow/profiles/local --configfile config/demo.yaml   (the CPU demo)
#   snakemake --profile workflow/profiles/local                                (the full study)
configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        RUN_TABLE,
        REPORT,
    default_target: True
