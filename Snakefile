# scaleaudit: do large pretrained vision models pay off on narrow medical-imaging tasks?
#   snakemake --configfile config/demo.yaml      (the CPU demo; workflow/profiles/default applies)
#   snakemake                                    (the full study)
#   snakemake --report report.html               (afterwards: figures, run table and PDF in one HTML file)
configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/shift.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        RUN_TABLE,
        REPORT,
        [SHIFT_TABLE, SHIFT_VERDICT] if SHIFT["enabled"] else [],
