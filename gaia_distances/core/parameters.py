"""The cluster model's sampled parameters, each declared once: its entry of ``z``, its prior and its meaning.

A :class:`Parameter` is one entry of the unconstrained vector ``z`` that the
MAP search and NUTS work on: its name (the numpyro site), its prior (a
:class:`Normal`, the :class:`StandardLogistic` of a size fraction's logit, or
a :class:`LogitBeta` for a fraction's logit), whether it describes the
cluster or the field, and what it is. A model's parameters
(:attr:`~gaia_distances.core.population.ClusterModel.parameters`) are the
blocks of the terms it is made of, in order; everything that needs the layout
of ``z`` (names, positions, the prior density, the numpyro sites) is derived
from that one tuple (:func:`prior_log_density`, :func:`prior_sites`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gaia_distances.core.numerics import Array, normal_log_pdf

__all__ = [
    "LogitBeta",
    "Normal",
    "Parameter",
    "Quantity",
    "StandardLogistic",
    "prior_log_density",
    "prior_sites",
]


class Normal(NamedTuple):
    """A Normal prior ``N(mu, sd)`` on the entry."""

    mu: float
    sd: float

    def log_pdf(self, x: Array) -> Array:
        return normal_log_pdf(x, self.mu, self.sd)

    def distribution(self) -> Any:
        import numpyro.distributions as dist

        return dist.Normal(self.mu, self.sd)


class StandardLogistic(NamedTuple):
    """The standard logistic prior: the logit of a fraction that is uniform on (0, 1)."""

    def log_pdf(self, x: Array) -> Array:
        return jax.nn.log_sigmoid(x) + jax.nn.log_sigmoid(-x)

    def distribution(self) -> Any:
        import numpyro.distributions as dist

        return dist.Logistic(0.0, 1.0)


class LogitBeta(NamedTuple):
    """``Beta(a, b)`` on a fraction, pushed to its logit (the entry): ``q^a (1 - q)^b / B(a, b)``."""

    a: float
    b: float

    def log_pdf(self, x: Array) -> Array:
        gammaln = jax.scipy.special.gammaln
        log_beta = gammaln(self.a) + gammaln(self.b) - gammaln(self.a + self.b)
        return self.a * jax.nn.log_sigmoid(x) + self.b * jax.nn.log_sigmoid(-x) - log_beta

    def distribution(self) -> Any:
        import numpyro.distributions as dist

        return dist.TransformedDistribution(dist.Beta(self.a, self.b), dist.transforms.SigmoidTransform().inv)


Prior = Normal | StandardLogistic | LogitBeta


class Quantity(NamedTuple):
    """A physical quantity a fit reports (a key of its posterior): its ``unit`` (an astropy unit string; ""
    for none), ``description``, and whether it is a ``science`` quantity (checked for degenerate draws and
    summarised per cluster)."""

    name: str
    unit: str
    description: str
    science: bool


class Parameter(NamedTuple):
    """One entry of ``z``: its ``name`` (the numpyro site), ``prior``, whether it describes the ``cluster``
    (else the field) and what it is (``meaning``)."""

    name: str
    prior: Prior
    cluster: bool
    meaning: str


@functools.lru_cache(maxsize=64)
def _normal_arrays(parameters: tuple[Parameter, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mu, sd, is_normal)`` over the entries (0 and 1 where the prior is not Normal)."""
    normal = np.array([isinstance(p.prior, Normal) for p in parameters])
    mu = np.array([p.prior.mu if isinstance(p.prior, Normal) else 0.0 for p in parameters])
    sd = np.array([p.prior.sd if isinstance(p.prior, Normal) else 1.0 for p in parameters])
    return mu, sd, normal


def prior_log_density(z: Array, parameters: Sequence[Parameter]) -> Array:
    """The prior log density of ``z`` (last axis: ``parameters``): the sum of every entry's prior.

    The Normal priors are evaluated together, over the whole vector; the others one by one.
    """
    params = tuple(parameters)
    mu, sd, normal = _normal_arrays(params)
    z = jnp.asarray(z)
    dtype = z.dtype
    terms = normal_log_pdf(z, jnp.asarray(mu, dtype), jnp.asarray(sd, dtype))
    out = jnp.sum(jnp.where(jnp.asarray(normal), terms, 0.0), axis=-1)
    for i, p in enumerate(params):
        if not isinstance(p.prior, Normal):
            out = out + p.prior.log_pdf(z[..., i])
    return out


def prior_sites(parameters: Sequence[Parameter]) -> Any:
    """Every parameter as a numpyro sample site, stacked in order into ``z`` (inside a numpyro model)."""
    import numpyro

    sites = [numpyro.sample(p.name, p.prior.distribution()) for p in parameters]
    return jnp.stack([jnp.asarray(s) for s in sites], axis=-1)
