"""Per-star distance throughput: adaptive quadrature against per-star NUTS.

Run from the project root::

    python benchmarks/bench_distances.py            # 10^6 stars
    python benchmarks/bench_distances.py --n 10000000 --nuts-stars 512

Everything is measured side by side in one run, because absolute times on
shared machines are noisy. Only ``gaia_distances.core`` is used (JAX + NumPy,
no astropy), so the script runs unchanged on a bare GPU machine. The
Bailer-Jones 2021 prior table is read with NumPy when it is found (from
``$GAIA_DISTANCES_BJ2021_PRIOR`` or ``../shared/data``); otherwise per-star GGD
parameters are drawn at random over the same ranges.

Output: one Markdown table to paste into ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import date
from pathlib import Path

import jax
import numpy as np

from gaia_distances.core import EDSDPrior, GGDPrior, summarize_posteriors
from gaia_distances.core.astrometry import parallax_error_dr3


def _field(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A mock DR3 field: EDSD distances, G from a luminosity function, DR3 errors."""
    rng = np.random.default_rng(seed)
    r = rng.gamma(3.0, 1350.0, n)
    g = np.clip(rng.normal(4.5, 2.5, n) + 5 * np.log10(r) - 5, 5.0, 21.0)
    s = parallax_error_dr3(g) * np.exp(rng.normal(0, 0.12, n))
    w = 1000.0 / r + s * rng.standard_normal(n)
    healpix = rng.integers(0, 12288, n)
    return w, s, healpix


