# Per slide: inspect -> tissue -> tile -> features, plus the two QC aggregations.
# Per-slide commands run with --no-fail: a slide that cannot be used gets a failure marker
# (status, stage, reason) as its output instead of stopping the run; qc_slides lists it in
# results/qc/slides.tsv and training/evaluation read only usable slides. A crash or kill
# still fails the job and leaves no output (Snakemake reruns it as incomplete).


rule inspect:
    input:
        slide=slide_path,
        lib=lib("inspect"),
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
        mpp=mpp_args,
    shell:
        "zoommil inspect {input.slide:q} {params.mpp} --out {output} --no-fail > {log} 2>&1"


checkpoint qc_inspect:
    input:
        sheet=sheet_file(),
        status=all_status,
        lib=lib("qc"),
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
        classes=config.get("classes"),
    script:
        "../../scripts/qc_inspect.py"


rule tissue:
    input:
        slide=slide_path,
        status="results/qc/{slide}.json",
        lib=lib("tissue"),
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
        mpp=mpp_args,
        method=config["preprocess"].get("tissue", {}).get("method", "gaussian"),
        extra=zwf.param_flags(
            "--param", config["preprocess"].get("tissue", {}).get("params")
        ),
    shell:
        "zoommil tissue {input.slide:q} --out {output.mask} --method {params.method} "
        "{params.mpp} {params.extra} --no-fail > {log} 2>&1"


rule tile:
    input:
        slide=slide_path,
        mask="results/tissue/{slide}.png",
        lib=lib("tile"),
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
        mpp=mpp_args,
        mags=zwf.format_mags(config["preprocess"]["mags"]),
        patch_size=config["preprocess"].get("patch_size", 256),
        threshold=config["preprocess"].get("tissue", {}).get("threshold", 0.1),
        upsampling=(
            "--allow-upsampling"
            if config["preprocess"].get("allow_upsampling")
            else ""
        ),
        extra=zwf.cli_flags(config["preprocess"].get("tile_args")),
    shell:
        "zoommil tile {input.slide:q} --mags {params.mags} --out {output.coords} "
        "--patch-size {params.patch_size} --tissue-mask {input.mask} "
        "--tissue-threshold {params.threshold} --no-tissue all {params.mpp} "
        "{params.upsampling} {params.extra} --no-fail > {log} 2>&1"


rule features:
    input:
        slide=slide_path,
        coords="results/coords/{slide}.h5",
        lib=lib("features"),
    output:
        features="results/features/{slide}.h5",
    log:
        "results/logs/features/{slide}.log",
    benchmark:
        "results/benchmarks/features/{slide}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=6000,
        runtime=120,
        gpu=1,
    params:
        mpp=mpp_override,
        encoder=config.get("features", {}).get("encoder", "resnet50_layer3"),
        weights=config.get("features", {}).get("weights", "imagenet"),
        seed=config.get("features", {}).get("seed", 0),
        extra=zwf.cli_flags(config.get("features", {}).get("args")),
    shell:
        "zoommil features {input.slide:q} --coords {input.coords} --out {output.features} "
        "--encoder {params.encoder} --weights {params.weights} --seed {params.seed} "
        "--threads {threads} --no-progress {params.mpp} {params.extra} --no-fail > {log} 2>&1"


checkpoint qc_slides:
    input:
        sheet=sheet_file(),
        inspection="results/qc/inspection.tsv",
        features=inspected_features,
        lib=lib("qc"),
    output:
        table=report(
            "results/qc/slides.tsv",
            caption="../report/qc_slides.rst",
            category="QC",
        ),
        usable="results/qc/usable.tsv",
        manifest="results/qc/features.tsv",
    log:
        "results/logs/qc_slides/qc_slides.log",
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        classes=config.get("classes"),
        no_tissue=config["preprocess"].get("tissue", {}).get("no_tissue", "exclude"),
    script:
        "../../scripts/qc_slides.py"
