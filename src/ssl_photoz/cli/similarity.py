"""Verbs embed, similar and similarity (workflow/rules/similarity.smk): the embedding space."""

from __future__ import annotations

import argparse
from pathlib import Path

from ssl_photoz.cli.common import _sections, add_config, add_precision, log


def cmd_embed(args: argparse.Namespace) -> int:
    """128-d unit embeddings of every usable object from the MoCo encoder, and their index."""
    from ssl_photoz.similarity.embeddings import compute_embeddings
    from ssl_photoz.similarity.index import write_index

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
    from ssl_photoz.core.config import with_defaults
    from ssl_photoz.similarity.search import query_neighbours

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
    from ssl_photoz.core.atomic import atomic_path
    from ssl_photoz.similarity.embeddings import load_embeddings
    from ssl_photoz.similarity.figures import plot_anomalies, plot_similarity_search
    from ssl_photoz.similarity.index import open_index
    from ssl_photoz.similarity.search import anomalies

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


def _add_embed(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="MoCo embeddings of every object + index (rule embed)")
    p.add_argument("--checkpoint", required=True, help="the pretraining checkpoint")
    p.add_argument("--store", required=True)
    p.add_argument("--stats", help="per-channel MAD (recorded in the provenance)")
    p.add_argument("--out", required=True, help="embeddings (Parquet); the index goes beside it")
    p.add_argument("--device", default="cpu")
    add_precision(p)
    p.add_argument("--log", type=Path)
    p.set_defaults(func=cmd_embed)


def _add_similar(sub: argparse._SubParsersAction) -> None:
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


def _add_similarity(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("similarity", help="Fig. 1 and the anomaly list (rule similarity)")
    p.add_argument("--embeddings", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--fig1", required=True, help="similarity-search figure (PNG)")
    p.add_argument("--anomalies", required=True, help="anomaly list (TSV)")
    p.add_argument("--anomalies-png", required=True, help="their images (PNG)")
    add_config(p, "similarity")
    p.add_argument("--log", type=Path)
    p.set_defaults(func=cmd_similarity)


VERBS = {"embed": _add_embed, "similar": _add_similar, "similarity": _add_similarity}
