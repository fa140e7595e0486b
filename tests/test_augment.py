"""Augmentations of 5-band batches: physics (reddening), geometry (rotation, crops), noise level."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ssl_photoz.learn import augment
from ssl_photoz.learn.augment import (
    EvalTransform,
    FinetuneAugment,
    MocoViews,
    center_crop,
    deredden,
    gaussian_noise,
    jitter_crop,
    random_jitter_crop,
    random_reddening,
    random_rotation,
    redden,
    rotate,
    rotate_crop,
)
from ssl_photoz.surveys.sdss.extinction import SF11_VECTOR

SIZE = 107
CENTRE = SIZE // 2  # 53: the middle pixel
MAD = torch.tensor([0.019, 0.0076, 0.011, 0.018, 0.078])


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gaussian_source(b: int = 2, sigma: float = 3.0, dtype=torch.float32) -> torch.Tensor:
    yy, xx = torch.meshgrid(
        torch.arange(SIZE, dtype=dtype), torch.arange(SIZE, dtype=dtype), indexing="ij"
    )
    blob = torch.exp(-((xx - CENTRE) ** 2 + (yy - CENTRE) ** 2) / (2 * sigma**2))
    return blob.expand(b, 5, SIZE, SIZE) * torch.arange(1, 6, dtype=dtype)[None, :, None, None]


def random_batch(b: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand((b, 5, SIZE, SIZE), generator=gen(seed)) + 0.5  # no zeros anywhere


# --- reddening ---------------------------------------------------------------------------------


def test_redden_matches_sf11_coefficients():
    x = torch.ones(2, 5, 4, 4)
    ebv = torch.tensor([0.0, 0.2])
    y = redden(x, ebv)
    assert torch.allclose(y[0], x[0])
    expected = torch.tensor(10 ** (-0.4 * SF11_VECTOR * 0.2), dtype=torch.float32)
    assert torch.allclose(y[1, :, 0, 0], expected)
    assert (y[1, 0] < y[1, 4]).all()  # u is dimmed most, z least


def test_redden_then_deredden_is_identity():
    x = random_batch()
    ebv = torch.tensor([0.05, 0.3, 0.5])
    assert torch.allclose(deredden(redden(x, ebv), ebv), x, rtol=1e-6)


def test_random_reddening_range_and_reproducibility():
    x = torch.ones(500, 5, 2, 2)
    y = random_reddening(x, gen(1), max_ebv=0.5)
    # Recover E(B-V) from the u band: A_u = R_u E(B-V).
    ebv = -2.5 * torch.log10(y[:, 0, 0, 0]) / SF11_VECTOR[0]
    assert ebv.min() >= 0 and ebv.max() <= 0.5 + 1e-5
    assert abs(ebv.mean().item() - 0.25) < 0.03
    assert torch.equal(y, random_reddening(x, gen(1)))
    assert not torch.equal(y, random_reddening(x, gen(2)))


# --- rotation ----------------------------------------------------------------------------------


def test_rotation_preserves_flux_of_a_centred_source():
    x = gaussian_source(b=4)
    angles = torch.tensor([0.3, 1.0, 2.5, 4.0])
    y = rotate(x, angles)
    ratio = y.sum(dim=(-2, -1)) / x.sum(dim=(-2, -1))
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=0.01)


def test_rotation_direction_is_counter_clockwise_with_y_up():
    # A dot 10 px to +x (right) of the centre; +90 deg turns it to +y (up, i.e. a higher row index
    # when displayed with origin="lower"), -90 deg to -y.
    x = torch.zeros(2, 5, SIZE, SIZE)
    x[:, :, CENTRE, CENTRE + 10] = 1.0
    y = rotate(x, torch.tensor([math.pi / 2, -math.pi / 2]))
    for b, row in ((0, CENTRE + 10), (1, CENTRE - 10)):
        peak = torch.nonzero(y[b, 0] == y[b, 0].max())
        assert peak.tolist() == [[row, CENTRE]]
        assert y[b, 0, row, CENTRE] > 0.99


def test_rotation_by_zero_is_identity():
    x = random_batch().double()
    assert (rotate(x, torch.zeros(3)) - x).abs().max() < 1e-6
    # float32: grid_sample's coordinate arithmetic costs a few 1e-6 of a pixel.
    x32 = random_batch()
    assert (rotate(x32, torch.zeros(3)) - x32).abs().max() < 2e-5


def test_four_quarter_turns_return_the_original():
    x = random_batch()
    y = x
    for _ in range(4):
        y = rotate(y, torch.full((3,), math.pi / 2))
    assert torch.allclose(y, x, atol=1e-3)


def test_rotation_of_a_rectangle_does_not_shear():
    x = torch.zeros(1, 5, 21, 41)
    x[:, :, 10, 25] = 1.0  # 5 px right of the centre (10, 20)
    y = rotate(x, torch.tensor([math.pi / 2]))
    assert torch.nonzero(y[0, 0] > 0.99).tolist() == [[15, 20]]


def test_random_rotation_reproducible_and_shapes():
    x = random_batch()
    y = random_rotation(x, gen(3))
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert torch.equal(y, random_rotation(x, gen(3)))
    assert not torch.equal(y, random_rotation(x, gen(4)))


# --- crops -------------------------------------------------------------------------------------


def test_center_crop_takes_the_middle():
    x = random_batch()
    y = center_crop(x, 64)
    assert y.shape == (3, 5, 64, 64)
    # The middle pixel (53, 53) lands at (32, 32): 53 - 64 // 2 = 21 rows/columns dropped.
    assert torch.equal(y[:, :, 32, 32], x[:, :, CENTRE, CENTRE])
    assert torch.equal(EvalTransform(64)(x), y)


def test_jitter_crop_moves_the_window():
    x = random_batch()
    shifts = torch.tensor([[0, 0], [7, -7], [-3, 5]])
    y = jitter_crop(x, shifts, 64)
    assert y.shape == (3, 5, 64, 64)
    for b, (dr, dc) in enumerate(shifts.tolist()):
        top, left = 21 + dr, 21 + dc
        assert torch.equal(y[b], x[b, :, top : top + 64, left : left + 64])


def test_jitter_crop_refuses_to_leave_the_image():
    assert jitter_crop(random_batch(1), torch.tensor([[22, 0]]), 64).shape[-1] == 64  # fits
    with pytest.raises(ValueError, match="leaves"):
        jitter_crop(random_batch(1), torch.tensor([[23, 0]]), 64)


def test_random_jitter_stays_inside_and_covers_the_range():
    # Pixel values code their own position, so a crop tells where it came from; no zero (padding)
    # can enter because every image pixel is >= 1.
    b = 400
    pos = torch.arange(SIZE * SIZE, dtype=torch.float32).reshape(SIZE, SIZE) + 1
    x = pos.expand(b, 5, SIZE, SIZE)
    y = random_jitter_crop(x, gen(5), max_shift=7, size=64)
    assert y.shape == (b, 5, 64, 64)
    assert (y > 0).all()
    top_left = y[:, 0, 0, 0].long() - 1
    rows, cols = top_left // SIZE - 21, top_left % SIZE - 21
    assert rows.min() == -7 and rows.max() == 7
    assert cols.min() == -7 and cols.max() == 7


def test_rotate_crop_equals_rotate_then_crop():
    x = random_batch()
    angles = torch.tensor([0.1, 2.0, 5.5])
    shifts = torch.tensor([[7, 7], [-7, 3], [0, -5]])
    fused = rotate_crop(x, angles, shifts, 64)
    assert torch.allclose(fused, jitter_crop(rotate(x, angles), shifts, 64), atol=1e-6)


def test_rotated_jittered_crop_has_no_blank_corners():
    # At 45 deg and a 7 px jitter the crop corner is 55 px from the centre, outside the 107 px
    # cut-out: reflection padding fills it with sky instead of zeros.
    x = random_batch(2)
    angles = torch.full((2,), math.pi / 4)
    shifts = torch.tensor([[-7, -7], [7, 7]])
    assert (rotate_crop(x, angles, shifts, 64) > 0.4).all()
    zero_padded = rotate_crop(x, angles, shifts, 64, padding_mode="zeros")
    assert (zero_padded == 0).any()  # the case the reflection default exists for


# --- noise -------------------------------------------------------------------------------------


def test_noise_sigma_is_uniform_1_to_3_times_mad():
    x = torch.zeros(200, 5, 128, 128)
    y = gaussian_noise(x, MAD, gen(6))
    ratio = y.std(dim=(-2, -1)) / MAD  # (B, 5): each should be one draw of U(1, 3)
    # A 128 x 128 sample estimates sigma to 0.55 %: the extremes of 1,000 draws stay within 2 %.
    assert ratio.min() > 0.98 and ratio.max() < 3.06
    assert abs(ratio.mean().item() - 2.0) < 0.07  # 4 standard errors of a 1,000-draw mean
    # U(1, 3) has standard deviation 2 / sqrt(12) = 0.577.
    assert abs(ratio.std().item() - 2 / math.sqrt(12)) < 0.03
    assert abs(y.mean().item()) < 1e-4  # zero-mean noise (sigma ~ 0.03, 8e7 pixels)
    assert torch.equal(y, gaussian_noise(x, MAD, gen(6)))


def test_noise_rejects_wrong_mad_shape():
    with pytest.raises(ValueError, match="mad"):
        gaussian_noise(torch.zeros(1, 5, 4, 4), torch.ones(4), gen())


# --- pipelines ---------------------------------------------------------------------------------


def test_moco_views_shapes_independence_and_reproducibility():
    x = random_batch(4) * 0.1
    views = MocoViews(MAD)
    v1, v2 = views(x, gen(7))
    assert v1.shape == v2.shape == (4, 5, 64, 64)
    assert v1.dtype == torch.float32 and v1.device == x.device
    assert not torch.allclose(v1, v2)
    w1, w2 = views(x, gen(7))
    assert torch.equal(v1, w1) and torch.equal(v2, w2)
    assert np.isfinite(v1.numpy()).all()


def test_moco_views_float64_batch_stays_float64():
    v1, _ = MocoViews(MAD)(random_batch(2).double(), gen())
    assert v1.dtype == torch.float64


def test_moco_views_refuses_a_crop_that_cannot_fit():
    with pytest.raises(ValueError, match="leaves"):
        MocoViews(MAD, max_shift=30)(random_batch(1), gen())


def test_finetune_augment_preserves_flux_of_centred_source():
    x = gaussian_source(b=8, sigma=2.0)
    y = FinetuneAugment()(x, gen(8))
    assert y.shape == (8, 5, 64, 64)
    ratio = y.sum(dim=(-2, -1)) / x.sum(dim=(-2, -1))
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=0.01)


def test_wrong_shapes_are_rejected():
    with pytest.raises(ValueError, match="batch"):
        rotate(torch.zeros(5, SIZE, SIZE), torch.zeros(1))
    with pytest.raises(ValueError, match="one value per image"):
        redden(torch.zeros(2, 5, 4, 4), torch.zeros(3))


def test_module_imports_nothing_from_the_data_half():
    # Of the data half, training reads the store's reader only: an edit of how cut-outs are
    # made must not count in the training code's digest.
    from conftest import data_half_reached

    assert not data_half_reached(augment.__name__)
