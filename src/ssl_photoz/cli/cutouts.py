"""Verbs plan-shards, cutouts, gather and stats (workflow/rules/cutouts.smk): the cut-out store."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from ssl_photoz.cli.common import (
    _read_parquet,
    _write_json_atomic,
    add_common,
    log,
    sigterm_as_exit,
)

if TYPE_CHECKING:
    import pandas as pd


def _footprint_if_mock(sky_dir: str | None):
    if not sky_dir:
        return None
    from ssl_photoz.surveys.sdss.sky.survey import MockSky

    return MockSky(Path(sky_dir)).footprint


def cmd_plan_shards(args: argparse.Namespace) -> int:
    """Group objects into cut-out jobs by field; prepare the Zarr store (kept where it fits)."""
    from ssl_photoz.cutouts.plan import plan_shards
    from ssl_photoz.cutouts.settings import PLAN_KEYS, settings_from_cli, source_identity
    from ssl_photoz.cutouts.store import prepare_store

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


def _plan_for_shard(args: argparse.Namespace, cfg: dict) -> tuple[dict, pd.DataFrame]:
    """The plan and the objects table, checked against each other, --shard and the frames."""
    from ssl_photoz.cutouts.settings import source_identity

    plan = json.loads(Path(args.plan).read_text())
    if not 0 <= args.shard < plan["n_shards"]:
        raise ValueError(f"--shard {args.shard}: the plan has shards 0..{plan['n_shards'] - 1}")
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
    return plan, objects


def cmd_cutouts(args: argparse.Namespace) -> int:
    """Cut one shard's objects into the store; write the shard's status file."""
    import tempfile

    from ssl_photoz.cutouts.cut import cut_shard
    from ssl_photoz.cutouts.digests import cutting_code
    from ssl_photoz.cutouts.plan import job_zarr_shards
    from ssl_photoz.cutouts.settings import MACHINE_KEYS, PLAN_KEYS, settings_from_cli
    from ssl_photoz.surveys.sdss.frames import make_frame_source

    cfg = settings_from_cli(
        (*PLAN_KEYS, *MACHINE_KEYS), args.section_json, args.config, args.machine_json
    )
    plan, objects = _plan_for_shard(args, cfg)
    shard = plan["shards"][args.shard]
    fingerprints = [plan["fingerprints"][z] for z in job_zarr_shards(shard, plan["store_shard"])]
    # SIGTERM (a time limit, a cancelled job) becomes an exit through every `with`: the frames
    # decompressed into the job's scratch go with it, as on any other exit.
    with sigterm_as_exit(), tempfile.TemporaryDirectory(prefix=f"cutouts-{args.shard}-") as tmp:
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
                max_missing_fraction=cfg["max_missing_fraction"],
            )
            if hasattr(source, "shard_done"):  # cache_policy plan: this shard's frames are done
                source.shard_done(plan, args.shard)
    n_ok = sum(s["ok"] for s in statuses)
    log.info("shard %d: %d of %d cut-outs complete", args.shard, n_ok, len(statuses))
    _write_json_atomic(Path(args.out), {"shard": shard["shard"], "objects": statuses})
    return 0


def cmd_gather(args: argparse.Namespace) -> int:
    """Validate the store against objects.parquet; write its 1-D arrays and metadata."""
    import pandas as pd

    from ssl_photoz.core.provenance import provenance
    from ssl_photoz.cutouts.gather import gather, reject_cause

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
            "cause": pd.Series([reject_cause(s) for s in failed], dtype="str"),
            "reason": pd.Series([s["reason"] for s in failed], dtype="str"),
        }
    )
    from ssl_photoz.core.atomic import atomic_path

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
    from ssl_photoz.cutouts.settings import STATS_KEYS, settings_from_cli
    from ssl_photoz.cutouts.stats import channel_mad

    cfg = settings_from_cli(STATS_KEYS, args.section_json, args.config)
    stats = channel_mad(Path(args.store), cfg["stats_max_images"], seed=cfg["seed"])
    _write_json_atomic(Path(args.out), stats)
    log.info("channel MAD: %s", dict(zip(stats["bands"], stats["mad"], strict=True)))
    return 0


def _add_plan_shards(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan-shards", help="group objects into cut-out jobs (rule plan_shards)")
    add_common(p)
    p.add_argument("--objects", required=True)
    p.add_argument("--sky-dir", help="the simulated survey (frame source mock)")
    p.add_argument("--plan", required=True, help="output plan (JSON)")
    p.add_argument("--store", required=True, help="the Zarr store (kept where its layout fits)")
    p.set_defaults(func=cmd_plan_shards)


def _add_cutouts(sub: argparse._SubParsersAction) -> None:
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
        "cache_policy, cache_max_gb, timeout_s, retries, backoff_s), over --section-json; the "
        "rule passes them through its resources, so that changing them reruns nothing",
    )
    p.add_argument("--out", required=True, help="the shard's status file (JSON)")
    p.set_defaults(func=cmd_cutouts)


def _add_gather(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gather", help="validate and finish the store (rule gather)")
    add_common(p)
    p.add_argument("--objects", required=True)
    p.add_argument("--plan", required=True)
    p.add_argument("--shards-dir", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--rejects", required=True, help="objects whose cut-out failed (Parquet)")
    p.add_argument("--manifest", required=True)
    p.set_defaults(func=cmd_gather)


def _add_stats(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stats", help="per-channel MAD of the training images (rule stats)")
    add_common(p)
    p.add_argument("--store", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_stats)


VERBS = {
    "plan-shards": _add_plan_shards,
    "cutouts": _add_cutouts,
    "gather": _add_gather,
    "stats": _add_stats,
}
