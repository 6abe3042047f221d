"""Parallax zero points from the Lindegren et al. (2021) recipe.

The recipe itself comes from the ``gaiadr3-zeropoint`` package (module
``zero_point.zpt``). This module makes it safe on real tables: rows it cannot
handle (2-parameter solutions, missing inputs) are split off instead of making
the whole array raise, out-of-range rows are flagged, and nothing is dropped.

Sign convention: ``parallax_corrected = parallax - parallax_zeropoint``. The
Gaia DR3 zero point is mostly negative (about -0.02 mas), so corrected
parallaxes are mostly larger than the catalogue values.
"""

from __future__ import annotations

import enum
import logging
import warnings
from typing import Any

import numpy as np
from astropy import units as u
from astropy.table import QTable, Table

from gaia_distances.columns import (
    add_column,
    column_values,
    require_columns,
    update_provenance,
    warn,
)
from gaia_distances.io import as_table
from gaia_distances.progress import progress_bar

__all__ = ["ZeroPointFlag", "apply_zeropoint", "load_recipe", "nu_eff_from_bp_rp"]

log = logging.getLogger(__name__)

#: Bailer-Jones et al. (2021) used this global zero point (mas) where the
#: Lindegren et al. (2021) recipe is not defined.
BAILER_JONES_2021_FALLBACK = -0.017

_G_RANGE = (6.0, 21.0)
_CHUNK = 200_000  # rows per call of the recipe (one progress-bar step)
_NU_EFF_RANGE = (1.1, 1.9)
_PSEUDOCOLOUR_RANGE = (1.24, 1.72)


class ZeroPointFlag(enum.IntFlag):
    """Bits of the ``zeropoint_flag`` column (0 means the recipe applied cleanly)."""

    OK = 0
    #: G outside 6-21 mag: the recipe's value at the nearest edge is used
    EXTRAPOLATED_G = 1
    #: nu_eff (5p) outside 1.1-1.9 or pseudocolour (6p) outside 1.24-1.72 per micron:
    #: the recipe extrapolates and may be seriously wrong
    EXTRAPOLATED_COLOUR = 2
    #: a 2-parameter solution or no parallax: no zero point is defined
    NO_PARALLAX = 4
    #: G, colour, ecliptic latitude or solution type is missing
    MISSING_INPUTS = 8
    #: the global fallback value was used for this row
    FALLBACK = 16
    #: nu_eff was approximated from BP-RP (``approximate_missing=True``)
    APPROXIMATED = 32
    #: ``astrometric_params_solved`` was missing (an empty column in some archive
    #: outputs) and the solution type was inferred from the colour input present:
    #: ``nu_eff_used_in_astrometry`` alone -> 5-parameter (31), ``pseudocolour``
    #: alone -> 6-parameter (95), as in Gaia DR3
    INFERRED_SOLUTION = 64


def nu_eff_from_bp_rp(bp_rp: np.ndarray) -> np.ndarray:
    """Approximate ``nu_eff_used_in_astrometry`` (per micron) from BP-RP (mag).

    Lindegren et al. (2021, A&A 649, A2, eq. 3):
    ``nu_eff = 1.76 - (1.61 / pi) * arctan(0.531 * (BP - RP))``, clipped to
    the 1.24-1.72 per micron range used for the pseudocolour prior.

    Examples
    --------
    >>> round(float(nu_eff_from_bp_rp(0.82)), 3)
    1.55
    """
    c = np.asarray(bp_rp, dtype=float)
    return np.clip(1.76 - (1.61 / np.pi) * np.arctan(0.531 * c), 1.24, 1.72)


def load_recipe() -> Any:
    """The gaiadr3-zeropoint ``zpt`` module with its coefficient tables loaded (once)."""
    from zero_point import zpt

    if getattr(zpt, "j_5", None) is None:
        zpt.load_tables()
    return zpt


