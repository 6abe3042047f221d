"""The cluster model as numpyro models, and the potentials NUTS samples.

- :func:`joint_model` samples one latent distance per star, as the reference
  analysis does (thousands of parameters);
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

from gaia_distances.core.components import mixture_distribution
from gaia_distances.core.likelihood import StarData, log_posterior, marginal_log_likelihood
from gaia_distances.core.numerics import Array
from gaia_distances.core.population import ClusterPriors, sample_population, to_population, unconstrained_names

__all__ = [
    "joint_model",
    "joint_potential_gen",
    "marginal_model",
    "prior_draws",
    "simulate_parallaxes",
    "whitened_potential_gen",
]

_REFERENCE = ClusterPriors()


def joint_model(
    parallax_error: Array,
    parallax: Array | None = None,
    zero_point: Array | float = 0.0,
    priors: ClusterPriors = _REFERENCE,
) -> None:
    """One latent distance ``r`` (pc) per star; the catalogue parallax is ``N(1000/r + zero_point, error)``."""
    import numpyro
    import numpyro.distributions as dist

    pop = sample_population(priors)
    with numpyro.plate("stars", parallax_error.shape[0]):
        r = numpyro.sample("r", mixture_distribution(pop))
        numpyro.sample("parallax", dist.Normal(1000.0 / r + zero_point, parallax_error), obs=parallax)


def marginal_model(data: StarData, priors: ClusterPriors = _REFERENCE) -> None:
    """The population parameters only; each star's distance is integrated out."""
    import numpyro

    numpyro.factor("log_likelihood", marginal_log_likelihood(sample_population(priors), data))


@functools.lru_cache(maxsize=16)
def whitened_potential_gen(priors: ClusterPriors) -> Any:
    """``gen(centre, chol, data)`` -> the marginal model's potential of ``x``, with ``z = centre + chol @ x``.

    NUTS samples ``x``, the population parameters whitened by the Laplace
    approximation at the MAP: NumPyro's mass-matrix adaptation shrinks towards
    ``1e-3 * I``, which would otherwise swamp parameters as tight as ``ln D``
    (sd ~ 1e-3).
    """

    def gen(centre: Array, chol: Array, data: StarData) -> Any:
        return lambda x: -log_posterior(centre + chol @ x, data, priors)

    return gen


@functools.lru_cache(maxsize=16)
def joint_potential_gen(priors: ClusterPriors) -> Any:
    """``gen(parallax_error, parallax, zero_point)`` -> the joint model's potential of its unconstrained sites."""
    from numpyro.infer.util import potential_energy

    def gen(err: Array, plx: Array, zp: Array) -> Any:
        return lambda p: potential_energy(joint_model, (err, plx, zp, priors), {}, p)

    return gen


@functools.lru_cache(maxsize=16)
def _simulator(priors: ClusterPriors) -> Any:
    import numpyro.distributions as dist

    def one(key: Array, z: Array, err: Array, zp: Array) -> Array:
        k_r, k_w = jax.random.split(key)
        r = mixture_distribution(to_population(z, priors)).sample(k_r, (err.shape[0],))
        return dist.Normal(1000.0 / r + zp, err).sample(k_w)

    def simulate(key: Array, z_draws: Array, err: Array, zp: Array) -> Array:
        keys = jax.random.split(key, z_draws.shape[0])
        return jax.vmap(one, in_axes=(0, 0, None, None))(keys, z_draws, err, zp)

    return jax.jit(simulate)


def simulate_parallaxes(
    seed: int, z_draws: np.ndarray, parallax_error: np.ndarray, zero_point: np.ndarray, priors: ClusterPriors
) -> np.ndarray:
    """Catalogue parallaxes (mas) simulated by the model, one catalogue per population draw.

    Each star's distance is drawn from the mixture at that draw and its
    parallax from ``N(1000 / r + zero_point, parallax_error)``: the joint
    model's generative process, compiled once per prior set and shape.
    Returns shape ``(draws, stars)``.
    """
    args = (jnp.asarray(z_draws), jnp.asarray(parallax_error), jnp.asarray(zero_point))
    return np.asarray(_simulator(priors)(jax.random.PRNGKey(seed), *args))


@functools.lru_cache(maxsize=16)
def _prior_sampler(priors: ClusterPriors) -> Any:
    from numpyro import handlers

    names = unconstrained_names(priors)

    def one(key: Array) -> Array:
        trace = handlers.trace(handlers.seed(sample_population, key)).get_trace(priors)
        return jnp.stack([trace[name]["value"] for name in names])

    return jax.jit(jax.vmap(one))


def prior_draws(seed: int, num_samples: int, priors: ClusterPriors) -> np.ndarray:
    """Unconstrained population draws ``(num_samples, 4)`` from the prior (:func:`sample_population`)."""
    keys = jax.random.split(jax.random.PRNGKey(seed), num_samples)
    return np.asarray(_prior_sampler(priors)(keys))
