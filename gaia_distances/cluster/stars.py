"""The rows a cluster fit uses: selection from the table, flags, and the per-star columns written back."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from astropy import units as u
from astropy.table import QTable

from gaia_distances.cluster.flags import ClusterFlag
from gaia_distances.cluster.frozen import read_only
from gaia_distances.cluster.term_columns import TermOptions, term_columns
from gaia_distances.columns import (
    add_column,
    column_values,
    corrected_parallax,
    distance_column_names,
    refuse_existing_columns,
    sky_positions,
    warn,
)
from gaia_distances.core.astrometry import MAX_TANGENTIAL_SPEED_KMS, least_tangential_speed
from gaia_distances.core.kinematics import KinematicData, prepare_kinematic_data, usable_proper_motion
from gaia_distances.core.likelihood import StarData, prepare_star_data
from gaia_distances.core.numerics import ONE_SIGMA_QUANTILES
from gaia_distances.core.population import ClusterModel
from gaia_distances.errors import GaiaDistancesError, MissingColumnsError, TooFewStarsError
from gaia_distances.io import as_table

__all__ = [
    "CLUSTER_DISTANCE_COLUMNS",
    "ParallaxCandidates",
    "MIN_STARS",
    "PM_COLUMNS",
    "PM_CORRELATIONS",
    "STAR_COLUMNS",
    "FittedStars",
    "ProperMotionRows",
    "finish_selection",
    "kinematic_data",
    "parallax_rows",
    "pm_columns_present",
    "prepare_data",
    "proper_motion_rows",
    "refuse_star_columns",
    "Selection",
    "resolve_kinematics",
    "select_stars",
    "usable_count_text",
    "usable_proper_motions",
    "write_star_columns",
]

#: Fewest usable stars a fit accepts.
MIN_STARS = 20
#: The cluster-model distance columns -> index into ONE_SIGMA_QUANTILES.
CLUSTER_DISTANCE_COLUMNS = distance_column_names("cluster_distance").quantiles


#: The columns a kinematic fit needs, and the correlations it reads when present (0 otherwise).
PM_COLUMNS = ("pmra", "pmdec", "pmra_error", "pmdec_error")
PM_CORRELATIONS = ("parallax_pmra_corr", "parallax_pmdec_corr", "pmra_pmdec_corr")


class FittedStars(NamedTuple):
    """The stars a fit used, in table order (read-only arrays, mas).

    ``rows`` are their row indices in the fit's table.
    """

    rows: np.ndarray
    parallax: np.ndarray  # zero-point corrected
    parallax_error: np.ndarray
    zero_point: np.ndarray  # catalogue parallax - corrected parallax (0 without a catalogue parallax)
    pmra: np.ndarray | None = None  # mas/yr (kinematic fits; NaN: no proper motion)
    pmdec: np.ndarray | None = None
    pmra_error: np.ndarray | None = None
    pmdec_error: np.ndarray | None = None
    parallax_pmra_corr: np.ndarray | None = None  # 0 where the table has none
    parallax_pmdec_corr: np.ndarray | None = None
    pmra_pmdec_corr: np.ndarray | None = None
    limit_lo: np.ndarray | None = None  # the parallax cut in corrected parallax (mas), when modelled
    limit_hi: np.ndarray | None = None
    ra: np.ndarray | None = None  # deg: turn the proper motions to the field centre's frame, and project
    dec: np.ndarray | None = None
    frame_only: bool = False  # ra, dec only turn the proper motions (no perspective projection)
    terms: Any = None  # the model terms' columns, by term name (cluster/term_columns.py)

    @property
    def term_names(self) -> tuple[str, ...]:
        """The model terms the stars carry the columns of."""
        return tuple(self.terms or ())

    @property
    def kinematic(self) -> bool:
        """Whether the stars carry proper motions (a kinematic fit)."""
        return self.pmra is not None

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


def resolve_kinematics(
    table: Any, kinematics: bool | str, *, step: str = "fit_cluster", usable: np.ndarray | None = None
) -> bool:
    """Whether a fit uses proper motions: ``kinematics`` is ``True``, ``False`` or ``"auto"``.

    ``True`` with a column of :data:`PM_COLUMNS` missing raises
    :class:`~gaia_distances.MissingColumnsError` naming them, and with fewer
    than :data:`MIN_STARS` usable proper motions among the rows to fit
    raises :class:`~gaia_distances.GaiaDistancesError`. ``"auto"`` uses
    proper motions when all the columns are present and at least
    :data:`MIN_STARS` of those rows have a usable one; else it fits the
    parallaxes alone, and warns when the table has proper motions that it
    cannot use (no errors, or too few usable rows). ``usable`` says which
    rows to fit have a usable proper motion (:func:`proper_motion_rows`;
    default: :func:`usable_proper_motions` over every row).
    """
    if not pm_columns_present(table, kinematics, step=step):
        return False
    if usable is None:
        usable = usable_proper_motions(table)
    n_usable, n_rows = int(np.sum(usable)), int(np.size(usable))
    if n_usable >= MIN_STARS:
        return True
    if kinematics is True:
        raise TooFewStarsError(
            f"{step}(kinematics=True) needs at least {MIN_STARS} stars with proper motions: "
            f"{usable_count_text(n_usable, n_rows)}"
        )
    warn(f"{step}: {usable_count_text(n_usable, n_rows)}; fitting the parallaxes alone (kinematics=False)")
    return False


def pm_columns_present(table: Any, kinematics: bool | str, *, step: str) -> bool:
    """Whether ``kinematics`` (checked) may use proper motions: False for ``False``, or ``"auto"`` without them.

    ``True`` with a column of :data:`PM_COLUMNS` missing raises
    :class:`~gaia_distances.MissingColumnsError`; ``"auto"`` warns when the
    table has proper motions but not their errors.
    """
    if not any(kinematics is k for k in (True, False)) and kinematics != "auto":
        raise ValueError(f"kinematics must be True, False or 'auto'; got {kinematics!r}")
    missing = [c for c in PM_COLUMNS if c not in table.colnames]
    if kinematics is True and missing:
        raise MissingColumnsError(f"{step}(kinematics=True) needs the columns {', '.join(missing)}")
    if kinematics == "auto" and missing:
        if any(c in table.colnames for c in ("pmra", "pmdec")):
            warn(
                f"{step}: the table has proper motions but not {', '.join(missing)}; "
                "fitting the parallaxes alone (kinematics=False)"
            )
        return False
    return kinematics is not False


def usable_count_text(n_usable: int, n_rows: int) -> str:
    """How many of the rows to fit have a usable proper motion, and what usable means."""
    return (
        f"{n_usable} of {n_rows} rows to fit have a usable proper motion (finite pmra and pmdec, finite and "
        "positive pmra_error and pmdec_error, correlations in [-1, 1], a speed a star can have, and a finite "
        "ra/dec where other stars have one)"
    )


def usable_proper_motions(table: Any) -> np.ndarray:
    """Rows whose proper motion's values are usable (:func:`~gaia_distances.core.kinematics.usable_proper_motion`).

    Finite ``pmra`` and ``pmdec``, finite and positive ``pmra_error`` and
    ``pmdec_error``, and the correlations of :data:`PM_CORRELATIONS` that the
    table has in [-1, 1]. A fit also needs the speed to be possible and the
    star to have a position where the others have one (:func:`proper_motion_rows`).
    """
    pmra, pmdec, pmra_error, pmdec_error = (column_values(table, c, u.mas / u.yr) for c in PM_COLUMNS)
    corr = [column_values(table, c) for c in PM_CORRELATIONS if c in table.colnames]
    return usable_proper_motion(pmra, pmdec, pmra_error, pmdec_error, corr)


class ProperMotionRows(NamedTuple):
    """Per row of a table, which proper motions a kinematic fit can use (boolean masks).

    ``impossible``: among the rows with a usable parallax, a finite proper
    motion at a speed no star can have (not fitted at all); ``unplaced``: among the rows to fit, no finite
    ``ra``/``dec`` while other rows to fit have one (the frame cannot place
    them); ``usable``: rows to fit whose proper motion is used.
    """

    usable: np.ndarray
    values: np.ndarray
    impossible: np.ndarray
    unplaced: np.ndarray


def proper_motion_rows(cand: ParallaxCandidates) -> ProperMotionRows:
    """:class:`ProperMotionRows` of ``cand``'s table (which has every column of :data:`PM_COLUMNS`)."""
    out = cand.table
    pmra, pmdec = (column_values(out, c, u.mas / u.yr) for c in ("pmra", "pmdec"))
    with np.errstate(invalid="ignore"):
        speed = least_tangential_speed(pmra, pmdec, cand.parallax, cand.parallax_error)
        impossible = (speed > MAX_TANGENTIAL_SPEED_KMS) & np.isfinite(pmra) & np.isfinite(pmdec) & (cand.flag == 0)
    fitted = (cand.flag == 0) & ~impossible
    unplaced = np.zeros(len(out), bool)
    pos = sky_positions(out)
    if pos is not None:
        placed = np.isfinite(pos[0]) & np.isfinite(pos[1])
        if np.any(placed & fitted):
            unplaced = fitted & ~placed
    values = usable_proper_motions(out)
    return ProperMotionRows(values & fitted & ~unplaced, values, impossible, unplaced)


