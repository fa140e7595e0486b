# Stage 2: Montage cut-outs of every object into the sharded Zarr store, then channel statistics.


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
        code=stage_code("ssl_photoz.cutouts", "ssl_photoz.sky.survey"),
        section=section_json("cutouts"),
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
    params:
        code=stage_code("ssl_photoz.cutouts", "ssl_photoz.frames"),
        section=section_json("cutouts"),
        store=STORE,
        sky_dir=sky_dir_argument,
    shell:
        "ssl-photoz cutouts --section-json {params.section:q} --objects {input.objects}"
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
        code=stage_code("ssl_photoz.cutouts"),
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
        code=stage_code("ssl_photoz.cutouts"),
        section=section_json("cutouts"),
        store=STORE,
    shell:
        "ssl-photoz stats --section-json {params.section:q} --store {params.store}"
        " --out {output.stats} > {log} 2>&1"