def _ggd_parameters(healpix: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    root = Path(__file__).resolve().parents[1]
    path = Path(os.environ.get("GAIA_DISTANCES_BJ2021_PRIOR", root.parent / "shared/data/bj2021_prior_summary.csv"))
    if path.exists():
        tab = np.genfromtxt(path, delimiter=",", names=True)
        order = np.argsort(tab["healpix"])
        tab = tab[order]
        return tab["GGDrlen"][healpix], tab["GGDalpha"][healpix], tab["GGDbeta"][healpix], "BJ2021 table"
    rng = np.random.default_rng(seed)
    n = len(healpix)
    return rng.uniform(200, 3000, n), rng.uniform(0.5, 2.0, n), rng.uniform(0.5, 4.0, n), "random GGD"


def _time(fn, repeat: int = 1) -> float:
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="stars for the quadrature")
    ap.add_argument("--nuts-stars", type=int, default=256, help="stars for per-star NUTS")
    ap.add_argument("--chunk-size", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--peak-gflops", type=float, default=None, help="hardware float32 peak, for the fraction reached")
    ap.add_argument("--peak-gbps", type=float, default=None, help="hardware memory bandwidth (GB/s)")
    args = ap.parse_args()

    w, s, hp = _field(args.n, args.seed)
    L, a, b, source = _ggd_parameters(hp, args.seed)
    priors = {
        "EDSD (L = 1350 pc)": EDSDPrior(np.full(args.n, 1350.0)),
        f"GGD per star ({source})": GGDPrior(alpha=a, beta=b, length_scale=L),
    }
    rows = []
    for name, prior in priors.items():
        small = jax.tree_util.tree_map(lambda x: x[:1000], prior)
        t_first = _time(lambda sp=small: summarize_posteriors(w[:1000], s[:1000], sp, chunk_size=args.chunk_size))
        dt = _time(lambda p=prior: summarize_posteriors(w, s, p, chunk_size=args.chunk_size), repeat=2)
        rows.append((f"quadrature, {name}, float32", args.n, dt, args.n / dt, f"first 1000-star call {t_first:.2f} s"))

    # float64 on a subset, for accuracy/speed trade-off
    m = min(args.n, 200_000)
    p64 = EDSDPrior(np.full(m, 1350.0))
    summarize_posteriors(w[:1000], s[:1000], EDSDPrior(np.full(1000, 1350.0)), dtype=np.float64)
    dt64 = _time(lambda: summarize_posteriors(w[:m], s[:m], p64, dtype=np.float64), repeat=2)
    q64 = summarize_posteriors(w[:m], s[:m], p64, dtype=np.float64)["quantiles"]
    q32 = summarize_posteriors(w[:m], s[:m], EDSDPrior(np.full(m, 1350.0)))["quantiles"]
    maxrel = float(np.nanmax(np.abs(q32 / q64 - 1)))
    rows.append(("quadrature, EDSD, float64", m, dt64, m / dt64, f"float32 vs float64 max rel diff {maxrel:.1e}"))

    # per-star NUTS, vectorised over stars (the validation method)
    from gaia_distances.core.nuts import per_star_settings, sample_log_distances

    k = args.nuts_stars
    pk = EDSDPrior(np.full(k, 1350.0))
    init = np.log(summarize_posteriors(w[:k], s[:k], pk)["quantiles"][:, 1])
    settings = per_star_settings(num_warmup=500, num_samples=1000)
    dt_nuts = _time(lambda: sample_log_distances(w[:k], s[:k], pk, init, settings=settings))
    rows.append(("NUTS per star (500 warm-up + 1000 draws, 2 chains)", k, dt_nuts, k / dt_nuts, "compile included"))

    dev = jax.devices()[0]
    print(
        f"\n### Per-star distances, {date.today().isoformat()}, {platform.node()}, "
        f"{os.cpu_count()} CPUs, JAX {jax.__version__} on {dev.platform} ({dev.device_kind})\n"
    )
    print("| method | stars | wall time [s] | stars/s | note |")
    print("|---|---|---|---|---|")
    for name, n, dt, rate, note in rows:
        print(f"| {name} | {n:,} | {dt:.3f} | {rate:,.0f} | {note} |")
    quad_rate = rows[0][3]
    print(f"\nQuadrature / NUTS speed-up (EDSD): {quad_rate / rows[-1][3]:,.0f}x")
    flops, nbytes = _cost_per_star(args.chunk_size)
    if flops:
        gflops = flops * quad_rate / 1e9
        gbps = nbytes * quad_rate / 1e9
        print(
            f"XLA cost analysis (EDSD, float32): {flops:,.0f} flop and {nbytes:,.0f} bytes per star; "
            f"at {quad_rate:,.0f} stars/s that is {gflops:,.1f} GFLOP/s and {gbps:,.2f} GB/s"
            + (
                f", {100 * gflops / args.peak_gflops:.1f} % of the {args.peak_gflops:,.0f} GFLOP/s peak"
                if args.peak_gflops
                else ""
            )
            + (f", {100 * gbps / args.peak_gbps:.2f} % of {args.peak_gbps:,.0f} GB/s" if args.peak_gbps else "")
        )


def _cost_per_star(chunk: int) -> tuple[float, float]:
    """Flops and bytes per star from XLA's cost analysis of one compiled chunk (0 if unavailable)."""
    from gaia_distances.core import quadrature as q
    from gaia_distances.core.numerics import ONE_SIGMA_QUANTILES

    w = jax.numpy.ones(chunk, jax.numpy.float32)
    prior = EDSDPrior(jax.numpy.full(chunk, 1350.0, jax.numpy.float32))
    static = dict(
        quantiles=ONE_SIGMA_QUANTILES,
        n_nodes=128,
        n_scan=48,
        k_like=10.0,
        scan_drop=30.0,
        log_eps=-34.5,
        prior_dominated_threshold=0.2,
    )
    try:
        cost = q._kernel_jit.lower(w, 0.1 * w, prior, **static).compile().cost_analysis()
    except Exception:  # cost analysis is backend-dependent
        return 0.0, 0.0
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost.get("flops", 0.0)) / chunk, float(cost.get("bytes accessed", 0.0)) / chunk


if __name__ == "__main__":
    main()