def _proper_motions(
    out: QTable, used: np.ndarray, rows: ProperMotionRows, flag: np.ndarray, step: str
) -> dict[str, np.ndarray]:
    """The fitted rows' proper motions, errors and correlations; flags and warns for rows without a usable one."""
    cols = {c: column_values(out, c, u.mas / u.yr)[used] for c in PM_COLUMNS}
    absent = [c for c in PM_CORRELATIONS if c not in out.colnames]
    if absent:
        warn(f"{step}: no {', '.join(absent)} column; those correlations count as 0")
    for c in PM_CORRELATIONS:
        cols[c] = column_values(out, c)[used] if c in out.colnames else np.zeros(used.size)
        cols[c] = np.where(np.isfinite(cols[c]), cols[c], 0.0)
    finite = usable_proper_motion(*(cols[c] for c in PM_COLUMNS))
    bad_corr = finite & ~rows.values[used]
    if bad_corr.any():
        warn(
            f"{step}: {int(bad_corr.sum())} stars have a correlation ({', '.join(PM_CORRELATIONS)}) outside "
            f"[-1, 1], so no valid covariance: fitted with their parallax alone and flagged cluster_flag "
            f"{int(ClusterFlag.NO_PROPER_MOTION)}"
        )
    unplaced = rows.values[used] & rows.unplaced[used]
    if unplaced.any():
        warn(
            f"{step}: {int(unplaced.sum())} stars have no finite ra/dec, so their proper motions cannot be "
            f"turned to the field centre's frame: fitted with their parallax alone and flagged cluster_flag "
            f"{int(ClusterFlag.NO_PROPER_MOTION)}"
        )
    unusable = ~rows.usable[used]
    for c in ("pmra", "pmdec"):  # the fit's copy: no usable proper motion (the table keeps its values)
        cols[c] = np.where(unusable, np.nan, cols[c])
    flag[used[unusable]] |= ClusterFlag.NO_PROPER_MOTION
    return cols


