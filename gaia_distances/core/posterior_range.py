"""The integration range of a star's distance posterior in ``u = ln(r / pc)``.

The posterior is ``g(u) = ln p(u) + l(u)`` up to a constant, with
``l = -(1000 e^-u - w)^2 / (2 s^2)`` for a parallax ``w`` and error ``s`` (mas).

For the built-in priors (and the numpyro families in
:data:`~gaia_distances.core.priors.LOG_CONCAVE_DISTRIBUTIONS`) the range
``[a, b]`` provably holds all but ``3 e^-M`` of the posterior mass
(``M = scan_drop``, 30 by default), by these facts:

- ``ln p(u)`` is concave; ``l`` is increasing below ``u_w = ln(1000 / w)``
  (everywhere when ``w <= 0``), decreasing above it, and concave below
  ``u_c = ln(2000 / w)`` (everywhere when ``w <= 0``). So ``g`` is concave
  on ``C = (-inf, u_c]``.
- The maximum ``v`` of ``g`` on ``C`` is found by bisection on the sign of
  ``g'``, and ``a`` and ``b_c`` by bisection where ``g`` falls ``M`` below
  ``g(v)``. For a concave ``g`` the mass beyond a point where it has
  fallen by ``M`` is at most ``e^-M / (1 - e^-M)`` of the mass between that
  point and the mode (the tangent bounds the tail, the chord the inside).
- Above ``u_c`` (only when ``w > 0``) ``l`` is decreasing, so the mass
  beyond ``u >= u_c`` is at most ``e^l(u) S(u)``, with ``S`` the prior's
  mass beyond ``u``: at most 1, and at most ``p(u) / |ln p'(u)|`` where
  the log prior falls (concavity). This bound is compared with a lower
  bound on the mass of ``C`` (the chords from ``v`` to ``a`` and ``b_c``);
  where it exceeds ``e^-M`` of it, ``b`` moves beyond ``u_c`` (bisection)
  until it does not.

The range is clipped to 1e-3..1e9 pc (the prior's own support edges are
kept exactly). Where a clip cuts more than ``1e-6`` of the mass (the
tangent bound at the clip), the row is flagged ``INACCURATE``. For other
user priors the range is found by a scan: the likelihood's
``k_like``-sigma bracket
(:func:`~gaia_distances.core.numerics.likelihood_bracket`) intersected
with the prior's ``1 - e^log_eps`` support, ``n_scan`` nodes over it, and
the region within ``M`` of the scan's maximum; that range is heuristic.

:func:`certified_range` implements the bound; :func:`scanned_range` the scan.
Both return a :class:`Range` per star, vectorised over stars (shapes ``(n,)``).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gaia_distances.core.numerics import Array, bisect, likelihood_bracket, log_likelihood_offset, log_likelihood_u
from gaia_distances.core.priors import GLOBAL_LOG_R_MAX, GLOBAL_LOG_R_MIN

__all__ = ["Range", "certified_range", "scanned_range"]

#: Bisection halvings for the mode (bracket width / 2^24 ~ 1.6e-6 in ln r).
_MODE_STEPS = 24
#: Bisection halvings for each end of the range.
_END_STEPS = 22
#: Fraction of the posterior mass a clipped range may leave out before the row is flagged.
_LOG_CLIP_TOL = math.log(1e-6)
#: Share of the nodes kept for the main peak when the range also covers a region above ``u_c``
#: that holds less than ``e^_LOG_MINOR`` of the mass.
_PEAK_SHARE = 0.75
_LOG_MINOR = math.log(1e-3)


class Range(NamedTuple):
    """A star's integration range ``[a, b]`` (ln pc) and the reference point ``v`` of the offsets.

    When a region above ``u_c`` follows the main peak, ``[a, m]`` (the peak)
    gets the fraction ``share`` of the nodes and ``[m, b]`` the rest; a
    ``share`` of 0 means one uniform grid. ``inaccurate``: the accuracy bound
    failed.
    """

    a: Array
    m: Array
    b: Array
    v: Array
    share: Array
    inaccurate: Array


def _domain(prior: Any, shape: tuple[int, ...], dtype: Any) -> tuple[Array, Array, Array, Array]:
    """``(lo, hi)``: the prior's ``ln r`` domain clipped to the global limits, and whether each end is a clip."""
    lo, hi = (jnp.broadcast_to(jnp.asarray(x, dtype), shape) for x in prior.log_domain())
    clip_lo, clip_hi = ~(lo > GLOBAL_LOG_R_MIN), ~(hi < GLOBAL_LOG_R_MAX)
    lo = jnp.where(clip_lo, GLOBAL_LOG_R_MIN, lo)
    hi = jnp.where(clip_hi, GLOBAL_LOG_R_MAX, jnp.maximum(hi, lo + 1e-6))
    return lo, hi, clip_lo, clip_hi


