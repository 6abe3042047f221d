"""The field of Gaia parallax offsets as a Gaussian random field: PSD factorisation, leading modes, draws.

A field's stars share correlated systematics with covariance ``K_ij = V(theta_ij)``
(:mod:`gaia_distances.core.systematics`). This module factorises ``K``:
:func:`clip_to_psd` makes it positive semi-definite (the Maiz Apellaniz et al.
2021 kernel is not), :func:`leading_modes` gives its leading eigenmodes (one
latent offset per mode in a model) and :func:`draw_offset_field` draws
realisations for simulations. Pure NumPy.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from gaia_distances.core.systematics import (
    Component,
    KernelFunction,
    SystematicsKernel,
    angular_separation,
    covariance_matrix,
    get_kernel,
    pair_covariance,
    star_scales,
)

__all__ = ["PSDClip", "SystematicModes", "clip_to_psd", "draw_offset_field", "leading_modes"]


class PSDClip(NamedTuple):
    """A symmetric matrix with its negative eigenvalues set to zero.

    Attributes
    ----------
    matrix
        The clipped matrix.
    factor
        ``A`` with ``matrix = A @ A.T`` (eigenvectors times the root of the clipped eigenvalues).
    eigenvalues
        The eigenvalues before clipping, ascending.
    clipped_fraction
        Sum of the absolute negative eigenvalues over the trace.
    """

    matrix: np.ndarray
    factor: np.ndarray
    eigenvalues: np.ndarray
    clipped_fraction: float


def clip_to_psd(matrix: np.ndarray) -> PSDClip:
    """The nearest positive semi-definite matrix in the Frobenius norm: negative eigenvalues set to 0.

    Needed for the Maiz Apellaniz et al. (2021) kernel and for user kernels;
    harmless for the others (it removes rounding noise only).

    Examples
    --------
    >>> c = clip_to_psd(np.array([[1.0, 2.0], [2.0, 1.0]]))
    >>> c.eigenvalues.round(6).tolist(), c.matrix.round(6).tolist()
    ([-1.0, 3.0], [[1.5, 1.5], [1.5, 1.5]])
    """
    sym = 0.5 * (np.asarray(matrix, dtype=float) + np.asarray(matrix, dtype=float).T)
    lam, vec = np.linalg.eigh(sym)
    kept = np.clip(lam, 0.0, None)
    factor = vec * np.sqrt(kept)
    trace = float(np.trace(sym))
    clipped = float(-lam[lam < 0].sum() / trace) if trace > 0 else 0.0
    return PSDClip(factor @ factor.T, factor, lam, clipped)


class SystematicModes(NamedTuple):
    """The leading modes of a field's systematics covariance ``K ~ L diag(variances) L^T``.

    Attributes
    ----------
    loadings
        (N, n_modes) per-star loadings, with unit mean square over the stars
        (NaN for stars with no position); mode 0 is nearly constant and its
        mean loading is positive.
    variances
        (n_modes,) variance of each mode's amplitude (mas^2): star ``i`` gets
        ``sum_k loadings[i, k] z_k`` with ``z_k ~ Normal(0, variances[k])``.
    total_variance
        Mean per-star systematic variance (mas^2), ``trace(K) / N``.
    clipped_fraction
        Fraction of the trace removed by clipping negative eigenvalues.
    n_points
        Number of stars the decomposition used (a subsample above ``max_points``).
    """

    loadings: np.ndarray
    variances: np.ndarray
    total_variance: float
    clipped_fraction: float
    n_points: int

    @property
    def fractions(self) -> np.ndarray:
        """Fraction of the total systematic variance in each mode."""
        return self.variances / self.total_variance


def leading_modes(
    ra: np.ndarray,
    dec: np.ndarray,
    kernel: str | KernelFunction | SystematicsKernel,
    n_modes: int = 1,
    *,
    g: np.ndarray | None = None,
    component: Component = "parallax",
    max_points: int = 2000,
    seed: int = 0,
) -> SystematicModes:
    """Leading eigenmodes of the field's pair matrix ``K_ij = V(theta_ij)`` (diagonal ``V(0)``).

    Up to ``max_points`` stars (with positions), ``K`` is decomposed exactly.
    Above it, a seeded random subsample of ``max_points`` stars is decomposed
    and the modes are extended to every star by the Nystrom formula
    ``u_i = K_{i,m} U_m / lambda_m``. Negative eigenvalues (Maiz Apellaniz et
    al. 2021, user kernels) are clipped to zero first; the clipped share of the
    trace is returned.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> ra, dec = 100 + rng.uniform(-0.5, 0.5, 300), rng.uniform(-0.5, 0.5, 300)
    >>> modes = leading_modes(ra, dec, "lindegren2021", 2)
    >>> bool(modes.fractions[0] > 0.9), modes.loadings.shape
    (True, (300, 2))
    """
    if int(n_modes) < 1:
        raise ValueError(f"leading_modes: n_modes must be >= 1, got {n_modes!r}")
    k = get_kernel(kernel)
    ra, dec = np.asarray(ra, dtype=float).ravel(), np.asarray(dec, dtype=float).ravel()
    s_all = star_scales(k, g, ra.size, component)
    good = np.flatnonzero(np.isfinite(ra) & np.isfinite(dec))
    if good.size == 0:
        raise ValueError("leading_modes: no star has a finite ra and dec")
    sub = good if good.size <= max_points else np.sort(np.random.default_rng(seed).choice(good, max_points, False))
    m = sub.size
    scales = None if s_all is None else (s_all[sub, None], s_all[None, sub])
    kmm = pair_covariance(k, ra[sub, None], dec[sub, None], ra[sub], dec[sub], scales=scales, component=component)
    clip = clip_to_psd(kmm)
    lam, vec = np.clip(clip.eigenvalues[::-1], 0.0, None), clip.factor[:, ::-1]
    n_modes = min(int(n_modes), m)
    lam, vec = lam[:n_modes], vec[:, :n_modes] / np.where(lam[:n_modes] > 0, np.sqrt(lam[:n_modes]), 1.0)
    loadings = np.full((ra.size, n_modes), np.nan)
    if sub.size == good.size:
        loadings[good] = vec * np.sqrt(m)
    else:
        inv = np.where(lam > 0, 1.0 / np.where(lam > 0, lam, 1.0), 0.0)
        block = max(1, 4_000_000 // m)
        for start in range(0, good.size, block):
            rows = good[start : start + block]
            scales = None if s_all is None else (s_all[rows, None], s_all[None, sub])
            kn = pair_covariance(
                k, ra[rows, None], dec[rows, None], ra[sub], dec[sub], scales=scales, component=component
            )
            loadings[rows] = (kn @ vec) * inv * np.sqrt(m)
    sign = np.where(np.nanmean(loadings, axis=0) < 0, -1.0, 1.0)
    return SystematicModes(loadings * sign, lam / m, float(np.trace(kmm)) / m, clip.clipped_fraction, m)


def _gnomonic(ra: np.ndarray, dec: np.ndarray, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Tangent-plane coordinates (deg) about (ra0, dec0)."""
    a, d, a0, d0 = np.radians(ra), np.radians(dec), np.radians(ra0), np.radians(dec0)
    cosc = np.sin(d0) * np.sin(d) + np.cos(d0) * np.cos(d) * np.cos(a - a0)
    x = np.cos(d) * np.sin(a - a0) / cosc
    y = (np.cos(d0) * np.sin(d) - np.sin(d0) * np.cos(d) * np.cos(a - a0)) / cosc
    return np.degrees(x), np.degrees(y)


