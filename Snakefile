# ssl-photoz: Hayat et al. (2021) self-supervised photo-z, end to end.
# Thin entry point: config, schema validation, includes and the final targets.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


# Validated on every run: a bad key or value stops here, naming the key and what is allowed.
validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/sky.smk"
include: "workflow/rules/catalog.smk"
include: "workflow/rules/cutouts.smk"
include: "workflow/rules/learn.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/probe.smk"
include: "workflow/rules/similarity.smk"
include: "workflow/rules/explore.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        final_targets,
