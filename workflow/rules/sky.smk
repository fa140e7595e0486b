# Stage 0 (source: mock): the simulated SDSS survey, catalogue tables and truth.


rule sky:
    output:
        db=f"{SKY_DIR}/sdss_mock.duckdb",
        truth=f"{SKY_DIR}/truth.parquet",
        meta=f"{SKY_DIR}/sky.json",
        realism=report(
            f"{RESULTS}/sky/realism.txt",
            caption="../report/realism.rst",
            category="Simulated survey",
        ),
    log:
        f"{RESULTS}/logs/sky.log",
    benchmark:
        f"{RESULTS}/benchmarks/sky.tsv"
    conda:
        "../../envs/pipeline.yaml"
    threads: 1
    params:
        code=stage_code(
            "ssl_photoz.surveys.sdss.sky.survey",
            "ssl_photoz.report.sky_realism",
        ),
        section=section_json("sky"),
        out_dir=lambda wildcards, output: os.path.dirname(output.meta),
    shell:
        "ssl-photoz sky --section-json {params.section:q} --out {params.out_dir}"
        " --validate --validation-report {output.realism} > {log} 2>&1"
