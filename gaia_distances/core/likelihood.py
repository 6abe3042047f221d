"""The marginal likelihood of the cluster model: every star's distance integrated out.

``p(w_i | population) = Q p(w_i | cluster) + (1 - Q) p(w_i | field)``, where
each component's term integrates the star's distance against that
component's density (:mod:`~gaia_distances.core.components`):

- the cluster's by adaptive Gauss-Hermite quadrature
  (:func:`~gaia_distances.core.cluster_integral.cluster_log_likelihood`);
- the field's from a table over ``ln L`` precomputed once per star
  (:func:`~gaia_distances.core.field_table.field_log_likelihood`).

:func:`component_log_likelihoods` is the one place where the components'
per-star terms are put together: a new likelihood term is a module that
returns a per-star log likelihood for each component, added there.

:class:`StarData` holds what the likelihood needs per star; build it with
:func:`prepare_star_data`, pad it with :func:`pad_star_data` and stack
several fields for ``vmap`` with :func:`stack_star_data`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gaia_distances.core.cluster_integral import cluster_log_likelihood
from gaia_distances.core.field_bins import (
    SPACING,
    FieldBins,
    bin_centres,
    field_bins_log_likelihood,
    precompute_field_bins,
)
from gaia_distances.core.field_table import FieldTable, field_log_likelihood, field_moments, precompute_field_table
from gaia_distances.core.field_term import field_log_likelihood_pm
from gaia_distances.core.kinematics import (
    KinematicData,
    cluster_pm_log_term,
    cluster_pm_parallax_gaussian,
    field_pm_log_term,
)
from gaia_distances.core.numerics import Array
from gaia_distances.core.population import ClusterModel, Population, log_prior, to_population
from gaia_distances.core.selection import Truncation, cluster_log_pass, field_log_pass, prepare_truncation
from gaia_distances.core.terms import integrated_log_likelihood, prepare_term_data, term_log_likelihoods

__all__ = [
    "BLOCK",
    "BLOCKS_ABOVE",
    "ComponentLikelihoods",
    "StarData",
    "component_log_likelihoods",
    "component_log_pass",
    "field_component_log_likelihood",
    "log_posterior",
    "marginal_log_likelihood",
    "membership_log_odds",
    "pad_star_data",
    "on_device",
    "on_host",
    "padded_size",
    "parallax_component_log_likelihoods",
    "per_star_map",
    "prepare_star_data",
    "rough_length_scale",
    "split_star_data",
    "stack_star_data",
    "weighted_log_likelihoods",
]


class StarData(NamedTuple):
    """What the marginal likelihood needs per star (mas); build with :func:`prepare_star_data`.

    ``weight`` (optional, 1 or 0 per star) masks padding stars out of the
    likelihood, so that fields of different sizes share one array shape.
    ``field`` or ``bins`` is set, as the model's field needs; ``kin`` only
    for a kinematic model; ``truncation`` only when the stars were selected
    by a parallax cut that the likelihood accounts for. ``field_only``
    (:func:`split_star_data`, for the sampler) holds the stars whose
    cluster term is negligible at every population the sampler visits:
    their likelihood is the field's alone.
    """

    parallax: Array  # zero-point corrected
    parallax_error: Array
    field: FieldTable | None  # the EDSD field's table (None for the flexible field)
    weight: Array | None = None
    bins: FieldBins | None = None  # the flexible field's bin integrals
    kin: KinematicData | None = None  # proper motions (kinematic models)
    truncation: Truncation | None = None  # the parallax cut, modelled as a truncation
    field_only: Any = None  # a StarData of stars that are certainly not members (see split_star_data)
    terms: Any = None  # each model term's per-star data, by the term's name (core/terms.py)
    #: a term's parameter integrated out on a grid, by the term's name (one at most; core/collapse.py)
    integration: Any = None

    @property
    def n_stars(self) -> int:
        """Stars in the arrays, padding included."""
        return int(self.parallax.shape[0])

    def real(self) -> np.ndarray:
        """Boolean mask of the real (not padding) stars."""
        if self.weight is None:
            return np.ones(self.n_stars, bool)
        return np.asarray(self.weight) > 0


def rough_length_scale(parallax: np.ndarray, parallax_error: np.ndarray) -> float:
    """A data-based guess of the field EDSD length scale (pc).

    The median inverse parallax of stars with S/N > 5 (or all positive
    parallaxes, when fewer than 10 have it) divided by 2.674, the median of
    the EDSD in units of ``L``.
    """
    w = np.asarray(parallax, float)
    s = np.asarray(parallax_error, float)
    good = w / s > 5
    if good.sum() < 10:
        good = w > 0
    if not good.any():
        return 1000.0
    return float(np.median(1000.0 / w[good]) / 2.674)


def prepare_star_data(
    parallax: np.ndarray,
    parallax_error: np.ndarray,
    *,
    L_range: tuple[float, float] | None = None,
    n_L: int = 96,
    dtype: Any = None,
    field: str = "edsd",
    kinematics: KinematicData | None = None,
    limits: tuple[np.ndarray, np.ndarray] | None = None,
    terms: Mapping[str, Mapping[str, np.ndarray]] | None = None,
) -> StarData:
    """Precompute what the marginal likelihood needs.

    ``field="edsd"`` tabulates the EDSD field over ``L_range`` (pc; default
    1/20 to 20 times :func:`rough_length_scale`), with the parallax moments
    when ``kinematics`` is given; ``field="flexible"`` computes the bin
    integrals instead. ``kinematics`` (from
    :func:`~gaia_distances.core.kinematics.prepare_kinematic_data`) adds the
    proper motions. ``limits`` (per-star lower and upper limits of the
    corrected parallax, mas) make the likelihood that of stars selected by
    that cut (:mod:`~gaia_distances.core.selection`). ``terms`` are the
    model terms' columns by term name
    (:func:`~gaia_distances.core.terms.prepare_term_data`).
    """
    w = np.asarray(parallax, float)
    s = np.asarray(parallax_error, float)
    dt = dtype or jnp.asarray(0.0).dtype

    def cast(tree: Any) -> Any:
        return jax.tree_util.tree_map(lambda x: jnp.asarray(np.asarray(x, dt)), tree)

    table = bins = None
    if field == "edsd":
        if L_range is None:
            L0 = rough_length_scale(w, s)
            L_range = (L0 / 20.0, L0 * 20.0)
        table = cast(precompute_field_table(w, s, L_range, n_L=n_L, moments=kinematics is not None))
    elif field == "flexible":
        bins = cast(precompute_field_bins(w, s))
    else:
        raise ValueError(f"field must be 'edsd' or 'flexible'; got {field!r}")
    kin = cast(kinematics) if kinematics is not None else None
    truncation = None
    if limits is not None:
        lo, hi = (np.broadcast_to(np.asarray(x, float), w.shape) for x in limits)
        if field == "edsd":
            truncation = prepare_truncation(s, lo, hi, L_range=table.L_range() if table is not None else None)
        else:
            truncation = prepare_truncation(s, lo, hi, bin_centres=bin_centres(), bin_width=SPACING)
        truncation = cast(truncation)
    term_data = prepare_term_data(terms or {}, dt)
    return StarData(jnp.asarray(w, dt), jnp.asarray(s, dt), table, None, bins, kin, truncation, None, term_data)


#: Stars per block of a big field's likelihood (:func:`marginal_log_likelihood`).
BLOCK = 4096
#: Fields of more stars than this are summed block by block.
BLOCKS_ABOVE = 16384


def padded_size(n: int) -> int:
    """The array size ``n`` stars are padded to: a multiple of ``max(256, 2^(bit_length(n) - 4))``,
    and of :data:`BLOCK` above :data:`BLOCKS_ABOVE` stars.

    Fields of similar sizes then share compiled programs; the padding costs at
    most 256 stars or about 12 % of the field (25 % just above 16 384 stars).

    Examples
    --------
    >>> padded_size(2753), padded_size(16000), padded_size(21500), padded_size(40000)
    (2816, 16384, 24576, 40960)
    """
    step = max(256, 1 << max(0, int(n).bit_length() - 4))
    if n > BLOCKS_ABOVE:
        step = max(step, BLOCK)
    return -(-int(n) // step) * step


def pad_star_data(data: StarData, n: int) -> StarData:
    """``data`` padded to ``n`` stars by repeating its last star with weight 0."""
    m = data.n_stars
    if n < m:
        raise ValueError(f"cannot pad {m} stars to {n}")
    idx = np.minimum(np.arange(n), m - 1)
    weight = (np.arange(n) < m).astype(np.asarray(data.parallax).dtype)
    if data.weight is not None:
        weight = weight * np.asarray(data.weight)[idx]
    padded = per_star_map(lambda x: x[idx], on_host(data))
    return on_device(padded._replace(weight=weight))


def on_host(tree: Any) -> Any:
    """Every array of ``tree`` as a NumPy array: host-side indexing then compiles no XLA programs."""
    return jax.tree_util.tree_map(np.asarray, tree)


def on_device(tree: Any) -> Any:
    """Every array of ``tree`` as a JAX array (a copy to the device; nothing is compiled)."""
    return jax.tree_util.tree_map(jnp.asarray, tree)


def split_star_data(data: StarData, field_only: np.ndarray) -> StarData:
    """``data`` with the stars marked ``field_only`` moved to its ``field_only`` part (each part padded).

    The marginal likelihood then gives those stars the field's term alone,
    ``ln(1 - Q) + ln p(obs | field)``, skipping the cluster's distance
    integral. Exact where their cluster term is negligible: a star whose
    membership log-odds stays below ``-t`` changes the log likelihood by less
    than ``e^-t``. Only the real stars of ``data`` are kept.
    """
    real = data.real()
    keep = np.flatnonzero(real & ~np.asarray(field_only, bool))
    drop = np.flatnonzero(real & np.asarray(field_only, bool))
    if drop.size == 0 or keep.size == 0:
        return data

    def part(rows: np.ndarray) -> StarData:
        sub = per_star_map(lambda x: x[rows], on_host(data._replace(weight=None, integration=None)))
        return pad_star_data(sub, padded_size(rows.size))

    return part(keep)._replace(field_only=part(drop))


#: The fields of a :class:`~gaia_distances.core.field_table.FieldTable` that describe its grid, not the stars.
GRID = ("log_L0", "step")


def per_star_map(fn: Any, data: StarData) -> StarData:
    """``fn`` applied to every per-star array of ``data`` (leading axis of length ``n_stars``)."""
    n = data.n_stars

    def one(x: Any) -> Any:
        return fn(x) if np.ndim(x) and np.shape(x)[0] == n else x

    def table(t: Any) -> Any:  # a field table: its grid scalars are not per star, its columns are
        return None if t is None else t._replace(**{k: one(v) for k, v in t._asdict().items() if k not in GRID})

    def bins(b: FieldBins | None) -> FieldBins | None:
        # the bins' arrays hold the stars on their last axis: ``fn`` maps them on the first, and the
        # bins' axis goes back just before the last of the axes it made
        if b is None:
            return None
        out = [fn(x.T) for x in b]
        return FieldBins(*(r.transpose(*range(r.ndim - 2), r.ndim - 1, r.ndim - 2) for r in out))

    truncation = data.truncation
    if truncation is not None:
        rows = jax.tree_util.tree_map(one, truncation._replace(field=None))
        truncation = rows._replace(field=table(truncation.field))
    rest = jax.tree_util.tree_map(
        one, data._replace(field=None, truncation=None, bins=None, field_only=None, integration=None)
    )
    return rest._replace(
        field=table(data.field), truncation=truncation, bins=bins(data.bins), integration=data.integration
    )


def stack_star_data(items: Sequence[StarData]) -> StarData:
    """Stack equally sized :class:`StarData` along a new leading (field) axis, for ``vmap``."""
    return on_device(jax.tree_util.tree_map(lambda *x: np.stack([np.asarray(v) for v in x]), *items))


class ComponentLikelihoods(NamedTuple):
    """``ln p(obs_i | component)`` per star."""

    cluster: Array
    field: Array


def component_log_likelihoods(
    pop: Population, data: StarData, *, n_gh: int = 10, n_newton: int = 2, leave_out: str | None = None
) -> ComponentLikelihoods:
    """Each component's per-star log likelihood at one population.

    The field's term is the EDSD table's or the flexible bins'; with
    proper motions each component's proper-motion term is added: the
    cluster's at each node of its distance integral, the field's over its
    distance posterior (:mod:`~gaia_distances.core.kinematics`); then the
    model terms' (:func:`~gaia_distances.core.terms.term_log_likelihoods`), but the term ``leave_out``.
    """
    kin, obs = pop.kin, data.kin
    node_term = node_parallax = None
    if kin is not None and obs is not None:

        def node_term(u: Array) -> Array:
            return cluster_pm_log_term(u, data.parallax, kin, obs, pop.log_D)

        node_parallax = cluster_pm_parallax_gaussian(data.parallax, data.parallax_error, kin, obs, pop.log_D)

    cluster = cluster_log_likelihood(
        data.parallax,
        data.parallax_error,
        pop.log_D,
        pop.log_sigma,
        n_gh=n_gh,
        n_newton=n_newton,
        node_log_term=node_term,
        node_parallax=node_parallax,
    )
    if data.truncation is not None:
        cluster = cluster - cluster_log_pass(data.truncation, data.parallax_error, pop.log_D, pop.log_sigma)
    term_cluster, _ = term_log_likelihoods(pop.terms, data.terms, leave_out=leave_out)
    return ComponentLikelihoods(cluster + term_cluster, field_component_log_likelihood(pop, data, leave_out))


def field_component_log_likelihood(pop: Population, data: StarData, leave_out: str | None = None) -> Array:
    """The field component's per-star log likelihood at one population (see :func:`component_log_likelihoods`)."""
    kin, obs = pop.kin, data.kin
    if pop.field_log_w is not None and data.bins is not None and kin is not None and obs is not None:
        # the default model: the same terms as below, with the gradient written out (core/field_term.py)
        field = field_log_likelihood_pm(pop.field_log_w, kin, data.bins, obs, data.parallax)
    else:
        if pop.field_log_w is not None and data.bins is not None:
            field, mean_w, var_w = field_bins_log_likelihood(pop.field_log_w, data.bins)
        elif data.field is not None:
            field = field_log_likelihood(pop.log_L, data.field)
            mean_w, var_w = field_moments(pop.log_L, data.field) if kin is not None else (None, None)
        else:
            raise ValueError("the star data does not match the model's field")
        if kin is not None and obs is not None:
            field = field + field_pm_log_term(mean_w, var_w, data.parallax, kin, obs)
    if data.truncation is not None:
        field = field - _field_log_pass(pop, data.truncation)
    _, term_field = term_log_likelihoods(pop.terms, data.terms, leave_out=leave_out)
    return field + term_field


