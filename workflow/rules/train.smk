# Per method x seed: train -> evaluate. One train config per method (not per seed), so a
# new seed or method only adds jobs, and a changed training parameter reruns training.


rule train_config:
    output:
        config="results/models/{method}/train_config.yaml",
    log:
        "results/logs/train_config/{method}.log",
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=2,
    params:
        code=code("scripts/write_train_config.py"),
        config=train_config,
    script:
        "../../scripts/write_train_config.py"


rule train:
    input:
        config="results/models/{method}/train_config.yaml",
        qc="results/qc/slides.tsv",
        features=usable_features,
    output:
        checkpoint="results/models/{method}/seed~{seed}/checkpoint.pt",
        metrics="results/models/{method}/seed~{seed}/metrics.json",
        log_csv="results/models/{method}/seed~{seed}/log.csv",
    log:
        "results/logs/train/{method}/seed~{seed}.log",
    benchmark:
        "results/benchmarks/train/{method}/seed~{seed}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        code=code("train"),
        out=output_dir,
    shell:
        "zoommil train --config {input.config} --model {wildcards.method} "
        "--seed {wildcards.seed} --out {params.out} --threads {threads} --no-progress "
        "> {log} 2>&1"


rule evaluate:
    input:
        checkpoint="results/models/{method}/seed~{seed}/checkpoint.pt",
        qc="results/qc/slides.tsv",
        features=usable_features,
    output:
        metrics="results/eval/{method}/seed~{seed}.json",
    log:
        "results/logs/evaluate/{method}/seed~{seed}.log",
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        code=code("evaluate"),
        features_dir="results/features",
    shell:
        "zoommil evaluate --checkpoint {input.checkpoint} --features-dir {params.features_dir} "
        "--split test --threads {threads} --out {output.metrics} > {log} 2>&1"
