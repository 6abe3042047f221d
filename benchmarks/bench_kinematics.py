"""The kinematic model against the parallax-only reference model, side by side in one run.

For each simulated field (``simulate_field``: proper motions from a Galactic
disc model, Gaia-like errors and correlations, a magnitude limit) both models
are fitted with the same seed:

- ``reference``: ``kinematics=False, field="edsd"`` (the reference analysis);
- ``kinematic``: the defaults (proper motions, flexible field);
- ``parallax`` (with ``--models``): the flexible field without proper motions.

``--repeat 2`` fits each model twice: the first fit's wall time includes
compilation, the second's does not.

Printed per fit: wall time (compilation included), D, Q, the cluster's proper
motion, and precision and recall of ``membership_prob > 0.5`` against the
simulated truth. ``--cases`` picks among ``demo`` (the CLI demo's field),
``2500`` (2 500 stars, G < 18), ``far`` (a cluster at 5 kpc, G < 18),
``sparse`` (1 % members of 40 000 stars) and ``big`` (50 000 stars).

    python benchmarks/bench_kinematics.py --cases demo 2500 far
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np

import gaia_distances as gd

CASES: dict[str, dict[str, Any]] = {
    "demo": dict(n_field=8000, n_cluster=800, magnitude_limit=20.7, frac_2p=0.01),
    "2500": dict(n_field=1900, n_cluster=600, cluster_distance=1500.0, magnitude_limit=18.0),
    "far": dict(n_field=2400, n_cluster=400, cluster_distance=5000.0, magnitude_limit=18.0),
    "sparse": dict(n_field=39600, n_cluster=400, cluster_distance=1200.0, magnitude_limit=20.0),
    "big": dict(n_field=49000, n_cluster=1000, cluster_distance=2000.0, magnitude_limit=20.0),
}
MODELS = {
    "reference": dict(kinematics=False, field="edsd"),
    "parallax": dict(kinematics=False),  # the default flexible field, parallaxes only
    "kinematic": {},
}


def run(case: str, model: str, seed: int) -> dict[str, Any]:
    spec = dict(CASES[case])
    n_field = spec.pop("n_field")
    t = gd.simulate_field(n_field, seed=seed, **spec)
    truth = t.meta["gaia_distances"]["simulation"]
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", gd.GaiaDistancesWarning)
        fit = gd.fit_cluster(t, zero_point="parallax_zeropoint_true", seed=seed, **MODELS[model])
    wall = time.perf_counter() - t0
    p = fit.posterior
    q_true = spec["n_cluster"] / (n_field + spec["n_cluster"])
    member = np.nan_to_num(np.asarray(fit.table["membership_prob"])) > 0.5
    is_member = np.asarray(t["is_member"])
    out = {
        "case": case,
        "model": model,
        "stars": fit.stars.n_stars,
        "wall_s": round(wall, 1),
        "timings": {k: round(v, 1) for k, v in fit.diagnostics["timings"].items()},
        "device": jax.devices()[0].device_kind,
        "D": f"{p['D'].mean():.1f} +- {p['D'].std():.1f} (true {truth['cluster_distance_pc']:.0f})",
        "Q": f"{p['Q'].mean():.4f} +- {p['Q'].std():.4f} (true {q_true:.4f})",
        "precision": round(float((member & is_member).sum() / max(member.sum(), 1)), 3),
        "recall": round(float((member & is_member).sum() / is_member.sum()), 3),
        "steps_per_draw": round(fit.diagnostics["mean_steps_per_draw"], 1),
        "min_ess_bulk": round(fit.diagnostics["min_ess_bulk"]),
        "status": fit.diagnostics["status"],
        "warnings": len(caught),
    }
    if "pmra" in p:
        out["pm"] = (
            f"({p['pmra'].mean():.3f}, {p['pmdec'].mean():.3f}) +- ({p['pmra'].std():.3f}, {p['pmdec'].std():.3f}) "
            f"(true {truth['cluster_pmra']:.3f}, {truth['cluster_pmdec']:.3f})"
        )
    return out


#: Hunt & Reffert (2023): distance 50 % (pc), pmra, pmdec (mas/yr).
HUNT_REFFERT = {
    "ngc2301": (839.6, -1.368, -2.185),
    "ngc2437": (1554.5, -3.871, 0.407),
    "ngc2506": (3140.4, -2.561, 3.965),
}


def run_cone(name: str, kinematics: bool, seed: int) -> dict[str, Any]:
    from gaia_distances.core.predictive import proper_motion_check

    root = Path(os.environ.get("GAIA_DISTANCES_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gd.GaiaDistancesWarning)
        t = gd.apply_zeropoint(gd.load_table(str(root / "cones" / f"{name}_edr3_box.csv")))
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gd.GaiaDistancesWarning)
        fit = gd.fit_cluster(t, kinematics=kinematics, seed=seed)
    p = fit.posterior
    D, pmra, pmdec = HUNT_REFFERT[name]
    out: dict[str, Any] = {
        "cone": name,
        "kinematics": kinematics,
        "wall_s": round(time.perf_counter() - t0, 1),
        "timings": {k: round(v, 1) for k, v in fit.diagnostics["timings"].items()},
        "D": f"{p['D'].mean():.1f} +- {p['D'].std():.1f} (H&R {D})",
        "Q": round(float(p["Q"].mean()), 3),
        "steps_per_draw": round(fit.diagnostics["mean_steps_per_draw"], 1),
        "status": fit.diagnostics["status"],
    }
    if kinematics:
        out["pm"] = f"({p['pmra'].mean():.4f}, {p['pmdec'].mean():.4f}) (H&R {pmra}, {pmdec})"
        sim = fit.predictive_proper_motions(num_samples=50, seed=1)
        check = proper_motion_check(np.stack([fit.stars.pmra, fit.stars.pmdec], axis=1), sim)
        out["pm_predictive_ks"] = [round(check[k]["ks"], 3) for k in ("pmra", "pmdec")]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=["demo", "2500", "far"], choices=sorted(CASES))
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=sorted(MODELS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1, help="fit each model this many times (the first compiles)")
    ap.add_argument("--cones", action="store_true", help="fit the real cones instead of the mocks")
    args = ap.parse_args()
    if args.cones:
        for name in HUNT_REFFERT:
            for kin in (True, False):
                print(json.dumps(run_cone(name, kin, args.seed)), flush=True)
        return
    for case in args.cases:
        for model in args.models:
            for k in range(args.repeat):
                out = run(case, model, args.seed)
                out["compiled_before"] = k > 0
                print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
