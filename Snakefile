# ZoomMIL benchmark workflow: slides -> QC -> tissue -> aligned tiles -> ResNet-50 features
# -> ZoomMIL + 8 MIL baselines x seeds -> evaluation -> FLOPs/throughput -> tables, figures.
#
#   snakemake --cores 2                                    # the offline demo (config/config.yaml)
#   snakemake --cores 8 --configfile config/bright.yaml    # a paper dataset, your slide sheet
#   snakemake --report results/report.html                 # HTML report after a run
from snakemake.utils import min_version

min_version("9.22")


# A --configfile (a paper preset, your own) replaces the demo config instead of extending it,
# so the demo's methods never leak into another dataset's run; --config alone extends it.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/efficiency.smk"
include: "workflow/rules/report.smk"


# Encoded slides whose file is gone stop a run before its first job: see
# zoommil.workflow.vanished (only a run: --report and --unlock still work).
onstart:
    if VANISHED:
        raise WorkflowError(zvanished.vanished_message(VANISHED))


# Exit as soon as the last job is done: see zoommil.workflow.timers.
onsuccess:
    ztimers.cancel_pending_timers()


# The failed jobs' logs at the end, where the run's last screen named none: see
# zoommil.workflow.joblogs.
onerror:
    ztimers.cancel_pending_timers()
    for line in zjoblogs.failed_logs_message(log):
        print(line, file=sys.stderr)


rule all:
    default_target: True
    input:
        final_targets(),
