"""The cluster model's population parameters: priors and the one unconstrained parameterisation.

The population is :class:`Population`: the field's distance model (the EDSD's
length scale ``L`` (pc), or the flexible field's bin weights), the cluster
distance ``D`` (pc) and width ``sigma`` (in ``ln r``), the cluster fraction
``Q``, and with proper motions their parameters (:class:`Kinematics`). NUTS
and the MAP search work on an unconstrained vector ``z``, whose entries a
:class:`ClusterModel`'s blocks declare (:mod:`~gaia_distances.core.blocks`:
name, prior and meaning of each); the reference structure's is
``(log_L, log_D, depth, logit_Q)``, where ``depth`` is ``log_sigma`` or,
under the physical prior, the logit of the cluster's log size within its
allowed range.

:func:`to_population` maps ``z`` to the population, reading its entries by
name, and :func:`from_population` inverts it for the reference structure;
:func:`log_prior` is the prior density of ``z`` and :func:`sample_population`
the same prior as numpyro sites, both from the declarations. The prior
settings, :class:`ClusterPriors`, live in :mod:`~gaia_distances.core.cluster_priors`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gaia_distances.core.blocks import FIELD_PM_PRIORS, FIELD_PM_SHARED, QUANTITIES, Block, model_blocks
from gaia_distances.core.cluster_priors import ClusterPriors
from gaia_distances.core.field_bins import N_BINS, bin_centres
from gaia_distances.core.kinematics import Kinematics
from gaia_distances.core.numerics import Array
from gaia_distances.core.parameters import Parameter, Quantity, prior_log_density, prior_sites
from gaia_distances.core.terms import term_blocks, term_physical, term_population

__all__ = [
    "FIELDS",
    "FIELD_PM_PRIORS",
    "ClusterModel",
    "ClusterPriors",
    "Population",
    "field_distance_quantile",
    "from_population",
    "log_prior",
    "physical_draws",
    "sample_population",
    "to_population",
    "unconstrained_names",
]


class Population(NamedTuple):
    """The population parameters (scalars, or arrays of draws).

    ``field_log_w`` (the flexible field's normalised log bin weights, last
    axis) is ``None`` for the EDSD field, whose length scale is ``log_L``
    (otherwise unused); ``kin`` holds the proper-motion parameters of a
    kinematic model.
    """

    log_L: Array
    log_D: Array
    log_sigma: Array
    Q: Array
    field_log_w: Array | None = None
    kin: Kinematics | None = None
    terms: Any = None  # each model term's population values, by the term's name (core/terms.py)


#: The field distance models: the reference EDSD, or the flexible mixture of distance bins.
FIELDS = ("edsd", "flexible")


class ClusterModel(NamedTuple):
    """What is fitted: the priors, the field's distance model and whether proper motions enter.

    The unconstrained vector ``z`` is the field's distance block (``log_L``
    for the EDSD; the flexible field's random-walk steps), then
    ``(log_D, depth, logit_Q)``, then, with kinematics, the cluster's
    ``(pmra, pmdec, log_sigma_v)`` and the field's proper-motion mixture of
    ``n_field_pm`` components (:attr:`names`). With ``perspective`` the
    cluster's radial velocity ``v_r`` (km/s) follows ``log_sigma_v``: its
    space velocity is projected along each star's line of sight.
    """

    priors: ClusterPriors = ClusterPriors()
    field: str = "edsd"
    kinematics: bool = False
    n_field_pm: int = 2
    perspective: bool = False
    terms: tuple[str, ...] = ()  # the model's terms (names in core/terms.py's TERMS), their blocks last in z
    #: the sampler's form of the model: a term's integrable parameter (``v_r``, say) is left out of ``z`` and
    #: integrated out on a grid (:mod:`~gaia_distances.core.collapse`)
    collapsed: bool = False

    @property
    def parameters(self) -> tuple[Parameter, ...]:
        """The entries of ``z``, in order, each declared once (name, prior, cluster or field, meaning): the
        field's distance block, the cluster's distance block, then with kinematics the cluster's and the
        field's proper-motion blocks."""
        return _parameters(self)

    @property
    def quantities(self) -> tuple[Quantity, ...]:
        """The physical quantities the model reports (:func:`physical_draws`), in report order; a field
        component's are numbered in the draws (``field_pmra_1``, ...)."""
        return _quantities(self)

    @property
    def cluster_names(self) -> tuple[str, ...]:
        """Names of the cluster's entries of ``z`` (the rest describe the field)."""
        return tuple(p.name for p in self.parameters if p.cluster)

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the entries of ``z``, in order."""
        return tuple(p.name for p in self.parameters)

    @property
    def n_params(self) -> int:
        """Length of ``z``."""
        return len(self.parameters)

    def position(self, name: str) -> int:
        """Position of ``name`` in ``z``."""
        return _positions(self)[name]

    def entries(self, z: Array, names: Sequence[str], xp: Any = jnp) -> Array:
        """The entries ``names`` of ``z`` (last axis), as a slice where they are contiguous."""
        at = [self.position(n) for n in names]
        if at == list(range(at[0], at[0] + len(at))):
            return z[..., at[0] : at[0] + len(at)]
        return xp.stack([z[..., i] for i in at], axis=-1)


@functools.lru_cache(maxsize=64)
def _parameters(model: ClusterModel) -> tuple[Parameter, ...]:
    return tuple(p for block in _blocks(model) for p in block.parameters)


@functools.lru_cache(maxsize=64)
def _quantities(model: ClusterModel) -> tuple[Quantity, ...]:
    blocks = _blocks(model)
    names = {name for block in blocks for name in block.quantities}
    return (*(q for q in QUANTITIES if q.name in names), *(q for block in blocks for q in block.declared))


def _blocks(model: ClusterModel) -> tuple[Block, ...]:
    """The model's own blocks, then its terms'."""
    own = model_blocks(model.priors, model.field, model.kinematics, model.n_field_pm, model.perspective)
    return (*own, *term_blocks(model))


@functools.lru_cache(maxsize=64)
def _positions(model: ClusterModel) -> dict[str, int]:
    return {p.name: i for i, p in enumerate(_parameters(model))}


def unconstrained_names(model: ClusterModel) -> tuple[str, ...]:
    """Names of the sampled sites, in the order of the unconstrained vector ``z``."""
    return model.names


def _log_softmax(x: Array, xp: Any) -> Array:
    m = x.max(axis=-1, keepdims=True)
    return x - m - xp.log(xp.sum(xp.exp(x - m), axis=-1, keepdims=True))


def _field_log_w(steps: Array, model: ClusterModel, xp: Any) -> Array:
    theta = xp.cumsum(model.priors.field_smoothness * steps, axis=-1)
    theta = xp.concatenate([xp.zeros_like(theta[..., :1]), theta], axis=-1)
    return _log_softmax(theta, xp)


def _kinematics(z: Array, model: ClusterModel, xp: Any) -> Kinematics:
    M = model.n_field_pm
    comp = model.entries(
        z, [f"{p}_{k}" for k in range(1, M + 1) for p in ("field_pmra", "field_pmdec", "field_log_sigma_v")], xp
    ).reshape(*z.shape[:-1], M, 3)
    shared = model.entries(z, FIELD_PM_SHARED, xp)
    trend = model.entries(z, ("field_pm_trend_ra", "field_pm_trend_dec"), xp)
    logits = [z[..., model.position(f"field_logit_w_{k}")] for k in range(2, M + 1)]
    logits = xp.stack([xp.zeros_like(trend[..., 0]), *logits], axis=-1)
    log_sd = xp.broadcast_to(shared[..., None, 0:2], (*z.shape[:-1], M, 2))
    corr = xp.broadcast_to(xp.tanh(shared[..., 2:3]), (*z.shape[:-1], M))
    log_sigma_v = z[..., model.position("log_sigma_v")]
    return Kinematics(
        pm=model.entries(z, ("pmra", "pmdec"), xp),
        log_sigma_v=log_sigma_v,
        field_mean=comp[..., 0:2],
        field_trend=trend,
        field_log_sd=log_sd,
        field_corr=corr,
        field_log_sigma_v=comp[..., 2],
        field_log_w=_log_softmax(logits, xp),
        v_r=z[..., model.position("v_r")] if model.perspective else xp.zeros_like(log_sigma_v),
    )


def _sigmoid(x: Array, xp: Any) -> Array:
    return jax.nn.sigmoid(x) if xp is jnp else 1.0 / (1.0 + np.exp(-x))


def _logit(p: Array, xp: Any) -> Array:
    return xp.log(p) - xp.log1p(-p)


def to_population(z: Array, model: ClusterModel, xp: Any = jnp) -> Population:
    """The population at unconstrained ``z`` (last axis: ``model``'s :attr:`~ClusterModel.names`).

    ``xp`` is ``jnp`` or ``np``.
    """
    priors = model.priors
    log_D, depth, logit_Q = (z[..., model.position(n)] for n in model.cluster_names[:3])
    if priors.depth_prior == "size":
        lo, hi = priors.log_size_range
        log_sigma = lo + (hi - lo) * _sigmoid(depth, xp) - log_D
    else:
        log_sigma = depth
    if model.field == "edsd":
        log_L, field_log_w = z[..., model.position("log_L")], None
    else:
        steps = model.entries(z, [f"field_step_{j}" for j in range(1, N_BINS)], xp)
        log_L, field_log_w = xp.zeros_like(log_D), _field_log_w(steps, model, xp)
    kin = _kinematics(z, model, xp) if model.kinematics else None
    terms = term_population(z, model, xp)
    return Population(log_L, log_D, log_sigma, _sigmoid(logit_Q, xp), field_log_w, kin, terms)


def from_population(pop: Population, priors: ClusterPriors, *, xp: Any = np, clip: float = 0.0) -> Array:
    """The unconstrained ``z`` of a reference-structure population (EDSD field, no proper motions): the
    inverse of :func:`to_population`, laid out by the model's :attr:`~ClusterModel.names`.

    Under the physical prior a size outside the allowed range has no preimage;
    ``clip`` (> 0) pulls the size fraction and ``Q`` into ``[clip, 1 - clip]``
    first (for starting points); with ``clip=0`` such sizes give infinities.
    """
    log_L, log_D, log_sigma, Q = (xp.asarray(x) for x in pop[:4])
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
    model = ClusterModel(priors)
    values = dict(zip(("log_L", *model.cluster_names), (log_L, log_D, depth, _logit(Q, xp)), strict=True))
    shape = np.broadcast_shapes(*(np.shape(x) for x in values.values()))
    return xp.stack([xp.broadcast_to(values[name], shape) for name in model.names], axis=-1)


def log_prior(z: Array, model: ClusterModel) -> Array:
    """Log prior density of the unconstrained vector ``z`` (the density :func:`sample_population` defines)."""
    return prior_log_density(z, model.parameters)


def sample_population(model: ClusterModel) -> Population:
    """The population as numpyro sample sites (named by :func:`unconstrained_names`) and deterministics.

    Every site is unconstrained: ``Q`` is sampled as ``logit(Q)``, whose prior is exactly ``Beta(Q_a, Q_b)``
    pushed to it; under the physical depth prior the size ``sigma * D`` is log-uniform in its range.
    """
    import numpyro

    priors = model.priors
    z = prior_sites(model.parameters)
    pop = to_population(z, model)
    numpyro.deterministic("Q", pop.Q)
    if priors.depth_prior == "size":
        numpyro.deterministic("log_sigma", pop.log_sigma)
    if model.field == "edsd":
        numpyro.deterministic("L", jnp.exp(pop.log_L))
    numpyro.deterministic("D", jnp.exp(pop.log_D))
    numpyro.deterministic("sigma", jnp.exp(pop.log_sigma))
    numpyro.deterministic("approx_size", jnp.exp(pop.log_sigma + pop.log_D))
    return pop


def field_distance_quantile(field_log_w: np.ndarray, q: float) -> np.ndarray:
    """The ``q`` quantile (pc) of the flexible field's distance distribution, per draw (last axis: bins)."""
    from scipy.special import ndtr

    from gaia_distances.core.field_bins import SPACING

    centres = bin_centres()
    grid = np.linspace(centres[0] - 5 * SPACING, centres[-1] + 5 * SPACING, 2048)
    w = np.exp(np.asarray(field_log_w, float))
    cdf = np.tensordot(w, ndtr((grid[:, None] - centres[None, :]) / SPACING), axes=([-1], [1]))
    flat = cdf.reshape(-1, grid.size)
    out = np.array([np.interp(q, row, grid) for row in flat])
    return np.exp(out).reshape(cdf.shape[:-1])


def physical_draws(z: np.ndarray, model: ClusterModel) -> dict[str, np.ndarray]:
    """Physical draws from unconstrained ones (NumPy).

    ``D``, ``sigma`` (depth, pc), ``sigma_log``, ``Q``; the field's ``L``
    (pc; EDSD) or ``field_median`` (pc; the flexible field's median
    distance); with kinematics the cluster's ``pmra``, ``pmdec`` (mas/yr)
    and ``sigma_v`` (km/s), with the perspective projection ``v_r`` (km/s),
    and the field's proper-motion mixture
    (``field_pmra_m``, ``field_pmdec_m``, ``field_sigma_v_m``,
    ``field_pm_weight_m`` for ``m = 1..M``, in order of velocity dispersion
    in each draw (the labels of the exchangeable components are not
    identified otherwise); ``field_pm_sd_ra``,
    ``field_pm_sd_dec``, ``field_pm_corr``, the constant part of the
    covariance that the components share; and ``field_pm_trend_ra``,
    ``field_pm_trend_dec``).
    """
    pop = to_population(np.asarray(z, float), model, xp=np)
    out = {
        "D": np.exp(pop.log_D),
        "sigma": np.exp(pop.log_sigma + pop.log_D),
        "sigma_log": np.exp(pop.log_sigma),
        "Q": pop.Q,
    }
    if pop.field_log_w is None:
        out["L"] = np.exp(pop.log_L)
    else:
        out["field_median"] = field_distance_quantile(pop.field_log_w, 0.5)
    kin = pop.kin
    if kin is not None:
        out["pmra"], out["pmdec"] = kin.pm[..., 0], kin.pm[..., 1]
        out["sigma_v"] = np.exp(kin.log_sigma_v)
        if model.perspective:
            out["v_r"] = np.asarray(kin.v_r)
        # the components are exchangeable (their labels can swap between and within chains): each draw
        # reports them in order of velocity dispersion, the coldest first, which is what identifies them
        order = np.argsort(np.asarray(kin.field_log_sigma_v), axis=-1)

        def ordered(x: np.ndarray) -> np.ndarray:
            return np.take_along_axis(np.asarray(x), order, axis=-1)

        mean_ra, mean_dec = ordered(kin.field_mean[..., 0]), ordered(kin.field_mean[..., 1])
        log_sigma_v, log_w = ordered(kin.field_log_sigma_v), ordered(kin.field_log_w)
        for m in range(model.n_field_pm):
            k = m + 1
            out[f"field_pmra_{k}"] = mean_ra[..., m]
            out[f"field_pmdec_{k}"] = mean_dec[..., m]
            out[f"field_sigma_v_{k}"] = np.exp(log_sigma_v[..., m])
            out[f"field_pm_weight_{k}"] = np.exp(log_w[..., m])
        out["field_pm_sd_ra"] = np.exp(kin.field_log_sd[..., 0, 0])  # shared by the components
        out["field_pm_sd_dec"] = np.exp(kin.field_log_sd[..., 0, 1])
        out["field_pm_corr"] = kin.field_corr[..., 0]
        out["field_pm_trend_ra"], out["field_pm_trend_dec"] = kin.field_trend[..., 0], kin.field_trend[..., 1]
    out.update(term_physical(pop.terms, model))
    return out


def population_from_physical(draws: dict[str, np.ndarray]) -> Population:
    """The :class:`Population` of physical draws (the inverse of :func:`physical_draws`)."""
    log_D = np.log(draws["D"])
    return Population(np.log(draws["L"]), log_D, np.log(draws["sigma"]) - log_D, np.asarray(draws["Q"]))
