"""The M67 cluster fit of two source trees side by side, in one run.

Run from the project root, with a checkout of the earlier version beside it
(for example ``git worktree add ../base <commit>``)::

    python benchmarks/bench_cluster_compare.py --base ../base

Each tree runs in its own subprocess (``PYTHONPATH`` set to that tree): the
reference M67 field (``../shared/data/m67.fits.gz``, or the folder in
``$GAIA_DISTANCES_TEST_DATA``), gaiadr3-zeropoint zero points with NaN -> 0,
the reference cuts ``0.2 < parallax < 3`` mas and the reference priors, the
marginal method with default settings, two calls (the first compiles). The
table gives each population parameter's mean and sd, the difference between
the trees in units of the posterior sd, wall times and ESS/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, sys, time, warnings
from pathlib import Path
import numpy as np
import gaia_distances as gd
data = Path(os.environ["GAIA_DISTANCES_TEST_DATA"])
with warnings.catch_warnings():
    warnings.simplefilter("ignore", gd.GaiaDistancesWarning)
    t = gd.apply_zeropoint(gd.load_table(data / "m67.fits.gz"), fallback=0.0)
out = {"file": gd.__file__}
for call in ("first", "second"):
    t0 = time.perf_counter()
    fit = gd.fit_cluster(t, parallax_limits=(0.2, 3.0), truncate=False, seed=int(sys.argv[1]))
    wall = time.perf_counter() - t0
    out[call] = {
        "wall_s": wall,
        "min_ess": fit.diagnostics["min_ess_bulk"],
        "max_rhat": max(fit.diagnostics["r_hat"].values()),
        "divergences": fit.diagnostics["divergences"],
        "params": {
            k: [float(np.mean(fit.posterior[k])), float(np.std(fit.posterior[k]))] for k in ("D", "sigma", "Q", "L")
        },
        "membership_mean": float(np.nanmean(np.asarray(fit.table["membership_prob"]))),
    }
print("RESULT " + json.dumps(out))
"""


def _run(tree: Path, seed: int, data: Path) -> dict:
    # run outside both trees (python -c puts the working directory first on sys.path)
    env = {**os.environ, "PYTHONPATH": str(tree), "GAIA_DISTANCES_TEST_DATA": str(data)}
    with tempfile.TemporaryDirectory() as cwd:
        res = subprocess.run(
            [sys.executable, "-c", CHILD, str(seed)], cwd=cwd, env=env, capture_output=True, text=True, check=False
        )
    line = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
    if res.returncode or not line:
        raise SystemExit(f"{tree}: failed\n{res.stderr[-3000:]}")
    out = json.loads(line[-1][7:])
    if not Path(out["file"]).resolve().is_relative_to(tree):
        raise SystemExit(f"{tree}: imported gaia_distances from {out['file']}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, required=True, help="the earlier source tree")
    ap.add_argument("--new", type=Path, default=HERE, help="the tree under test (default: this one)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    data = Path(os.environ.get("GAIA_DISTANCES_TEST_DATA", HERE.parent / "shared" / "data")).resolve()
    runs = {name: _run(getattr(args, name).resolve(), args.seed, data) for name in ("base", "new")}
    print(f"\n### M67 marginal fit, two trees, {date.today().isoformat()}, {platform.node()}, {os.cpu_count()} CPUs\n")
    print("| tree | call | wall [s] | min ESS | ESS/s | max R-hat | div | D [pc] | sigma [pc] | Q | L [pc] |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in runs.items():
        for call in ("first", "second"):
            c = r[call]
            p = c["params"]
            cells = [f"{p[k][0]:.4g} ± {p[k][1]:.3g}" for k in ("D", "sigma", "Q", "L")]
            rate = c["min_ess"] / c["wall_s"]
            print(
                f"| {name} | {call} | {c['wall_s']:.1f} | {c['min_ess']:.0f} | {rate:.0f} | {c['max_rhat']:.4f} "
                f"| {c['divergences']} | " + " | ".join(cells) + " |"
            )
    print("\n|new mean - base mean| / sd (first calls):")
    for k in ("D", "sigma", "Q", "L"):
        a, b = runs["base"]["first"]["params"][k], runs["new"]["first"]["params"][k]
        print(f"- {k}: {abs(a[0] - b[0]) / a[1]:.3f}")
    print(
        "- mean membership_prob: base "
        f"{runs['base']['first']['membership_mean']:.4f}, new {runs['new']['first']['membership_mean']:.4f}"
    )


if __name__ == "__main__":
    main()
