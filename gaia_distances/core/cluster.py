"""The hierarchical cluster + field model, pure JAX and NumPyro.

Every star's distance ``r`` (pc) is drawn from a two-component mixture:

- with probability ``Q`` from the cluster, a Gaussian in ``ln r`` with mean
  ``ln D`` and width ``sigma`` (``exp(log_sigma)``);
- otherwise from the field, an exponentially decreasing space density with
  length scale ``L``: ``r^2 exp(-r/L) / (2 L^3)``;

and its parallax is ``Normal(1000/r + zero point, parallax_error)`` (mas).

Two models share these priors and this likelihood:

- :func:`joint_model` samples one latent distance per star, as the reference
  analysis does (thousands of parameters);
- :func:`marginal_model` integrates each distance out of the likelihood, so
  NUTS samples only ``(log_D, log_sigma, Q, log_L)``. The cluster integral uses
  adaptive Gauss-Hermite quadrature centred on the product of the cluster
  Gaussian and the star's likelihood; the field integral uses per-star nodes
  on which the likelihood is precomputed once (:func:`precompute_field_nodes`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gaia_distances.core.priors import EDSDPrior

Array = Any

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


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
    def physical(cls, size_min_pc: float = 0.3, size_max_pc: float = 40.0, **kw: Any) -> ClusterPriors:
        """A cluster whose line-of-sight size ``sigma * D`` lies in ``[size_min_pc, size_max_pc]``.

        The size is log-uniform in that range. Open clusters are a few pc deep,
        so the cluster component can no longer swallow the bulk of a big field
        (which a soft prior cannot prevent: tens of thousands of field stars
        outweigh any prior). ``kw`` overrides the other fields.
        """
        return cls(depth_prior="size", size_min_pc=size_min_pc, size_max_pc=size_max_pc, **kw)

    def log_size(self, y: Array, xp: Any = jnp) -> Array:
        """``ln(size / pc)`` from the unconstrained ``logit_size`` (``depth_prior="size"``)."""
        lo, hi = math.log(self.size_min_pc), math.log(self.size_max_pc)
        return lo + (hi - lo) * _sigmoid(y, xp)

    def depth_for(self, log_size: float, log_D: float) -> float:
        """The unconstrained depth parameter giving a cluster ``exp(log_size)`` pc deep at ``exp(log_D)``."""
        if self.depth_prior != "size":
            return log_size - log_D
        lo, hi = math.log(self.size_min_pc), math.log(self.size_max_pc)
        frac = min(max((log_size - lo) / (hi - lo), 0.02), 0.98)
        return math.log(frac / (1.0 - frac))


def _sigmoid(x: Array, xp: Any) -> Array:
    """The logistic function for JAX (``jax.nn.sigmoid``) or NumPy arrays."""
    return jax.nn.sigmoid(x) if xp is jnp else 1.0 / (1.0 + np.exp(-x))


_REFERENCE = ClusterPriors()


def _sample_population(priors: ClusterPriors) -> tuple[Array, Array, Array, Array]:
    import numpyro
    import numpyro.distributions as dist

    log_L = numpyro.sample("log_L", dist.Normal(priors.log_L_mu, priors.log_L_sd))
    log_D = numpyro.sample("log_D", dist.Normal(priors.log_D_mu, priors.log_D_sd))
    if priors.depth_prior == "size":
        # physical: the size sigma * D is log-uniform in [size_min_pc, size_max_pc]
        y = numpyro.sample("logit_size", dist.Logistic(0.0, 1.0))
        log_sigma = numpyro.deterministic("log_sigma", priors.log_size(y) - log_D)
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
    return log_L, log_D, log_sigma, Q


def mixture_distribution(log_L: Array, log_D: Array, log_sigma: Array, Q: Array) -> Any:
    """The distance prior of one star as a numpyro ``MixtureGeneral`` (cluster first)."""
    import numpyro.distributions as dist

    field = dist.TransformedDistribution(
        dist.Gamma(3.0, 1.0), dist.transforms.AffineTransform(0.0, jnp.exp(log_L), domain=dist.constraints.positive)
    )
    cluster = dist.TransformedDistribution(
        dist.Normal(log_D, jnp.exp(log_sigma)), dist.transforms.ExpTransform(domain=dist.constraints.positive)
    )
    return dist.MixtureGeneral(dist.Categorical(probs=jnp.stack([Q, 1.0 - Q], axis=-1)), [cluster, field])


def joint_model(
    parallax_error: Array,
    parallax: Array | None = None,
    zero_point: Array | float = 0.0,
    priors: ClusterPriors = _REFERENCE,
) -> None:
    """One latent distance per star (the reference model)."""
    import numpyro
    import numpyro.distributions as dist

    log_L, log_D, log_sigma, Q = _sample_population(priors)
    with numpyro.plate("stars", parallax_error.shape[0]):
        mix = mixture_distribution(log_L, log_D, log_sigma, Q)
        r = numpyro.sample("r", mix)
        numpyro.sample("parallax", dist.Normal(1000.0 / r + zero_point, parallax_error), obs=parallax)


class FieldNodes(NamedTuple):
    """Per-star nodes in ``u = ln r`` with the log likelihood (and weights) folded in."""

    u: Array  # (n, K) nodes
    log_weight: Array  # (n, K): ln(trapezoid weight) + ln N(w | 1000 e^-u, s)


def log_likelihood_u(u: Array, w: Array, s: Array, xp: Any = jnp) -> Array:
    """``ln N(w | 1000 e^-u, s)`` including its normalisation (``xp``: ``jnp`` or ``np``)."""
    z = (1000.0 * xp.exp(-u) - w) / s
    return -0.5 * z * z - xp.log(s) - _LOG_SQRT_2PI


def mixture_log_prior_u(u: Array, log_L: Array, log_D: Array, log_sigma: Array, Q: Array) -> tuple[Array, Array]:
    """The two terms of the distance prior in ``u = ln r``: ``ln Q N(u | ln D, sigma)``
    and ``ln (1 - Q) EDSD_u(u; L)``; their ``logaddexp`` is the mixture."""
    log_cl = -0.5 * jnp.square((u - log_D) / jnp.exp(log_sigma)) - log_sigma - _LOG_SQRT_2PI
    log_fd = EDSDPrior(jnp.exp(log_L)).log_prob_logr(u)
    return jnp.log(Q) + log_cl, jnp.log1p(-Q) + log_fd


def precompute_field_nodes(
    parallax: np.ndarray,
    parallax_error: np.ndarray,
    *,
    n_nodes: int = 48,
    L_range: tuple[float, float] = (30.0, 20000.0),
    k_like: float = 9.0,
) -> FieldNodes:
    """Nodes covering each star's likelihood x any field prior with L in ``L_range``.

    The range is the likelihood's ``k_like``-sigma parallax interval intersected
    with the EDSD support for the extreme length scales. The trapezoid rule in
    ``u`` converges geometrically for these smooth, decaying integrands.
    """
    w = np.asarray(parallax, float)
    s = np.asarray(parallax_error, float)
    d = np.sqrt(np.square(np.maximum(w, 0.0) - w) + np.square(k_like * s))
    u_lo_like = np.log(1000.0 / (w + d))
    wl = w - d
    with np.errstate(divide="ignore", invalid="ignore"):
        u_hi_like = np.where(wl > 0, np.log(1000.0 / np.where(wl > 0, wl, 1.0)), np.inf)
    # EDSD mass below x L is < x^3 / 6; above 2 (3 + t) L is < e^-t
    u_lo_prior = math.log(L_range[0]) + (math.log(6.0) - 30.0) / 3.0
    u_hi_prior = math.log(L_range[1]) + math.log(2.0 * (3.0 + 30.0))
    a = np.maximum(u_lo_like, u_lo_prior)
    b = np.minimum(u_hi_like, u_hi_prior)
    bad = ~(b > a)
    a = np.where(bad, u_lo_like, a)
    b = np.where(bad, np.minimum(u_hi_like, u_hi_prior + 5), b)
    t = np.linspace(0.0, 1.0, n_nodes)
    u = a[:, None] + (b - a)[:, None] * t
    h = (b - a) / (n_nodes - 1)
    trap = np.full(n_nodes, 1.0)
    trap[[0, -1]] = 0.5
    loglike = log_likelihood_u(u, w[:, None], s[:, None], xp=np)
    log_weight = np.log(h)[:, None] + np.log(trap)[None, :] + loglike
    return FieldNodes(u=u, log_weight=log_weight)


class FieldTable(NamedTuple):
    """``ln p(w_i | field, L)`` tabulated on a uniform ``ln L`` grid, with its slope.

    The field integral depends on the single global ``L``, so it is computed
    once per star on ``J`` values of ``ln L`` with fine quadrature and then
    evaluated by cubic Hermite interpolation (C1, error ``O(h^4)``) at every
    NUTS step: a few flops per star instead of one exponential per node.
    """

    log_L0: Array  # scalar: first grid value
    step: Array  # scalar: grid spacing in ln L
    value: Array  # (n, J)
    slope: Array  # (n, J): d value / d ln L

    def L_range(self) -> tuple[float, float]:
        """The range of L (pc) the table covers."""
        lo = float(self.log_L0)
        return math.exp(lo), math.exp(lo + float(self.step) * (self.value.shape[1] - 1))


def _field_integrals(u: Array, log_weight: Array, log_L: Array) -> tuple[Array, Array]:
    """``ln ∫ EDSD_u(u; L) like du`` and its ``d/d ln L`` for every star and L."""
    L = jnp.exp(log_L)[None, :, None]
    uu = u[:, None, :]
    log_terms = log_weight[:, None, :] + EDSDPrior(L).log_prob_logr(uu)
    value = jax.nn.logsumexp(log_terms, axis=2)
    post = jnp.exp(log_terms - value[..., None])
    slope = jnp.sum(post * (jnp.exp(uu) / L - 3.0), axis=2)
    return value, slope


def precompute_field_table(
    parallax: np.ndarray,
    parallax_error: np.ndarray,
    L_range: tuple[float, float],
    *,
    n_L: int = 96,
    n_nodes: int = 160,
    chunk_size: int = 2048,
) -> FieldTable:
    """Tabulate each star's field likelihood over ``ln L`` in ``L_range`` (pc)."""
    grid = np.linspace(math.log(L_range[0]), math.log(L_range[1]), n_L)
    nodes = precompute_field_nodes(parallax, parallax_error, n_nodes=n_nodes, L_range=L_range)
    fn = jax.jit(_field_integrals)
    n = len(parallax)
    values, slopes = [], []
    dtype = jnp.asarray(0.0).dtype
    g = jnp.asarray(grid, dtype)
    for start in range(0, n, chunk_size):
        sl = slice(start, min(start + chunk_size, n))
        v, d = fn(jnp.asarray(nodes.u[sl], dtype), jnp.asarray(nodes.log_weight[sl], dtype), g)
        values.append(np.asarray(v))
        slopes.append(np.asarray(d))
    value = np.concatenate(values) if values else np.zeros((0, n_L))
    slope = np.concatenate(slopes) if slopes else np.zeros((0, n_L))
    return FieldTable(np.asarray(grid[0]), np.asarray(grid[1] - grid[0]), value, slope)


