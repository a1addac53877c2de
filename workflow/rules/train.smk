# Per method x seed: one process trains, writes its train config (a params value, so a
# changed training parameter reruns exactly the affected methods) and evaluates the kept
# epoch on the test split (the JSON `zoommil evaluate` would write, without a second process
# that loads torch and the features again). A new seed or method only adds jobs.


rule train:
    input:
        qc="results/qc/slides.tsv",
        features=usable_features,
    output:
        checkpoint="results/models/{method}/seed~{seed}/checkpoint.pt",
        metrics="results/models/{method}/seed~{seed}/metrics.json",
        log_csv="results/models/{method}/seed~{seed}/log.csv",
        config="results/models/{method}/seed~{seed}/train_config.yaml",
        evaluation="results/eval/{method}/seed~{seed}.json",
    log:
        "results/logs/train/{method}/seed~{seed}.log",
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        code=code("train"),
        config=train_config,
        out=output_dir,
    shell:
        "printf '%s' {params.config:q} > {output.config} && "
        "zoommil train --config {output.config} --model {wildcards.method} "
        "--seed {wildcards.seed} --out {params.out} --eval-out {output.evaluation} "
        "--threads {threads} --no-progress > {log} 2>&1"
