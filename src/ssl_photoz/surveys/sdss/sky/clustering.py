"""Clustered galaxy positions: a multi-scale Neyman-Scott process in comoving space.

A fraction ``CLUSTERED_FRACTION`` of all galaxies (at every luminosity and colour) lives in
structures with a Gaussian comoving profile of radius R (one per axis); the rest is the uniform
field of ``population``. Structures of radius R_k (log-spaced, 0.12-15 Mpc) hold equal fractions
of the galaxies, and their space density n_k is set so that the sum of their one-structure terms,
xi(r) = sum_k f_k^2 / n_k * (4 pi R_k^2)^-3/2 exp(-r^2 / 4 R_k^2), is the power law
(r / r0)^-gamma between the smallest and the largest radius. Because every galaxy independently
belongs to a structure, the flux limit thins members and field alike: the luminosity function
and n(z) are those of the unclustered sky in expectation, and the real-space correlation
function of any flux-limited sample is the same power law.

The small structures are groups: their members share the group's redshift to within a velocity
dispersion that grows with the group's radius (virial scaling, sigma ~ R), so a galaxy's
neighbours on the sky often share its redshift. The larger ones stand in for the filaments and
superclusters of the two-halo term (no velocity dispersion).

Structure centres are a Poisson process in cells of a fixed spherical grid, each cell's
centres drawn from a hash of (sky seed, scale, cell): every box of sky (a run, a field) sees the
same centres, so structures continue across run boundaries. Members are Poisson draws inside
the asked box, from the box's own random stream: members of one structure in disjoint boxes are
independent Poisson processes, so this is the same process as drawing each structure once.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.special import gamma as gamma_fn
from scipy.special import ndtri

# Zehavi et al. (2005), SDSS Main Galaxy Sample, real-space xi(r) = (r / r0)^-gamma: r0 about
# 5-6 h^-1 Mpc and gamma about 1.8 for L* galaxies (taken from the issue, not re-read in the
# paper); 5.5 h^-1 Mpc is 7.86 Mpc at h = 0.7.
R0_MPC = 5.5 / 0.7
GAMMA = 1.8
CLUSTERED_FRACTION = 0.8
RADII_MPC = 0.12 * 2.0 ** np.arange(8)  # comoving Gaussian radius per axis, h = 0.7
# Virial scaling sigma_v ~ R at fixed overdensity: about 300 km/s for a 0.3 Mpc group, capped at
# rich-cluster values; the larger, unvirialised structures get none.
SIGMA_V_PER_MPC = 1000.0  # km/s per Mpc of radius
SIGMA_V_MAX = 1000.0
VIRIAL_RADIUS_MAX = 1.0  # Mpc: structures up to this radius are groups with a dispersion
TRUNCATE = 3.0  # members beyond 3 R (per axis) are not drawn
SHELL_MPC = 40.0  # radial width and transverse size of the centre cells
C_KMS = 299792.458
_SALT = 0x5EED_C1A5


def structure_densities() -> tuple[np.ndarray, np.ndarray]:
    """(fraction of galaxies f_k, centre density n_k in Mpc^-3) per radius of ``RADII_MPC``."""
    k = len(RADII_MPC)
    f = np.full(k, CLUSTERED_FRACTION / k)
    # Projected power law w_p = A r_p^(1-gamma) written as a sum of Gaussians in r_p on a log grid.
    h = np.sqrt(np.pi) * gamma_fn((GAMMA - 1) / 2) / gamma_fn(GAMMA / 2)
    amp = R0_MPC**GAMMA * h
    c = 2.0 * amp * 2.0 ** (1 - GAMMA) / gamma_fn((GAMMA - 1) / 2) * np.log(2.0)
    f2_over_n = 4 * np.pi * RADII_MPC**2 * c * RADII_MPC ** (1 - GAMMA)
    return f, f**2 / f2_over_n


def velocity_dispersion_kms(radius_mpc) -> np.ndarray:
    r = np.asarray(radius_mpc, dtype=float)
    return np.where(r <= VIRIAL_RADIUS_MAX, np.minimum(SIGMA_V_PER_MPC * r, SIGMA_V_MAX), 0.0)


@lru_cache(maxsize=1)
def _comoving():
    from astropy.cosmology import FlatLambdaCDM

    z = np.linspace(0.0, 1.6, 3201)
    return z, FlatLambdaCDM(H0=70.0, Om0=0.3).comoving_distance(z).value


def comoving_distance(z) -> np.ndarray:
    zg, dg = _comoving()
    return np.interp(z, zg, dg)


def redshift_of_distance(d) -> np.ndarray:
    zg, dg = _comoving()
    return np.interp(d, dg, zg)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a stateless hash of uint64 values (wraps by design)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _hash(*keys) -> np.ndarray:
    h = np.zeros(np.broadcast(*keys).shape, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for key in keys:
            h = _mix(h ^ np.asarray(key).astype(np.uint64))
    return h


def _uniform(h: np.ndarray) -> np.ndarray:
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def _poisson_quantile(u: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Poisson counts as the u-quantile (a deterministic draw from a hashed uniform): the CDF
    summed term by term where lam is small, a continuity-corrected normal where it is large."""
    big = lam > 50.0
    out = np.where(big, np.maximum(np.round(lam + np.sqrt(lam) * ndtri(u)), 0), 0).astype(np.int64)
    small = np.nonzero(~big)[0]
    u, lam = u[small], lam[small]
    term = np.exp(-lam)
    cdf = term.copy()
    k = np.zeros(len(small), dtype=np.int64)
    for n in range(1, 200):
        more = u > cdf
        if not more.any():
            break
        k += more
        term = term * lam / n
        cdf = cdf + term
    out[small] = k
    return out