def component_log_pass(pop: Population, data: StarData) -> ComponentLikelihoods:
    """``ln P(star passes the parallax cut | component)`` per star (zeros without a truncation)."""
    tr = data.truncation
    if tr is None:
        zero = jnp.zeros_like(data.parallax)
        return ComponentLikelihoods(zero, zero)
    cluster = cluster_log_pass(tr, data.parallax_error, pop.log_D, pop.log_sigma)
    return ComponentLikelihoods(cluster, _field_log_pass(pop, tr))


def _field_log_pass(pop: Population, tr: Truncation) -> Array:
    if pop.field_log_w is not None and tr.bins_log_pass is not None:
        return field_log_pass(tr, log_w=pop.field_log_w)
    return field_log_pass(tr, log_L=pop.log_L)


def parallax_component_log_likelihoods(pop: Population, data: StarData) -> ComponentLikelihoods:
    """Each component's per-star log likelihood of the parallax alone (proper motions and terms left out)."""
    return component_log_likelihoods(pop._replace(kin=None, terms=None), data)


def weighted_log_likelihoods(pop: Population, comp: ComponentLikelihoods) -> tuple[Array, Array]:
    """``ln Q + ln p(obs_i | cluster)`` and ``ln(1 - Q) + ln p(obs_i | field)`` per star."""
    return jnp.log(pop.Q) + comp.cluster, jnp.log1p(-pop.Q) + comp.field


