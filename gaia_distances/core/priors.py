"""Distance priors as pure JAX objects.

Every prior here is a pytree whose leaves are per-star parameter arrays, so a
chunk of stars can be sliced, padded and passed through ``jax.jit`` like any
other array. Densities are evaluated in the variable ``u = ln(r / pc)``:
``log_prob_logr(u) = ln p(r = e^u) + u`` (the ``+ u`` is the Jacobian), which
keeps the generalized gamma prior finite even where ``L ~ 1e-6 pc``.

Parameters broadcast against ``u`` in the usual NumPy way: the quadrature calls
these methods with parameters of shape ``(n, 1)`` and ``u`` of shape ``(n, K)``.

Besides the densities, each prior tells the quadrature what its accuracy
bound (:mod:`gaia_distances.core.quadrature`) relies on:

- ``log_concave``: whether ``log_prob_logr`` is concave in ``u`` for every
  valid parameter value (true of EDSD, GGD, the uniform space density and the
  common numpyro families listed in :data:`LOG_CONCAVE_DISTRIBUTIONS`);
- ``valid()``: per star, whether the parameters define a proper prior;
- ``log_domain()``: the ``u`` interval where the density is positive;
- ``log_prob_logr_offset(u0, d)``: ``ln p(u0 + d) - ln p(u0)`` without the
  cancellation of subtracting two large numbers.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln

from gaia_distances.core.numerics import Array

__all__ = [
    "GLOBAL_LOG_R_MAX",
    "GLOBAL_LOG_R_MIN",
    "LOG_CONCAVE_DISTRIBUTIONS",
    "DistributionPrior",
    "EDSDPrior",
    "GGDPrior",
    "UniformSpaceDensityPrior",
    "check_positive_support",
]

#: Lower and upper limits (ln pc) used when a prior gives no finite support.
GLOBAL_LOG_R_MIN = math.log(1e-3)
GLOBAL_LOG_R_MAX = math.log(1e9)

#: numpyro distributions over r whose log density in ``u = ln r`` is concave for
#: every valid parameter value (for these the quadrature's bound is rigorous).
LOG_CONCAVE_DISTRIBUTIONS = frozenset(
    {
        "Chi2",
        "Exponential",
        "Gamma",
        "HalfCauchy",
        "HalfNormal",
        "InverseGamma",
        "LogNormal",
        "LogUniform",
        "Pareto",
        "Uniform",
        "Weibull",
    }
)


def _positive_finite(x: Array) -> Array:
    x = jnp.asarray(x)
    return jnp.isfinite(x) & (x > 0)


def _unbounded(like: Array) -> tuple[Array, Array]:
    shape = jnp.shape(like)
    return jnp.full(shape, -jnp.inf), jnp.full(shape, jnp.inf)


def _gamma_log_support(shape: Array, log_eps: float) -> tuple[Array, Array]:
    """Loose ``ln x`` bounds holding all but ``~2 eps`` of a Gamma(shape, 1).

    Lower: ``P(X < x) <= x^k / Gamma(k + 1)``. Upper: the Chernoff bound
    gives ``P(X > 2 (k + t)) < e^-t`` with ``t = -ln eps``.
    """
    t = -log_eps
    lo = (gammaln(shape + 1.0) + log_eps) / shape
    hi = jnp.log(2.0 * (shape + t))
    return lo, hi


class EDSDPrior(NamedTuple):
    """Exponentially decreasing space density: ``r^2 exp(-r/L) / (2 L^3)``.

    Parameters
    ----------
    length_scale
        ``L`` in pc, one value per star.

    Examples
    --------
    >>> import numpy as np
    >>> prior = EDSDPrior(np.array([1350.0]))
    >>> float(np.exp(prior.log_prob(np.array([1350.0])))[0]) * 1350.0  # doctest: +ELLIPSIS
    0.1839...
    """

    length_scale: Array

    @property
    def log_concave(self) -> bool:
        """True: ``3 u - e^u / L`` is concave in ``u``."""
        return True

    def log_prob(self, r: Array) -> Array:
        """Log density in pc^-1 at distance ``r`` (pc)."""
        L = self.length_scale
        lp = -math.log(2.0) - 3.0 * jnp.log(L) + 2.0 * jnp.log(r) - r / L
        return jnp.where(r > 0, lp, -jnp.inf)

    def log_prob_logr(self, u: Array) -> Array:
        """``ln p(r) + u`` at ``u = ln(r / pc)``: the log density of ``u``."""
        L = self.length_scale
        return -math.log(2.0) + 3.0 * (u - jnp.log(L)) - jnp.exp(u) / L

    def log_prob_logr_offset(self, u0: Array, d: Array) -> Array:
        """``log_prob_logr(u0 + d) - log_prob_logr(u0)``, accurate for small ``d``."""
        return 3.0 * d - jnp.exp(u0) / self.length_scale * jnp.expm1(d)

    def valid(self) -> Array:
        """Per star: ``L`` is finite and positive."""
        return _positive_finite(self.length_scale)

    def log_domain(self) -> tuple[Array, Array]:
        """The ``u`` interval where the density is positive: all of it."""
        return _unbounded(self.length_scale)

    def log_support(self, log_eps: float) -> tuple[Array, Array]:
        """``(u_lo, u_hi)`` in ``ln pc`` holding all but about ``2 exp(log_eps)`` of the mass."""
        lo, hi = _gamma_log_support(jnp.asarray(3.0), log_eps)
        logL = jnp.log(self.length_scale)
        return logL + lo, logL + hi


class GGDPrior(NamedTuple):
    """Generalized gamma distance prior (Bailer-Jones et al. 2021).

    ``P(r) = alpha / (L^(beta+1) Gamma((beta+1)/alpha)) r^beta exp(-(r/L)^alpha)``.
    The fields are in the order of the user-level :class:`~gaia_distances.GGD`
    ``(alpha, beta, length_scale)``.

    Parameters
    ----------
    alpha, beta
        The shape parameters (dimensionless), one value per star.
        ``alpha = 1, beta = 2`` is the EDSD prior.
    length_scale
        ``L`` in pc, one value per star.

    Examples
    --------
    >>> import numpy as np
    >>> ggd = GGDPrior(alpha=np.array(1.0), beta=np.array(2.0), length_scale=np.array(1350.0))
    >>> edsd = EDSDPrior(np.array(1350.0))
    >>> bool(np.isclose(ggd.log_prob(np.array(800.0)), edsd.log_prob(np.array(800.0))))
    True
    """

    alpha: Array
    beta: Array
    length_scale: Array

    @property
    def log_concave(self) -> bool:
        """True: ``(beta + 1) u - (e^u / L)^alpha`` is concave in ``u`` for ``alpha > 0``."""
        return True

    def log_prob(self, r: Array) -> Array:
        """Log density in pc^-1 at distance ``r`` (pc)."""
        u = jnp.log(r)
        return jnp.where(r > 0, self.log_prob_logr(u) - u, -jnp.inf)

    def log_prob_logr(self, u: Array) -> Array:
        """``ln p(r) + u`` at ``u = ln(r / pc)``: the log density of ``u``."""
        a, b = self.alpha, self.beta
        x = u - jnp.log(self.length_scale)
        return jnp.log(a) - gammaln((b + 1.0) / a) + (b + 1.0) * x - jnp.exp(a * x)

    def log_prob_logr_offset(self, u0: Array, d: Array) -> Array:
        """``log_prob_logr(u0 + d) - log_prob_logr(u0)``, accurate for small ``d``."""
        a = self.alpha
        x0 = u0 - jnp.log(self.length_scale)
        return (self.beta + 1.0) * d - jnp.exp(a * x0) * jnp.expm1(a * d)

    def valid(self) -> Array:
        """Per star: ``alpha > 0``, ``beta > -1`` and ``L > 0``, all finite (a proper prior)."""
        beta = jnp.asarray(self.beta)
        return _positive_finite(self.alpha) & jnp.isfinite(beta) & (beta > -1.0) & _positive_finite(self.length_scale)

    def log_domain(self) -> tuple[Array, Array]:
        """The ``u`` interval where the density is positive: all of it."""
        return _unbounded(self.length_scale)

    def log_support(self, log_eps: float) -> tuple[Array, Array]:
        """``(u_lo, u_hi)`` in ``ln pc`` holding all but about ``2 exp(log_eps)`` of the mass."""
        a = self.alpha
        lo, hi = _gamma_log_support((self.beta + 1.0) / a, log_eps)
        logL = jnp.log(self.length_scale)
        return logL + lo / a, logL + hi / a


class UniformSpaceDensityPrior(NamedTuple):
    """Constant space density out to ``r_max``: ``3 r^2 / r_max^3``."""

    r_max: Array

    @property
    def log_concave(self) -> bool:
        """True: ``3 u`` up to ``ln r_max`` (and ``-inf`` beyond) is concave in ``u``."""
        return True

    def log_prob(self, r: Array) -> Array:
        """Log density in pc^-1 at distance ``r`` (pc)."""
        lp = math.log(3.0) + 2.0 * jnp.log(r) - 3.0 * jnp.log(self.r_max)
        return jnp.where((r > 0) & (r <= self.r_max), lp, -jnp.inf)

    def log_prob_logr(self, u: Array) -> Array:
        """``ln p(r) + u`` at ``u = ln(r / pc)``: the log density of ``u``."""
        x = u - jnp.log(self.r_max)
        # The support ends exactly at r_max; the quadrature puts a node there.
        return jnp.where(x <= 1e-12, math.log(3.0) + 3.0 * x, -jnp.inf)

    def log_prob_logr_offset(self, u0: Array, d: Array) -> Array:
        """``log_prob_logr(u0 + d) - log_prob_logr(u0)`` inside :meth:`log_domain` (``3 d``)."""
        return 3.0 * d + 0.0 * u0

    def valid(self) -> Array:
        """Per star: ``r_max`` is finite and positive."""
        return _positive_finite(self.r_max)

    def log_domain(self) -> tuple[Array, Array]:
        """The ``u`` interval where the density is positive: up to ``ln r_max``."""
        logr = jnp.log(self.r_max)
        return jnp.full(jnp.shape(logr), -jnp.inf), logr

    def log_support(self, log_eps: float) -> tuple[Array, Array]:
        """``(u_lo, u_hi)`` in ``ln pc`` holding all but ``exp(log_eps)`` of the mass."""
        logr = jnp.log(self.r_max)
        return logr + log_eps / 3.0, logr


@jax.tree_util.register_pytree_node_class
class DistributionPrior:
    """Any numpyro ``Distribution`` over distance in pc with positive support.

    Per-star parameters are kept as leaves so that chunks can be sliced.
    Build with :meth:`from_distribution`.
    """

    def __init__(self, cls: type, names: tuple[str, ...], params: tuple[Array, ...], static: Any) -> None:
        self.cls = cls
        self.names = names
        self.params = params
        self.static = static

    # pytree protocol
    def tree_flatten(self) -> tuple[tuple[Array, ...], tuple[Any, ...]]:
        return self.params, (self.cls, self.names, self.static)

    @classmethod
    def tree_unflatten(cls, aux: tuple[Any, ...], children: tuple[Array, ...]) -> DistributionPrior:
        return cls(aux[0], aux[1], tuple(children), aux[2])

    @classmethod
    def from_distribution(cls, dist: Any, n: int) -> DistributionPrior:
        """Wrap ``dist`` (batch shape ``()`` or ``(n,)``) for ``n`` stars."""
        import numpyro.distributions as nd  # noqa: F401  (numpyro is a core dependency)

        batch = tuple(dist.batch_shape)
        if batch not in ((), (n,)):
            raise ValueError(f"a user prior must have batch shape () or ({n},) for {n} stars; got {batch}")
        if dist.event_shape != ():
            raise ValueError("a user prior must be univariate (event_shape == ())")
        names = tuple(getattr(dist, "arg_constraints", {}).keys())
        try:
            params = tuple(jnp.broadcast_to(jnp.asarray(getattr(dist, k)), (n,)) for k in names)
            rebuilt = type(dist)(**dict(zip(names, (p[:1] for p in params))))
            with warnings.catch_warnings():  # 1 pc may lie outside the support: only the call is tested
                warnings.simplefilter("ignore")
                rebuilt.log_prob(jnp.ones(1))
        except Exception:
            if batch != ():
                raise ValueError(
                    f"cannot split the per-star parameters of {type(dist).__name__}; "
                    "pass a distribution with batch shape () or a simple numpyro "
                    "distribution whose constructor takes its arg_constraints"
                ) from None
            return cls(type(dist), (), (), dist)
        return cls(type(dist), names, params, None)

    @property
    def dist(self) -> Any:
        """The numpyro distribution (rebuilt from the per-star parameters)."""
        if self.static is not None:
            return self.static
        return self.cls(**dict(zip(self.names, self.params)))

    @property
    def log_concave(self) -> bool:
        """Whether the family is one of :data:`LOG_CONCAVE_DISTRIBUTIONS`."""
        return self.cls.__name__ in LOG_CONCAVE_DISTRIBUTIONS and self.cls.__module__.startswith("numpyro.")

    def log_prob(self, r: Array) -> Array:
        """Log density in pc^-1 at distance ``r`` (pc); ``-inf`` outside the support."""
        d = self.dist
        rr = jnp.where(r > 0, r, 1.0)
        lp = d.log_prob(rr)
        return jnp.where((r > 0) & d.support(rr), lp, -jnp.inf)

    def log_prob_logr(self, u: Array) -> Array:
        """``ln p(r) + u`` at ``u = ln(r / pc)``: the log density of ``u``."""
        r = jnp.exp(u)
        return self.log_prob(r) + u

    def log_prob_logr_offset(self, u0: Array, d: Array) -> Array:
        """``log_prob_logr(u0 + d) - log_prob_logr(u0)``."""
        return self.log_prob_logr(u0 + d) - self.log_prob_logr(u0)

    def valid(self) -> Array:
        """All true: :func:`check_positive_support` checked the parameters when the prior was given."""
        return jnp.ones(jnp.shape(self.params[0]) if self.params else (), dtype=bool)

    def log_domain(self) -> tuple[Array, Array]:
        """The ``u`` interval of the distribution's support (bounds of an interval support)."""
        support = self.dist.support
        shape = jnp.shape(self.params[0]) if self.params else ()
        lower = getattr(support, "lower_bound", None)
        upper = getattr(support, "upper_bound", None)
        lo = -jnp.inf if lower is None else jnp.log(jnp.maximum(jnp.asarray(lower, dtype=float), 0.0))
        hi = jnp.inf if upper is None else jnp.log(jnp.asarray(upper, dtype=float))
        return jnp.broadcast_to(lo, shape), jnp.broadcast_to(hi, shape)

    def log_support(self, log_eps: float) -> tuple[Array, Array]:
        d = self.dist
        shape = jnp.shape(self.params[0]) if self.params else ()
        eps = math.exp(log_eps)
        try:
            lo = d.icdf(jnp.full(shape, eps))
            hi = d.icdf(jnp.full(shape, 1.0 - eps))
        except Exception:
            try:
                m = d.mean
                s = jnp.sqrt(d.variance)
                lo, hi = m - 40.0 * s, m + 40.0 * s
            except Exception:
                lo = jnp.full(shape, 0.0)
                hi = jnp.full(shape, jnp.inf)
        lo = jnp.where(jnp.isfinite(lo) & (lo > 0), jnp.log(jnp.maximum(lo, 1e-300)), GLOBAL_LOG_R_MIN)
        hi = jnp.where(jnp.isfinite(hi) & (hi > 0), jnp.log(jnp.maximum(hi, 1e-300)), GLOBAL_LOG_R_MAX)
        return lo, hi


