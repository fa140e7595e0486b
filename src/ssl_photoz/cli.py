"""The ``ssl-photoz`` command line: one verb per rule of the Snakemake DAG.

Every verb takes its settings either from a config file (``--config config.yaml``, validated in
full) or, as the Snakemake rules call it, from the one config section it needs as JSON
(``--section-json``), validated against that section's schema. Rules pass only their own section
so that Snakemake's params trigger reruns exactly the stages whose settings changed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import __version__
from .config import ConfigError, load_config, validate_section
from .progress import setup_logging

log = logging.getLogger("ssl_photoz")


def _section(args: argparse.Namespace, name: str) -> dict:
    if args.section_json:
        try:
            section = json.loads(args.section_json)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--section-json is not valid JSON: {exc}") from exc
        return validate_section(name, section, source="--section-json")
    return load_config(args.config)[name]


def _sections(args: argparse.Namespace, names: tuple[str, ...]) -> dict:
    """Several config sections, from --sections-json (the rules) or the config file."""
    if args.sections_json:
        try:
            given = json.loads(args.sections_json)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--sections-json is not valid JSON: {exc}") from exc
        missing = [n for n in names if n not in given]
        if missing:
            raise ConfigError(f"--sections-json lacks the section(s) {missing}")
        return {n: validate_section(n, given[n], source="--sections-json") for n in names}
    config = load_config(args.config)
    return {n: config[n] for n in names}


def _whole_config(args: argparse.Namespace) -> dict:
    """The whole config, from --config-json (the summary rule: the config as run) or the file."""
    from .config import prepare_config

    if args.config_json:
        try:
            given = json.loads(args.config_json)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--config-json is not valid JSON: {exc}") from exc
        return prepare_config(given, source="--config-json")
    return load_config(args.config)


def _training_runtime(args: argparse.Namespace, model_cfg: dict):
    from .train import setup_runtime

    return setup_runtime(args.device, args.num_workers, args.precision, probe=model_cfg)


def cmd_pretrain(args: argparse.Namespace) -> int:
    """MoCo v2 pretraining on the unlabeled pool plus the training images."""
    from .train import pretrain, write_summary

    cfg = _sections(args, ("model", "pretrain"))
    summary = pretrain(
        cfg["model"],
        cfg["pretrain"],
        Path(args.store),
        Path(args.stats),
        Path(args.out),
        _training_runtime(args, cfg["model"]),
        max_epochs=args.max_epochs,
        manifest=Path(args.manifest) if args.manifest else None,
    )
    write_summary(Path(args.summary), summary)
    return 0


def _classifier(args: argparse.Namespace, pretrained: Path | None) -> int:
    from .train import train_classifier, write_summary

    recipe = "finetune" if pretrained is not None else "supervised"
    cfg = _sections(args, ("model", recipe))
    if not 0.0 < args.fraction <= 1.0:
        raise ValueError(f"--fraction {args.fraction}: must lie in (0, 1]")
    summary = train_classifier(
        cfg["model"],
        cfg[recipe],
        Path(args.store),
        Path(args.out),
        _training_runtime(args, cfg["model"]),
        fraction=args.fraction,
        seed=args.seed,
        pretrained=pretrained,
        max_epochs=args.max_epochs,
        manifest=Path(args.manifest) if args.manifest else None,
    )
    write_summary(Path(args.summary), summary)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    """Fine-tune the pretrained backbone on a fraction of the labels."""
    return _classifier(args, Path(args.pretrained))


def cmd_supervised(args: argparse.Namespace) -> int:
    """The supervised baseline: the same network from scratch, its own recipe (section
    ``supervised``: one learning rate for every layer)."""
    return _classifier(args, None)


def cmd_import_checkpoint(args: argparse.Namespace) -> int:
    """Import the authors' released models (mahayat/ssl-sky-surveys) into our checkpoint format:
    MoCo-pretrained ones become a ``pretrain`` checkpoint whose backbone ``finetune`` can start
    from; fine-tuned / supervised ones become a classifier checkpoint."""
    from .models import load_authors_checkpoint, read_authors_checkpoint
    from .train import save_checkpoint

    source = Path(args.checkpoint)
    if not source.exists():
        raise FileNotFoundError(f"{source}: checkpoint not found")
    # weights_only: plain data, tensors and the few types their files hold; any other global
    # (a function the pickle would call) is refused with a ValueError naming it, never run.
    raw = read_authors_checkpoint(source)
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: expected a dict of weights, got {type(raw).__name__}")
    state = load_authors_checkpoint(raw, arch=args.arch)
    model_cfg = {"arch": args.arch}
    imported = {"imported_from": str(source), "config": {"model": model_cfg}}
    if any(k.startswith("head.") for k in state):
        n_bins = int(state["head.weight"].shape[0])
        out = {**imported, "kind": "classifier", "model": state, "n_bins": n_bins}
        log.info("%s: classifier with %d bins", source, n_bins)
    else:
        out = {**imported, "kind": "pretrain", "backbone": state}
        log.info("%s: MoCo-pretrained %s backbone", source, args.arch)
    save_checkpoint(Path(args.out), out)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """z_p and the PDF of every validation object from one trained classifier."""
    from .predict import predict_classifier

    n = predict_classifier(
        Path(args.model), Path(args.store), Path(args.out), args.device, args.precision
    )
    log.info("%s: %d validation predictions -> %s", args.model, n, args.out)
    return 0


def cmd_baseline_colours(args: argparse.Namespace) -> int:
    """The colours-only 10-nearest-neighbour photo-z at one label fraction, on the image models'
    training and validation objects."""
    from .predict import predict_colours

    k = _sections(args, ("baseline_colours",))["baseline_colours"]["k"]
    objects = _read_parquet(args.objects, "objects table")
    usable = None
    if args.store:
        from .data import open_store

        store = open_store(Path(args.store))
        usable = store.objid[store.ok]
    n = predict_colours(objects, Path(args.out), k=k, fraction=args.fraction, usable_objids=usable)
    log.info(
        "colours kNN (k=%d, label fraction %g): %d validation predictions -> %s",
        k,
        args.fraction,
        n,
        args.out,
    )
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    """kNN and linear photo-z probes on frozen embeddings: pretrained vs random encoder."""
    from .probe import run_probe

    k = _sections(args, ("probe",))["probe"]["k"]
    table = run_probe(
        Path(args.pretrained),
        Path(args.store),
        Path(args.out),
        device=args.device,
        precision=args.precision,
        k=k,
    )
    print(table.to_string(index=False))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """sigma_MAD, eta and bias of every model, with bootstrap intervals and seed spread."""
    from .evaluate import evaluate

    cfg = _sections(args, ("evaluate", "finetune"))
    bins, pdf_bins = cfg["evaluate"], cfg["finetune"]  # the classifiers' PDF bins: finetune's
    objects = _read_parquet(args.objects, "objects table")
    metrics = evaluate(
        [Path(p) for p in args.predictions],
        objects,
        Path(args.out_dir),
        z_min=pdf_bins["z_min"],
        z_max=pdf_bins["z_max"],
        z_bins=bins["z_bins"],
        r_bins=bins["r_bins"],
        min_objects=bins["min_objects"],
    )
    print(metrics[["model", "n", "sigma_mad", "eta_percent", "bias"]].to_string(index=False))
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    """128-d unit embeddings of every usable object from the MoCo encoder, and their index."""
    from .embeddings import compute_embeddings
    from .faiss_index import write_index

    n = compute_embeddings(
        Path(args.checkpoint),
        Path(args.store),
        Path(args.stats) if args.stats else None,
        Path(args.out),
        device=args.device,
        precision=args.precision,
    )
    index = write_index(Path(args.out))
    log.info("%d embeddings -> %s; exact index -> %s", n, args.out, index)
    return 0


def cmd_similar(args: argparse.Namespace) -> int:
    """Nearest neighbours of one object (by objid or by ra/dec) in the embedding space."""
    from .config import with_defaults
    from .search import query_neighbours

    if (args.objid is None) == (args.ra is None or args.dec is None):
        raise ValueError("give either --objid or both --ra and --dec")
    if args.k is None:  # the pipeline's own number of neighbours (config similarity.neighbours)
        args.k = with_defaults("similarity", {})["neighbours"]
    found = query_neighbours(
        Path(args.embeddings), objid=args.objid, ra=args.ra, dec=args.dec, k=args.k, pool=args.pool
    )
    query = found.attrs["query"]
    print(
        f"query objid {int(query['objid'])} (ra {query['ra']:.5f}, dec {query['dec']:.5f}, "
        f"z_spec {query['z_spec']:.4f}, {query['split']}); {args.k} nearest in pool {args.pool}:"
    )
    print(found.to_string(index=False))
    return 0


def cmd_similarity(args: argparse.Namespace) -> int:
    """Fig. 1 (validation queries beside their training neighbours) and the anomaly list."""
    from .atomic import atomic_path
    from .embeddings import load_embeddings
    from .faiss_index import open_index
    from .search import anomalies
    from .similarity_figures import plot_anomalies, plot_similarity_search

    cfg = _sections(args, ("similarity",))["similarity"]
    emb = load_embeddings(Path(args.embeddings))
    index = open_index(emb)
    plot_similarity_search(
        emb,
        Path(args.store),
        Path(args.fig1),
        n_queries=cfg["fig1_queries"],
        k=cfg["neighbours"],
        index=index,
    )
    odd = anomalies(
        emb.vectors, k=cfg["anomaly_k"], n=cfg["n_anomalies"], catalog=emb.table, index=index
    )
    with atomic_path(Path(args.anomalies)) as tmp:
        odd.to_csv(tmp, sep="\t", index=False)
    plot_anomalies(odd, Path(args.store), Path(args.anomalies_png))
    log.info("Fig. 1 -> %s; %d anomalies -> %s", args.fig1, len(odd), args.anomalies)
    return 0


def cmd_explore(args: argparse.Namespace) -> int:
    """The galaxy explorer: one static HTML page of the validation galaxies (rule explore)."""
    from .explore import build_site, settings_from_config

    sections = _sections(args, ("explore", "similarity", "model", "finetune"))
    settings = settings_from_config(sections)
    bins = sections["finetune"]
    summary = build_site(
        Path(args.embeddings),
        Path(args.store),
        [Path(p) for p in args.predictions],
        Path(args.out),
        z_min=bins["z_min"],
        z_max=bins["z_max"],
        **settings,
    )
    print(
        f"{args.out}: {summary['galaxies']} of {summary['validation']} validation galaxies, "
        f"{summary['pictures']} pictures, {summary['bytes'] / 1e6:.1f} MB"
    )
    return 0


def cmd_figures(args: argparse.Namespace) -> int:
    """Fig. 2 (sigma_MAD and label efficiency vs fraction), dz vs z_s, the augmentation gallery."""
    from .config import crop_size
    from .figures import make_all_figures

    model_cfg = _sections(args, ("model",))["model"]
    paths = make_all_figures(
        Path(args.metrics),
        Path(args.metrics_summary),
        [Path(p) for p in args.predictions],
        Path(args.store),
        Path(args.out_dir),
        stats_path=Path(args.stats) if args.stats else None,
        pdf_objects=Path(args.pdf_objects) if args.pdf_objects else None,
        crop_size=crop_size(model_cfg),
    )
    for name, path in paths.items():
        log.info("%s -> %s", name, path)
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    """results/summary.md: the paper's table beside ours, with the leakage guard."""

    from .evaluate import read_predictions
    from .leakage import leakage_report
    from .summary import write_summary

    cfg = _whole_config(args)
    objects = _read_parquet(args.objects, "objects table")
    summary = _read_table(args.metrics_summary, "metrics summary")
    efficiency = _read_table(args.label_efficiency, "label-efficiency table")
    scored = {
        Path(p).stem: read_predictions(Path(p))[0]["objid"].to_numpy() for p in args.predictions
    }
    leakage = leakage_report(Path(args.store), cfg["labels"]["fractions"], scored)
    probe = _read_table(args.probe, "probe table") if args.probe else None
    training = {}
    for path in args.training_summaries or []:
        path = Path(path)
        # results/models/<kind>/<run>/summary.json -> "<kind>/<run>"; the pretraining -> "pretrain"
        name = (
            path.parent.name
            if path.parent.name == "pretrain"
            else (f"{path.parent.parent.name}/{path.parent.name}")
        )
        training[name] = json.loads(path.read_text())
    write_summary(
        Path(args.out), summary, efficiency, objects, leakage, cfg, probe=probe, training=training
    )
    with open(args.leakage, "w") as handle:
        leakage["usage"].to_csv(handle, sep="\t", index=False)
    log.info(
        "summary -> %s; validation objects in pretraining: %d",
        args.out,
        leakage["validation_in_pretraining"],
    )
    return 0


