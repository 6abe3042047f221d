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
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "INFLATION_RECIPES",
    "MAIZ_APELLANIZ_2022_FLOOR",
    "MAIZ_APELLANIZ_2022_G",
    "MAIZ_APELLANIZ_2022_K",
    "InflatedErrors",
    "f_el_badry_2021",
    "inflate_parallax_error",
    "k_maiz_apellaniz_2022",
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
    1.25 for 6-parameter solutions; ``None`` means 5-parameter.

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
        k = np.where(np.asarray(six_parameter, dtype=bool), _SIX_PARAMETER_K * k, k)
    return np.where(np.isnan(g), np.nan, k)


class InflatedErrors(NamedTuple):
    """Inflated parallax errors and the rows the recipe could not be applied to.

    Attributes
    ----------
    error
        Inflated standard errors (mas); NaN where ``not_applied``.
    not_applied
        True where the recipe needs G and G is missing (NaN): flag these rows.
    """

    error: np.ndarray
    not_applied: np.ndarray


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
        ``> 0``) or ``None`` (errors unchanged).
    six_parameter
        Per star (or one bool): 6-parameter solution (``astrometric_params_solved
        == 95``). Used by the Maiz Apellaniz recipe (k x 1.25); ``None``: 5-parameter.
    include_floor
        Maiz Apellaniz only: add the 10.3 uas floor in quadrature (default).
        Pass ``False`` when the model also has a latent shared parallax offset,
        which carries the same zero-separation covariance: counting both would
        count it twice.

    Returns
    -------
    InflatedErrors
        The errors (a new array) and the rows with no G (NaN error) for a named recipe.

    Examples
    --------
    >>> out = inflate_parallax_error([0.02, 0.02], [12.25, float("nan")], "maiz-apellaniz2022")
    >>> out.error.round(5).tolist(), out.not_applied.tolist()
    ([0.03937, nan], [False, True])
    >>> inflate_parallax_error([0.02], [12.25], "maiz-apellaniz2022", include_floor=False).error.round(5).tolist()
    [0.038]
    """
    sigma = np.array(sigma, dtype=float, copy=True)
    no_g = np.zeros(sigma.shape, dtype=bool)
    if recipe is None:
        return InflatedErrors(sigma, no_g)
    if not isinstance(recipe, str):
        factor = float(recipe)
        if not np.isfinite(factor) or factor <= 0:
            raise ValueError(f"parallax error inflation factor must be a finite number > 0, got {recipe!r}")
        return InflatedErrors(sigma * factor, no_g)
    name = recipe.strip().lower()
    if name not in INFLATION_RECIPES:
        valid = ", ".join(repr(r) for r in INFLATION_RECIPES)
        raise ValueError(f"unknown parallax error inflation {recipe!r}; valid: {valid}, a factor or None")
    if g is None:
        raise ValueError(f"parallax error inflation {recipe!r} needs G magnitudes (g=None was given)")
    g_arr = np.broadcast_to(np.asarray(g, dtype=float), sigma.shape)
    no_g = ~np.isfinite(g_arr)
    if name == "el-badry2021":
        out = f_el_badry_2021(g_arr) * sigma
    else:
        out = k_maiz_apellaniz_2022(g_arr, six_parameter) * sigma
        if include_floor:
            out = np.hypot(out, MAIZ_APELLANIZ_2022_FLOOR)
    return InflatedErrors(np.where(no_g, np.nan, out), no_g)
