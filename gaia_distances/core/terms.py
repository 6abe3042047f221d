"""The registry of the cluster model's terms, and the one place their per-star log terms are combined.

A term (:class:`~gaia_distances.core.term.Term`) is registered by one line
in :data:`_REGISTERED`; everything else follows from its declarations: the
option of :func:`~gaia_distances.fit_cluster` and
:func:`~gaia_distances.fit_clusters` and the command line's flag, the
columns read, its block of ``z`` (hence the prior, the numpyro sites, the
summary's rows, units and descriptions, the checked quantities), its
per-star data in :class:`~gaia_distances.core.likelihood.StarData`, its
share of the marginal and the joint likelihood
(:func:`term_log_likelihoods`), the MAP search's start and the simulator's
columns.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gaia_distances.core.blocks import QUANTITIES, Block
from gaia_distances.core.numerics import Array
from gaia_distances.core.parameters import Quantity
from gaia_distances.core.radial_velocity import RadialVelocities
from gaia_distances.core.term import ModelLike, Term

__all__ = [
    "ALL_QUANTITIES",
    "TERMS",
    "GridIntegral",
    "integrated_log_likelihood",
    "node_log_integrand",
    "integrated_parameter",
    "prepare_term_data",
    "scanned_parameters",
    "term_blocks",
    "term_log_likelihoods",
    "term_physical",
    "term_population",
    "term_starts",
]

#: The registered terms, in the order their blocks follow the model's own in ``z``.
_REGISTERED: tuple[Term, ...] = (RadialVelocities(),)

#: Every registered term by its option's name.
TERMS: Mapping[str, Term] = MappingProxyType({t.name: t for t in _REGISTERED})

#: Every quantity a fit can report: the model's own (:data:`~gaia_distances.core.blocks.QUANTITIES`), then
#: each term's, in registry order.
ALL_QUANTITIES: tuple[Quantity, ...] = (*QUANTITIES, *(q for t in _REGISTERED for q in t.block_quantities()))


def term_blocks(model: ModelLike) -> tuple[Block, ...]:
    """The blocks of ``model``'s terms, in the order of ``z`` (a ``collapsed`` model's without the parameter
    its sampler integrates out, :func:`integrated_parameter`)."""
    out = []
    for name in model.terms:
        block = TERMS[name].block(model)
        gone = TERMS[name].integrable(model) if model.collapsed else None
        out.append(block._replace(parameters=tuple(p for p in block.parameters if p.name != gone)))
    return tuple(out)


def integrated_parameter(model: ModelLike) -> tuple[str, str] | None:
    """``(term, parameter)``: the first of ``model``'s terms that can integrate a parameter out on a grid
    (:meth:`~gaia_distances.core.term.Term.integrable`), and that parameter; ``None`` where none can."""
    for name in model.terms:
        param = TERMS[name].integrable(model)
        if param is not None:
            return name, param
    return None


def scanned_parameters(model: ModelLike) -> tuple[str, ...]:
    """The parameters of ``model`` that its terms declare may have several modes
    (:meth:`~gaia_distances.core.term.Term.scanned`), each once, in the terms' order."""
    found = (TERMS[name].scanned(model) for name in model.terms)
    return tuple(dict.fromkeys(p for p in found if p is not None and p in model.names))


def term_population(z: Array, model: ModelLike, xp: Any) -> dict[str, Any] | None:
    """Each of ``model``'s terms' population values at ``z`` (``None`` for a model without terms)."""
    if not model.terms:
        return None
    return {name: TERMS[name].population(z, model, xp) for name in model.terms}


def term_log_likelihoods(
    values: Mapping[str, Any] | None, data: Mapping[str, Any] | None, *, leave_out: str | None = None
) -> tuple[Array, Array]:
    """The terms' ``ln p(data_i | cluster)`` and ``ln p(data_i | field)`` per star, summed over the terms
    that have both population values and data (0 where none has), but the term ``leave_out``.

    The marginal likelihood (:func:`~gaia_distances.core.likelihood.component_log_likelihoods`) and the
    joint model (:func:`~gaia_distances.core.models.component_log_terms_at`) both add these, so a term is
    combined with the components in this one place.
    """
    cluster: Array = 0.0
    field: Array = 0.0
    if values and data:
        for name, term_data in data.items():
            if name in values and name != leave_out:
                c, f = TERMS[name].log_terms(values[name], term_data)
                cluster, field = cluster + c, field + f
    return cluster, field


