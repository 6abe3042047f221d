"""``estimate_distances``: per-star distance posteriors appended to a table."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from astropy import units as u
from astropy.table import QTable

from gaia_distances.columns import (
    add_column,
    column_values,
    corrected_parallax,
    update_provenance,
    warn,
    zero_point_record,
)
from gaia_distances.core.quadrature import DEFAULT_QUANTILES, DistanceFlag, summarize_posteriors
from gaia_distances.io import as_table
from gaia_distances.priors import EDSD, resolve_prior
from gaia_distances.progress import progress_bar, show_progress

__all__ = ["DistanceFlag", "estimate_distances"]

log = logging.getLogger(__name__)


def estimate_distances(
    table: Any,
    *,
    prior: Any = None,
    method: str = "quadrature",
    zero_point: float | str | None = None,
    extra_quantiles: Sequence[float] = (),
    prefix: str = "distance",
    prior_dominated_threshold: float = 0.2,
    seed: int = 0,
    progress: bool | None = None,
    n_nodes: int = 128,
    chunk_size: int = 4096,
    num_warmup: int = 500,
    num_samples: int = 1000,
    num_chains: int = 2,
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
        support and batch shape ``()`` or ``(n,)``.
    method
        ``"quadrature"`` (default): deterministic adaptive quadrature, accurate
        to ~1e-5 relative. ``"nuts"``: NumPyro NUTS over all stars at once, for
        validation; adds ``<prefix>_rhat`` and ``<prefix>_ess`` columns.
    zero_point
        ``None`` uses ``parallax_corrected`` (warning and falling back to the
        raw parallax if absent); a float (mas, subtracted from ``parallax``) or
        a column name holding the zero point.
    extra_quantiles
        More probabilities to report, e.g. ``(0.05, 0.95)`` adds
        ``<prefix>_p05`` and ``<prefix>_p95``.
    prefix
        Prefix of the new columns.
    prior_dominated_threshold
        Fractional parallax error above which a row is flagged prior-dominated.
    seed
        Seed of the NUTS method (quadrature is deterministic).
    progress
        Show a progress bar; default: for tables above 200 000 rows.
    n_nodes, chunk_size
        Quadrature nodes per star and stars per compiled chunk.
    num_warmup, num_samples, num_chains
        NUTS settings.

    Returns
    -------
    QTable
        A new table, same rows in the same order, with ``<prefix>_median``,
        ``<prefix>_lo`` (15.87 %), ``<prefix>_hi`` (84.13 %), ``<prefix>_mode``
        (pc) and ``<prefix>_flag`` (:class:`DistanceFlag` bits). Rows with no
        usable parallax or error get NaN and a flag. Provenance is in
        ``meta["gaia_distances"]["distances"]``.

    Examples
    --------
    >>> import gaia_distances as gd
    >>> t = gd.simulate_field(200, seed=1)
    >>> t = gd.estimate_distances(gd.apply_zeropoint(t), prior=gd.EDSD(1500.0))
    >>> t["distance_median"].unit
    Unit("pc")
    """
    out = as_table(table)
    prior = EDSD() if prior is None else prior
    plx, zp_source = corrected_parallax(out, zero_point, step="estimate_distances")
    err = column_values(out, "parallax_error", u.mas)
    n = len(out)
    core_prior, prior_desc = resolve_prior(prior, out)
    levels = tuple(DEFAULT_QUANTILES) + tuple(float(q) for q in extra_quantiles)
    for q in levels:
        if not 0.0 < q < 1.0:
            raise ValueError(f"quantiles must lie in (0, 1); got {q}")

    with progress_bar(n, progress, "distances") as update:
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
    quant, mode, flag = res["quantiles"], res["mode"], res["flag"]

    nuts_diag: dict[str, Any] = {}
    if method == "nuts":
        quant, mode, nuts_diag, rhat, ess = _nuts(
            plx,
            err,
            core_prior,
            quant,
            flag,
            levels,
            seed=seed,
            num_warmup=num_warmup,
            num_samples=num_samples,
            num_chains=num_chains,
            progress=show_progress(n, progress),
        )
    elif method != "quadrature":
        raise ValueError(f"method must be 'quadrature' or 'nuts'; got {method!r}")

    names = ["median", "lo", "hi"] + [f"p{round(100 * q):02d}" for q in levels[3:]]
    descr = {
        "median": "posterior median distance",
        "lo": "posterior 15.866th percentile of distance",
        "hi": "posterior 84.134th percentile of distance",
    }
    order = [1, 0, 2] + list(range(3, len(levels)))
    for name, j in zip(names, order):
        add_column(
            out,
            f"{prefix}_{name}",
            quant[:, j],
            unit=u.pc,
            description=descr.get(name, f"posterior {100 * levels[j]:g}th percentile of distance"),
        )
    add_column(out, f"{prefix}_mode", mode, unit=u.pc, description="posterior mode of distance")
    add_column(
        out,
        f"{prefix}_flag",
        flag.astype(np.int16),
        description="DistanceFlag bits: 1 no parallax, 2 bad error, 4 prior-dominated, "
        "8 multimodal, 16 prior/likelihood conflict, 32 invalid prior",
    )
    if method == "nuts":
        add_column(out, f"{prefix}_rhat", rhat, description="NUTS split R-hat of ln r")
        add_column(out, f"{prefix}_ess", ess, description="NUTS effective sample size of ln r")

    counts = {f.name: int(np.sum((flag & f) != 0)) for f in DistanceFlag if f.value}
    nan_rows = int(np.sum(~np.isfinite(quant[:, 1])))
    if nan_rows:
        warn(
            f"{nan_rows} of {n} rows have no usable parallax, error or prior and get NaN "
            f"distances (see {prefix}_flag); they are kept in the table."
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
            "quantiles": list(levels),
            "n_nodes": n_nodes if method == "quadrature" else None,
            "seed": seed if method == "nuts" else None,
            "flag_counts": counts,
            **nuts_diag,
        },
    )
    return out


