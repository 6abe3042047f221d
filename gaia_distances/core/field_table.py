"""The field component's per-star likelihood, tabulated over the field length scale.

The field integral ``∫ EDSD_u(u; L) N(w | 1000 e^-u, s) du`` depends on the
single global ``L``, so it is computed once per star on a uniform grid of
``ln L`` with fine quadrature (:func:`precompute_field_table`) and evaluated
by cubic Hermite interpolation (C1, error ``O(h^4)``) at every NUTS step
(:func:`field_log_likelihood`): a few flops per star instead of one
exponential per node.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gaia_distances.core.components import field_log_density_u
from gaia_distances.core.numerics import Array, hermite, likelihood_bracket, padded_chunks, trapezoid_nodes

__all__ = [
    "FieldNodes",
    "FieldTable",
    "field_log_likelihood",
    "field_moments",
    "precompute_field_nodes",
    "precompute_field_table",
]


class FieldNodes(NamedTuple):
    """Per-star nodes in ``u = ln r`` with the log likelihood (and trapezoid weights) folded in."""

    u: Array  # (n, K) nodes
    log_weight: Array  # (n, K): ln(trapezoid weight) + ln N(w | 1000 e^-u, s)


def precompute_field_nodes(
    parallax: np.ndarray,
    parallax_error: np.ndarray,
    *,
    n_nodes: int = 48,
    L_range: tuple[float, float] = (30.0, 20000.0),
    k_like: float = 9.0,
) -> FieldNodes:
    """Nodes covering each star's likelihood x any field prior with ``L`` in ``L_range`` (pc).

    The range is the likelihood's ``k_like``-sigma parallax interval
    (:func:`~gaia_distances.core.numerics.likelihood_bracket`) intersected with
    the EDSD support for the extreme length scales. The trapezoid rule in
    ``u`` converges geometrically for these smooth, decaying integrands.
    """
    w = np.asarray(parallax, float)
    s = np.asarray(parallax_error, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        u_lo_like, u_hi_like = likelihood_bracket(w, s, k_like, xp=np)
    # EDSD mass below x L is < x^3 / 6; above 2 (3 + t) L is < e^-t
    u_lo_prior = math.log(L_range[0]) + (math.log(6.0) - 30.0) / 3.0
    u_hi_prior = math.log(L_range[1]) + math.log(2.0 * (3.0 + 30.0))
    return FieldNodes(*trapezoid_nodes(w, s, u_lo_like, u_hi_like, u_lo_prior, u_hi_prior, n_nodes=n_nodes))


class FieldTable(NamedTuple):
    """``ln p(w_i | field, L)`` tabulated on a uniform ``ln L`` grid, with its slope."""

    log_L0: Array  # scalar: first grid value
    step: Array  # scalar: grid spacing in ln L
    value: Array  # (n, J)
    slope: Array  # (n, J): d value / d ln L
    mean: Array | None = None  # (n, J): E[w_t] under the field posterior (kinematic models only)
    second: Array | None = None  # (n, J): E[w_t^2]

    def L_range(self) -> tuple[float, float]:
        """The range of ``L`` (pc) the table covers."""
        lo = float(self.log_L0)
        return math.exp(lo), math.exp(lo + float(self.step) * (self.value.shape[1] - 1))

    def log_L_grid(self) -> np.ndarray:
        """The grid of ``ln L``."""
        return float(self.log_L0) + float(self.step) * np.arange(self.value.shape[1])


@functools.partial(jax.jit, static_argnames="moments")
def _field_integrals(u: Array, log_weight: Array, log_L: Array, moments: bool) -> tuple[Array, ...]:
    """``ln ∫ EDSD_u(u; L) like du``, its ``d/d ln L`` and, with ``moments``, ``E[w_t]``, ``E[w_t^2]``."""
    uu = u[:, None, :]
    ll = log_L[None, :, None]
    log_terms = log_weight[:, None, :] + field_log_density_u(uu, ll)
    value = jax.nn.logsumexp(log_terms, axis=2)
    post = jnp.exp(log_terms - value[..., None])
    # d/d ln L of the EDSD in u: r / L - 3
    slope = jnp.sum(post * (jnp.exp(uu - ll) - 3.0), axis=2)
    if not moments:
        return value, slope
    w_t = 1000.0 * jnp.exp(-uu)
    return value, slope, jnp.sum(post * w_t, axis=2), jnp.sum(post * w_t * w_t, axis=2)


def precompute_field_table(
    parallax: np.ndarray,
    parallax_error: np.ndarray,
    L_range: tuple[float, float],
    *,
    n_L: int = 96,
    n_nodes: int = 160,
    chunk_size: int = 2048,
    moments: bool = False,
) -> FieldTable:
    """Tabulate each star's field likelihood over ``ln L`` in ``L_range`` (pc).

    With ``moments`` the table also holds the first two moments of the star's
    true parallax under the field (what the proper-motion term needs).
    """
    grid = np.linspace(math.log(L_range[0]), math.log(L_range[1]), n_L)
    nodes = precompute_field_nodes(parallax, parallax_error, n_nodes=n_nodes, L_range=L_range)
    n = len(parallax)
    value, slope, mean, second = (np.zeros((n, n_L)) for _ in range(4))
    dtype = jnp.asarray(0.0).dtype
    g = jnp.asarray(grid, dtype)
    for chunk in padded_chunks(n, chunk_size):
        out = _field_integrals(
            jnp.asarray(nodes.u[chunk.rows], dtype), jnp.asarray(nodes.log_weight[chunk.rows], dtype), g, moments
        )
        m = chunk.stop - chunk.start
        for dest, x in zip((value, slope, mean, second), out, strict=False):
            dest[chunk.start : chunk.stop] = np.asarray(x)[:m]
    extra = (mean, second) if moments else (None, None)
    return FieldTable(np.asarray(grid[0]), np.asarray(grid[1] - grid[0]), value, slope, *extra)


def field_log_likelihood(log_L: Array, table: FieldTable) -> Array:
    """``ln p(w_i | field, L)`` per star: cubic Hermite interpolation of the table at ``ln L``.

    Outside the table the value is extended linearly with the end slope.
    """
    J = table.value.shape[1]
    t = (log_L - table.log_L0) / table.step
    i = jnp.clip(jnp.floor(t), 0, J - 2).astype(jnp.int32)
    x = t - i

    def column(a: Array, k: Array) -> Array:
        return jax.lax.dynamic_index_in_dim(a, k, axis=1, keepdims=False)

    v0, v1 = column(table.value, i), column(table.value, i + 1)
    m0, m1 = column(table.slope, i) * table.step, column(table.slope, i + 1) * table.step
    inner = hermite(jnp.clip(x, 0.0, 1.0), v0, m0, v1, m1)
    # linear extension beyond the ends
    return inner + jnp.where(x < 0, x * m0, 0.0) + jnp.where(x > 1, (x - 1) * m1, 0.0)


def field_moments(log_L: Array, table: FieldTable) -> tuple[Array, Array]:
    """``E[w_t]`` and ``Var[w_t]`` (mas, mas^2) per star under the field at ``ln L``: linear interpolation."""
    if table.mean is None or table.second is None:
        raise ValueError("the field table was computed without moments (precompute_field_table(moments=True))")
    J = table.value.shape[1]
    t = jnp.clip((log_L - table.log_L0) / table.step, 0.0, J - 1.0)
    i = jnp.clip(jnp.floor(t), 0, J - 2).astype(jnp.int32)
    x = t - i

    def lerp(a: Array) -> Array:
        a0 = jax.lax.dynamic_index_in_dim(a, i, axis=1, keepdims=False)
        a1 = jax.lax.dynamic_index_in_dim(a, i + 1, axis=1, keepdims=False)
        return a0 + x * (a1 - a0)

    mean = lerp(table.mean)
    return mean, jnp.maximum(lerp(table.second) - jnp.square(mean), 0.0)