def _read_table(path: str, what: str):
    import pandas as pd

    try:
        return pd.read_csv(path, sep="\t")
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path}: the {what} is missing") from err
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ValueError(f"{path}: the {what} is not a readable TSV ({err})") from err


def cmd_sky(args: argparse.Namespace) -> int:
    """Build the simulated survey (catalogue in DuckDB + truth); optionally print realism."""
    from .sky.survey import build_survey

    sky_cfg = _section(args, "sky")
    out = Path(args.out)
    meta = build_survey(sky_cfg, out)
    counts = ", ".join(f"{k} {v:,}" for k, v in meta["counts"].items())
    log.info(
        "simulated survey in %s: %.1f deg^2, %d fields; %s (%.1f s)",
        out,
        meta["area_deg2"],
        meta["n_fields"],
        counts,
        meta["build_seconds"],
    )
    if args.validate:
        passed = _print_validation(out, args.validation_report)
        if args.strict and not passed:
            log.error("the simulated survey failed its realism checks (see the table above)")
            return 1
    return 0


def _query(args: argparse.Namespace, sample: str) -> int:
    from .query.run import run_query, write_query_output

    query_cfg = _section(args, "query")
    sky_db = Path(args.sky_db) if args.sky_db else None
    sql_path = Path(args.sql) if args.sql else None
    frame, record = run_query(sample, query_cfg, sky_db, sql_path)
    write_query_output(frame, record, Path(args.out), {"query": query_cfg})
    log.info("%s: %d rows -> %s", sample, len(frame), args.out)
    return 0


