"""The cluster component's per-star likelihood: its distance integrated out by adaptive Gauss-Hermite.

``ln p(w_i | cluster) = ln ∫ N(u | ln D, sigma) N(w_i | 1000 e^-u, s_i) du``,
integrated over the offset ``d = u - ln D`` from the cluster's centre.
The nodes are those of a Gaussian centred on the integrand's mode (the product
of the cluster Gaussian and a Gaussian-in-``u`` approximation of the
likelihood, polished by Newton steps on the exact integrand) with the
curvature there as its width; the exact integrand is importance-weighted
against that Gaussian, so the rule is exact for any node placement in the
limit of many nodes and no gradient needs to flow through the placement.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from gaia_distances.core.components import cluster_log_density_u
from gaia_distances.core.numerics import Array, gauss_hermite, normal_log_pdf

__all__ = ["cluster_log_likelihood"]


def cluster_log_likelihood(
    parallax: Array,
    parallax_error: Array,
    log_D: Array,
    log_sigma: Array,
    *,
    n_gh: int = 10,
    n_newton: int = 2,
    node_log_term: Callable[[Array], Array] | None = None,
    node_parallax: tuple[Array, Array] | None = None,
) -> Array:
    """``ln p(w_i | cluster)`` for every star (mas in, one value per star out).

    ``node_log_term(u)`` (``u`` of shape ``(K, n)``: the stars on the last,
    fastest axis, which XLA vectorises), if given, is another
    factor of the integrand evaluated at the nodes (the proper-motion term);
    ``node_parallax`` ``(precision, mean)``, if given, is that factor as a
    Gaussian in the true parallax (an approximation is enough): the nodes are
    placed on the parallax integrand times it, so that they sit on the whole
    integrand's peak where the node term is the sharper one.
    """
    w, s = parallax, parallax_error
    sigma = jnp.exp(log_sigma)
    x, log_wx = gauss_hermite(n_gh)
    # Everything is placed in d = u - ln D, the offset from the cluster's centre: in float32, u itself
    # (about 8 at a few kpc) carries an absolute error of 1e-6, as large as a well-resolved cluster's
    # depth in the tail of an unresolved depth's posterior, so differences u - ln D would be noise.
    w_D = 1000.0 * jnp.exp(-log_D)  # the cluster's parallax

    def log_integrand(d: Array) -> Array:
        return _log_integrand_offset(d, w, s, w_D, log_sigma)

    # Gaussian-in-d approximation of the likelihood (none for w <= 0): the parallax's, times the node
    # term's where given (both Gaussian in the true parallax)
    w_eff, prec_w = w, 1.0 / jnp.square(s)
    if node_parallax is not None:
        node_prec, node_mean = node_parallax
        w_eff, prec_w = (prec_w * w + node_prec * node_mean) / (prec_w + node_prec), prec_w + node_prec

    def log_whole(d: Array) -> Array:  # the integrand the nodes are placed on
        if node_parallax is None:
            return log_integrand(d)
        return log_integrand(d) - 0.5 * node_prec * jnp.square(w_D * jnp.exp(-d) - node_mean)

    prec_like = jnp.where(w_eff > 0, jnp.square(w_eff) * prec_w, 0.0)
    d_like = jnp.log(w_D / jnp.maximum(w_eff, 1e-30))
    prec_c = 1.0 / (sigma * sigma)
    prec = prec_c + prec_like
    mu = d_like * prec_like / prec

    def d1(d: Array) -> Array:
        return jax.jvp(log_whole, (d,), (jnp.ones_like(d),))[1]

    # Laplace refinement: Newton steps towards the integrand's mode, so that
    # the nodes sit where the mass is even when the likelihood is not
    # Gaussian in ln r (far tails, low signal-to-noise), or when the node
    # term (a member's proper motion, which scales as 1 / r) pins its
    # distance more tightly than its parallax does: a bright member of a far,
    # cold cluster with a large proper motion. Ten nodes placed on the
    # parallax alone miss that peak, and the rule's value then depends on
    # their placement, which no gradient follows.
    for _ in range(n_newton):
        g1, g2 = jax.jvp(d1, (mu,), (jnp.ones_like(mu),))
        step = jnp.where(g2 < 0, -g1 / jnp.where(g2 < 0, g2, -1.0), 0.0)
        mu = mu + jnp.clip(step, -3.0 * sigma - 0.1, 3.0 * sigma + 0.1)
    g2 = jax.jvp(d1, (mu,), (jnp.ones_like(mu),))[1]
    sd = jnp.where(g2 < 0, 1.0 / jnp.sqrt(jnp.where(g2 < 0, -g2, 1.0)), 1.0 / jnp.sqrt(prec))
    # The nodes are a proposal: the importance-weighted rule integrates the
    # exact integrand for any (mu, sd), and its derivative is the same rule
    # applied to the integrand's derivative. So no gradient flows through the
    # node placement, which saves differentiating the Newton iterations.
    mu = jax.lax.stop_gradient(mu)
    sd = jax.lax.stop_gradient(sd)
    xk = jnp.asarray(x, mu.dtype)[:, None]
    d = mu + sd * xk  # (K, n)
    # ln N(d | mu, sd) at the nodes, without recomputing (d - mu) / sd
    log_prop = -0.5 * jnp.square(xk) - jnp.log(sd) - 0.5 * math.log(2.0 * math.pi)
    terms = jnp.asarray(log_wx, mu.dtype)[:, None] + log_integrand(d) - log_prop
    if node_log_term is not None:
        terms = terms + node_log_term(log_D + d)
    return jax.nn.logsumexp(terms, axis=0)


def _log_integrand_offset(d: Array, parallax: Array, parallax_error: Array, w_D: Array, log_sigma: Array) -> Array:
    """``ln N(d | 0, sigma) + ln N(w | w_D e^-d, s)`` at offsets ``d = u - ln D`` from the cluster's centre."""
    return cluster_log_density_u(d, 0.0, log_sigma) + normal_log_pdf(w_D * jnp.exp(-d), parallax, parallax_error)
