"""Shared numerical conventions of the core: one definition of each.

- :data:`Array`, the type of JAX/NumPy arrays in signatures;
- :data:`ONE_SIGMA_QUANTILES`, the median and the +-1 sigma percentiles every
  summary reports, and :data:`SUMMARY_LEVELS` (their names, in column order);
- :func:`normal_log_pdf` and :func:`log_likelihood_u`, the parallax likelihood
  in ``u = ln(r / pc)``;
- :func:`likelihood_bracket`, the ``ln r`` interval holding a star's likelihood;
- :func:`log_likelihood_offset`, the change of the parallax log likelihood
  between two distances, without cancellation;
- :func:`bisect`, vectorised bisection on a predicate;
- :func:`hermite` and :func:`hermite_derivative`, the cubic Hermite step on the
  unit interval, and :func:`invert_cdf`, which inverts a tabulated CDF with it;
- :func:`padded_chunks`, fixed-size chunks so that one compiled program serves
  a whole table;
- :func:`gauss_hermite`, the Gauss-Hermite rule for expectations under
  ``N(0, 1)`` (every rule of that kind in the package);
- :func:`correlation_matrices` and :func:`positive_definite_correlations`, the
  3 x 3 (parallax, pmra, pmdec) correlation matrices and their one repair.

Pure JAX/NumPy: ``xp`` selects the array module where both are supported.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "LOG_SQRT_2PI",
    "ONE_SIGMA_QUANTILES",
    "SUMMARY_LEVELS",
    "Array",
    "Chunk",
    "bisect",
    "checked_integer",
    "chunk_length",
    "correlation_matrices",
    "gauss_hermite",
    "hermite",
    "hermite_derivative",
    "invert_cdf",
    "likelihood_bracket",
    "log_likelihood_offset",
    "log_likelihood_u",
    "normal_log_pdf",
    "padded_chunks",
    "positive_definite_correlations",
    "separated_peaks",
    "trapezoid_nodes",
]

#: JAX or NumPy array (a pytree leaf) in signatures.
Array = Any

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)

#: The 15.866th, 50th and 84.134th percentiles: the median and the +-1 sigma
#: equivalents of a Gaussian, in ascending order.
ONE_SIGMA_QUANTILES = (0.158655, 0.5, 0.841345)

#: Column suffix -> index into :data:`ONE_SIGMA_QUANTILES`, in the order the
#: columns are written (``*_median``, ``*_lo``, ``*_hi``).
SUMMARY_LEVELS = {"median": 1, "lo": 0, "hi": 2}


def checked_integer(name: str, value: Any, least: int = 1) -> int:
    """``value`` as an ``int``, or ``ValueError`` naming option ``name``: an integer (not a bool) >= ``least``.

    Examples
    --------
    >>> checked_integer("n_membership_draws", 0)
    Traceback (most recent call last):
    ...
    ValueError: n_membership_draws must be an integer >= 1; got 0
    """
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}; got {value!r}")
    return int(value)


def normal_log_pdf(x: Array, mu: Array, sd: Array, xp: Any = jnp) -> Array:
    """``ln N(x | mu, sd)``, normalised."""
    z = (x - mu) / sd
    return -0.5 * z * z - xp.log(sd) - LOG_SQRT_2PI


def log_likelihood_u(u: Array, parallax: Array, parallax_error: Array, xp: Any = jnp) -> Array:
    """``ln N(w | 1000 e^-u, s)`` of a parallax ``w`` (mas) at ``u = ln(r / pc)``, normalised."""
    return normal_log_pdf(1000.0 * xp.exp(-u), parallax, parallax_error, xp)


def likelihood_bracket(parallax: Array, parallax_error: Array, k: float, xp: Any = jnp) -> tuple[Array, Array]:
    """``(u_lo, u_hi)``: the ``ln r`` interval outside which the likelihood is below ``exp(-k^2/2)`` of its peak.

    The parallax interval is ``w +- d`` with ``d = sqrt(max(-w, 0)^2 + (k s)^2)``
    (wider for negative parallaxes, whose likelihood peaks at infinite
    distance). ``u_hi`` is ``inf`` when the interval reaches zero parallax.
    """
    w, s = parallax, parallax_error
    d = xp.sqrt(xp.square(xp.maximum(w, 0.0) - w) + xp.square(k * s))
    u_lo = xp.log(1000.0 / (w + d))
    wl = w - d
    positive = wl > 0
    u_hi = xp.where(positive, xp.log(1000.0 / xp.where(positive, wl, 1.0)), xp.inf)
    return u_lo, u_hi


def log_likelihood_offset(x0: Array, d: Array, parallax: Array, parallax_error: Array) -> Array:
    """``ln N(w | 1000 e^-(u0 + d), s) - ln N(w | x0, s)`` with ``x0 = 1000 e^-u0`` (mas).

    Written as ``-(x - x0) (x + x0 - 2 w) / (2 s^2)`` with ``x - x0 = x0 expm1(-d)``,
    so it keeps its relative accuracy in float32 where both terms are huge
    (``w / s = -1000`` puts them near ``-5e5``).
    """
    dx = x0 * jnp.expm1(-d)
    return -dx * (2.0 * (x0 - parallax) + dx) / (2.0 * parallax_error * parallax_error)


def bisect(inside: Callable[[Array], Array], lo: Array, hi: Array, steps: int) -> tuple[Array, Array]:
    """Vectorised bisection: ``(lo, hi)`` after ``steps`` halvings.

    ``inside(x)`` is a boolean array; each step moves ``lo`` to the midpoint
    where it is true and ``hi`` where it is false. When ``inside`` is true at
    and left of some point and false right of it, the final ``[lo, hi]`` holds
    that point; ``lo`` never leaves the true side, ``hi`` the false one.
    The steps run in a ``fori_loop``, so that XLA keeps each step's state in
    memory rather than recomputing the chain of selections wherever the
    result is used.
    """

    def step(_: int, state: tuple[Array, Array]) -> tuple[Array, Array]:
        lo, hi = state
        mid = 0.5 * (lo + hi)
        ok = inside(mid)
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    return jax.lax.fori_loop(0, steps, step, (lo, hi))


def hermite(t: Array, v0: Array, m0: Array, v1: Array, m1: Array) -> Array:
    """Cubic Hermite interpolant on ``t`` in [0, 1] with end values ``v`` and slopes ``m`` (per unit ``t``)."""
    t2 = t * t
    t3 = t2 * t
    return (2 * t3 - 3 * t2 + 1) * v0 + (t3 - 2 * t2 + t) * m0 + (-2 * t3 + 3 * t2) * v1 + (t3 - t2) * m1


def hermite_derivative(t: Array, v0: Array, m0: Array, v1: Array, m1: Array) -> Array:
    """``d/dt`` of :func:`hermite`."""
    t2 = t * t
    return (6 * t2 - 6 * t) * v0 + (3 * t2 - 4 * t + 1) * m0 + (-6 * t2 + 6 * t) * v1 + (3 * t2 - 2 * t) * m1


def separated_peaks(f: Array, *, min_peak: float = 1e-2, min_dip: float = 1e-2) -> Array:
    """Whether each row of a density ``f`` (nodes along axis 1, maximum 1) has two separated peaks.

    The test of :attr:`~gaia_distances.core.quadrature.DistanceFlag.MULTIMODAL`.
    Two peaks count when each reaches ``min_peak`` (1 % of the highest) and
    the density between them falls more than ``min_dip`` (1 %, far above the
    density's rounding, ~1e-6 relative in float32) below the lower one: a node
    ``j`` with ``f_j < (1 - min_dip) min(max_{i<=j} f_i, max_{k>=j} f_k)`` and
    that minimum at least ``min_peak``. The test reads the density's values,
    not its neighbours', so it does not depend on the grid's resolution: the
    rounding ripples of a flat top on a fine grid (relative height ~1e-6) are
    no peaks, and a real valley is found at any resolution that samples it.

    Examples
    --------
    >>> f = jnp.array([[0.1, 1.0, 0.99999, 1.0, 0.2], [0.1, 1.0, 0.3, 0.5, 0.0]])
    >>> separated_peaks(f, min_peak=1e-2, min_dip=1e-2).tolist()
    [False, True]
    """
    lower = jnp.minimum(jax.lax.cummax(f, axis=1), jax.lax.cummax(f, axis=1, reverse=True))
    return jnp.any((lower >= min_peak) & (f < (1.0 - min_dip) * lower), axis=1)


def invert_cdf(
    cdf: Array,
    q: float,
    slope: Array | None = None,
    *,
    n_newton: int = 4,
    width: Array | None = None,
    binary_search: bool = False,
) -> tuple[Array, Array]:
    """Where a tabulated CDF reaches ``q``: ``(i, t)`` with the crossing at node ``i + t``.

    ``cdf`` has shape ``(n, K)``, non-decreasing along its last axis. Without
    ``slope`` the CDF is interpolated linearly between nodes; with ``slope``
    (``dC/dt`` per node interval, shape ``(n, K)``) the cubic Hermite
    interpolant is inverted by ``n_newton`` Newton steps (error ``O(h^4)``).
    When the intervals differ in length, pass ``slope`` as the density
    ``dC/du`` at each node and ``width`` (shape ``(n, K)``) as the length of
    the interval from each node to the next. ``binary_search=True`` finds the
    interval by bisection (``log2 K`` look-ups into a CDF held in memory)
    instead of comparing every node with ``q``; the two agree on
    non-decreasing rows.
    """
    K = cdf.shape[1]
    if binary_search:
        below = jax.vmap(lambda row: jnp.searchsorted(row, q, side="left", method="scan"))(cdf)
    else:
        below = jnp.sum(cdf < q, axis=1)
    i = jnp.clip(below - 1, 0, K - 2)[:, None]
    c0 = jnp.take_along_axis(cdf, i, axis=1)[:, 0]
    c1 = jnp.take_along_axis(cdf, i + 1, axis=1)[:, 0]
    t = jnp.clip((q - c0) / jnp.where(c1 > c0, c1 - c0, 1.0), 0.0, 1.0)
    if slope is not None:
        m0 = jnp.take_along_axis(slope, i, axis=1)[:, 0]
        m1 = jnp.take_along_axis(slope, i + 1, axis=1)[:, 0]
        if width is not None:
            h = jnp.take_along_axis(width, i, axis=1)[:, 0]
            m0, m1 = m0 * h, m1 * h
        for _ in range(n_newton):
            val = hermite(t, c0, m0, c1, m1)
            der = hermite_derivative(t, c0, m0, c1, m1)
            t = jnp.clip(t - (val - q) / jnp.maximum(der, 1e-30), 0.0, 1.0)
    return i[:, 0], t


class Chunk(NamedTuple):
    """One fixed-size chunk of ``n`` rows: output rows ``[start, stop)`` and the padded row indices."""

    start: int
    stop: int
    rows: np.ndarray  # (size,): rows start..start+size-1, the last real row repeated as padding


def chunk_length(n: int, chunk_size: int) -> int:
    """Rows per chunk: ``chunk_size``, or the next power of two (at least 16) above ``n`` when smaller.

    Rounding small tables up to a power of two lets repeated calls on tables
    of similar size reuse one compiled program.
    """
    return int(min(chunk_size, 1 << max(4, (max(n, 1) - 1).bit_length())))


def padded_chunks(n: int, chunk_size: int) -> Iterator[Chunk]:
    """Equal-size chunks covering ``n`` rows; the last is padded by repeating row ``n - 1``."""
    size = chunk_length(n, chunk_size)
    for start in range(0, n, size):
        yield Chunk(start, min(start + size, n), np.minimum(np.arange(start, start + size), n - 1))


def trapezoid_nodes(
    parallax: np.ndarray,
    parallax_error: np.ndarray,
    u_lo_like: np.ndarray,
    u_hi_like: np.ndarray,
    u_lo_prior: float,
    u_hi_prior: float,
    *,
    n_nodes: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Uniform trapezoid nodes in ``u`` on the likelihood's bracket intersected with a prior's support.

    Returns the nodes ``(n, K)`` and ``ln(trapezoid weight) + ln N(w | 1000 e^-u, s)``
    at them. Where the two do not overlap the likelihood's bracket is used (capped 5
    above the prior's end).
    """
    w, s = parallax, parallax_error
    a = np.maximum(u_lo_like, u_lo_prior)
    b = np.minimum(u_hi_like, u_hi_prior)
    bad = ~(b > a)
    a = np.asarray(np.where(bad, u_lo_like, a))
    b = np.asarray(np.where(bad, np.minimum(u_hi_like, u_hi_prior + 5), b))
    t = np.linspace(0.0, 1.0, n_nodes)
    u = a[:, None] + (b - a)[:, None] * t
    h = (b - a) / (n_nodes - 1)
    trap = np.full(n_nodes, 1.0)
    trap[[0, -1]] = 0.5
    loglike = log_likelihood_u(u, w[:, None], s[:, None], xp=np)
    log_weight = np.log(h)[:, None] + np.log(trap)[None, :] + loglike
    return u, log_weight


@functools.lru_cache(maxsize=16)
def gauss_hermite(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``x`` and log weights of the ``n``-point Gauss-Hermite rule for ``E[f(x)]``, ``x ~ N(0, 1)``.

    ``E[f] ~ sum_k exp(log_w_k) f(x_k)``, exact for polynomials of degree
    ``2 n - 1``; the weights sum to 1.

    Examples
    --------
    >>> x, log_w = gauss_hermite(3)
    >>> np.round(x, 6).tolist(), np.round(np.exp(log_w) * 6.0, 6).tolist()
    ([-1.732051, 0.0, 1.732051], [1.0, 4.0, 1.0])
    >>> x, log_w = gauss_hermite(10)
    >>> float(np.round(np.sum(np.exp(log_w) * x**4), 12))
    3.0
    """
    x, w = np.polynomial.hermite_e.hermegauss(n)  # weight exp(-x^2 / 2)
    x.setflags(write=False)
    log_w = np.log(w / math.sqrt(2.0 * math.pi))
    log_w.setflags(write=False)
    return x, log_w


def correlation_matrices(rho: np.ndarray) -> np.ndarray:
    """``(..., 3, 3)`` correlation matrices of (parallax, pmra, pmdec) from ``rho`` ``(..., 3)``:
    ``(parallax_pmra, parallax_pmdec, pmra_pmdec)``."""
    rho = np.asarray(rho, float)
    m = np.broadcast_to(np.eye(3), (*rho.shape[:-1], 3, 3)).copy()
    for k, (i, j) in enumerate(((0, 1), (0, 2), (1, 2))):
        m[..., i, j] = m[..., j, i] = rho[..., k]
    return m


def positive_definite_correlations(rho: np.ndarray, *, min_eigenvalue: float = 0.05) -> np.ndarray:
    """Shrink off-diagonal correlations so every 3x3 correlation matrix is positive definite.

    ``rho`` is ``(..., 3)`` as in :func:`correlation_matrices`; a non-finite
    correlation counts as 0 for the repair (and stays as it is). A matrix whose smallest eigenvalue is below
    ``min_eigenvalue`` has its off-diagonal part scaled by the one factor
    that lifts that eigenvalue to ``min_eigenvalue`` (``R = I + O`` has
    eigenvalues ``1 + lambda(O)``); the others are returned unchanged. Every
    correlation of the result is then within ``1 - min_eigenvalue`` of +-1.

    Examples
    --------
    >>> r = positive_definite_correlations(np.array([[0.9, 0.9, -0.9], [0.2, -0.1, 0.3]]))
    >>> bool(np.linalg.eigvalsh(correlation_matrices(r)).min() >= 0.05 - 1e-12), r[1].tolist()
    (True, [0.2, -0.1, 0.3])
    """
    rho = np.asarray(rho, float)
    off = correlation_matrices(np.nan_to_num(rho)) - np.eye(3)
    lam = np.linalg.eigvalsh(off)[..., 0]  # <= 0: the off-diagonal part has zero trace
    limit = 1.0 - min_eigenvalue
    scale = np.where(lam < -limit, limit / np.maximum(-lam, limit), 1.0)
    return rho * scale[..., None]
