"""The names of the columns the package appends, and the refusal to replace a user's own.

:func:`distance_column_names` is the one place the distance columns are named;
:func:`refuse_existing_columns` is the check every step that appends columns
makes before any work, so that a user's column is never silently replaced.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np

from gaia_distances.core.numerics import ONE_SIGMA_QUANTILES, SUMMARY_LEVELS
from gaia_distances.errors import ExistingColumnsError

__all__ = ["DistanceColumnNames", "distance_column_names", "refuse_existing_columns"]


class DistanceColumnNames(NamedTuple):
    """The names of the columns that :func:`~gaia_distances.estimate_distances` appends.

    Attributes
    ----------
    quantiles
        Column name -> index into ``ONE_SIGMA_QUANTILES + extra_quantiles``
        (the probabilities the posterior is inverted at), in column order:
        ``<prefix>_median``, ``<prefix>_lo``, ``<prefix>_hi``, then one
        ``<prefix>_pNN`` per extra quantile.
    mode, flag
        ``<prefix>_mode`` and ``<prefix>_flag``.
    rhat, ess
        ``<prefix>_rhat`` and ``<prefix>_ess``, added by the NUTS method only.
    """

    quantiles: dict[str, int]
    mode: str
    flag: str
    rhat: str
    ess: str

    @property
    def summary(self) -> list[str]:
        """The columns every method appends, in order: the quantiles, the mode and the flag."""
        return [*self.quantiles, self.mode, self.flag]


def distance_column_names(prefix: str = "distance", extra_quantiles: Sequence[float] = ()) -> DistanceColumnNames:
    """The names of the distance columns: the one place they are built.

    The +-1 sigma summary (:data:`~gaia_distances.core.numerics.SUMMARY_LEVELS`)
    is ``<prefix>_median``, ``<prefix>_lo`` and ``<prefix>_hi``. An extra
    quantile ``q`` is ``<prefix>_p`` followed by the percentage ``100 q``
    written exactly, with at least two integer digits and ``_`` for the
    decimal point: 0.05 -> ``p05``, 0.051 -> ``p05_1``, 0.999 -> ``p99_9``,
    0.0005 -> ``p00_05``. Distinct quantiles thus get distinct names.

    Raises
    ------
    ValueError
        If an extra quantile is repeated or lies outside (0, 1).

    Examples
    --------
    >>> names = distance_column_names("distance", (0.05, 0.95))
    >>> names.quantiles
    {'distance_median': 1, 'distance_lo': 0, 'distance_hi': 2, 'distance_p05': 3, 'distance_p95': 4}
    >>> names.summary[-2:]
    ['distance_mode', 'distance_flag']
    >>> list(distance_column_names("d", (0.05, 0.051, 0.999)).quantiles)[3:]
    ['d_p05', 'd_p05_1', 'd_p99_9']
    """
    quantiles = {f"{prefix}_{level}": j for level, j in SUMMARY_LEVELS.items()}
    first_extra = len(ONE_SIGMA_QUANTILES)
    for k, q in enumerate(extra_quantiles):
        name = f"{prefix}_p{_percent_label(q)}"
        if name in quantiles:
            raise ValueError(f"extra_quantiles repeats {float(q)} (column {name}); give each quantile once")
        quantiles[name] = first_extra + k
    return DistanceColumnNames(quantiles, f"{prefix}_mode", f"{prefix}_flag", f"{prefix}_rhat", f"{prefix}_ess")


def _percent_label(q: float) -> str:
    """``100 q`` written exactly (from the shortest repr of ``q``): ``05``, ``05_1``, ``99_9``."""
    from decimal import Decimal

    value = float(q)
    if not 0.0 < value < 1.0:
        raise ValueError(f"extra_quantiles must lie in (0, 1); got {q}")
    text = format((Decimal(repr(value)) * 100).normalize(), "f")
    whole, _, frac = text.partition(".")
    return f"{int(whole):02d}" + (f"_{frac}" if frac else "")


def refuse_existing_columns(
    existing: Iterable[str], names: Sequence[str], *, overwrite: bool, step: str, other: str | None = None
) -> None:
    """Before a step appends ``names``: :class:`~gaia_distances.ExistingColumnsError` naming those among ``existing``
    (a table's column names), unless ``overwrite`` (a bool); ``other`` adds another way out to the message.

    >>> refuse_existing_columns(["distance_flag"], ["distance_flag"], overwrite=False, step="estimate_distances")
    Traceback (most recent call last):
    gaia_distances.errors.ExistingColumnsError: estimate_distances would replace the table's column(s) distance_flag; \
pass overwrite=True to replace them
    """
    if not isinstance(overwrite, bool | np.bool_):
        raise ValueError(f"overwrite must be True or False; got {overwrite!r}")
    clash = [name for name in names if name in set(existing)]
    if clash and not overwrite:
        hint = f", or {other}" if other else ""
        raise ExistingColumnsError(
            f"{step} would replace the table's column(s) {', '.join(clash)}; pass overwrite=True to replace them{hint}"
        )
