"""Column names, units, masks and provenance for Gaia tables.

Gaia archive responses may name columns by their upper-case VOTable IDs
(``SOURCE_ID``, ``PARALLAX``); everything here works case-insensitively and
returns tables with the archive's canonical lower-case names.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from astropy import units as u
from astropy.table import Column, MaskedColumn, QTable, Table

from gaia_distances.core.numerics import ONE_SIGMA_QUANTILES, SUMMARY_LEVELS
from gaia_distances.errors import GaiaDistancesWarning, MissingColumnsError

__all__ = [
    "COLUMN_UNITS",
    "META_KEY",
    "DistanceColumnNames",
    "add_column",
    "column_values",
    "corrected_parallax",
    "distance_column_names",
    "find_column",
    "normalise_columns",
    "require_columns",
    "update_provenance",
]

log = logging.getLogger(__name__)

#: Key of ``table.meta`` under which provenance is recorded.
META_KEY = "gaia_distances"

#: Units attached to known Gaia DR3 columns (values are left untouched).
COLUMN_UNITS: dict[str, u.UnitBase] = {
    "ra": u.deg,
    "dec": u.deg,
    "ra_error": u.mas,
    "dec_error": u.mas,
    "l": u.deg,
    "b": u.deg,
    "ecl_lon": u.deg,
    "ecl_lat": u.deg,
    "parallax": u.mas,
    "parallax_error": u.mas,
    "parallax_zeropoint": u.mas,
    "parallax_corrected": u.mas,
    "pmra": u.mas / u.yr,
    "pmdec": u.mas / u.yr,
    "pmra_error": u.mas / u.yr,
    "pmdec_error": u.mas / u.yr,
    "phot_g_mean_mag": u.mag,
    "phot_bp_mean_mag": u.mag,
    "phot_rp_mean_mag": u.mag,
    "bp_rp": u.mag,
    "nu_eff_used_in_astrometry": u.um**-1,
    "pseudocolour": u.um**-1,
    "radial_velocity": u.km / u.s,
}

#: Which archive column supplies each quantity, to help a user fix a query.
_COLUMN_HINTS = {
    "parallax": "gaiadr3.gaia_source.parallax",
    "parallax_error": "gaiadr3.gaia_source.parallax_error",
    "source_id": "gaiadr3.gaia_source.source_id",
    "phot_g_mean_mag": "gaiadr3.gaia_source.phot_g_mean_mag",
    "nu_eff_used_in_astrometry": "gaiadr3.gaia_source.nu_eff_used_in_astrometry",
    "pseudocolour": "gaiadr3.gaia_source.pseudocolour",
    "ecl_lat": "gaiadr3.gaia_source.ecl_lat",
    "astrometric_params_solved": "gaiadr3.gaia_source.astrometric_params_solved",
    "ra": "gaiadr3.gaia_source.ra",
    "dec": "gaiadr3.gaia_source.dec",
}

_INTEGER_COLUMNS = {"source_id", "astrometric_params_solved", "solution_id", "random_index"}


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
    is ``<prefix>_median``, ``<prefix>_lo`` and ``<prefix>_hi``; an extra
    quantile ``q`` is ``<prefix>_pNN`` with ``NN = round(100 q)``.

    Examples
    --------
    >>> names = distance_column_names("distance", (0.05, 0.95))
    >>> names.quantiles
    {'distance_median': 1, 'distance_lo': 0, 'distance_hi': 2, 'distance_p05': 3, 'distance_p95': 4}
    >>> names.summary[-2:]
    ['distance_mode', 'distance_flag']
    """
    quantiles = {f"{prefix}_{level}": j for level, j in SUMMARY_LEVELS.items()}
    first_extra = len(ONE_SIGMA_QUANTILES)
    for k, q in enumerate(extra_quantiles):
        quantiles[f"{prefix}_p{round(100 * float(q)):02d}"] = first_extra + k
    return DistanceColumnNames(quantiles, f"{prefix}_mode", f"{prefix}_flag", f"{prefix}_rhat", f"{prefix}_ess")


def normalise_columns(table: Table | QTable) -> QTable:
    """Return a new QTable with lower-case names, units and masks as NaN.

    - names are matched case-insensitively and lower-cased; two columns that
      differ only in case raise ``ValueError``;
    - known Gaia columns get their unit (``parallax`` in mas, ``ra`` in deg, ...)
      where the input has none, and are converted to it where it has one;
    - masked floating-point values become NaN; masked integer columns stay
      masked (``source_id``) so that no row is ever dropped.

    The input is not modified.

    Examples
    --------
    >>> from astropy.table import Table
    >>> t = normalise_columns(Table({"SOURCE_ID": [1], "PARALLAX": [2.0]}))
    >>> t.colnames, str(t["parallax"].unit)
    (['source_id', 'parallax'], 'mas')
    """
    out = QTable(meta=dict(table.meta))
    seen: dict[str, str] = {}
    for name in table.colnames:
        key = name.strip().lower()
        if key in seen:
            raise ValueError(
                f"columns {seen[key]!r} and {name!r} differ only in case; rename one of them before loading"
            )
        seen[key] = name
        out[key] = _normalise_column(table[name], key)
    return out


