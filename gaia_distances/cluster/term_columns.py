"""The model terms at the table's edge: their options, checked once, and the columns each fit reads for them.

Every term registered in :data:`~gaia_distances.core.terms.TERMS` is an
option of :func:`~gaia_distances.fit_cluster` and
:func:`~gaia_distances.fit_clusters` under its name, ``"auto"`` by default
(:func:`checked_term_options`), and a flag of the command line. A fit reads
the term's columns for the rows it fits (:func:`term_columns`): ``"auto"``
uses the term when the table has them and enough rows can use them,
``True`` insists (naming what is missing), ``False`` leaves the term out. A
row without usable values is fitted without the term: neither flagged nor
dropped.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from astropy import units as u
from astropy.table import QTable

from gaia_distances.cluster.frozen import read_only
from gaia_distances.columns import column_values
from gaia_distances.core.term import Term
from gaia_distances.core.terms import TERMS
from gaia_distances.errors import GaiaDistancesError, MissingColumnsError, TooFewStarsError

__all__ = ["TermOptions", "checked_term_options", "term_columns", "term_options_documented", "term_values"]

log = logging.getLogger("gaia_distances")

#: Each registered term's option, in registry order: ``((name, True | False | "auto"), ...)``.
TermOptions = tuple[tuple[str, "bool | str"], ...]


def checked_term_options(options: Mapping[str, Any]) -> TermOptions:
    """Every registered term's option, ``"auto"`` where not given.

    Raises ``TypeError`` for a name that is not a term (as for any unknown
    keyword, listing the terms) and ``ValueError`` for a value other than
    ``True``, ``False`` or ``"auto"``.
    """
    unknown = [k for k in options if k not in TERMS]
    if unknown:
        known = ", ".join(TERMS) or "none"
        raise TypeError(f"unexpected keyword argument {unknown[0]!r} (the model's terms: {known})")
    out = []
    for name in TERMS:
        value = options.get(name, "auto")
        if not any(value is k for k in (True, False)) and value != "auto":
            raise ValueError(f"{name} must be True, False or 'auto'; got {value!r}")
        out.append((name, value))
    return tuple(out)


def _find(table: QTable, term: Term) -> tuple[dict[str, str], list[str]]:
    """The table's column for each of the term's columns, and the required ones it lacks.

    A term's names come in families: its own (each column's ``name``) and, in order, each set of aliases
    (the ``k``-th alias of every column, as EDR3's ``dr2_radial_velocity`` and
    ``dr2_radial_velocity_error``). The first family whose required columns the table has all is used, so
    a value is never paired with another family's error.
    """
    n_families = 1 + max((len(c.aliases) for c in term.columns), default=0)
    for k in range(n_families):
        names = {c.name: (c.name, *c.aliases)[k] if k <= len(c.aliases) else None for c in term.columns}
        if all(names[c.name] in table.colnames for c in term.columns if c.required):
            return {n: v for n, v in names.items() if v is not None and v in table.colnames}, []
    required = [c for c in term.columns if c.required]
    missing = [
        " or ".join((c.name, *c.aliases)) for c in required if not set((c.name, *c.aliases)) & set(table.colnames)
    ]
    if not missing:  # each is there under some name, but no family is whole
        families = [
            ", ".join((c.name, *c.aliases)[k] for c in required if k <= len(c.aliases)) for k in range(n_families)
        ]
        missing = ["one whole set of: " + "; or ".join(families)]
    return {}, missing


def term_values(table: QTable, rows: np.ndarray, term: Term) -> dict[str, np.ndarray] | None:
    """The term's columns at ``rows`` (float, in the declared units; NaN where missing), or ``None`` when
    the table lacks a required one."""
    found, missing = _find(table, term)
    if missing:
        return None
    out = {}
    for col in term.columns:
        if col.name in found:
            unit = u.Unit(col.unit) if col.unit else None
            out[col.name] = column_values(table, found[col.name], unit)[rows]
        else:
            out[col.name] = np.full(rows.size, np.nan)
    return out


def term_columns(
    table: QTable, rows: np.ndarray, options: TermOptions, *, kinematic: bool, step: str
) -> dict[str, dict[str, np.ndarray]]:
    """The columns of each term the fit of ``rows`` uses, by term name (read-only arrays).

    ``True`` raises :class:`~gaia_distances.MissingColumnsError` naming a
    missing column, and :class:`~gaia_distances.GaiaDistancesError` when the
    term needs proper motions the fit does not use or when fewer than the
    term's ``min_stars`` rows can use it; ``"auto"`` leaves the term out
    then (logged).
    """
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, option in options:
        if option is False:
            continue
        term = TERMS[name]
        if term.needs_kinematics and not kinematic:
            if option is True:
                raise GaiaDistancesError(f"{step}({name}=True) needs the proper-motion model (kinematics)")
            log.info("%s: no proper motions fitted; %s left out", step, name)
            continue
        values = term_values(table, rows, term)
        if values is None:
            if option is True:
                lacking = ", ".join(_find(table, term)[1])
                raise MissingColumnsError(f"{step}({name}=True) needs the columns {lacking}")
            continue
        n_usable = int(term.usable(values).sum())
        if n_usable < term.min_stars:
            message = f"{n_usable} of {rows.size} rows to fit have usable {name} (the fit needs {term.min_stars})"
            if option is True:
                raise TooFewStarsError(f"{step}({name}=True): {message}")
            log.info("%s: %s; %s left out", step, message, name)
            continue
        out[name] = {k: read_only(v) for k, v in values.items()}
    return out


def term_options_documented(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (which takes ``**term_options``) with a signature and a docstring that list every registered
    term's option, as ``help``, IDEs and the reference documentation show them."""
    sig = inspect.signature(fn)
    params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    params += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default="auto") for n in TERMS]
    fn.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    lines = [
        f'    {name}\n        A model term: {term.help} ``"auto"`` (default) uses it when the table has '
        f"the columns ({', '.join(c.name for c in term.columns)}) and at least {term.min_stars} rows to fit "
        f"can use them{'; it needs proper motions' if term.needs_kinematics else ''}; ``True`` insists, "
        "``False`` leaves it out."
        for name, term in TERMS.items()
    ]
    text = "\n".join(lines) or "    (no model terms are registered)"
    fn.__doc__ = (fn.__doc__ or "").replace("    **term_options\n        (the model terms' options)", text)
    return fn