def field_log_likelihood(log_L: Array, table: FieldTable) -> Array:
    """Cubic Hermite interpolation of the tabulated field likelihood at ``ln L``.

    Outside the table the value is extended linearly with the end slope.
    """
    J = table.value.shape[1]
    t = (log_L - table.log_L0) / table.step
    i = jnp.clip(jnp.floor(t), 0, J - 2).astype(jnp.int32)
    x = t - i
    v0 = jax.lax.dynamic_index_in_dim(table.value, i, axis=1, keepdims=False)
    v1 = jax.lax.dynamic_index_in_dim(table.value, i + 1, axis=1, keepdims=False)
    m0 = jax.lax.dynamic_index_in_dim(table.slope, i, axis=1, keepdims=False) * table.step
    m1 = jax.lax.dynamic_index_in_dim(table.slope, i + 1, axis=1, keepdims=False) * table.step
    xc = jnp.clip(x, 0.0, 1.0)
    x2, x3 = xc * xc, xc * xc * xc
    inner = (2 * x3 - 3 * x2 + 1) * v0 + (x3 - 2 * x2 + xc) * m0 + (-2 * x3 + 3 * x2) * v1 + (x3 - x2) * m1
    # linear extension beyond the ends
    return inner + jnp.where(x < 0, x * m0, 0.0) + jnp.where(x > 1, (x - 1) * m1, 0.0)


