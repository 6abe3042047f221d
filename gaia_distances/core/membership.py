"""Per-star results of a cluster fit: membership probabilities and cluster-model distance quantiles.

Both are Rao-Blackwellised: for each posterior draw of the population the
per-star quantity is exact (the membership odds from the component
likelihoods; the distance posterior on a per-star grid in ``ln r``), and the
draws are averaged. From the joint model's latent distances the same
quantities follow directly (:func:`joint_per_star`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gaia_distances.core.components import mixture_log_prior_u
from gaia_distances.core.exported import Program
from gaia_distances.core.field_table import precompute_field_nodes
from gaia_distances.core.likelihood import (
    StarData,
    component_log_pass,
    log_evidence_per_star,
    membership_log_odds,
    parallax_component_log_likelihoods,
    per_star_map,
)
from gaia_distances.core.numerics import (
    ONE_SIGMA_QUANTILES,
    Array,
    Chunk,
    invert_cdf,
    log_likelihood_u,
    padded_chunks,
)
from gaia_distances.core.population import ClusterModel, Population, to_population
from gaia_distances.core.sampling import aot_call, precompile

__all__ = [
    "SKIP_CHECK_LOG_ODDS",
    "SKIP_LOG_ODDS",
    "PerStarResults",
    "certain_non_members",
    "log_odds_program",
    "max_log_odds",
    "cluster_model_quantiles",
    "joint_per_star",
    "per_star_results",
    "posterior_distance_grid",
    "precompile_per_star",
]

#: The EDSD length scales (pc) whose support the flexible field's grid nodes cover.
FIELD_BINS_L_RANGE = (10.0, 15000.0)
#: Stars per compiled call of the quantile computation.
CHUNK = 4096
#: Nodes per star of :func:`posterior_distance_grid`: field, cluster, likelihood.
_GRID_FIELD, _GRID_CLUSTER, _GRID_LIKE = 64, 48, 32
GRID_WIDTH = _GRID_FIELD + _GRID_CLUSTER + _GRID_LIKE


class PerStarResults(NamedTuple):
    """Membership probability ``(n,)`` and distance quantiles ``(n, 3)`` in pc at :data:`ONE_SIGMA_QUANTILES`."""

    membership: np.ndarray
    distance_quantiles: np.ndarray


def posterior_distance_grid(
    parallax: np.ndarray,
    parallax_error: np.ndarray,
    log_D_centre: float,
    sigma_max: float,
    L_range: tuple[float, float],
) -> np.ndarray:
    """Per-star sorted nodes in ``ln r`` resolving the field, the cluster and the likelihood."""
    w = np.asarray(parallax, float)
    s = np.asarray(parallax_error, float)
    field = precompute_field_nodes(w, s, n_nodes=_GRID_FIELD, L_range=L_range).u
    cl = log_D_centre + sigma_max * np.linspace(-8.0, 8.0, _GRID_CLUSTER)
    snr_ok = w / s > 2
    centre = np.log(1000.0 / np.where(snr_ok, w, 1.0))
    tau = np.where(snr_ok, s / np.where(snr_ok, w, 1.0), 0.1)
    like_nodes = centre[:, None] + tau[:, None] * np.linspace(-8.0, 8.0, _GRID_LIKE)
    like = np.where(snr_ok[:, None], like_nodes, field[:, :_GRID_LIKE])
    grid = np.concatenate([field, np.broadcast_to(cl, (w.size, cl.size)), like], axis=1)
    return np.sort(grid, axis=1)


def cluster_model_quantiles(
    z_draws: Array, data: StarData, model: ClusterModel, grid: Array, quantiles: tuple[float, ...]
) -> Array:
    """Quantiles (pc) of each star's distance under the fitted mixture prior.

    The posterior of ``ln r`` given each draw of the population is evaluated
    exactly on ``grid`` (from :func:`posterior_distance_grid`), normalised
    with the same integrals the likelihood uses, averaged over the draws, and
    inverted. With proper motions it is each component's parallax-only
    posterior weighted by the star's membership probability (the proper
    motions' pull on the distance within a component is left out).
    """
    like = log_likelihood_u(grid, data.parallax[:, None], data.parallax_error[:, None])

    def one(z: Array) -> Array:
        pop = to_population(z, model)
        log_c, log_f = mixture_log_prior_u(grid, pop)
        # a parallax cut renormalises each component (constant in u for each star)
        cut = component_log_pass(pop, data)
        log_c, log_f = log_c - cut.cluster[:, None], log_f - cut.field[:, None]
        if pop.kin is None:
            return jnp.exp(jnp.logaddexp(log_c, log_f) + like - log_evidence_per_star(pop, data)[:, None])
        # with proper motions: each component's parallax-only distance posterior,
        # weighted by the membership the proper motions give
        p_member = jax.nn.sigmoid(membership_log_odds(pop, data))[:, None]
        plx = parallax_component_log_likelihoods(pop, data)
        post_c = jnp.exp(log_c - jnp.log(pop.Q) + like - plx.cluster[:, None])
        post_f = jnp.exp(log_f - jnp.log1p(-pop.Q) + like - plx.field[:, None])
        return p_member * post_c + (1.0 - p_member) * post_f

    dens = jax.lax.map(one, z_draws).mean(axis=0)
    dx = jnp.diff(grid, axis=1)
    steps = jnp.cumsum(0.5 * (dens[:, 1:] + dens[:, :-1]) * dx, axis=1)
    cdf = jnp.concatenate([jnp.zeros_like(grid[:, :1]), steps], axis=1)
    cdf = cdf / cdf[:, -1:]
    out = []
    for q in quantiles:
        i, t = invert_cdf(cdf, q)
        u0 = jnp.take_along_axis(grid, i[:, None], 1)[:, 0]
        u1 = jnp.take_along_axis(grid, i[:, None] + 1, 1)[:, 0]
        out.append(jnp.exp(u0 + t * (u1 - u0)))
    return jnp.stack(out, axis=1)


@functools.lru_cache(maxsize=16)
def _per_star_functions(model: ClusterModel) -> tuple[Any, Any]:
    """Jitted ``membership(z_draws, data)`` (mean probability) and ``quantiles(z_draws, data, grid)``."""

    def membership(zs: Array, data: StarData) -> Array:
        def one(z: Array) -> Array:
            return jax.nn.sigmoid(membership_log_odds(to_population(z, model), data))

        return jax.lax.map(one, zs).mean(axis=0)

    def quant(zs: Array, data: StarData, grid: Array) -> Array:
        return cluster_model_quantiles(zs, data, model, grid, ONE_SIGMA_QUANTILES)

    return Program("membership", membership, model), Program("quantiles", quant, model)


def _chunk_data(data: StarData, index: np.ndarray) -> StarData:
    if index.size == data.n_stars and np.array_equal(index, np.arange(data.n_stars)):
        return data  # the whole field: nothing to gather
    return per_star_map(lambda x: x[index], data)


def _quantile_chunks(n_stars: int) -> Iterator[Chunk]:
    """The chunks of :func:`per_star_results`' quantiles: the whole field where it holds at most :data:`CHUNK`
    stars (the fit has padded it to its bucket already), else :data:`CHUNK` stars at a time."""
    return padded_chunks(n_stars, n_stars if n_stars <= CHUNK else CHUNK)


def precompile_per_star(data: StarData, model: ClusterModel, *, n_member: int, n_quant: int) -> None:
    """Compile the per-star programs for ``data``'s shapes (e.g. while the sampler runs elsewhere)."""
    membership, quant = _per_star_functions(model)
    dt = data.parallax.dtype
    n = model.n_params
    precompile(membership, jnp.zeros((n_member, n), dt), data)
    chunk = next(_quantile_chunks(data.n_stars))
    sub = _chunk_data(data, chunk.rows)
    precompile(quant, jnp.zeros((n_quant, n), dt), sub, jnp.zeros((chunk.rows.size, GRID_WIDTH), dt))


