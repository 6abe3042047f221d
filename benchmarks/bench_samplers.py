"""The staged NUTS sampler against blackjax's adjusted MCLMC, on the same whitened posterior, in one run.

``fit_cluster`` runs as usual (default options); the posterior the staged
sampler is given (the marginal model, whitened at the MAP by the Laplace
covariance) is captured and sampled again, in the same process, by blackjax's
Metropolis-adjusted microcanonical sampler (``adjusted_mclmc_dynamic``, its
step size, trajectory length and diagonal preconditioner tuned by
``adjusted_mclmc_find_L_and_step_size``), two chains from the same kind of
start. Both are scored by the smallest bulk or tail effective sample size
over the sampled parameters (arviz), per 1 000 gradients of the two chains:
the staged sampler's gradients include every stage (pilot, adaptation,
redraws and extensions), MCLMC's its tuning.

Cases (``--cases``): ``deep`` (the 8 600-star G < 20.7 mock of
``bench_speed --cases deep``, seeds 0 and 1) and ``cone`` (the shared NGC
2437 cone, when ``../shared/data`` or ``GAIA_DISTANCES_TEST_DATA`` has it).

    python benchmarks/bench_samplers.py --cases deep cone
    python benchmarks/bench_samplers.py --cases deep --targets 0.65 0.9 --avg-steps 2 4
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("GAIA_DISTANCES_TEST_DATA", ROOT.parent / "shared" / "data"))


def min_ess(z: np.ndarray) -> tuple[float, float]:
    """The smallest bulk or tail ESS over the parameters of draws ``(chains, draws, d)``, and the largest R-hat."""
    import arviz as az

    ds = az.convert_to_dataset(np.asarray(z))
    bulk = az.ess(ds, method="bulk").to_array().values.ravel()
    tail = az.ess(ds, method="tail").to_array().values.ravel()
    r_hat = az.rhat(ds).to_array().values.ravel()
    return float(min(bulk.min(), tail.min())), float(r_hat.max())


def fit_and_capture(table: Any, **kw: Any) -> dict[str, Any]:
    """``fit_cluster(table)``, keeping the staged sampler's inputs and result (first problem)."""
    import gaia_distances as gd
    import gaia_distances.core.cluster_sampling as cs

    captured: dict[str, Any] = {}
    original = cs.sample_staged

    def capture(potential_gen: Any, centre: Any, cov: Any, data: Any, settings: Any, **options: Any) -> Any:
        captured.update(gen=potential_gen, centre=np.asarray(centre), cov=np.asarray(cov), data=data)
        t0 = time.perf_counter()
        out = original(potential_gen, centre, cov, data, settings, **options)
        captured.update(seconds=time.perf_counter() - t0, staged=out[0])
        return out

    cs.sample_staged = capture
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gd.fit_cluster(table, seed=0, **kw)
    finally:
        cs.sample_staged = original
    return captured


