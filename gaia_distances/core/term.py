"""A term of the cluster model: one kind of per-star data, declared once, with all the model needs of it.

The cluster model is its distance components (the cluster's Gaussian in
``ln r`` and the field, :mod:`~gaia_distances.core.components`), the
proper-motion term where proper motions are fitted, and any number of
*terms*, each a subclass of :class:`Term` in a module of its own, registered
in :data:`~gaia_distances.core.terms.TERMS`. A term declares:

- its **option**: the keyword of :func:`~gaia_distances.fit_cluster` (its
  :attr:`~Term.name`, ``"auto"`` by default, ``True`` or ``False``) and the
  command line's flag;
- its **columns** (:attr:`~Term.columns`), with the alternative names that
  count as the same thing, which rows can use them (:meth:`~Term.usable`) and
  how many the fit needs (:attr:`~Term.min_stars`); a star without usable
  values is fitted without the term, neither flagged nor dropped;
- its **parameters and quantities** (:meth:`~Term.block`), each once, like the
  model's own blocks (:mod:`~gaia_distances.core.blocks`);
- its **per-star data** (:meth:`~Term.prepare`: a ``NamedTuple`` of arrays
  whose leading axis is the stars) and its **population values**
  (:meth:`~Term.population`, read from ``z`` by name);
- its **log terms per component** (:meth:`~Term.log_terms`): ``ln p(data_i |
  cluster)`` and ``ln p(data_i | field)`` per star; the marginal and the
  joint likelihood add them in one place
  (:func:`~gaia_distances.core.terms.term_log_likelihoods`);
- optionally, a parameter the sampler may **integrate out** on a grid
  (:meth:`~Term.integrable`, :meth:`~Term.at_nodes`): one that enters no
  log term but the term's cluster ones, such as the members' mean radial
  velocity (:mod:`~gaia_distances.core.collapse`);
- its **physical draws** (:meth:`~Term.physical`), its **start**
  (:meth:`~Term.start`) for the MAP search, and its **simulator**
  (:meth:`~Term.simulate`) for :func:`~gaia_distances.simulate_field`.

The terms declared here do not depend on a star's distance given the
population (a radial velocity, say); a term that does belongs at the nodes
of the cluster's distance integral, as the proper motions do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from gaia_distances.core.blocks import Block
from gaia_distances.core.numerics import Array
from gaia_distances.core.parameters import Quantity

#: A :class:`~gaia_distances.core.population.ClusterModel` (not imported: the model imports the terms).
ModelLike = Any

__all__ = ["Column", "ModelLike", "SimulatedColumn", "Term"]


class Column(NamedTuple):
    """A column a term reads: its ``name``, the ``aliases`` that count as the same thing (tried in order after
    the name), its astropy ``unit`` string and whether the term needs it (``required``; else a missing
    column reads as NaN)."""

    name: str
    aliases: tuple[str, ...]
    unit: str
    required: bool = True


class SimulatedColumn(NamedTuple):
    """A column a term's simulator adds to a mock table: its values (NaN where a star has none), unit and
    description."""

    values: np.ndarray
    unit: str
    description: str


class Term:
    """One term of the cluster model (see the module's description); subclasses override every method."""

    #: The option's name: ``fit_cluster(<name>="auto")`` and the registry's key.
    name: str = ""
    #: One line for the option's documentation and the command line's help.
    help: str = ""
    #: The columns read, each with its aliases.
    columns: tuple[Column, ...] = ()
    #: Fitted rows with usable values the term needs (``"auto"`` leaves the term out below this).
    min_stars: int = 10
    #: Whether the term needs the proper-motion model (``"auto"`` leaves it out without one).
    needs_kinematics: bool = False

    def block(self, model: ModelLike) -> Block:
        """The term's entries of ``z`` and the quantities it reports, for ``model`` (whose other blocks may
        already declare a parameter the term shares, which the term then reads by name)."""
        raise NotImplementedError

    def block_quantities(self) -> tuple[Quantity, ...]:
        """Every quantity the term can report, whatever the model (its :meth:`block` reports some of them)."""
        raise NotImplementedError

    def usable(self, values: Mapping[str, np.ndarray]) -> np.ndarray:
        """Which rows of ``values`` (the term's columns by :attr:`Column.name`, float) the term can use."""
        raise NotImplementedError

    def prepare(self, values: Mapping[str, np.ndarray]) -> Any:
        """The term's per-star data (a ``NamedTuple`` of NumPy arrays, stars first) from its columns; rows
        that are not :meth:`usable` get placeholders and a term of 0."""
        raise NotImplementedError

    def present(self, data: Any) -> Array:
        """1 where a star of the term's per-star data (:meth:`prepare`) has usable values, else 0."""
        raise NotImplementedError

    def population(self, z: Array, model: ModelLike, xp: Any) -> Any:
        """The term's population values at ``z`` (read by name; ``xp`` is ``jnp`` or ``np``)."""
        raise NotImplementedError

    def log_terms(self, values: Any, data: Any) -> tuple[Array, Array]:
        """``ln p(data_i | cluster)`` and ``ln p(data_i | field)`` per star (0 where a star has no data)."""
        raise NotImplementedError

    def integrable(self, model: ModelLike) -> str | None:
        """The one parameter of the term's block for ``model`` that enters nothing but the term's cluster log
        terms, which the sampler then integrates out on a grid (:mod:`~gaia_distances.core.collapse`);
        ``None`` (the default) where there is none."""
        return None

    #: The Laplace sd of the :meth:`integrable` parameter below which the sampler leaves it in ``z``: a
    #: parameter that the data pin down has a Gaussian posterior, which NUTS samples as well as the grid.
    integrate_above: float = 0.0

    def scanned(self, model: ModelLike) -> str | None:
        """A parameter whose posterior the term can give several modes (the members' mean velocity, where a
        binary among a handful of members pulls it), which the MAP search therefore sets to the best of a grid
        of values before its last polish (:func:`~gaia_distances.core.search.scan_parameter`): a local
        optimiser stops in whichever mode, or between two, it starts near. ``None`` (the default) where
        there is none."""
        return None

    def at_nodes(self, values: Any, nodes: Array) -> Any:
        """``values`` with the :meth:`integrable` parameter set to ``nodes`` (an array that broadcasts
        against the stars, e.g. ``(K, 1)``; ``None``: left out of ``z``, and then :meth:`log_terms` gives
        its cluster part as 0 and :meth:`physical` leaves its quantity out)."""
        raise NotImplementedError

    def physical(self, values: Any, model: ModelLike) -> dict[str, np.ndarray]:
        """The quantities the term reports (names as its :meth:`block` declares them), from its values."""
        raise NotImplementedError

    def start(self, z: np.ndarray, data: Any, model: ModelLike, near: np.ndarray | None) -> None:
        """Set the term's entries of a starting ``z`` in place: the field's from every star, the cluster's
        from the stars ``near`` a candidate cluster (``None``: no candidate yet)."""
        raise NotImplementedError

    def simulate(self, rng: np.random.Generator, truth: Mapping[str, Any]) -> dict[str, SimulatedColumn]:
        """The term's columns for a mock field (:func:`~gaia_distances.simulate_field`) from its ``truth``
        (per-star arrays and the simulation's settings, as that function documents)."""
        raise NotImplementedError