class StarData(NamedTuple):
    """What the marginal model needs per star (mas); build with :func:`prepare_star_data`.

    ``weight`` (optional, 1 or 0 per star) masks padding stars out of the
    likelihood, so that fields of different sizes share one array shape.
    """

    parallax: Array  # zero-point corrected
    parallax_error: Array
    field: FieldTable
    weight: Array | None = None


def prepare_star_data(
    parallax: np.ndarray,
    parallax_error: np.ndarray,
    *,
    L_range: tuple[float, float] | None = None,
    n_L: int = 96,
    dtype: Any = None,
) -> StarData:
    """Precompute what :func:`marginal_model` needs; ``L_range`` defaults from the data.

    The default range is 1/20 to 20 times a rough field length scale: the median
    inverse parallax of stars with S/N > 5 divided by 2.67 (the median of the
    EDSD in units of L).
    """
    w = np.asarray(parallax, float)
    s = np.asarray(parallax_error, float)
    if L_range is None:
        L0 = rough_length_scale(w, s)
        L_range = (L0 / 20.0, L0 * 20.0)
    table = precompute_field_table(w, s, L_range, n_L=n_L)
    dt = dtype or jnp.asarray(0.0).dtype
    return StarData(
        jnp.asarray(w, dt),
        jnp.asarray(s, dt),
        FieldTable(*(jnp.asarray(x, dt) for x in table)),
    )