def cmd_query_labeled(args: argparse.Namespace) -> int:
    """The labeled (spectroscopic MGS) query: ssl_photoz/query/queries/labeled.sql."""
    return _query(args, "labeled")


def cmd_query_unlabeled(args: argparse.Namespace) -> int:
    """The unlabeled (photometric) query: ssl_photoz/query/queries/unlabeled.sql."""
    return _query(args, "unlabeled")


def cmd_select(args: argparse.Namespace) -> int:
    """De-duplicate, cut, split: objects.parquet and rejects.parquet."""
    from .select import format_counts, select_catalog, write_selection

    settings = _section(args, "select")
    labeled = _read_parquet(args.labeled, "labeled query output")
    unlabeled = _read_parquet(args.unlabeled, "unlabeled query output")
    selection = select_catalog(labeled, unlabeled, settings)
    write_selection(selection, Path(args.out_dir))
    print(format_counts(selection))
    return 0


def _write_json_atomic(path: Path, data: dict) -> None:
    from .atomic import write_json

    write_json(path, data)


def _footprint_if_mock(sky_dir: str | None):
    if not sky_dir:
        return None
    from .sky.survey import MockSky

    return MockSky(Path(sky_dir)).footprint


def cmd_plan_shards(args: argparse.Namespace) -> int:
    """Group objects into cut-out jobs by field; prepare the Zarr store (kept where it fits)."""
    from .cutouts import PLAN_KEYS, plan_shards, prepare_store, settings_from_cli, source_identity

    cfg = settings_from_cli(PLAN_KEYS, args.section_json, args.config)
    objects = _read_parquet(args.objects, "objects table")
    mock = cfg["frame_source"] == "mock"
    plan = plan_shards(
        objects,
        cfg["shard_size"],
        cfg["store_shard"],
        _footprint_if_mock(args.sky_dir) if mock else None,
        source=source_identity(cfg, args.sky_dir),
    )
    store = prepare_store(Path(args.store), len(objects), cfg["store_shard"], plan["fingerprints"])
    _write_json_atomic(Path(args.plan), plan)
    n_frames = len({tuple(f) for s in plan["shards"] for f in s["frames"]})
    log.info(
        "%d objects -> %d shards of up to %d; %d distinct fields; %d objects without usable "
        "run/camcol/field or position (rejects)",
        plan["n_objects"],
        plan["n_shards"],
        plan["shard_size"],
        n_frames,
        plan["n_unusable"],
    )
    log.info(
        "store %s: %s; %d Zarr shards recorded for this plan, %d to cut",
        args.store,
        store["store"],
        store["reusable"],
        store["to_cut"],
    )
    return 0


