"""Honest parallax uncertainties at the table edge: correlated systematics and error inflation.

Gaia's parallax errors are underestimated and, for stars close on the sky,
correlated. This module turns user options into the pure pieces of
:mod:`gaia_distances.core.systematics` and :mod:`gaia_distances.core.inflation`:

- :func:`resolve_systematics`: a kernel name (``"lindegren2021"``,
  ``"vasiliev2021"``, ``"maiz-apellaniz2021"``) or callable -> kernel;
- :func:`field_offset_variance`: the prior variance of a field's shared
  parallax offset, from the table's positions (and G);
- :func:`parallax_error_inflation`: inflated ``parallax_error`` per row, with
  the rows it could not be applied to;
- :func:`resolve_offset_prior` and :func:`systematics_record`: the optional
  prior on the offset's mean and the provenance record for ``table.meta``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from astropy import units as u
from astropy.table import Table

from gaia_distances.columns import column_values, find_column, warn
from gaia_distances.core.inflation import (
    CALIBRATED_G_RANGE,
    INFLATION_RECIPES,
    checked_factor,
    inflate_parallax_error,
)
from gaia_distances.core.kernel_checks import check_kernel
from gaia_distances.core.systematics import (
    OFFSET_PRIORS,
    SYSTEMATICS_KERNELS,
    OffsetPrior,
    OffsetVariance,
    SystematicsKernel,
    get_kernel,
    shared_offset_variance,
)
from gaia_distances.io import as_table

__all__ = [
    "ParallaxErrorInflation",
    "SystematicsSpec",
    "field_offset_variance",
    "parallax_error_inflation",
    "resolve_offset_prior",
    "resolve_systematics",
    "systematics_record",
]

#: What a ``parallax_systematics`` option accepts.
SystematicsSpec = str | Callable[[np.ndarray], np.ndarray] | SystematicsKernel | None


def resolve_systematics(spec: SystematicsSpec | bool) -> SystematicsKernel | None:
    """The systematics kernel an option names, or ``None`` for no correlated systematics.

    Parameters
    ----------
    spec
        ``None``, ``False`` or ``"none"``: none. A name from
        :data:`~gaia_distances.core.systematics.SYSTEMATICS_KERNELS`
        (case-insensitive), a :class:`~gaia_distances.core.systematics.SystematicsKernel`
        or a callable ``V(theta_deg) -> mas^2`` (not assumed positive
        semi-definite). A callable may return one number for a constant
        kernel; it is broadcast to the separations.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the valid ones), or a kernel
        whose values on separations from 0 to 180 deg are not those of a
        covariance: not one finite number per separation, ``V(0) <= 0``, or
        ``|V(theta)| > V(0)``
        (:func:`~gaia_distances.core.kernel_checks.check_kernel`; the message
        names the kernel and the separations).

    Examples
    --------
    >>> resolve_systematics("vasiliev2021").name, resolve_systematics(None)
    ('vasiliev2021', None)
    """
    if spec is None or spec is False or (isinstance(spec, str) and spec.strip().lower() == "none"):
        return None
    if spec is True:
        valid = ", ".join(repr(k) for k in SYSTEMATICS_KERNELS)
        raise ValueError(f"parallax_systematics=True is ambiguous; name a kernel: {valid}")
    try:
        kernel = get_kernel(spec)
    except TypeError as err:
        raise ValueError(str(err)) from None
    check_kernel(kernel)
    return kernel


def resolve_offset_prior(spec: str | OffsetPrior | tuple[float, float] | None) -> OffsetPrior | None:
    """An optional Gaussian prior on a field's parallax offset mean (mas).

    ``None`` (the default everywhere): zero mean. ``"vasiliev2021"``: the
    residual +0.010 +- 0.003 mas that Vasiliev & Baumgardt (2021) find in
    parallaxes of G > 13 stars after the Lindegren et al. (2021) zero point
    (offset = corrected parallax - true parallax). A ``(mean, sigma)`` pair in
    mas gives a prior of one's own.

    Examples
    --------
    >>> resolve_offset_prior("vasiliev2021").mean
    0.01
    """
    if spec is None or isinstance(spec, OffsetPrior):
        return spec
    valid = ", ".join(repr(k) for k in OFFSET_PRIORS)
    expected = f"{valid}, a (mean, sigma) pair in mas or None"
    if isinstance(spec, str):
        prior = OFFSET_PRIORS.get(spec.strip().lower())
        if prior is None:
            raise ValueError(f"parallax_offset_prior must be {expected}; got {spec!r}")
        return prior
    try:
        mean, sigma = (float(x) for x in spec)
    except (TypeError, ValueError):  # not a pair, or not numbers
        raise ValueError(f"parallax_offset_prior must be {expected}; got {spec!r}") from None
    if not (np.isfinite(mean) and np.isfinite(sigma) and sigma > 0):
        raise ValueError(f"parallax_offset_prior (mean, sigma) needs finite values and sigma > 0; got {spec!r}")
    return OffsetPrior(mean, sigma, -np.inf, "user")


def field_offset_variance(
    table: Any, systematics: SystematicsSpec, *, max_exact: int = 4000, seed: int = 0
) -> OffsetVariance | None:
    """Prior variance of the shared parallax offset of the stars in ``table`` (``None`` without systematics).

    Reads ``ra`` and ``dec`` (deg) and, for a kernel with a magnitude scaling,
    ``phot_g_mean_mag`` when present. See
    :func:`~gaia_distances.core.systematics.shared_offset_variance`.

    Examples
    --------
    >>> t = Table({"ra": [10.0, 10.0], "dec": [0.0, 16.0]})
    >>> round(field_offset_variance(t, "lindegren2021").variance * 1e6, 3)
    52.239
    """
    kernel = resolve_systematics(systematics)
    if kernel is None:
        return None
    tbl = table if isinstance(table, Table) else as_table(table)
    step = "the parallax systematics (field_offset_variance)"
    ra = column_values(tbl, find_column(tbl, "ra", step=step), u.deg)
    dec = column_values(tbl, find_column(tbl, "dec", step=step), u.deg)
    g = None
    if kernel.magnitude_scaling and any(c.lower() == "phot_g_mean_mag" for c in tbl.colnames):
        g = column_values(tbl, find_column(tbl, "phot_g_mean_mag", step=step), u.mag)
    return shared_offset_variance(ra, dec, kernel, g, max_exact=max_exact, seed=seed)


class ParallaxErrorInflation(NamedTuple):
    """Result of :func:`parallax_error_inflation`.

    Attributes
    ----------
    error
        Inflated parallax errors, a Quantity in mas, one per row, in order (NaN where not applied).
    not_applied
        True for rows with no G, where a G-dependent recipe could not be applied.
    record
        The provenance of the inflation, for ``table.meta``.
    uncalibrated
        True for rows where a named recipe was applied outside its calibration
        (G outside its range, or an unknown solution type for
        ``"maiz-apellaniz2022"``); their error is as computed.
    """

    error: u.Quantity
    not_applied: np.ndarray
    record: dict[str, Any]
    uncalibrated: np.ndarray


def parallax_error_inflation(
    table: Any, recipe: str | float | None, *, include_floor: bool = True
) -> ParallaxErrorInflation:
    """Inflated ``parallax_error`` of every row of ``table``.

    Parameters
    ----------
    table
        A Table (any column-name case) or anything :func:`~gaia_distances.load_table`
        accepts, with ``parallax_error`` and, for a named recipe,
        ``phot_g_mean_mag``; ``astrometric_params_solved`` (95 = 6-parameter,
        31 = 5-parameter) is used by ``"maiz-apellaniz2022"``: a row without
        one (the column absent, masked, or another value) is taken as a
        5-parameter solution and counted as uncalibrated. The table is not modified.
    recipe
        ``"el-badry2021"`` (El-Badry, Rix & Heintz 2021),
        ``"maiz-apellaniz2022"`` (Maiz Apellaniz 2022), a plain factor or
        ``None`` (unchanged); see
        :func:`~gaia_distances.core.inflation.inflate_parallax_error`.
    include_floor
        Maiz Apellaniz only: add its 10.3 uas floor in quadrature. Use
        ``False`` together with a latent shared parallax offset
        (``parallax_systematics``), which already carries that covariance.

    Returns
    -------
    ParallaxErrorInflation
        Rows with no G get a NaN error and ``not_applied`` True (a warning
        counts them): flag them. Rows outside the recipe's calibration (G
        outside :data:`~gaia_distances.core.inflation.CALIBRATED_G_RANGE`, or
        no solution type for ``"maiz-apellaniz2022"``) get ``uncalibrated``
        True (one warning counts them): flag them too.

    Examples
    --------
    >>> t = Table({"parallax_error": [0.1, 0.1], "phot_g_mean_mag": [12.65, float("nan")]})
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")  # the warning counts the row with no G
    ...     out = parallax_error_inflation(t, "el-badry2021")
    >>> round(float(out.error[0].to_value("mas")), 4), out.not_applied.tolist()
    (0.1302, [False, True])
    """
    name = _recipe_record(recipe)
    tbl = table if isinstance(table, Table) else as_table(table)
    step = f"parallax error inflation {name!r}"
    sigma = column_values(tbl, find_column(tbl, "parallax_error", step=step), u.mas)
    named = isinstance(name, str)
    g = column_values(tbl, find_column(tbl, "phot_g_mean_mag", step=step), u.mag) if named else None
    six = _six_parameter(tbl) if name == "maiz-apellaniz2022" else None
    out = inflate_parallax_error(sigma, g, name, six_parameter=six, include_floor=include_floor)
    n_missing = int(out.not_applied.sum())
    if n_missing:
        warn(
            f"parallax error inflation {name!r}: {n_missing} of {len(sigma)} rows have no phot_g_mean_mag; "
            "their inflated parallax_error is NaN and they are flagged as not inflated"
        )
    record: dict[str, Any] = {"recipe": name, "n_not_applied": n_missing}
    if named:
        record["n_uncalibrated"] = _warn_uncalibrated(str(name), g, six, out.uncalibrated)
    if name == "maiz-apellaniz2022":
        record["include_floor"] = bool(include_floor)
    return ParallaxErrorInflation(u.Quantity(out.error, u.mas), out.not_applied, record, out.uncalibrated)


def _six_parameter(tbl: Table) -> np.ndarray | None:
    """Per row: 1.0 for a 6-parameter solution (``astrometric_params_solved`` 95), 0.0 for a 5-parameter one (31),
    NaN where unknown (masked or another value); ``None`` when the table has no such column."""
    sol = [c for c in tbl.colnames if c.lower() == "astrometric_params_solved"]
    if not sol:
        return None
    code = column_values(tbl, sol[0])
    return np.where(code == 95, 1.0, np.where(code == 31, 0.0, np.nan))


def _warn_uncalibrated(name: str, g: np.ndarray | None, six: np.ndarray | None, uncalibrated: np.ndarray) -> int:
    """Warn once, with the count and its causes, about the rows a recipe was applied to outside its calibration."""
    n_bad = int(uncalibrated.sum())
    if not n_bad:
        return 0
    lo, hi = CALIBRATED_G_RANGE[name]
    g_out = int(np.sum(uncalibrated & ((g < lo) | (g > hi)))) if g is not None else 0
    causes = [f"{g_out} with G outside its calibrated {lo:g}-{hi:g} mag"] if g_out else []
    if name == "maiz-apellaniz2022":
        n_sol = int(np.sum(uncalibrated & (np.isnan(six) if six is not None else True)))
        if n_sol:
            where = "no astrometric_params_solved column" if six is None else "no astrometric_params_solved 31 or 95"
            causes.append(f"{n_sol} with {where}, taken as 5-parameter solutions")
    warn(
        f"parallax error inflation {name!r}: {n_bad} of {uncalibrated.size} rows are outside its calibration "
        f"({'; '.join(causes)}); their inflated errors are extrapolations, flagged INFLATION_UNCALIBRATED"
    )
    return n_bad


def _recipe_record(recipe: str | float | None) -> str | float | None:
    """The recipe option, checked and normalised: a known name, a factor > 0 or None."""
    if recipe is None:
        return None
    if isinstance(recipe, str):
        name = recipe.strip().lower()
        if name not in INFLATION_RECIPES:
            valid = ", ".join(repr(r) for r in INFLATION_RECIPES)
            raise ValueError(f"unknown parallax error inflation {recipe!r}; valid: {valid}, a factor > 0 or None")
        return name
    return checked_factor(recipe)


def systematics_record(
    systematics: SystematicsSpec,
    *,
    offset_variance: OffsetVariance | None = None,
    inflation: str | float | None = None,
    include_floor: bool = True,
    offset_prior: str | OffsetPrior | tuple[float, float] | None = None,
) -> dict[str, Any]:
    """The provenance of a fit's systematics options, JSON-ready, for ``table.meta["gaia_distances"]``.

    Warns when a latent shared offset (``systematics``) and the Maiz Apellaniz
    (2022) floor (``include_floor=True``) are used together: both hold the
    zero-separation covariance, which is then counted twice.

    Examples
    --------
    >>> rec = systematics_record("lindegren2021", inflation="el-badry2021")
    >>> rec["parallax_systematics"], rec["parallax_error_inflation"]
    ('lindegren2021', 'el-badry2021')
    """
    kernel = resolve_systematics(systematics)
    prior = resolve_offset_prior(offset_prior)
    recipe = _recipe_record(inflation)
    floor = recipe == "maiz-apellaniz2022" and include_floor
    if kernel is not None and floor:
        warn(
            "parallax_systematics and the 'maiz-apellaniz2022' inflation floor both hold the covariance at zero "
            "separation: it is counted twice. Pass include_floor=False with a latent parallax offset."
        )
    record: dict[str, Any] = {
        "parallax_systematics": None if kernel is None else kernel.name,
        "parallax_systematics_reference": None if kernel is None else kernel.reference,
        "parallax_error_inflation": recipe,
        "inflation_floor": bool(floor) if recipe == "maiz-apellaniz2022" else None,
        "offset_prior": None if prior is None else {"mean_mas": prior.mean, "sigma_mas": prior.sigma},
    }
    if prior is not None:
        record["offset_prior"].update(g_min=None if not np.isfinite(prior.g_min) else prior.g_min, ref=prior.reference)
    if offset_variance is not None:
        record.update(
            shared_offset_variance_mas2=float(offset_variance.variance),
            shared_offset_sigma_mas=float(offset_variance.sigma),
            shared_offset_exact=bool(offset_variance.exact),
            shared_offset_pairs=int(offset_variance.n_pairs),
        )
    return record
