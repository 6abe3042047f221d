"""Gaia's angularly correlated parallax and proper-motion systematics: covariance kernels (pure NumPy).

Gaia (E)DR3 parallaxes of stars close together on the sky share part of their
errors. Three published fits give their covariance ``V(theta)`` as a function
of the angular separation ``theta`` (deg):

- Lindegren et al. (2021, A&A 649, A2): ``142 uas^2 exp(-theta / 16 deg)``;
  proper motions ``292 uas^2/yr^2 exp(-theta / 12 deg)`` per component;
- Vasiliev & Baumgardt (2021, MNRAS 505, 5978):
  ``50 uas^2 / (1 + theta / 0.3 deg) + 70 uas^2 exp(-theta / 30 deg - (theta / 50 deg)^2)``;
  proper motions ``400 / (1 + theta / 0.3 deg) + 300 exp(-theta / 12 deg)``
  uas^2/yr^2 per component. For G > 18 their code scales the parallax term of
  a pair by ``min(s_i, s_j)`` with ``s = max(1, G - 17)``
  (:func:`magnitude_scale`);
- Maiz Apellaniz et al. (2021, A&A 649, A13): ``V_LMC + V_QSO``, 106.2 uas^2
  at zero separation (10.3 uas). Its oscillating LMC term makes it *not*
  positive semi-definite: pair matrices built from it are clipped
  (:func:`~gaia_distances.core.offset_field.clip_to_psd`) before anything is
  drawn or decomposed.

Within a degree most of this covariance is one mode shared by all the stars of
a field, so a model needs only one latent offset per field, with prior
variance :func:`shared_offset_variance` (the mean of ``V`` over the field's
pairs). :mod:`gaia_distances.core.offset_field` gives the few further modes
that wide fields need and draws realisations for simulations.

Sign convention: an offset ``d`` makes the zero-point-corrected parallax
``parallax_corrected = true parallax + d``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Literal, NamedTuple

import numpy as np

from gaia_distances.core.user_kernel import KernelFunction, UserKernel, callable_name, evaluate_kernel

__all__ = [
    "OFFSET_PRIORS",
    "SYSTEMATICS_KERNELS",
    "KernelFunction",
    "OffsetPrior",
    "OffsetVariance",
    "SystematicsKernel",
    "angular_separation",
    "covariance_matrix",
    "evaluate_kernel",
    "get_kernel",
    "lindegren2021_parallax",
    "lindegren2021_proper_motion",
    "magnitude_scale",
    "maiz_apellaniz2021_parallax",
    "pair_covariance",
    "shared_offset_variance",
    "weighted_offset_variance",
    "star_scales",
    "vasiliev2021_parallax",
    "vasiliev2021_proper_motion",
]

#: Which covariance a kernel gives: parallax (mas^2) or proper motion ((mas/yr)^2 per component).
Component = Literal["parallax", "proper_motion"]

_UAS2 = 1e-6  # mas^2 per uas^2


def lindegren2021_parallax(theta_deg: np.ndarray | float) -> np.ndarray:
    """Lindegren et al. (2021) parallax covariance (mas^2) at separation ``theta_deg`` (deg).

    Examples
    --------
    >>> round(float(lindegren2021_parallax(0.0)) * 1e6, 6)
    142.0
    """
    t = np.asarray(theta_deg, dtype=float)
    return 142.0 * _UAS2 * np.exp(-t / 16.0)


def lindegren2021_proper_motion(theta_deg: np.ndarray | float) -> np.ndarray:
    """Lindegren et al. (2021) proper-motion covariance ((mas/yr)^2, per component) at ``theta_deg`` (deg)."""
    t = np.asarray(theta_deg, dtype=float)
    return 292.0 * _UAS2 * np.exp(-t / 12.0)


def vasiliev2021_parallax(theta_deg: np.ndarray | float) -> np.ndarray:
    """Vasiliev & Baumgardt (2021) parallax covariance (mas^2) at ``theta_deg`` (deg), G <= 18.

    Examples
    --------
    >>> round(float(vasiliev2021_parallax(0.0)) * 1e6, 6)
    120.0
    """
    t = np.asarray(theta_deg, dtype=float)
    return _UAS2 * (50.0 / (1.0 + t / 0.3) + 70.0 * np.exp(-t / 30.0 - (t / 50.0) ** 2))


def vasiliev2021_proper_motion(theta_deg: np.ndarray | float) -> np.ndarray:
    """Vasiliev & Baumgardt (2021) proper-motion covariance ((mas/yr)^2, per component) at ``theta_deg``."""
    t = np.asarray(theta_deg, dtype=float)
    return _UAS2 * (400.0 / (1.0 + t / 0.3) + 300.0 * np.exp(-t / 12.0))


def maiz_apellaniz2021_parallax(theta_deg: np.ndarray | float) -> np.ndarray:
    """Maiz Apellaniz et al. (2021) parallax covariance (mas^2) at ``theta_deg`` (deg): ``V_LMC + V_QSO``.

    ``V_LMC = 46.2 uas^2 [0.6 exp(-theta/1.4) + 0.4 cos(2 pi theta/1.05 - 5 pi/18) / cos(5 pi/18)
    (0.94 exp(-(theta/0.35)^0.8) + 0.06)]``; ``V_QSO`` is 60 uas^2 below 3 deg,
    ``1.62 (40 - theta)`` uas^2 from 3 to 40 deg and 0 beyond. Not positive
    semi-definite on its own: see :func:`~gaia_distances.core.offset_field.clip_to_psd`.

    Examples
    --------
    >>> round(float(maiz_apellaniz2021_parallax(0.0)) * 1e6, 6)
    106.2
    """
    t = np.asarray(theta_deg, dtype=float)
    phase = 5.0 * np.pi / 18.0
    wave = np.cos(2.0 * np.pi * t / 1.05 - phase) / np.cos(phase)
    lmc = 46.2 * (0.6 * np.exp(-t / 1.4) + 0.4 * wave * (0.94 * np.exp(-((t / 0.35) ** 0.8)) + 0.06))
    qso = np.where(t < 3.0, 60.0, np.where(t <= 40.0, 1.62 * (40.0 - t), 0.0))
    return _UAS2 * (lmc + qso)


class SystematicsKernel(NamedTuple):
    """A named covariance model of Gaia's correlated systematics.

    Attributes
    ----------
    name
        Registry name (``"custom"`` for a user callable).
    parallax
        ``V(theta_deg)`` in mas^2.
    proper_motion
        The proper-motion counterpart in (mas/yr)^2 per component, or ``None``.
    magnitude_scaling
        Scale a pair's parallax covariance by ``min(s_i, s_j)``,
        ``s = max(1, G - 17)``, when magnitudes are given (Vasiliev & Baumgardt 2021).
    positive_definite
        Whether the kernel is known to be positive semi-definite; pair matrices
        of the others are clipped (:func:`~gaia_distances.core.offset_field.clip_to_psd`).
    reference
        The publication.
    """

    name: str
    parallax: KernelFunction
    proper_motion: KernelFunction | None = None
    magnitude_scaling: bool = False
    positive_definite: bool = False
    reference: str = ""

    def function(self, component: Component = "parallax") -> KernelFunction:
        """The kernel of ``component`` ("parallax" or "proper_motion"), or raise ``ValueError``."""
        if component == "parallax":
            return self.parallax
        if component == "proper_motion" and self.proper_motion is not None:
            return self.proper_motion
        raise ValueError(f"systematics kernel {self.name!r} has no {component} covariance")


#: The published kernels by name.
SYSTEMATICS_KERNELS: dict[str, SystematicsKernel] = {
    "lindegren2021": SystematicsKernel(
        "lindegren2021",
        lindegren2021_parallax,
        lindegren2021_proper_motion,
        positive_definite=True,
        reference="Lindegren et al. 2021, A&A 649, A2",
    ),
    "vasiliev2021": SystematicsKernel(
        "vasiliev2021",
        vasiliev2021_parallax,
        vasiliev2021_proper_motion,
        magnitude_scaling=True,
        positive_definite=True,
        reference="Vasiliev & Baumgardt 2021, MNRAS 505, 5978",
    ),
    "maiz-apellaniz2021": SystematicsKernel(
        "maiz-apellaniz2021",
        maiz_apellaniz2021_parallax,
        reference="Maiz Apellaniz, Pantaleoni Gonzalez & Barba 2021, A&A 649, A13",
    ),
}


class OffsetPrior(NamedTuple):
    """A Gaussian prior on the mean of a field's parallax offset (mas), for stars with G > ``g_min``."""

    mean: float
    sigma: float
    g_min: float
    reference: str


