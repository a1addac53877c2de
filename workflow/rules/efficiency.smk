# Per method: FLOPs (fvcore) and end-to-end throughput from the slide file, on CPU with one
# thread and with every core, and on a GPU when there is one. Timing rules take every core
# (threads: workflow.cores) so no other local job runs beside them. Without a GPU,
# `zoommil profile --device cuda` writes a skip note; `efficiency.gpu: false` drops the rule.


rule flops:
    input:
        checkpoint=first_checkpoint,
        usable="results/qc/usable.tsv",
        lib=lib("flops"),
    output:
        flops="results/efficiency/{method}/flops.json",
    log:
        "results/logs/flops/{method}.log",
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        features_dir="results/features",
    shell:
        "zoommil flops --model {wildcards.method} --checkpoint {input.checkpoint} "
        "--features-dir {params.features_dir} --sheet {input.usable} --split test "
        "--out {output.flops} > {log} 2>&1"


rule profile_cpu_single:
    input:
        checkpoint=first_checkpoint,
        usable="results/qc/usable.tsv",
        lib=lib("profile"),
    output:
        timing="results/efficiency/{method}/throughput_cpu1.json",
    log:
        "results/logs/profile_cpu_single/{method}.log",
    conda:
        "../../envs/torch.yaml"
    threads: workflow.cores
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        n_slides=EFFICIENCY.get("n_slides", 2),
        warmup=EFFICIENCY.get("warmup", 1),
    shell:
        "zoommil profile --model {wildcards.method} --checkpoint {input.checkpoint} "
        "--device cpu --threads 1 --sheet {input.usable} --split test "
        "--max-slides {params.n_slides} --warmup {params.warmup} --out {output.timing} "
        "> {log} 2>&1"


rule profile_cpu_all:
    input:
        checkpoint=first_checkpoint,
        usable="results/qc/usable.tsv",
        lib=lib("profile"),
    output:
        timing="results/efficiency/{method}/throughput_cpu.json",
    log:
        "results/logs/profile_cpu_all/{method}.log",
    conda:
        "../../envs/torch.yaml"
    threads: workflow.cores
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        n_slides=EFFICIENCY.get("n_slides", 2),
        warmup=EFFICIENCY.get("warmup", 1),
    shell:
        "zoommil profile --model {wildcards.method} --checkpoint {input.checkpoint} "
        "--device cpu --threads {threads} --sheet {input.usable} --split test "
        "--max-slides {params.n_slides} --warmup {params.warmup} --out {output.timing} "
        "> {log} 2>&1"


rule profile_gpu:
    input:
        checkpoint=first_checkpoint,
        usable="results/qc/usable.tsv",
        lib=lib("profile"),
    output:
        timing="results/efficiency/{method}/throughput_gpu.json",
    log:
        "results/logs/profile_gpu/{method}.log",
    conda:
        "../../envs/torch.yaml"
    threads: workflow.cores
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=1,
    params:
        n_slides=EFFICIENCY.get("n_slides", 2),
        warmup=EFFICIENCY.get("warmup", 1),
    shell:
        "zoommil profile --model {wildcards.method} --checkpoint {input.checkpoint} "
        "--device cuda --threads {threads} --sheet {input.usable} --split test "
        "--max-slides {params.n_slides} --warmup {params.warmup} --out {output.timing} "
        "> {log} 2>&1"


rule predict:
    input:
        slide=slide_path,
        checkpoint=attention_checkpoint,
        usable="results/qc/usable.tsv",
        lib=lib("predict"),
    output:
        json="results/predict/{method}/{slide}.json",
        heatmap="results/predict/{method}/{slide}.png",
    log:
        "results/logs/predict/{method}/{slide}.log",
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        mpp=mpp_args,
    shell:
        "zoommil predict {input.slide:q} --checkpoint {input.checkpoint} "
        "--heatmap {output.heatmap} --json {output.json} {params.mpp} --no-fail > {log} 2>&1"
