"""``estimate_distances``: per-star distance posteriors appended to a table.

The table edge over the core: columns in, :func:`~gaia_distances.core.quadrature.summarize_posteriors`
(or the NUTS validation sampler, :mod:`gaia_distances.core.nuts`) on arrays,
columns with units, flags and provenance out.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from astropy import units as u
from astropy.table import QTable

from gaia_distances.columns import (
    add_column,
    column_values,
    corrected_parallax,
    distance_column_names,
    parallax_without_zero_point,
    refuse_existing_columns,
    update_provenance,
    warn,
    zero_point_record,
)
from gaia_distances.compile_cache import enable_compilation_cache
from gaia_distances.core.numerics import ONE_SIGMA_QUANTILES
from gaia_distances.core.quadrature import DistanceFlag, check_options, summarize_posteriors
from gaia_distances.core.sampling import checked_seed
from gaia_distances.io import as_table
from gaia_distances.priors import EDSD, resolve_prior
from gaia_distances.progress import progress_bar, show_progress
from gaia_distances.systematics import parallax_error_inflation as inflate_errors

__all__ = ["ESTIMATE_METHODS", "DistanceFlag", "estimate_distances"]

#: ``estimate_distances(method=...)``: adaptive quadrature, or NUTS (a validation of it).
ESTIMATE_METHODS = ("quadrature", "nuts")

log = logging.getLogger(__name__)

#: Flags that make a row's results NaN, in the order a warning names them.
_NAN_FLAGS = (
    DistanceFlag.NO_PARALLAX,
    DistanceFlag.BAD_ERROR,
    DistanceFlag.INVALID_PRIOR,
    DistanceFlag.INACCURATE,
    DistanceFlag.NO_ZERO_POINT,
    DistanceFlag.NOT_INFLATED,
)

#: Descriptions of the +-1 sigma summary columns, by index into ONE_SIGMA_QUANTILES.
_SUMMARY_DESCRIPTIONS = {
    1: "posterior median distance",
    0: "posterior 15.866th percentile of distance",
    2: "posterior 84.134th percentile of distance",
}


class DistanceSummary(NamedTuple):
    """Per-star results of one method, before they become columns.

    ``quantiles`` (n, levels) and ``mode`` (n,) in pc; ``flag`` (n,)
    :class:`DistanceFlag` bits; ``r_hat`` and ``ess`` (n,) for NUTS, else
    ``None``; ``provenance``: the method's entries for ``meta``.
    """

    quantiles: np.ndarray
    mode: np.ndarray
    flag: np.ndarray
    r_hat: np.ndarray | None
    ess: np.ndarray | None
    provenance: dict[str, Any]


def estimate_distances(
    table: Any,
    *,
    prior: Any = None,
    method: str = "quadrature",
    zero_point: float | str | None = None,
    extra_quantiles: Sequence[float] = (),
    prefix: str = "distance",
    prior_dominated_threshold: float = 0.2,
    parallax_error_inflation: str | float | None = None,
    seed: int = 0,
    progress: bool | None = None,
    n_nodes: int = 128,
    chunk_size: int = 4096,
    num_warmup: int | None = None,
    num_samples: int | None = None,
    num_chains: int | None = None,
    overwrite: bool = False,
) -> QTable:
    """Estimate each star's distance from its parallax and a prior.

    The posterior is ``p(r | w) ∝ p(r) N(w | 1000 / r, s)`` with ``r`` in pc and
    the (zero-point-corrected) parallax ``w`` and its error ``s`` in mas.
    Negative and low signal-to-noise parallaxes are valid input.

    Parameters
    ----------
    table
        Anything :func:`~gaia_distances.load_table` accepts, with
        ``parallax_error`` and ``parallax_corrected`` (from
        :func:`~gaia_distances.apply_zeropoint`) or ``parallax``.
    prior
        :class:`~gaia_distances.EDSD` (default, L = 1350 pc),
        :class:`~gaia_distances.GGD`, ``GGD.bailer_jones_2021()``,
        :class:`~gaia_distances.UniformSpaceDensity`, ``"edsd"``/``"ggd"``/
        ``"uniform"``, or a numpyro ``Distribution`` over r (pc) with positive
        support and batch shape ``()`` or ``(n,)``. A scalar parameter out of
        range (``EDSD(0)``, ``GGD(alpha=-1)``), a discrete distribution or one
        with invalid parameters raises ``ValueError``; per-star parameters out
        of range give those rows NaN and ``INVALID_PRIOR``, with a warning.
    method
        ``"quadrature"`` (default): deterministic adaptive quadrature, accurate
        to ~1e-5 relative. ``"nuts"``: NumPyro NUTS over all stars at once, for
        validation; adds ``<prefix>_rhat`` and ``<prefix>_ess`` columns.
        For EDSD, GGD, the uniform prior and log-concave numpyro families
        the quadrature's range provably holds all but ~1e-13 of the
        posterior (see :mod:`gaia_distances.core.quadrature`); rows where it
        cannot (a posterior reaching past 1e-3 or 1e9 pc) are flagged
        ``INACCURATE``.
    zero_point
        ``None`` uses ``parallax_corrected`` (warning and falling back to the
        raw parallax if absent); a float (mas, subtracted from ``parallax``) or
        a column name holding the zero point.
    extra_quantiles
        More probabilities to report, e.g. ``(0.05, 0.95)`` adds
        ``<prefix>_p05`` and ``<prefix>_p95``. Each must be a number strictly
        between 0 and 1 (``ValueError`` otherwise).
    prefix
        Prefix of the new columns.
    prior_dominated_threshold
        Fractional parallax error above which a row is flagged prior-dominated.
    parallax_error_inflation
        Gaia's formal parallax errors are too small. ``None`` (default) uses
        them as they are; ``"el-badry2021"`` multiplies them by El-Badry, Rix &
        Heintz (2021)'s f(G) (eq. 16, clipped at 1 past G = 18.6);
        ``"maiz-apellaniz2022"`` applies Maiz Apellaniz (2022)'s k(G), times
        1.25 for 6-parameter solutions, with its 10.3 uas floor in quadrature;
        a number (not a bool) multiplies every error. The named recipes need
        ``phot_g_mean_mag``: rows without it get NaN flagged ``NOT_INFLATED``
        (see :func:`~gaia_distances.systematics.parallax_error_inflation`).
        Rows outside a recipe's calibration (G outside 6-21 mag for El-Badry,
        6-18 for Maiz Apellaniz, or no ``astrometric_params_solved`` for the
        latter) keep their results, flagged ``INFLATION_UNCALIBRATED``, and
        one warning counts them.
        Off by default because both recipes were calibrated on particular
        samples (wide binaries; clusters and quasars) and the choice is the
        user's to make and report; it is recorded in the provenance.
    seed
        Seed of the NUTS method (quadrature is deterministic): a non-negative
        integer, checked whatever the method.
    progress
        Show a progress bar; default: for tables above 200 000 rows.
    n_nodes, chunk_size
        Quadrature nodes per star (at least 16) and stars per compiled chunk
        (at least 1); ``ValueError`` names an option out of range.
    num_warmup, num_samples, num_chains
        NUTS settings; ``None`` takes the per-star defaults of
        :data:`~gaia_distances.core.sampling.NUTS_DEFAULTS` (500 warm-up
        iterations, 1000 draws, 2 chains). The run is trusted when every
        star passes :func:`~gaia_distances.core.diagnostics.convergence_problems`
        (R-hat <= 1.01, ESS >= 400, no divergences); otherwise a
        :class:`~gaia_distances.GaiaDistancesWarning` says what failed.
    overwrite
        Replace columns the table already has under the names this call
        writes (``<prefix>_median`` ... ``<prefix>_flag``, and the NUTS
        columns), as when it is run again on its own output. ``False``
        (default): :class:`~gaia_distances.ExistingColumnsError` names them,
        before any work.

    Returns
    -------
    QTable
        A new table, same rows in the same order, with ``<prefix>_median``,
        ``<prefix>_lo`` (15.87 %), ``<prefix>_hi`` (84.13 %), ``<prefix>_mode``
        (pc) and ``<prefix>_flag`` (:class:`DistanceFlag` bits), named by
        :func:`~gaia_distances.columns.distance_column_names`. Rows with no
        usable parallax, error or prior get NaN and a flag naming the cause
        (a warning counts them by cause). Provenance is in
        ``meta["gaia_distances"]["distances"]``.

    Examples
    --------
    >>> import gaia_distances as gd
    >>> t = gd.simulate_field(200, seed=1)
    >>> t = gd.estimate_distances(gd.apply_zeropoint(t), prior=gd.EDSD(1500.0))
    >>> t["distance_median"].unit
    Unit("pc")
    """
    if method not in ESTIMATE_METHODS:
        raise ValueError(f"method must be one of {ESTIMATE_METHODS}; got {method!r}")
    enable_compilation_cache()
    levels = tuple(ONE_SIGMA_QUANTILES) + _checked_quantiles(extra_quantiles)
    check_options(
        quantiles=levels, n_nodes=n_nodes, chunk_size=chunk_size, prior_dominated_threshold=prior_dominated_threshold
    )
    seed = checked_seed(seed)
    out = as_table(table)
    refuse_existing_columns(
        out.colnames,
        _written_columns(prefix, extra_quantiles, method),
        overwrite=overwrite,
        step="estimate_distances",
        other="pass another prefix=",
    )
    prior = EDSD() if prior is None else prior
    plx, zp_source = corrected_parallax(out, zero_point, step="estimate_distances")
    err = column_values(out, "parallax_error", u.mas)
    n = len(out)
    not_inflated = np.zeros(n, dtype=bool)
    uncalibrated = np.zeros(n, dtype=bool)
    inflation_record = None
    if parallax_error_inflation is not None:
        inflated = inflate_errors(out, parallax_error_inflation)
        not_inflated = inflated.not_applied & np.isfinite(err) & (err > 0)
        uncalibrated = inflated.uncalibrated
        err = inflated.error.to_value(u.mas)
        inflation_record = inflated.record
    core_prior, prior_desc = resolve_prior(prior, out)

    result = _quadrature(
        plx,
        err,
        core_prior,
        levels=levels,
        n_nodes=n_nodes,
        chunk_size=chunk_size,
        prior_dominated_threshold=prior_dominated_threshold,
        progress=progress,
    )
    if method == "nuts":
        result = _nuts(
            plx,
            err,
            core_prior,
            result,
            levels=levels,
            seed=seed,
            num_warmup=num_warmup,
            num_samples=num_samples,
            num_chains=num_chains,
            progress=progress,
        )
    # a parallax whose zero point is missing is not a missing parallax: say which it is
    # and an error left uninflated for want of G is not a bad error
    # and an error inflated outside its recipe's calibration is flagged as such
    no_zp = parallax_without_zero_point(out, plx)
    if no_zp.any() or not_inflated.any() or uncalibrated.any():
        flag = result.flag.copy()
        flag[no_zp] = (flag[no_zp] & ~int(DistanceFlag.NO_PARALLAX)) | int(DistanceFlag.NO_ZERO_POINT)
        flag[not_inflated] = (flag[not_inflated] & ~int(DistanceFlag.BAD_ERROR)) | int(DistanceFlag.NOT_INFLATED)
        flag[uncalibrated] |= int(DistanceFlag.INFLATION_UNCALIBRATED)
        result = result._replace(flag=flag)
    _add_distance_columns(out, result, levels=levels, prefix=prefix, extra_quantiles=extra_quantiles)

    flag = result.flag
    counts = {f.name: int(np.sum((flag & f) != 0)) for f in DistanceFlag if f.value}
    nan = ~np.isfinite(result.quantiles[:, 1])
    if nan.any():
        causes = ", ".join(
            f"{f.name} {int(np.sum(nan & ((flag & f) != 0)))}" for f in _NAN_FLAGS if np.any(nan & ((flag & f) != 0))
        )
        warn(
            f"{int(nan.sum())} of {n} rows get NaN distances ({causes}; see {prefix}_flag); they are kept in the table."
        )
    inaccurate = int(np.sum(~nan & ((flag & DistanceFlag.INACCURATE) != 0)))
    if inaccurate:
        warn(
            f"{inaccurate} of {n} rows are flagged INACCURATE (see {prefix}_flag): the quadrature could not bound "
            "its error (the posterior reaches past 1e-3 or 1e9 pc, or is too narrow for its grid)."
        )
    update_provenance(
        out,
        "distances" if prefix == "distance" else f"distances:{prefix}",
        {
            "method": method,
            "prior": prior_desc,
            "zero_point": zp_source,
            "zero_point_arg": zero_point_record(zero_point),
            "zeropoint_recipe": out.meta.get("gaia_distances", {}).get("zeropoint", {}).get("recipe"),
            "parallax_error_inflation": inflation_record,
            "quantiles": list(levels),
            "n_nodes": n_nodes if method == "quadrature" else None,
            "seed": seed if method == "nuts" else None,
            "flag_counts": counts,
            **result.provenance,
        },
    )
    return out


def _written_columns(prefix: str, extra_quantiles: Sequence[float], method: str) -> list[str]:
    """The names of the columns :func:`estimate_distances` writes (as :func:`_add_distance_columns` does)."""
    names = distance_column_names(prefix, extra_quantiles)
    nuts = [names.rhat, names.ess] if method == "nuts" else []
    return [*names.quantiles, names.mode, names.flag, *nuts]


def _checked_quantiles(extra_quantiles: Any) -> tuple[float, ...]:
    """``extra_quantiles`` as floats, or ``ValueError`` naming the bad entry."""
    if isinstance(extra_quantiles, str | bytes) or not hasattr(extra_quantiles, "__iter__"):
        raise ValueError(f"extra_quantiles must be a sequence of probabilities; got {extra_quantiles!r}")
    out = []
    for q in extra_quantiles:
        try:
            x = float(q)
        except (TypeError, ValueError):
            raise ValueError(f"extra_quantiles must hold probabilities in (0, 1); got {q!r}") from None
        if not 0.0 < x < 1.0:  # also rejects NaN
            raise ValueError(f"extra_quantiles must hold probabilities in (0, 1); got {q!r}")
        out.append(x)
    return tuple(out)


def _quadrature(
    plx: np.ndarray,
    err: np.ndarray,
    core_prior: Any,
    *,
    levels: tuple[float, ...],
    n_nodes: int,
    chunk_size: int,
    prior_dominated_threshold: float,
    progress: bool | None,
) -> DistanceSummary:
    """Quantiles, mode and flag of every row by adaptive quadrature."""
    with progress_bar(len(plx), progress, "distances") as update:
        res = summarize_posteriors(
            plx,
            err,
            core_prior,
            quantiles=levels,
            n_nodes=n_nodes,
            chunk_size=chunk_size,
            prior_dominated_threshold=prior_dominated_threshold,
            progress=update,
        )
    return DistanceSummary(res["quantiles"], res["mode"], res["flag"], None, None, {})


def _add_distance_columns(
    out: QTable,
    result: DistanceSummary,
    *,
    levels: tuple[float, ...],
    prefix: str,
    extra_quantiles: Sequence[float],
) -> None:
    """Append the columns named by :func:`~gaia_distances.columns.distance_column_names`."""
    names = distance_column_names(prefix, extra_quantiles)
    for name, j in names.quantiles.items():
        description = _SUMMARY_DESCRIPTIONS.get(j, f"posterior {100 * levels[j]:g}th percentile of distance")
        add_column(out, name, result.quantiles[:, j], unit=u.pc, description=description)
    add_column(out, names.mode, result.mode, unit=u.pc, description="posterior mode of distance")
    add_column(
        out,
        names.flag,
        result.flag.astype(np.int16),
        description="DistanceFlag bits: 1 no parallax, 2 bad error, 4 prior-dominated, "
        "8 multimodal, 16 prior/likelihood conflict, 32 invalid prior, 64 inaccurate, 128 no zero point, "
        "256 not inflated, 512 inflation outside its calibration",
    )
    if result.r_hat is not None and result.ess is not None:
        add_column(out, names.rhat, result.r_hat, description="NUTS split R-hat of ln r")
        add_column(out, names.ess, result.ess, description="NUTS effective sample size of ln r")


def _nuts(
    plx: np.ndarray,
    err: np.ndarray,
    core_prior: Any,
    quadrature: DistanceSummary,
    *,
    levels: tuple[float, ...],
    seed: int,
    num_warmup: int | None,
    num_samples: int | None,
    num_chains: int | None,
    progress: bool | None,
) -> DistanceSummary:
    """Quantiles and mode from NUTS draws, started at the quadrature medians; flags from the quadrature.

    Rows the quadrature gives NaN (no usable parallax, error or prior) stay NaN.
    Warns (one :class:`~gaia_distances.GaiaDistancesWarning`) when the run
    fails :func:`~gaia_distances.core.diagnostics.convergence_problems`.
    """
    import jax

    from gaia_distances.core.diagnostics import convergence_problems
    from gaia_distances.core.nuts import histogram_mode, per_star_settings, sample_log_distances
    from gaia_distances.core.sampling import chain_iterations

    settings = per_star_settings(num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains)
    n = len(plx)
    idx = np.flatnonzero(np.isfinite(quadrature.quantiles[:, 1]))
    q_out = np.full_like(quadrature.quantiles, np.nan)
    mode = np.full(n, np.nan)
    rhat = np.full(n, np.nan)
    ess = np.full(n, np.nan)
    provenance: dict[str, Any] = {
        "nuts_divergences": 0,
        "nuts_max_rhat": None,
        "nuts_min_ess": None,
        "nuts_num_warmup": settings.num_warmup,
        "nuts_num_samples": settings.num_samples,
        "nuts_num_chains": settings.num_chains,
    }
    if idx.size == 0:
        return DistanceSummary(q_out, mode, quadrature.flag, rhat, ess, provenance)
    sub = jax.tree_util.tree_map(lambda p: np.broadcast_to(np.asarray(p), (n,))[idx], core_prior)
    show = show_progress(n, progress)  # by the number of rows, as for the quadrature
    with progress_bar(chain_iterations(settings), show, "NUTS distances", unit="iteration") as update:
        draws = sample_log_distances(
            plx[idx],
            err[idx],
            sub,
            np.log(quadrature.quantiles[idx, 1]),
            settings=settings,
            seed=seed,
            progress=update,
        )
    samples = draws.samples.reshape(-1, draws.samples.shape[-1])
    q_out[idx] = np.exp(np.quantile(samples, levels, axis=0)).T
    mode[idx] = histogram_mode(samples)
    rhat[idx] = draws.r_hat
    ess[idx] = draws.ess

    # the convergence rule applied to the worst star of each diagnostic
    worst_rhat = _worst_row(rhat, np.nanargmax)
    worst_ess = _worst_row(ess, np.nanargmin)
    max_rhat = {f"ln r of row {worst_rhat}": float(rhat[worst_rhat])} if worst_rhat is not None else {}
    min_ess = {f"ln r of row {worst_ess}": float(ess[worst_ess])} if worst_ess is not None else {"ln r": np.nan}
    problems = convergence_problems(max_rhat, min_ess, draws.divergences)
    if problems:
        warn("NUTS distance sampling: " + "; ".join(problems) + ". Increase num_warmup/num_samples.")
    provenance |= {
        "nuts_divergences": draws.divergences,
        "nuts_max_rhat": next(iter(max_rhat.values()), None),
        "nuts_min_ess": next(iter(min_ess.values())),
    }
    return DistanceSummary(q_out, mode, quadrature.flag, rhat, ess, provenance)


def _worst_row(values: np.ndarray, pick: Any) -> int | None:
    """The row ``pick`` (``np.nanargmax`` or ``np.nanargmin``) selects, or ``None`` when every value is NaN."""
    return None if np.all(np.isnan(values)) else int(pick(values))
