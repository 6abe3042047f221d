"""Gaia DR3 astrometric precision, correlations and proper motions of moving stars (pure NumPy)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from gaia_distances.core.kinematics import A_V, sky_basis

__all__ = [
    "MAX_TANGENTIAL_SPEED_KMS",
    "PM_ERROR_FACTORS_DR3",
    "ProperMotion",
    "correlated_astrometric_noise",
    "least_tangential_speed",
    "parallax_error_dr3",
    "proper_motion_error_dr3",
    "proper_motion_from_velocity",
]

#: The fastest tangential speed (km/s) a star's proper motion may imply: well above the Galactic
#: escape speed (about 550 km/s near the Sun) plus the Sun's own motion (about 250 km/s), and above
#: the fastest known hypervelocity stars (about 1 700 km/s in 3-D).
MAX_TANGENTIAL_SPEED_KMS = 2000.0


def parallax_error_dr3(g_mag: np.ndarray | float) -> np.ndarray:
    """Typical Gaia DR3 parallax standard error (mas) at magnitude G.

    ``sigma = sqrt(40 + 800 z + 30 z^2)`` uas with ``z = 10^(0.4 (max(G, 13) - 15))``
    (the Gaia science-performance form), which gives about 0.013 mas at G < 13,
    0.03 at G = 15, 0.08 at G = 17, 0.6 at G = 20 and 1.4 mas at G = 21, as in
    Lindegren et al. (2021).

    Examples
    --------
    >>> round(float(parallax_error_dr3(15.0)), 4)
    0.0295
    """
    z = 10 ** (0.4 * (np.maximum(np.asarray(g_mag, float), 13.0) - 15.0))
    return np.sqrt(40.0 + 800.0 * z + 30.0 * z * z) / 1000.0


#: Sky-averaged ratios of the proper-motion standard errors (mas/yr) to the parallax standard
#: error (mas) for the 34-month Gaia (E)DR3 baseline: ``(pmra, pmdec)``.
PM_ERROR_FACTORS_DR3 = (1.03, 0.89)


class ProperMotion(NamedTuple):
    """A pair of proper-motion components (or their standard errors), mas/yr."""

    pmra: np.ndarray  # mu_alpha* = mu_alpha cos(delta)
    pmdec: np.ndarray


def proper_motion_error_dr3(g_mag: np.ndarray | float) -> ProperMotion:
    """Typical Gaia DR3 proper-motion standard errors (mas/yr) at magnitude G.

    :func:`parallax_error_dr3` times the sky-averaged factors
    :data:`PM_ERROR_FACTORS_DR3` (1.03 in pmra, 0.89 in pmdec) of the Gaia EDR3
    science-performance model. This reproduces the Gaia EDR3/DR3 summary (Gaia
    Collaboration, Brown et al. 2021; Lindegren et al. 2021): about 0.02-0.03
    mas/yr at G < 15, 0.07 at G = 17, 0.5 at G = 20 and 1.4 mas/yr at G = 21.

    Examples
    --------
    >>> pm = proper_motion_error_dr3(17.0)
    >>> round(float(pm.pmra), 3), round(float(pm.pmdec), 3)
    (0.082, 0.071)
    """
    s = parallax_error_dr3(g_mag)
    return ProperMotion(PM_ERROR_FACTORS_DR3[0] * s, PM_ERROR_FACTORS_DR3[1] * s)


def correlated_astrometric_noise(z: np.ndarray, sigma: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """Gaussian noise in (parallax, pmra, pmdec) with standard errors ``sigma`` and correlations ``rho``.

    ``z`` holds ``(..., 3)`` independent standard normal draws, ``sigma`` the
    ``(..., 3)`` standard errors and ``rho`` the ``(..., 3)`` correlations of
    :func:`correlation_matrices`. The noise is ``sigma * (L z)`` with ``L`` the
    lower Cholesky factor of the correlation matrix, so its first component is
    exactly ``sigma[..., 0] * z[..., 0]``: adding proper motions does not change
    the parallax noise drawn from the same ``z[..., 0]``.

    Examples
    --------
    >>> z = np.random.default_rng(0).standard_normal((200_000, 3))
    >>> e = correlated_astrometric_noise(z, np.array([1.0, 2.0, 3.0]), np.array([0.3, -0.2, 0.5]))
    >>> np.round(np.corrcoef(e.T)[[0, 0, 1], [1, 2, 2]], 2).tolist()
    [0.3, -0.2, 0.5]
    """
    z, sigma, rho = (np.asarray(a, float) for a in (z, sigma, rho))
    r01, r02, r12 = rho[..., 0], rho[..., 1], rho[..., 2]
    l11 = np.sqrt(1.0 - r01**2)
    l21 = (r12 - r02 * r01) / l11
    l22 = np.sqrt(np.maximum(1.0 - r02**2 - l21**2, 0.0))
    z0, z1, z2 = z[..., 0], z[..., 1], z[..., 2]
    unit = np.stack([z0, r01 * z0 + l11 * z1, r02 * z0 + l21 * z1 + l22 * z2], axis=-1)
    return sigma * unit


def proper_motion_from_velocity(
    ra_deg: np.ndarray | float,
    dec_deg: np.ndarray | float,
    parallax_mas: np.ndarray | float,
    velocity_kms: np.ndarray,
) -> ProperMotion:
    """Proper motion (mas/yr) of a star moving with a barycentric ICRS Cartesian velocity.

    ``mu_alpha* = parallax (p . v) / A_V`` and ``mu_delta = parallax (q . v) / A_V``
    with ``p = (-sin a, cos a, 0)``, ``q = (-sin d cos a, -sin d sin a, cos d)``
    the unit vectors towards increasing RA and Dec and
    :data:`~gaia_distances.core.kinematics.A_V` = 4.7405 km/s per (au/yr);
    ``velocity_kms`` is ``(..., 3)``.

    Examples
    --------
    >>> pm = proper_motion_from_velocity(132.846, 11.814, 1000 / 850.0, np.array([8.13, 56.24, -4.63]))
    >>> round(float(pm.pmra), 2), round(float(pm.pmdec), 2)
    (-10.97, -2.94)
    """
    p, q, _ = sky_basis(ra_deg, dec_deg)
    v = np.asarray(velocity_kms, float)
    k = np.asarray(parallax_mas, float) / A_V
    return ProperMotion(k * np.sum(p * v, axis=-1), k * np.sum(q * v, axis=-1))


def least_tangential_speed(
    pmra: np.ndarray, pmdec: np.ndarray, parallax: np.ndarray, parallax_error: np.ndarray
) -> np.ndarray:
    """The smallest tangential speed (km/s) a star's proper motion implies at any plausible distance.

    ``A_V |mu| / w_max`` with ``w_max = max(w, 0) + 3 sigma_w``, the largest
    parallax (nearest distance) within three standard errors of the
    measurement (from 0 for a negative one): a star nearer than that is
    already ruled out by its parallax. Barnard's star (10 400 mas/yr at
    548 mas) gives 90 km/s; 10^6 mas/yr at 1 +- 0.1 mas gives millions. Any
    input non-finite gives NaN.

    Examples
    --------
    >>> least_tangential_speed(np.array([10_400.0]), np.zeros(1), np.array([548.0]), np.array([0.05])).round()
    array([90.])
    """
    mu = np.hypot(np.asarray(pmra, float), np.asarray(pmdec, float))
    w, s = np.asarray(parallax, float), np.asarray(parallax_error, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return A_V * mu / (np.maximum(w, 0.0) + 3.0 * s)