def _flag_impossible_proper_motions(impossible: np.ndarray, flag: np.ndarray, step: str) -> None:
    """Flag (in place) the rows whose proper motion no star could have, with one warning.

    Such a proper motion (a spurious or duplicated source's) implies a
    tangential speed above :data:`~gaia_distances.core.astrometry.MAX_TANGENTIAL_SPEED_KMS`
    even at the nearest distance the star's parallax allows
    (:func:`~gaia_distances.core.astrometry.least_tangential_speed`); its
    parallax is no better, and one such star wrecks the field's
    proper-motion model, so the row is not fitted.
    """
    if impossible.any():
        warn(
            f"{step}: {int(impossible.sum())} stars have a proper motion no star could have (a tangential "
            f"speed above {MAX_TANGENTIAL_SPEED_KMS:g} km/s even at parallax + 3 sigma; spurious astrometric "
            f"solutions): not fitted, flagged cluster_flag {int(ClusterFlag.IMPOSSIBLE_PROPER_MOTION)}"
        )
    flag[impossible] |= ClusterFlag.IMPOSSIBLE_PROPER_MOTION


def _positions(out: QTable, used: np.ndarray, use_pm: bool, step: str) -> dict[str, np.ndarray]:
    """The fitted rows' ``ra`` and ``dec`` (deg), which the perspective projection needs."""
    if not use_pm:
        raise ValueError(f"{step}(perspective=True) projects the cluster's space velocity: it needs proper motions")
    pos_rows = sky_positions(out, used)
    if pos_rows is None:
        missing = [c for c in ("ra", "dec") if c not in out.colnames]
        raise MissingColumnsError(f"{step}(perspective=True) needs the columns {', '.join(missing)}")
    pos = dict(zip(("ra", "dec"), pos_rows))
    bad = ~(np.isfinite(pos["ra"]) & np.isfinite(pos["dec"]))
    if bad.any():
        raise GaiaDistancesError(
            f"{step}(perspective=True) needs a finite ra and dec for every fitted star; "
            f"{int(bad.sum())} have none (rows {', '.join(map(str, used[bad][:5]))}{', ...' if bad.sum() > 5 else ''})"
        )
    return pos


