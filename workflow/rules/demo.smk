# Demo mode: `zoommil synth` writes the demo slides and their sheet.


checkpoint synth:
    output:
        sheet=f"{DEMO_DIR}/slides.tsv",
    log:
        "results/logs/synth/synth.log",
    conda:
        "../../envs/wsi.yaml"
    threads: 2
    resources:
        mem_mb=3000,
        runtime=30,
    params:
        code=code("synth"),
        out=output_dir,
        n_slides=SYNTH.get("n_slides"),
        seed=SYNTH.get("seed"),
        scale=SYNTH.get("scale"),
    shell:
        "zoommil synth --out {params.out} --n-slides {params.n_slides} "
        "--seed {params.seed} --scale {params.scale} --workers {threads} > {log} 2>&1"
