"""The EDSD field's pass-probability table (``selection.edsd_log_pass_table``): this tree against a baseline
commit's, side by side in one process.

A fit with the EDSD field and parallax limits tabulates, for every star, ``ln P(lo < w_obs < hi | EDSD(L))``
on 32 values of ``ln L`` (10 pc to 15 kpc) and its slope. The script times both trees' tables on the
parallax errors of the test suite's truncated field (1 900 stars, ``simulate_field(1500, n_cluster=400,
seed=21)``) for four pairs of limits (best of three), and checks both against a dense trapezoid rule in
``ln r`` (400 001 nodes, float64) on 320 (star, L) pairs per pair of limits and on the far-tail cases of
``tests/test_truncation.py``.

    python benchmarks/bench_truncation.py --baseline 80537e8
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
from scipy.special import ndtr

ROOT = Path(__file__).resolve().parents[1]
LIMITS = [(-1.0, 50.0), (0.2, 3.0), (0.5, 1.0), (-0.5, 0.3)]
FAR_TAIL = [(16.0, 0.066, 0.2, 3.0), (41.0, 0.0179, 0.5, 1.0)]


def _baseline_module(ref: str):
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{ref}:gaia_distances/core/selection.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp(prefix="bench_truncation_")) / "selection_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("selection_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _reference(s: float, lo: float, hi: float, L: float) -> float:
    u = np.linspace(math.log(L) - 12.0, math.log(L) + 5.0, 400_001)
    p = np.exp(3.0 * (u - math.log(L)) - np.exp(u) / L - math.log(2.0))
    w = 1000.0 * np.exp(-u)
    value = np.trapezoid(p * (ndtr((hi - w) / s) - ndtr((lo - w) / s)), u)
    return math.log(value) if value > 0 else -math.inf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True, help="git ref whose table to compare with")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import gaia_distances as gd
    from gaia_distances.core import selection

    old = _baseline_module(args.baseline)
    t = gd.simulate_field(1500, n_cluster=400, seed=21)
    s = np.asarray(t["parallax_error"], float)
    n = s.size
    grid = np.linspace(math.log(10.0), math.log(15000.0), 32)
    rng = np.random.default_rng(0)
    print(f"## bench_truncation, {date.today().isoformat()}, {platform.node()}, {os.cpu_count()} CPUs\n")
    print(f"{n} stars, {grid.size} values of L; times: best of three (s); errors: |ln P - reference|, ln P > -20\n")
    print("| limits (mas) | baseline s | this tree s | baseline max err | this tree max err |")
    print("|---|---|---|---|---|")
    for lo, hi in LIMITS:
        lo_a, hi_a = np.full(n, lo), np.full(n, hi)
        times, values = {}, {}
        for label, module in (("baseline", old), ("new", selection)):
            best = math.inf
            for _ in range(3):
                t0 = time.perf_counter()
                values[label], _ = module.edsd_log_pass_table(s, lo_a, hi_a, grid)
                best = min(best, time.perf_counter() - t0)
            times[label] = best
        errors = {"baseline": 0.0, "new": 0.0}
        rows, cols = rng.integers(0, n, 320), rng.integers(0, grid.size, 320)
        for i, j in zip(rows, cols):
            ref = _reference(s[i], lo, hi, math.exp(grid[j]))
            if ref > -20:
                for label in errors:
                    errors[label] = max(errors[label], abs(values[label][i, j] - ref))
        print(
            f"| {lo}, {hi} | {times['baseline']:.2f} | {times['new']:.2f} "
            f"| {errors['baseline']:.1e} | {errors['new']:.1e} |"
        )
    print("\nfar tail (L pc, s mas, lo, hi): error of ln P, baseline / this tree")
    for L, err, lo, hi in FAR_TAIL:
        ref = _reference(err, lo, hi, L)
        got = [
            float(
                m.edsd_log_pass_table(np.array([err]), np.array([lo]), np.array([hi]), np.array([math.log(L)]))[0][0, 0]
            )
            for m in (old, selection)
        ]
        print(f"  ({L}, {err}, {lo}, {hi}): ln P = {ref:.3f}; {abs(got[0] - ref):.1e} / {abs(got[1] - ref):.1e}")


if __name__ == "__main__":
    main()
