"""Augmentations of batches of 5-band cut-outs, as in Hayat et al. 2021.

Every function takes a batch ``x`` of shape (B, 5, H, W) and returns a new tensor of the same dtype
on the same device; nothing is moved to another device. Randomness comes only from an explicit
``torch.Generator`` (or from parameter tensors the caller draws), so a run is reproducible from its
seeds. Random parameters are drawn on the generator's device and then moved to ``x``'s device: pass
a generator on the batch's device (``torch.Generator(device=x.device)``) to avoid a copy.

Image conventions: axis -2 is the row (y), axis -1 the column (x). Shown with matplotlib's
``imshow(..., origin="lower")`` x points right and y points up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ssl_photoz.surveys.sdss.extinction import SF11_VECTOR

__all__ = [
    "EvalTransform",
    "FinetuneAugment",
    "MocoViews",
    "center_crop",
    "deredden",
    "gaussian_noise",
    "jitter_crop",
    "random_jitter_crop",
    "random_reddening",
    "random_rotation",
    "redden",
    "rotate",
    "rotate_crop",
]

N_BANDS = len(SF11_VECTOR)


def _check_batch(x: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != N_BANDS:
        raise ValueError(f"expected a batch of shape (B, {N_BANDS}, H, W), got {tuple(x.shape)}")


def _per_image(values: torch.Tensor | Sequence[float] | float, x: torch.Tensor) -> torch.Tensor:
    """A (B,) parameter on x's device and dtype, checked against the batch size."""
    t = torch.as_tensor(values, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"expected one value per image ({x.shape[0]},), got {tuple(t.shape)}")
    return t


