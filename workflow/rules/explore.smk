# Stage 5: the galaxy explorer, one static HTML page of the validation galaxies (no server).
from ssl_photoz.report import explore_assets


rule explore:
    input:
        embeddings=rules.embed.output.embeddings,
        index=rules.embed.output.index,
        manifest=rules.gather.output.manifest,
        predictions=prediction_files,
    output:
        site=report(
            f"{RESULTS}/explore/index.html",
            caption="../report/explore.rst",
            category="Galaxy explorer",
        ),
    log:
        f"{RESULTS}/logs/explore.log",
    benchmark:
        f"{RESULTS}/benchmarks/explore.tsv"
    conda:
        "../../envs/pipeline.yaml"
    params:
        code=stage_code("ssl_photoz.report.explore"),
        # The page's template, script and style: package data that stage_code does not read.
        assets=explore_assets.digest(),
        # Neighbours and anomaly scores as the similarity rule's; the pictures are the
        # networks' crop (model); finetune's bins place the PDFs.
        sections=sections_json("explore", "similarity", "model", "finetune"),
        store=STORE,
    shell:
        "ssl-photoz explore --sections-json {params.sections:q}"
        " --embeddings {input.embeddings} --store {params.store}"
        " --predictions {input.predictions} --out {output.site} > {log} 2>&1"