def cmd_cutouts(args: argparse.Namespace) -> int:
    """Cut one shard's objects into the store; write the shard's status file."""
    import tempfile

    from .cutouts import (
        MACHINE_KEYS,
        PLAN_KEYS,
        cut_shard,
        cutting_code,
        job_zarr_shards,
        settings_from_cli,
        source_identity,
    )
    from .frames import make_frame_source

    cfg = settings_from_cli(
        (*PLAN_KEYS, *MACHINE_KEYS), args.section_json, args.config, args.machine_json
    )
    plan = json.loads(Path(args.plan).read_text())
    if not 0 <= args.shard < plan["n_shards"]:
        raise ValueError(f"--shard {args.shard}: the plan has shards 0..{plan['n_shards'] - 1}")
    shard = plan["shards"][args.shard]
    objects = _read_parquet(args.objects, "objects table")
    if len(objects) != plan["n_objects"]:
        raise ValueError(
            f"{args.plan} was made for {plan['n_objects']} objects, not {len(objects)}"
        )
    identity = source_identity(cfg, args.sky_dir)
    if plan.get("source") != identity:
        raise ValueError(
            f"{args.plan} was made for the frames of {plan.get('source')}, not {identity}; "
            "rerun plan_shards"
        )
    fingerprints = [plan["fingerprints"][z] for z in job_zarr_shards(shard, plan["store_shard"])]
    with tempfile.TemporaryDirectory(prefix=f"cutouts-{args.shard}-") as tmp:
        with make_frame_source(cfg, work_dir=Path(tmp) / "frames", sky_dir=args.sky_dir) as source:
            statuses = cut_shard(
                shard,
                objects,
                Path(args.store),
                plan["n_objects"],
                plan["store_shard"],
                source,
                Path(tmp) / "montage",
                fingerprints=fingerprints,
                code=cutting_code(cfg["frame_source"]),
            )
    n_ok = sum(s["ok"] for s in statuses)
    log.info("shard %d: %d of %d cut-outs complete", args.shard, n_ok, len(statuses))
    _write_json_atomic(Path(args.out), {"shard": shard["shard"], "objects": statuses})
    return 0