def check_positive_support(dist: Any) -> None:
    """Raise ``ValueError`` unless ``dist`` is a proper continuous prior over r > 0.

    The support must be continuous and lie in ``r >= 0``, and every parameter
    must satisfy its ``arg_constraints`` (numpyro checks them only when asked
    to); the message names the distribution, the parameter and its value.
    """
    from numpyro.distributions import constraints as c

    name = type(dist).__name__
    support = dist.support
    if getattr(support, "is_discrete", False):
        raise ValueError(
            f"a user prior must be a continuous distribution over distance (pc); {name} has the discrete "
            f"support {support}. Use e.g. numpyro.distributions.LogNormal, Gamma or Uniform(low>=0, high)."
        )
    ok = support in (c.positive, c.nonnegative)
    lower = getattr(support, "lower_bound", None)
    if not ok and lower is not None:
        try:
            ok = bool(jnp.all(jnp.asarray(lower) >= 0))
        except Exception:
            ok = False
    if not ok:
        raise ValueError(
            f"a user prior must have positive support (distance in pc); "
            f"{name} has support {support}. Use e.g. "
            "numpyro.distributions.LogNormal, Gamma or Uniform(low>=0, high)."
        )
    for param, constraint in getattr(dist, "arg_constraints", {}).items():
        try:
            value = getattr(dist, param)
            good = bool(jnp.all(constraint(jnp.asarray(value))))
        except Exception:  # a parameter the distribution derives lazily, or an exotic constraint
            continue
        if not good:
            shown = value if jnp.ndim(value) == 0 else f"an array with a value {_first_bad(value, constraint)}"
            raise ValueError(f"user prior {name}: parameter {param} must satisfy {constraint}; got {shown}")


def _first_bad(value: Array, constraint: Any) -> float:
    arr = jnp.ravel(jnp.asarray(value))
    bad = ~jnp.asarray(constraint(arr), dtype=bool)
    return float(arr[jnp.argmax(bad)])