def certified_range(w: Array, s: Array, prior: Any, *, margin: float) -> Range:
    """The range of a log-concave prior, with the bound of the module docstring (shapes ``(n,)``)."""
    dtype = w.dtype
    d_lo, d_hi, clip_lo, clip_hi = _domain(prior, w.shape, dtype)
    pos = w > 0
    u_c = jnp.where(pos, jnp.log(2000.0 / jnp.where(pos, w, 1.0)), jnp.inf)
    has_r = u_c < d_hi  # a region above u_c, where g need not be concave
    c_hi = jnp.maximum(jnp.minimum(d_hi, u_c), d_lo)

    def prior_slope(u: Array) -> Array:
        return jax.jvp(prior.log_prob_logr, (u,), (jnp.ones_like(u),))[1]

    def slope(u: Array) -> Array:
        x = 1000.0 * jnp.exp(-u)
        return prior_slope(u) + x * (x - w) / (s * s)

    # the maximum v of g on the concave part [d_lo, c_hi]: g' > 0 left of it
    lo, hi = bisect(lambda u: slope(u) > 0, d_lo, c_hi, _MODE_STEPS)
    v = 0.5 * (lo + hi)
    x0 = 1000.0 * jnp.exp(-v)

    def delta(d: Array) -> Array:  # g(v + d) - g(v)
        return prior.log_prob_logr_offset(v, d) + log_likelihood_offset(x0, d, w, s)

    def above(d: Array) -> Array:
        return delta(d) >= -margin

    # where g stays within the margin up to an end of [d_lo, c_hi], the range stops there
    open_lo, open_hi = above(d_lo - v), above(c_hi - v)
    da_lo, _ = bisect(lambda d: ~above(d), d_lo - v, jnp.zeros_like(v), _END_STEPS)
    _, db_hi = bisect(above, jnp.zeros_like(v), c_hi - v, _END_STEPS)
    a, b_c = v + da_lo, v + db_hi
    drop_a = jnp.maximum(-delta(da_lo), 0.0)
    drop_b = jnp.maximum(-delta(db_hi), 0.0)

    def chord(drop: Array) -> Array:  # (1 - e^-D) / D, the mean of e^-D t over t in [0, 1]
        return jnp.where(drop > 1e-6, -jnp.expm1(-drop) / jnp.where(drop > 1e-6, drop, 1.0), 1.0)

    # ln of a lower bound on the posterior mass of [a, b_c], relative to e^g(v)
    log_inside = jnp.log((v - a) * chord(drop_a) + (b_c - v) * chord(drop_b))

    def tangent_tail(u: Array, sign: float) -> Array:
        """ln of the tangent bound e^g(u) / |g'(u)| on the mass beyond u (concave g), relative to e^g(v);
        ``sign`` is +1 for the upper tail (where g' < 0), -1 for the lower (g' > 0)."""
        g1 = sign * slope(u)
        return jnp.where(g1 < 0, delta(u - v) - jnp.log(jnp.where(g1 < 0, -g1, 1.0)), jnp.inf)

    cut_lo = clip_lo & open_lo & (tangent_tail(a, -1.0) > log_inside + _LOG_CLIP_TOL)

    # above u_c: ln bound of the mass beyond u >= u_c, relative to e^g(v)
    log_prior_v = prior.log_prob_logr(v)

    def beyond(u: Array) -> Array:  # l decreases above u_w < u_c; the prior is normalised and log-concave
        by_likelihood = log_likelihood_offset(x0, u - v, w, s) - log_prior_v
        p1 = prior_slope(u)
        by_prior = jnp.where(p1 < 0, delta(u - v) - jnp.log(jnp.where(p1 < 0, -p1, 1.0)), jnp.inf)
        return jnp.minimum(by_likelihood, by_prior)

    threshold = log_inside - margin
    u_r = jnp.where(has_r, u_c, d_hi)
    need_r = has_r & (beyond(u_r) > threshold)
    _, b_r = bisect(lambda u: beyond(u) > threshold, u_r, d_hi, _END_STEPS)
    b = jnp.where(need_r, b_r, b_c)
    cut_r = clip_hi & need_r & (beyond(d_hi) > log_inside + _LOG_CLIP_TOL)
    cut_c = clip_hi & ~has_r & open_hi & (tangent_tail(b_c, 1.0) > log_inside + _LOG_CLIP_TOL)
    # When the range goes on above u_c past a peak of g on C, the peak [a, b_c] keeps 3/4 of the
    # nodes if the region above may hold at most e^_LOG_MINOR of its mass, else half (and never
    # fewer than a uniform grid would give it); with no peak on C, one uniform grid.
    minor = beyond(u_r) < log_inside + _LOG_MINOR
    peaked = need_r & (slope(c_hi) < 0)
    share = jnp.where(minor, _PEAK_SHARE, 0.5)
    share = jnp.where(peaked & ((b_c - a) < share * (b - a)), share, 0.0)
    return Range(a, b_c, b, v, share, cut_lo | cut_r | cut_c)