def pad_star_data(data: StarData, n: int) -> StarData:
    """``data`` padded to ``n`` stars by repeating its last star with weight 0."""
    m = data.parallax.shape[0]
    if n < m:
        raise ValueError(f"cannot pad {m} stars to {n}")
    idx = np.minimum(np.arange(n), m - 1)
    weight = (np.arange(n) < m).astype(np.asarray(data.parallax).dtype)
    if data.weight is not None:
        weight = weight * np.asarray(data.weight)[idx]
    field = data.field._replace(value=data.field.value[idx], slope=data.field.slope[idx])
    return StarData(data.parallax[idx], data.parallax_error[idx], field, jnp.asarray(weight))


def stack_star_data(items: Sequence[StarData]) -> StarData:
    """Stack equally sized :class:`StarData` along a new leading (cluster) axis, for ``vmap``."""
    return jax.tree_util.tree_map(lambda *x: jnp.stack([jnp.asarray(v) for v in x]), *items)


def rough_length_scale(parallax: np.ndarray, parallax_error: np.ndarray) -> float:
    """A data-based guess of the field EDSD length scale (pc)."""
    w = np.asarray(parallax, float)
    s = np.asarray(parallax_error, float)
    good = w / s > 5
    if good.sum() < 10:
        good = w > 0
    if not good.any():
        return 1000.0
    return float(np.median(1000.0 / w[good]) / 2.674)


def _gauss_hermite(n: int) -> tuple[np.ndarray, np.ndarray]:
    x, wts = np.polynomial.hermite_e.hermegauss(n)  # weight exp(-x^2/2)
    return x, np.log(wts / math.sqrt(2.0 * math.pi))


def component_log_likelihoods(
    log_L: Array, log_D: Array, log_sigma: Array, data: StarData, *, n_gh: int = 10, n_newton: int = 2
) -> tuple[Array, Array]:
    """``ln p(w_i | cluster)`` and ``ln p(w_i | field)`` for every star.

    The cluster integral ``∫ N(u | ln D, sigma) N(w | 1000 e^-u, s) du`` uses
    Gauss-Hermite nodes of a Gaussian centred on the integrand's mode (the
    product of the cluster Gaussian and a Gaussian-in-``u`` approximation of the
    likelihood, polished by ``n_newton`` Newton steps on the exact integrand)
    with the curvature there as its width; the exact integrand is
    importance-weighted against that Gaussian.
    """
    w, s = data.parallax, data.parallax_error
    sigma = jnp.exp(log_sigma)
    x, log_wx = _gauss_hermite(n_gh)
    wpos = jnp.maximum(w, 1e-12)
    prec_like = jnp.where(w > 0, jnp.square(w / s), 0.0)
    u_like = jnp.log(1000.0 / wpos)
    prec_c = 1.0 / (sigma * sigma)
    prec = prec_c + prec_like
    mu = (log_D * prec_c + u_like * prec_like) / prec

    def log_integrand(u: Array) -> Array:
        return -0.5 * jnp.square((u - log_D) / sigma) + log_likelihood_u(u, w, s)

    def d1(u: Array) -> Array:
        return jax.jvp(log_integrand, (u,), (jnp.ones_like(u),))[1]

    # Laplace refinement: Newton steps towards the integrand's mode, so that
    # the nodes sit where the mass is even when the likelihood is not
    # Gaussian in ln r (far tails, low signal-to-noise).
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
    u = mu[:, None] + sd[:, None] * x[None, :]
    # integrand / proposal density, proposal N(mu, sd)
    log_cl = -0.5 * jnp.square((u - log_D) / sigma) - log_sigma - _LOG_SQRT_2PI
    log_prop = -0.5 * jnp.square(x)[None, :] - jnp.log(sd)[:, None] - _LOG_SQRT_2PI
    terms = log_wx[None, :] + log_cl + log_likelihood_u(u, w[:, None], s[:, None]) - log_prop
    log_c = jax.nn.logsumexp(terms, axis=1)

    log_f = field_log_likelihood(log_L, data.field)
    return log_c, log_f