#: Optional priors on the offset's mean. ``"vasiliev2021"``: after the Lindegren et al. (2021)
#: zero point, parallaxes of G > 13 stars are still too large by 0.010 +- 0.003 mas
#: (Vasiliev & Baumgardt 2021). Not a default: a model opts in by name.
OFFSET_PRIORS: dict[str, OffsetPrior] = {
    "vasiliev2021": OffsetPrior(0.010, 0.003, 13.0, "Vasiliev & Baumgardt 2021, MNRAS 505, 5978"),
}


def get_kernel(spec: str | KernelFunction | SystematicsKernel) -> SystematicsKernel:
    """A :class:`SystematicsKernel` from a registry name, a kernel or a callable ``V(theta_deg) -> mas^2``.

    Names are matched case-insensitively. A callable becomes a ``"custom"``
    parallax kernel, not assumed positive semi-definite; a scalar it returns
    (a constant kernel) is broadcast to the separations' shape
    (:func:`evaluate_kernel`).
    :func:`~gaia_distances.core.kernel_checks.check_kernel` checks its values.

    Examples
    --------
    >>> get_kernel("Lindegren2021").name
    'lindegren2021'
    >>> get_kernel(lambda theta: 1e-4 + 0 * theta).positive_definite
    False
    >>> get_kernel(lambda theta: 1e-4).parallax(np.zeros(3)).tolist()  # a constant kernel
    [0.0001, 0.0001, 0.0001]
    """
    if isinstance(spec, SystematicsKernel):
        return spec
    if isinstance(spec, str):
        kernel = SYSTEMATICS_KERNELS.get(spec.strip().lower())
        if kernel is None:
            valid = ", ".join(repr(k) for k in SYSTEMATICS_KERNELS)
            raise ValueError(
                f"unknown parallax systematics {spec!r}; valid names: {valid}, or a callable V(theta_deg) -> mas^2"
            )
        return kernel
    if callable(spec):
        return SystematicsKernel("custom", UserKernel(spec), reference=callable_name(spec))
    raise TypeError(f"parallax systematics must be a name or a callable V(theta_deg) -> mas^2, not {spec!r}")