def _cells(shell: int, box, margin_rad: float):
    """(ra index, dec index, step in rad) of the cells of one shell that may hold centres whose
    structures reach the box."""
    d_out = (shell + 1) * SHELL_MPC
    n_ra = max(int(2 * np.pi * d_out / SHELL_MPC), 4)
    step = 2 * np.pi / n_ra
    (ra0, ra1), (dec0, dec1) = (np.radians(v) for v in box)
    cos_dec = max(np.cos(max(abs(dec0), abs(dec1)) + margin_rad), 1e-3)
    span = margin_rad / cos_dec
    if ra1 - ra0 + 2 * span >= 2 * np.pi:
        i_ra = np.arange(n_ra)
    else:
        i_ra = np.arange(int(np.floor((ra0 - span) / step)), int(np.floor((ra1 + span) / step)) + 1)
    lo = max(int(np.floor((dec0 - margin_rad + np.pi / 2) / step)), 0)
    hi = min(int(np.floor((dec1 + margin_rad + np.pi / 2) / step)), int(np.ceil(np.pi / step)) - 1)
    i_ra, i_dec = np.meshgrid(i_ra, np.arange(lo, hi + 1), indexing="ij")
    return i_ra.ravel(), i_dec.ravel(), step, n_ra


def structure_centres(seed: int, box, d_max: float) -> list[np.ndarray]:
    """Per radius: centres (N, 3) as (ra deg, dec deg, comoving distance Mpc) whose truncated
    structure may reach the (ra, dec) box out to comoving distance ``d_max``."""
    _, n_k = structure_densities()
    out = []
    for k, (radius, density) in enumerate(zip(RADII_MPC, n_k, strict=True)):
        reach = TRUNCATE * radius
        cols = {name: [] for name in ("shell", "i_ra", "i_dec", "n_ra", "step")}
        for shell in range(int(np.ceil((d_max + reach) / SHELL_MPC))):
            d_in = shell * SHELL_MPC
            margin = np.pi if d_in <= reach else float(np.arcsin(reach / d_in))
            i_ra, i_dec, step, n_ra = _cells(shell, box, margin)
            for name, values in zip(cols, (shell, i_ra, i_dec, n_ra, step), strict=True):
                cols[name].append(np.broadcast_to(values, i_ra.shape))
        shell, i_ra, i_dec, n_ra, step = (np.concatenate(v) for v in cols.values())
        d_in, d_out = shell * SHELL_MPC, (shell + 1) * SHELL_MPC
        dec_lo = np.clip(i_dec * step - np.pi / 2, -np.pi / 2, np.pi / 2)
        s_lo, s_hi = np.sin(dec_lo), np.sin(np.clip(dec_lo + step, -np.pi / 2, np.pi / 2))
        volume = step * (s_hi - s_lo) * (d_out**3 - d_in**3) / 3.0
        key = _hash(seed, _SALT, k, shell, np.mod(i_ra, n_ra), i_dec)
        counts = _poisson_quantile(_uniform(key), density * volume)
        cell = np.repeat(np.arange(len(key)), counts)
        j = np.arange(len(cell)) - np.repeat(np.cumsum(counts) - counts, counts)
        u = [_uniform(_hash(key[cell], j, c)) for c in range(3)]
        ra = np.degrees((i_ra[cell] + u[0]) * step[cell])
        dec = np.degrees(np.arcsin(s_lo[cell] + u[1] * (s_hi[cell] - s_lo[cell])))
        dist = np.cbrt(d_in[cell] ** 3 + u[2] * (d_out[cell] ** 3 - d_in[cell] ** 3))
        out.append(_near_box(np.column_stack([ra, dec, dist]), box, reach))
    return out