def marginal_log_likelihood(
    params: tuple[Array, Array, Array, Array], data: StarData, *, n_gh: int = 10, n_newton: int = 2
) -> Array:
    """Total ``ln p(w | log_L, log_D, log_sigma, Q)`` with distances integrated out."""
    log_L, log_D, log_sigma, Q = params
    log_c, log_f = component_log_likelihoods(log_L, log_D, log_sigma, data, n_gh=n_gh, n_newton=n_newton)
    terms = jnp.logaddexp(jnp.log(Q) + log_c, jnp.log1p(-Q) + log_f)
    if data.weight is not None:
        terms = jnp.where(data.weight > 0, terms, 0.0)
    return jnp.sum(terms)


def marginal_model(data: StarData, priors: ClusterPriors = _REFERENCE, n_gh: int = 10, n_newton: int = 2) -> None:
    """Population parameters only; each star's distance is integrated out."""
    import numpyro

    log_L, log_D, log_sigma, Q = _sample_population(priors)
    loglike = marginal_log_likelihood((log_L, log_D, log_sigma, Q), data, n_gh=n_gh, n_newton=n_newton)
    numpyro.factor("log_likelihood", loglike)


def membership_log_odds(
    log_L: Array, log_D: Array, log_sigma: Array, Q: Array, data: StarData, *, n_gh: int = 10, n_newton: int = 2
) -> Array:
    """``ln [Q p(w|cluster) / ((1-Q) p(w|field))]`` per star, for one parameter set."""
    log_c, log_f = component_log_likelihoods(log_L, log_D, log_sigma, data, n_gh=n_gh, n_newton=n_newton)
    return jnp.log(Q) + log_c - jnp.log1p(-Q) - log_f


def unconstrained_names(priors: ClusterPriors) -> tuple[str, str, str, str]:
    """Names of the sampled population sites, in the order of :func:`pack`."""
    depth = "logit_size" if priors.depth_prior == "size" else "log_sigma"
    return ("log_L", "log_D", depth, "logit_Q")


def log_prior(z: Array, priors: ClusterPriors) -> Array:
    """Log prior density of the unconstrained vector ``(log_L, log_D, depth, logit_Q)``."""
    log_L, log_D, depth, logit_Q = z[..., 0], z[..., 1], z[..., 2], z[..., 3]

    def norm(x: Array, mu: float, sd: float) -> Array:
        return -0.5 * jnp.square((x - mu) / sd) - math.log(sd) - _LOG_SQRT_2PI

    Q = jax.nn.sigmoid(logit_Q)
    # Beta(a, b) on Q, pushed to logit(Q): Q^a (1-Q)^b / B(a, b)
    lbeta = (
        jax.scipy.special.gammaln(priors.Q_a)
        + jax.scipy.special.gammaln(priors.Q_b)
        - jax.scipy.special.gammaln(priors.Q_a + priors.Q_b)
    )
    lq = priors.Q_a * jnp.log(Q) + priors.Q_b * jnp.log1p(-Q) - lbeta
    if priors.depth_prior == "size":
        lp_depth = jax.nn.log_sigmoid(depth) + jax.nn.log_sigmoid(-depth)  # Logistic(0, 1)
    else:
        lp_depth = norm(depth, priors.log_sigma_mu, priors.log_sigma_sd)
    return norm(log_L, priors.log_L_mu, priors.log_L_sd) + norm(log_D, priors.log_D_mu, priors.log_D_sd) + lp_depth + lq


