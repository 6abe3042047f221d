"""``kinematics="auto"`` on a table whose proper-motion columns are present but unusable.

One simulated field (1 100 stars, 350 members at 850 pc, G < 19), fitted with
the defaults (``kinematics="auto"``) after spoiling its proper motions:

- ``usable``: as simulated (the kinematic model is right here);
- ``errors 0``: every ``pmra_error`` and ``pmdec_error`` 0;
- ``errors NaN``: every proper-motion error NaN;
- ``pm NaN``: every ``pmra`` and ``pmdec`` NaN;
- ``parallax only``: ``kinematics=False``, the answer the spoiled cases should give.

Printed per case: whether the kinematic model ran, D (mean +- sd) against
the simulated truth, whether the truth lies within 3 sd, the fit's status and
the package's warnings about proper motions.

    python benchmarks/bench_unusable_pm.py [--cases "errors 0" "pm NaN"]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

import gaia_distances as gd

FIELD = dict(n_field=750, n_cluster=350, cluster_distance=850.0, magnitude_limit=19.0)


def _set(*names: str, value: float) -> Callable[[Any], None]:
    def spoil(t: Any) -> None:
        for name in names:
            t[name] = np.full(len(t), value) * t[name].unit

    return spoil


CASES: dict[str, tuple[Callable[[Any], None] | None, dict[str, Any]]] = {
    "usable": (None, {}),
    "errors 0": (_set("pmra_error", "pmdec_error", value=0.0), {}),
    "errors NaN": (_set("pmra_error", "pmdec_error", value=np.nan), {}),
    "pm NaN": (_set("pmra", "pmdec", value=np.nan), {}),
    "parallax only": (None, {"kinematics": False}),
}


def run(case: str, seed: int) -> dict[str, Any]:
    spoil, options = CASES[case]
    t = gd.simulate_field(seed=seed, **FIELD)
    if spoil is not None:
        spoil(t)
    truth = float(t.meta["gaia_distances"]["simulation"]["cluster_distance_pc"])
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", gd.GaiaDistancesWarning)
        fit = gd.fit_cluster(t, zero_point="parallax_zeropoint_true", seed=seed, **options)
    d = np.asarray(fit.posterior["D"], float)
    notes = [str(w.message) for w in caught if "proper motion" in str(w.message) or "kinematics" in str(w.message)]
    return {
        "case": case,
        "kinematic_model": bool(fit.diagnostics["kinematics"]),
        "D": f"{d.mean():.0f} +- {d.std():.0f} (true {truth:.0f})",
        "truth_within_3sd": bool(abs(d.mean() - truth) < 3 * d.std()),
        "status": fit.diagnostics["status"],
        "wall_s": round(time.perf_counter() - t0, 1),
        "pm_warnings": notes,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for case in args.cases:
        print(json.dumps(run(case, args.seed)), flush=True)


if __name__ == "__main__":
    main()
