"""The cluster model as numpyro models, and the potentials NUTS samples.

- :func:`joint_model` samples one latent ``ln r`` per star, as the reference
  analysis samples one distance (thousands of parameters);
- :func:`marginal_model` integrates each distance out
  (:mod:`~gaia_distances.core.likelihood`), so NUTS samples only the four
  population parameters.

Both share the population prior (:mod:`~gaia_distances.core.population`) and
the components (:mod:`~gaia_distances.core.components`). The potentials
(:func:`whitened_potential_gen`, :func:`joint_potential_gen`) are what the
runner (:mod:`~gaia_distances.core.sampling`) compiles; one function object
per prior set, so compiled chains are reused across fits.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gaia_distances.core.components import mixture_distribution, mixture_log_prior_u
from gaia_distances.core.kinematics import KinematicData, cluster_pm_log_term, field_pm_log_term_at
from gaia_distances.core.likelihood import StarData, log_posterior, marginal_log_likelihood
from gaia_distances.core.numerics import Array
from gaia_distances.core.population import (
    ClusterModel,
    ClusterPriors,
    Population,
    sample_population,
    to_population,
    unconstrained_names,
)
from gaia_distances.core.terms import term_log_likelihoods

__all__ = [
    "component_log_terms_at",
    "joint_model",
    "joint_potential_gen",
    "marginal_model",
    "prior_draws",
    "simulate_parallaxes",
    "whitened_potential_gen",
]

_REFERENCE = ClusterModel(ClusterPriors())


def joint_model(
    parallax_error: Array,
    parallax: Array | None,
    zero_point: Array | float,
    kin: KinematicData | None,
    model: ClusterModel,
    terms: Any = None,
) -> None:
    """The joint model: one latent ``u = ln(r / pc)`` per star, the same for every model.

    Each star's distance prior is the population's mixture and, with
    proper motions, each component's proper-motion term at that distance is
    exact (no moments): this is the reference the marginal model is checked
    against. (The reference analysis samples ``r`` itself; ``u`` is the same
    posterior, whose Jacobian the mixture's density in ``u`` carries.) ``terms``: the model terms' per-star data
    (:attr:`~gaia_distances.core.likelihood.StarData.terms`).
    """
    import numpyro
    import numpyro.distributions as dist

    pop = sample_population(model)
    with numpyro.plate("stars", parallax_error.shape[0]):
        u = numpyro.sample("u", dist.ImproperUniform(dist.constraints.real, (), ()))
        log_c, log_f = component_log_terms_at(u, parallax_error, parallax, zero_point, kin, pop, terms)
        numpyro.factor("distance_prior", jnp.logaddexp(log_c, log_f))
        numpyro.sample("parallax", dist.Normal(1000.0 * jnp.exp(-u) + zero_point, parallax_error), obs=parallax)


def component_log_terms_at(
    u: Array,
    parallax_error: Array,
    parallax: Array | None,
    zero_point: Array | float,
    kin: Any,
    pop: Population,
    terms: Any = None,
) -> tuple[Array, Array]:
    """``ln Q p_c(u) p_c(pm | u)`` and the field's, per star, at known distances ``u`` (mixture weights
    included), with the model terms' (:func:`~gaia_distances.core.terms.term_log_likelihoods`)."""
    log_c, log_f = mixture_log_prior_u(u, pop)
    if kin is not None and pop.kin is not None and parallax is not None:
        w = parallax - zero_point
        log_c = log_c + cluster_pm_log_term(u[None, :], w, pop.kin, kin, pop.log_D)[0]
        log_f = log_f + field_pm_log_term_at(u, w, pop.kin, kin)
    term_c, term_f = term_log_likelihoods(pop.terms, terms)
    return log_c + term_c, log_f + term_f


def marginal_model(data: StarData, model: ClusterModel = _REFERENCE) -> None:
    """The population parameters only; each star's distance is integrated out."""
    import numpyro

    numpyro.factor("log_likelihood", marginal_log_likelihood(sample_population(model), data))


@functools.lru_cache(maxsize=16)
def whitened_potential_gen(model: ClusterModel) -> Any:
    """``gen(centre, chol, data)`` -> the marginal model's potential of ``x``, with ``z = centre + chol @ x``.

    NUTS samples ``x``, the population parameters whitened by the Laplace
    approximation at the MAP: NumPyro's mass-matrix adaptation shrinks towards
    ``1e-3 * I``, which would otherwise swamp parameters as tight as ``ln D``
    (sd ~ 1e-3).
    """

    def gen(centre: Array, chol: Array, data: StarData) -> Any:
        # full float32 precision: an accelerator's default (TF32) matmul rounds z to about 1e-3,
        # which is the posterior width of ln D, and the sampler diverges
        return lambda x: -log_posterior(centre + jnp.matmul(chol, x, precision=jax.lax.Precision.HIGHEST), data, model)

    gen.export_name = ("whitened_potential", model)  # type: ignore[attr-defined]  # what it computes, for Program
    return gen


@functools.lru_cache(maxsize=16)
def joint_potential_gen(model: ClusterModel) -> Any:
    """``gen(parallax_error, parallax, zero_point, kin, terms)`` -> the joint model's potential of its
    unconstrained sites (:func:`joint_model`)."""
    from numpyro.infer.util import potential_energy

    def gen(err: Array, plx: Array, zp: Array, kin: Any = None, terms: Any = None) -> Any:
        return lambda p: potential_energy(joint_model, (err, plx, zp, kin, model, terms), {}, p)

    return gen


@functools.lru_cache(maxsize=16)
def _simulator(model: ClusterModel) -> Any:
    import numpyro.distributions as dist

    def one(key: Array, z: Array, err: Array, zp: Array) -> Array:
        k_r, k_w = jax.random.split(key)
        r = mixture_distribution(to_population(z, model)).sample(k_r, (err.shape[0],))
        return dist.Normal(1000.0 / r + zp, err).sample(k_w)

    def simulate(key: Array, z_draws: Array, err: Array, zp: Array) -> Array:
        keys = jax.random.split(key, z_draws.shape[0])
        return jax.vmap(one, in_axes=(0, 0, None, None))(keys, z_draws, err, zp)

    return jax.jit(simulate)


def simulate_parallaxes(
    seed: int,
    z_draws: np.ndarray,
    parallax_error: np.ndarray,
    zero_point: np.ndarray,
    model: ClusterModel,
) -> np.ndarray:
    """Catalogue parallaxes (mas) simulated by the model, one catalogue per population draw.

    Each star's distance is drawn from the mixture at that draw and its
    parallax from ``N(1000 / r + zero_point, parallax_error)``: the joint
    model's generative process, compiled once per prior set and shape.
    Returns shape ``(draws, stars)``.
    """
    args = (jnp.asarray(z_draws), jnp.asarray(parallax_error), jnp.asarray(zero_point))
    return np.asarray(_simulator(model)(jax.random.PRNGKey(seed), *args))


@functools.lru_cache(maxsize=16)
def _prior_sampler(model: ClusterModel) -> Any:
    from numpyro import handlers

    names = unconstrained_names(model)

    def one(key: Array) -> Array:
        trace = handlers.trace(handlers.seed(sample_population, key)).get_trace(model)
        return jnp.stack([trace[name]["value"] for name in names])

    return jax.jit(jax.vmap(one))


def prior_draws(seed: int, num_samples: int, model: ClusterModel) -> np.ndarray:
    """Unconstrained population draws ``(num_samples, 4)`` from the prior (:func:`sample_population`)."""
    keys = jax.random.split(jax.random.PRNGKey(seed), num_samples)
    return np.asarray(_prior_sampler(model)(keys))