def magnitude_scale(g: np.ndarray | float) -> np.ndarray:
    """Vasiliev & Baumgardt's faint-star factor ``s = max(1, G - 17)``; NaN G gives 1 (no scaling).

    Examples
    --------
    >>> magnitude_scale([15.0, 19.5, float("nan")]).tolist()
    [1.0, 2.5, 1.0]
    """
    s = np.maximum(1.0, np.asarray(g, dtype=float) - 17.0)
    return np.where(np.isfinite(s), s, 1.0)


def angular_separation(
    ra1: np.ndarray | float, dec1: np.ndarray | float, ra2: np.ndarray | float, dec2: np.ndarray | float
) -> np.ndarray:
    """Angular separation (deg) of positions (deg), broadcast; Vincenty's formula, exact at all separations.

    Examples
    --------
    >>> round(float(angular_separation(10.0, 0.0, 10.0, 1.0)), 12)
    1.0
    """
    a1, d1, a2, d2 = (np.radians(np.asarray(x, dtype=float)) for x in (ra1, dec1, ra2, dec2))
    dra = a2 - a1
    s1, c1, s2, c2 = np.sin(d1), np.cos(d1), np.sin(d2), np.cos(d2)
    num = np.hypot(c2 * np.sin(dra), c1 * s2 - s1 * c2 * np.cos(dra))
    return np.degrees(np.arctan2(num, s1 * s2 + c1 * c2 * np.cos(dra)))


def pair_covariance(
    kernel: SystematicsKernel,
    ra1: np.ndarray,
    dec1: np.ndarray,
    ra2: np.ndarray,
    dec2: np.ndarray,
    *,
    scales: tuple[np.ndarray, np.ndarray] | None = None,
    component: Component = "parallax",
    unplaced_coincide: bool = False,
) -> np.ndarray:
    """``V(theta)`` between positions 1 and 2 (deg, broadcast), times ``min(s1, s2)`` for ``scales=(s1, s2)``.

    With ``unplaced_coincide`` a pair with a NaN position is taken at zero
    separation (``V(0)``, the largest covariance a kernel allows); else its
    covariance is NaN.
    """
    theta = angular_separation(ra1, dec1, ra2, dec2)
    if unplaced_coincide:
        theta = np.where(np.isnan(theta), 0.0, theta)
    v = evaluate_kernel(kernel.function(component), theta)
    return v if scales is None else v * np.minimum(scales[0], scales[1])


def star_scales(
    kernel: SystematicsKernel, g: np.ndarray | None, n: int, component: Component = "parallax"
) -> np.ndarray | None:
    """Per-star factors ``s`` (:func:`magnitude_scale`) when ``kernel`` scales by magnitude and ``g`` is given."""
    if g is None or not kernel.magnitude_scaling or component != "parallax":
        return None
    return magnitude_scale(np.broadcast_to(np.asarray(g, dtype=float), (n,)))


