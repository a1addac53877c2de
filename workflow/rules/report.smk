# Per dataset: tables (CSV, Markdown, LaTeX; main, ablations, paired comparisons, per-class,
# calibration, and the reliability diagram's bins as CSV; for binary tasks the operating points
# fixed on the val split, results/operating_points/),
# Figure 3 (throughput vs accuracy; PNG and PDF), Figure 4 (attention maps; PNG and PDF), each
# figure with its source data (CSV: every value it plots); and the exclusions table: every
# slide left out at any stage (QC's, then predict and profile).
# A model card per method (results/model_cards/), from the files the jobs above wrote.
# `snakemake --report results/report.html` holds the tables' CSVs, the figures' PNGs and source
# CSVs and the exclusions' HTML; the Markdown, LaTeX and PDF files stay in results/ only.


rule tables:
    input:
        unpack(throughput_inputs),
        qc="results/qc/slides.tsv",
        exclusions="results/qc/exclusions.tsv",
        # its patient column: the CIs and tests resample a patient's slides together
        sheet=sheet_file(),
        evals=runs("results/eval/", ".json"),
        flops=expand("results/efficiency/{method}/flops.json", method=ALL_METHODS),
        # the val split's per-slide probabilities (operating points fixed on validation) and
        # the checkpoints they are for (their sha256 goes into the operating-point files)
        val_reports=run_files("results/models/{method}/seed~{seed}/metrics.json"),
        checkpoints=run_files(MODEL_CHECKPOINT),
    output:
        # `report: {subgroups: [site]}` only: per method and site (any sheet column) AUC and
        # balanced accuracy, and the gap between sites (none by default: the outputs below)
        **subgroup_outputs(),
        main_csv=report(
            "results/tables/main.csv",
            caption="../report/table_main.rst",
            category="Tables",
        ),
        main_md="results/tables/main.md",
        main_tex="results/tables/main.tex",
        ablation_csv=report(
            "results/tables/ablations.csv",
            caption="../report/table_ablations.rst",
            category="Tables",
        ),
        ablation_md="results/tables/ablations.md",
        ablation_tex="results/tables/ablations.tex",
        comparison_csv=report(
            "results/tables/comparisons.csv",
            caption="../report/table_comparisons.rst",
            category="Tables",
        ),
        comparison_md="results/tables/comparisons.md",
        comparison_tex="results/tables/comparisons.tex",
        per_class_csv=report(
            "results/tables/per_class.csv",
            caption="../report/table_per_class.rst",
            category="Tables",
        ),
        per_class_md="results/tables/per_class.md",
        per_class_tex="results/tables/per_class.tex",
        calibration_csv=report(
            "results/tables/calibration.csv",
            caption="../report/table_calibration.rst",
            category="Tables",
        ),
        calibration_md="results/tables/calibration.md",
        calibration_tex="results/tables/calibration.tex",
        reliability_csv=report(
            "results/tables/reliability.csv",
            caption="../report/table_reliability.rst",
            category="Tables",
        ),
        # binary tasks: per method, seed and target specificity, a threshold fixed on the
        # val split (`zoommil predict --operating-point`), and index.tsv listing them
        operating_points=directory("results/operating_points"),
    log:
        "results/logs/tables/tables.log",
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        code=code("scripts/make_tables.py"),
        dataset=config["dataset"],
        weights=zshown.shown_weights(RECIPE.weights),
        encoder=RECIPE.encoder,
        mags=list(RECIPE.mags),
        devices=list(PROFILE_DEVICES),
        methods=MAIN_METHODS,
        ablations=ABLATIONS,
        reference=(config.get("ablations") or {}).get("reference"),
        subgroups=SUBGROUPS,
    script:
        "../../scripts/make_tables.py"


rule figure_throughput:
    input:
        unpack(throughput_inputs),
        sheet=sheet_file(),  # its patient column, as the tables'
        evals=runs("results/eval/", ".json", EFFICIENCY_METHODS),
    output:
        png=report(
            "results/figures/throughput.png",
            caption="../report/figure_throughput.rst",
            category="Figures",
        ),
        pdf="results/figures/throughput.pdf",
        csv=report(
            "results/figures/throughput.csv",
            caption="../report/figure_throughput_data.rst",
            category="Figures",
        ),
    log:
        "results/logs/figure_throughput/figure_throughput.log",
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        code=code("scripts/figure_throughput.py"),
        dataset=config["dataset"],
        weights=zshown.shown_weights(RECIPE.weights),
        encoder=RECIPE.encoder,
        devices=list(PROFILE_DEVICES),
        methods=EFFICIENCY_METHODS,
    script:
        "../../scripts/figure_throughput.py"


