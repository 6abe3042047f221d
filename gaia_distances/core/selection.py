"""A parallax cut as a truncation: the probability that a star of each component passes it.

Fitting only the stars with ``lo < parallax < hi`` changes what the data are:
the selected parallaxes of the field are no longer distributed as the field's,
but as the field's *truncated* to the window. Left untruncated, the cut turns
the field into a bump and a cluster absorbs it. Here each component's
per-star likelihood is divided by the probability that a star of that
component, with that star's error, passes the cut:

    P_c,i = ∫ p_c(u) [Phi((hi_i - w(u)) / s_i) - Phi((lo_i - w(u)) / s_i)] du,

``w(u) = 1000 e^-u`` (mas). ``Q`` is then the cluster fraction among the
selected stars.

For a log-normal component (the cluster, a flexible-field bin) the integral
is a Gauss-Hermite rule over whichever of the two Gaussian variables is the
broader, with the other integrated in closed form, so the integrand is always
at least as smooth as the rule's weight (:func:`lognormal_log_pass`). For the
EDSD field the inner integral over distance is closed form (the EDSD's
survival function), and the outer one over the parallax error is
Gauss-Hermite, tabulated on the field table's ``ln L`` grid with its exact
slope (:func:`edsd_log_pass_table`).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr
from scipy.special import gammainc as scipy_gammainc
from scipy.special import gammaincc as scipy_gammaincc
from scipy.special import ndtr as scipy_ndtr

from gaia_distances.core.field_table import FieldTable, field_log_likelihood
from gaia_distances.core.numerics import Array, gauss_hermite

__all__ = [
    "LIMIT",
    "Truncation",
    "cluster_log_pass",
    "edsd_log_pass_table",
    "field_log_pass",
    "lognormal_log_pass",
    "prepare_truncation",
]

#: Limits beyond this many mas count as absent (kept finite so that gradients stay finite).
LIMIT = 1.0e6
#: Gauss-Hermite nodes of the pass-probability rules.
N_NODES = 24
#: Floor of a pass probability (its logarithm stays finite for a component the cut excludes).
TINY = 1e-30


class Truncation(NamedTuple):
    """Per-star limits of the fitted (zero-point corrected) parallax, and the field's pass probabilities.

    ``field`` tabulates the EDSD field's ``ln P`` and its ``d/d ln L`` on a
    grid of ``ln L`` (interpolated as the field's likelihood is);
    ``bins_log_pass`` holds ``ln P`` of each flexible-field bin. Only the one
    the model's field needs is set.
    """

    lo: Array  # (n,) mas
    hi: Array  # (n,) mas
    field: FieldTable | None = None  # the EDSD field's ln P on its own ln L grid, with the slope
    bins_log_pass: Array | None = None  # (n, bins)


def _gauss_hermite(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The rule's nodes and weights (not their logarithms)."""
    x, log_w = gauss_hermite(n)
    return x, np.exp(log_w)


def _pass(below_lo: Array, below_hi: Array, above_lo: Array, above_hi: Array, xp: Any = jnp) -> Array:
    """``P(lo < w_obs < hi)`` from ``P(w_obs < h)`` and ``P(w_obs > h)`` at both limits, without cancellation."""
    p = xp.where(below_lo > 0.5, above_lo - above_hi, below_hi - below_lo)
    return xp.maximum(p, TINY)


def _lognormal_side(log_D: Array, sigma: Array, s: Array, h: Array) -> tuple[Array, Array]:
    """``P(w_obs < h)`` and ``P(w_obs > h)`` for the log-normal component (trailing node axis added)."""
    x, wts = _gauss_hermite(N_NODES)
    # over u: the error's distribution function at each node's true parallax
    a = (h - 1000.0 * jnp.exp(-(log_D + sigma * x))) / s
    below_u, above_u = jnp.sum(wts * ndtr(a), axis=-1), jnp.sum(wts * ndtr(-a), axis=-1)
    # over the error: P(w_t < y) = Phi((log_D - ln(1000 / y)) / sigma) for y > 0, else 0
    y = h - s * x
    z = jnp.where(y > 0, (log_D - math.log(1000.0) + jnp.log(jnp.maximum(y, 1e-30))) / sigma, -1e3)
    z = jnp.maximum(z, -1e3)
    below_e, above_e = jnp.sum(wts * ndtr(z), axis=-1), jnp.sum(wts * ndtr(-z), axis=-1)
    # the rule runs over the variable in which its integrand is smoother: over u the error's step
    # (width s / h in u) matters if it falls within the component; over the error the component's
    # step (width sigma w_D in parallax, at w_D = 1000 / D) if it falls within the error's range
    h_pos = jnp.maximum(h, 1e-30)[..., 0]
    sig, err, w_d = sigma[..., 0], s[..., 0], 1000.0 * jnp.exp(-log_D[..., 0])
    smooth_u = jnp.maximum(err / (sig * h_pos), jnp.abs(jnp.log(h_pos / w_d)) / (6.0 * sig))
    smooth_e = jnp.maximum(sig * w_d / err, jnp.abs(h[..., 0] - w_d) / (6.0 * err))
    over_u = (h[..., 0] <= 0) | (smooth_u >= smooth_e)
    return jnp.where(over_u, below_u, below_e), jnp.where(over_u, above_u, above_e)


def lognormal_log_pass(log_D: Array, sigma: Array, parallax_error: Array, lo: Array, hi: Array) -> Array:
    """``ln P(lo < w_obs < hi)`` for ``w_obs ~ N(1000 e^-u, s)``, ``u ~ N(log_D, sigma)`` (broadcasting).

    Each limit's ``P(w_obs < h)`` is a Gauss-Hermite rule over ``u`` when the
    error's step in ``u`` (``s / h``) is wider than the component, with the
    error's distribution function in closed form; otherwise over the error,
    with the component's log-normal distribution function in closed form.
    """
    log_D, sigma, s, lo, hi = (jnp.asarray(a)[..., None] for a in (log_D, sigma, parallax_error, lo, hi))
    below_lo, above_lo = _lognormal_side(log_D, sigma, s, lo)
    below_hi, above_hi = _lognormal_side(log_D, sigma, s, hi)
    return jnp.log(_pass(below_lo, below_hi, above_lo, above_hi))


def _edsd_below_above(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For ``x = r / L``: the EDSD's survival ``S = e^-x (1 + x + x^2/2)``, ``1 - S`` and ``dS / d ln L``.

    ``S`` and ``1 - S`` are the regularised incomplete gamma functions ``Q(3, x)`` and ``P(3, x)``, each
    accurate where it is small (no cancellation).
    """
    x = np.asarray(x, float)
    surv, lower = scipy_gammaincc(3.0, x), scipy_gammainc(3.0, x)
    e = np.exp(-x)
    return surv, lower, 0.5 * e * x**3


#: Step in ``ln r`` of the trapezoid rule of :func:`_edsd_trapezoid`; each ``L``'s EDSD is integrated from
#: ``ln L - 10`` to ``ln L + 4.3`` (or beyond), outside which its mass is below 1e-12. Where a cut lies in
#: the EDSD's far tail (beyond about 20 L, where it falls by e within 0.05 in ``ln r``) twice this step
#: left errors of up to 8e-4 in ``ln P`` (``test_the_edsd_table_resolves_the_priors_far_tail``).
_TRAPEZOID_STEP = 14.3 / 718


def _edsd_trapezoid(s: np.ndarray, h: np.ndarray, L: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``P(w_obs < h)``, ``P(w_obs > h)`` and the first's ``d/d ln L`` under ``EDSD(L)`` by the trapezoid rule over
    ``ln r``; ``s, h`` (n, 1), ``L`` (1, J).

    Every ``L`` shares one grid of nodes in ``ln r``, so the error's distribution function is evaluated
    once per star and node (not per ``L`` as well), and each ``L``'s sum is a product with its EDSD
    weights.
    """
    log_L = np.log(L[0])
    u = np.arange(log_L.min() - 10.0, log_L.max() + 4.3 + _TRAPEZOID_STEP, _TRAPEZOID_STEP)
    # the EDSD in ln r times the step, (K, J)
    ratio = np.exp(u)[:, None] / L
    p = np.exp(3.0 * (u[:, None] - log_L) - ratio - math.log(2.0)) * _TRAPEZOID_STEP
    a = (h - 1000.0 * np.exp(-u)) / s  # (n, K)
    phi, phi_c = scipy_ndtr(a), scipy_ndtr(-a)  # on the host: the table is float64 NumPy
    return phi @ p, phi_c @ p, phi @ (p * (ratio - 3.0))


def _edsd_error_rule(s: np.ndarray, h: np.ndarray, L: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``P(w_obs < h)``, ``P(w_obs > h)`` and the first's ``d/d ln L`` under ``EDSD(L)`` by a Gauss-Hermite
    rule over the error; ``s, h`` (n, 1), ``L`` (1, J)."""
    x, wts = _gauss_hermite(2 * N_NODES)
    # P(w_t < y) = S(1000 / (y L)), 0 for y <= 0
    y = h[..., None] - s[..., None] * x
    t = np.where(y > 0, 1000.0 / (np.maximum(y, 1e-300) * L[..., None]), np.inf)
    surv, lower, d_surv = (np.nan_to_num(a) for a in _edsd_below_above(t))
    surv, d_surv = np.where(y > 0, surv, 0.0), np.where(y > 0, d_surv, 0.0)
    lower = np.where(y > 0, lower, 1.0)
    below, above, slope = (np.sum(wts * a, axis=-1) for a in (surv, lower, d_surv))
    return below, above, slope


def _edsd_side(s: np.ndarray, h: np.ndarray, L: np.ndarray) -> tuple[np.ndarray, ...]:
    """``P(w_obs < h)``, ``P(w_obs > h)`` and their ``d/d ln L`` under ``EDSD(L)``; ``s, h`` (n, 1), ``L`` (1, J).

    Each star and ``L`` takes the rule over the error where the EDSD's parallax density varies slowly over
    ``s`` near ``h`` (that rule is smooth there), else the trapezoid rule over ``ln r``; each rule is
    evaluated only for the stars that take it somewhere.
    """
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        xh = 1000.0 / (np.maximum(h, 1e-300) * L)
        over_e = (h > 0) & (s < 0.5 * h / (4.0 + xh))  # (n, J)
        result = np.zeros((3, *over_e.shape))
        needs_u = ~over_e.all(axis=1)
        if needs_u.any():
            result[:, needs_u] = _edsd_trapezoid(s[needs_u], h[needs_u], L)
        needs_e = over_e.any(axis=1)
        if needs_e.any():
            by_error = np.stack(_edsd_error_rule(s[needs_e], h[needs_e], L))
            result[:, needs_e] = np.where(over_e[needs_e], by_error, result[:, needs_e])
    return tuple(result)


def edsd_log_pass_table(
    parallax_error: np.ndarray, lo: np.ndarray, hi: np.ndarray, log_L_grid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``ln P(lo < w_obs < hi | EDSD(L))`` per star on a grid of ``ln L``, and its ``d/d ln L`` (float64).

    ``P(w_t < y) = S(1000 / y; L)``, the EDSD's survival function
    ``e^-x (1 + x + x^2 / 2)`` at ``x = 1000 / (y L)``, whose ``d/d ln L`` is
    ``e^-x x^3 / 2``. Each limit is a Gauss-Hermite rule over the error when
    the EDSD's parallax density varies slowly on the error's scale, else a
    trapezoid rule over ``ln r`` with the error's distribution function.
    """
    from gaia_distances.core.quadrature import x64_context

    s = np.asarray(parallax_error, float)[:, None]
    L = np.exp(np.asarray(log_L_grid, float))[None, :]
    with x64_context(True):
        below_lo, above_lo, d_lo = _edsd_side(s, np.asarray(lo, float)[:, None], L)
        below_hi, above_hi, d_hi = _edsd_side(s, np.asarray(hi, float)[:, None], L)
        p = np.asarray(_pass(below_lo, below_hi, above_lo, above_hi, xp=np))
        return np.log(p), np.asarray(d_hi - d_lo) / p


def prepare_truncation(
    parallax_error: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    *,
    L_range: tuple[float, float] | None = None,
    n_L: int = 32,
    bin_centres: np.ndarray | None = None,
    bin_width: float | None = None,
    chunk_size: int = 512,
) -> Truncation:
    """The per-star :class:`Truncation` of a field (limits in mas of the fitted parallax).

    With ``L_range`` (pc) the EDSD field's pass probability is tabulated on
    ``n_L`` values of ``ln L``; with ``bin_centres`` (in ``u``) and
    ``bin_width`` each flexible-field bin's.
    """
    s = np.asarray(parallax_error, float)
    lo = np.clip(np.asarray(lo, float), -LIMIT, LIMIT)
    hi = np.clip(np.asarray(hi, float), -LIMIT, LIMIT)
    if np.any(~(lo < hi)):
        raise ValueError("every star's lower parallax limit must lie below its upper one")
    table = bins = None
    if L_range is not None:
        grid = np.linspace(math.log(L_range[0]), math.log(L_range[1]), n_L)
        value, slope = np.zeros((s.size, n_L)), np.zeros((s.size, n_L))
        for start in range(0, s.size, chunk_size):
            rows = slice(start, start + chunk_size)
            value[rows], slope[rows] = edsd_log_pass_table(s[rows], lo[rows], hi[rows], grid)
        table = FieldTable(np.asarray(grid[0]), np.asarray(grid[1] - grid[0]), value, slope)
    if bin_centres is not None:
        width = float(bin_width) if bin_width is not None else 1.0
        c = np.asarray(bin_centres, float)[None, :]
        args = (c, np.full_like(c, width), s[:, None], lo[:, None], hi[:, None])
        bins = np.asarray(lognormal_log_pass(*args), dtype=float)
    return Truncation(lo, hi, table, bins)


def field_log_pass(truncation: Truncation, *, log_L: Array | None = None, log_w: Array | None = None) -> Array:
    """``ln P_field`` per star: the EDSD's at ``log_L``, or the flexible field's for bin log weights ``log_w``."""
    if log_w is not None and truncation.bins_log_pass is not None:
        return jax.nn.logsumexp(log_w[None, :] + truncation.bins_log_pass, axis=1)
    if log_L is not None and truncation.field is not None:
        return field_log_likelihood(log_L, truncation.field)
    raise ValueError("the truncation was prepared for another field model")


def cluster_log_pass(truncation: Truncation, parallax_error: Array, log_D: Array, log_sigma: Array) -> Array:
    """``ln P_cluster`` per star at the cluster's ``(ln D, ln sigma)``."""
    return lognormal_log_pass(log_D, jnp.exp(log_sigma), parallax_error, truncation.lo, truncation.hi)