def _frame_positions(out: QTable, used: np.ndarray) -> dict[str, np.ndarray]:
    """The fitted rows' ``ra`` and ``dec`` (deg) that turn their proper-motion frames to the field centre's.

    Without the perspective projection a kinematic fit still needs them near
    a celestial pole, where the stars' (pmra, pmdec) axes turn with right
    ascension (:func:`~gaia_distances.core.kinematics.frame_rotation`). The
    centre comes from the stars with a finite position (NaN for the others,
    whose proper motions are not used, :func:`proper_motion_rows`). None
    when no fitted star has a position: far from the poles the turn is
    negligible.
    """
    pos = sky_positions(out, used)
    if pos is None or not np.any(np.isfinite(pos[0]) & np.isfinite(pos[1])):
        return {}
    return dict(zip(("ra", "dec"), pos))


class ParallaxCandidates(NamedTuple):
    """A copy of the input table, its corrected parallaxes and errors (mas), and the flags of the parallax cuts."""

    table: QTable
    parallax: np.ndarray
    parallax_error: np.ndarray
    catalogue_parallax: np.ndarray | None
    flag: np.ndarray
    zero_point_source: str
    parallax_limits: tuple[float, float] | None


def parallax_rows(
    table: Any, *, zero_point: Any = None, parallax_limits: tuple[float, float] | None = None, step: str = "fit_cluster"
) -> ParallaxCandidates:
    """The rows with a finite parallax and a positive error, inside ``parallax_limits`` (mas) if given.

    The limits apply to the catalogue ``parallax`` when the table has it, as
    in the reference cuts; the others are flagged (:class:`ClusterFlag`).
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
    return ParallaxCandidates(out, plx, err, raw, flag, zp_source, parallax_limits)


def select_stars(
    table: Any,
    *,
    zero_point: Any = None,
    parallax_limits: tuple[float, float] | None = None,
    kinematics: bool | str = False,
    truncate: bool = True,
    perspective: bool = False,
    terms: TermOptions = (),
    step: str = "fit_cluster",
) -> Selection:
    """The rows with a finite parallax and a positive error, inside ``parallax_limits`` (mas) if given.

    The limits apply to the catalogue ``parallax`` when the table has it, as
    in the reference cuts; with ``truncate`` the fitted stars carry them (in
    corrected parallax) so that the likelihood models the cut. Raises :class:`~gaia_distances.GaiaDistancesError`
    when fewer than :data:`MIN_STARS` qualify. With ``kinematics``
    (:func:`resolve_kinematics`, deciding from the rows to fit, after those
    with a proper motion no star could have are flagged) the stars carry
    their proper motions; a fitted star without a usable one
    (:func:`proper_motion_rows`) is flagged :attr:`ClusterFlag.NO_PROPER_MOTION`
    and fitted with its parallax alone. ``perspective`` (which needs the
    proper motions) also carries ``ra`` and ``dec``; ``terms`` (the model
    terms' options) the columns of the terms used
    (:func:`~gaia_distances.cluster.term_columns.term_columns`).
    """
    cand = parallax_rows(table, zero_point=zero_point, parallax_limits=parallax_limits, step=step)
    return finish_selection(
        cand, kinematics=kinematics, truncate=truncate, perspective=perspective, terms=terms, step=step
    )


def finish_selection(
    cand: ParallaxCandidates,
    *,
    kinematics: bool | str = False,
    truncate: bool = True,
    perspective: bool = False,
    terms: TermOptions = (),
    step: str = "fit_cluster",
) -> Selection:
    """:func:`select_stars` from the rows of :func:`parallax_rows`."""
    out, flag = cand.table, cand.flag.copy()
    rows = proper_motion_rows(cand) if pm_columns_present(out, kinematics, step=step) else None
    use_pm = rows is not None and resolve_kinematics(out, kinematics, step=step, usable=rows.usable[flag == 0])
    if use_pm:
        assert rows is not None
        _flag_impossible_proper_motions(rows.impossible, flag, step)
    used = np.flatnonzero(flag == 0)
    if used.size < MIN_STARS:  # (a kinematic fit has MIN_STARS usable proper motions among them)
        raise TooFewStarsError(
            f"{step} needs at least {MIN_STARS} stars with a finite parallax and a positive error"
            f"{' inside parallax_limits' if cand.parallax_limits else ''}; {used.size} of {len(out)} qualify"
        )
    w, s = cand.parallax[used], cand.parallax_error[used]
    raw = cand.catalogue_parallax
    zp = raw[used] - w if raw is not None else np.zeros(used.size)
    zp = np.where(np.isfinite(zp), zp, 0.0)
    pm = _proper_motions(out, used, rows, flag, step) if use_pm and rows is not None else {}
    if perspective:
        pm.update(_positions(out, used, use_pm, step))
    elif use_pm:
        pm.update(_frame_positions(out, used))
    if cand.parallax_limits is not None and truncate:
        pm["limit_lo"] = np.full(used.size, float(cand.parallax_limits[0])) - zp
        pm["limit_hi"] = np.full(used.size, float(cand.parallax_limits[1])) - zp
    columns: dict[str, Any] = {k: read_only(v) for k, v in pm.items()}
    stars = FittedStars(read_only(used), read_only(w), read_only(s), read_only(zp), **columns)
    stars = stars._replace(frame_only=not perspective)
    columns_of_terms = term_columns(out, used, terms, kinematic=use_pm, step=step)
    if columns_of_terms:
        stars = stars._replace(terms=columns_of_terms)
    return Selection(out, flag, stars, cand.zero_point_source)


#: The per-star columns a cluster fit appends (:func:`write_star_columns`).
STAR_COLUMNS = ("membership_prob", *CLUSTER_DISTANCE_COLUMNS, "cluster_flag")


def refuse_star_columns(table: QTable, *, overwrite: bool, step: str) -> None:
    """Refuse a table that already has a column of :data:`STAR_COLUMNS`, unless ``overwrite``.

    Raises :class:`~gaia_distances.ExistingColumnsError` naming them; called
    before the fit, so that a user's own ``membership_prob`` is never replaced
    silently.
    """
    refuse_existing_columns(table.colnames, STAR_COLUMNS, overwrite=overwrite, step=step)


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


def kinematic_data(stars: FittedStars) -> KinematicData:
    """The conditional proper-motion error model of the fitted stars."""
    cols = (
        stars.parallax_error,
        stars.pmra,
        stars.pmdec,
        stars.pmra_error,
        stars.pmdec_error,
        stars.parallax_pmra_corr,
        stars.parallax_pmdec_corr,
        stars.pmra_pmdec_corr,
    )
    return prepare_kinematic_data(
        *(np.asarray(c, float) for c in cols), ra=stars.ra, dec=stars.dec, perspective=not stars.frame_only
    )


def prepare_data(stars: FittedStars, model: ClusterModel) -> StarData:
    """The likelihood's per-star data for ``model`` (its field, and the proper motions if kinematic)."""
    kin = kinematic_data(stars) if model.kinematics else None
    limits = None if stars.limit_lo is None or stars.limit_hi is None else (stars.limit_lo, stars.limit_hi)
    terms = {name: stars.terms[name] for name in model.terms}
    return prepare_star_data(
        stars.parallax, stars.parallax_error, field=model.field, kinematics=kin, limits=limits, terms=terms
    )
