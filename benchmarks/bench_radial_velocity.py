"""The radial-velocity term: two groups that only radial velocities tell apart, and the shared cones.

Run from the project root::

    python benchmarks/bench_radial_velocity.py --part groups --n-mocks 5
    python benchmarks/bench_radial_velocity.py --part cones

``--part groups``: a G < 18 field (3 000 stars) holds two groups at the same
distance with the same space velocity but for ``--delta`` km/s along the line
of sight (so the same proper motion): group A (200 stars, the cluster) and
group B (``--n-b`` stars), 30 % of both in binaries. Proper motions and
parallaxes alone cannot tell them apart. Each mock is fitted with the
defaults, with and without the radial-velocity term, side by side; the table
gives the precision and recall of ``membership_prob > 0.5`` for group A, over
all stars and over the stars with a radial velocity, and the fitted ``rv``.

``--part cones``: the three shared EDR3 cones (their DR2 radial velocities),
fitted with and without the term: ``rv`` against Hunt & Reffert (2023), and
``D``, ``pmra``, ``pmdec`` with and without it.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import vstack

import gaia_distances as gd
from gaia_distances.columns import column_values
from gaia_distances.core.kinematics import sky_basis
from gaia_distances.simulate import M67_VELOCITY_KMS

DATA = Path(os.environ.get("GAIA_DISTANCES_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
#: Hunt & Reffert (2023) mean DR3 radial velocities (km/s): mean, error (../shared/data/README.md).
HUNT_REFFERT_RV = {"ngc2301": (25.80, 0.96), "ngc2437": (44.67, 2.00), "ngc2506": (82.35, 0.99)}
CENTRE = (132.846, 11.814)


def _fit(t: Any, seed: int, **kw: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = gd.fit_cluster(t, seed=seed, **kw)
    return fit, time.perf_counter() - t0


def _precision_recall(p: np.ndarray, truth: np.ndarray, rows: np.ndarray) -> tuple[float, float]:
    chosen = (p > 0.5) & rows
    tp = float((chosen & truth).sum())
    return tp / max(chosen.sum(), 1), tp / max((truth & rows).sum(), 1)


def two_groups(i: int, delta: float, n_b: int) -> tuple[Any, float]:
    """The mock field of group A and the field, plus group B; A's true mean radial velocity."""
    n_hat = sky_basis(*CENTRE)[2]
    v_a = np.asarray(M67_VELOCITY_KMS)
    common = {"cluster_distance": 850.0, "magnitude_limit": 18.0, "binary_fraction": 0.3}
    a = gd.simulate_field(3000, n_cluster=200, cluster_velocity=tuple(v_a), seed=100 + i, **common)
    b = gd.simulate_field(0, n_cluster=n_b, cluster_velocity=tuple(v_a + delta * n_hat), seed=500 + i, **common)
    a["group"] = np.where(np.asarray(a["is_member"]), "A", "field")
    b["group"] = "B"
    b["is_member"] = False
    t = vstack([a, b], metadata_conflicts="silent")
    return t, float(n_hat @ v_a)


def part_groups(args: Any) -> None:
    print(
        f"\n### Two groups that only radial velocities tell apart, {date.today().isoformat()}, {platform.node()}, "
        f"{os.cpu_count()} CPUs: 3 000 field stars, group A 200 stars, group B {args.n_b}, {args.delta:g} km/s "
        "apart along the line of sight, 30 % binaries\n"
    )
    print(
        "| mock | term | precision A (all) | recall A (all) | precision A (with RV) | recall A (with RV) "
        "| rv | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for i in range(args.n_mocks):
        t, rv_a = two_groups(i, args.delta, args.n_b)
        truth = np.asarray(t["group"]) == "A"
        has_rv = np.isfinite(np.asarray(t["radial_velocity"], float))
        for term in ("auto", False):
            fit, wall = _fit(t, seed=i, zero_point="parallax_zeropoint_true", systematics=None, radial_velocities=term)
            p = np.nan_to_num(np.asarray(fit.table["membership_prob"], float))
            pa, ra = _precision_recall(p, truth, np.ones_like(truth))
            pv, rvv = _precision_recall(p, truth, has_rv)
            rows = {r["parameter"]: r for r in fit.summary()}
            rv = f"{rows['rv']['mean']:.2f} ± {rows['rv']['sd']:.2f} (A: {rv_a:.2f})" if "rv" in rows else "-"
            label = "with" if term == "auto" else "without"
            print(f"| {i} | {label} | {pa:.3f} | {ra:.3f} | {pv:.3f} | {rvv:.3f} | {rv} | {wall:.1f} |", flush=True)


def part_cones(args: Any) -> None:
    print(
        f"\n### The shared cones with and without radial velocities, {date.today().isoformat()}, "
        f"{platform.node()}, {os.cpu_count()} CPUs\n"
    )
    print(
        "| cone | velocities used | term | rv (km/s) | Hunt & Reffert 2023 | D (pc) | pmra | pmdec | status | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, (hr, hr_err) in HUNT_REFFERT_RV.items():
        path = DATA / "cones" / f"{name}_edr3_box.csv"
        if not path.exists():
            print(f"| {name} | (not found: {path}) |")
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = gd.apply_zeropoint(gd.load_table(str(path)))
        n_rv = int(np.isfinite(column_values(t, "dr2_radial_velocity")).sum())
        for term in ("auto", False):
            fit, wall = _fit(t, seed=1, radial_velocities=term)
            rows = {r["parameter"]: r for r in fit.summary()}
            rv = f"{rows['rv']['mean']:.2f} ± {rows['rv']['sd']:.2f}" if "rv" in rows else "-"

            def cell(k: str, digits: int, rows: dict[str, Any] = rows) -> str:
                return f"{rows[k]['mean']:.{digits}f} ± {rows[k]['sd']:.{digits}f}"

            label = "with" if term == "auto" else "without"
            print(
                f"| {name} | {n_rv} | {label} | {rv} | {hr:.2f} ± {hr_err:.2f} | {cell('D', 1)} | {cell('pmra', 3)} | "
                f"{cell('pmdec', 3)} | {fit.diagnostics['status']} | {wall:.1f} |",
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("groups", "cones"), default="groups")
    ap.add_argument("--n-mocks", type=int, default=5)
    ap.add_argument("--delta", type=float, default=10.0, help="group B's extra radial velocity (km/s)")
    ap.add_argument("--n-b", type=int, default=150, help="stars in group B")
    args = ap.parse_args()
    part_groups(args) if args.part == "groups" else part_cones(args)


if __name__ == "__main__":
    main()
