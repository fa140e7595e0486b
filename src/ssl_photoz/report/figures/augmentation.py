"""The augmentation gallery: one galaxy of the cut-out store through the augmentations of
``ssl_photoz.learn.augment``, each alone and as the MoCo v2 and fine-tuning views, in gri."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.patches import Rectangle

from ssl_photoz.report.figures import common
from ssl_photoz.report.figures.common import new_figure
from ssl_photoz.surveys.sdss import SDSS

__all__ = ["MAX_SHIFT", "plot_augmentation_gallery"]

MAX_SHIFT = 7  # the jitter-crop's range in pixels, as training uses it


def _bright_labelled_row(store, max_candidates: int = 256) -> int:
    """A bright, well-contained galaxy with a spectroscopic redshift.

    Among up to ``max_candidates`` evenly spaced good labelled rows: the largest r flux within
    6 px of the centre, preferring galaxies that fit in the 64-px crop (median r flux on the ring
    28-32 px from the centre at most 0.5 % of the central mean: very nearby giants fill the crop
    and show the augmentations badly). Falls back to the brightest when none fits.
    """
    labelled = np.flatnonzero(store.ok & np.isfinite(store.z_spec))
    if labelled.size == 0:
        raise ValueError(f"{store.path}: no good labelled cut-out to show")
    pick = labelled[np.unique(np.linspace(0, labelled.size - 1, max_candidates).astype(int))]
    h, w = store.images.shape[-2:]
    yy, xx = np.mgrid[:h, :w]
    radius = np.hypot(yy - h // 2, xx - w // 2)
    core, ring = radius <= 6, (radius >= 28) & (radius <= 32)
    centre = np.empty(pick.size)
    edge = np.empty(pick.size)
    for k, i in enumerate(pick):
        r_band = np.asarray(store.images[int(i), 2], dtype=float)
        centre[k] = np.nanmean(r_band[core])
        edge[k] = np.nanmedian(r_band[ring])
    centre = np.where(np.isfinite(centre), centre, -np.inf)
    contained = edge <= 0.005 * centre
    score = np.where(contained, centre, -np.inf) if contained.any() else centre
    return int(pick[int(np.argmax(score))])


def _load_mad(stats_path, cutout: np.ndarray) -> tuple[np.ndarray, str]:
    if stats_path is not None:
        from ssl_photoz.learn.data import load_stats

        return load_stats(stats_path).numpy().astype(float), Path(stats_path).name
    # The stats definition (data.load_stats' source): median |x - median x| over a channel.
    flat = cutout.reshape(cutout.shape[0], -1)
    mad = np.median(np.abs(flat - np.median(flat, axis=1, keepdims=True)), axis=1)
    return np.maximum(mad, 1e-6), "this cut-out"


def _gallery_row(store, store_path, objid: int | None) -> int:
    """The store row to show: ``objid``'s (checked good), or a bright labelled galaxy."""
    if objid is None:
        return _bright_labelled_row(store)
    rows = np.flatnonzero(store.objid == int(objid))
    if rows.size == 0:
        raise ValueError(f"{store_path}: objid {objid} is not in the cut-out store")
    row = int(rows[0])
    if not store.ok[row]:
        raise ValueError(f"{store_path}: objid {objid} has no good cut-out (ok is False)")
    return row


