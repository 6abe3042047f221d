"""Real-field extremes for ``fit_cluster``: a small cluster in a big cone, and members only.

Run from the project root::

    python benchmarks/bench_cluster_extremes.py

1. A nearby cluster (D = 300 pc, 3 pc deep) making up 1 % of 40 000 stars in a
   magnitude-limited (G < 20) field in a 1.5 deg cone, fitted with the
   reference priors and with ``ClusterPriors.physical()`` (size log-uniform in
   0.3-40 pc).
2. A members-only table (500 stars, 100 % members).

For each: the posterior, the chains' agreement and the warnings raised.
"""

from __future__ import annotations

import argparse
import time
import warnings
from datetime import date

import numpy as np
from astropy import units as u

import gaia_distances as gd


def _report(label: str, truth: dict, thunk) -> None:
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", gd.GaiaDistancesWarning)
        fit = thunk()
    wall = time.perf_counter() - t0
    rows = {str(r["parameter"]): r for r in fit.summary()}
    chains = np.exp(np.log(fit.posterior["D"]).mean(axis=1))
    print(
        f"| {label} | "
        + " | ".join(
            f"{rows[k]['mean']:.4g} ± {rows[k]['sd']:.2g} (true {truth[k]:.4g})" for k in ("D", "sigma", "Q", "L")
        )
        + f" | {', '.join(f'{c:.0f}' for c in chains)} | {max(float(rows[k]['r_hat']) for k in ('D', 'Q')):.3f} "
        f"| {wall:.1f} | {'; '.join(str(w.message)[:120] for w in caught) or 'none'} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"\n### fit_cluster extremes, {date.today().isoformat()}\n")
    print("| case | D [pc] | sigma [pc] | Q | L [pc] | chain means of D | max R-hat (D, Q) | wall [s] | warnings |")
    print("|---|---|---|---|---|---|---|---|---|")
    n = 40_000
    n_cl = n // 100
    small = gd.simulate_field(
        n - n_cl,
        n_cluster=n_cl,
        cluster_distance=300.0,
        cluster_sigma_log=0.01,
        radius=1.5 * u.deg,
        field_prior=gd.EDSD(1000.0),
        magnitude_limit=20.0,
        seed=args.seed,
    )
    truth = {"D": 300.0, "sigma": 3.0, "Q": 0.01, "L": float("nan")}
    kw = dict(zero_point="parallax_zeropoint_true", seed=args.seed)
    _report("1 % members of 40 000, reference priors", truth, lambda: gd.fit_cluster(small, **kw))
    _report(
        "1 % members of 40 000, ClusterPriors.physical()",
        truth,
        lambda: gd.fit_cluster(small, prior=gd.ClusterPriors.physical(), **kw),
    )
    members = gd.simulate_field(0, n_cluster=500, cluster_distance=800.0, cluster_sigma_log=0.01, seed=args.seed)
    truth_m = {"D": 800.0, "sigma": 8.0, "Q": 1.0, "L": float("nan")}
    _report("members only (500 stars), reference priors", truth_m, lambda: gd.fit_cluster(members, **kw))


if __name__ == "__main__":
    main()