def apply_zeropoint(
    table: Any,
    *,
    fallback: float | None = None,
    approximate_missing: bool = False,
    progress: bool | None = None,
) -> QTable:
    """Add Lindegren et al. (2021) parallax zero points to a Gaia table.

    Parameters
    ----------
    table
        Anything :func:`~gaia_distances.load_table` accepts. Needs ``parallax``,
        ``phot_g_mean_mag``, ``nu_eff_used_in_astrometry``, ``pseudocolour``
        and ``ecl_lat`` (computed from ``ra``, ``dec`` when absent).
        ``astrometric_params_solved`` gives the solution type; where it is
        missing (the column absent or empty, as in some archive outputs) the
        type is inferred from which colour input the row has, as in Gaia DR3:
        ``nu_eff_used_in_astrometry`` alone -> 5-parameter (31),
        ``pseudocolour`` alone -> 6-parameter (95). Such rows are flagged
        ``INFERRED_SOLUTION`` and a warning says how many.
    fallback
        Zero point (mas) for rows with a parallax that the recipe cannot handle
        (missing inputs). ``None`` (default) leaves them NaN. Bailer-Jones et
        al. (2021) used ``-0.017``
        (:data:`BAILER_JONES_2021_FALLBACK`).
    approximate_missing
        When nu_eff is missing (column absent or NaN) but ``bp_rp`` is known,
        approximate it with :func:`nu_eff_from_bp_rp` and treat the row as a
        5-parameter solution if its solution type is unknown. Flagged
        ``APPROXIMATED``.
    progress
        Show a progress bar; default: for tables above 200 000 rows.

    Returns
    -------
    QTable
        A new table with ``parallax_zeropoint`` [mas], ``parallax_corrected``
        = parallax - zero point [mas] and ``zeropoint_flag``
        (:class:`ZeroPointFlag` bits). The input is not modified. No parallax
        is dropped: a row with a parallax whose zero point cannot be computed
        gets ``fallback`` (flagged ``FALLBACK``) or, by default, a NaN zero
        point and corrected parallax, flagged ``MISSING_INPUTS``, with a
        warning; its ``parallax`` is kept.

    Examples
    --------
    >>> from astropy.table import Table
    >>> t = apply_zeropoint(Table({"parallax": [1.0], "phot_g_mean_mag": [15.0],
    ...     "nu_eff_used_in_astrometry": [1.5], "pseudocolour": [float("nan")],
    ...     "ecl_lat": [20.0], "astrometric_params_solved": [31]}))
    >>> round(float(t["parallax_zeropoint"][0].value), 4), int(t["zeropoint_flag"][0])
    (-0.0399, 0)
    """
    out = as_table(table)
    n = len(out)
    require_columns(out, ["parallax", "phot_g_mean_mag"], step="apply_zeropoint")
    if "ecl_lat" not in out.colnames:
        require_columns(out, ["ra", "dec"], step="apply_zeropoint (ecl_lat or ra/dec)")
        add_column(
            out, "ecl_lat", _ecliptic_latitude(out), unit=u.deg, description="Ecliptic latitude computed from ra, dec"
        )
    if not approximate_missing:
        require_columns(out, ["nu_eff_used_in_astrometry", "pseudocolour"], step="apply_zeropoint")

    plx = column_values(out, "parallax", u.mas)
    g = column_values(out, "phot_g_mean_mag", u.mag)
    beta = column_values(out, "ecl_lat", u.deg)
    nan = np.full(n, np.nan)
    nu = column_values(out, "nu_eff_used_in_astrometry") if "nu_eff_used_in_astrometry" in out.colnames else nan.copy()
    pc = column_values(out, "pseudocolour") if "pseudocolour" in out.colnames else nan.copy()
    sol = column_values(out, "astrometric_params_solved") if "astrometric_params_solved" in out.colnames else nan.copy()

    flag = np.zeros(n, dtype=np.int32)
    inferred = _infer_solution_type(sol, nu, pc, np.isfinite(plx))
    flag[inferred] |= ZeroPointFlag.INFERRED_SOLUTION
    if np.any(inferred):
        warn(
            f"{int(np.sum(inferred))} of {n} rows have no astrometric_params_solved; their solution type "
            "was inferred from the colour input present (nu_eff_used_in_astrometry -> 5-parameter, "
            "pseudocolour -> 6-parameter) and flagged (zeropoint_flag bit 64)."
        )

    if approximate_missing:
        need = ~np.isfinite(nu) & ~(sol == 95)
        if "bp_rp" in out.colnames:
            approx = nu_eff_from_bp_rp(column_values(out, "bp_rp"))
            use = need & np.isfinite(approx)
            nu[use] = approx[use]
            sol[use & ~np.isfinite(sol)] = 31
            flag[use] |= ZeroPointFlag.APPROXIMATED

    no_plx = ~np.isfinite(plx) | (sol == 3)
    five = (sol == 31) & np.isfinite(nu)
    six = (sol == 95) & np.isfinite(pc)
    ok_inputs = (five | six) & np.isfinite(g) & np.isfinite(beta) & ~no_plx
    missing = ~no_plx & ~ok_inputs
    flag[no_plx] |= ZeroPointFlag.NO_PARALLAX
    flag[missing] |= ZeroPointFlag.MISSING_INPUTS

    zp = np.full(n, np.nan)
    idx = np.flatnonzero(ok_inputs)
    if idx.size:
        recipe = load_recipe()
        with progress_bar(idx.size, progress, "zero points") as update, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for start in range(0, idx.size, _CHUNK):
                j = idx[start : start + _CHUNK]
                zp[j] = recipe.get_zpt(g[j], nu[j], pc[j], beta[j], sol[j].astype(int), _warnings=True)
                if update is not None:
                    update(j.size)
        g_out = ok_inputs & ((g <= _G_RANGE[0]) | (g >= _G_RANGE[1]))
        col_out = ok_inputs & (
            (five & ((nu <= _NU_EFF_RANGE[0]) | (nu >= _NU_EFF_RANGE[1])))
            | (six & ((pc <= _PSEUDOCOLOUR_RANGE[0]) | (pc >= _PSEUDOCOLOUR_RANGE[1])))
        )
        flag[g_out] |= ZeroPointFlag.EXTRAPOLATED_G
        flag[col_out] |= ZeroPointFlag.EXTRAPOLATED_COLOUR
        nout = int(np.sum(g_out | col_out))
        if nout:
            warn(
                f"{nout} of {n} rows have G or colour outside the calibrated range of "
                "the Lindegren et al. (2021) recipe; their zero points are extrapolated "
                "and flagged (zeropoint_flag bits 1, 2)."
            )
    if fallback is not None:
        fb = missing
        zp[fb] = float(fallback)
        flag[fb] |= ZeroPointFlag.FALLBACK
    elif np.any(missing):
        warn(
            f"{int(np.sum(missing))} of {n} rows lack inputs for the zero-point recipe; "
            "their parallax_zeropoint is NaN. Pass fallback=-0.017 (the Bailer-Jones "
            "et al. 2021 choice) to use a global value instead."
        )

    add_column(
        out,
        "parallax_zeropoint",
        zp,
        unit=u.mas,
        description="Lindegren et al. (2021) parallax zero point (parallax_corrected = parallax - zero point)",
    )
    add_column(out, "parallax_corrected", plx - zp, unit=u.mas, description="Parallax minus its zero point")
    add_column(out, "zeropoint_flag", flag, description="ZeroPointFlag bits; 0 = recipe applied cleanly")
    update_provenance(
        out,
        "zeropoint",
        {
            "recipe": "Lindegren et al. 2021 (gaiadr3-zeropoint)",
            "fallback_mas": fallback,
            "approximate_missing": approximate_missing,
            "n_inferred_solution": int(np.sum(inferred)),
            "n_ok": int(np.sum(flag == 0)),
            "n_flagged": int(np.sum(flag != 0)),
        },
    )
    return out


