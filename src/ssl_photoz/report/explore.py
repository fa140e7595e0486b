"""The galaxy explorer: one static HTML page (``results/explore/index.html``) to browse the run.

The page lists the validation galaxies in a sortable table: objid, position, z_spec, z_p of every
model, dz = (z_p - z_spec) / (1 + z_spec) and the PIT (the photo-z PDF's CDF at z_spec) of a
chosen model, the anomaly score, and a gri picture. A click (or the search box: an objid, or
"ra dec" in degrees) opens a galaxy: its picture, its PDF of every classifier (an SVG drawn in the
browser from the numbers on the page), and its k nearest training galaxies in the embedding space
with their pictures, redshifts and distances (:func:`ssl_photoz.similarity.search.neighbours`, the
look-up
``ssl-photoz similar`` makes).

Everything is inside the one file: the data as JSON, the pictures as base64 JPEG, the script and
style from ``explore_assets/`` (vanilla JavaScript, nothing fetched), so it opens from disk with
no server and no network. Above ``max_galaxies`` validation galaxies (config ``explore``) the page
holds a seeded random sample of them, and says so. The pictures are the central 64 x 64 pixels
(the networks' input) in the figures' Lupton et al. (2004) gri stretch, north up.

The anomaly score is the one of ``results/similarity/anomalies.tsv``: the distance to the
``anomaly_k``-th nearest embedded object (any split, itself excluded); larger is odder.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ssl_photoz.core import kinds
from ssl_photoz.core.atomic import atomic_path
from ssl_photoz.evaluate.pdf_metrics import pit
from ssl_photoz.report import explore_assets

__all__ = [
    "SETTINGS",
    "build_site",
    "load_predictions",
    "pit",
    "settings_from_config",
    "thumbnail_jpeg",
]

log = logging.getLogger(__name__)

# The page's settings, every one from the config (defaults in the schema only):
# explore.max_galaxies, explore.seed, similarity.neighbours, similarity.anomaly_k and
# model.crop_size (the pictures are the centre crop the networks see).
SETTINGS = ("max_galaxies", "seed", "neighbours", "anomaly_k", "crop_size")
POOL = "train"  # neighbours from the training galaxies, as in the paper's Fig. 1
JPEG_QUALITY = 90  # with full-resolution colour (4:4:4): sky noise is colourful pixel to pixel
PDF_LEVELS = 255  # PDFs travel as one byte per bin, relative to their peak (the PIT is exact)
SIZE_WARN_BYTES = 20_000_000
DATA_ID = "explorer-data"


# -- redshifts -------------------------------------------------------------------------------------
def load_predictions(paths) -> dict[str, pd.DataFrame]:
    """Prediction files by model name (the file's stem): objid, z_spec, z_phot and, where the
    model gives one, ``pdf`` as an (n, n_bins) array in ``DataFrame.attrs["pdf"]``."""
    import pyarrow.parquet as pq

    models = {}
    for path in sorted(Path(p) for p in paths):
        table = pq.read_table(path)
        missing = [c for c in ("objid", "z_spec", "z_phot") if c not in table.column_names]
        if missing:
            raise ValueError(f"{path}: not a predictions file, it lacks columns {missing}")
        frame = table.select(["objid", "z_spec", "z_phot"]).to_pandas()
        if "pdf" in table.column_names:
            column = table["pdf"].combine_chunks()
            width = column.type.list_size
            frame.attrs["pdf"] = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
        models[path.stem] = frame
    if not models:
        raise ValueError("no prediction files given")
    return models


def _model_order(names) -> list[str]:
    """The image models in the registry's order (fine-tuned runs, then supervised ones), then
    the rest; by label fraction (largest first)."""
    networks = kinds.names(family="image")

    def key(name: str):
        registered = kinds.kind_of(name)
        kind = registered.name if registered else name.split("_f")[0]
        rank = networks.index(kind) if kind in networks else len(networks)
        try:
            fraction = -float(name[len(kind) :].split("_f")[1].split("_s")[0])
        except (IndexError, ValueError):
            fraction = 0.0
        return rank, fraction, name

    return sorted(names, key=key)


# -- pictures --------------------------------------------------------------------------------------
def thumbnail_jpeg(cutout: np.ndarray, size: int, quality: int = JPEG_QUALITY) -> bytes:
    """The central size x size pixels of a (5, H, W) cut-out as a gri JPEG (north up)."""
    from matplotlib.image import imsave  # Pillow underneath (a matplotlib dependency)

    from ssl_photoz.cutouts.pictures import gri_image

    h, w = cutout.shape[-2:]
    top, left = h // 2 - size // 2, w // 2 - size // 2
    if top < 0 or left < 0:
        raise ValueError(f"cannot cut {size} x {size} pixels from a {h} x {w} cut-out")
    rgb = gri_image(cutout[:, top : top + size, left : left + size])
    pixels = np.round(rgb * 255.0).astype(np.uint8)
    buffer = io.BytesIO()
    imsave(buffer, pixels, format="jpeg", pil_kwargs={"quality": quality, "subsampling": 0})
    return buffer.getvalue()


# -- the page --------------------------------------------------------------------------------------
def _number(value, digits: int | None = 5):
    """A JSON-safe float (None for NaN/inf), rounded unless ``digits`` is None."""
    value = float(value)
    if not math.isfinite(value):
        return None
    return value if digits is None else round(value, digits)


def _pdf_bytes(pdf_row: np.ndarray) -> str:
    """One PDF as base64 bytes, each bin's share of the peak in 0..PDF_LEVELS."""
    row = np.nan_to_num(np.asarray(pdf_row, dtype=np.float64))
    peak = row.max()
    levels = np.round(row / peak * PDF_LEVELS) if peak > 0 else np.zeros_like(row)
    return base64.b64encode(levels.astype(np.uint8).tobytes()).decode("ascii")


def _validation_rows(table, models, embeddings_path, max_galaxies: int, seed: int):
    """(rows of the embeddings table to show, validation galaxies there, sampled or not): the
    validation galaxies with an embedding and a prediction, a seeded sample above
    ``max_galaxies``."""
    val_rows = np.flatnonzero(table["split"].to_numpy() == "val")
    predicted = set()
    for frame in models.values():
        predicted.update(frame["objid"].tolist())
    val_rows = val_rows[np.isin(table["objid"].to_numpy()[val_rows], list(predicted))]
    if val_rows.size == 0:
        raise ValueError(
            f"{embeddings_path}: no validation galaxy has both an embedding and a prediction"
        )
    n_val = int(val_rows.size)
    sampled = n_val > max_galaxies
    if sampled:
        rng = np.random.default_rng(seed)
        val_rows = np.sort(rng.choice(val_rows, size=max_galaxies, replace=False))
    log.info("explorer: %d of %d validation galaxies", len(val_rows), n_val)
    return val_rows, n_val, sampled


def _pits(models: dict, z_min: float, z_max: float) -> dict[str, np.ndarray]:
    """The PIT of every object of each model with PDFs."""
    pits = {}
    for name, frame in models.items():
        pdf = frame.attrs.get("pdf")
        if pdf is not None:
            pits[name] = pit(pdf, frame["z_spec"].to_numpy(), z_min, z_max)
    return pits


def _pdf_width(models: dict) -> int:
    """The classifiers' common number of PDF bins (0 without PDFs)."""
    n_bins = {
        name: frame.attrs["pdf"].shape[1] for name, frame in models.items() if "pdf" in frame.attrs
    }
    widths = sorted(set(n_bins.values()))
    if len(widths) > 1:
        raise ValueError(f"the classifiers' PDFs have different bin counts: {n_bins}")
    return widths[0] if widths else 0


def _redshifts(objid: int, z_spec: float, order, by_model, models, pits) -> dict:
    """One galaxy's z_p and dz of every model that predicts it, PIT and PDF of those with PDFs."""
    zp, dz, pit_of, pdfs = {}, {}, {}, {}
    for name in order:
        frame = by_model[name]
        if objid not in frame.index:
            continue
        hit = frame.loc[objid]
        zp[name] = _number(hit["z_phot"])
        dz[name] = _number((hit["z_phot"] - z_spec) / (1.0 + z_spec))
        if name in pits:
            i = int(hit["_row"])
            pit_of[name] = _number(pits[name][i], 4)
            pdfs[name] = _pdf_bytes(models[name].attrs["pdf"][i])
    return {"z_p": zp, "dz": dz, "pit": pit_of, "pdf": pdfs}


def _neighbours(emb, index, row: int, k: int) -> list[dict]:
    """The ``k`` nearest training galaxies of embeddings row ``row``, as the page lists them."""
    from ssl_photoz.similarity.search import neighbours as nearest

    found = nearest(emb, index, int(row), k=k, pool=POOL)
    return [
        {
            "objid": str(int(n.objid)),
            # Unrounded: the page rounds once, as ssl-photoz similar does.
            "z_spec": _number(n.z_spec, None),
            "distance": _number(n.distance, None),
            "ra": _number(n.ra, 6),
            "dec": _number(n.dec, 6),
        }
        for n in found.itertuples()
    ]


def _galaxies(emb, index, models, val_rows, scores, z_min, z_max, k: int):
    """The page's galaxy records (in ``val_rows``' order) and the objids whose pictures they
    show (themselves and their neighbours)."""
    table = emb.table
    order = _model_order(models)
    by_model = {
        name: frame.assign(_row=np.arange(len(frame))).set_index("objid")
        for name, frame in models.items()
    }
    pits = _pits(models, z_min, z_max)
    objids = table["objid"].to_numpy()
    galaxies, pictures = [], set()
    for pos, row in enumerate(val_rows):
        objid = int(objids[row])
        record = table.iloc[row]
        z_spec = float(record["z_spec"])
        near = _neighbours(emb, index, row, k)
        pictures.add(objid)
        pictures.update(int(n["objid"]) for n in near)
        galaxies.append(
            {
                "objid": str(objid),
                "ra": _number(record["ra"], 6),
                "dec": _number(record["dec"], 6),
                "z_spec": _number(z_spec, None),
                **_redshifts(objid, z_spec, order, by_model, models, pits),
                "anomaly": _number(scores[pos], 4),
                "neighbours": near,
            }
        )
    return galaxies, pictures


def _images(store_path: Path, objids, crop_size: int) -> dict[str, str]:
    """The pictures (base64 JPEG of the centre crop) by objid."""
    from ssl_photoz.cutouts.pictures import store_cutouts

    wanted = sorted(objids)
    return {
        str(objid): base64.b64encode(thumbnail_jpeg(cutout, crop_size)).decode("ascii")
        for objid, cutout in zip(wanted, store_cutouts(store_path, wanted), strict=True)
    }


def collect(
    embeddings_path: Path,
    store_path: Path,
    prediction_paths,
    z_min: float,
    z_max: float,
    *,
    max_galaxies: int,
    seed: int,
    neighbours: int,
    anomaly_k: int,
    crop_size: int,
) -> dict:
    """Everything the page shows, as a JSON-ready dict (objids as strings: they exceed 2**53).
    The models are those of ``prediction_paths``: kinds in registry order, whichever ran."""
    from ssl_photoz.similarity.embeddings import load_embeddings
    from ssl_photoz.similarity.index import open_index
    from ssl_photoz.similarity.search import kth_distances

    k = neighbours
    if max_galaxies < 1 or k < 1 or anomaly_k < 1:
        raise ValueError(
            f"max_galaxies, neighbours and anomaly_k must be >= 1, got {max_galaxies}, {k}, "
            f"{anomaly_k}"
        )
    emb = load_embeddings(embeddings_path)
    index = open_index(emb)
    models = load_predictions(prediction_paths)
    order = _model_order(models)
    val_rows, n_val, sampled = _validation_rows(
        emb.table, models, embeddings_path, max_galaxies, seed
    )
    scores = kth_distances(emb.vectors, anomaly_k, index=index, rows=val_rows)
    galaxies, pictures = _galaxies(emb, index, models, val_rows, scores, z_min, z_max, k)
    images = _images(store_path, pictures, crop_size)
    with_pdf = [m for m in order if "pdf" in models[m].attrs]
    return {
        "galaxies": galaxies,
        "images": images,
        "models": order,
        "pdf_models": with_pdf,
        "default_model": next(iter(with_pdf), order[0]),
        "bins": {"z_min": z_min, "z_max": z_max, "n": _pdf_width(models)},
        "n_validation": n_val,
        "n_shown": len(galaxies),
        "sampled": sampled,
        "max_galaxies": max_galaxies,
        "seed": seed,
        "k": k,
        "pool": POOL,
        "anomaly_k": anomaly_k,
        "n_embedded": len(emb.table),
        "thumb_px": crop_size,
        "match_radius_arcsec": _match_radius(),
        "embeddings": str(embeddings_path),
    }


def settings_from_config(sections: dict) -> dict:
    """The page's SETTINGS from the config sections explore, similarity and model (filled)."""
    from ssl_photoz.core.config import crop_size

    explore, similarity = sections["explore"], sections["similarity"]
    return {
        "max_galaxies": explore["max_galaxies"],
        "seed": explore["seed"],
        "neighbours": similarity["neighbours"],
        "anomaly_k": similarity["anomaly_k"],
        "crop_size": crop_size(sections["model"]),
    }


def _match_radius() -> float:
    from ssl_photoz.similarity.search import MATCH_RADIUS_ARCSEC

    return MATCH_RADIUS_ARCSEC


def render_html(data: dict) -> str:
    """The page: the template with the style, the script and the data (JSON) inlined."""
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False)
    # Inside <script>, "</" could close the element: JSON allows "<\/" for it.
    payload = payload.replace("</", "<\\/")
    page = explore_assets.read("index.html")
    for marker, text in (
        ("/*EXPLORER_CSS*/", explore_assets.read("explorer.css")),
        ("/*EXPLORER_JS*/", explore_assets.read("explorer.js")),
        ("/*EXPLORER_DATA*/", payload),
    ):
        if page.count(marker) != 1:
            raise RuntimeError(f"explore_assets/index.html must hold {marker} once")
        page = page.replace(marker, text)
    return page