def _thin(z: np.ndarray, n: int) -> np.ndarray:
    """``n`` draws evenly spaced through ``z`` (all of them when there are fewer)."""
    return z[np.linspace(0, len(z) - 1, min(len(z), n)).astype(int)]


def per_star_results(
    z_draws: np.ndarray, data: StarData, model: ClusterModel, *, n_member: int = 400, n_quant: int = 32
) -> PerStarResults:
    """Membership and distance quantiles for every star in ``data`` (padding included) from population draws.

    ``z_draws`` has shape ``(..., 4)``; ``n_member`` and ``n_quant`` evenly
    thinned draws are averaged for the membership and the quantiles.
    """
    flat = np.asarray(z_draws, float).reshape(-1, model.n_params)
    membership, quant = _per_star_functions(model)
    dt = data.parallax.dtype
    member = np.asarray(aot_call(membership, jnp.asarray(_thin(flat, n_member), dt), data), float)
    log_D, log_sigma = (np.asarray(x) for x in to_population(flat, model, xp=np)[1:3])
    grid = posterior_distance_grid(
        np.asarray(data.parallax, float),
        np.asarray(data.parallax_error, float),
        float(np.median(log_D)),
        float(np.max(np.exp(log_sigma))),
        data.field.L_range() if data.field is not None else FIELD_BINS_L_RANGE,
    )
    zq = jnp.asarray(_thin(flat, n_quant), dt)
    dist = np.empty((data.n_stars, len(ONE_SIGMA_QUANTILES)))
    for chunk in _quantile_chunks(data.n_stars):
        q = aot_call(quant, zq, _chunk_data(data, chunk.rows), jnp.asarray(grid[chunk.rows], dt))
        dist[chunk.start : chunk.stop] = np.asarray(q)[: chunk.stop - chunk.start]
    return PerStarResults(member, dist)


