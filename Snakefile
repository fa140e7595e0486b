# ssl-photoz: Hayat et al. (2021) self-supervised photo-z, end to end.
# Thin entry point: config, schema validation, includes and the final targets.
from snakemake.utils import min_version

from ssl_photoz.core.config import prepare_config

min_version("9.0")


# Every config is a whole, stand-alone file: config.yaml (the embedded default) is read only when
# no --configfile is given, so `--configfile configs/paper.yaml` runs paper.yaml alone and
# inherits nothing from the demo. To overlay a file of changes, name both:
# `--configfile config.yaml changes.yaml` (later files win; --config KEY=VALUE wins over all).
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


# The one loader of the package (the CLI's too): the schema's defaults filled in, then validated
# on every run; a bad key or value stops here, naming the key and what is allowed.
prepare_config(config, source="config")


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