def _near_box(centres: np.ndarray, box, reach: float) -> np.ndarray:
    (ra0, ra1), (dec0, dec1) = box
    theta = np.degrees(np.arcsin(np.minimum(reach / np.maximum(centres[:, 2], 1e-9), 1.0)))
    cos_dec = np.maximum(np.cos(np.radians(np.abs(centres[:, 1]) + theta)), 1e-3)
    near = (centres[:, 1] > dec0 - theta) & (centres[:, 1] < dec1 + theta)
    near &= (centres[:, 0] > ra0 - theta / cos_dec) & (centres[:, 0] < ra1 + theta / cos_dec)
    return centres[near | (theta >= 89.0)]


def _unit(ra_deg, dec_deg) -> np.ndarray:
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


def member_offsets(rng, centres: np.ndarray, counts: np.ndarray, radius: float):
    """(ra, dec, cosmological z, centre index) of members: Gaussian comoving offsets about the
    centres, truncated at ``TRUNCATE`` radii per axis."""
    idx = np.repeat(np.arange(len(centres)), counts)
    offsets = rng.normal(0.0, radius, size=(len(idx), 3))
    offsets = np.clip(offsets, -TRUNCATE * radius, TRUNCATE * radius)
    xyz = _unit(centres[idx, 0], centres[idx, 1]) * centres[idx, 2][:, None] + offsets
    dist = np.linalg.norm(xyz, axis=1)
    ra = np.degrees(np.arctan2(xyz[:, 1], xyz[:, 0]))
    # Keep the centre's branch of RA (a box may sit on either side of 0/360).
    ra = ra + 360.0 * np.round((centres[idx, 0] - ra) / 360.0)
    dec = np.degrees(np.arcsin(np.clip(xyz[:, 2] / np.maximum(dist, 1e-9), -1.0, 1.0)))
    return ra, dec, redshift_of_distance(dist), idx


def peculiar_redshift(rng, z: np.ndarray, radius: float) -> np.ndarray:
    """Observed redshift: the cosmological one moved by a line-of-sight velocity."""
    sigma = float(velocity_dispersion_kms(radius))
    if sigma == 0.0:
        return z
    return z + (1.0 + z) * rng.normal(0.0, sigma, len(z)) / C_KMS


def draw_members(rng, seed: int, ra_range, dec_range, populations, z_range):
    """Members inside an (ra, dec) box of every structure that reaches it.

    ``populations``: per galaxy population, (zc, m0_limit, cum, m_grid, q): the field draw's
    limit in evolution-corrected absolute magnitude M0 on the redshift grid zc, the cumulative
    luminosity function cum(M0) (Mpc^-3) on m_grid and the evolution M = M0 - q (z - 0.1).
    Returns per population (z, M, ra, dec)."""
    f_k, n_k = structure_densities()
    box = (tuple(ra_range), tuple(dec_range))
    d_max = float(comoving_distance(z_range[1]))
    out = [([], [], [], []) for _ in populations]
    for k, centres in enumerate(structure_centres(seed, box, d_max)):
        radius = RADII_MPC[k]
        dz_v = 3.0 * velocity_dispersion_kms(radius) / C_KMS * 1.3
        z_lo = np.maximum(redshift_of_distance(centres[:, 2] - TRUNCATE * radius) - dz_v, 0.0)
        z_hi = redshift_of_distance(centres[:, 2] + TRUNCATE * radius) + dz_v
        for p, (zc, m0_limit, cum, m_grid, q) in enumerate(populations):
            # The faintest M0 any member can be seen at, wherever in the structure it sits.
            m_lim = np.interp(z_lo, zc, m0_limit) - q * (np.maximum(z_lo, zc[0]) - 0.1)
            thr = m_lim + q * (z_hi - 0.1) + 0.1
            n_thr = np.interp(thr, m_grid, cum)
            counts = rng.poisson(f_k[k] / n_k[k] * n_thr)
            ra, dec, z, idx = member_offsets(rng, centres, counts, radius)
            z = peculiar_redshift(rng, z, radius)
            m0 = np.interp(rng.uniform(0.0, n_thr[idx]), cum, m_grid)
            inside = (ra >= ra_range[0]) & (ra < ra_range[1]) & (dec >= dec_range[0])
            inside &= (dec < dec_range[1]) & (z >= z_range[0]) & (z <= z_range[1])
            for column, values in zip(out[p], (z, m0 - q * (z - 0.1), ra, dec), strict=True):
                column.append(values[inside])
    return [tuple(np.concatenate(c) if c else np.zeros(0) for c in cols) for cols in out]


__all__ = [
    "CLUSTERED_FRACTION",
    "draw_members",
    "comoving_distance",
    "member_offsets",
    "peculiar_redshift",
    "redshift_of_distance",
    "structure_centres",
    "structure_densities",
]