def to_population(z: Array, priors: ClusterPriors, xp: Any = jnp) -> tuple[Array, Array, Array, Array]:
    """``(log_L, log_D, log_sigma, Q)`` from the unconstrained vector (``xp``: ``jnp`` or ``np``)."""
    log_L, log_D, depth, logit_Q = z[..., 0], z[..., 1], z[..., 2], z[..., 3]
    log_sigma = priors.log_size(depth, xp) - log_D if priors.depth_prior == "size" else depth
    return log_L, log_D, log_sigma, _sigmoid(logit_Q, xp)


def log_posterior(z: Array, data: StarData, priors: ClusterPriors) -> Array:
    """Unnormalised log posterior of the marginal model at unconstrained ``z``."""
    return log_prior(z, priors) + marginal_log_likelihood(to_population(z, priors), data)


@functools.lru_cache(maxsize=16)
def whitened_potential_gen(priors: ClusterPriors) -> Any:
    """``gen(centre, chol, data)`` -> potential of ``x`` with ``z = centre + chol @ x``.

    NUTS samples ``x``, the population parameters whitened by the Laplace
    approximation at the MAP: NumPyro's mass-matrix adaptation shrinks towards
    ``1e-3 * I``, which would otherwise swamp parameters as tight as ``ln D``
    (sd ~ 1e-3). One function object per prior set, so compiled chains are
    reused across fits.
    """

    def gen(centre: Array, chol: Array, data: StarData) -> Any:
        return lambda x: -log_posterior(centre + chol @ x, data, priors)

    return gen


@functools.lru_cache(maxsize=16)
def _map_functions(priors: ClusterPriors) -> Any:
    def lp(z: Array, data: StarData) -> Array:
        return log_posterior(z, data, priors)

    return jax.jit(jax.value_and_grad(lp))


@functools.lru_cache(maxsize=16)
def per_star_functions(priors: ClusterPriors, quantiles: tuple[float, ...]) -> tuple[Any, Any]:
    """Jitted ``membership(z_draws, data)`` (mean probability) and
    ``quantiles(z_draws, data, grid)``; cached per prior set."""

    def membership(zs: Array, data: StarData) -> Array:
        def one(z: Array) -> Array:
            return jax.nn.sigmoid(membership_log_odds(*to_population(z, priors), data))

        return jax.lax.map(one, zs).mean(axis=0)

    def quant(zs: Array, data: StarData, grid: Array) -> Array:
        return cluster_model_quantiles(zs, data, priors, grid, quantiles)

    return jax.jit(membership), jax.jit(quant)


def parallax_overdensities(log_inv_parallax: np.ndarray, *, n_peaks: int = 3) -> list[float]:
    """``ln D`` of the strongest narrow overdensities among stars' ``ln(1000 / w)``.

    The density with a narrow kernel (0.02 in ln r) is divided by a broad one
    (0.3); the highest local maxima of that ratio, among those holding at
    least 10 stars, are returned.
    """
    x = np.asarray(log_inv_parallax, float)
    if x.size < 20:
        return []
    grid = np.linspace(x.min(), x.max(), 800)
    step = grid[1] - grid[0]
    hist, _ = np.histogram(x, bins=np.append(grid - 0.5 * step, grid[-1] + 0.5 * step))

    def smooth(width: float) -> np.ndarray:
        k = np.arange(-int(4 * width / step) - 1, int(4 * width / step) + 2) * step
        kern = np.exp(-0.5 * (k / width) ** 2)
        full = np.convolve(hist, kern / kern.sum(), mode="full")
        start = (kern.size - 1) // 2
        return full[start : start + hist.size]

    narrow, broad = smooth(0.02), smooth(0.3)
    ratio = narrow / np.maximum(broad, 1e-12)
    counts = narrow * (0.02 * np.sqrt(2 * np.pi) / step)
    is_peak = (ratio[1:-1] > ratio[:-2]) & (ratio[1:-1] >= ratio[2:]) & (counts[1:-1] >= 10)
    idx = np.flatnonzero(is_peak) + 1
    idx = idx[np.argsort(ratio[idx])[::-1]][:n_peaks]
    return [float(grid[i]) for i in idx if ratio[i] > 1.5]