# Figure 4's settings as a file: its predictions enter figure_attention and qc_exclusions as
# checkpoint targets, and Snakemake skips the params and input-set checks of a job whose input
# holds one, so without this input a new n_slides or method would rerun nothing.
# A local rule: writing a small file needs no cluster job, and a SLURM job of 100 MB would be
# killed by the ~340 MB of Snakemake's own job step under cgroup memory enforcement.
rule attention_settings:
    output:
        "results/figures/attention_settings.json",
    log:
        "results/logs/attention_settings/attention_settings.log",
    localrule: True
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=100,
        runtime=1,
    params:
        settings=json.dumps(ATTENTION, sort_keys=True),
    shell:
        "printf '%s\\n' {params.settings:q} > {output} 2> {log}"


rule figure_attention:
    input:
        settings="results/figures/attention_settings.json",
        predictions=attention_predictions,
        usable="results/qc/usable.tsv",
    output:
        png=report(
            "results/figures/attention.png",
            caption="../report/figure_attention.rst",
            category="Figures",
        ),
        pdf="results/figures/attention.pdf",
        csv=report(
            "results/figures/attention.csv",
            caption="../report/figure_attention_data.rst",
            category="Figures",
        ),
    log:
        "results/logs/figure_attention/figure_attention.log",
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        code=code("scripts/figure_attention.py"),
        dataset=config["dataset"],
        weights=zshown.shown_weights(RECIPE.weights),
        encoder=RECIPE.encoder,
        method=ATTENTION["method"],
        n_slides=ATTENTION["n_slides"],
    script:
        "../../scripts/figure_attention.py"


rule qc_exclusions:
    input:
        qc="results/qc/slides.tsv",
        settings="results/figures/attention_settings.json",
        predictions=attention_predictions,
        timings=all_throughput_files(),
    output:
        table="results/qc/exclusions.tsv",
        html=report(
            "results/qc/exclusions.html",
            caption="../report/qc_exclusions.rst",
            category="QC",
        ),
    log:
        "results/logs/qc_exclusions/qc_exclusions.log",
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        code=code("scripts/qc_exclusions.py"),
        dataset=config["dataset"],
    script:
        "../../scripts/qc_exclusions.py"


# The resolved config and the environment (code commit, libraries, CPU) beside the results:
# Snakemake keeps neither in results/, and `snakemake --report` labels from today's config.
# Rerun by any config change and by any code change that reruns a job (`all_code`).
# In the torch env under --sdm conda: the one that computed the features and models (the
# report env has no torch, and its record named none).
rule provenance:
    output:
        record="results/provenance.json",
    log:
        "results/logs/provenance/provenance.log",
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        code=all_code("scripts/provenance.py"),
        config=zprovenance.config_text(config),
    script:
        "../../scripts/provenance.py"


# A model card per method (Mitchell et al. 2019): what the model is, what it was trained on,
# how well it did with what uncertainty and its measured limitations, every number read from
# the files below (zoommil.reporting.model_card). In the torch env: it reads the checkpoints.
rule model_cards:
    input:
        checkpoints=lambda w: expand(
            MODEL_CHECKPOINT, method=w.method, seed=seeds_of(w.method)
        ),
        metrics=lambda w: expand(
            "results/models/{method}/seed~{seed}/metrics.json",
            method=w.method,
            seed=seeds_of(w.method),
        ),
        main="results/tables/main.csv",
        ablations="results/tables/ablations.csv",
        operating_points="results/operating_points",
        qc="results/qc/slides.tsv",
        sheet=sheet_file(),
    output:
        card="results/model_cards/{method}.md",
    log:
        "results/logs/model_cards/{method}.log",
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        # 0.71 GB measured (torch and the checkpoints); the cluster profiles give 2000 too
        mem_mb=2000,
        runtime=5,
    params:
        code=code("scripts/model_card.py"),
        dataset=config["dataset"],
        spec=lambda w: dict(ALL_METHODS[w.method]),
    script:
        "../../scripts/model_card.py"
