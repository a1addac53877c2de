# Per method x seed (or per method with train.seeds_in_one_job: every seed one after the other
# in one process, which saves the process start and imports, ~3-4 s a seed on a small CPU): the
# job writes its train config (a params value, so a changed training parameter reruns exactly
# the affected methods) and evaluates the kept epoch on the test split (the JSON `zoommil
# evaluate` would write, without a second process that loads torch and the features again).
# Per seed, a new seed or method only adds jobs; with seeds in one job a new seed reruns the
# method's job (with the same results for the old seeds). The longest trainings start first
# (priority: the method's expected cost), so short ones, not TransMIL, end the stage.


rule train:
    input:
        qc="results/qc/slides.tsv",
        features=usable_features,
    output:
        checkpoint=run_paths(MODEL_CHECKPOINT),
        metrics=run_paths("results/models/{method}/seed~{seed}/metrics.json"),
        log_csv=run_paths("results/models/{method}/seed~{seed}/log.csv"),
        config=run_paths("results/models/{method}/seed~{seed}/train_config.yaml"),
        evaluation=run_paths("results/eval/{method}/seed~{seed}.json"),
    log:
        (
            "results/logs/train/{method}/seeds.log"
            if SEEDS_IN_ONE_JOB
            else "results/logs/train/{method}/seed~{seed}.log"
        ),
    priority: train_priority
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=train_mem_mb,
        runtime=240 * (len(SEEDS) if SEEDS_IN_ONE_JOB else 1),
    params:
        code=code("train"),
        config=train_config,
        config_file=first_file,
        seeds=train_seeds,
        out=run_dirs,
        device=device,
        gpu_slot=gpu_slot,
    shell:
        "printf '%s' {params.config:q} | tee {output.config} > /dev/null && "
        "{params.gpu_slot}zoommil train --config {params.config_file} --model {wildcards.method} "
        "--seed {params.seeds} --out {params.out} --eval-out {output.evaluation} "
        "--device {params.device} --threads {threads} --no-progress > {log} 2>&1"
