# Shared helpers: paths, per-stage settings and the DAG's final targets.
import json
import os
import shlex

from ssl_photoz.baselines import registry as baselines
from ssl_photoz.core import arms, kinds
from ssl_photoz.core.codehash import code_digest

# The Snakefile has filled the schema's defaults and validated the config (ssl_photoz.core.config).

RESULTS = config["results_dir"]
RESOURCES = config["resources_dir"]
SKY_DIR = f"{RESOURCES}/sky"
STORE = f"{RESULTS}/cutouts.zarr"  # written by plan_shards (empty), cutouts (shards), gather
# The catalogue queries are package data (the pip-installed CLI reads the same files); the rules
# name them from the checkout, whatever the working directory.
QUERIES = os.path.join(
    workflow.basedir, "src", "ssl_photoz", "surveys", "sdss", "query", "queries"
)


def stage_code(*modules):
    """Digest of the package code behind a stage; editing those modules reruns the stage."""
    return code_digest(*modules)


def section_json(name):
    """One config section as JSON for the CLI; a change in it reruns only the rules using it."""
    return json.dumps(config[name], sort_keys=True)


def sections_json(*names):
    """Several sections as one JSON argument: a rule reruns when any of them changes."""
    return json.dumps({n: config[n] for n in names}, sort_keys=True)


def arm_kinds():
    """The wildcard constraint of the finetune rule: the fine-tuning arms' kinds."""
    return "|".join(arms.kind_names())


def arm_sections(wildcards):
    """The finetune job's sections: the model, its arm's own recipe (ssl_photoz.core.arms.recipe:
    no other arm's settings, nor the list of arms) and the arm selection's held-out slice.
    """
    arm = arms.arm_of_kind(wildcards.arm_kind).name
    return json.dumps(
        {
            "model": config["model"],
            "finetune": arms.recipe(config["finetune"], arm),
            "arm_selection": config["arm_selection"],
        },
        sort_keys=True,
    )


def gpus_per_training_job():
    """1 where the profile declares GPUs (resources gpu=N), else 0: jobs never share a card."""
    # global_resources.get() gives a Resource object (always truthy): test its value.
    declared = workflow.global_resources.get("gpu")
    return 1 if getattr(declared, "value", declared) else 0


def training_device(resources):
    """cuda when the job is given a GPU (gpu=N, or a SLURM gres naming one), else cpu."""
    gres = str(getattr(resources, "gres", "") or "")
    return "cuda" if getattr(resources, "gpu", 0) or "gpu" in gres else "cpu"


def model_runs():
    """Every (kind, fraction, seed) training run of the config: the kinds trained by a rule of
    their own, one model per label fraction and seed (ssl_photoz.core.kinds)."""
    return [
        (kind.name, fraction, seed)
        for kind in kinds.selected(config)
        if kind.train_rule is not None
        for fraction, seed in kind.runs(config["labels"])
    ]


def prediction_files(wildcards):
    """Every selected kind's prediction files (the networks and the baselines the config key
    `baselines` names), kind by kind in the registry's order."""
    return [
        f"{RESULTS}/predictions/{kind.stem(fraction, seed)}.parquet"
        for kind in kinds.selected(config)
        for fraction, seed in kind.runs(config["labels"])
    ]


def training_summaries(wildcards):
    """The training summaries (recipe as run, steps taken) that summary.md reports."""
    return [f"{RESULTS}/models/pretrain/summary.json"] + [
        f"{RESULTS}/models/{kind}/f{fraction}_s{seed}/summary.json"
        for kind, fraction, seed in model_runs()
    ]


def predict_kinds():
    """The wildcard constraint of the predict rule: the kinds it serves (ssl_photoz.core.kinds)."""
    return "|".join(kinds.names(rule="predict"))


def baseline_kinds():
    """The wildcard constraint of the baseline_colours rule: the selected catalogue baselines
    (an unselected one has no job); never empty, so the pattern matches no other file.
    """
    chosen = [k.name for k in kinds.selected(config) if k.rule == "baseline_colours"]
    return "|".join(chosen) or "(?!)"


def baseline_code(wildcards):
    """The code digest of one baseline: the runner and its module (ssl_photoz.baselines.registry)."""
    return stage_code(
        "ssl_photoz.baselines.run", baselines.module_of(wildcards.baseline)
    )


def baseline_arguments(wildcards):
    """`ssl-photoz baseline-colours`' baseline, its config section and, for one with a PDF, the
    networks' redshift bins (finetune's): its job reruns when these change, not the others'.
    """
    kind = kinds.get(wildcards.baseline)
    arguments = [
        f"--baseline {kind.name}",
        f"--sections-json {shlex.quote(sections_json(kind.section))}",
        f"--heldout {config['arm_selection']['holdout']}",
    ]
    if kind.pdf:
        bins = config["finetune"]
        arguments.append(f"--pdf-bins {bins['n_bins']} {bins['z_min']} {bins['z_max']}")
    return " ".join(arguments)


