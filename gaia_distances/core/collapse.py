"""A term's parameter integrated out of the sampler on a grid, then drawn again from its conditional.

Some parameters enter nothing but one term's cluster log terms: without the
perspective projection, the members' mean radial velocity ``v_r`` enters the
radial-velocity term alone (:meth:`~gaia_distances.core.term.Term.integrable`).
Its posterior can be skewed, even multimodal, where a handful of bright
members with 0.2 km/s errors disagree (one of them a binary), and NUTS then
needs many more draws for the same tail ESS. The sampler instead works on
the *collapsed* model (``ClusterModel(collapsed=True)``: ``z`` without that
parameter), whose likelihood integrates it out on a grid of
:data:`GRID_NODES` nodes (:class:`~gaia_distances.core.terms.GridIntegral`):
only the stars with the term's data are evaluated at every node, the others
once. The grid is laid out once per field from the MAP and its Laplace
covariance (:func:`parameter_grid`). Afterwards each draw's value of the
parameter is drawn from its exact conditional given the draw's other
parameters (:func:`expand_draws`, on a grid four times finer), so that the
draws are the full model's, for every per-star result and diagnostic.

The grid is checked at every draw (:class:`GridCheck`): the conditional's
mass on the two outermost nodes at either end (the grid must hold it) and
the change of the integral on a grid four times finer (the grid must
resolve it: that change is the error of the integral the sampler used).
Where either fails, the caller samples the parameter directly instead.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import logsumexp

from gaia_distances.core.exported import Program
from gaia_distances.core.likelihood import (
    StarData,
    component_log_likelihoods,
    on_device,
    on_host,
    per_star_map,
    weighted_log_likelihoods,
)
from gaia_distances.core.numerics import Array
from gaia_distances.core.population import ClusterModel, Population, to_population
from gaia_distances.core.terms import TERMS, GridIntegral, integrated_parameter, node_log_integrand

__all__ = [
    "EDGE_MASS",
    "GRID_NODES",
    "RESOLUTION",
    "GridCheck",
    "collapsed_model",
    "draw_piecewise_linear",
    "expand_draws",
    "grid_check",
    "parameter_grid",
    "with_grid",
    "worth_collapsing",
]

#: Nodes of the grid the sampler integrates over.
GRID_NODES = 129
#: The grid of the draws and of the check on the resolution is this many times finer.
FINER = 4
#: The grid reaches this many prior sds on either side of the MAP.
SPAN = 4.0
#: Largest conditional mass allowed on the two outermost nodes at either end of the grid.
EDGE_MASS = 1e-3
#: Largest change of the log integral allowed on the grid :data:`FINER` times finer (the error of the
#: integral the sampler used).
RESOLUTION = 0.02
#: The rows with the term's data are padded to a multiple of this.
ROW_STEP = 16


def collapsed_model(model: ClusterModel) -> ClusterModel | None:
    """``model`` with its integrable parameter out of ``z`` (``None`` where it has none)."""
    if model.collapsed or integrated_parameter(model) is None:
        return None
    return model._replace(collapsed=True)


def worth_collapsing(cov: np.ndarray | None, model: ClusterModel) -> bool:
    """Whether the sampler should integrate ``model``'s integrable parameter out, from the MAP's Laplace
    covariance: where its sd exceeds what the term declares (:attr:`~gaia_distances.core.term.Term.integrate_above`;
    also without a covariance)."""
    name, param = _integrated(model)
    var = math.nan if cov is None else float(cov[model.position(param), model.position(param)])
    return not math.isfinite(var) or math.sqrt(max(var, 0.0)) > TERMS[name].integrate_above


def parameter_grid(z: np.ndarray, cov: np.ndarray | None, model: ClusterModel) -> tuple[np.ndarray, float]:
    """The grid's nodes for ``model``'s integrable parameter, and their scale, from the MAP ``z`` and the
    Laplace covariance ``cov`` (of the full model).

    The nodes are ``x = x_MAP + s sinh(t)`` for :data:`GRID_NODES` equally spaced ``t``, with ``s`` the
    parameter's conditional Laplace sd (the width of the conditional the grid must resolve), out to
    ``SPAN`` prior sds on either side of the MAP: dense where the conditional's mass is, sparse in the
    tails that a binary's broad component gives it, and no tail left out. The trapezoid rule in ``t`` is
    as accurate for such a smooth map as on equal spacing.
    """
    name, param = _integrated(model)
    i = model.position(param)
    prior_sd = _prior(model).sd
    s = prior_sd / 10.0
    if cov is not None and np.all(np.isfinite(cov)):
        try:
            s = 1.0 / math.sqrt(max(float(np.linalg.inv(cov)[i, i]), 1e-300))
        except np.linalg.LinAlgError:
            s = math.sqrt(max(float(cov[i, i]), 0.0)) or s
    s = min(max(s, 1e-4 * prior_sd), prior_sd)
    span = math.asinh(SPAN * prior_sd / s)
    return float(z[i]) + s * np.sinh(np.linspace(-span, span, GRID_NODES)), s


def _integrated(model: ClusterModel) -> tuple[str, str]:
    found = integrated_parameter(model._replace(collapsed=False))
    if found is None:
        raise ValueError("the model has no parameter to integrate out")
    return found


def _prior(model: ClusterModel) -> Any:
    """The integrable parameter's prior, as its term declares it."""
    name, param = _integrated(model)
    return next(p.prior for p in TERMS[name].block(model._replace(collapsed=False)).parameters if p.name == param)


