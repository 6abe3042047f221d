"""Inflation of Gaia (E)DR3 parallax uncertainties, which are underestimated (pure NumPy).

Two published recipes, both functions of the G magnitude:

- El-Badry, Rix & Heintz (2021, MNRAS 506, 2269), eq. 16, from wide binaries:
  ``sigma' = f(G) sigma`` with
  ``f(G) = 0.21 exp(-(G - 12.65)^2 / 0.90^2) - 0.00062 G^2 + 0.0040 G + 1.141``,
  clipped at 1 (past G ~ 18.6, where the paper finds the errors reliable).
  Fitted for isolated sources with well-behaved astrometry; it does not
  depend on the solution type.
- Maiz Apellaniz (2022, A&A 657, A130), from globular clusters and the LMC:
  ``sigma_ext = sqrt((k sigma)^2 + sigma_s^2)``, ``sigma_s`` = 10.3 uas, with
  ``k(G)`` interpolated in a table and multiplied by 1.25 for 6-parameter
  solutions. ``sigma_s`` is the angular covariance at zero separation: a model
  with a latent shared parallax offset
  (:func:`~gaia_distances.core.systematics.shared_offset_variance`) already
  holds it and must use ``include_floor=False``, so as not to count it twice.

Each recipe holds over the G range it was calibrated on
(:data:`CALIBRATED_G_RANGE`); outside it (and, for Maiz Apellaniz, for a
star whose solution type is unknown) the factor is an extrapolation, and
:func:`inflate_parallax_error` marks the row ``uncalibrated``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "CALIBRATED_G_RANGE",
    "INFLATION_RECIPES",
    "MAIZ_APELLANIZ_2022_FLOOR",
    "MAIZ_APELLANIZ_2022_G",
    "MAIZ_APELLANIZ_2022_K",
    "InflatedErrors",
    "checked_factor",
    "f_el_badry_2021",
    "inflate_parallax_error",
    "k_maiz_apellaniz_2022",
    "unknown_solution_type",
]

#: The named recipes of :func:`inflate_parallax_error`.
INFLATION_RECIPES = ("el-badry2021", "maiz-apellaniz2022")

#: Maiz Apellaniz (2022): the systematic floor sigma_s (mas), sqrt of the zero-separation covariance.
MAIZ_APELLANIZ_2022_FLOOR = 0.0103
#: Maiz Apellaniz (2022): G (mag) of the k table ...
MAIZ_APELLANIZ_2022_G: tuple[float, ...] = (
    *(6.50, 7.50, 8.50, 9.50, 10.25, 10.75, 11.25, 11.75, 12.25, 12.75),
    *(13.25, 13.75, 14.25, 14.75, 15.25, 15.75, 16.25, 16.75, 17.25, 17.75),
)
#: ... and the factor k for 5-parameter solutions (times 1.25 for 6-parameter ones).
MAIZ_APELLANIZ_2022_K: tuple[float, ...] = (
    *(2.62, 2.38, 2.06, 1.66, 1.22, 1.41, 1.76, 1.76, 1.90, 1.92),
    *(1.61, 1.50, 1.39, 1.35, 1.24, 1.20, 1.19, 1.18, 1.18, 1.14),
)
_SIX_PARAMETER_K = 1.25
_G_CLAMP = (6.0, 18.0)

#: G (mag) over which each named recipe was calibrated, inclusive; outside it the factor is an
#: extrapolation. Maiz Apellaniz (2022): the span of its k table's bins (6-18). El-Badry et al.
#: (2021): the fit is to wide binaries from bright, well-measured stars to Gaia's faint limit (the
#: paper finds the errors reliable, f = 1, past G ~ 18), taken as 6-21.
CALIBRATED_G_RANGE: dict[str, tuple[float, float]] = {
    "el-badry2021": (6.0, 21.0),
    "maiz-apellaniz2022": _G_CLAMP,
}


def f_el_badry_2021(g: np.ndarray | float) -> np.ndarray:
    """El-Badry, Rix & Heintz (2021) eq. 16 inflation factor at G (mag), clipped at 1; NaN G gives NaN.

    Examples
    --------
    >>> f_el_badry_2021([12.65, 20.0]).round(4).tolist()
    [1.3024, 1.0]
    """
    g = np.asarray(g, dtype=float)
    f = 0.21 * np.exp(-(((g - 12.65) / 0.90) ** 2)) - 0.00062 * g**2 + 0.0040 * g + 1.141
    return np.where(np.isnan(f), np.nan, np.maximum(f, 1.0))


def k_maiz_apellaniz_2022(g: np.ndarray | float, six_parameter: np.ndarray | bool | None = None) -> np.ndarray:
    """Maiz Apellaniz (2022) factor k at G (mag); NaN G gives NaN.

    Linear in G between the tabulated points (:data:`MAIZ_APELLANIZ_2022_G`),
    with G clamped to 6-18: brighter than 6.5 or fainter than 17.75 it keeps
    the end value. ``six_parameter`` (bool, or one per star) multiplies k by
    1.25 for 6-parameter solutions; ``None`` or NaN (an unknown solution type)
    gives the 5-parameter k.

    Examples
    --------
    >>> k_maiz_apellaniz_2022([12.0, 25.0]).round(3).tolist()
    [1.83, 1.14]
    >>> float(k_maiz_apellaniz_2022(12.25, six_parameter=True))
    2.375
    """
    g = np.asarray(g, dtype=float)
    k = np.interp(np.clip(g, *_G_CLAMP), MAIZ_APELLANIZ_2022_G, MAIZ_APELLANIZ_2022_K)
    if six_parameter is not None:
        six = np.nan_to_num(np.asarray(six_parameter, dtype=float), nan=0.0) != 0
        k = np.where(six, _SIX_PARAMETER_K * k, k)
    return np.where(np.isnan(g), np.nan, k)


class InflatedErrors(NamedTuple):
    """Inflated parallax errors, the rows the recipe could not be applied to and those outside its calibration.

    Attributes
    ----------
    error
        Inflated standard errors (mas); NaN where ``not_applied``.
    not_applied
        True where the recipe needs G and G is missing (NaN): flag these rows.
    uncalibrated
        True where a named recipe was applied outside its calibration: G
        outside :data:`CALIBRATED_G_RANGE`, or (Maiz Apellaniz) an unknown
        solution type, taken as 5-parameter. The error is as computed: flag these rows.
    """

    error: np.ndarray
    not_applied: np.ndarray
    uncalibrated: np.ndarray


def inflate_parallax_error(
    sigma: np.ndarray | float,
    g: np.ndarray | float | None,
    recipe: str | float | None,
    *,
    six_parameter: np.ndarray | bool | None = None,
    include_floor: bool = True,
) -> InflatedErrors:
    """Inflate parallax standard errors ``sigma`` (mas) with a published recipe.

    Parameters
    ----------
    sigma
        Catalogue parallax errors (mas).
    g
        G magnitudes (mag); needed by the named recipes, else ignored.
    recipe
        ``"el-badry2021"`` (:func:`f_el_badry_2021`), ``"maiz-apellaniz2022"``
        (:func:`k_maiz_apellaniz_2022` and the floor), a number (a plain factor
        ``> 0``; not a bool) or ``None`` (errors unchanged).
    six_parameter
        Per star (or one value): 6-parameter solution (``astrometric_params_solved
        == 95``). Used by the Maiz Apellaniz recipe (k x 1.25). NaN for a star,
        or ``None`` for all, means the solution type is unknown: such a star is
        taken as 5-parameter and marked ``uncalibrated``.
    include_floor
        Maiz Apellaniz only: add the 10.3 uas floor in quadrature (default).
        Pass ``False`` when the model also has a latent shared parallax offset,
        which carries the same zero-separation covariance: counting both would
        count it twice.

    Returns
    -------
    InflatedErrors
        The errors (a new array), the rows with no G (NaN error) for a named
        recipe and the rows outside its calibration.

    Examples
    --------
    >>> out = inflate_parallax_error([0.02, 0.02], [12.25, float("nan")], "maiz-apellaniz2022", six_parameter=False)
    >>> out.error.round(5).tolist(), out.not_applied.tolist()
    ([0.03937, nan], [False, True])
    >>> inflate_parallax_error([0.02], [12.25], "maiz-apellaniz2022", include_floor=False).error.round(5).tolist()
    [0.038]
    >>> inflate_parallax_error([0.02, 0.02], [12.0, 25.0], "el-badry2021").uncalibrated.tolist()
    [False, True]
    """
    sigma = np.array(sigma, dtype=float, copy=True)
    no_g = np.zeros(sigma.shape, dtype=bool)
    if recipe is None:
        return InflatedErrors(sigma, no_g, no_g.copy())
    if not isinstance(recipe, str):
        factor = checked_factor(recipe)
        return InflatedErrors(sigma * factor, no_g, no_g.copy())
    name = recipe.strip().lower()
    if name not in INFLATION_RECIPES:
        valid = ", ".join(repr(r) for r in INFLATION_RECIPES)
        raise ValueError(f"unknown parallax error inflation {recipe!r}; valid: {valid}, a factor or None")
    if g is None:
        raise ValueError(f"parallax error inflation {recipe!r} needs G magnitudes (g=None was given)")
    g_arr = np.broadcast_to(np.asarray(g, dtype=float), sigma.shape)
    no_g = ~np.isfinite(g_arr)
    g_lo, g_hi = CALIBRATED_G_RANGE[name]
    uncalibrated = ~no_g & ((g_arr < g_lo) | (g_arr > g_hi))
    if name == "el-badry2021":
        out = f_el_badry_2021(g_arr) * sigma
    else:
        out = k_maiz_apellaniz_2022(g_arr, six_parameter) * sigma
        if include_floor:
            out = np.hypot(out, MAIZ_APELLANIZ_2022_FLOOR)
        uncalibrated |= ~no_g & unknown_solution_type(six_parameter, sigma.shape)
    return InflatedErrors(np.where(no_g, np.nan, out), no_g, uncalibrated)


def unknown_solution_type(six_parameter: np.ndarray | bool | float | None, shape: tuple[int, ...]) -> np.ndarray:
    """True for each star (of ``shape``) whose solution type is unknown: ``six_parameter`` NaN, or ``None`` for all.

    Examples
    --------
    >>> unknown_solution_type([1.0, 0.0, float("nan")], (3,)).tolist()
    [False, False, True]
    >>> unknown_solution_type(None, (2,)).tolist()
    [True, True]
    """
    if six_parameter is None:
        return np.ones(shape, dtype=bool)
    return np.broadcast_to(np.isnan(np.asarray(six_parameter, dtype=float)), shape).copy()


def checked_factor(recipe: object) -> float:
    """A plain inflation factor as a float: a finite number > 0, and not a bool; else ``ValueError``.

    Examples
    --------
    >>> checked_factor(1.3)
    1.3
    >>> checked_factor(True)
    Traceback (most recent call last):
    ...
    ValueError: parallax error inflation must be 'el-badry2021', 'maiz-apellaniz2022', a factor > 0 or None; got True
    """
    if isinstance(recipe, bool | np.bool_):
        valid = ", ".join(repr(r) for r in INFLATION_RECIPES)
        raise ValueError(f"parallax error inflation must be {valid}, a factor > 0 or None; got {bool(recipe)!r}")
    try:
        factor = float(recipe)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        factor = float("nan")
    if not np.isfinite(factor) or factor <= 0:
        raise ValueError(f"parallax error inflation factor must be a finite number > 0, got {recipe!r}")
    return factor