def _infer_solution_type(sol: np.ndarray, nu: np.ndarray, pc: np.ndarray, has_parallax: np.ndarray) -> np.ndarray:
    """Set ``sol`` (in place) where it is missing, from the one colour input present; return the rows set.

    In Gaia DR3 a 5-parameter solution (31) has ``nu_eff_used_in_astrometry``
    and no ``pseudocolour``, a 6-parameter solution (95) the reverse. Rows with
    both or neither, or no parallax, are left missing.
    """
    missing = ~np.isfinite(sol) & has_parallax
    five = missing & np.isfinite(nu) & ~np.isfinite(pc)
    six = missing & np.isfinite(pc) & ~np.isfinite(nu)
    sol[five] = 31
    sol[six] = 95
    return five | six


def _ecliptic_latitude(table: Table) -> np.ndarray:
    from astropy.coordinates import BarycentricTrueEcliptic, SkyCoord

    ra = column_values(table, "ra", u.deg)
    dec = column_values(table, "dec", u.deg)
    good = np.isfinite(ra) & np.isfinite(dec)
    lat = np.full(len(ra), np.nan)
    if np.any(good):
        c = SkyCoord(ra[good] * u.deg, dec[good] * u.deg, frame="icrs")
        lat[good] = c.transform_to(BarycentricTrueEcliptic()).lat.deg
    return lat
