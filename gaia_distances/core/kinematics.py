"""Proper motions in the cluster model: the per-star observations and each component's likelihood term.

A star's observed ``(w, mu_a*, mu_d)`` has Gaia's full 3x3 covariance. Given
its true parallax ``w_t``, the proper motion's error conditional on the
parallax error ``w - w_t`` is Gaussian with mean ``b (w - w_t)`` and
covariance ``C'`` (:func:`prepare_kinematic_data`), so the proper-motion term
can be evaluated at any distance node and multiplied into the distance
integral: the cost stays ``O(stars x nodes)``.

- **Cluster**: a common mean proper motion ``(mu_a*, mu_d)`` at the cluster's
  distance ``D``, scaled by ``D / r`` at distance ``r`` (one common
  tangential velocity), plus an internal
  velocity dispersion ``sigma_v`` (km/s), which at distance ``r`` is a
  proper-motion dispersion ``sigma_v w_t / A_v`` (``w_t = 1000 pc / r`` in
  mas; :data:`A_V` = 4.7405 converts km/s at 1 kpc to mas/yr);
  :func:`cluster_pm_log_term` at each node of the cluster integral. In a
  wide or near field the one space velocity (with a radial velocity ``v_r``)
  is optionally projected along each star's line of sight instead
  (:func:`perspective_geometry`).
- **Field**: a mixture of ``M`` Gaussians whose means move linearly with the
  true parallax (``a_m + k w_t``: the solar reflex motion scales with ``w_t``,
  differential Galactic rotation is nearly independent of distance for the
  distances in a cone) and whose covariances are a constant ``T_m`` plus a
  velocity dispersion ``sigma_m w_t / A_v``.
  :func:`field_pm_log_term` integrates it over the field's distance posterior
  of each star by a three-point Gauss-Hermite rule on that posterior's first
  two moments in ``w_t``.

Stars without a proper motion (``has_pm = 0``) get a term of 0: a parallax-only
likelihood, the same for every component.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gaia_distances.core.numerics import LOG_SQRT_2PI, Array, gauss_hermite, positive_definite_correlations

__all__ = [
    "A_V",
    "FIELD_PM_NODES",
    "MIN_CORRELATION_EIGENVALUE",
    "KinematicData",
    "Kinematics",
    "centre_frame_proper_motions",
    "cluster_pm_log_term",
    "cluster_pm_mean",
    "cluster_pm_parallax_gaussian",
    "field_centre",
    "field_pm_log_term",
    "field_pm_log_term_at",
    "field_pm_moments",
    "frame_rotation",
    "gaussian2_log_pdf",
    "members_pm_variance",
    "perspective_geometry",
    "prepare_kinematic_data",
    "sky_basis",
    "to_star_frame",
    "usable_proper_motion",
]

#: km/s per (mas/yr x kpc), i.e. 1 au/yr in km/s (IAU 2012 au, Julian year; ``(1 * u.au / u.yr).to(u.km / u.s)``
#: in astropy): a velocity ``v`` at parallax ``w`` (mas) is ``v w / A_V`` mas/yr. The package's only copy.
A_V = 4.740470463533348
#: The smallest eigenvalue a star's (parallax, pmra, pmdec) correlation matrix is given (Gaia's own are
#: positive definite up to rounding; this repairs rounding and corrupted rows, moving them least).
MIN_CORRELATION_EIGENVALUE = 1e-3


class KinematicData(NamedTuple):
    """Per-star proper motions and their covariance conditional on the parallax (mas/yr, mas)."""

    pm: Array  # (n, 2) observed (pmra, pmdec); 0 where missing
    cond_cov: Array  # (n, 3): (c11, c12, c22) of C' = C_mm - C_mw C_wm / C_ww
    slope: Array  # (n, 2): b = C_mw / C_ww, the pm error per unit parallax error
    has_pm: Array  # (n,) 1.0 where the star has a proper motion, else 0.0
    cond_det: Array  # (n,) det C' = c11 c22 - c12^2, computed in float64 (it can cancel in float32)
    geometry: Array | None = None  # (n, 6): the perspective projection (see perspective_geometry), or None
    # (n, 2): (cos, sin) of each star's turn from the field centre's frame (frame_rotation), or None; with it,
    # pm, cond_cov and slope are given in the centre's frame
    frame: Array | None = None


class Kinematics(NamedTuple):
    """The proper-motion parameters of the population (physical, mas/yr and km/s)."""

    pm: Array  # (..., 2) cluster mean proper motion
    log_sigma_v: Array  # cluster velocity dispersion, ln(km/s)
    field_mean: Array  # (..., M, 2) field component means at w_t = 0
    field_trend: Array  # (..., 2) d(mean)/d(w_t), mas/yr per mas
    field_log_sd: Array  # (..., M, 2) ln of the constant part's sd in pmra, pmdec
    field_corr: Array  # (..., M) its correlation
    field_log_sigma_v: Array  # (..., M) ln of the velocity dispersion (km/s)
    field_log_w: Array  # (..., M) normalised log weights
    v_r: Array | float = 0.0  # the cluster's radial velocity (km/s), with the perspective projection


def prepare_kinematic_data(
    parallax_error: np.ndarray,
    pmra: np.ndarray,
    pmdec: np.ndarray,
    pmra_error: np.ndarray,
    pmdec_error: np.ndarray,
    parallax_pmra_corr: np.ndarray,
    parallax_pmdec_corr: np.ndarray,
    pmra_pmdec_corr: np.ndarray,
    *,
    ra: np.ndarray | None = None,
    dec: np.ndarray | None = None,
    perspective: bool = True,
) -> KinematicData:
    """The conditional proper-motion error model of each star (NumPy, float64).

    With ``ra`` and ``dec`` (deg) each star's proper motion, its covariance
    and its slope on the parallax are turned into the frame of the field's
    centre (:func:`frame_rotation`): one motion on the sky is one
    ``(mu_a*, mu_d)`` there, near a celestial pole too, where the stars' own
    axes turn with right ascension. With ``perspective`` the stars also carry
    the projection of the cluster's space velocity
    (:func:`perspective_geometry`, in the centre's frame).

    Stars without a usable proper motion (:func:`usable_proper_motion`), and
    with ``ra``/``dec`` those without a finite position (which cannot be
    placed in the centre's frame, found from the others), get
    ``has_pm = 0`` (and harmless placeholder values). Non-finite
    correlations count as 0 (the caller warns). A correlation matrix whose
    smallest eigenvalue is below :data:`MIN_CORRELATION_EIGENVALUE` is shrunk
    towards the identity until it is not
    (:func:`~gaia_distances.core.numerics.positive_definite_correlations`).
    """
    s_w = np.asarray(parallax_error, float)
    s_a, s_d = np.asarray(pmra_error, float), np.asarray(pmdec_error, float)
    pm = np.stack([np.asarray(pmra, float), np.asarray(pmdec, float)], axis=1)
    rho = [np.nan_to_num(np.asarray(c, float)) for c in (parallax_pmra_corr, parallax_pmdec_corr, pmra_pmdec_corr)]
    repaired = positive_definite_correlations(np.stack(rho, axis=-1), min_eigenvalue=MIN_CORRELATION_EIGENVALUE)
    r_wa, r_wd, r_ad = repaired[:, 0], repaired[:, 1], repaired[:, 2]
    ok = usable_proper_motion(pm[:, 0], pm[:, 1], s_a, s_d, rho) & np.isfinite(s_w) & (s_w > 0)
    placed = None
    if ra is not None and dec is not None:
        ra, dec = np.asarray(ra, float), np.asarray(dec, float)
        placed = np.isfinite(ra) & np.isfinite(dec)
        ok &= placed
    s_a, s_d, s_w1 = np.where(ok, s_a, 1.0), np.where(ok, s_d, 1.0), np.where(ok, s_w, 1.0)
    b = np.stack([r_wa * s_a / s_w1, r_wd * s_d / s_w1], axis=1)
    c11 = s_a**2 * (1 - r_wa**2)
    c22 = s_d**2 * (1 - r_wd**2)
    c12 = s_a * s_d * (r_ad - r_wa * r_wd)
    cond = np.stack([c11, c12, c22], axis=1)
    pm = np.where(ok[:, None], pm, 0.0)
    cond = np.where(ok[:, None], cond, [1.0, 0.0, 1.0])
    det = cond[:, 0] * cond[:, 2] - cond[:, 1] ** 2  # a rotation leaves it as it is
    b = np.where(ok[:, None], b, 0.0)
    if placed is None or not placed.any():
        return KinematicData(pm, cond, b, ok * 1.0, det)
    m = _placed_geometry(np.asarray(ra), np.asarray(dec))  # a star without a position: no turn (and no pm)
    frame = _nearest_rotation(m)
    rot = _rotation_matrices(frame)  # star = R centre, so centre = R^T star
    cov = np.stack([cond[:, [0, 1]], cond[:, [1, 2]]], axis=1)
    cov = np.einsum("nki,nkl,nlj->nij", rot, cov, rot)  # R^T C R
    cond = np.stack([cov[:, 0, 0], 0.5 * (cov[:, 0, 1] + cov[:, 1, 0]), cov[:, 1, 1]], axis=1)
    geometry = None
    if perspective:  # R^T M and R^T c
        proj = np.einsum("nki,nkj->nij", rot, np.stack([m[:, [0, 1, 4]], m[:, [2, 3, 5]]], axis=1))
        geometry = np.concatenate([proj[:, 0, :2], proj[:, 1, :2], proj[:, :, 2]], axis=1)
    centre = lambda x: np.einsum("nji,nj->ni", rot, x)  # noqa: E731
    return KinematicData(centre(pm), cond, centre(b), ok * 1.0, det, geometry, frame)


def usable_proper_motion(
    pmra: np.ndarray,
    pmdec: np.ndarray,
    pmra_error: np.ndarray,
    pmdec_error: np.ndarray,
    correlations: Sequence[np.ndarray] = (),
) -> np.ndarray:
    """Which stars have a proper motion a fit can use: the one definition, for counting, flags and the model.

    Finite ``pmra`` and ``pmdec``, finite and positive errors, and every
    correlation (``parallax_pmra_corr``, ``parallax_pmdec_corr``,
    ``pmra_pmdec_corr``, those present) in [-1, 1]; a non-finite correlation
    counts as 0. (A kinematic fit also leaves out proper motions no star could
    have, which need the parallax: :mod:`gaia_distances.cluster.stars`.)

    Examples
    --------
    >>> usable_proper_motion(np.array([1.0, 1.0, np.nan]), np.zeros(3), np.array([0.1, 0.0, 0.1]), np.ones(3)).tolist()
    [True, False, False]
    """
    vals = np.stack([np.asarray(pmra, float), np.asarray(pmdec, float)])
    errs = np.stack([np.asarray(pmra_error, float), np.asarray(pmdec_error, float)])
    with np.errstate(invalid="ignore"):
        ok = np.all(np.isfinite(vals), axis=0) & np.all(np.isfinite(errs) & (errs > 0), axis=0)
        for c in correlations:
            ok &= ~(np.abs(np.asarray(c, float)) > 1.0)  # NaN counts as 0
    return ok


def _nearest_rotation(m: np.ndarray) -> np.ndarray:
    """``(cos, sin)`` of the rotation nearest each 2x2 block ``[[M11, M12], [M21, M22]]`` of ``m`` (``(n, 6)``)."""
    phi = np.arctan2(m[:, 1] - m[:, 2], m[:, 0] + m[:, 3])
    return np.stack([np.cos(phi), np.sin(phi)], axis=1)


def _rotation_matrices(frame: np.ndarray) -> np.ndarray:
    """``R = [[cos, sin], [-sin, cos]]`` per star, ``(n, 2, 2)``: a vector in the centre's frame to the star's."""
    c, s = np.asarray(frame, float).T
    return np.stack([np.stack([c, s], axis=-1), np.stack([-s, c], axis=-1)], axis=-2)


def to_star_frame(x: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """Vectors ``(..., n, 2)`` given in the field centre's frame, in each star's own (RA, Dec) frame.

    ``frame`` is ``(n, 2)``, the ``(cos, sin)`` of :func:`frame_rotation`
    (``KinematicData.frame``): ``(x cos + y sin, -x sin + y cos)``.

    Examples
    --------
    >>> to_star_frame(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])).tolist()
    [[0.0, -1.0]]
    """
    return np.einsum("nij,...nj->...ni", _rotation_matrices(frame), np.asarray(x, float))


def sky_basis(ra_deg: np.ndarray | float, dec_deg: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ICRS unit vectors ``p`` (towards increasing RA), ``q`` (increasing Dec) and ``r`` (radial), ``(..., 3)``."""
    a, d = np.deg2rad(np.asarray(ra_deg, float)), np.deg2rad(np.asarray(dec_deg, float))
    p = np.stack([-np.sin(a), np.cos(a), np.zeros_like(a)], axis=-1)
    q = np.stack([-np.sin(d) * np.cos(a), -np.sin(d) * np.sin(a), np.cos(d)], axis=-1)
    r = np.stack([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)], axis=-1)
    return p, q, r


