# Stage 2: Montage cut-outs of every object into the sharded Zarr store, then channel statistics.
# Triggers: plan_shards and the jobs see only what decides the pixels and the layout
# (cutouts_plan_json) and their code (the simulator's only for frame_source mock); a re-plan keeps
# the store and the jobs keep the Zarr shards already cut from the same objects, frames and
# cutting code; max_missing_fraction is the jobs' alone (cutouts_job_json). The machine and
# network settings (sas_url, cache_dir, cache_policy, cache_max_gb, timeout_s, retries,
# backoff_s) reach the jobs through the resource `machine`, not params: changing them reruns
# nothing. stats_max_images and seed are the stats rule's alone.


checkpoint plan_shards:
    input:
        unpack(frame_inputs),
        objects=rules.select.output.objects,
    output:
        plan=f"{RESULTS}/cutouts/plan.json",
    log:
        f"{RESULTS}/logs/plan_shards.log",
    benchmark:
        f"{RESULTS}/benchmarks/plan_shards.tsv"
    conda:
        "../../envs/pipeline.yaml"
    params:
        code=cutouts_code("plan_shards"),
        section=cutouts_plan_json(),
        store=STORE,
        sky_dir=sky_dir_argument,
    shell:
        "ssl-photoz plan-shards --section-json {params.section:q} --objects {input.objects}"
        " {params.sky_dir} --plan {output.plan} --store {params.store} > {log} 2>&1"


rule cutouts:
    input:
        unpack(frame_inputs),
        objects=rules.select.output.objects,
        plan=f"{RESULTS}/cutouts/plan.json",
    output:
        status=f"{RESULTS}/cutouts/shards/{{shard}}.json",
    log:
        f"{RESULTS}/logs/cutouts/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/cutouts/{{shard}}.tsv"
    wildcard_constraints:
        shard=r"\d+",
    conda:
        "../../envs/pipeline.yaml"
    resources:
        mem_mb=2000,
        # SAS downloads at once: capped by the profile's global sdss_sas (compute nodes then
        # need outbound HTTPS; without it, fetch the frames first and use frame_source: dir).
        sdss_sas=1 if config["cutouts"]["frame_source"] == "sas" else 0,
        machine=cutouts_machine_json,  # machine and network settings: no rerun trigger
    params:
        code=cutouts_code("cutouts"),
        section=cutouts_job_json(),
        store=STORE,
        sky_dir=sky_dir_argument,
    shell:
        "ssl-photoz cutouts --section-json {params.section:q}"
        " --machine-json {resources.machine:q} --objects {input.objects}"
        " --plan {input.plan} --shard {wildcards.shard} --store {params.store}"
        " {params.sky_dir} --out {output.status} > {log} 2>&1"


rule gather:
    input:
        objects=rules.select.output.objects,
        plan=f"{RESULTS}/cutouts/plan.json",
        shards=shard_statuses,
    output:
        manifest=f"{RESULTS}/cutouts/manifest.json",
        rejects=f"{RESULTS}/cutouts/rejects.parquet",
    log:
        f"{RESULTS}/logs/gather.log",
    benchmark:
        f"{RESULTS}/benchmarks/gather.tsv"
    conda:
        "../../envs/pipeline.yaml"
    params:
        code=cutouts_stage_code(),
        store=STORE,
        shards_dir=f"{RESULTS}/cutouts/shards",
    shell:
        "ssl-photoz gather --objects {input.objects} --plan {input.plan}"
        " --shards-dir {params.shards_dir} --store {params.store}"
        " --rejects {output.rejects} --manifest {output.manifest} > {log} 2>&1"


rule stats:
    input:
        manifest=rules.gather.output.manifest,
    output:
        stats=f"{RESULTS}/cutouts/stats.json",
    log:
        f"{RESULTS}/logs/stats.log",
    benchmark:
        f"{RESULTS}/benchmarks/stats.tsv"
    conda:
        "../../envs/pipeline.yaml"
    params:
        code=cutouts_stage_code(),
        section=cutouts_stats_json(),
        store=STORE,
    shell:
        "ssl-photoz stats --section-json {params.section:q} --store {params.store}"
        " --out {output.stats} > {log} 2>&1"
