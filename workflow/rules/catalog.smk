# Stage 1: the catalogue. CasJobs SQL on SDSS (or DuckDB on the simulated survey), then cuts,
# de-duplication and the train/validation split.


# The queries talk to SkyServer/CasJobs: with a cluster executor they run on the submitting host
# (compute nodes often have no internet), one at a time (resource skyserver). The CasJobs waiting
# and clean-up settings (ssl_photoz.surveys.sdss.query.settings.MACHINE_KEYS) reach them through
# the resource `machine`, not params: changing them reruns nothing. A CasJobs run records its job
# beside the output (<output>.casjobs.json), so a rerun reattaches to it.


localrules:
    query_labeled,
    query_unlabeled,


rule query_labeled:
    input:
        unpack(query_inputs),
        sql=f"{QUERIES}/labeled.sql",
    output:
        rows=f"{RESULTS}/catalog/labeled.parquet",
        provenance=f"{RESULTS}/catalog/labeled.provenance.json",
    log:
        f"{RESULTS}/logs/query_labeled.log",
    benchmark:
        f"{RESULTS}/benchmarks/query_labeled.tsv"
    conda:
        "../../envs/pipeline.yaml"
    resources:
        skyserver=1,
        machine=query_machine_json,  # waiting and clean-up settings: no rerun trigger
    params:
        code=stage_code("ssl_photoz.surveys.sdss.query.run"),
        section=query_section_json(),
        sky_db=sky_db_argument,
    shell:
        "ssl-photoz query-labeled --section-json {params.section:q} {params.sky_db}"
        " --machine-json {resources.machine:q} --sql {input.sql}"
        " --out {output.rows} > {log} 2>&1"


rule query_unlabeled:
    input:
        unpack(query_inputs),
        sql=f"{QUERIES}/unlabeled.sql",
    output:
        rows=f"{RESULTS}/catalog/unlabeled.parquet",
        provenance=f"{RESULTS}/catalog/unlabeled.provenance.json",
    log:
        f"{RESULTS}/logs/query_unlabeled.log",
    benchmark:
        f"{RESULTS}/benchmarks/query_unlabeled.tsv"
    conda:
        "../../envs/pipeline.yaml"
    resources:
        skyserver=1,
        machine=query_machine_json,  # waiting and clean-up settings: no rerun trigger
    params:
        code=stage_code("ssl_photoz.surveys.sdss.query.run"),
        section=query_section_json(),
        sky_db=sky_db_argument,
    shell:
        "ssl-photoz query-unlabeled --section-json {params.section:q} {params.sky_db}"
        " --machine-json {resources.machine:q} --sql {input.sql}"
        " --out {output.rows} > {log} 2>&1"


rule select:
    input:
        labeled=rules.query_labeled.output.rows,
        unlabeled=rules.query_unlabeled.output.rows,
    output:
        objects=f"{RESULTS}/catalog/objects.parquet",
        rejects=f"{RESULTS}/catalog/rejects.parquet",
        counts=f"{RESULTS}/catalog/counts.json",
    log:
        f"{RESULTS}/logs/select.log",
    benchmark:
        f"{RESULTS}/benchmarks/select.tsv"
    conda:
        "../../envs/pipeline.yaml"
    params:
        code=stage_code("ssl_photoz.catalog.select"),
        section=section_json("select"),
        out_dir=lambda wildcards, output: os.path.dirname(output.objects),
    shell:
        "ssl-photoz select --section-json {params.section:q} --labeled {input.labeled}"
        " --unlabeled {input.unlabeled} --out-dir {params.out_dir} > {log} 2>&1"