# -- the catalogue queries: which settings decide the rows, which only wait and clean up ------
def query_section_json():
    """The query settings that decide the rows (every key but the machine settings)."""
    from ssl_photoz.surveys.sdss.query.settings import identity_settings

    return json.dumps(identity_settings(config["query"]), sort_keys=True)


def query_machine_json(wildcards):
    """The CasJobs waiting and clean-up settings, for the query rules' resources."""
    from ssl_photoz.surveys.sdss.query.settings import machine_settings

    return json.dumps(machine_settings(config["query"]), sort_keys=True)


def query_inputs(wildcards):
    """The simulated survey is a query input only when the sky is simulated."""
    if config["source"] == "mock":
        return {"sky_db": f"{SKY_DIR}/sdss_mock.duckdb"}
    return {}


def sky_db_argument(wildcards, input):
    return f"--sky-db {input.sky_db}" if "sky_db" in input.keys() else ""


def frame_inputs(wildcards):
    """Simulated frames are rendered from the simulated survey; real ones are downloaded."""
    if config["cutouts"]["frame_source"] == "mock":
        return {"sky_meta": f"{SKY_DIR}/sky.json"}
    return {}


def sky_dir_argument(wildcards, input):
    return (
        f"--sky-dir {os.path.dirname(input.sky_meta)}"
        if "sky_meta" in input.keys()
        else ""
    )


def shard_statuses(wildcards):
    """One status file per cut-out shard; the number of shards is known after plan_shards."""
    plan_file = checkpoints.plan_shards.get().output.plan
    with open(plan_file) as handle:
        n_shards = json.load(handle)["n_shards"]
    return [f"{RESULTS}/cutouts/shards/{k}.json" for k in range(n_shards)]


def final_targets(wildcards):
    """What `snakemake` builds by default. The shard status files are listed so that deleting
    one reruns just that shard and what follows (an intermediate alone would not be redone).
    """
    targets = [f"{RESULTS}/catalog/objects.parquet", f"{RESULTS}/cutouts/stats.json"]
    targets += shard_statuses(wildcards)
    targets += [
        f"{RESULTS}/metrics.tsv",
        f"{RESULTS}/probe.tsv",
        f"{RESULTS}/summary.md",
    ]
    targets.append(f"{RESULTS}/figures/fig1_similarity_search.png")
    targets.append(f"{RESULTS}/explore/index.html")
    if config["source"] == "mock":
        targets += [f"{SKY_DIR}/sky.json", f"{RESULTS}/sky/realism.txt"]
    return targets


# -- the cut-out stage: which settings and code are whose trigger (ssl_photoz.cutouts.digests, .settings)
def cutouts_code(step):
    """The code digest of the step plan_shards or cutouts (ssl_photoz.cutouts.digests.stage_code);
    the simulator (ssl_photoz.surveys.sdss.sky.*) counts only when the frames are simulated
    (frame_source: mock).
    """
    from ssl_photoz.cutouts.digests import stage_code as cutouts_stage_code

    return cutouts_stage_code(step, config["cutouts"]["frame_source"])


def cutouts_stage_code():
    """The code digest of rules gather and stats: the cut-out stage's modules
    (ssl_photoz.cutouts.digests.STAGE_MODULES) and what they import.
    """
    from ssl_photoz.cutouts.digests import STAGE_MODULES

    return stage_code(*STAGE_MODULES)


def cutouts_plan_json():
    """What decides the plan, the pixels and the store's layout: plan_shards' and the jobs'
    params (frame_source, shard_size, store_shard and that source's own identity keys).
    """
    from ssl_photoz.cutouts.settings import plan_settings

    return json.dumps(plan_settings(config["cutouts"]), sort_keys=True)


def cutouts_stats_json():
    """The statistics settings (stats_max_images, seed): the stats rule's params only."""
    from ssl_photoz.cutouts.settings import stats_settings

    return json.dumps(stats_settings(config["cutouts"]), sort_keys=True)


def cutouts_job_json():
    """The cut-out jobs' params: cutouts_plan_json's settings and max_missing_fraction, which
    decides whether a job's result stands (a change reruns the jobs, not plan_shards).
    """
    from ssl_photoz.cutouts.settings import job_settings

    return json.dumps(job_settings(config["cutouts"]), sort_keys=True)


def cutouts_machine_json(wildcards):
    """The machine and network settings (sas_url, cache_dir, cache_policy, cache_max_gb,
    timeout_s, retries, backoff_s) for
    the cut-out jobs' resources: they reach the command at run time and rerun nothing.
    """
    from ssl_photoz.cutouts.settings import machine_settings

    return json.dumps(machine_settings(config["cutouts"]), sort_keys=True)
