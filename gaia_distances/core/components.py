"""The two components of the cluster model as distance densities in ``u = ln(r / pc)``.

- the **cluster**: a Gaussian in ``ln r`` with mean ``ln D`` and width
  ``sigma = exp(log_sigma)``;
- the **field**: an exponentially decreasing space density (EDSD) with length
  scale ``L``, ``r^2 exp(-r/L) / (2 L^3)``, or the flexible mixture of
  log-normal distance bins (:mod:`~gaia_distances.core.field_bins`).

A star's distance prior is their mixture with weights ``Q`` and ``1 - Q``.
These densities are the model's definition: the per-star likelihood
integrals (:mod:`~gaia_distances.core.cluster_integral` and
:mod:`~gaia_distances.core.field_table`), the numpyro models
(:mod:`~gaia_distances.core.models`) and the per-star results
(:mod:`~gaia_distances.core.membership`) all evaluate them from here.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from gaia_distances.core.field_bins import SPACING, bin_centres, bins_log_density_u
from gaia_distances.core.numerics import Array, normal_log_pdf
from gaia_distances.core.population import Population
from gaia_distances.core.priors import EDSDPrior

__all__ = [
    "cluster_log_density_u",
    "field_log_density_u",
    "mixture_distribution",
    "mixture_log_prior_u",
    "population_field_log_density_u",
]


def cluster_log_density_u(u: Array, log_D: Array, log_sigma: Array) -> Array:
    """``ln N(u | ln D, sigma)``: the cluster's distance density in ``u``."""
    return normal_log_pdf(u, log_D, jnp.exp(log_sigma))


def field_log_density_u(u: Array, log_L: Array) -> Array:
    """The EDSD field's distance density in ``u`` with length scale ``exp(log_L)`` (pc)."""
    return EDSDPrior(jnp.exp(log_L)).log_prob_logr(u)


def population_field_log_density_u(u: Array, pop: Population) -> Array:
    """The population's field density in ``u``: the EDSD at ``pop.log_L``, or the flexible bins."""
    if pop.field_log_w is None:
        return field_log_density_u(u, pop.log_L)
    return bins_log_density_u(u, pop.field_log_w)


def mixture_log_prior_u(u: Array, pop: Population) -> tuple[Array, Array]:
    """``ln Q + ln p_cluster(u)`` and ``ln(1 - Q) + ln p_field(u)``; their ``logaddexp`` is the mixture."""
    log_cl = cluster_log_density_u(u, pop.log_D, pop.log_sigma)
    log_fd = population_field_log_density_u(u, pop)
    return jnp.log(pop.Q) + log_cl, jnp.log1p(-pop.Q) + log_fd


def mixture_distribution(pop: Population) -> Any:
    """The distance prior of one star in pc as a numpyro ``MixtureGeneral`` (cluster first)."""
    import numpyro.distributions as dist

    positive = dist.constraints.positive
    if pop.field_log_w is None:
        field = dist.TransformedDistribution(
            dist.Gamma(3.0, 1.0), dist.transforms.AffineTransform(0.0, jnp.exp(pop.log_L), domain=positive)
        )
    else:
        centres = jnp.asarray(bin_centres(), jnp.asarray(pop.log_D).dtype)
        log_r = dist.MixtureSameFamily(dist.Categorical(logits=pop.field_log_w), dist.Normal(centres, SPACING))
        field = dist.TransformedDistribution(log_r, dist.transforms.ExpTransform(domain=positive))
    cluster = dist.TransformedDistribution(
        dist.Normal(pop.log_D, jnp.exp(pop.log_sigma)), dist.transforms.ExpTransform(domain=positive)
    )
    return dist.MixtureGeneral(dist.Categorical(probs=jnp.stack([pop.Q, 1.0 - pop.Q], axis=-1)), [cluster, field])
