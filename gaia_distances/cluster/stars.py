"""The rows a cluster fit uses: selection from the table, flags, and the per-star columns written back."""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

import numpy as np
from astropy import units as u
from astropy.table import QTable

from gaia_distances.columns import add_column, column_values, corrected_parallax, distance_column_names
from gaia_distances.core.numerics import ONE_SIGMA_QUANTILES
from gaia_distances.errors import GaiaDistancesError
from gaia_distances.io import as_table

__all__ = [
    "CLUSTER_DISTANCE_COLUMNS",
    "MIN_STARS",
    "ClusterFlag",
    "FittedStars",
    "Selection",
    "select_stars",
    "write_star_columns",
]

#: Fewest usable stars a fit accepts.
MIN_STARS = 20
#: The cluster-model distance columns -> index into ONE_SIGMA_QUANTILES.
CLUSTER_DISTANCE_COLUMNS = distance_column_names("cluster_distance").quantiles


class ClusterFlag(enum.IntFlag):
    """Bits of the ``cluster_flag`` column (0: the star was used in the fit)."""

    OK = 0
    #: no parallax, or a missing, zero or negative error: excluded, results NaN
    NO_PARALLAX = 1
    #: outside ``parallax_limits``: excluded, results NaN
    OUTSIDE_LIMITS = 2
    #: (fit_clusters) the row's cluster could not be fitted, or its group key is missing
    NOT_FITTED = 4


class FittedStars(NamedTuple):
    """The stars a fit used, in table order (read-only arrays, mas).

    ``rows`` are their row indices in the fit's table.
    """

    rows: np.ndarray
    parallax: np.ndarray  # zero-point corrected
    parallax_error: np.ndarray
    zero_point: np.ndarray  # catalogue parallax - corrected parallax (0 without a catalogue parallax)

    @property
    def catalogue_parallax(self) -> np.ndarray:
        """The parallax as catalogued: corrected parallax plus zero point (mas)."""
        return self.parallax + self.zero_point

    @property
    def n_stars(self) -> int:
        """How many stars were fitted."""
        return int(self.rows.size)


class Selection(NamedTuple):
    """A copy of the input table, every row's :class:`ClusterFlag` bits and the stars to fit."""

    table: QTable
    flag: np.ndarray
    stars: FittedStars
    zero_point_source: str


def _read_only(x: np.ndarray) -> np.ndarray:
    x = np.array(x)
    x.flags.writeable = False
    return x


def select_stars(
    table: Any, *, zero_point: Any = None, parallax_limits: tuple[float, float] | None = None, step: str = "fit_cluster"
) -> Selection:
    """The rows with a finite parallax and a positive error, inside ``parallax_limits`` (mas) if given.

    The limits apply to the catalogue ``parallax`` when the table has it, as
    in the reference cuts. Raises :class:`~gaia_distances.GaiaDistancesError`
    when fewer than :data:`MIN_STARS` qualify.
    """
    out = as_table(table)
    plx, zp_source = corrected_parallax(out, zero_point, step=step)
    err = column_values(out, "parallax_error", u.mas)
    flag = np.zeros(len(out), dtype=np.int16)
    flag[~(np.isfinite(plx) & np.isfinite(err) & (err > 0))] |= ClusterFlag.NO_PARALLAX
    raw = column_values(out, "parallax", u.mas) if "parallax" in out.colnames else None
    if parallax_limits is not None:
        lo, hi = parallax_limits
        cut = raw if raw is not None else plx
        inside = (cut > lo) & (cut < hi)
        flag[~inside & (flag == 0)] |= ClusterFlag.OUTSIDE_LIMITS
    used = np.flatnonzero(flag == 0)
    if used.size < MIN_STARS:
        raise GaiaDistancesError(
            f"{step} needs at least {MIN_STARS} stars with a finite parallax and a positive error"
            f"{' inside parallax_limits' if parallax_limits else ''}; {used.size} of {len(out)} qualify"
        )
    w, s = plx[used], err[used]
    zp = raw[used] - w if raw is not None else np.zeros(used.size)
    zp = np.where(np.isfinite(zp), zp, 0.0)
    stars = FittedStars(*(_read_only(x) for x in (used, w, s, zp)))
    return Selection(out, flag, stars, zp_source)


def write_star_columns(
    out: QTable,
    member: np.ndarray,
    distance_quantiles: np.ndarray,
    flag: np.ndarray,
    *,
    member_description: str,
    flag_description: str,
) -> None:
    """``membership_prob``, ``cluster_distance_median/lo/hi`` (pc) and ``cluster_flag``, in place.

    ``distance_quantiles`` has one row per table row, at
    :data:`~gaia_distances.core.numerics.ONE_SIGMA_QUANTILES`.
    """
    add_column(out, "membership_prob", member, description=member_description)
    for name, j in CLUSTER_DISTANCE_COLUMNS.items():
        add_column(
            out,
            name,
            distance_quantiles[:, j],
            unit=u.pc,
            description=f"cluster-model posterior {100 * ONE_SIGMA_QUANTILES[j]:g}th percentile of distance",
        )
    add_column(out, "cluster_flag", flag, description=flag_description)
