# Stage 4c: a pretraining diagnostic that spends no labels budget: kNN and linear photo-z probes on
# frozen embeddings of the pretrained encoder and of the same encoder at random initialisation,
# both trained on the training labels and scored on the validation objects.


rule probe:
    input:
        pretrained=rules.pretrain.output.model,
        manifest=rules.gather.output.manifest,
    output:
        table=report(
            f"{RESULTS}/probe.tsv",
            caption="../report/probe.rst",
            category="Photo-z",
        ),
    log:
        f"{RESULTS}/logs/probe.log",
    benchmark:
        f"{RESULTS}/benchmarks/probe.tsv"
    conda:
        "../../envs/pipeline.yaml"
    threads: workflow.cores
    resources:
        gpu=lambda wildcards: gpus_per_training_job(),
        mem_mb=4000,
        precision="auto",  # machine setting, as in learn.smk
        gpu_ids="auto",  # card pool of gpu-run (machine setting; see profiles/default)
    params:
        code=stage_code("ssl_photoz.evaluate.probe"),
        sections=sections_json("probe"),
        store=STORE,
        device=lambda wildcards, resources: training_device(resources),
    shell:
        "ssl-photoz gpu-run --gpus {resources.gpu} --ids {resources.gpu_ids} --"
        " ssl-photoz probe --sections-json {params.sections:q}"
        " --pretrained {input.pretrained} --store {params.store}"
        " --out {output.table} --device {params.device}"
        " --precision {resources.precision} > {log} 2>&1"