def find_map(
    data: StarData,
    priors: ClusterPriors,
    *,
    distance_hint: float | None = None,
    n_candidates: int = 48,
    n_polish: int = 4,
    max_iter: int = 50,
) -> tuple[np.ndarray, float, np.ndarray | None]:
    """Maximum a posteriori of the marginal model, robust to multimodality.

    A grid of cluster distances spanning the stars' inverse parallaxes (or
    around ``distance_hint``, pc), sizes and fractions is scored; the best
    candidates are polished by damped Newton steps with a finite-difference
    Hessian. Returns the unconstrained vector, its log posterior and the
    posterior covariance of the Laplace approximation there (``None`` when the
    Hessian is not negative definite), which makes a good initial NUTS mass
    matrix.
    """
    real = np.ones(data.parallax.shape[0], bool) if data.weight is None else np.asarray(data.weight) > 0
    w = np.asarray(data.parallax, float)[real]
    s = np.asarray(data.parallax_error, float)[real]
    good = w / s > 5
    if good.sum() < 10:
        good = w > 0
    # the field-only maximum-likelihood L, read off the tabulated field integrals
    field_ll = np.sum(np.asarray(data.field.value, float)[real], axis=0)
    L0 = math.exp(float(data.field.log_L0) + float(data.field.step) * int(np.argmax(field_ll)))
    peaks: list[float] = []
    if distance_hint is not None:
        logD = math.log(distance_hint) + np.linspace(-0.15, 0.15, 13)
    else:
        inv = np.log(1000.0 / w[good]) if good.any() else np.array([math.log(1000.0)])
        lo, hi = np.quantile(inv, [0.002, 0.998])
        logD = np.linspace(lo, hi, n_candidates)
        peaks = parallax_overdensities(inv)
        logD = np.concatenate([logD, peaks])
    sizes = np.log(np.array([2.0, 8.0, 30.0]))
    logit_q = np.array([-5.0, -2.5, -0.5, 2.0])
    cand = []
    for ld in logD:
        for ls in sizes:
            depth = priors.depth_for(ls, ld)
            for lq in logit_q:
                cand.append((math.log(L0), ld, depth, lq))
    dtype = data.parallax.dtype
    z = np.array(cand)
    value_and_grad = _map_functions(priors)

    def f(zz: Array) -> Array:
        return value_and_grad(zz, data)[0]

    def grad(zz: Array) -> Array:
        return value_and_grad(zz, data)[1]

    score = np.array([float(f(z[i])) for i in range(z.shape[0])])
    score = np.where(np.isfinite(score), score, -np.inf)
    # polish the best candidate of each of the n_polish best-scoring distances,
    # and of each overdensity in the stars' inverse parallaxes
    by_d = np.array([c[1] for c in cand])
    order: list[int] = []
    for p in peaks:
        near = np.flatnonzero(np.abs(by_d - p) < 1e-9)
        if near.size:
            order.append(int(near[np.argmax(score[near])]))
    n_polish = n_polish + len(order)
    for i in np.argsort(score)[::-1]:
        if all(abs(by_d[i] - by_d[j]) > 0.2 for j in order):
            order.append(int(i))
        if len(order) == n_polish:
            break

    def hessian(x: np.ndarray) -> np.ndarray:
        h = 1e-3 * np.maximum(1.0, np.abs(x)) * (1e-1 if dtype == jnp.float64 else 1.0)
        rows = []
        for i in range(4):
            e = np.zeros(4)
            e[i] = h[i]
            gp = np.asarray(grad(jnp.asarray(x + e, dtype)), float)
            gm = np.asarray(grad(jnp.asarray(x - e, dtype)), float)
            rows.append((gp - gm) / (2 * h[i]))
        H = np.array(rows)
        return 0.5 * (H + H.T)

    best, best_val = z[order[0]].copy(), float(score[order[0]])
    for k in order:
        x = z[k].astype(float)
        fx = float(f(jnp.asarray(x, dtype)))
        for _ in range(max_iter):
            g = np.asarray(grad(jnp.asarray(x, dtype)), float)
            H = hessian(x)
            try:
                evals, evecs = np.linalg.eigh(-H)
                step = evecs @ ((evecs.T @ g) / np.maximum(evals, 1e-3 * max(evals.max(), 1e-12) + 1e-6))
            except np.linalg.LinAlgError:
                step = g * 1e-3
            norm = np.linalg.norm(step)
            if norm > 1.0:
                step = step / norm
            t = 1.0
            while t > 1e-4:
                fn = float(f(jnp.asarray(x + t * step, dtype)))
                if np.isfinite(fn) and fn >= fx - 1e-6:
                    break
                t *= 0.5
            else:
                break
            x, converged = x + t * step, abs(fn - fx) < 1e-4 and t * norm < 1e-4
            fx = fn
            if converged:
                break
        if fx > best_val:
            best, best_val = x, fx
    cov = None
    try:
        Hb = hessian(best)
        evals = np.linalg.eigvalsh(-Hb)
        if np.all(evals > 0) and np.all(np.isfinite(Hb)):
            cov = np.linalg.inv(-Hb)
    except np.linalg.LinAlgError:
        cov = None
    return best, best_val, cov