def mclmc_chains(captured: dict[str, Any], *, target: float, avg_steps: float, n_draws: int, n_tune: int) -> dict:
    """Two adjusted-MCLMC chains on the captured whitened posterior: draws in z, gradients per chain."""
    import blackjax
    import jax
    import jax.numpy as jnp
    from blackjax.adaptation.adjusted_mclmc_adaptation import adjusted_mclmc_find_L_and_step_size
    from blackjax.mcmc.adjusted_mclmc_dynamic import build_kernel, init, rescale

    from gaia_distances.core.nuts_segments import whitening

    d = captured["staged"].z.shape[-1]
    data = jax.tree_util.tree_map(lambda a: a[0], captured["data"])
    dtype = jax.tree_util.tree_leaves(data)[0].dtype
    centre = jnp.asarray(captured["centre"][0], dtype)
    chol = jnp.asarray(whitening(captured["cov"][0], d), dtype)
    potential = captured["gen"](centre, chol, data)
    log_density = jax.jit(lambda x: -potential(x))

    def n_steps(key: Any, avg: Any) -> Any:
        return jnp.ceil(jax.random.uniform(key) * rescale(avg)).astype(jnp.int32)

    kernel = build_kernel(integration_steps_fn=n_steps)
    tune = jax.jit(
        lambda state, key: adjusted_mclmc_find_L_and_step_size(
            kernel,
            log_density,
            n_tune * 5,  # the tuner spends 10 % + 10 % of this
            state,
            key,
            target,
            target_num_integration_steps=avg_steps,
        )
    )
    chains, tune_grads, draw_grads, accept, divergent = [], [], [], [], 0
    t0 = time.perf_counter()
    for c in range(2):
        key = jax.random.PRNGKey(c)
        k0, k1, k2, k3 = jax.random.split(key, 4)
        state = init(0.5 * jax.random.normal(k0, (d,), dtype), log_density, k1)
        state, params, n_tune_steps = tune(state, k2)
        avg = params.L / params.step_size
        algorithm = blackjax.adjusted_mclmc_dynamic(
            log_density,
            params.step_size,
            inverse_mass_matrix=params.inverse_mass_matrix,
            integration_steps_fn=n_steps,
            integration_steps_params=(avg,),
        )

        def body(s: Any, k: Any, algorithm: Any = algorithm) -> Any:
            s, info = algorithm.step(k, s)
            return s, (s.position, info.num_integration_steps, info.acceptance_rate, info.is_divergent)

        _, (xs, steps, acc, div) = jax.jit(lambda s, k, body=body: jax.lax.scan(body, s, jax.random.split(k, n_draws)))(
            state, k3
        )
        chains.append(np.asarray(centre) + np.asarray(xs) @ np.asarray(chol).T)
        # the isokinetic McLachlan integrator takes two gradients per step
        tune_grads.append(2 * int(n_tune_steps))
        draw_grads.append(2 * int(np.asarray(steps).sum()))
        accept.append(float(np.mean(acc)))
        divergent += int(np.sum(div))
    return {
        "z": np.stack(chains),
        "gradients": max(t + g for t, g in zip(tune_grads, draw_grads, strict=True)),
        "tune_gradients": max(tune_grads),
        "acceptance": round(float(np.mean(accept)), 2),
        "divergent": divergent,
        "seconds": time.perf_counter() - t0,
    }


def compare(label: str, captured: dict[str, Any], args: argparse.Namespace) -> None:
    staged = captured["staged"]
    ess, r_hat = min_ess(staged.z)
    per = ess / (2 * staged.gradients) * 1e3
    print(
        f"| {label} | staged NUTS | {staged.gradients} | {ess:.0f} | {r_hat:.4f} | **{per:.1f}** | "
        f"{captured['seconds']:.1f} s; {'; '.join(staged.stages)} |",
        flush=True,
    )
    flat = staged.z.reshape(-1, staged.z.shape[-1])
    for target in args.targets:
        for avg in args.avg_steps:
            run = mclmc_chains(captured, target=target, avg_steps=avg, n_draws=args.draws, n_tune=args.tune)
            ess, r_hat = min_ess(run["z"])
            per = ess / (2 * run["gradients"]) * 1e3
            ratio = run["z"].reshape(-1, flat.shape[1]).std(0) / flat.std(0)
            print(
                f"| {label} | adjusted MCLMC, target {target}, {avg} steps | {run['gradients']} "
                f"(tuning {run['tune_gradients']}) | {ess:.0f} | {r_hat:.4f} | **{per:.1f}** | "
                f"{run['seconds']:.1f} s; acceptance {run['acceptance']}, {run['divergent']} divergent; "
                f"posterior sd / NUTS's {ratio.min():.2f}-{ratio.max():.2f} |",
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=["deep", "cone"], choices=["deep", "cone"])
    ap.add_argument("--targets", nargs="+", type=float, default=[0.9], help="MCLMC acceptance targets")
    ap.add_argument("--avg-steps", nargs="+", type=float, default=[2.0], help="MCLMC steps per proposal")
    ap.add_argument("--draws", type=int, default=1500, help="MCLMC draws per chain")
    ap.add_argument("--tune", type=int, default=400, help="MCLMC tuning iterations (about)")
    args = ap.parse_args()

    import gaia_distances as gd

    print(
        "| field | sampler | gradients per chain | min bulk/tail ESS | max R-hat | min ESS per 1000 gradients | notes |"
    )
    print("|---|---|---|---|---|---|---|")
    if "deep" in args.cases:
        for seed in (0, 1):
            t = gd.simulate_field(8000, n_cluster=600, magnitude_limit=20.7, frac_2p=0.01, seed=seed)
            compare(f"deep mock, seed {seed}", fit_and_capture(t, zero_point="parallax_zeropoint_true"), args)
    if "cone" in args.cases:
        path = DATA / "cones" / "ngc2437_edr3_box.csv"
        if not path.exists():
            print(f"(skipped the cone: {path} not found; set GAIA_DISTANCES_TEST_DATA)")
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = gd.apply_zeropoint(gd.load_table(str(path)))
        compare("NGC 2437 cone", fit_and_capture(t), args)


if __name__ == "__main__":
    main()
