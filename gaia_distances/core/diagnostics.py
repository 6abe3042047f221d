"""The one convergence rule for every NUTS run in the package (NumPy, with arviz's estimators).

Following Vehtari et al. (2021), a run is trusted when the rank-normalised
split R-hat of every reported quantity is at most :data:`RHAT_MAX` and its
bulk effective sample size at least :data:`ESS_MIN` (their recommendation:
enough for stable R-hat and for quantiles out to the 5th and 95th
percentiles), with no divergent transitions; where the tail ESS is given
(the 5 % and 95 % quantiles' ESS), it must reach :data:`ESS_MIN` too.
:func:`ess_rhat` estimates the three numbers for one quantity;
:func:`convergence_problems` lists what fails; the user-facing layer decides
how to warn.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import numpy as np

__all__ = ["ESS_MIN", "RHAT_MAX", "convergence_problems", "ess_rhat", "finite_or_nan"]

#: Largest acceptable split R-hat.
RHAT_MAX = 1.01
#: Smallest acceptable bulk effective sample size.
ESS_MIN = 400


def convergence_problems(
    r_hat: Mapping[str, float],
    ess_bulk: Mapping[str, float],
    divergences: int,
    ess_tail: Mapping[str, float] | None = None,
) -> list[str]:
    """Plain-language problems with a NUTS run, naming the quantities that fail (empty: none).

    A NaN (or negative) R-hat or ESS is a failed check too: it means too few
    draws, or a quantity whose draws never change.

    Examples
    --------
    >>> convergence_problems({"D": 1.002, "Q": 1.05}, {"D": 900.0, "Q": 120.0}, 0)
    ['R-hat > 1.01 for Q', 'bulk ESS < 400 for Q']
    >>> convergence_problems({"D": 1.002}, {"D": 900.0}, 0, {"D": 300.0})
    ['tail ESS < 400 for D']
    >>> convergence_problems({"D": float("nan")}, {"D": float("nan")}, 0)
    ['R-hat and bulk ESS undefined (NaN) for D: too few draws, or draws that never change']
    """
    undefined = [k for k in r_hat if not np.isfinite(r_hat[k]) or not np.isfinite(ess_bulk.get(k, 0.0))]
    undefined += [k for k in ess_bulk if k not in r_hat and not np.isfinite(ess_bulk[k])]
    bad_rhat = [k for k, v in r_hat.items() if k not in undefined and v > RHAT_MAX]
    bad_ess = [k for k, v in ess_bulk.items() if k not in undefined and not (v >= ESS_MIN)]
    bad_tail = [k for k, v in (ess_tail or {}).items() if k not in undefined and not (v >= ESS_MIN)]
    problems = []
    if undefined:
        problems.append(
            f"R-hat and bulk ESS undefined (NaN) for {', '.join(undefined)}: too few draws, or draws that never change"
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


def ess_rhat(draws: np.ndarray) -> tuple[float, float, float]:
    """Bulk ESS, tail ESS and rank-normalised split R-hat of one quantity's draws ``(chains, draws)``.

    NaN where they are undefined: four draws per chain or fewer, non-finite
    draws, or draws that never change.

    Examples
    --------
    >>> x = np.random.default_rng(0).standard_normal((2, 1000))
    >>> bulk, tail, rhat = ess_rhat(x)
    >>> bool(bulk > 1500 and tail > 1500 and rhat < 1.01)
    True
    """
    import arviz as az

    x = np.asarray(draws, float)
    if x.ndim != 2 or x.shape[1] <= 3 or not np.all(np.isfinite(x)):
        return math.nan, math.nan, math.nan
    with np.errstate(all="ignore"), warnings.catch_warnings():  # constant draws give NaN, reported as such
        warnings.simplefilter("ignore", RuntimeWarning)
        rhat = float(az.rhat(x))  # split R-hat: defined for one chain too
        ess = float(az.ess(x, method="bulk")), float(az.ess(x, method="tail"))
    return finite_or_nan(ess[0]), finite_or_nan(ess[1]), finite_or_nan(rhat)


def finite_or_nan(value: float) -> float:
    """An R-hat or ESS as reported: NaN where the estimate is not a finite, non-negative number."""
    v = float(value)
    return v if np.isfinite(v) and v >= 0 else float("nan")
