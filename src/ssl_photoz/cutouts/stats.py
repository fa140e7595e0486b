"""Channel statistics of the training cut-outs, for the noise augmentation (rule stats)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssl_photoz.cutouts.reader import open_store
from ssl_photoz.surveys.sdss import SDSS


def channel_mad(store_path: Path, max_images: int, seed: int = 0) -> dict:
    """Per-channel median absolute deviation over (a seeded sample of) the training images.

    The noise augmentation draws sigma_c = U(1, 3) x MAD_c (Hayat et al. 2021)."""
    store = open_store(store_path)
    train = np.flatnonzero(store.ok & store.in_split("train"))
    if len(train) == 0:
        raise ValueError(f"{store_path}: no training images to compute channel statistics from")
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(train, size=min(max_images, len(train)), replace=False))
    pixels = np.stack([store.image(i) for i in pick])
    per_channel = pixels.transpose(1, 0, 2, 3).reshape(len(SDSS.bands), -1)
    median = np.median(per_channel, axis=1)
    mad = np.median(np.abs(per_channel - median[:, None]), axis=1)
    return {
        "bands": list(SDSS.bands),
        "median": median.tolist(),
        "mad": mad.tolist(),
        "n_images": int(len(pick)),
        "n_training_images": int(len(train)),
        "definition": "MAD_c = median(|x - median(x)|) over all pixels of channel c",
    }
