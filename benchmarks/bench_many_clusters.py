"""Many clusters: one ``fit_clusters`` call against separate ``fit_cluster`` calls, side by side.

Simulates ``--n`` cluster fields (120 to 400 stars each, a third of them
members, distances log-uniform from 300 to 3000 pc), fits them all in one
vectorised call, then one by one, and prints wall times (compilation
included, as a user meets it), the speed-up and the agreement of the two.

    python benchmarks/bench_many_clusters.py [--n 100] [--samples 1000]
"""

from __future__ import annotations

import argparse
import time
import warnings

import jax
import numpy as np

import gaia_distances as gd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    rng = np.random.default_rng(args.seed)
    fields = []
    truth = []
    for k in range(args.n):
        n = int(rng.integers(120, 400))
        d = float(np.exp(rng.uniform(np.log(300), np.log(3000))))
        fields.append(gd.simulate_field(n - n // 3, n_cluster=n // 3, cluster_distance=d, seed=1000 + k))
        truth.append(d)
    kw = dict(zero_point="parallax_zeropoint_true", num_samples=args.samples, seed=args.seed)

    t0 = time.perf_counter()
    batch = gd.fit_clusters(fields, **kw)
    t_batch = time.perf_counter() - t0
    print(f"fit_clusters (one call): {t_batch:.1f} s; parts: {batch.diagnostics['timings']}", flush=True)
    t0 = time.perf_counter()
    single = [gd.fit_cluster(f, **kw) for f in fields]
    t_single = time.perf_counter() - t0

    z = {p: [] for p in ("D", "sigma", "Q", "L")}
    dm = []
    for a, b in zip(batch.fits, single):
        for p in z:
            x, y = a.posterior[p], b.posterior[p]
            z[p].append((x.mean() - y.mean()) / np.hypot(x.std(), y.std()))
        dm.append(np.nanmean(np.abs(np.asarray(a.table["membership_prob"]) - np.asarray(b.table["membership_prob"]))))
    summ = batch.summary()
    pull = (summ["D_mean"].value - np.array(truth)) / summ["D_sd"].value
    print(f"backend {jax.default_backend()}, {args.n} clusters, {sum(len(f) for f in fields)} stars")
    print(
        f"fit_clusters (one call):   {t_batch:7.1f} s   parts: "
        + ", ".join(f"{k} {v:.1f}" for k, v in batch.diagnostics["timings"].items())
    )
    print(f"fit_cluster x {args.n}:        {t_single:7.1f} s")
    print(f"speed-up: {t_single / t_batch:.2f}x")
    for p, v in z.items():
        v = np.abs(v)
        print(f"  {p}: |batched - separate| / sd  median {np.median(v):.3f}, max {np.max(v):.3f}")
    print(f"  membership: mean |difference| median {np.median(dm):.4f}, max {np.max(dm):.4f}")
    print(
        f"  min ESS over clusters and parameters: {np.min(summ['min_ess_bulk']):.0f}; "
        f"max R-hat {np.max(summ['max_r_hat']):.4f}; divergences {int(np.sum(summ['divergences']))}"
    )
    print(f"  D pull against the truth: 68 % coverage {np.mean(np.abs(pull) < 1):.2f}")


if __name__ == "__main__":
    main()
