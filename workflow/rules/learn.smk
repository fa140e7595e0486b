# Stage 3: self-supervised pretraining (pretrain.method: moco_v2, the paper's MoCo v2, or byol;
# code in ssl_photoz.learn.ssl), then fine-tuning (config section finetune) and supervised
# baselines (section supervised: their own recipe, one learning rate) per label fraction and
# seed. Fine-tuning runs once per arm of finetune.arms (ssl_photoz.core.arms), the arm's kind a
# wildcard (models/finetune/ for the paper's arm full, models/finetune_lpft/, ...): each job's
# params hold its arm's recipe alone, so adding an arm or changing another arm's setting reruns
# none of its jobs. Machine settings (device, loader workers, GPUs) come from the profile's resources.
# Resource `precision` (auto | fp32 | bf16 | fp16; default auto, set per rule in the profile's
# set-resources) reaches the command through {resources}, not params: a machine setting, so
# changing it does not rerun finished stages. Each network job runs under `ssl-photoz gpu-run`,
# which gives it free cards of its own (CUDA_VISIBLE_DEVICES, a lock file per card) and takes
# them back when it ends; with gpu=0 it runs the command unchanged.
# Each job resumes its own checkpoint.pt (no declared output: Snakemake never removes it) only
# when its inputs are the same: config, training code, the store (its manifest, passed with
# --manifest) and, for finetune, the pretrained model's content; else it trains afresh.
# Data-parallel pretraining (machine settings, the profile's set-resources for pretrain):
# ddp_processes=N ranks (default 1: one process), each with an equal share of pretrain.batch_size
# (the effective batch and the lr stay the configured ones); ddp_launcher=torchrun starts them on
# this machine (torchrun --standalone; gloo on CPU, one card each on GPUs), ddp_launcher=srun as
# the N tasks of the SLURM job (resources tasks=N, mpi="srun": see profiles/slurm-gpu).


rule pretrain:
    input:
        manifest=rules.gather.output.manifest,
        stats=rules.stats.output.stats,
    output:
        model=f"{RESULTS}/models/pretrain/model.pt",
        summary=f"{RESULTS}/models/pretrain/summary.json",
    log:
        f"{RESULTS}/logs/pretrain.log",
    benchmark:
        f"{RESULTS}/benchmarks/pretrain.tsv"
    conda:
        "../../envs/pipeline.yaml"
    threads: workflow.cores
    resources:
        gpu=lambda wildcards: gpus_per_training_job(),
        mem_mb=8000,
        precision="auto",
        gpu_ids="auto",  # card pool of gpu-run (machine setting; see profiles/default)
        ddp_processes=1,
        ddp_launcher="torchrun",
    params:
        code=stage_code("ssl_photoz.learn.train"),
        sections=sections_json("model", "pretrain"),
        store=STORE,
        device=lambda wildcards, resources: training_device(resources),
    shell:
        "ssl-photoz gpu-run --gpus {resources.gpu} --ids {resources.gpu_ids}"
        " --torchrun --processes {resources.ddp_processes} --launcher {resources.ddp_launcher}"
        " --threads {threads} --"
        " ssl-photoz pretrain --sections-json {params.sections:q} --store {params.store}"
        " --manifest {input.manifest} --stats {input.stats}"
        " --out {output.model} --summary {output.summary}"
        " --device {params.device} --precision {resources.precision} > {log} 2>&1"


rule finetune:
    input:
        manifest=rules.gather.output.manifest,
        pretrained=rules.pretrain.output.model,
    output:
        model=f"{RESULTS}/models/{{arm_kind}}/f{{fraction}}_s{{seed}}/model.pt",
        summary=f"{RESULTS}/models/{{arm_kind}}/f{{fraction}}_s{{seed}}/summary.json",
    log:
        f"{RESULTS}/logs/{{arm_kind}}/f{{fraction}}_s{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{arm_kind}}/f{{fraction}}_s{{seed}}.tsv"
    wildcard_constraints:
        arm_kind=arm_kinds(),
        fraction=r"[0-9.]+",
        seed=r"\d+",
    conda:
        "../../envs/pipeline.yaml"
    threads: workflow.cores
    resources:
        gpu=lambda wildcards: gpus_per_training_job(),
        mem_mb=4000,
        precision="auto",
        gpu_ids="auto",  # card pool of gpu-run (machine setting; see profiles/default)
    params:
        code=stage_code("ssl_photoz.learn.train"),
        sections=arm_sections,
        arm=lambda wildcards: arms.arm_of_kind(wildcards.arm_kind).name,
        store=STORE,
        device=lambda wildcards, resources: training_device(resources),
    shell:
        "ssl-photoz gpu-run --gpus {resources.gpu} --ids {resources.gpu_ids} --"
        " ssl-photoz finetune --sections-json {params.sections:q} --store {params.store}"
        " --manifest {input.manifest} --pretrained {input.pretrained} --arm {params.arm}"
        " --fraction {wildcards.fraction} --seed {wildcards.seed}"
        " --out {output.model} --summary {output.summary}"
        " --device {params.device} --precision {resources.precision} > {log} 2>&1"


rule supervised:
    input:
        manifest=rules.gather.output.manifest,
    output:
        model=f"{RESULTS}/models/supervised/f{{fraction}}_s{{seed}}/model.pt",
        summary=f"{RESULTS}/models/supervised/f{{fraction}}_s{{seed}}/summary.json",
    log:
        f"{RESULTS}/logs/supervised/f{{fraction}}_s{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/supervised/f{{fraction}}_s{{seed}}.tsv"
    wildcard_constraints:
        fraction=r"[0-9.]+",
        seed=r"\d+",
    conda:
        "../../envs/pipeline.yaml"
    threads: workflow.cores
    resources:
        gpu=lambda wildcards: gpus_per_training_job(),
        mem_mb=4000,
        precision="auto",
        gpu_ids="auto",  # card pool of gpu-run (machine setting; see profiles/default)
    params:
        code=stage_code("ssl_photoz.learn.train"),
        sections=sections_json("model", "supervised", "arm_selection"),
        store=STORE,
        device=lambda wildcards, resources: training_device(resources),
    shell:
        "ssl-photoz gpu-run --gpus {resources.gpu} --ids {resources.gpu_ids} --"
        " ssl-photoz supervised --sections-json {params.sections:q} --store {params.store}"
        " --manifest {input.manifest} --fraction {wildcards.fraction} --seed {wildcards.seed}"
        " --out {output.model} --summary {output.summary} --device {params.device}"
        " --precision {resources.precision} > {log} 2>&1"
