# Stage 5: the paper's figures, summary.md with the paper's table and the leakage guard.
# `snakemake --report` collects the outputs marked report() with the captions in workflow/report/.


rule figures:
    input:
        metrics=rules.evaluate.output.metrics,
        summary=rules.evaluate.output.summary,
        pdf_objects=rules.evaluate.output.pdf_objects,
        predictions=prediction_files,
        manifest=rules.gather.output.manifest,
        stats=rules.stats.output.stats,
    output:
        sigma=report(
            f"{RESULTS}/figures/fig2_sigma_vs_fraction.png",
            caption="../report/fig2_sigma_vs_fraction.rst",
            category="Photo-z",
        ),
        efficiency=report(
            f"{RESULTS}/figures/fig2_label_efficiency.png",
            caption="../report/fig2_label_efficiency.rst",
            category="Photo-z",
        ),
        density=report(
            f"{RESULTS}/figures/dz_vs_zspec.png",
            caption="../report/dz_vs_zspec.rst",
            category="Photo-z",
        ),
        augmentations=report(
            f"{RESULTS}/figures/augmentations.png",
            caption="../report/augmentations.rst",
            category="Data",
        ),
        pit=report(
            f"{RESULTS}/figures/pit_histograms.png",
            caption="../report/pit_histograms.rst",
            category="Photo-z PDFs",
        ),
        coverage=report(
            f"{RESULTS}/figures/pdf_coverage.png",
            caption="../report/pdf_coverage.rst",
            category="Photo-z PDFs",
        ),
        pdf_examples=report(
            f"{RESULTS}/figures/pdf_examples.png",
            caption="../report/pdf_examples.rst",
            category="Photo-z PDFs",
        ),
        efficiency_table=f"{RESULTS}/figures/label_efficiency.tsv",
    log:
        f"{RESULTS}/logs/figures.log",
    benchmark:
        f"{RESULTS}/benchmarks/figures.tsv"
    conda:
        "../../envs/pipeline.yaml"
    params:
        code=stage_code("ssl_photoz.report.figures"),
        store=STORE,
        out_dir=lambda wildcards, output: os.path.dirname(output.sigma),
        sections=sections_json("model"),  # the networks' crop (the augmentation gallery)
    shell:
        "ssl-photoz figures --sections-json {params.sections:q}"
        " --metrics {input.metrics} --metrics-summary {input.summary}"
        " --predictions {input.predictions} --store {params.store} --stats {input.stats}"
        " --pdf-objects {input.pdf_objects}"
        " --out-dir {params.out_dir} > {log} 2>&1"


rule summary:
    input:
        objects=rules.select.output.objects,
        manifest=rules.gather.output.manifest,
        summary=rules.evaluate.output.summary,
        paired=rules.evaluate.output.paired,
        efficiency=rules.figures.output.efficiency_table,
        predictions=prediction_files,
        probe=rules.probe.output.table,
        training=training_summaries,
    output:
        summary=report(
            f"{RESULTS}/summary.md",
            caption="../report/summary.rst",
            category="Summary",
        ),
        leakage=report(
            f"{RESULTS}/leakage.tsv",
            caption="../report/leakage.rst",
            category="Summary",
        ),
    log:
        f"{RESULTS}/logs/summary.log",
    benchmark:
        f"{RESULTS}/benchmarks/summary.tsv"
    conda:
        "../../envs/pipeline.yaml"
    params:
        code=stage_code(
            "ssl_photoz.report.summary",
            "ssl_photoz.report.paired",
            "ssl_photoz.evaluate.leakage",
        ),
        # The whole config as run (defaults filled): summary.md shows it.
        config=json.dumps(config, sort_keys=True),
        store=STORE,
    shell:
        "ssl-photoz summary --config-json {params.config:q}"
        " --objects {input.objects} --store {params.store}"
        " --metrics-summary {input.summary} --metrics-paired {input.paired}"
        " --label-efficiency {input.efficiency}"
        " --predictions {input.predictions} --probe {input.probe}"
        " --cutouts-manifest {input.manifest}"
        " --training-summaries {input.training} --out {output.summary}"
        " --leakage {output.leakage} > {log} 2>&1"