def build_site(
    embeddings_path: Path,
    store_path: Path,
    prediction_paths,
    out_html: Path,
    z_min: float,
    z_max: float,
    **settings,
) -> dict:
    """Write the explorer page atomically; return a summary (galaxies, pictures, bytes).
    ``settings``: every one of SETTINGS (``settings_from_config`` reads them from the config)."""
    unknown = set(settings) - set(SETTINGS)
    missing = set(SETTINGS) - set(settings)
    if unknown or missing:
        raise ValueError(
            f"explorer settings: unknown {sorted(unknown)}, missing {sorted(missing)}; "
            f"expected exactly {list(SETTINGS)}"
        )
    data = collect(
        Path(embeddings_path), Path(store_path), prediction_paths, z_min, z_max, **settings
    )
    page = render_html(data).encode("utf-8")
    out_html = Path(out_html)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_html) as tmp:
        Path(tmp).write_bytes(page)
    summary = {
        "galaxies": data["n_shown"],
        "validation": data["n_validation"],
        "sampled": data["sampled"],
        "pictures": len(data["images"]),
        "bytes": len(page),
    }
    log.info("explorer -> %s: %s", out_html, json.dumps(summary))
    if len(page) > SIZE_WARN_BYTES:
        log.warning(
            "%s is %.1f MB; lower explore.max_galaxies to keep the page light",
            out_html,
            len(page) / 1e6,
        )
    return summary