def scanned_range(
    w: Array, s: Array, prior: Any, *, n_scan: int, k_like: float, margin: float, log_eps: float
) -> Range:
    """The heuristic range for other priors: bracket, scan, and the region within ``margin`` of the scan maximum."""
    dtype = w.dtype
    ulo_l, uhi_l = likelihood_bracket(w, s, k_like)
    ulo_p, uhi_p = (jnp.broadcast_to(x, w.shape).astype(dtype) for x in prior.log_support(log_eps))
    bad = ~(jnp.isfinite(ulo_p) & jnp.isfinite(uhi_p) & (uhi_p > ulo_p))
    ulo_p = jnp.where(bad, GLOBAL_LOG_R_MIN, ulo_p)
    uhi_p = jnp.where(bad, GLOBAL_LOG_R_MAX, uhi_p)
    a = jnp.maximum(ulo_l, ulo_p)
    b = jnp.minimum(uhi_l, uhi_p)
    conflict = ~(b > a)
    a = jnp.where(conflict, jnp.minimum(ulo_l, ulo_p), a)
    b = jnp.where(conflict, jnp.maximum(jnp.minimum(uhi_l, GLOBAL_LOG_R_MAX), uhi_p), b)
    a = jnp.clip(a, GLOBAL_LOG_R_MIN, GLOBAL_LOG_R_MAX)
    b = jnp.clip(b, GLOBAL_LOG_R_MIN, GLOBAL_LOG_R_MAX)
    b = jnp.maximum(b, a + 1e-6)

    pb = jax.tree_util.tree_map(lambda p: jnp.asarray(p)[:, None], prior)
    tc = jnp.linspace(0.0, 1.0, n_scan, dtype=dtype)
    uc = a[:, None] + (b - a)[:, None] * tc
    gc = pb.log_prob_logr(uc) + log_likelihood_u(uc, w[:, None], s[:, None])
    gc = jnp.where(jnp.isnan(gc), -jnp.inf, gc)
    top = jnp.argmax(gc, axis=1)
    gmax = jnp.max(gc, axis=1, keepdims=True)
    keep = gc > gmax - margin
    first = jnp.argmax(keep, axis=1)
    last = n_scan - 1 - jnp.argmax(keep[:, ::-1], axis=1)
    step = (b - a) / (n_scan - 1)
    ua = a + step * jnp.maximum(first - 1, 0)
    ub = a + step * jnp.minimum(last + 1, n_scan - 1)
    return Range(ua, ua, ub, a + step * top, jnp.zeros_like(ua), jnp.zeros(w.shape, bool))
