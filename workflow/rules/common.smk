# Shared helpers: paths, per-stage settings and the DAG's final targets.
import json
import os

from ssl_photoz.config import validate_config

# The package's own check gives clearer messages (which key, what is allowed) than the schema's.
validate_config(config, source="config")

RESULTS = config["results_dir"]
RESOURCES = config["resources_dir"]
SKY_DIR = f"{RESOURCES}/sky"


def section_json(name):
    """One config section as JSON for the CLI; a change in it reruns only the rules using it."""
    return json.dumps(config[name], sort_keys=True)


def final_targets():
    targets = []
    if config["source"] == "mock":
        targets += [f"{SKY_DIR}/sky.json", f"{RESULTS}/sky/realism.txt"]
    return targets
