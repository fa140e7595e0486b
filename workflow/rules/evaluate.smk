# Stage 4: predictions for the validation objects, the catalogue baselines (per label fraction,
# on the image models' objects), metrics.


rule predict:
    input:
        model=f"{RESULTS}/models/{{kind}}/f{{fraction}}_s{{seed}}/model.pt",
        manifest=rules.gather.output.manifest,
    output:
        predictions=f"{RESULTS}/predictions/{{kind}}_f{{fraction}}_s{{seed}}.parquet",
    log:
        f"{RESULTS}/logs/predict/{{kind}}_f{{fraction}}_s{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict/{{kind}}_f{{fraction}}_s{{seed}}.tsv"
    wildcard_constraints:
        kind=predict_kinds(),
        fraction=r"[0-9.]+",
        seed=r"\d+",
    conda:
        "../../envs/pipeline.yaml"
    resources:
        precision="auto",  # machine setting, as in learn.smk
    params:
        code=stage_code("ssl_photoz.evaluate.predict"),
        store=STORE,
    shell:
        "ssl-photoz predict --model {input.model} --store {params.store}"
        " --out {output.predictions} --precision {resources.precision} > {log} 2>&1"


# Every catalogue baseline the config key `baselines` selects (ssl_photoz.baselines), one job per
# label fraction; its module and config section are its kind's (ssl_photoz.core.kinds).
rule baseline_colours:
    input:
        objects=rules.select.output.objects,
        manifest=rules.gather.output.manifest,
    output:
        predictions=f"{RESULTS}/predictions/{{baseline}}_f{{fraction}}.parquet",
    log:
        f"{RESULTS}/logs/baseline_colours/{{baseline}}_f{{fraction}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/baseline_colours/{{baseline}}_f{{fraction}}.tsv"
    wildcard_constraints:
        baseline=baseline_kinds(),
        fraction=r"[0-9.]+",
    conda:
        "../../envs/pipeline.yaml"
    params:
        code=baseline_code,
        arguments=baseline_arguments,
        store=STORE,
    shell:
        "ssl-photoz baseline-colours {params.arguments} --objects {input.objects}"
        " --store {params.store} --fraction {wildcards.fraction}"
        " --out {output.predictions} > {log} 2>&1"


rule evaluate:
    input:
        objects=rules.select.output.objects,
        predictions=prediction_files,
    output:
        metrics=f"{RESULTS}/metrics.tsv",
        bins=f"{RESULTS}/metrics_bins.tsv",
        summary=f"{RESULTS}/metrics_summary.tsv",
        paired=f"{RESULTS}/metrics_paired.tsv",
        pdf_objects=f"{RESULTS}/pdf_objects.parquet",
    log:
        f"{RESULTS}/logs/evaluate.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate.tsv"
    conda:
        "../../envs/pipeline.yaml"
    params:
        code=stage_code("ssl_photoz.evaluate.scores", "ssl_photoz.evaluate.paired"),
        out_dir=lambda wildcards, output: os.path.dirname(output.metrics) or ".",
        # The metric bins, and the classifiers' PDF bins (finetune and supervised share them).
        sections=sections_json("evaluate", "finetune"),
    shell:
        "ssl-photoz evaluate --sections-json {params.sections:q} --objects {input.objects}"
        " --predictions {input.predictions} --out-dir {params.out_dir} > {log} 2>&1"