def _nuts(
    plx: np.ndarray,
    err: np.ndarray,
    core_prior: Any,
    quant: np.ndarray,
    flag: np.ndarray,
    levels: tuple[float, ...],
    *,
    seed: int,
    num_warmup: int,
    num_samples: int,
    num_chains: int,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any], np.ndarray, np.ndarray]:
    import jax

    from gaia_distances.core.nuts import histogram_mode, sample_log_distances

    n = len(plx)
    ok = np.isfinite(quant[:, 1])
    idx = np.flatnonzero(ok)
    q_out = np.full_like(quant, np.nan)
    mode = np.full(n, np.nan)
    rhat = np.full(n, np.nan)
    ess = np.full(n, np.nan)
    if idx.size == 0:
        return q_out, mode, {"nuts_divergences": 0}, rhat, ess
    sub = jax.tree_util.tree_map(lambda p: np.broadcast_to(np.asarray(p), (n,))[idx], core_prior)
    samples, diag = sample_log_distances(
        plx[idx],
        err[idx],
        sub,
        np.log(quant[idx, 1]),
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        seed=seed,
        progress_bar=progress,
    )
    q_out[idx] = np.exp(np.quantile(samples, levels, axis=0)).T
    mode[idx] = histogram_mode(samples)
    rhat[idx] = diag["r_hat"]
    ess[idx] = diag["ess"]
    ndiv = int(diag["divergences"])
    bad = [
        msg
        for cond, msg in [
            (num_chains > 1 and np.nanmax(rhat) > 1.01, f"max R-hat {np.nanmax(rhat):.3f} > 1.01"),
            (np.nanmin(ess) < 100, f"min ESS {np.nanmin(ess):.0f} < 100"),
            (ndiv > 0, f"{ndiv} divergent transitions"),
        ]
        if cond
    ]
    if bad:
        warn("NUTS distance sampling: " + "; ".join(bad) + ". Increase num_warmup/num_samples.")
    summary = {
        "nuts_divergences": ndiv,
        "nuts_max_rhat": float(np.nanmax(rhat)) if num_chains > 1 else None,
        "nuts_min_ess": float(np.nanmin(ess)),
        "nuts_num_warmup": num_warmup,
        "nuts_num_samples": num_samples,
        "nuts_num_chains": num_chains,
    }
    return q_out, mode, summary, rhat, ess
