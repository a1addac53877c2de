# Per slide: inspect -> tissue -> tile -> features, plus the two QC aggregations.
# Per-slide commands run with --no-fail: a slide that cannot be used gets a failure marker
# (status, stage, reason) as its output instead of stopping the run; qc_slides lists it in
# results/qc/slides.tsv and training/evaluation read only usable slides. A crash or kill
# still fails the job and leaves no output (Snakemake reruns it as incomplete). A sheet row
# whose file does not exist is inspected too (status `missing`), and one that vanishes later
# fails at its next stage: every rule takes the path through params and the file as an input
# only where it exists (once its features are made, its loss stops the run instead, naming
# it: zoommil.workflow.vanished). Outputs name the slide by the sheet's slide_id (--slide-id), which
# may differ from its file name.


rule inspect:
    input:
        slide=existing_slide,
    output:
        "results/qc/{slide}.json",
    log:
        "results/logs/inspect/{slide}.log",
    conda:
        "../../envs/wsi.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        code=code("inspect"),
        slide=slide_path,
        mpp=inspect_mpp,
    shell:
        "zoommil inspect {params.slide:q} --slide-id {wildcards.slide:q} {params.mpp} "
        "--out {output} --no-fail > {log} 2>&1"


checkpoint qc_inspect:
    input:
        sheet=sheet_file(),
        status=all_status,
    output:
        table="results/qc/inspection.tsv",
    log:
        "results/logs/qc_inspect/qc_inspect.log",
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        code=code("scripts/qc_inspect.py"),
        classes=config.get("classes"),
    script:
        "../../scripts/qc_inspect.py"


rule tissue:
    input:
        slide=slide_after_inspection,
        sheet=demo_sheet,
    output:
        mask="results/tissue/{slide}.png",
    log:
        "results/logs/tissue/{slide}.log",
    conda:
        "../../envs/wsi.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        code=code("tissue"),
        slide=slide_path,
        mpp=inspected_mpp,
        method=RECIPE.tissue_method,
        extra=zwf.param_flags("--param", RECIPE.tissue_params),
    shell:
        # OpenCV's blurs took every core, beside the jobs on the others; a shell edit reruns
        # nothing (profiles/default leaves Snakemake's code trigger out)
        "OPENCV_FOR_THREADS_NUM={threads} "
        "zoommil tissue {params.slide:q} --out {output.mask} --method {params.method} "
        "{params.mpp} {params.extra} --no-fail > {log} 2>&1"


rule tile:
    input:
        slide=slide_after_inspection,
        sheet=demo_sheet,
        mask="results/tissue/{slide}.png",
    output:
        coords="results/coords/{slide}.h5",
    log:
        "results/logs/tile/{slide}.log",
    conda:
        "../../envs/wsi.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        code=code("tile"),
        slide=slide_path,
        mpp=inspected_mpp,
        recipe=zwf.tiling_flags(RECIPE),
        extra=zwf.cli_flags(config["preprocess"].get("tile_args")),
    # --no-tissue all: a slide without tissue keeps its patches here and is excluded (or
    # not) by qc_slides under the recipe's policy, so that the QC table can report it.
    shell:
        "zoommil tile {params.slide:q} {params.recipe} --out {output.coords} "
        "--tissue-mask {input.mask} --no-tissue all {params.mpp} {params.extra} --no-fail "
        "> {log} 2>&1"


rule features:
    input:
        slide=existing_slide,
        coords="results/coords/{slide}.h5",
    output:
        features="results/features/{slide}.h5",
    log:
        "results/logs/features/{slide}.log",
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=features_mem_mb,
        runtime=120,
        gpu=1,
    params:
        code=code("features"),
        slide=slide_path,
        recipe=zwf.encoder_flags(RECIPE),
        weights_sha256=WEIGHTS_SHA256,
        extra=zwf.cli_flags(FEATURES_ARGS),
        execution=features_execution_flags,
        device=device,
        gpu_slot=gpu_slot,
    shell:
        "{params.gpu_slot}zoommil features {params.slide:q} --slide-id {wildcards.slide:q} "
        "--coords {input.coords} --out {output.features} {params.recipe} --device {params.device} --threads {threads} --no-progress "
        "{params.extra} {params.execution} --no-fail > {log} 2>&1"


checkpoint qc_slides:
    input:
        sheet=sheet_file(),
        inspection="results/qc/inspection.tsv",
        features=inspected_features,
    output:
        table=report(
            "results/qc/slides.tsv",
            caption="../report/qc_slides.rst",
            category="QC",
        ),
        usable="results/qc/usable.tsv",
        manifest=FEATURE_MANIFEST,
    log:
        "results/logs/qc_slides/qc_slides.log",
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        code=code("scripts/qc_slides.py"),
        classes=config.get("classes"),
        no_tissue=RECIPE.no_tissue,
        mags=list(RECIPE.mags),
    script:
        "../../scripts/qc_slides.py"