class GridIntegral(NamedTuple):
    """A term's parameter integrated out on a grid (:mod:`~gaia_distances.core.collapse`): the ``rows``
    (of the :class:`~gaia_distances.core.likelihood.StarData` that holds it) of the stars with the term's
    data, 1 in ``mask`` for a real row (0 for padding), the term's data at those rows, the ``nodes``, the
    log weights of the quadrature over them (the parameter's prior density included) and the grid's
    ``scale`` (:func:`~gaia_distances.core.collapse.parameter_grid`)."""

    rows: Array
    mask: Array
    data: Any
    nodes: Array
    log_weights: Array
    scale: Array


def node_log_integrand(
    log_c: Array, log_f: Array, values: Mapping[str, Any], name: str, grid: GridIntegral, nodes: Array
) -> Array:
    """``sum_j [ln(c_j t_j(x_k) + f_j t'_j) - ln(c_j + f_j)]`` at each node ``x_k``: the change the term
    ``name`` makes to the log likelihood with its integrable parameter at ``x_k``, given every star's
    weighted component terms without it (``log_c``, ``log_f``, per star of the data that holds ``grid``)."""
    term = TERMS[name]
    lc, lf = log_c[grid.rows], log_f[grid.rows]
    c, f = term.log_terms(term.at_nodes(values[name], nodes[:, None]), grid.data)
    return jnp.sum(grid.mask * (jnp.logaddexp(lc + c, lf + f) - jnp.logaddexp(lc, lf)), axis=-1)


def integrated_log_likelihood(
    log_c: Array, log_f: Array, values: Mapping[str, Any], name: str, grid: GridIntegral
) -> Array:
    """The term ``name``'s share of the log likelihood with its integrable parameter integrated out:
    ``ln sum_k w_k p(x_k) exp(`` :func:`node_log_integrand` ``)``."""
    return jax.nn.logsumexp(grid.log_weights + node_log_integrand(log_c, log_f, values, name, grid, grid.nodes))


def term_physical(values: Mapping[str, Any] | None, model: ModelLike) -> dict[str, np.ndarray]:
    """Every term's reported quantities (NumPy draws) from its population values."""
    out: dict[str, np.ndarray] = {}
    for name, v in (values or {}).items():
        out.update(TERMS[name].physical(v, model))
    return out


def term_starts(z: np.ndarray, data: Any, model: ModelLike, near: np.ndarray | None = None) -> None:
    """Set every term's entries of a starting ``z`` in place (:meth:`~gaia_distances.core.term.Term.start`), from
    the real stars of ``data`` (a :class:`~gaia_distances.core.likelihood.StarData`; padding left out) and, for
    a candidate cluster, those of them ``near`` it (a mask over ``data``'s stars)."""
    real = data.real()
    for name in model.terms:
        term_data = (data.terms or {}).get(name)
        if term_data is not None:
            term_data = jax.tree_util.tree_map(lambda x: np.asarray(x)[real], term_data)
        TERMS[name].start(z, term_data, model, None if near is None else np.asarray(near, bool)[real])


def prepare_term_data(columns: Mapping[str, Mapping[str, np.ndarray]], dtype: Any) -> dict[str, Any] | None:
    """Each term's per-star data from its columns (:meth:`~gaia_distances.core.term.Term.prepare`), as
    arrays of ``dtype`` (``None`` without terms)."""
    if not columns:
        return None
    return {
        name: jax.tree_util.tree_map(lambda x: jnp.asarray(np.asarray(x, dtype)), TERMS[name].prepare(values))
        for name, values in columns.items()
    }