def cmd_gather(args: argparse.Namespace) -> int:
    """Validate the store against objects.parquet; write its 1-D arrays and metadata."""
    import pandas as pd

    from .cutouts import gather
    from .provenance import provenance

    objects = _read_parquet(args.objects, "objects table")
    plan = json.loads(Path(args.plan).read_text())
    statuses = []
    for k in range(plan["n_shards"]):
        path = Path(args.shards_dir) / f"{k}.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: status of cut-out shard {k} is missing")
        statuses += json.loads(path.read_text())["objects"]
    summary = gather(
        Path(args.store), objects, statuses, provenance({"plan": plan["n_shards"]}), plan=plan
    )
    failed = [s for s in statuses if not s["ok"]]
    rejects = pd.DataFrame(
        {
            "objid": pd.Series([s["objid"] for s in failed], dtype="int64"),
            "stage": "cutouts",
            "reason": pd.Series([s["reason"] for s in failed], dtype="str"),
        }
    )
    from .atomic import atomic_path

    with atomic_path(args.rejects) as tmp:
        rejects.to_parquet(tmp, index=False)
    _write_json_atomic(Path(args.manifest), {**summary, "store": str(args.store)})
    log.info(
        "store %s: %d objects, %d complete, %d rejected",
        args.store,
        summary["n_objects"],
        summary["n_ok"],
        summary["n_failed"],
    )
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """Per-channel MAD of the training images (for the noise augmentation)."""
    from .cutouts import STATS_KEYS, channel_mad, settings_from_cli

    cfg = settings_from_cli(STATS_KEYS, args.section_json, args.config)
    stats = channel_mad(Path(args.store), cfg["stats_max_images"], seed=cfg["seed"])
    _write_json_atomic(Path(args.out), stats)
    log.info("channel MAD: %s", dict(zip(stats["bands"], stats["mad"], strict=True)))
    return 0


def _read_parquet(path: str, what: str):
    import pandas as pd

    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: {what} not found")
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise ValueError(f"{path}: cannot read the {what} as Parquet: {exc}") from exc


def _print_validation(sky_dir: Path, report: str | None) -> bool:
    from .sky.validate import TooFewGalaxies, validate_sky

    try:
        checks, table = validate_sky(sky_dir)
    except TooFewGalaxies as exc:
        checks, table = [], f"realism checks not run: {exc}"
    print(table)
    if report:
        Path(report).parent.mkdir(parents=True, exist_ok=True)
        Path(report).write_text(table + "\n")
    return all(c.passed for c in checks)


