"""The one convergence rule for every NUTS run in the package (NumPy, with ArviZ's estimators).

Following Vehtari et al. (2021), a run is trusted when the rank-normalised
split R-hat of every reported quantity is at most :data:`RHAT_MAX` and its
bulk effective sample size at least :data:`ESS_MIN` (their recommendation:
enough for stable R-hat and for quantiles out to the 5th and 95th
percentiles), with no divergent transitions; where the tail ESS is given
(the 5 % and 95 % quantiles' ESS), it must reach :data:`ESS_MIN` too.
R-hat compares chains, so a single chain is judged by its ESS and
divergences alone, and says so (:data:`SINGLE_CHAIN`).
:func:`ess_rhat` estimates the three numbers for one quantity (``arviz_stats``,
the ArviZ project's array functions: the same estimators as ``arviz.ess`` and
``arviz.rhat``, without importing ArviZ's plotting and data layers, about 2 s
of a fresh process's fit);
:func:`convergence_problems` lists what fails; the user-facing layer decides
how to warn.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import numpy as np

__all__ = [
    "ESS_MIN",
    "RHAT_MAX",
    "SIGMA_LOG_FIELD",
    "SINGLE_CHAIN",
    "SIGMA_V_FIELD",
    "TAIL_QUANTILES",
    "convergence_problems",
    "ess_rhat",
    "finite_or_nan",
    "no_cluster_signal",
]

#: Largest acceptable split R-hat.
RHAT_MAX = 1.01
#: Smallest acceptable bulk effective sample size.
ESS_MIN = 400
#: The quantiles whose effective sample size is the tail ESS (ArviZ's default).
TAIL_QUANTILES = (0.05, 0.95)
#: What a single chain's diagnostics say of R-hat: it is not checked, and why.
SINGLE_CHAIN = "R-hat not checked, as it needs two or more chains and num_chains=1"
#: A cluster's depth above this (in ln r, i.e. 25 % of its distance) is that of a field population.
SIGMA_LOG_FIELD = 0.25
#: A cluster's velocity dispersion above this (km/s) is that of a field population: bound open
#: clusters have 0.3-3 km/s, young massive clusters and associations up to about 5.
SIGMA_V_FIELD = 10.0


def convergence_problems(
    r_hat: Mapping[str, float],
    ess_bulk: Mapping[str, float],
    divergences: int,
    ess_tail: Mapping[str, float] | None = None,
    *,
    num_chains: int = 2,
) -> list[str]:
    """Plain-language problems with a NUTS run, naming the quantities that fail (empty: none).

    A NaN (or negative) R-hat or ESS is a failed check too: it means too few
    draws, or a quantity whose draws never change. With ``num_chains=1``
    R-hat (undefined for one chain) is not checked, the ESS and divergences
    are; the caller says so (:data:`SINGLE_CHAIN`).

    Examples
    --------
    >>> convergence_problems({"D": 1.002, "Q": 1.05}, {"D": 900.0, "Q": 120.0}, 0)
    ['R-hat > 1.01 for Q', 'bulk ESS < 400 for Q']
    >>> convergence_problems({"D": 1.002}, {"D": 900.0}, 0, {"D": 300.0})
    ['tail ESS < 400 for D']
    >>> convergence_problems({"D": float("nan")}, {"D": float("nan")}, 0)
    ['R-hat and bulk ESS undefined (NaN) for D: too few draws, or draws that never change']
    >>> convergence_problems({"D": float("nan")}, {"D": 900.0}, 0, num_chains=1)
    []
    """
    if num_chains < 2:
        r_hat = {}  # undefined for one chain: not a failed check
    undefined = [k for k in r_hat if not np.isfinite(r_hat[k]) or not np.isfinite(ess_bulk.get(k, 0.0))]
    undefined += [k for k in ess_bulk if k not in r_hat and not np.isfinite(ess_bulk[k])]
    bad_rhat = [k for k, v in r_hat.items() if k not in undefined and v > RHAT_MAX]
    bad_ess = [k for k, v in ess_bulk.items() if k not in undefined and not (v >= ESS_MIN)]
    bad_tail = [k for k, v in (ess_tail or {}).items() if k not in undefined and not (v >= ESS_MIN)]
    problems = []
    if undefined:
        which = "R-hat and bulk ESS" if num_chains >= 2 else "bulk ESS"
        problems.append(
            f"{which} undefined (NaN) for {', '.join(undefined)}: too few draws, or draws that never change"
        )
    if bad_rhat:
        problems.append(f"R-hat > {RHAT_MAX} for {', '.join(bad_rhat)}")
    if bad_ess:
        problems.append(f"bulk ESS < {ESS_MIN} for {', '.join(bad_ess)}")
    if bad_tail:
        problems.append(f"tail ESS < {ESS_MIN} for {', '.join(bad_tail)}")
    if divergences:
        problems.append(f"{int(divergences)} divergent transitions")
    return problems


def no_cluster_signal(posterior: Mapping[str, np.ndarray], n_stars: int) -> list[str]:
    """Why the draws of a cluster fit show no cluster (empty: they show one).

    ``posterior`` holds the draws of ``Q``, ``sigma_log`` and, for kinematic
    models, ``sigma_v``. The cluster parameters of such a posterior are not
    identified, so no number of draws makes them converge.

    Examples
    --------
    >>> no_cluster_signal({"Q": np.full(100, 1e-4), "sigma_log": np.full(100, 0.01)}, 1000)[0][:35]
    'no cluster signal: Q piles at 0 (84'
    """
    problems = []
    q = np.asarray(posterior["Q"], float)
    if np.percentile(q, 84) * n_stars < 3:
        problems.append(
            f"no cluster signal: Q piles at 0 (84th percentile {np.percentile(q, 84):.2g}, "
            f"fewer than 3 expected members among {n_stars} stars)"
        )
    sig = float(np.median(posterior["sigma_log"]))
    if sig > SIGMA_LOG_FIELD:
        problems.append(
            f"no cluster signal: the cluster component is as broad as a field (sigma = {sig:.2f} in ln r, "
            f"i.e. {100 * sig:.0f} % of D), so it models field structure rather than a cluster; "
            "try ClusterPriors.physical() or distance_hint="
        )
    sigma_v = float(np.median(posterior["sigma_v"])) if "sigma_v" in posterior else 0.0
    if sigma_v > SIGMA_V_FIELD:
        problems.append(
            f"no cluster signal: the cluster component's velocity dispersion is "
            f"{sigma_v:.0f} km/s (> {SIGMA_V_FIELD:g}), that of a field "
            "population, not of a cluster: it models the field's proper motions rather than a cluster; "
            "a brighter magnitude limit or a smaller cone helps"
        )
    return problems


def ess_rhat(draws: np.ndarray) -> tuple[float, float, float]:
    """Bulk ESS, tail ESS and rank-normalised split R-hat of one quantity's draws ``(chains, draws)``.

    NaN where they are undefined: four draws per chain or fewer, or non-finite
    draws; R-hat also for a single chain (the ESS are defined for one chain)
    and for draws that never change (whose ESS is, as ArviZ counts it, the
    number of draws).

    Examples
    --------
    >>> x = np.random.default_rng(0).standard_normal((2, 1000))
    >>> bulk, tail, rhat = ess_rhat(x)
    >>> bool(bulk > 1500 and tail > 1500 and rhat < 1.01)
    True
    """
    from arviz_stats.base import array_stats

    x = np.asarray(draws, float)
    if x.ndim != 2 or x.shape[1] <= 3 or not np.all(np.isfinite(x)):
        return math.nan, math.nan, math.nan
    axes = {"chain_axis": 0, "draw_axis": 1}
    with np.errstate(all="ignore"), warnings.catch_warnings():  # constant draws give NaN, reported as such
        warnings.simplefilter("ignore", RuntimeWarning)
        rhat = float(array_stats.rhat(x, method="rank", **axes)) if x.shape[0] >= 2 else math.nan
        bulk = float(array_stats.ess(x, method="bulk", **axes))
        tail = float(array_stats.ess(x, method="tail", prob=TAIL_QUANTILES, **axes))
    return finite_or_nan(bulk), finite_or_nan(tail), finite_or_nan(rhat)


def finite_or_nan(value: float) -> float:
    """An R-hat or ESS as reported: NaN where the estimate is not a finite, non-negative number."""
    v = float(value)
    return v if np.isfinite(v) and v >= 0 else float("nan")
