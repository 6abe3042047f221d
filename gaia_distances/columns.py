"""Column names, units, masks and provenance for Gaia tables.

Gaia archive responses may name columns by their upper-case VOTable IDs
(``SOURCE_ID``, ``PARALLAX``); the archive's own column names
(:data:`GAIA_ARCHIVE_COLUMNS`) are matched case-insensitively and returned in
the archive's canonical lower case. Every other column keeps its name as
written (a Johnson ``B`` stays ``B``).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from astropy import units as u
from astropy.table import Column, MaskedColumn, QTable, Table

from gaia_distances.appended_columns import DistanceColumnNames, distance_column_names, refuse_existing_columns
from gaia_distances.column_copy import copy_column, copy_info
from gaia_distances.errors import GaiaDistancesError, GaiaDistancesWarning, MissingColumnsError

__all__ = [
    "sky_positions",
    "COLUMN_UNITS",
    "GAIA_ARCHIVE_COLUMNS",
    "META_KEY",
    "DistanceColumnNames",
    "InvalidTableError",
    "add_column",
    "canonical_name",
    "column_values",
    "corrected_parallax",
    "distance_column_names",
    "find_column",
    "normalise_columns",
    "parallax_without_zero_point",
    "refuse_existing_columns",
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

#: Text a numeric column may hold for a missing value (compared lower-cased, stripped).
_NULL_TEXT = ("", "null", "none", "nan", "--", "n/a", "na")

#: The columns of ``gaiadr3.gaia_source`` and the Bailer-Jones et al. (2021)
#: distance columns: names matched case-insensitively and lower-cased on loading.
GAIA_ARCHIVE_COLUMNS = frozenset(
    """
    solution_id designation source_id random_index ref_epoch ra ra_error dec dec_error parallax parallax_error
    parallax_over_error pm pmra pmra_error pmdec pmdec_error ra_dec_corr ra_parallax_corr ra_pmra_corr ra_pmdec_corr
    dec_parallax_corr dec_pmra_corr dec_pmdec_corr parallax_pmra_corr parallax_pmdec_corr pmra_pmdec_corr
    astrometric_n_obs_al astrometric_n_obs_ac astrometric_n_good_obs_al astrometric_n_bad_obs_al astrometric_gof_al
    astrometric_chi2_al astrometric_excess_noise astrometric_excess_noise_sig astrometric_params_solved
    astrometric_primary_flag nu_eff_used_in_astrometry pseudocolour pseudocolour_error ra_pseudocolour_corr
    dec_pseudocolour_corr parallax_pseudocolour_corr pmra_pseudocolour_corr pmdec_pseudocolour_corr
    astrometric_matched_transits visibility_periods_used astrometric_sigma5d_max matched_transits
    new_matched_transits matched_transits_removed ipd_gof_harmonic_amplitude ipd_gof_harmonic_phase
    ipd_frac_multi_peak ipd_frac_odd_win ruwe scan_direction_strength_k1 scan_direction_strength_k2
    scan_direction_strength_k3 scan_direction_strength_k4 scan_direction_mean_k1 scan_direction_mean_k2
    scan_direction_mean_k3 scan_direction_mean_k4 duplicated_source phot_g_n_obs phot_g_mean_flux
    phot_g_mean_flux_error phot_g_mean_flux_over_error phot_g_mean_mag phot_bp_n_obs phot_bp_mean_flux
    phot_bp_mean_flux_error phot_bp_mean_flux_over_error phot_bp_mean_mag phot_rp_n_obs phot_rp_mean_flux
    phot_rp_mean_flux_error phot_rp_mean_flux_over_error phot_rp_mean_mag phot_bp_rp_excess_factor
    phot_bp_n_contaminated_transits phot_bp_n_blended_transits phot_rp_n_contaminated_transits
    phot_rp_n_blended_transits phot_proc_mode bp_rp bp_g g_rp radial_velocity radial_velocity_error rv_method_used
    rv_nb_transits rv_nb_deblended_transits rv_visibility_periods_used rv_expected_sig_to_noise rv_renormalised_gof
    rv_chisq_pvalue rv_time_duration rv_amplitude_robust rv_template_teff rv_template_logg rv_template_fe_h
    rv_atm_param_origin vbroad vbroad_error vbroad_nb_transits grvs_mag grvs_mag_error grvs_mag_nb_transits
    rvs_spec_sig_to_noise phot_variable_flag l b ecl_lon ecl_lat in_qso_candidates in_galaxy_candidates
    non_single_star has_xp_continuous has_xp_sampled has_rvs has_epoch_photometry has_epoch_rv has_mcmc_gspphot
    has_mcmc_msc in_andromeda_survey classprob_dsc_combmod_quasar classprob_dsc_combmod_galaxy
    classprob_dsc_combmod_star teff_gspphot teff_gspphot_lower teff_gspphot_upper logg_gspphot logg_gspphot_lower
    logg_gspphot_upper mh_gspphot mh_gspphot_lower mh_gspphot_upper distance_gspphot distance_gspphot_lower
    distance_gspphot_upper azero_gspphot azero_gspphot_lower azero_gspphot_upper ag_gspphot ag_gspphot_lower
    ag_gspphot_upper ebpminrp_gspphot ebpminrp_gspphot_lower ebpminrp_gspphot_upper libname_gspphot
    r_med_geo r_lo_geo r_hi_geo r_med_photogeo r_lo_photogeo r_hi_photogeo
    """.split()
    + list(COLUMN_UNITS)
)

#: Archive names too short to tell apart from a user's column (Johnson ``B``, a
#: length scale ``L``): recognised only as written, in lower case.
_CASE_SENSITIVE_COLUMNS = frozenset(n for n in GAIA_ARCHIVE_COLUMNS if len(n) == 1)

#: Known columns that must hold numbers: text in them is parsed (or refused) on loading.
_NUMERIC_COLUMNS = frozenset(COLUMN_UNITS) | _INTEGER_COLUMNS


class InvalidTableError(GaiaDistancesError, ValueError):
    """A table file or column cannot be used: unknown format, truncated file, text in a numeric column."""


def canonical_name(name: str) -> str:
    """The package's name for a column: the archive's lower-case name if it is one, else ``name`` unchanged.

    Examples
    --------
    >>> canonical_name("SOURCE_ID"), canonical_name("Parallax"), canonical_name("B"), canonical_name("b")
    ('source_id', 'parallax', 'B', 'b')
    """
    key = name.strip().lower()
    if key in GAIA_ARCHIVE_COLUMNS and (key not in _CASE_SENSITIVE_COLUMNS or name.strip() == key):
        return key
    return name


def normalise_columns(table: Table | QTable) -> QTable:
    """Return a new QTable with canonical names, units and masks as NaN.

    - the Gaia archive's column names (:data:`GAIA_ARCHIVE_COLUMNS`) are
      matched case-insensitively and lower-cased (``SOURCE_ID`` ->
      ``source_id``); two columns that differ only in case raise
      ``ValueError``. Other columns keep their names: a Johnson ``B`` or a
      length scale ``L`` is not the archive's ``b`` or ``l`` (the one-letter
      archive names are recognised only in lower case);
    - known Gaia columns get their unit (``parallax`` in mas, ``ra`` in deg, ...)
      where the input has none, and are converted to it where it has one;
    - text in a known numeric column (a CSV with ``null`` entries) is parsed:
      empty, ``null``, ``none``, ``nan``, ``--`` and ``n/a`` become missing, any
      other non-number raises :class:`InvalidTableError` naming the column,
      the value and its row;
    - masked floating-point values of the archive's columns become NaN;
      masked integer columns stay masked (``source_id``) so that no row is
      ever dropped;
    - every other column (yours, or one a step of this package added) is
      copied untouched: unit (function units too), description, format,
      meta and mask; only a floating-point column's mask that hides nothing
      but NaN is dropped.

    The input is not modified.

    Examples
    --------
    >>> from astropy.table import Table
    >>> t = normalise_columns(Table({"SOURCE_ID": [1], "PARALLAX": [2.0], "B": [12.1]}))
    >>> t.colnames, str(t["parallax"].unit), t["B"].unit
    (['source_id', 'parallax', 'B'], 'mas', None)
    """
    out = QTable(meta=dict(table.meta))
    seen: dict[str, str] = {}
    for name in table.colnames:
        key = canonical_name(name)
        if key in seen:
            raise ValueError(
                f"columns {seen[key]!r} and {name!r} differ only in case; rename one of them before loading"
            )
        seen[key] = name
        out[key] = _normalise_column(table[name], key)
    return out


def _normalise_column(col: Any, key: str) -> Any:
    if key in _NUMERIC_COLUMNS and np.asarray(getattr(col, "unmasked", col)).dtype.kind in "USO":
        col = _parse_numbers(col, key)
    if key not in GAIA_ARCHIVE_COLUMNS:
        return copy_column(col, key)
    out = _archive_column(col, key)
    if out is not col:
        copy_info(col, out)
    return out


def _archive_column(col: Any, key: str) -> Any:
    """A column of the Gaia archive: its unit where the package knows it, masked floats as NaN."""
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


def _parse_numbers(col: Any, key: str) -> MaskedColumn:
    """A text column of a known numeric column as numbers (int for IDs), missing text masked."""
    data = np.ma.asarray(col)
    mask = np.ma.getmaskarray(data).copy()
    text = np.char.strip(np.asarray(data.filled(""), dtype=str))
    mask |= np.isin(np.char.lower(text), _NULL_TEXT)
    dtype = np.int64 if key in _INTEGER_COLUMNS else np.float64
    filled = np.where(mask, "0", text)
    try:
        values = filled.astype(dtype)
    except (TypeError, ValueError, OverflowError):
        row, bad = _first_non_number(filled, dtype)
        raise InvalidTableError(
            f"column {key!r} holds {bad!r} in row {row} (counting from 0), which is not a number; "
            "fix or blank out such values"
        ) from None
    info = getattr(col, "info", None)
    return MaskedColumn(
        values, name=key, mask=mask, unit=getattr(col, "unit", None), description=getattr(info, "description", None)
    )


def _first_non_number(values: np.ndarray, dtype: Any) -> tuple[int, Any]:
    """The first row of ``values`` that ``dtype`` cannot parse, and its value."""
    for row, value in enumerate(values):
        try:
            np.asarray(value).astype(dtype)
        except (TypeError, ValueError, OverflowError):
            return row, value.item() if isinstance(value, np.generic) else value
    return -1, None  # pragma: no cover - called only after a failed conversion


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
    """Float64 values of ``table[name]`` in ``unit``, with masked entries as NaN.

    Raises :class:`InvalidTableError` naming the column, a value and its row
    when the column holds text that is not a number, and naming the column,
    its unit and ``unit`` when its unit does not convert to ``unit``
    (proper motions in ``mas`` where ``mas / yr`` is needed).
    """
    col = table[name]
    if isinstance(col, u.Quantity):
        values = _converted(col, col.unit, unit, name) if unit is not None else col.value
        values = np.array(values, dtype=float)
    else:
        masked = np.ma.asarray(col)
        try:
            values = np.array(np.ma.filled(masked.astype(float), np.nan), dtype=float)
        except (TypeError, ValueError):
            row, bad = _first_non_number(np.ma.filled(masked, 0), float)
            raise InvalidTableError(
                f"column {name!r} holds {bad!r} in row {row} (counting from 0), which is not a number"
            ) from None
        if unit is not None and getattr(col, "unit", None) not in (None, ""):
            values = _converted(values, col.unit, unit, name)
    mask = getattr(col, "mask", None)
    if mask is not None and np.any(mask):
        values[np.asarray(mask)] = np.nan
    return values


def sky_positions(table: Table, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """``(ra, dec)`` in deg of ``rows`` (default all; NaN where unknown), or ``None`` without both columns."""
    if not all(c in table.colnames for c in ("ra", "dec")):
        return None
    ra, dec = column_values(table, "ra", u.deg), column_values(table, "dec", u.deg)
    return (ra, dec) if rows is None else (ra[rows], dec[rows])


def _converted(values: Any, src: Any, unit: u.UnitBase, name: str) -> Any:
    """``values`` (a Quantity, or numbers in ``src``) in ``unit``, or :class:`InvalidTableError` naming ``name``."""
    try:
        quantity = values if isinstance(values, u.Quantity) else np.asarray(values) * u.Unit(src)
        return quantity.to_value(unit)
    except (u.UnitsError, ValueError, TypeError):
        raise InvalidTableError(
            f"column {name!r} has unit {str(src)!r}, which does not convert to {unit.to_string()!r}: "
            f"give {name} in {unit.to_string()} (or a unit convertible to it)"
        ) from None


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


def parallax_without_zero_point(table: Table, corrected: np.ndarray) -> np.ndarray:
    """Rows that have a parallax but a NaN corrected parallax: their zero point is missing, not their parallax.

    ``corrected`` is the first value :func:`corrected_parallax` returns. A
    step that flags rows with no usable parallax should flag these rows as
    missing a zero point instead (see ``ZeroPointFlag.MISSING_INPUTS``).

    Examples
    --------
    >>> from astropy.table import Table
    >>> t = Table({"parallax": [1.0, float("nan")], "parallax_error": [0.1, 0.1],
    ...            "parallax_corrected": [float("nan"), float("nan")]})
    >>> parallax_without_zero_point(t, corrected_parallax(t, None, step="doc")[0]).tolist()
    [True, False]
    """
    if "parallax" not in table.colnames:
        return np.zeros(len(corrected), dtype=bool)
    return np.isfinite(column_values(table, "parallax", u.mas)) & ~np.isfinite(np.asarray(corrected, dtype=float))


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


#: Folder of the package: frames under it are skipped when a warning names the user's line.
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn(message: str) -> None:
    """Issue a :class:`GaiaDistancesWarning` attributed to the first caller outside the package.

    The stack is walked past every ``gaia_distances`` frame, so the warning
    names the user's line however deep in the package it was raised.
    """
    frame = sys._getframe(1)
    level = 2  # 1 is this function, 2 its caller
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    warnings.warn(message, GaiaDistancesWarning, stacklevel=level)