def covariance_matrix(
    ra: np.ndarray,
    dec: np.ndarray,
    kernel: str | KernelFunction | SystematicsKernel,
    *,
    g: np.ndarray | None = None,
    component: Component = "parallax",
) -> np.ndarray:
    """The N x N matrix ``V(theta_ij)`` of the stars at (ra, dec) [deg] (mas^2), not clipped.

    ``g`` (G mag) applies the kernel's magnitude scaling, if it has one.
    """
    k = get_kernel(kernel)
    ra, dec = np.asarray(ra, dtype=float).ravel(), np.asarray(dec, dtype=float).ravel()
    s = star_scales(k, g, ra.size, component)
    scales = None if s is None else (s[:, None], s[None, :])
    return pair_covariance(k, ra[:, None], dec[:, None], ra[None, :], dec[None, :], scales=scales, component=component)


def _covariance_rows(
    kernel: SystematicsKernel,
    ra: np.ndarray,
    dec: np.ndarray,
    s: np.ndarray | None,
    component: Component,
    unplaced_coincide: bool = False,
) -> Iterator[tuple[slice, np.ndarray]]:
    """The matrix ``V(theta_ij)`` of the stars, a block of rows at a time (about 2e6 entries each).

    Yields ``(rows, V[rows, :])``; ``s`` holds the stars' magnitude factors (or ``None``).
    """
    n = ra.size
    block = max(1, 2_000_000 // n)
    for start in range(0, n, block):
        rows = slice(start, start + block)
        scales = None if s is None else (s[rows, None], s[None, :])
        v = pair_covariance(
            kernel,
            ra[rows, None],
            dec[rows, None],
            ra,
            dec,
            scales=scales,
            component=component,
            unplaced_coincide=unplaced_coincide,
        )
        yield rows, v


class OffsetVariance(NamedTuple):
    """The prior variance of a field's shared parallax offset.

    Attributes
    ----------
    variance
        Mean of ``V(theta_ij)`` over the pairs ``i != j`` (mas^2), clipped at 0.
    standard_error
        Standard error of a subsample estimate (0 when exact).
    n_pairs
        Number of (ordered) pairs averaged.
    exact
        Whether every pair was used.
    """

    variance: float
    standard_error: float
    n_pairs: int
    exact: bool

    @property
    def sigma(self) -> float:
        """The offset's prior standard deviation (mas)."""
        return float(np.sqrt(self.variance))


def shared_offset_variance(
    ra: np.ndarray,
    dec: np.ndarray,
    kernel: str | KernelFunction | SystematicsKernel,
    g: np.ndarray | None = None,
    *,
    component: Component = "parallax",
    max_exact: int = 4000,
    pairs_per_star: int = 50,
    min_pairs: int = 200_000,
    seed: int = 0,
) -> OffsetVariance:
    """Prior variance (mas^2) of one offset shared by a field's stars: the mean of ``V`` over its pairs.

    With one latent offset ``d`` of this variance, the stars are independent
    given ``d``; the remainder ``V(0) - variance`` of each star's systematic
    variance is what one mode leaves out
    (see :func:`~gaia_distances.core.offset_field.leading_modes`).

    Parameters
    ----------
    ra, dec
        Positions (deg). Stars with a NaN position take no part.
    kernel
        A registry name, :class:`SystematicsKernel` or callable ``V(theta_deg)``.
    g
        G magnitudes, for the kernels with a magnitude scaling (Vasiliev &
        Baumgardt 2021: a pair counts ``V min(s_i, s_j)``); ignored otherwise.
    component
        ``"parallax"`` (mas^2) or ``"proper_motion"`` ((mas/yr)^2 per component).
    max_exact
        Up to this many stars every pair is used (computed in row blocks).
        Above it, ``max(min_pairs, pairs_per_star * N)`` ordered pairs ``i != j``
        are drawn uniformly with a generator seeded by ``seed``: the mean over
        them is an unbiased estimate of the exact mean, deterministic for a
        seed, at O(N) cost; its standard error is returned.

    Returns
    -------
    OffsetVariance
        A field of one star gives ``V(0)`` (its own variance), with no pairs.

    Examples
    --------
    >>> v = shared_offset_variance([10.0, 10.0], [0.0, 16.0], "lindegren2021")
    >>> round(v.variance * 1e6, 6), v.exact
    (52.238881, True)
    """
    k = get_kernel(kernel)
    ra, dec = np.asarray(ra, dtype=float).ravel(), np.asarray(dec, dtype=float).ravel()
    s_all = star_scales(k, g, ra.size, component)
    good = np.isfinite(ra) & np.isfinite(dec)
    ra, dec = ra[good], dec[good]
    s = None if s_all is None else s_all[good]
    n = ra.size
    if n < 2:
        v0 = float(evaluate_kernel(k.function(component), np.zeros(1))[0]) * (
            1.0 if s is None or n == 0 else float(s[0])
        )
        return OffsetVariance(max(v0, 0.0), 0.0, 0, True)
    if n <= max_exact:
        blocks = _covariance_rows(k, ra, dec, s, component)
        total = sum(float(v.sum()) - float(np.trace(v[:, rows])) for rows, v in blocks)
        n_pairs = n * (n - 1)
        return OffsetVariance(max(total / n_pairs, 0.0), 0.0, n_pairs, True)
    n_pairs = max(int(min_pairs), int(pairs_per_star) * n)
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, n_pairs)
    j = (i + rng.integers(1, n, n_pairs)) % n  # uniform over the n - 1 others
    scales = None if s is None else (s[i], s[j])
    v = pair_covariance(k, ra[i], dec[i], ra[j], dec[j], scales=scales, component=component)
    return OffsetVariance(max(float(v.mean()), 0.0), float(v.std(ddof=1) / np.sqrt(n_pairs)), n_pairs, False)


