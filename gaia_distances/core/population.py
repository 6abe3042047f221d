"""The cluster model's population parameters: priors and the one unconstrained parameterisation.

The population is :class:`Population` ``(log_L, log_D, log_sigma, Q)``: the
field length scale ``L`` (pc), the cluster distance ``D`` (pc) and width
``sigma`` (in ``ln r``), and the cluster fraction ``Q``. NUTS and the MAP
search work on an unconstrained vector ``z = (log_L, log_D, depth, logit_Q)``,
where ``depth`` is ``log_sigma`` or, under the physical prior, the logit of
the cluster's log size within its allowed range.

:func:`to_population` maps ``z`` to the population and :func:`from_population`
inverts it; :func:`log_prior` is the prior density of ``z`` and
:func:`sample_population` the same prior as numpyro sites.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gaia_distances.core.numerics import Array, normal_log_pdf

__all__ = [
    "ClusterPriors",
    "Population",
    "from_population",
    "log_prior",
    "physical_draws",
    "sample_population",
    "to_population",
    "unconstrained_names",
]

#: Number of population parameters (the length of ``z``).
N_PARAMS = 4


class ClusterPriors(NamedTuple):
    """Normal priors on ``ln L``, ``ln D`` (pc) and the depth; ``Q ~ Beta(a, b)``.

    The defaults are the reference analysis: ``ln L ~ N(ln 370, 2)``,
    ``ln D ~ N(ln 920, 2)``, ``ln sigma ~ N(0, 2)``, ``Q ~ Uniform(0, 1)``.

    With ``depth_prior="size"`` the depth prior is on the cluster's
    line-of-sight size ``sigma * D`` in pc instead: log-uniform between
    ``size_min_pc`` and ``size_max_pc`` (see :meth:`physical`).
    """

    log_L_mu: float = math.log(370.0)
    log_L_sd: float = 2.0
    log_D_mu: float = math.log(920.0)
    log_D_sd: float = 2.0
    log_sigma_mu: float = 0.0
    log_sigma_sd: float = 2.0
    Q_a: float = 1.0
    Q_b: float = 1.0
    depth_prior: str = "log_sigma"
    size_min_pc: float = 0.3
    size_max_pc: float = 40.0

    @classmethod
    def reference(cls) -> ClusterPriors:
        """The priors of the reference M67 analysis."""
        return cls()

    @classmethod
    def physical(cls, *, size_min_pc: float = 0.3, size_max_pc: float = 40.0, **kw: Any) -> ClusterPriors:
        """A cluster whose line-of-sight size ``sigma * D`` lies in ``[size_min_pc, size_max_pc]``.

        The size is log-uniform in that range. Open clusters are a few pc deep,
        so the cluster component can no longer swallow the bulk of a big field
        (which a soft prior cannot prevent: tens of thousands of field stars
        outweigh any prior). ``kw`` overrides the other fields.
        """
        return cls(depth_prior="size", size_min_pc=size_min_pc, size_max_pc=size_max_pc, **kw)

    @property
    def log_size_range(self) -> tuple[float, float]:
        """``ln`` of the allowed size range (pc) under ``depth_prior="size"``."""
        return math.log(self.size_min_pc), math.log(self.size_max_pc)


class Population(NamedTuple):
    """The population parameters (scalars, or arrays of draws)."""

    log_L: Array
    log_D: Array
    log_sigma: Array
    Q: Array


def unconstrained_names(priors: ClusterPriors) -> tuple[str, str, str, str]:
    """Names of the sampled sites, in the order of the unconstrained vector ``z``."""
    depth = "logit_size" if priors.depth_prior == "size" else "log_sigma"
    return ("log_L", "log_D", depth, "logit_Q")


def _sigmoid(x: Array, xp: Any) -> Array:
    return jax.nn.sigmoid(x) if xp is jnp else 1.0 / (1.0 + np.exp(-x))


def _logit(p: Array, xp: Any) -> Array:
    return xp.log(p) - xp.log1p(-p)


def to_population(z: Array, priors: ClusterPriors, xp: Any = jnp) -> Population:
    """The population at unconstrained ``z`` (last axis of length 4; ``xp``: ``jnp`` or ``np``)."""
    log_L, log_D, depth, logit_Q = z[..., 0], z[..., 1], z[..., 2], z[..., 3]
    if priors.depth_prior == "size":
        lo, hi = priors.log_size_range
        log_sigma = lo + (hi - lo) * _sigmoid(depth, xp) - log_D
    else:
        log_sigma = depth
    return Population(log_L, log_D, log_sigma, _sigmoid(logit_Q, xp))


def from_population(pop: Population, priors: ClusterPriors, *, xp: Any = np, clip: float = 0.0) -> Array:
    """The unconstrained ``z`` of a population: the inverse of :func:`to_population`.

    Under the physical prior a size outside the allowed range has no preimage;
    ``clip`` (> 0) pulls the size fraction and ``Q`` into ``[clip, 1 - clip]``
    first (for starting points); with ``clip=0`` such sizes give infinities.
    """
    log_L, log_D, log_sigma, Q = (xp.asarray(x) for x in pop)
    if priors.depth_prior == "size":
        lo, hi = priors.log_size_range
        frac = (log_sigma + log_D - lo) / (hi - lo)
        if clip:
            frac = xp.clip(frac, clip, 1.0 - clip)
        depth = _logit(frac, xp)
    else:
        depth = log_sigma
    if clip:
        Q = xp.clip(Q, clip, 1.0 - clip)
    shape = np.broadcast_shapes(*(np.shape(x) for x in (log_L, log_D, depth, Q)))
    return xp.stack([xp.broadcast_to(x, shape) for x in (log_L, log_D, depth, _logit(Q, xp))], axis=-1)


def log_prior(z: Array, priors: ClusterPriors) -> Array:
    """Log prior density of the unconstrained vector ``z`` (the density :func:`sample_population` defines)."""
    log_L, log_D, depth, logit_Q = z[..., 0], z[..., 1], z[..., 2], z[..., 3]
    # Beta(a, b) on Q, pushed to logit(Q): Q^a (1-Q)^b / B(a, b)
    gammaln = jax.scipy.special.gammaln
    lbeta = gammaln(priors.Q_a) + gammaln(priors.Q_b) - gammaln(priors.Q_a + priors.Q_b)
    lq = priors.Q_a * jax.nn.log_sigmoid(logit_Q) + priors.Q_b * jax.nn.log_sigmoid(-logit_Q) - lbeta
    if priors.depth_prior == "size":
        lp_depth = jax.nn.log_sigmoid(depth) + jax.nn.log_sigmoid(-depth)  # Logistic(0, 1)
    else:
        lp_depth = normal_log_pdf(depth, priors.log_sigma_mu, priors.log_sigma_sd)
    lp_L = normal_log_pdf(log_L, priors.log_L_mu, priors.log_L_sd)
    lp_D = normal_log_pdf(log_D, priors.log_D_mu, priors.log_D_sd)
    return lp_L + lp_D + lp_depth + lq


def sample_population(priors: ClusterPriors) -> Population:
    """The population as numpyro sample sites (named by :func:`unconstrained_names`) and deterministics."""
    import numpyro
    import numpyro.distributions as dist

    log_L = numpyro.sample("log_L", dist.Normal(priors.log_L_mu, priors.log_L_sd))
    log_D = numpyro.sample("log_D", dist.Normal(priors.log_D_mu, priors.log_D_sd))
    if priors.depth_prior == "size":
        # physical: the size sigma * D is log-uniform in [size_min_pc, size_max_pc]
        y = numpyro.sample("logit_size", dist.Logistic(0.0, 1.0))
        lo, hi = priors.log_size_range
        log_sigma = numpyro.deterministic("log_sigma", lo + (hi - lo) * jax.nn.sigmoid(y) - log_D)
    else:
        log_sigma = numpyro.sample("log_sigma", dist.Normal(priors.log_sigma_mu, priors.log_sigma_sd))
    # Q is sampled as logit(Q) so that every site is unconstrained; its prior
    # is exactly Beta(Q_a, Q_b) (Uniform(0, 1) by default)
    beta = dist.Beta(priors.Q_a, priors.Q_b)
    logit_Q = numpyro.sample("logit_Q", dist.TransformedDistribution(beta, dist.transforms.SigmoidTransform().inv))
    Q = numpyro.deterministic("Q", jax.nn.sigmoid(logit_Q))
    numpyro.deterministic("L", jnp.exp(log_L))
    numpyro.deterministic("D", jnp.exp(log_D))
    numpyro.deterministic("sigma", jnp.exp(log_sigma))
    numpyro.deterministic("approx_size", jnp.exp(log_sigma + log_D))
    return Population(log_L, log_D, log_sigma, Q)


def physical_draws(z: np.ndarray, priors: ClusterPriors) -> dict[str, np.ndarray]:
    """``D``, ``sigma`` (depth, pc), ``sigma_log``, ``Q`` and ``L`` (pc) from unconstrained draws (NumPy)."""
    log_L, log_D, log_sigma, Q = to_population(np.asarray(z, float), priors, xp=np)
    return {
        "D": np.exp(log_D),
        "sigma": np.exp(log_sigma + log_D),
        "sigma_log": np.exp(log_sigma),
        "Q": Q,
        "L": np.exp(log_L),
    }


def population_from_physical(draws: dict[str, np.ndarray]) -> Population:
    """The :class:`Population` of physical draws (the inverse of :func:`physical_draws`)."""
    log_D = np.log(draws["D"])
    return Population(np.log(draws["L"]), log_D, np.log(draws["sigma"]) - log_D, np.asarray(draws["Q"]))