def _inverse_gnomonic(x: np.ndarray, y: np.ndarray, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    xr, yr, d0 = np.radians(x), np.radians(y), np.radians(dec0)
    rho = np.hypot(xr, yr)
    c = np.arctan(rho)
    safe = np.where(rho > 0, rho, 1.0)
    dec = np.arcsin(np.cos(c) * np.sin(d0) + np.where(rho > 0, yr * np.sin(c) * np.cos(d0) / safe, 0.0))
    ra = ra0 + np.degrees(np.arctan2(xr * np.sin(c), rho * np.cos(d0) * np.cos(c) - yr * np.sin(d0) * np.sin(c)))
    return np.mod(ra, 360.0), np.degrees(dec)


def draw_offset_field(
    ra: np.ndarray,
    dec: np.ndarray,
    kernel: str | KernelFunction | SystematicsKernel,
    rng: np.random.Generator,
    *,
    component: Component = "parallax",
    n_draws: int | None = None,
    max_direct: int = 1000,
    grid_side: int = 32,
) -> np.ndarray:
    """Draw correlated offsets (mas) at (ra, dec) [deg] from a Gaussian field with covariance ``V(theta)``.

    Up to ``max_direct`` stars the draw is exact: the stars' pair matrix is
    factorised (negative eigenvalues clipped, :func:`clip_to_psd`). Above it,
    the field is drawn exactly on a square grid of at most ``grid_side`` nodes
    a side covering the stars (in the tangent plane about their mean position,
    distances on the sphere) and bilinearly interpolated to the stars; each
    star then gets an independent Gaussian term that restores its variance
    ``V(0)``, so every star's variance is exact and pairs in different grid
    cells keep the kernel's covariance up to interpolation. The magnitude
    scaling of Vasiliev & Baumgardt (2021) is not applied (the field is
    stationary). Stars with NaN positions get NaN.

    Parameters
    ----------
    rng
        The generator drawn from (``n_nodes`` then ``N`` standard normals per draw).
    n_draws
        ``None`` for one (N,) field, else an (n_draws, N) array of independent fields.

    Examples
    --------
    >>> d = draw_offset_field([10.0, 10.1], [5.0, 5.0], "lindegren2021", np.random.default_rng(1))
    >>> d.shape
    (2,)
    """
    k = get_kernel(kernel)
    fn = k.function(component)
    ra, dec = np.asarray(ra, dtype=float).ravel(), np.asarray(dec, dtype=float).ravel()
    good = np.flatnonzero(np.isfinite(ra) & np.isfinite(dec))
    size = 1 if n_draws is None else int(n_draws)
    out = np.full((size, ra.size), np.nan)
    v0 = float(fn(np.zeros(1))[0])
    if good.size:
        if good.size <= max_direct:
            clip = clip_to_psd(covariance_matrix(ra[good], dec[good], k, component=component))
            field = rng.standard_normal((size, good.size)) @ clip.factor.T
            rest = np.clip(v0 - np.einsum("ij,ij->i", clip.factor, clip.factor), 0.0, None)
        else:
            field, rest = _grid_field(ra[good], dec[good], fn, v0, rng, size, grid_side)
        out[:, good] = field + np.sqrt(rest) * rng.standard_normal((size, good.size))
    return out[0] if n_draws is None else out


def _grid_field(
    ra: np.ndarray, dec: np.ndarray, fn: KernelFunction, v0: float, rng: np.random.Generator, size: int, side: int
) -> tuple[np.ndarray, np.ndarray]:
    """Field bilinearly interpolated from a grid draw, and each star's variance still missing."""
    vec = np.stack([np.cos(np.radians(dec)) * np.cos(np.radians(ra)), np.cos(np.radians(dec)) * np.sin(np.radians(ra))])
    mean = np.append(vec.mean(axis=1), np.sin(np.radians(dec)).mean())
    ra0 = float(np.degrees(np.arctan2(mean[1], mean[0])))
    dec0 = float(np.degrees(np.arctan2(mean[2], np.hypot(mean[0], mean[1]))))
    if float(angular_separation(ra, dec, ra0, dec0).max()) > 60.0:
        raise ValueError("draw_offset_field: stars lie more than 60 deg from their mean position; use max_direct")
    x, y = _gnomonic(ra, dec, ra0, dec0)
    lo = np.array([x.min(), y.min()])
    width = np.array([x.max(), y.max()]) - lo
    h = max(float(width.max()), 1e-6) / (max(int(side), 2) - 1)
    nx, ny = np.maximum(np.ceil(width / h - 1e-9).astype(int) + 1, 2).tolist()
    gx, gy = np.meshgrid(lo[0] + h * np.arange(nx), lo[1] + h * np.arange(ny), indexing="ij")
    gra, gdec = _inverse_gnomonic(gx.ravel(), gy.ravel(), ra0, dec0)
    grid = clip_to_psd(fn(angular_separation(gra[:, None], gdec[:, None], gra[None, :], gdec[None, :])))
    nodes = rng.standard_normal((size, gra.size)) @ grid.factor.T
    fx, fy = (x - lo[0]) / h, (y - lo[1]) / h
    ix, iy = np.clip(np.floor(fx).astype(int), 0, nx - 2), np.clip(np.floor(fy).astype(int), 0, ny - 2)
    tx, ty = fx - ix, fy - iy
    corners = np.stack([ix * ny + iy, (ix + 1) * ny + iy, ix * ny + iy + 1, (ix + 1) * ny + iy + 1], axis=1)
    weights = np.stack([(1 - tx) * (1 - ty), tx * (1 - ty), (1 - tx) * ty, tx * ty], axis=1)
    field = np.einsum("nc,snc->sn", weights, nodes[:, corners])
    sub = grid.matrix[corners[:, :, None], corners[:, None, :]]
    return field, np.clip(v0 - np.einsum("nc,ncd,nd->n", weights, sub, weights), 0.0, None)
