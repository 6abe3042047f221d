"""The M67 cluster fit: marginal (distances integrated out) against joint (reference).

Run from the project root::

    python benchmarks/bench_cluster.py                   # M67 marginal + joint + 10^5-star scale
    python benchmarks/bench_cluster.py --skip-joint      # minutes faster

The figure of merit is ESS per second: the minimum bulk ESS over (D, sigma, Q,
L) divided by the wall time of the whole ``fit_cluster`` call, compilation
included (library imports are done before timing). Both methods run in the
same process on the same data, with the reference cuts (0.2 < parallax < 3 mas)
and zero points (gaiadr3-zeropoint, NaN -> 0). The joint method uses the
reference settings: 2000 warm-up steps, 4000 draws, 2 chains.

The M67 table is read from ``$GAIA_DISTANCES_TEST_DATA`` or ``../shared/data``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings
from datetime import date
from pathlib import Path

import arviz  # noqa: F401  (imported before timing: an import is not part of a fit)
import jax
import numpy as np
import numpyro

import gaia_distances as gd

REFERENCE = {"L": (469.582, 7.079), "D": (836.914, 0.988), "sigma": (14.580, 1.245), "Q": (0.424, 0.011)}


def _data_dir() -> Path:
    root = Path(__file__).resolve().parents[1]
    return Path(os.environ.get("GAIA_DISTANCES_TEST_DATA", root.parent / "shared" / "data"))


#: The reference analysis's model: the EDSD field, parallaxes only, no systematics (the defaults are the
#: flexible field, proper motions where the table has them, and Vasiliev & Baumgardt's systematics).
REFERENCE_MODEL = {"kinematics": False, "field": "edsd", "systematics": None}


def _row(fit: gd.ClusterFit, label: str) -> dict:
    d = fit.diagnostics
    summ = {str(r["parameter"]): (float(r["mean"]), float(r["sd"])) for r in fit.summary()}
    return {
        "label": label,
        "wall": d["wall_time_s"],
        "min_ess": d["min_ess_bulk"],
        "ess_s": d["ess_per_s"],
        "rhat": max(d["r_hat"].values()),
        "div": d["divergences"],
        "summary": summ,
        "timings": d.get("timings", {}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-joint", action="store_true")
    ap.add_argument("--scale-stars", type=int, default=100_000, help="simulated field size (0 to skip)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    t = gd.load_table(_data_dir() / "m67.fits.gz")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gd.GaiaDistancesWarning)
        t = gd.apply_zeropoint(t, fallback=0.0)

    rows = []
    fit_m = gd.fit_cluster(t, parallax_limits=(0.2, 3.0), truncate=False, seed=args.seed, **REFERENCE_MODEL)
    rows.append(_row(fit_m, "marginal, reference model (first call: compilation included)"))
    fit_m2 = gd.fit_cluster(t, parallax_limits=(0.2, 3.0), truncate=False, seed=args.seed + 1, **REFERENCE_MODEL)
    rows.append(_row(fit_m2, "marginal, reference model (second call, compiled)"))
    fit_j = None
    if not args.skip_joint:
        fit_j = gd.fit_cluster(
            t,
            parallax_limits=(0.2, 3.0),
            truncate=False,
            method="joint",
            **REFERENCE_MODEL,
            num_warmup=2000,
            num_samples=4000,
            num_chains=2,
            seed=args.seed,
            progress=False,
        )
        rows.append(_row(fit_j, "joint, reference settings (2000 + 4000, 2 chains)"))

    dev = jax.devices()[0]
    print(
        f"\n### M67 cluster fit, {date.today().isoformat()}, {platform.node()}, {os.cpu_count()} CPUs, "
        f"JAX {jax.__version__} / numpyro {numpyro.__version__} on {dev.platform}\n"
    )
    print("| method | wall [s] | min ESS | ESS/s | max R-hat | divergences | D [pc] | sigma [pc] | Q | L [pc] |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s = r["summary"]
        print(
            f"| {r['label']} | {r['wall']:.1f} | {r['min_ess']:.0f} | {r['ess_s']:.1f} | {r['rhat']:.4f} | "
            f"{r['div']} | {s['D'][0]:.2f} ± {s['D'][1]:.2f} | {s['sigma'][0]:.2f} ± {s['sigma'][1]:.2f} | "
            f"{s['Q'][0]:.4f} ± {s['Q'][1]:.4f} | {s['L'][0]:.1f} ± {s['L'][1]:.1f} |"
        )
    print(
        "| published reference (NUTS, 2 chains) | 325 (this machine) | 276 | 0.85 | | | "
        + " | ".join(f"{REFERENCE[k][0]} ± {REFERENCE[k][1]}" for k in ("D", "sigma", "Q", "L"))
        + " |"
    )
    print(f"\nmarginal stage timings (first call): {rows[0]['timings']}")
    if fit_j is not None:
        print(
            f"\nESS/s ratio marginal (first call) / joint: {rows[0]['ess_s'] / rows[-1]['ess_s']:.0f}x; "
            f"(second call) / joint: {rows[1]['ess_s'] / rows[-1]['ess_s']:.0f}x"
        )
        m1 = np.asarray(fit_m.table["membership_prob"])
        m2 = np.asarray(fit_j.table["membership_prob"])
        ok = np.isfinite(m1) & np.isfinite(m2)
        print(f"membership mean |marginal - joint| = {np.mean(np.abs(m1[ok] - m2[ok])):.4f} over {ok.sum()} stars")
        for k in ("D", "sigma", "Q", "L"):
            a, b = fit_m.posterior[k], fit_j.posterior[k]
            print(
                f"  {k}: marginal {a.mean():.4f} ± {a.std():.4f}, joint {b.mean():.4f} ± {b.std():.4f}, "
                f"difference {(a.mean() - b.mean()) / np.hypot(a.std(), b.std()):+.2f} sd"
            )

    if args.scale_stars:
        n = args.scale_stars
        sim = gd.simulate_field(
            int(0.9 * n),
            n_cluster=n - int(0.9 * n),
            cluster_distance=1500.0,
            magnitude_limit=20.0,
            errors_independent_of_distance=True,
            seed=args.seed,
        )
        t0 = time.perf_counter()
        fit_s = gd.fit_cluster(sim, zero_point="parallax_zeropoint_true", seed=args.seed)
        wall = time.perf_counter() - t0
        r = _row(fit_s, f"simulated {n:,} stars")
        s = r["summary"]
        print(
            f"\nScale: {n:,} simulated stars (10 % members at 1500 pc): wall {wall:.1f} s "
            f"(stages {r['timings']}), min ESS {r['min_ess']:.0f}, max R-hat {r['rhat']:.4f}, "
            f"D = {s['D'][0]:.1f} ± {s['D'][1]:.1f} pc, Q = {s['Q'][0]:.4f} ± {s['Q'][1]:.4f}"
        )


if __name__ == "__main__":
    main()