def _normalise_column(col: Any, key: str) -> Any:
    unit = COLUMN_UNITS.get(key)
    src_unit = getattr(col, "unit", None)
    raw = getattr(col, "unmasked", col)  # astropy Masked quantities
    raw = getattr(raw, "value", raw) if isinstance(raw, u.Quantity) else raw
    values = np.asarray(raw)
    if not (values.dtype.kind == "f" or (unit is not None and values.dtype.kind in "iub")):
        if isinstance(col, (Column, MaskedColumn)):
            new = col.copy()
            new.name = key
            return new
        return np.array(col, copy=True)
    values = np.array(values, dtype=float, copy=True)
    mask = getattr(col, "mask", None)
    if mask is not None and np.any(mask):
        values[np.asarray(mask)] = np.nan
    if src_unit in ("", u.dimensionless_unscaled):
        src_unit = None
    if unit is not None:
        if src_unit is not None:
            try:
                values = (values * u.Unit(src_unit)).to_value(unit)
            except (u.UnitConversionError, ValueError):
                log.warning("column %s has unit %s, expected %s; kept as is", key, src_unit, unit)
                unit = u.Unit(src_unit)
        return u.Quantity(values, unit, copy=False)
    if src_unit is not None:
        try:
            return u.Quantity(values, src_unit, copy=False)
        except (TypeError, ValueError):
            pass
    return Column(values, name=key, description=getattr(getattr(col, "info", None), "description", None))


def require_columns(table: Table, names: Iterable[str], *, step: str) -> None:
    """Raise :class:`MissingColumnsError` naming every absent column.

    The message names the archive column (and query) that would supply it.
    """
    missing = [n for n in names if n not in table.colnames]
    if missing:
        hints = ", ".join(f"{m} (from {_COLUMN_HINTS.get(m, 'the Gaia archive')})" for m in missing)
        cols = ", ".join(missing)
        raise MissingColumnsError(
            f"{step} needs column(s) {hints}; the table has {table.colnames}. "
            f"Add them to the query, e.g. SELECT source_id, {cols} FROM gaiadr3.gaia_source ..."
        )


def find_column(table: Table, name: str, *, step: str) -> str:
    """The table's column matching ``name`` case-insensitively (else raise)."""
    if name in table.colnames:
        return name
    matches = [c for c in table.colnames if c.lower() == name.lower()]
    if len(matches) == 1:
        return matches[0]
    require_columns(table, [name], step=step)
    return name  # pragma: no cover - require_columns raised


def column_values(table: Table, name: str, unit: u.UnitBase | None = None) -> np.ndarray:
    """Float64 values of ``table[name]`` in ``unit``, with masked entries as NaN."""
    col = table[name]
    if isinstance(col, u.Quantity):
        values = col.to_value(unit) if unit is not None else col.value
        values = np.array(values, dtype=float)
    else:
        values = np.array(np.ma.filled(np.ma.asarray(col).astype(float), np.nan), dtype=float)
        if unit is not None and getattr(col, "unit", None) not in (None, ""):
            values = (values * u.Unit(col.unit)).to_value(unit)
    mask = getattr(col, "mask", None)
    if mask is not None and np.any(mask):
        values[np.asarray(mask)] = np.nan
    return values


def add_column(
    table: QTable,
    name: str,
    values: np.ndarray,
    *,
    unit: u.UnitBase | None = None,
    description: str,
) -> None:
    """Add or replace ``name`` in ``table`` with a unit and a description."""
    if unit is not None:
        col: Any = u.Quantity(values, unit, copy=False)
        col.info.description = description
    else:
        col = Column(values, name=name, description=description)
    if name in table.colnames:
        table.replace_column(name, col)
    else:
        table[name] = col
    table[name].info.description = description


def corrected_parallax(
    table: Table, zero_point: float | str | u.Quantity | None, *, step: str
) -> tuple[np.ndarray, str]:
    """Zero-point-corrected parallax (mas) and a description of its source.

    ``zero_point=None`` uses ``parallax_corrected`` (from ``apply_zeropoint``),
    warning and falling back to the raw parallax if it is absent; a float or
    Quantity is subtracted from ``parallax``; a string names a zero-point column.
    """
    require_columns(table, ["parallax_error"], step=step)
    if zero_point is None:
        if "parallax_corrected" in table.colnames:
            return column_values(table, "parallax_corrected", u.mas), "parallax_corrected column"
        require_columns(table, ["parallax"], step=step)
        warn(
            "no parallax_corrected column: using the raw parallax with no zero point. "
            "Run apply_zeropoint first, or pass zero_point=<mas or column name>."
        )
        return column_values(table, "parallax", u.mas), "none (raw parallax)"
    require_columns(table, ["parallax"], step=step)
    plx = column_values(table, "parallax", u.mas)
    if isinstance(zero_point, str):
        col = find_column(table, zero_point, step=f"{step} zero_point")
        zp = column_values(table, col, u.mas if isinstance(table[col], u.Quantity) else None)
        return plx - zp, f"parallax - column {zero_point}"
    zp_val = zero_point.to_value(u.mas) if isinstance(zero_point, u.Quantity) else float(zero_point)
    return plx - zp_val, f"parallax - ({zp_val} mas)"


def zero_point_record(zero_point: float | str | u.Quantity | None) -> float | str | None:
    """The ``zero_point`` argument in JSON form (mas), so a later step can repeat it."""
    if zero_point is None or isinstance(zero_point, str):
        return zero_point
    if isinstance(zero_point, u.Quantity):
        return float(zero_point.to_value(u.mas))
    return float(zero_point)


def update_provenance(table: QTable, step: str, record: Mapping[str, Any]) -> None:
    """Record ``record`` under ``table.meta['gaia_distances'][step]``."""
    from gaia_distances import __version__

    meta = dict(table.meta.get(META_KEY, {}))
    meta["version"] = __version__
    meta[step] = dict(record)
    table.meta[META_KEY] = meta


def warn(message: str) -> None:
    """Issue a :class:`GaiaDistancesWarning` (stack level points at user code)."""
    import warnings

    warnings.warn(message, GaiaDistancesWarning, stacklevel=3)