def field_centre(ra_deg: np.ndarray, dec_deg: np.ndarray) -> tuple[float, float]:
    """The stars' mean direction ``(ra0, dec0)`` in deg: the normalised mean of their unit vectors.

    No angle is averaged, so a field around a celestial pole or across
    RA = 0/360 has its true centre. At a pole itself ``ra0`` is 0, whose
    basis (:func:`sky_basis`) is as good as any other there.

    Examples
    --------
    >>> ra0, dec0 = field_centre(np.array([0.0, 90.0, 180.0, 270.0]), np.full(4, 89.0))
    >>> round(dec0, 6)
    90.0
    """
    _, _, r = sky_basis(ra_deg, dec_deg)
    centre = np.asarray(r, float).reshape(-1, 3).mean(axis=0)
    norm = float(np.linalg.norm(centre))
    if not norm > 1e-12:
        raise ValueError("the stars' directions cancel out: a field needs a centre (its stars within 90 deg of it)")
    centre /= norm
    dec0 = float(np.rad2deg(np.arcsin(np.clip(centre[2], -1.0, 1.0))))
    ra0 = float(np.rad2deg(np.arctan2(centre[1], centre[0])))  # 0 at a pole itself
    return ra0 % 360.0, dec0


def perspective_geometry(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    """Each star's projection of a space velocity given at the field's centre, ``(n, 6)``.

    The centre is the stars' mean direction (:func:`field_centre`), with basis ``(p0, q0, r0)``. A
    space velocity ``v = A_V (mu_a* p0 + mu_d q0) / w_D + v_r r0`` (the
    proper motion ``(mu_a*, mu_d)`` a star at the centre and at the
    cluster's parallax ``w_D`` has, and the radial velocity ``v_r``) gives a
    star at ``(ra, dec)`` and true parallax ``w_t`` the proper motion
    ``w_t (p . v, q . v) / A_V`` (Kalkayotl's and kinesis's projection), that is
    ``(w_t / w_D) M mu + w_t v_r c / A_V`` with ``M = [[p.p0, p.q0],
    [q.p0, q.q0]]`` and ``c = (p.r0, q.r0)``; the columns are ``(M11, M12,
    M21, M22, c1, c2)``. At the centre ``M = I`` and ``c = 0``.
    """
    p, q, _ = sky_basis(ra_deg, dec_deg)
    p0, q0, r0 = sky_basis(*field_centre(ra_deg, dec_deg))
    return np.stack([p @ p0, p @ q0, q @ p0, q @ q0, p @ r0, q @ r0], axis=1)


def frame_rotation(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    """``(cos, sin)`` of the turn from the field centre's (RA, Dec) axes to each star's, ``(n, 2)``.

    A common proper motion ``(mu_a*, mu_d)`` is a common direction on the
    sky only in the frame of one point: each star's own axes are turned
    against the centre's by the convergence of the meridians, about
    ``sep * tan(dec)``, which is negligible in most fields but any angle
    around a celestial pole. The turn is the rotation nearest the
    projection ``M`` of :func:`perspective_geometry`; :func:`to_star_frame`
    applies it. The centre is that of the stars with a finite position; a
    star without one gets no turn.
    """
    return _nearest_rotation(_placed_geometry(np.asarray(ra_deg, float), np.asarray(dec_deg, float)))


def _placed_geometry(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    """:func:`perspective_geometry` about the centre of the stars with a finite position; the identity for the rest."""
    placed = np.isfinite(ra_deg) & np.isfinite(dec_deg)
    m = np.tile([1.0, 0.0, 0.0, 1.0, 0.0, 0.0], (placed.size, 1))
    if placed.any():
        m[placed] = perspective_geometry(ra_deg[placed], dec_deg[placed])
    return m


def centre_frame_proper_motions(data: KinematicData) -> np.ndarray:
    """The stars' observed proper motions carried to the field's centre, ``(n, 2)`` (NumPy).

    ``data.pm`` (already turned to the centre's frame when the stars have
    positions, :func:`prepare_kinematic_data`), with the perspective
    projection ``M^-1 mu`` for each star's ``M`` of ``data.geometry`` (the
    radial velocity's unknown part left out). Members share one proper
    motion in this frame, near a celestial pole too, where their observed
    ``(pmra, pmdec)`` turn with right ascension (:func:`frame_rotation`).
    """
    pm = np.asarray(data.pm, float)
    if data.geometry is None:
        return pm
    g = np.asarray(data.geometry, float)
    det = g[:, 0] * g[:, 3] - g[:, 1] * g[:, 2]
    det = np.where(np.abs(det) > 1e-12, det, 1.0)
    x = (g[:, 3] * pm[:, 0] - g[:, 1] * pm[:, 1]) / det
    y = (g[:, 0] * pm[:, 1] - g[:, 2] * pm[:, 0]) / det
    return np.stack([x, y], axis=1)


def gaussian2_log_pdf(dx: Array, dy: Array, c11: Array, c12: Array, c22: Array, det: Array) -> Array:
    """``ln N((dx, dy) | 0, [[c11, c12], [c12, c22]])``, elementwise.

    ``det`` is the covariance's determinant, in a form that does not cancel
    (nearly singular Gaia covariances lose ``c11 c22 - c12^2`` in float32;
    see :func:`_det_plus`).
    """
    quad = (c22 * dx * dx - 2.0 * c12 * dx * dy + c11 * dy * dy) / det
    return -0.5 * quad - 0.5 * jnp.log(det) - 2.0 * LOG_SQRT_2PI


def _det_plus(data: KinematicData, a11: Array, a12: Array, a22: Array) -> Array:
    """``det(C' + A)`` per star for a symmetric ``A = [[a11, a12], [a12, a22]]`` (positive semi-definite).

    ``det C' + tr(adj(C') A) + det A``: the star's own determinant comes from
    float64 and every term is non-negative, so nothing cancels.
    """
    c = data.cond_cov.T
    return data.cond_det + (c[0] * a22 + c[2] * a11 - 2.0 * c[1] * a12) + (a11 * a22 - a12 * a12)


def cluster_pm_mean(w_t: Array, kin: Kinematics, data: KinematicData, log_D: Array) -> tuple[Array, Array]:
    """The members' mean proper motion ``(mu_a*, mu_d)`` at true parallax ``w_t`` (stars on the last axis).

    One tangential velocity: ``kin.pm`` (the proper motion at the cluster's
    distance ``D = exp(log_D)``) scaled by ``D / r``; with ``data.geometry``
    the space velocity (with the radial velocity ``kin.v_r``) projected along
    each star's line of sight (:func:`perspective_geometry`).
    """
    scale = w_t * (jnp.exp(log_D) / 1000.0)  # D / r
    if data.geometry is None:
        return kin.pm[0] * scale, kin.pm[1] * scale
    g = data.geometry.T
    radial = w_t * (kin.v_r / A_V)
    mean_x = (g[0] * kin.pm[0] + g[1] * kin.pm[1]) * scale + g[4] * radial
    mean_y = (g[2] * kin.pm[0] + g[3] * kin.pm[1]) * scale + g[5] * radial
    return mean_x, mean_y


def cluster_pm_log_term(u: Array, parallax: Array, kin: Kinematics, data: KinematicData, log_D: Array) -> Array:
    """The cluster's proper-motion log likelihood at distance nodes ``u = ln(r / pc)`` of shape ``(K, n)``.

    ``parallax`` is the observed (corrected) parallax per star; the stars are
    on the last axis (XLA vectorises along it). The members share one
    tangential velocity, so the mean proper motion ``kin.pm`` (that at the
    cluster's distance ``D = exp(log_D)``) scales as ``D / r`` over the
    cluster's depth. With ``data.geometry`` (a wide or near field) that
    velocity, with the radial velocity ``kin.v_r``, is projected along each
    star's own line of sight (:func:`perspective_geometry`).
    """
    w_t = 1000.0 * jnp.exp(-u)
    resid_w = parallax - w_t
    b = data.slope.T
    mean_x, mean_y = cluster_pm_mean(w_t, kin, data, log_D)
    dx = data.pm[:, 0] - mean_x - b[0] * resid_w
    dy = data.pm[:, 1] - mean_y - b[1] * resid_w
    var_int = members_pm_variance(kin.log_sigma_v, w_t)
    c = data.cond_cov.T
    det = _det_plus(data, var_int, 0.0, var_int)
    term = gaussian2_log_pdf(dx, dy, c[0] + var_int, c[1], c[2] + var_int, det)
    return jnp.where(data.has_pm > 0, term, 0.0)


def members_pm_variance(log_sigma_v: Array, w_t: Array, xp: Any = jnp) -> Array:
    """The members' intrinsic proper-motion variance (mas/yr)^2 in each coordinate, at true parallax ``w_t``
    (mas): their velocity dispersion ``exp(log_sigma_v)`` (km/s) seen at that distance, ``(sigma_v w_t / A_V)^2``.

    The cluster's proper-motion model (with :func:`cluster_pm_mean`), shared by the likelihood, the
    posterior predictive and the figures.
    """
    return xp.exp(2.0 * log_sigma_v) / (A_V * A_V) * xp.square(w_t)


def field_pm_moments(
    mean: Array, trend: Array, log_sd: Array, corr: Array, log_sigma_v: Array, w_t: Array, xp: Any = jnp
) -> tuple[Array, Array, Array, Array, Array]:
    """A field component's proper-motion mean and intrinsic covariance at true parallax ``w_t`` (mas), before
    a star's errors: ``(mean_x, mean_y, c11, c12, c22)`` (mas/yr and (mas/yr)^2).

    The mean is ``mean + trend w_t`` (the solar reflex grows with parallax); the covariance is the
    constant part ``T`` (sds ``exp(log_sd)``, correlation ``corr``) plus the velocity dispersion
    ``exp(log_sigma_v)`` (km/s) seen at that distance, ``(sigma_v w_t / A_V)^2 I``. The arguments
    broadcast: ``mean``, ``trend`` and ``log_sd`` have the coordinate on their last axis (the callers
    arrange the component, draw and star axes). The field's proper-motion model, shared by the
    likelihood, the posterior predictive and the figures (:mod:`~gaia_distances.core.field_term` writes
    the same terms out with their gradient, and is tested against it).
    """
    mean_x = mean[..., 0] + trend[..., 0] * w_t
    mean_y = mean[..., 1] + trend[..., 1] * w_t
    disp = xp.exp(2.0 * log_sigma_v) / (A_V * A_V) * xp.square(w_t)
    c11 = xp.exp(2.0 * log_sd[..., 0]) + disp
    c22 = xp.exp(2.0 * log_sd[..., 1]) + disp
    c12 = corr * xp.exp(log_sd[..., 0] + log_sd[..., 1])  # broadcast against the others by the caller
    return mean_x, mean_y, c11, c12, c22


def cluster_pm_parallax_gaussian(
    parallax: Array, parallax_error: Array, kin: Kinematics, data: KinematicData, log_D: Array
) -> tuple[Array, Array]:
    """The cluster's proper-motion term as a Gaussian in the true parallax ``w_t``: ``(precision, mean)``.

    The members' mean proper motion is linear in ``w_t`` (:func:`cluster_pm_mean`), so with the
    intrinsic dispersion held fixed the term is exactly ``N(w_t | mean, 1 / precision)`` up to a
    constant. The dispersion is held at the ``w_t`` where the parallax (error ``parallax_error``)
    and this Gaussian together put the true parallax. It places the
    cluster integral's nodes (:func:`~gaia_distances.core.cluster_integral.cluster_log_likelihood`):
    a bright member of a far cluster with a large proper motion has its distance pinned by the proper
    motion, not the parallax.
    Stars without a proper motion get precision 0.
    """
    b = data.slope.T
    m1_x, m1_y = cluster_pm_mean(jnp.ones_like(parallax), kin, data, log_D)
    g_x, g_y = m1_x - b[0], m1_y - b[1]  # the residual pm - b (w - w_t) - mean is r0 - g w_t
    r_x, r_y = data.pm[:, 0] - b[0] * parallax, data.pm[:, 1] - b[1] * parallax
    c = data.cond_cov.T

    def gaussian(w_ref: Array) -> tuple[Array, Array]:
        var_int = members_pm_variance(kin.log_sigma_v, w_ref)
        a11, a12, a22 = c[0] + var_int, c[1], c[2] + var_int
        det = a11 * a22 - a12 * a12
        # g' C^-1 g and g' C^-1 r0, with C^-1 = [[a22, -a12], [-a12, a11]] / det
        gg = (g_x * g_x * a22 - 2.0 * g_x * g_y * a12 + g_y * g_y * a11) / det
        gr = (g_x * r_x * a22 - (g_x * r_y + g_y * r_x) * a12 + g_y * r_y * a11) / det
        precision = jnp.where((data.has_pm > 0) & (gg > 0), gg, 0.0)
        return precision, gr / jnp.where(precision > 0, precision, 1.0)

    # the dispersion at the observed parallax, then again where parallax and proper motion together
    # put the true parallax (it grows as w_t^2: held at the wrong w_t, the peak is too narrow)
    precision, mean = gaussian(jnp.maximum(parallax, 0.0))
    prec_w = 1.0 / jnp.square(parallax_error)
    both = (prec_w * parallax + precision * mean) / (prec_w + precision)
    return gaussian(jnp.maximum(both, 0.0))


def field_pm_log_term_at(u: Array, parallax: Array, kin: Kinematics, data: KinematicData) -> Array:
    """The field's proper-motion log likelihood per star at a known distance ``u = ln(r / pc)`` (shape ``(n,)``).

    The exact term that :func:`field_pm_log_term` integrates over the
    distance; the joint model (one latent distance per star) uses it.
    """
    return _field_pm_at_parallax(1000.0 * jnp.exp(-u), parallax, kin, data)


def _field_pm_at_parallax(w_t: Array, parallax: Array, kin: Kinematics, data: KinematicData) -> Array:
    """The field's proper-motion mixture at true parallax ``w_t`` (shape ``(n,)``)."""
    terms = _field_pm_terms(w_t[None, :], parallax, kin, data)
    return jnp.where(data.has_pm > 0, jax.nn.logsumexp(terms, axis=(0, 1)), 0.0)


def _field_pm_terms(w_t: Array, parallax: Array, kin: Kinematics, data: KinematicData) -> Array:
    """``ln pi_m + ln N(pm | mean_m(w_t), cov_m(w_t))`` at true parallaxes ``w_t`` of shape ``(K, n)``: ``(M, K, n)``.

    One broadcast expression with the stars on the last (fastest) axis, so
    that XLA fuses it into a few vectorised loops.
    """
    m = (slice(None), None, None)  # a component parameter against (M, K, n)
    mean_x, mean_y, a11, a12, a22 = field_pm_moments(
        kin.field_mean[:, None, None, :],
        kin.field_trend,
        kin.field_log_sd[:, None, None, :],
        kin.field_corr[m],
        kin.field_log_sigma_v[m],
        w_t,
    )  # (M, K, n)
    b = data.slope.T  # (2, n): the pm's shift per mas of parallax error, from the correlations
    dx = data.pm[:, 0] - b[0] * (parallax - w_t) - mean_x
    dy = data.pm[:, 1] - b[1] * (parallax - w_t) - mean_y
    c = data.cond_cov.T  # (3, n)
    det = _det_plus(data, a11, a12, a22)
    return kin.field_log_w[m] + gaussian2_log_pdf(dx, dy, c[0] + a11, c[1] + a12, c[2] + a22, det)


#: Nodes of the Gauss-Hermite rule over a star's true parallax under the field.
FIELD_PM_NODES = 3


def field_pm_log_term(mean_w: Array, var_w: Array, parallax: Array, kin: Kinematics, data: KinematicData) -> Array:
    """The field's proper-motion log likelihood per star, integrated over its true parallax.

    ``mean_w`` and ``var_w`` are the mean and variance of ``w_t`` under the
    field's distance posterior of the star (from its parallax alone); the
    integral is the three-point Gauss-Hermite rule of the Gaussian with
    those moments: exact for stars with parallax S/N above about 5, within
    a few hundredths in log likelihood at S/N 2 to 5 and about 0.1 below
    (tested against exact integration over distance).
    """
    # floored above 0, so that the square root's derivative stays finite where the floor applies
    sd = jnp.sqrt(jnp.maximum(var_w, 1e-12 * jnp.square(mean_w) + 1e-30))
    x, log_wx = (jnp.asarray(a, mean_w.dtype) for a in gauss_hermite(FIELD_PM_NODES))
    terms = _field_pm_terms(mean_w + sd * x[:, None], parallax, kin, data) + log_wx[:, None]
    return jnp.where(data.has_pm > 0, jax.nn.logsumexp(terms, axis=(0, 1)), 0.0)