def _uniform(shape, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """U(0, 1) drawn on the generator's device, returned on ``like``'s device and dtype."""
    u = torch.rand(shape, generator=generator, device=generator.device)
    return u.to(device=like.device, dtype=like.dtype)


# --- galactic reddening ------------------------------------------------------------------------


def _extinction_factor(x: torch.Tensor, ebv, sign: float) -> torch.Tensor:
    r = torch.as_tensor(SF11_VECTOR, dtype=x.dtype, device=x.device)
    a_mag = _per_image(ebv, x)[:, None] * r[None, :]  # (B, 5) extinction in magnitudes
    return torch.pow(10.0, sign * 0.4 * a_mag)[:, :, None, None]


def redden(x: torch.Tensor, ebv) -> torch.Tensor:
    """Dim each band as dust with E(B-V) = ``ebv`` (B,) would: flux x 10**(-0.4 R_c E(B-V))."""
    _check_batch(x)
    return x * _extinction_factor(x, ebv, -1.0)


def deredden(x: torch.Tensor, ebv) -> torch.Tensor:
    """Undo :func:`redden`: flux x 10**(+0.4 R_c E(B-V)), R_c from Schlafly & Finkbeiner 2011."""
    _check_batch(x)
    return x * _extinction_factor(x, ebv, +1.0)


def random_reddening(
    x: torch.Tensor, generator: torch.Generator, max_ebv: float = 0.5
) -> torch.Tensor:
    """The paper's reddening augmentation: E(B-V) ~ U(0, max_ebv) per image."""
    _check_batch(x)
    ebv = _uniform((x.shape[0],), generator, x) * max_ebv
    return redden(x, ebv)


# --- rotation ----------------------------------------------------------------------------------


def _rotation_grid(
    angles: torch.Tensor, height: int, width: int, out_height: int, out_width: int, shifts=None
) -> torch.Tensor:
    """Sampling grid for grid_sample (align_corners=False) of a rotation about the image centre.

    The output pixel at offset p (pixels, from the output centre) samples the input at
    R(-angle) (p + shift): the content turns by +angle. ``shifts`` (B, 2) (row, col) moves the
    output window in the rotated frame, which is what a crop after the rotation does.
    """
    dtype, device = angles.dtype, angles.device
    # Pixel-centre offsets of the output window from the input centre, (x, y) order for the grid.
    xs = torch.arange(out_width, dtype=dtype, device=device) - (out_width - 1) / 2
    ys = torch.arange(out_height, dtype=dtype, device=device) - (out_height - 1) / 2
    py, px = torch.meshgrid(ys, xs, indexing="ij")  # (h, w)
    px = px[None]
    py = py[None]
    if shifts is not None:
        px = px + shifts[:, 1, None, None]
        py = py + shifts[:, 0, None, None]
    cos = torch.cos(angles)[:, None, None]
    sin = torch.sin(angles)[:, None, None]
    # Inverse rotation, in pixels (so that non-square inputs rotate without shear).
    src_x = cos * px + sin * py
    src_y = -sin * px + cos * py
    # Pixels -> normalised coordinates for align_corners=False: the image edges are at -1 and +1.
    return torch.stack((src_x * (2 / width), src_y * (2 / height)), dim=-1)


def rotate(
    x: torch.Tensor, angles, mode: str = "bilinear", padding_mode: str = "reflection"
) -> torch.Tensor:
    """Rotate each image by ``angles`` (B,) radians about its centre.

    Convention: positive angles turn the content counter-clockwise in the (x right, y up) display
    of ``imshow(origin="lower")``: a source at +x from the centre moves to +y (a higher row index)
    after +90 degrees. The centre is the pixel (H-1)/2, (W-1)/2, the middle pixel of an odd-sized
    cut-out, so multiples of 90 degrees map pixel centres onto pixel centres.

    Outside the input, ``padding_mode="reflection"`` (default) mirrors the image: after a 45 degree
    turn a 64 x 64 crop jittered by 7 px reaches 55 px from the centre, beyond the 53.5 px of a
    107 x 107 cut-out, and mirrored sky is closer to real sky than blank zeros.
    """
    _check_batch(x)
    h, w = x.shape[-2:]
    grid = _rotation_grid(_per_image(angles, x), h, w, h, w)
    return F.grid_sample(x, grid, mode=mode, padding_mode=padding_mode, align_corners=False)


def random_rotation(x: torch.Tensor, generator: torch.Generator, **kwargs) -> torch.Tensor:
    """Rotation by an angle ~ U(0, 2 pi) per image (keyword arguments go to :func:`rotate`)."""
    _check_batch(x)
    angles = _uniform((x.shape[0],), generator, x) * (2 * math.pi)
    return rotate(x, angles, **kwargs)


# --- crops -------------------------------------------------------------------------------------


def _crop_starts(length: int, size: int, shifts: torch.Tensor) -> torch.Tensor:
    # The crop's centre is the image's middle pixel (length // 2) moved by the shift.
    return length // 2 - size // 2 + shifts


def jitter_crop(x: torch.Tensor, shifts, size: int = 64) -> torch.Tensor:
    """Move the centre of each image by integer ``shifts`` (B, 2) = (rows, cols), then crop size^2.

    Raises if a crop would leave the image (no padding is ever made up).
    """
    _check_batch(x)
    h, w = x.shape[-2:]
    shifts = torch.as_tensor(shifts, device="cpu")
    if shifts.shape != (x.shape[0], 2) or shifts.is_floating_point():
        raise ValueError(
            f"shifts must be integers of shape ({x.shape[0]}, 2), got {tuple(shifts.shape)}"
        )
    rows = _crop_starts(h, size, shifts[:, 0])
    cols = _crop_starts(w, size, shifts[:, 1])
    if rows.min() < 0 or cols.min() < 0 or rows.max() + size > h or cols.max() + size > w:
        raise ValueError(f"a {size} x {size} crop with these shifts leaves the {h} x {w} image")
    # Gather the windows with one index per output pixel: no Python loop over the batch.
    offsets = torch.arange(size)
    row_idx = (rows[:, None] + offsets).to(x.device)  # (B, size)
    col_idx = (cols[:, None] + offsets).to(x.device)
    batch = torch.arange(x.shape[0], device=x.device)[:, None, None, None]
    band = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return x[batch, band, row_idx[:, None, :, None], col_idx[:, None, None, :]]


def random_jitter_crop(
    x: torch.Tensor, generator: torch.Generator, max_shift: int = 7, size: int = 64
) -> torch.Tensor:
    """:func:`jitter_crop` with shifts ~ U{-max_shift, ..., max_shift} on each axis."""
    _check_batch(x)
    shifts = torch.randint(
        -max_shift, max_shift + 1, (x.shape[0], 2), generator=generator, device=generator.device
    )
    return jitter_crop(x, shifts.cpu(), size)


def center_crop(x: torch.Tensor, size: int = 64) -> torch.Tensor:
    """The size x size window around the middle pixel (the jitter crop with no shift)."""
    _check_batch(x)
    h, w = x.shape[-2:]
    top, left = h // 2 - size // 2, w // 2 - size // 2
    if top < 0 or left < 0:
        raise ValueError(f"cannot crop {size} x {size} from a {h} x {w} image")
    return x[..., top : top + size, left : left + size]


# --- noise -------------------------------------------------------------------------------------


def gaussian_noise(
    x: torch.Tensor,
    mad: torch.Tensor | Sequence[float],
    generator: torch.Generator,
    low: float = 1.0,
    high: float = 3.0,
) -> torch.Tensor:
    """Add N(0, sigma_c^2) with sigma_c = U(low, high) x MAD_c drawn per image and channel."""
    _check_batch(x)
    mad = torch.as_tensor(mad, dtype=x.dtype, device=x.device)
    if mad.shape != (N_BANDS,):
        raise ValueError(f"mad must have shape ({N_BANDS},), got {tuple(mad.shape)}")
    b, c, h, w = x.shape
    sigma = (low + (high - low) * _uniform((b, c), generator, x)) * mad  # (B, 5)
    noise = torch.randn((b, c, h, w), generator=generator, device=generator.device)
    return x + noise.to(device=x.device, dtype=x.dtype) * sigma[:, :, None, None]


# --- pipelines ---------------------------------------------------------------------------------


class MocoViews:
    """Two independently augmented views of a batch for MoCo v2 pretraining.

    Each view: reddening E(B-V) ~ U(0, max_ebv) -> rotation ~ U(0, 2 pi) -> jitter ~ U{-7..7}
    and a size x size crop -> Gaussian noise of U(1, 3) x MAD per channel. Rotation and crop are
    done by one grid_sample on the crop's pixels only, which gives the same values as rotating the
    whole cut-out then cropping (the same sampling points) at a third of the cost.
    """

    def __init__(
        self,
        mad: torch.Tensor | Sequence[float],
        max_ebv: float = 0.5,
        max_shift: int = 7,
        size: int = 64,
        noise_low: float = 1.0,
        noise_high: float = 3.0,
    ):
        self.mad = torch.as_tensor(mad, dtype=torch.float32)
        if self.mad.shape != (N_BANDS,):
            raise ValueError(f"mad must have shape ({N_BANDS},), got {tuple(self.mad.shape)}")
        self.max_ebv = max_ebv
        self.max_shift = max_shift
        self.size = size
        self.noise_low = noise_low
        self.noise_high = noise_high

    def view(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One augmented view of the batch ``x`` (B, 5, H, W) -> (B, 5, size, size)."""
        x = random_reddening(x, generator, self.max_ebv)
        x = _random_rotate_crop(x, generator, self.max_shift, self.size)
        return gaussian_noise(x, self.mad, generator, self.noise_low, self.noise_high)

    def __call__(
        self, x: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.view(x, generator), self.view(x, generator)


def rotate_crop(
    x: torch.Tensor,
    angles,
    shifts,
    size: int = 64,
    mode: str = "bilinear",
    padding_mode: str = "reflection",
) -> torch.Tensor:
    """``jitter_crop(rotate(x, angles), shifts, size)`` computed on the crop's pixels only.

    Shifts may be fractional here; with integer shifts the crop's pixels are exactly the pixels
    :func:`jitter_crop` would take from the rotated image.
    """
    _check_batch(x)
    h, w = x.shape[-2:]
    angles = _per_image(angles, x)
    shifts = torch.as_tensor(shifts).to(device=x.device, dtype=x.dtype)
    if shifts.shape != (x.shape[0], 2):
        raise ValueError(f"shifts must have shape ({x.shape[0]}, 2), got {tuple(shifts.shape)}")
    # The crop's middle sits at pixel length // 2 - size // 2 + (size - 1) / 2 of the image, which
    # is half a pixel off the image centre when the parities differ: fold that into the shift.
    offset = torch.tensor(
        [h // 2 - size // 2 + (size - 1) / 2 - (h - 1) / 2,
         w // 2 - size // 2 + (size - 1) / 2 - (w - 1) / 2],
        dtype=x.dtype,
        device=x.device,
    )  # fmt: skip
    grid = _rotation_grid(angles, h, w, size, size, shifts + offset)
    return F.grid_sample(x, grid, mode=mode, padding_mode=padding_mode, align_corners=False)


def _random_rotate_crop(
    x: torch.Tensor, generator: torch.Generator, max_shift: int, size: int
) -> torch.Tensor:
    angles = _uniform((x.shape[0],), generator, x) * (2 * math.pi)
    shifts = torch.randint(
        -max_shift, max_shift + 1, (x.shape[0], 2), generator=generator, device=generator.device
    )
    _check_crop_fits(x, max_shift, size)
    return rotate_crop(x, angles, shifts, size)


def _check_crop_fits(x: torch.Tensor, max_shift: int, size: int) -> None:
    h, w = x.shape[-2:]
    for length in (h, w):
        start = length // 2 - size // 2
        if start - max_shift < 0 or start + max_shift + size > length:
            raise ValueError(
                f"a {size} x {size} crop jittered by {max_shift} px leaves the {h} x {w} image"
            )


class FinetuneAugment:
    """Fine-tuning and supervised training: rotation ~ U(0, 2 pi) then jitter-crop (no reddening,
    no noise; the inputs are already dereddened)."""

    def __init__(self, max_shift: int = 7, size: int = 64):
        self.max_shift = max_shift
        self.size = size

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        _check_batch(x)
        return _random_rotate_crop(x, generator, self.max_shift, self.size)


class EvalTransform:
    """Evaluation: the centre crop only."""

    def __init__(self, size: int = 64):
        self.size = size

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return center_crop(x, self.size)