#: A star whose membership log-odds stay below this at the MAP and at draws from twice its Laplace
#: approximation is sampled with the field's term alone (its cluster term changes the log likelihood
#: by less than e^-30).
SKIP_LOG_ODDS = -30.0
#: After sampling, those stars' log-odds at the posterior draws must stay below this (else the fit
#: samples again with every star's cluster term).
SKIP_CHECK_LOG_ODDS = -20.0
#: Population points at which the screen and its check evaluate every star.
SCREEN_POINTS = 17


@functools.lru_cache(maxsize=16)
def log_odds_program(model: ClusterModel) -> Any:
    """Jitted ``(z (k, d), data) ->`` each star's largest membership log-odds over the ``k`` points."""

    def at(zs: Array, data: StarData) -> Array:
        return jax.lax.map(lambda z: membership_log_odds(to_population(z, model), data), zs).max(axis=0)

    return Program("log_odds", at, model)


def max_log_odds(z: np.ndarray, data: StarData, model: ClusterModel) -> np.ndarray:
    """Each star's largest membership log-odds over the population points ``z`` (:data:`SCREEN_POINTS`, d)."""
    return np.asarray(aot_call(log_odds_program(model), jnp.asarray(z, data.parallax.dtype), data), float)


def certain_non_members(
    data: StarData, model: ClusterModel, centre: np.ndarray, cov: np.ndarray | None, *, seed: int = 0
) -> np.ndarray:
    """Stars whose membership log-odds stay below :data:`SKIP_LOG_ODDS` at the MAP ``centre`` and at
    draws from a Gaussian of twice the Laplace covariance's width (boolean, padding stars False)."""
    if cov is None:
        return np.zeros(data.n_stars, bool)
    rng = np.random.default_rng(seed)
    chol = np.linalg.cholesky(cov)
    z = centre + 2.0 * rng.standard_normal((SCREEN_POINTS, centre.size)) @ chol.T
    z[0] = centre
    return (max_log_odds(z, data, model) < SKIP_LOG_ODDS) & data.real()


def joint_per_star(
    r_draws: np.ndarray,
    z_draws: np.ndarray,
    model: ClusterModel,
    stars: Any = None,
) -> PerStarResults:
    """Membership and distance quantiles from the joint model's latent distances ``r`` (pc).

    ``r_draws`` has shape ``(..., n)`` and ``z_draws`` ``(..., n_params)``
    with the same leading axes. For a kinematic model ``stars`` is
    ``(parallax_error, catalogue parallax, zero point, KinematicData)``.
    """
    from gaia_distances.core.models import component_log_terms_at

    flat_r = r_draws.reshape(-1, r_draws.shape[-1])
    flat_z = z_draws.reshape(-1, model.n_params)
    if model.kinematics and stars is not None:
        err, plx, zp, kin = stars
        fn = jax.jit(jax.vmap(lambda u, z: component_log_terms_at(u, err, plx, zp, kin, to_population(z, model))))
        log_cl, log_fd = (np.asarray(x) for x in fn(jnp.asarray(np.log(flat_r)), jnp.asarray(flat_z)))
    else:
        full = to_population(flat_z, model, xp=np)
        log_w = None if full.field_log_w is None else np.asarray(full.field_log_w)[:, None]
        log_L, log_D, log_sigma, Q = (np.asarray(x)[:, None] for x in full[:4])
        pop = Population(log_L, log_D, log_sigma, Q, field_log_w=log_w)
        log_cl, log_fd = (np.asarray(x) for x in mixture_log_prior_u(np.log(flat_r), pop))
    member = np.mean(np.exp(log_cl - np.logaddexp(log_cl, log_fd)), axis=0)
    q = np.quantile(flat_r, ONE_SIGMA_QUANTILES, axis=0).T
    return PerStarResults(member, q)