def _log_prior(nodes: np.ndarray, model: ClusterModel) -> np.ndarray:
    return np.asarray(_prior(model).log_pdf(jnp.asarray(nodes, float)), float)


def _t(nodes: np.ndarray, scale: float) -> np.ndarray:
    """The equally spaced ``t`` of ``nodes = c + scale sinh(t)`` (``c`` the middle node)."""
    return np.arcsinh((nodes - nodes[nodes.size // 2]) / scale)


def _trapezoid_log_weights(nodes: np.ndarray, scale: float, model: ClusterModel) -> np.ndarray:
    """``ln`` of the trapezoid rule's weights in ``t`` over ``nodes = c + scale sinh(t)`` (equal steps in
    ``t``), times the Jacobian ``scale cosh(t)`` and the parameter's prior density."""
    t = _t(nodes, scale)
    w = np.full(nodes.size, t[1] - t[0]) * scale * np.cosh(t)
    w[[0, -1]] *= 0.5
    return np.log(w) + _log_prior(nodes, model)


def _finer(nodes: np.ndarray, scale: float, factor: int) -> np.ndarray:
    """The nodes with ``factor - 1`` more between each two, equally spaced in ``t``."""
    t = _t(nodes, scale)
    return nodes[nodes.size // 2] + scale * np.sinh(np.linspace(t[0], t[-1], factor * (nodes.size - 1) + 1))


def with_grid(
    data: StarData, model: ClusterModel, grid: tuple[np.ndarray, float], n_rows: int | None = None
) -> StarData:
    """``data`` with the grid integral of ``model``'s integrable parameter over ``grid`` (its nodes and
    scale, :func:`parameter_grid`): the rows of its
    real stars with the term's data (padded to ``n_rows``, or to a multiple of :data:`ROW_STEP`)."""
    name, _ = _integrated(model)
    host = on_host(data.terms[name])
    rows = _grid_rows(data, model)
    m = n_rows if n_rows is not None else n_grid_rows(data, model)
    if m < rows.size:
        raise ValueError(f"cannot pad {rows.size} rows to {m}")
    padded = np.concatenate([rows, np.zeros(m - rows.size, int)]).astype(np.int32)
    dt = np.asarray(data.parallax).dtype
    mask = (np.arange(m) < rows.size).astype(dt)
    compact = jax.tree_util.tree_map(lambda x: np.asarray(x)[padded], host)
    nodes, scale = grid
    log_w = _trapezoid_log_weights(nodes, scale, model)
    integral = GridIntegral(padded, mask, compact, nodes.astype(dt), log_w.astype(dt), np.asarray(scale, dt))
    return data._replace(integration={name: on_device(integral)})


def _grid_rows(data: StarData, model: ClusterModel) -> np.ndarray:
    """The real stars of ``data`` with the integrating term's data."""
    name, _ = _integrated(model)
    return np.flatnonzero((np.asarray(TERMS[name].present(on_host(data.terms[name]))) > 0) & data.real())


def n_grid_rows(data: StarData, model: ClusterModel) -> int:
    """The padded number of rows :func:`with_grid` gives ``data``: a multiple of :data:`ROW_STEP`."""
    return max(ROW_STEP, -(-_grid_rows(data, model).size // ROW_STEP) * ROW_STEP)


class GridCheck(NamedTuple):
    """The grid's checks over the draws: the largest conditional mass on its outermost nodes and the largest
    change of the log integral on a grid :data:`FINER` times finer; ``ok`` when both are within bounds."""

    edge_mass: float
    resolution: float

    @property
    def ok(self) -> bool:
        return self.edge_mass <= EDGE_MASS and self.resolution <= RESOLUTION

    def describe(self, param: str) -> str:
        return (
            f"{param} integrated out on a grid of {GRID_NODES} nodes (mass at its edges {self.edge_mass:.1e}, "
            f"change on a grid {FINER} times finer {self.resolution:.1e})"
        )


@functools.lru_cache(maxsize=8)
def _conditional_program(model: ClusterModel, name: str) -> Program:
    """``(z draws, stars, grid, nodes) ->`` each draw's :func:`~gaia_distances.core.terms.node_log_integrand`
    at ``nodes``."""

    def at(z: Array, sub: StarData, grid: GridIntegral, fine: Array) -> Array:
        pop: Population = to_population(z, model)
        log_c, log_f = weighted_log_likelihoods(pop, component_log_likelihoods(pop, sub, leave_out=name))
        return node_log_integrand(log_c, log_f, pop.terms, name, grid, fine)

    return Program("grid_conditional", jax.vmap(at, in_axes=(0, None, None, None)), model, name)


def expand_draws(
    z: np.ndarray, data: StarData, collapsed: ClusterModel, *, seed: int, chunk: int = 256
) -> tuple[np.ndarray, GridCheck]:
    """The full model's draws from the collapsed model's ``z`` (``(..., d - 1)``): each draw's integrated
    parameter drawn from its conditional on a grid four times finer than ``data``'s (piecewise linear
    between its nodes), and the grid's checks (:class:`GridCheck`)."""
    full = collapsed._replace(collapsed=False)
    name, param = _integrated(full)
    grid: GridIntegral = on_host(data.integration[name])
    rows = np.asarray(grid.rows)
    sub = per_star_map(lambda x: np.asarray(x)[rows], on_host(data._replace(field_only=None, integration=None)))
    sub = on_device(sub._replace(weight=None, terms=None))
    local = grid._replace(rows=np.arange(rows.size, dtype=np.int32))
    fine = _finer(np.asarray(grid.nodes, float), float(grid.scale), FINER)
    log_prior_fine = _log_prior(fine, full)
    fine_weights = _trapezoid_log_weights(fine, float(grid.scale), full) - log_prior_fine
    program = _conditional_program(collapsed, name)
    flat = np.asarray(z, float).reshape(-1, z.shape[-1])
    dt = np.asarray(data.parallax).dtype
    fine_values = []
    for start in range(0, len(flat), chunk):
        part = flat[start : start + chunk]
        pad = np.concatenate([part, np.repeat(part[-1:], chunk - len(part), axis=0)])
        f = program(jnp.asarray(pad, dt), sub, on_device(local), jnp.asarray(fine, dt))
        fine_values.append(np.asarray(f, float)[: len(part)])
    values = np.concatenate(fine_values)
    log_p = values + log_prior_fine
    # the grid's own nodes are every FINER-th of the finer grid's
    coarse = values[:, ::FINER] + np.asarray(grid.log_weights, float)
    check = grid_check(coarse, log_p + fine_weights)
    draws = draw_piecewise_linear(log_p, fine, np.random.default_rng(seed))
    names = full.names
    kept = {n: i for i, n in enumerate(collapsed.names)}
    out = np.empty((*z.shape[:-1], len(names)))
    flat_out = out.reshape(-1, len(names))
    for j, n in enumerate(names):
        flat_out[:, j] = draws if n == param else flat[:, kept[n]]
    return out, check


def grid_check(log_w: np.ndarray, log_w_fine: np.ndarray) -> GridCheck:
    """:class:`GridCheck` from each draw's log weights (rows: draws; the quadrature's weights and the prior
    included) at the grid's nodes and at those of a grid :data:`FINER` times finer over the same range."""
    # in NumPy: an eager JAX call would compile for every new number of draws
    total = logsumexp(log_w, axis=-1)
    p = np.exp(log_w - total[:, None])
    edge = float(np.max(p[:, :2].sum(-1) + p[:, -2:].sum(-1)))
    fine = logsumexp(log_w_fine, axis=-1)
    return GridCheck(edge, float(np.max(np.abs(fine - total))))


def draw_piecewise_linear(log_p: np.ndarray, nodes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw per row from the density that is linear between ``nodes`` with ``exp(log_p)`` there."""
    p = np.exp(log_p - log_p.max(axis=-1, keepdims=True))
    a, b = p[:, :-1], p[:, 1:]
    cells = 0.5 * (a + b) * np.diff(nodes)
    cdf = np.cumsum(cells, axis=-1)
    u = rng.uniform(size=len(p)) * cdf[:, -1]
    k = np.minimum((cdf < u[:, None]).sum(-1), cells.shape[1] - 1)
    rows = np.arange(len(p))
    pa, pb = a[rows, k], b[rows, k]
    v = rng.uniform(size=len(p))
    # inverse CDF of the density pa + (pb - pa) t on [0, 1]
    slope = pb - pa
    with np.errstate(invalid="ignore", divide="ignore"):
        linear = (np.sqrt(pa * pa + v * (pb * pb - pa * pa)) - pa) / slope
        t = np.where(np.abs(slope) > 1e-12 * np.maximum(pa, pb), linear, v)
    return nodes[k] + np.clip(t, 0.0, 1.0) * np.diff(nodes)[k]


def grid_starts(starts: Sequence[Any], model: ClusterModel, collapsed: ClusterModel) -> tuple[np.ndarray, np.ndarray]:
    """The MAP and the Laplace covariance of the collapsed model (the full model's, without the integrated
    parameter's row and column: its marginal), stacked over ``starts``."""
    keep = [model.position(n) for n in collapsed.names]
    z = np.stack([np.asarray(s.z)[keep] for s in starts])
    cov = np.stack(
        [
            np.asarray(s.covariance)[np.ix_(keep, keep)] if s.covariance is not None else np.eye(len(keep)) * 0.01
            for s in starts
        ]
    )
    return z, cov