def marginal_log_likelihood(
    pop: Population, data: StarData, *, n_gh: int = 10, n_newton: int = 2, blocked: bool = False
) -> Array:
    """Total ``ln p(w | population)`` with every distance integrated out (padding stars excluded).

    ``blocked``: a field of more than :data:`BLOCKS_ABOVE` stars is summed in
    blocks of :data:`BLOCK` stars, each recomputed in the backward pass
    (``jax.checkpoint``), so that a block's intermediates stay in the CPU's
    cache. On this project's 2-core machine a stand-alone gradient over
    24 576 stars takes 9.6 ms blocked and 17.5 ms not; inside the sampler's
    loops XLA schedules the unblocked sum well (11 ms) and the blocked one
    badly (21 ms), so the MAP search asks for blocks and the sampler does not.
    """

    def total(d: StarData) -> Array:
        (name, grid), *_ = (d.integration or {None: None}).items()
        comp = component_log_likelihoods(pop, d, n_gh=n_gh, n_newton=n_newton, leave_out=name)
        log_c, log_f = weighted_log_likelihoods(pop, comp)
        terms = jnp.logaddexp(log_c, log_f)
        if d.weight is not None:
            terms = jnp.where(d.weight > 0, terms, 0.0)
        if name is None:
            return jnp.sum(terms)
        return jnp.sum(terms) + integrated_log_likelihood(log_c, log_f, pop.terms, name, grid)

    n = data.n_stars
    extra: Array | float = 0.0
    if data.field_only is not None:  # certain non-members: the field's term alone
        fo = data.field_only
        terms = jnp.log1p(-pop.Q) + field_component_log_likelihood(pop, fo)
        extra = jnp.sum(jnp.where(fo.weight > 0, terms, 0.0) if fo.weight is not None else terms)
        data = data._replace(field_only=None)
    if not blocked or n <= BLOCKS_ABOVE or n % BLOCK or data.integration is not None:
        return total(data) + extra
    blocks = per_star_map(lambda x: x.reshape(n // BLOCK, BLOCK, *x.shape[1:]), data)
    return jnp.sum(jax.lax.map(jax.checkpoint(total), blocks)) + extra


def membership_log_odds(pop: Population, data: StarData, *, n_gh: int = 10, n_newton: int = 2) -> Array:
    """``ln [Q p(w|cluster) / ((1-Q) p(w|field))]`` per star, at one population."""
    log_c, log_f = weighted_log_likelihoods(pop, component_log_likelihoods(pop, data, n_gh=n_gh, n_newton=n_newton))
    return log_c - log_f


def log_evidence_per_star(pop: Population, data: StarData) -> Array:
    """``ln p(w_i | population)`` per star (the mixture's normalisation)."""
    return jnp.logaddexp(*weighted_log_likelihoods(pop, component_log_likelihoods(pop, data)))


def log_posterior(z: Array, data: StarData, model: ClusterModel, *, blocked: bool = False) -> Array:
    """Unnormalised log posterior of the marginal model at unconstrained ``z`` (``blocked``: see
    :func:`marginal_log_likelihood`)."""
    return log_prior(z, model) + marginal_log_likelihood(to_population(z, model), data, blocked=blocked)