def _panels(cutout, ebv_sfd: float, mad, mad_source: str, seed: int, size: int) -> list:
    """(image, title) of every panel, the draws from one generator seeded with ``seed``."""
    import torch

    from ssl_photoz.learn import augment

    x = torch.from_numpy(cutout)[None]
    g = torch.Generator().manual_seed(int(seed))
    ebv = float(torch.rand(1, generator=g)) * 0.5
    angle = float(torch.rand(1, generator=g)) * 2 * math.pi
    shifts = torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (1, 2), generator=g)
    crop = f"({size}-px centre crop)"
    panels = [
        (
            cutout,
            f"stored cut-out ({cutout.shape[-1]} px)\nbox: {size}-px centre crop; "
            "dashed: jitter range",
        ),
        (
            augment.center_crop(augment.redden(x, ebv), size)[0].numpy(),
            f"reddened, E(B-V) = {ebv:.2f}\n{crop}",
        ),
        (
            augment.center_crop(augment.rotate(x, angle), size)[0].numpy(),
            f"rotated by {math.degrees(angle):.0f} deg\n{crop}",
        ),
        (
            augment.jitter_crop(x, shifts, size)[0].numpy(),
            f"jitter-crop by (row, col) = ({int(shifts[0, 0])}, {int(shifts[0, 1])}) px\n"
            f"({size} px)",
        ),
        (
            augment.gaussian_noise(augment.center_crop(x, size), mad, g)[0].numpy(),
            f"Gaussian noise, sigma = U(1,3) x MAD\n(MAD from {mad_source}; {size}-px centre crop)",
        ),
    ]
    view1, view2 = augment.MocoViews(mad, max_shift=MAX_SHIFT, size=size)(x, g)
    panels.append(
        (view1[0].numpy(), f"MoCo view 1: redden, rotate,\njitter-crop, noise ({size} px)")
    )
    panels.append((view2[0].numpy(), f"MoCo view 2: same recipe,\nnew draws ({size} px)"))
    dered = augment.deredden(x, ebv_sfd)
    tuned = augment.FinetuneAugment(max_shift=MAX_SHIFT, size=size)(dered, g)
    panels.append(
        (tuned[0].numpy(), f"fine-tuning view: dereddened,\nrotate + jitter-crop ({size} px)")
    )
    return panels


def _crop_boxes(ax, n: int, size: int) -> None:
    """The centre crop and the jitter range on the stored cut-out, in its displayed (north-up)
    pixel frame."""
    start = n // 2 - size // 2
    ax.add_patch(
        Rectangle((start - 0.5, n - start - size - 0.5), size, size, fill=False, ec="white", lw=1.2)
    )
    ax.add_patch(
        Rectangle(
            (start - MAX_SHIFT - 0.5, n - start - size - MAX_SHIFT - 0.5),
            size + 2 * MAX_SHIFT,
            size + 2 * MAX_SHIFT,
            fill=False,
            ec="white",
            lw=0.8,
            ls="--",
        )
    )


def plot_augmentation_gallery(
    store_path,
    out_png,
    objid: int | None = None,
    seed: int = 0,
    stats_path=None,
    *,
    crop_size: int,
) -> Path:
    """One galaxy through the augmentations of ``augment.py``, as gri colour pictures.

    Panels: the stored cut-out (107 px, boxes for the ``crop_size`` centre crop, the paper's
    64 px, and the +-7 px jitter range); the centre crop after reddening, after a rotation, a
    jitter-crop, Gaussian noise
    (each alone, parameters drawn from ``torch.Generator().manual_seed(seed)`` and shown in the
    titles); two MoCo v2 views (``MocoViews``, all four together, on the stored cut-out, which is
    not dereddened: what pretraining sees) and a fine-tuning view (``FinetuneAugment`` on the
    dereddened cut-out). Nothing is undone: every panel is what a network would be given, on one
    shared stretch. ``objid`` picks the galaxy (default: a bright labelled one); the noise MAD
    comes from ``stats_path`` (the stats JSON) or, without one, from this cut-out.
    """
    from ssl_photoz.cutouts.pictures import gri_image
    from ssl_photoz.learn.data import open_store

    store = open_store(store_path)
    row = _gallery_row(store, store_path, objid)
    cutout = np.asarray(store.images[row], dtype=np.float32)
    if not np.isfinite(cutout).all():
        raise ValueError(f"{store_path}: the cut-out of objid {store.objid[row]} has NaN pixels")
    mad, mad_source = _load_mad(stats_path, cutout)
    size = int(crop_size)
    panels = _panels(cutout, float(store.ebv[row]), mad, mad_source, seed, size)

    fig = new_figure(12.0, 7.0)
    axes = fig.subplots(2, 4)
    for ax, (image, title) in zip(axes.ravel(), panels, strict=True):
        ax.imshow(gri_image(image), origin="upper", interpolation="nearest")
        ax.set_title(title, fontsize=8.5)
        ax.set_xticks([])
        ax.set_yticks([])
    _crop_boxes(axes[0, 0], cutout.shape[-1], size)
    z = store.z_spec[row]
    fig.suptitle(
        f"Augmentations of objid {int(store.objid[row])} (z_spec = {z:.3f}, SFD E(B-V) = "
        f"{float(store.ebv[row]):.3f}); gri, Lupton asinh stretch; generator seed {seed}; "
        f'{SDSS.pixel_scale_arcsec}"/px, north up',
        fontsize=10,
    )
    return common.save_figure(fig, out_png)