def posterior_distance_grid(
    w: Array, s: Array, log_D_centre: float, sigma_max: float, L_range: tuple[float, float]
) -> Array:
    """Per-star nodes in ``ln r`` resolving the field, the cluster and the likelihood."""
    field = precompute_field_nodes(np.asarray(w), np.asarray(s), n_nodes=64, L_range=L_range).u
    n = len(w)
    cl = log_D_centre + sigma_max * np.linspace(-8.0, 8.0, 48)
    wn = np.asarray(w, float)
    sn = np.asarray(s, float)
    snr_ok = wn / sn > 2
    centre = np.log(1000.0 / np.where(snr_ok, wn, 1.0))
    tau = np.where(snr_ok, sn / np.where(snr_ok, wn, 1.0), 0.1)
    like = np.where(snr_ok[:, None], centre[:, None] + tau[:, None] * np.linspace(-8.0, 8.0, 32), field[:, :32])
    grid = np.concatenate([field, np.broadcast_to(cl, (n, cl.size)), like], axis=1)
    return np.sort(grid, axis=1)


def cluster_model_quantiles(
    z_draws: Array,
    data: StarData,
    priors: ClusterPriors,
    grid: Array,
    quantiles: tuple[float, ...],
) -> Array:
    """Quantiles (pc) of each star's distance under the fitted mixture prior.

    The posterior of ``ln r`` given each draw of the population parameters is
    evaluated exactly on ``grid`` (from :func:`posterior_distance_grid`),
    normalised with the same integrals the likelihood uses, averaged over the
    draws (Rao-Blackwellisation), and inverted.
    """
    w, s = data.parallax[:, None], data.parallax_error[:, None]
    like = log_likelihood_u(grid, w, s)

    def one(z: Array) -> Array:
        log_L, log_D, log_sigma, Q = to_population(z, priors)
        log_c, log_f = component_log_likelihoods(log_L, log_D, log_sigma, data)
        log_z = jnp.logaddexp(jnp.log(Q) + log_c, jnp.log1p(-Q) + log_f)
        log_prior_u = jnp.logaddexp(*mixture_log_prior_u(grid, log_L, log_D, log_sigma, Q))
        return jnp.exp(log_prior_u + like - log_z[:, None])

    dens = jax.lax.map(one, z_draws).mean(axis=0)
    dx = jnp.diff(grid, axis=1)
    cdf = jnp.concatenate([jnp.zeros_like(grid[:, :1]), jnp.cumsum(0.5 * (dens[:, 1:] + dens[:, :-1]) * dx, axis=1)], 1)
    cdf = cdf / cdf[:, -1:]
    out = []
    for q in quantiles:
        i = jnp.clip(jnp.sum(cdf < q, axis=1) - 1, 0, grid.shape[1] - 2)[:, None]
        c0 = jnp.take_along_axis(cdf, i, 1)[:, 0]
        c1 = jnp.take_along_axis(cdf, i + 1, 1)[:, 0]
        u0 = jnp.take_along_axis(grid, i, 1)[:, 0]
        u1 = jnp.take_along_axis(grid, i + 1, 1)[:, 0]
        t = jnp.clip((q - c0) / jnp.where(c1 > c0, c1 - c0, 1.0), 0.0, 1.0)
        out.append(jnp.exp(u0 + t * (u1 - u0)))
    return jnp.stack(out, axis=1)
