"""Simulation-based calibration of ``fit_cluster`` (marginal method).

Run from the project root::

    python benchmarks/bench_cluster_sbc.py --n-fits 60

Each fit simulates a field with known truth: ``D ~ logU(300, 2500) pc``,
``sigma ~ logU(0.008, 0.05)`` in ln r, ``Q ~ U(0.05, 0.5)``, ``L ~ logU(300,
1500) pc``, 2500 stars, parallax errors from the Gaia DR3 relation shuffled
across stars (so that the error carries no distance information, as the model
assumes). The table reports how often the truth falls inside the central 68 %
and 90 % posterior intervals; for N fits the binomial standard error at 68 %
is ``sqrt(0.68 * 0.32 / N)``, 0.06 for N = 60.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings
from datetime import date

import numpy as np

import gaia_distances as gd

PARAMS = ("D", "sigma_log", "Q", "L")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-fits", type=int, default=60)
    ap.add_argument("--n-stars", type=int, default=2500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    inside68 = {k: [] for k in PARAMS}
    inside90 = {k: [] for k in PARAMS}
    bad = 0
    t0 = time.perf_counter()
    for i in range(args.n_fits):
        truth = {
            "D": float(np.exp(rng.uniform(np.log(300), np.log(2500)))),
            "sigma_log": float(np.exp(rng.uniform(np.log(0.008), np.log(0.05)))),
            "Q": float(rng.uniform(0.05, 0.5)),
            "L": float(np.exp(rng.uniform(np.log(300), np.log(1500)))),
        }
        # the truth is the population fraction; the realised count is binomial
        n_cl = int(rng.binomial(args.n_stars, truth["Q"]))
        t = gd.simulate_field(
            args.n_stars - n_cl,
            n_cluster=n_cl,
            cluster_distance=truth["D"],
            cluster_sigma_log=truth["sigma_log"],
            field_prior=gd.EDSD(truth["L"]),
            magnitude_limit=None,
            errors_independent_of_distance=True,
            seed=1000 + i,
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", gd.GaiaDistancesWarning)
            fit = gd.fit_cluster(
                t, kinematics=False, field="edsd", systematics=None, zero_point="parallax_zeropoint_true", seed=i
            )
        bad += any(issubclass(w.category, gd.GaiaDistancesWarning) for w in caught)
        for k in PARAMS:
            x = fit.posterior[k]
            lo68, hi68, lo90, hi90 = np.percentile(x, [15.865525, 84.134475, 5, 95])
            inside68[k].append(lo68 <= truth[k] <= hi68)
            inside90[k].append(lo90 <= truth[k] <= hi90)
    wall = time.perf_counter() - t0
    n = args.n_fits
    print(
        f"\n### Simulation-based calibration, {date.today().isoformat()}, {platform.node()}, "
        f"{os.cpu_count()} CPUs: {n} fits of {args.n_stars} stars, {wall:.0f} s in all "
        f"({wall / n:.1f} s per fit), {bad} fits with a diagnostic warning\n"
    )
    print("| parameter | truth inside 68 % interval | truth inside 90 % interval |")
    print("|---|---|---|")
    for k in PARAMS:
        print(f"| {k} | {np.mean(inside68[k]):.3f} | {np.mean(inside90[k]):.3f} |")
    all68 = np.mean([np.mean(inside68[k]) for k in PARAMS])
    print(
        f"\nmean over parameters: {all68:.3f} at 68 % (binomial s.e. per parameter {np.sqrt(0.6827 * 0.3173 / n):.3f})"
    )


if __name__ == "__main__":
    main()