def cmd_gpu_run(args: argparse.Namespace) -> int:
    """COMMAND on free GPUs of this machine, CUDA_VISIBLE_DEVICES set; its exit status."""
    from .gpu_slots import gpu_run

    return gpu_run(
        args.command,
        args.gpus,
        args.ids,
        args.lock_dir,
        args.timeout,
        torchrun=args.torchrun,
        processes=args.processes,
        launcher=args.launcher,
        threads=args.threads,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssl-photoz",
        description="Self-supervised photometric redshifts (Hayat et al. 2021), stage by stage.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def add_config(p: argparse.ArgumentParser, sections: str) -> None:
        p.add_argument("--config", default="config.yaml", help="config file (default: %(default)s)")
        p.add_argument(
            "--sections-json", help=f"the config sections {sections} as JSON (used by the rule)"
        )

    def add_common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", default="config.yaml", help="config file (default: %(default)s)")
        p.add_argument(
            "--section-json", help="this verb's config section as JSON (used by the rules)"
        )
        p.add_argument("--log", type=Path, help="also write the log to this file")

    p = sub.add_parser("sky", help="build the simulated SDSS survey (rule sky)")
    add_common(p)
    p.add_argument("--out", default="resources/sky", help="output folder (default: %(default)s)")
    p.add_argument("--validate", action="store_true", help="print the realism table afterwards")
    p.add_argument("--validation-report", help="also write the realism table to this file")
    p.add_argument("--strict", action="store_true", help="exit 1 if a realism check fails")
    p.set_defaults(func=cmd_sky)

    for verb, func, sample in (
        ("query-labeled", cmd_query_labeled, "labeled"),
        ("query-unlabeled", cmd_query_unlabeled, "unlabeled"),
    ):
        p = sub.add_parser(
            verb, help=f"run the {sample} catalogue query (rule {verb.replace('-', '_')})"
        )
        add_common(p)
        p.add_argument("--sql", help=f"the query file (default: the packaged queries/{sample}.sql)")
        p.add_argument("--sky-db", help="the simulated survey's DuckDB file (backend duckdb)")
        p.add_argument("--out", required=True, help="output Parquet file")
        p.set_defaults(func=func)

    p = sub.add_parser("select", help="cuts, de-duplication, splits (rule select)")
    add_common(p)
    p.add_argument("--labeled", required=True, help="labeled query output (Parquet)")
    p.add_argument("--unlabeled", required=True, help="unlabeled query output (Parquet)")
    p.add_argument("--out-dir", required=True, help="folder for objects/rejects/counts")
    p.set_defaults(func=cmd_select)
    p = sub.add_parser("plan-shards", help="group objects into cut-out jobs (rule plan_shards)")
    add_common(p)
    p.add_argument("--objects", required=True)
    p.add_argument("--sky-dir", help="the simulated survey (frame source mock)")
    p.add_argument("--plan", required=True, help="output plan (JSON)")
    p.add_argument("--store", required=True, help="the Zarr store (kept where its layout fits)")
    p.set_defaults(func=cmd_plan_shards)

    p = sub.add_parser("cutouts", help="cut one shard into the store (rule cutouts)")
    add_common(p)
    p.add_argument("--objects", required=True)
    p.add_argument("--plan", required=True)
    p.add_argument("--shard", type=int, required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--sky-dir", help="the simulated survey (frame source mock)")
    p.add_argument(
        "--machine-json",
        help="machine and network settings of section cutouts as JSON (sas_url, cache_dir, "
        "timeout_s, retries, backoff_s), over --section-json; the rule passes them through its "
        "resources, so that changing them reruns nothing",
    )
    p.add_argument("--out", required=True, help="the shard's status file (JSON)")
    p.set_defaults(func=cmd_cutouts)

    p = sub.add_parser("gather", help="validate and finish the store (rule gather)")
    add_common(p)
    p.add_argument("--objects", required=True)
    p.add_argument("--plan", required=True)
    p.add_argument("--shards-dir", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--rejects", required=True, help="objects whose cut-out failed (Parquet)")
    p.add_argument("--manifest", required=True)
    p.set_defaults(func=cmd_gather)

    def add_precision(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--precision",
            default="auto",
            choices=["auto", "fp32", "bf16", "fp16"],
            help="machine setting (default: %(default)s: bf16 on a CPU only where native and "
            "measured faster, else fp32; bf16 on a GPU that has it, else fp16)",
        )

    def add_training(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", default="config.yaml", help="config file (default: %(default)s)")
        p.add_argument("--sections-json", help="the model and recipe sections as JSON (rules)")
        p.add_argument("--log", type=Path, help="also write the log to this file")
        p.add_argument("--store", required=True, help="the cut-out store (Zarr)")
        p.add_argument(
            "--manifest",
            help="the store's manifest (gather's): part of the store's identity, so that a "
            "checkpoint of a run on another store is not resumed",
        )
        p.add_argument("--out", required=True, help="the final model checkpoint")
        p.add_argument("--summary", required=True, help="training history (JSON)")
        p.add_argument("--device", default="auto", help="auto | cpu | cuda (machine setting)")
        add_precision(p)
        p.add_argument("--num-workers", type=int, default=0, help="data loader workers")
        p.add_argument("--max-epochs", type=int, help="stop after this many epochs (resumable)")

    p = sub.add_parser("pretrain", help="MoCo v2 pretraining (rule pretrain)")
    add_training(p)
    p.add_argument("--stats", required=True, help="per-channel MAD (stats rule's JSON)")
    p.set_defaults(func=cmd_pretrain)

    for verb, func, text in (
        ("finetune", cmd_finetune, "fine-tune the pretrained backbone (rule finetune)"),
        ("supervised", cmd_supervised, "supervised baseline from scratch (rule supervised)"),
    ):
        p = sub.add_parser(verb, help=text)
        add_training(p)
        p.add_argument("--fraction", type=float, required=True, help="label fraction in (0, 1]")
        p.add_argument("--seed", type=int, required=True)
        if verb == "finetune":
            p.add_argument("--pretrained", required=True, help="pretraining checkpoint")
        p.set_defaults(func=func)

    p = sub.add_parser("predict", help="validation predictions of one model (rule predict)")
    p.add_argument("--model", required=True, help="a finetune/supervised checkpoint")
    p.add_argument("--store", required=True)
    p.add_argument("--out", required=True, help="predictions (Parquet)")
    p.add_argument("--device", default="cpu")
    add_precision(p)
    p.add_argument("--log", type=Path)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("baseline-colours", help="colours-only kNN photo-z (rule baseline_colours)")
    p.add_argument("--objects", required=True)
    p.add_argument("--out", required=True)
    add_config(p, "baseline_colours")
    p.add_argument(
        "--fraction", type=float, default=1.0, help="label fraction: train on fraction_rank < it"
    )
    p.add_argument(
        "--store", help="the cut-out store: only objects with a good cut-out (as the image models)"
    )
    p.add_argument("--log", type=Path)
    p.set_defaults(func=cmd_baseline_colours)

    p = sub.add_parser("probe", help="photo-z probes on frozen embeddings (rule probe)")
    p.add_argument("--pretrained", required=True, help="the pretraining checkpoint")
    p.add_argument("--store", required=True)
    p.add_argument("--out", required=True, help="probe table (TSV)")
    add_config(p, "probe")
    p.add_argument("--device", default="cpu", help="cpu | cuda (machine setting)")
    add_precision(p)
    p.add_argument("--log", type=Path)
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("evaluate", help="photo-z metrics of every model (rule evaluate)")
    p.add_argument("--objects", required=True)
    p.add_argument("--predictions", nargs="+", required=True)
    p.add_argument("--out-dir", required=True)
    add_config(p, "evaluate and finetune (the PDF bins)")
    p.add_argument("--log", type=Path)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("embed", help="MoCo embeddings of every object + index (rule embed)")
    p.add_argument("--checkpoint", required=True, help="the pretraining checkpoint")
    p.add_argument("--store", required=True)
    p.add_argument("--stats", help="per-channel MAD (recorded in the provenance)")
    p.add_argument("--out", required=True, help="embeddings (Parquet); the index goes beside it")
    p.add_argument("--device", default="cpu")
    add_precision(p)
    p.add_argument("--log", type=Path)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("similar", help="nearest neighbours of one galaxy in the embedding space")
    p.add_argument("embeddings", help="results/similarity/embeddings.parquet")
    p.add_argument("--objid", type=int, help="the query's SDSS objID")
    p.add_argument("--ra", type=float, help="or the query's position (deg) ...")
    p.add_argument("--dec", type=float, help="... matched within 3 arcsec")
    p.add_argument(
        "--k", type=int, help="neighbours (default: the config schema's similarity.neighbours)"
    )
    p.add_argument(
        "--pool",
        default="train",
        choices=["train", "train+unlabeled", "all"],
        help="neighbours from",
    )
    p.add_argument("--log", type=Path)
    p.set_defaults(func=cmd_similar)

    p = sub.add_parser("similarity", help="Fig. 1 and the anomaly list (rule similarity)")
    p.add_argument("--embeddings", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--fig1", required=True, help="similarity-search figure (PNG)")
    p.add_argument("--anomalies", required=True, help="anomaly list (TSV)")
    p.add_argument("--anomalies-png", required=True, help="their images (PNG)")
    add_config(p, "similarity")
    p.add_argument("--log", type=Path)
    p.set_defaults(func=cmd_similarity)

    p = sub.add_parser("explore", help="the galaxy explorer, one static HTML page (rule explore)")
    p.add_argument("--embeddings", required=True, help="results/similarity/embeddings.parquet")
    p.add_argument("--store", required=True, help="the cut-out store (the pictures)")
    p.add_argument("--predictions", nargs="+", required=True, help="results/predictions/*.parquet")
    p.add_argument("--out", required=True, help="the page (HTML)")
    add_config(p, "explore, similarity, model and finetune")
    p.add_argument("--log", type=Path)
    p.set_defaults(func=cmd_explore)

    p = sub.add_parser("figures", help="the paper's figures for this run (rule figures)")
    p.add_argument("--metrics", required=True, help="metrics.tsv")
    p.add_argument("--metrics-summary", required=True, help="metrics_summary.tsv")
    p.add_argument("--predictions", nargs="+", required=True)
    p.add_argument("--store", required=True, help="the cut-out store (augmentation gallery)")
    p.add_argument("--stats", help="per-channel MAD (the noise augmentation's scale)")
    p.add_argument("--pdf-objects", help="evaluate's pdf_objects.parquet (the PDF figures)")
    add_config(p, "model (the networks' crop)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--log", type=Path)
    p.set_defaults(func=cmd_figures)

    p = sub.add_parser("summary", help="summary.md with the paper's table (rule summary)")
    p.add_argument("--config", default="config.yaml", help="config file (default: %(default)s)")
    p.add_argument(
        "--config-json", help="the whole config as run, as JSON (the rule: summary.md shows it)"
    )
    p.add_argument("--objects", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--metrics-summary", required=True)
    p.add_argument("--label-efficiency", required=True)
    p.add_argument("--predictions", nargs="+", required=True)
    p.add_argument("--probe", help="the probe table (probe rule's TSV)")
    p.add_argument(
        "--training-summaries", nargs="*", help="training summary.json files (recipe, steps)"
    )
    p.add_argument("--out", required=True, help="summary (Markdown)")
    p.add_argument("--leakage", required=True, help="images used per split and stage (TSV)")
    p.add_argument("--log", type=Path)
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("import-checkpoint", help="import the paper authors' released models")
    p.add_argument("checkpoint", help="their .pth/.pth.tar file")
    p.add_argument("--arch", default="resnet50", choices=["resnet50", "resnet18", "resnet_small"])
    p.add_argument("--out", required=True, help="our checkpoint file to write")
    p.add_argument("--log", type=Path)
    p.set_defaults(func=cmd_import_checkpoint)

    p = sub.add_parser("stats", help="per-channel MAD of the training images (rule stats)")
    add_common(p)
    p.add_argument("--store", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser(
        "gpu-run",
        help="run COMMAND on free GPUs of this machine, one card per job (the training rules)",
        description="Take N free GPU ids (lock files, released when the job ends however it "
        "ends), run COMMAND with CUDA_VISIBLE_DEVICES set to them, exit with its status. An "
        "already set CUDA_VISIBLE_DEVICES (SLURM) is kept; with no GPU, COMMAND runs unchanged.",
    )
    p.add_argument("--gpus", type=int, default=1, help="cards for this job (default: 1)")
    p.add_argument(
        "--ids",
        help="the pool, e.g. 0,1,2,3 (or none); default: $SSL_PHOTOZ_GPU_IDS, else nvidia-smi",
    )
    p.add_argument(
        "--lock-dir",
        help="lock files, shared by the jobs of the machine "
        "(default: $SSL_PHOTOZ_GPU_LOCK_DIR, else .snakemake/gpu-slots)",
    )
    p.add_argument("--timeout", type=float, help="give up (exit 75) after this many seconds")
    p.add_argument(
        "--torchrun",
        action="store_true",
        help="given several cards, run COMMAND once per card under torchrun (DDP pretraining)",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="data-parallel ranks of COMMAND (default 1: one process); on GPUs one card each",
    )
    p.add_argument(
        "--launcher",
        choices=("torchrun", "srun"),
        default="torchrun",
        help="torchrun: --standalone on this machine; srun: the tasks of this SLURM job",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="the job's CPUs: OMP_NUM_THREADS = threads // processes per rank",
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    p.set_defaults(func=cmd_gpu_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(getattr(args, "log", None))
    from .query.http_errors import RemoteQueryError

    try:
        return int(args.func(args) or 0)
    except (ConfigError, FileNotFoundError, ValueError, RemoteQueryError) as exc:
        # A remote service's failure (no token, refused, gave up) is said in one line too.
        log.error("%s", exc)
        print(f"ssl-photoz {args.verb}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
