"""Gaia's correlated systematics in fit_cluster: calibration, real cones and cost (issue 12).

Run from the project root::

    python benchmarks/bench_systematics.py --sbc 100      # calibration over 100 mock fields
    python benchmarks/bench_systematics.py --cones        # the three real EDR3 cones against Hunt & Reffert 2023
    python benchmarks/bench_systematics.py --cost         # fit time with and without, side by side

**Calibration.** Each mock field (``simulate_field``) has a cluster at a
distance drawn log-uniformly from 500 to 4000 pc and parallaxes that carry one
realisation of the correlated offset field of the Vasiliev & Baumgardt (2021)
covariance (``parallax_systematics="vasiliev2021"``). It is fitted once with
the default ``systematics="vasiliev2021"``; the draws without the systematic
term (``D_stat``) are exactly those of ``systematics=None`` with the same seed,
so both are measured in the same run. The output counts how often the true
distance falls inside the 68 % and 90 % central intervals, with the binomial
standard error of the nominal rate.

**Real cones.** The default kinematic fit of each cone of ``../shared/data/cones``
(or ``$GAIA_DISTANCES_TEST_DATA/cones``), with and without systematics,
against Hunt & Reffert's (2023) distance; their intervals are statistical only.

**Cost.** The wall time of ``fit_cluster`` on one field with
``systematics=None`` and with the default, alternating, best of ``--rounds``.

Output: Markdown to paste into ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
import warnings
from datetime import date
from pathlib import Path

import numpy as np

import gaia_distances as gd

HUNT_REFFERT = {  # distance 16/50/84 % [pc]
    "ngc2301": (838.8, 839.6, 840.4),
    "ngc2437": (1552.9, 1554.5, 1556.2),
    "ngc2506": (3129.0, 3140.4, 3151.9),
}


def _quiet_fit(t, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gd.GaiaDistancesWarning)
        return gd.fit_cluster(t, progress=False, **kw)


def _inside(draws: np.ndarray, truth: float, level: float) -> bool:
    lo, hi = np.quantile(draws, [0.5 - level / 2, 0.5 + level / 2])
    return bool(lo <= truth <= hi)


def sbc(n: int, n_field: int, n_cluster: int) -> str:
    hits = {("on", 0.68): 0, ("on", 0.90): 0, ("off", 0.68): 0, ("off", 0.90): 0}
    z_on, z_off, sd_ratio = [], [], []
    t0 = time.perf_counter()
    for i in range(n):
        rng = np.random.default_rng(1000 + i)
        distance = float(np.exp(rng.uniform(math.log(500.0), math.log(4000.0))))
        t = gd.simulate_field(
            n_field, n_cluster=n_cluster, cluster_distance=distance, parallax_systematics="vasiliev2021", seed=i
        )
        fit = _quiet_fit(
            t, kinematics=False, field="edsd", zero_point="parallax_zeropoint_true", num_samples=500, seed=i
        )
        on, off = np.asarray(fit.posterior["D"]).ravel(), np.asarray(fit.posterior["D_stat"]).ravel()
        for key, draws in (("on", on), ("off", off)):
            for level in (0.68, 0.90):
                hits[(key, level)] += _inside(draws, distance, level)
        z_on.append((on.mean() - distance) / on.std())
        z_off.append((off.mean() - distance) / off.std())
        sd_ratio.append(on.std() / off.std())
        if (i + 1) % 10 == 0:
            print(f"  {i + 1}/{n} fields, {time.perf_counter() - t0:.0f} s", flush=True)
    lines = [
        f"{n} mock fields ({n_field} field + {n_cluster} cluster stars, D log-uniform 500-4000 pc, "
        f"Vasiliev & Baumgardt 2021 offsets), {time.perf_counter() - t0:.0f} s:",
        "",
        "| fit | inside 68 % | inside 90 % | sd of (mean - truth) / sd |",
        "|---|---|---|---|",
    ]
    for key, z in (("systematics on (default)", z_on), ("systematics off (None)", z_off)):
        k = "on" if "on" in key.split()[1] else "off"
        lines.append(f"| {key} | {hits[(k, 0.68)] / n:.2f} | {hits[(k, 0.90)] / n:.2f} | {np.std(z):.2f} |")
    se68, se90 = math.sqrt(0.68 * 0.32 / n), math.sqrt(0.9 * 0.1 / n)
    lines.append("")
    lines.append(
        f"Nominal 0.68 +- {se68:.2f} and 0.90 +- {se90:.2f} (binomial sd); the total sd is "
        f"{np.median(sd_ratio):.1f}x the statistical one (median over fields)."
    )
    return "\n".join(lines)


def cones() -> str:
    root = Path(os.environ.get("GAIA_DISTANCES_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    lines = [
        "| cone | D, systematics on [pc] | sd_stat / sd_sys | covers H&R? | D, systematics off | covers H&R? "
        "| H&R 2023 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, (lo_hr, d_hr, hi_hr) in HUNT_REFFERT.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", gd.GaiaDistancesWarning)
            t = gd.apply_zeropoint(gd.load_table(str(root / "cones" / f"{name}_edr3_box.csv")))
        fit = _quiet_fit(t, seed=0)
        row = {str(r["parameter"]): r for r in fit.summary()}["D"]
        on, off = np.asarray(fit.posterior["D"]).ravel(), np.asarray(fit.posterior["D_stat"]).ravel()
        q_on, q_off = np.quantile(on, [0.16, 0.84]), np.quantile(off, [0.16, 0.84])
        cover_on = bool(q_on[0] <= d_hr <= q_on[1])
        cover_off = bool(q_off[0] <= d_hr <= q_off[1])
        lines.append(
            f"| {name} | {on.mean():.1f} [{q_on[0]:.1f}, {q_on[1]:.1f}] | {row['sd_stat']:.1f} / {row['sd_sys']:.1f} "
            f"| {'yes' if cover_on else 'no'} | {off.mean():.1f} [{q_off[0]:.1f}, {q_off[1]:.1f}] "
            f"| {'yes' if cover_off else 'no'} | {d_hr} [{lo_hr}, {hi_hr}] |"
        )
        print(lines[-1], flush=True)
    return "\n".join(lines)


def cost(rounds: int) -> str:
    t = gd.simulate_field(2000, n_cluster=500, seed=3)
    kw = dict(zero_point="parallax_zeropoint_true", seed=1)
    _quiet_fit(t, systematics=None, **kw)  # compile
    best = {"None": math.inf, "vasiliev2021": math.inf}
    for _ in range(rounds):
        for spec in ("None", "vasiliev2021"):
            t0 = time.perf_counter()
            _quiet_fit(t, systematics=None if spec == "None" else spec, **kw)
            best[spec] = min(best[spec], time.perf_counter() - t0)
    extra = best["vasiliev2021"] / best["None"] - 1
    return (
        f"2 500-star kinematic field (default model), best of {rounds} alternating rounds, compiled: "
        f"systematics=None {best['None']:.2f} s, systematics='vasiliev2021' {best['vasiliev2021']:.2f} s "
        f"({extra:+.1%})."
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sbc", type=int, default=0, help="number of mock fields for the calibration")
    ap.add_argument("--n-field", type=int, default=400)
    ap.add_argument("--n-cluster", type=int, default=200)
    ap.add_argument("--cones", action="store_true")
    ap.add_argument("--cost", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    import jax

    print(
        f"### Systematics, {date.today()}, {platform.node() or 'host'}, {os.cpu_count()} CPUs, "
        f"JAX {jax.__version__} on {jax.default_backend()}\n"
    )
    if args.sbc:
        print(sbc(args.sbc, args.n_field, args.n_cluster) + "\n")
    if args.cones:
        print(cones() + "\n")
    if args.cost:
        print(cost(args.rounds) + "\n")


if __name__ == "__main__":
    main()
