# FLOPs (fvcore) of every method in one job: ~0.3 s each after ~3.5 s of process start and
# imports, which one job per method paid 15 times over. Per method, end-to-end throughput from
# the slide file, on CPU with one thread (device cpu1) and with every core (cpu), and on a GPU
# (gpu) when there is one. One timing job per device times every method: ZoomMIL on its own,
# the all-patch methods that read the same patches with one read-and-encode pass per slide,
# each charged that pass plus its own head. Timing jobs take every core (threads:
# all_cores()) so that no other local job runs beside them. Without a GPU, `zoommil profile
# --device cuda` writes a skip note, as where the job is granted none (`--resources gpu=0`:
# the GPU is hidden from it); `efficiency.gpu: false` drops the GPU timings. Methods,
# checkpoints and outputs in FLOPS_ORDER / TIMED_ORDER (common.smk): one order for all three.


rule flops:
    input:
        checkpoints=[first_seed_checkpoint(m) for m in FLOPS_ORDER],
        usable="results/qc/usable.tsv",
    output:
        flops=expand("results/efficiency/{method}/flops.json", method=FLOPS_ORDER),
    log:
        "results/logs/flops.log",
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=flops_runtime,
    params:
        code=code("flops"),
        models=" ".join(FLOPS_ORDER),
        features_dir="results/features",
    shell:
        "zoommil flops --model {params.models} --checkpoint {input.checkpoints} "
        "--features-dir {params.features_dir} --sheet {input.usable} --split test "
        "--threads {threads} --out {output.flops} > {log} 2>&1"


rule profile:
    input:
        checkpoints=[first_seed_checkpoint(m) for m in TIMED_ORDER],
        usable="results/qc/usable.tsv",
    output:
        timings=expand(
            "results/efficiency/{method}/throughput_{{device}}.json",
            method=TIMED_ORDER,
        ),
    log:
        "results/logs/profile/{device}.log",
    wildcard_constraints:
        device="|".join(PROFILE_DEVICES),
    conda:
        "../../envs/torch.yaml"
    threads: all_cores()
    resources:
        mem_mb=profile_mem_mb,
        runtime=lambda wildcards: PROFILE_DEVICES[wildcards.device]["runtime"],
        gpu=lambda wildcards: PROFILE_DEVICES[wildcards.device]["gpu"],
    params:
        code=code("profile"),
        models=" ".join(TIMED_ORDER),
        device=lambda wildcards: PROFILE_DEVICES[wildcards.device]["device"],
        threads=lambda wildcards, threads: PROFILE_DEVICES[wildcards.device]["threads"]
        or threads,
        n_slides=EFFICIENCY["n_slides"],
        warmup=EFFICIENCY["warmup"],
        hidden_gpu=hidden_gpu,
        gpu_slot=gpu_slot,
    shell:
        "{params.hidden_gpu} {params.gpu_slot}zoommil profile --model {params.models} "
        "--checkpoint {input.checkpoints} "
        "--device {params.device} --threads {params.threads} --sheet {input.usable} "
        "--split test --max-slides {params.n_slides} --warmup {params.warmup} "
        "--out {output.timings} > {log} 2>&1"


# A checkpoint: Figure 4 replaces a test slide whose prediction failed by the next one
# (`attention_predictions`), which it can only know once the prediction is made.
checkpoint predict:
    input:
        slide=slide_after_inspection,
        sheet=demo_sheet,
        checkpoint=attention_checkpoint,
        usable="results/qc/usable.tsv",
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
        code=code("predict"),
        slide=slide_path,
        mpp=inspected_mpp,
        device=device,
        gpu_slot=gpu_slot,
    shell:
        # tissue detection runs in this process: OpenCV's blurs took every core (as in the
        # tissue rule); a shell edit reruns nothing (profiles/default leaves Snakemake's code
        # trigger out)
        "OPENCV_FOR_THREADS_NUM={threads} "
        "{params.gpu_slot}zoommil predict {params.slide:q} --slide-id {wildcards.slide:q} "
        "--checkpoint {input.checkpoint} "
        "--heatmap {output.heatmap} --json {output.json} {params.mpp} "
        "--device {params.device} --no-fail > {log} 2>&1"
