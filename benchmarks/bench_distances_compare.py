"""Per-star throughput and accuracy, side by side: a previous commit against the working tree, in one run.

Run from the project root::

    python benchmarks/bench_distances_compare.py --base /work/base
    python benchmarks/bench_distances_compare.py --base ../old-checkout --n 200000 --rounds 1

``--base`` is a checkout of the earlier commit (for example a ``git worktree``
of it); it is only read. Each tree is measured in its own subprocess with
``PYTHONPATH`` pointing at it (the script checks which ``gaia_distances`` was
imported), and the two alternate for ``--rounds`` rounds so that drifts of a
shared machine hit both alike; the best round counts.

Throughput: :func:`~gaia_distances.core.summarize_posteriors` on ``--n`` mock
DR3 stars (as in ``bench_distances.py``), EDSD and per-star GGD priors,
float32, 4096-star chunks, compilation excluded (a warm-up call first).

Accuracy: the hard cases of ``tests/test_core_quadrature.py`` (fractional
parallax errors 0.001 to 10 at four distances, and negative parallaxes) under
four priors (EDSD, GGD, the GGD of HEALPix pixel 0 with L = 2.5e-6 pc, uniform
space density), in float32 and float64: the largest relative error of the
15.866th, 50th and 84.134th percentiles against the float64 brute-force
reference of ``tests/test_utils.py``, computed once in this process for both
trees, and the EDSD mode against the analytic cubic root.

Output: one Markdown table to paste into ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
QUANTILES = (0.158655, 0.5, 0.841345)
FRACTIONAL_ERRORS = [0.001, 0.003, 0.01, 0.03, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0]
TRUE_R = [30.0, 400.0, 1500.0, 6000.0]
NEGATIVE = [(-0.5, 0.1), (-2.0, 0.3), (-0.01, 1.0), (0.0, 0.5), (-5.0, 1.0), (-0.2, 0.05)]

#: name -> (keyword parameters of the core prior class, log prior in r up to a constant)
PRIORS = {
    "edsd": ("EDSDPrior", {"length_scale": 1350.0}, lambda r: 2 * np.log(r) - r / 1350.0),
    "ggd": (
        "GGDPrior",
        {"alpha": 1.4, "beta": 2.6, "length_scale": 2200.0},
        lambda r: 2.6 * np.log(r) - (r / 2200.0) ** 1.4,
    ),
    "ggd_tiny_L": (
        "GGDPrior",
        {"alpha": 0.19, "beta": 7.1, "length_scale": 2.5e-6},
        lambda r: 7.1 * np.log(r) - (r / 2.5e-6) ** 0.19,
    ),
    "uniform": ("UniformSpaceDensityPrior", {"r_max": 8000.0}, lambda r: np.where(r <= 8000.0, 2 * np.log(r), -np.inf)),
}


def hard_cases() -> tuple[np.ndarray, np.ndarray]:
    """Parallaxes and errors (mas) of the accuracy test."""
    w, s = [], []
    for r in TRUE_R:
        for fe in FRACTIONAL_ERRORS:
            w.append(1000.0 / r)
            s.append(fe * 1000.0 / r)
    for a, b in NEGATIVE:
        w.append(a)
        s.append(b)
    return np.array(w), np.array(s)


# --------------------------------------------------------------------------- the worker (one tree)


def _field(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from gaia_distances.core.astrometry import parallax_error_dr3

    rng = np.random.default_rng(seed)
    r = rng.gamma(3.0, 1350.0, n)
    g = np.clip(rng.normal(4.5, 2.5, n) + 5 * np.log10(r) - 5, 5.0, 21.0)
    s = parallax_error_dr3(g) * np.exp(rng.normal(0, 0.12, n))
    w = 1000.0 / r + s * rng.standard_normal(n)
    return w, s, rng.integers(0, 12288, n)


def _ggd_parameters(healpix: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    path = Path(os.environ.get("GAIA_DISTANCES_BJ2021_PRIOR", ROOT.parent / "shared/data/bj2021_prior_summary.csv"))
    if path.exists():
        tab = np.genfromtxt(path, delimiter=",", names=True)
        tab = tab[np.argsort(tab["healpix"])]
        return {
            "alpha": tab["GGDalpha"][healpix],
            "beta": tab["GGDbeta"][healpix],
            "length_scale": tab["GGDrlen"][healpix],
        }
    rng = np.random.default_rng(seed)
    n = len(healpix)
    return {
        "alpha": rng.uniform(0.5, 2.0, n),
        "beta": rng.uniform(0.5, 4.0, n),
        "length_scale": rng.uniform(200, 3000, n),
    }


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def worker(n: int, seed: int, chunk_size: int, repeat: int, out_path: str) -> None:
    """Measure the ``gaia_distances`` on ``sys.path`` and write the numbers to ``out_path`` (npz + json)."""
    import jax

    import gaia_distances.core as core
    from gaia_distances.core import EDSDPrior, GGDPrior, summarize_posteriors

    w, s, hp = _field(n, seed)
    priors = {
        "EDSD": EDSDPrior(length_scale=np.full(n, 1350.0)),
        "GGD": GGDPrior(**_ggd_parameters(hp, seed)),  # keywords: the field order changed between trees
    }
    dev = jax.devices()[0]
    report: dict[str, object] = {
        "module": str(Path(core.__file__).parents[2]),
        "jax": f"JAX {jax.__version__} on {dev.platform} ({dev.device_kind})",
    }
    for name, prior in priors.items():
        small = jax.tree_util.tree_map(lambda x: x[:1000], prior)
        summarize_posteriors(w[:1000], s[:1000], small, chunk_size=chunk_size)  # compile
        best = np.inf
        for _ in range(repeat):
            t0 = time.perf_counter()
            res = summarize_posteriors(w, s, prior, chunk_size=chunk_size)
            best = min(best, time.perf_counter() - t0)
        report[f"rate_{name}"] = n / best
        report[f"digest_{name}"] = _digest(res["quantiles"], res["mode"], res["flag"])

    cw, cs = hard_cases()
    arrays = {}
    for name, (cls, params, _) in PRIORS.items():
        prior = getattr(core, cls)(**{k: np.full(len(cw), v) for k, v in params.items()})
        for dtype in (np.float32, np.float64):
            res = summarize_posteriors(cw, cs, prior, dtype=dtype, n_threads=1)
            arrays[f"{name}_{dtype.__name__}_q"] = res["quantiles"]
            arrays[f"{name}_{dtype.__name__}_mode"] = res["mode"]
    np.savez(out_path, **arrays)
    Path(out_path + ".json").write_text(json.dumps(report))


# --------------------------------------------------------------------------- the driver


def _references() -> dict[str, np.ndarray]:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_utils import edsd_mode_cubic, reference_quantiles

    w, s = hard_cases()
    refs = {
        name: np.array(
            [
                reference_quantiles(w[i], s[i], log_prior, QUANTILES, r_min=1e-2, r_max=1e8, n=1_000_001)
                for i in range(len(w))
            ]
        )
        for name, (_, _, log_prior) in PRIORS.items()
    }
    refs["edsd_mode"] = edsd_mode_cubic(w, s, 1350.0)
    return refs


def _run_tree(tree: Path, args: argparse.Namespace, tmp: str, tag: str) -> tuple[dict, dict[str, np.ndarray]]:
    out = os.path.join(tmp, f"{tag}.npz")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, __file__, "--worker", out, "--n", str(args.n), "--seed", str(args.seed)]
    cmd += ["--chunk-size", str(args.chunk_size), "--repeat", str(args.repeat)]
    subprocess.run(cmd, env=env, cwd=tmp, check=True)
    report = json.loads(Path(out + ".json").read_text())
    if Path(report["module"]).resolve() != tree.resolve():
        raise RuntimeError(f"the worker for {tree} imported gaia_distances from {report['module']}")
    with np.load(out) as data:
        return report, dict(data)


def _max_rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a / b - 1)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, required=False, help="checkout of the previous commit (read only)")
    ap.add_argument("--tree", type=Path, default=ROOT, help="the tree under test (default: this working tree)")
    ap.add_argument("--n", type=int, default=1_000_000, help="stars for the throughput")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per tree (the best counts)")
    ap.add_argument("--repeat", type=int, default=2, help="timed calls per prior in each round (the best counts)")
    ap.add_argument("--chunk-size", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.n, args.seed, args.chunk_size, args.repeat, args.worker)
        return
    if args.base is None:
        ap.error("--base is required")

    refs = _references()
    trees = {"previous commit": args.base.resolve(), "working tree": args.tree.resolve()}
    labels = {name: _describe(path) for name, path in trees.items()}
    results: dict[str, list[tuple[dict, dict[str, np.ndarray]]]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.rounds):
            for name, path in trees.items():
                results[name].append(_run_tree(path, args, tmp, f"{name.replace(' ', '_')}_{k}"))

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"\n### Per-star distances, previous commit against working tree, {date.today().isoformat()}, "
        f"{platform.node()}, {cores} usable CPUs, {results['working tree'][0][0]['jax']}\n"
    )
    print(
        "| tree | EDSD stars/s | GGD stars/s | max rel. quantile error, float32 | float64 "
        "| EDSD mode vs cubic root, float32 / float64 | 10^6-star outputs |"
    )
    print("|---|---|---|---|---|---|---|")
    base_digests = None
    for name, runs in results.items():
        report, arrays = runs[0]
        rate = {p: max(r[f"rate_{p}"] for r, _ in runs) for p in ("EDSD", "GGD")}
        err = {dt: max(_max_rel(arrays[f"{p}_{dt}_q"], refs[p]) for p in PRIORS) for dt in ("float32", "float64")}
        mode = {dt: _max_rel(arrays[f"edsd_{dt}_mode"], refs["edsd_mode"]) for dt in ("float32", "float64")}
        digests = (report["digest_EDSD"], report["digest_GGD"])
        same = "reference" if base_digests is None else ("bit-identical" if digests == base_digests else "differ")
        base_digests = base_digests or digests
        print(
            f"| {name} ({labels[name]}) | {rate['EDSD']:,.0f} | {rate['GGD']:,.0f} | {err['float32']:.1e} "
            f"| {err['float64']:.1e} | {mode['float32']:.1e} / {mode['float64']:.1e} | {same} |"
        )
    (_, a), (_, b) = results["previous commit"][0], results["working tree"][0]
    hard_same = all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)
    print(
        f"\n{args.n:,} mock DR3 stars, float32, {args.chunk_size}-star chunks, best of {args.rounds} alternating "
        f"rounds x {args.repeat} calls; accuracy over {len(hard_cases()[0])} hard cases x {len(PRIORS)} priors "
        f"against the float64 brute-force reference. Hard-case outputs of the two trees "
        f"{'are bit-identical' if hard_same else 'differ'}."
    )


def _describe(path: Path) -> str:
    """The commit of ``path`` and whether its tree has changes."""
    try:
        top = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True
        ).stdout.strip()
        if Path(top).resolve() != path.resolve():
            return str(path)  # a copy inside another checkout: its commit is unknown
        commit = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return str(path)
    return f"{commit}{' + changes' if dirty else ''}"


if __name__ == "__main__":
    main()