def weighted_offset_variance(
    ra: np.ndarray,
    dec: np.ndarray,
    weights: np.ndarray,
    kernel: str | KernelFunction | SystematicsKernel,
    g: np.ndarray | None = None,
    *,
    component: Component = "parallax",
    max_exact: int = 3000,
    n_pairs: int = 400_000,
    seed: int = 0,
    unplaced: Literal["exclude", "coincide"] = "exclude",
) -> float:
    """Systematic variance of a weighted mean of the stars' parallaxes (or proper motions).

    ``sum_ij w_i w_j V(theta_ij) / (sum_i w_i)^2`` (mas^2, or (mas/yr)^2 per
    component), the diagonal included: a single star keeps its own ``V(0)``.
    With inverse-variance weights this is the systematic part of the variance
    of the cluster's mean parallax under ``C = V + diag(sigma^2)``; its
    statistical part is ``1 / sum(1 / sigma^2)``. Stars with a weight that
    is not positive take no part; stars with a NaN position take no part
    either (``unplaced="exclude"``), or are taken at zero separation from
    every other star (``unplaced="coincide"``: ``V(0)``, the kernel's largest
    value, so that the variance is not underestimated). Up to ``max_exact`` stars
    every pair is summed; above it, ``n_pairs`` pairs are drawn with
    probability ``w_i w_j`` (an unbiased estimate, deterministic for a seed).
    The result is clipped at 0 (a kernel that is not positive semi-definite
    could go below). NaN when no star takes part.

    Examples
    --------
    >>> v = weighted_offset_variance([10.0, 10.0], [0.0, 0.0], [1.0, 1.0], "lindegren2021")
    >>> round(v * 1e6, 6)  # two stars at one position: V(0) = 142 uas^2
    142.0
    """
    k = get_kernel(kernel)
    ra, dec = np.asarray(ra, dtype=float).ravel(), np.asarray(dec, dtype=float).ravel()
    w = np.broadcast_to(np.asarray(weights, dtype=float), ra.shape)
    s_all = star_scales(k, g, ra.size, component)
    if unplaced not in ("exclude", "coincide"):
        raise ValueError(f"unplaced must be 'exclude' or 'coincide'; got {unplaced!r}")
    coincide = unplaced == "coincide"
    good = np.isfinite(w) & (w > 0) & (coincide | (np.isfinite(ra) & np.isfinite(dec)))
    if not good.any():
        return math.nan
    ra, dec, w = ra[good], dec[good], w[good] / w[good].sum()
    s = None if s_all is None else s_all[good]
    n = ra.size
    if n <= max_exact:
        blocks = _covariance_rows(k, ra, dec, s, component, unplaced_coincide=coincide)
        total = sum(float(w[rows] @ v @ w) for rows, v in blocks)
        return max(total, 0.0)
    rng = np.random.default_rng(seed)
    i, j = rng.choice(n, n_pairs, p=w), rng.choice(n, n_pairs, p=w)
    scales = None if s is None else (s[i], s[j])
    v = pair_covariance(k, ra[i], dec[i], ra[j], dec[j], scales=scales, component=component, unplaced_coincide=coincide)
    return max(float(v.mean()), 0.0)
