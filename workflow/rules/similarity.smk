# Stage 4b: similarity search in the MoCo embedding space (the paper's Fig. 1) and anomalies.


rule embed:
    input:
        checkpoint=rules.pretrain.output.model,
        manifest=rules.gather.output.manifest,
        stats=rules.stats.output.stats,
    output:
        embeddings=f"{RESULTS}/similarity/embeddings.parquet",
        index=f"{RESULTS}/similarity/embeddings.faiss",
        index_info=f"{RESULTS}/similarity/embeddings.faiss.json",
    log:
        f"{RESULTS}/logs/embed.log",
    benchmark:
        f"{RESULTS}/benchmarks/embed.tsv"
    conda:
        "../../envs/pipeline.yaml"
    threads: workflow.cores
    resources:
        gpu=lambda wildcards: gpus_per_training_job(),
        mem_mb=4000,
        precision="auto",  # machine setting, as in learn.smk
        gpu_ids="auto",  # card pool of gpu-run (machine setting; see profiles/default)
    params:
        code=stage_code(
            "ssl_photoz.similarity.embeddings", "ssl_photoz.similarity.index"
        ),
        store=STORE,
        device=lambda wildcards, resources: training_device(resources),
    shell:
        "ssl-photoz gpu-run --gpus {resources.gpu} --ids {resources.gpu_ids} --"
        " ssl-photoz embed --checkpoint {input.checkpoint} --store {params.store}"
        " --stats {input.stats} --out {output.embeddings} --device {params.device}"
        " --precision {resources.precision} > {log} 2>&1"


rule similarity:
    input:
        embeddings=rules.embed.output.embeddings,
        index=rules.embed.output.index,
    output:
        fig1=report(
            f"{RESULTS}/figures/fig1_similarity_search.png",
            caption="../report/fig1_similarity_search.rst",
            category="Similarity search",
        ),
        anomalies=report(
            f"{RESULTS}/similarity/anomalies.tsv",
            caption="../report/anomalies_table.rst",
            category="Similarity search",
        ),
        anomalies_png=report(
            f"{RESULTS}/figures/anomalies.png",
            caption="../report/anomalies.rst",
            category="Similarity search",
        ),
    log:
        f"{RESULTS}/logs/similarity.log",
    benchmark:
        f"{RESULTS}/benchmarks/similarity.tsv"
    conda:
        "../../envs/pipeline.yaml"
    params:
        code=stage_code("ssl_photoz.similarity.search", "ssl_photoz.similarity.figures"),
        sections=sections_json("similarity"),
        store=STORE,
    shell:
        "ssl-photoz similarity --sections-json {params.sections:q}"
        " --embeddings {input.embeddings} --store {params.store}"
        " --fig1 {output.fig1} --anomalies {output.anomalies}"
        " --anomalies-png {output.anomalies_png} > {log} 2>&1"
