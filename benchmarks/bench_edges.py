"""Kinematic fits at the edges of the input: a cluster around a celestial pole, and absurd proper motions.

Run from the project root, against the code at ``--code`` (default: this
tree), one case at a time::

    python benchmarks/bench_edges.py --code /path/to/checkout --cases north south absurd

1. ``north``: a 180 pc cluster (100 members, M67's space velocity) with 1 000
   field stars in a 4 deg cone centred on the north celestial pole, fitted
   with ``perspective=True`` (``north-flat``: the same without it).
2. ``south``: the same cone centred at dec = -89.5 deg (``south-flat``:
   without the perspective).
3. ``absurd``: 1 000 field stars and 100 members at 850 pc (the default
   cone), with 5 field stars' pmra set to 10^6 mas/yr.

For each: D, pmra, pmdec against the truth, the status, max R-hat and min
bulk ESS over every reported parameter, and the wall time. The true proper
motion is the cluster's at its distance, in the frame of the fit's centre
(the stars' mean direction: that of ``perspective=True`` on any code, and of
every kinematic fit with ``ra``/``dec`` since proper motions are carried to
the field's centre). Near a pole the centre's RA, and so the split into
pmra and pmdec, depends on where the stars lie, so the total proper motion
``|pm|`` is shown too.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from datetime import date
from pathlib import Path

import numpy as np


def _truth_pm_at_centre(t, velocity, distance_pc: float) -> np.ndarray:
    """The cluster's proper motion at ``distance_pc`` (mas/yr) in the frame of the stars' mean direction."""
    from gaia_distances.core.astrometry import proper_motion_from_velocity

    a, d = np.deg2rad(np.asarray(t["ra"], float)), np.deg2rad(np.asarray(t["dec"], float))
    r = np.stack([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)]).mean(axis=1)
    r /= np.linalg.norm(r)
    ra0, dec0 = np.rad2deg(np.arctan2(r[1], r[0])), np.rad2deg(np.arcsin(r[2]))
    pm = proper_motion_from_velocity(ra0, dec0, 1000.0 / distance_pc, np.asarray(velocity, float))
    return np.array([float(pm.pmra), float(pm.pmdec)])


def _case(name: str, seed: int):
    """The table, the fit's options and the truth of one case."""
    from astropy import units as u

    import gaia_distances as gd

    if name == "absurd":
        t = gd.simulate_field(1000, n_cluster=100, seed=seed)
        field = np.flatnonzero(~np.asarray(t["is_member"]))[:5]
        t["pmra"][field] = 1e6 * u.mas / u.yr
        return t, {}, 850.0
    dec = {"north": 90.0, "south": -89.5}[name.split("-")[0]]
    t = gd.simulate_field(1000, n_cluster=100, cluster_distance=180.0, centre=(0.0, dec), radius=4 * u.deg, seed=seed)
    return t, {"perspective": not name.endswith("-flat")}, 180.0


def run(name: str, seed: int) -> str:
    import gaia_distances as gd

    t, options, distance = _case(name, seed)
    sim = t.meta["gaia_distances"]["simulation"]
    true_pm = _truth_pm_at_centre(t, sim["cluster_velocity_kms"], distance)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", gd.GaiaDistancesWarning)
        fit = gd.fit_cluster(t, zero_point="parallax_zeropoint_true", seed=seed, progress=False, **options)
    wall = time.perf_counter() - t0
    p, d = fit.posterior, fit.diagnostics
    pm = np.array([p["pmra"].mean(), p["pmdec"].mean()])
    status = "ok" if d["status"] == "ok" else d["status"][:90]
    flagged = int(np.sum(np.asarray(fit.table["cluster_flag"]) & 16)) // 16
    notes = [str(w.message)[:70] for w in caught if "proper motion no star" in str(w.message)]
    return (
        f"| {name} | {p['D'].mean():.1f} ± {p['D'].std():.1f} (true {distance:g}) "
        f"| {pm[0]:.2f} ± {p['pmra'].std():.2f} (true {true_pm[0]:.2f}) "
        f"| {pm[1]:.2f} ± {p['pmdec'].std():.2f} (true {true_pm[1]:.2f}) "
        f"| {np.hypot(*pm):.2f} (true {np.hypot(*true_pm):.2f}) "
        f"| {status} | {max(d['r_hat'].values()):.3f} | {d['min_ess_bulk']:.0f} | {wall:.0f} "
        f"| {flagged} | {'; '.join(notes) or '-'} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--code", default=str(Path(__file__).resolve().parents[1]), help="checkout to import from")
    ap.add_argument(
        "--cases",
        nargs="+",
        default=["north", "south", "absurd"],
        choices=["north", "south", "north-flat", "south-flat", "absurd"],
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--header", action="store_true", help="print the table's header first")
    args = ap.parse_args()
    sys.path.insert(0, args.code)
    import gaia_distances as gd

    assert Path(gd.__file__).resolve().is_relative_to(Path(args.code).resolve()), gd.__file__
    if args.header:
        print(f"\n### edges, {date.today().isoformat()}, code at {args.code}\n")
        print(
            "| case | D [pc] | pmra [mas/yr] | pmdec [mas/yr] | pm [mas/yr] | status | max R-hat | min bulk ESS "
            "| wall [s] | flagged 16 | warning |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.cases:
        print(run(name, args.seed), flush=True)


if __name__ == "__main__":
    main()
