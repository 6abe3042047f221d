"""The one convergence rule for every NUTS run in the package (pure NumPy).

Following Vehtari et al. (2021), a run is trusted when the rank-normalised
split R-hat of every reported quantity is at most :data:`RHAT_MAX` and its
bulk effective sample size at least :data:`ESS_MIN` (their recommendation:
enough for stable R-hat and for quantiles out to the 5th and 95th
percentiles), with no divergent transitions. :func:`convergence_problems` lists
what fails; the user-facing layer decides how to warn.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["ESS_MIN", "RHAT_MAX", "convergence_problems"]

#: Largest acceptable split R-hat.
RHAT_MAX = 1.01
#: Smallest acceptable bulk effective sample size.
ESS_MIN = 400


def convergence_problems(r_hat: Mapping[str, float], ess_bulk: Mapping[str, float], divergences: int) -> list[str]:
    """Plain-language problems with a NUTS run, naming the quantities that fail (empty: none).

    NaN R-hat (a single chain, or too few draws) is not counted as a failure;
    NaN ESS is.

    Examples
    --------
    >>> convergence_problems({"D": 1.002, "Q": 1.05}, {"D": 900.0, "Q": 120.0}, 0)
    ['R-hat > 1.01 for Q', 'bulk ESS < 400 for Q']
    """
    problems = []
    bad_rhat = [k for k, v in r_hat.items() if np.isfinite(v) and v > RHAT_MAX]
    bad_ess = [k for k, v in ess_bulk.items() if not (v >= ESS_MIN)]
    if bad_rhat:
        problems.append(f"R-hat > {RHAT_MAX} for {', '.join(bad_rhat)}")
    if bad_ess:
        problems.append(f"bulk ESS < {ESS_MIN} for {', '.join(bad_ess)}")
    if divergences:
        problems.append(f"{int(divergences)} divergent transitions")
    return problems
