"""The one NUTS runner: threads on CPU, vectorised chains (the accelerator path), reuse, progress per run."""

from __future__ import annotations

import threading

import jax.numpy as jnp
import numpy as np
import pytest

from gaia_distances.core.sampling import NutsSettings, chain_iterations, nuts_settings, run_chains


def _gaussian_gen(mu, sd):
    return lambda x: 0.5 * jnp.sum(((x - mu) / sd) ** 2)


GAUSS = (jnp.array([1.0, -2.0]), jnp.array([0.5, 3.0]))
#: Short runs; the compiled chain does not depend on the number of chains, so these tests share one program.
SHORT = NutsSettings(num_warmup=100, num_samples=200, num_chains=2)


@pytest.mark.parametrize("method", ["threads", "vectorized", "sequential"])
def test_chain_methods_sample_a_gaussian(method):
    settings = nuts_settings("per_star", num_warmup=300, num_samples=1500, num_chains=2)
    res = run_chains(_gaussian_gen, [jnp.zeros(2), jnp.ones(2)], GAUSS, settings, seed=3, chain_method=method)
    x = np.asarray(res.samples)
    assert x.shape == (2, 1500, 2)
    np.testing.assert_allclose(x.reshape(-1, 2).mean(0), [1.0, -2.0], atol=0.15)
    np.testing.assert_allclose(x.reshape(-1, 2).std(0), [0.5, 3.0], rtol=0.12)
    assert res.diverging.shape == (2, 1500) and res.num_steps.min() >= 1
    assert res.step_size.shape == (2,) and np.all(res.step_size > 0)


def test_same_seed_same_draws_and_threads_equal_sequential():
    a = run_chains(_gaussian_gen, [jnp.zeros(2)] * 2, GAUSS, SHORT, seed=7, chain_method="threads")
    b = run_chains(_gaussian_gen, [jnp.zeros(2)] * 2, GAUSS, SHORT, seed=7, chain_method="sequential")
    np.testing.assert_array_equal(np.asarray(a.samples), np.asarray(b.samples))
    with pytest.raises(ValueError, match="starting points"):
        run_chains(_gaussian_gen, [jnp.zeros(2)] * 3, GAUSS, SHORT, seed=7)


def _counter():
    lock = threading.Lock()
    calls = []

    def progress(k):
        with lock:
            calls.append(k)

    return progress, calls


def test_two_runs_in_two_threads_each_report_to_their_own_progress():
    """Concurrent runs share one compiled program but each advances only its own bar, to its own total."""
    settings = SHORT
    other = SHORT._replace(num_chains=3)  # the same program, another total
    jobs = {"a": settings, "b": settings, "c": other}
    counters = {name: _counter() for name in jobs}
    barrier = threading.Barrier(len(jobs))
    errors = []

    def run(name, seed):
        try:
            barrier.wait()
            run_chains(
                _gaussian_gen,
                [jnp.full(2, 0.1 * k) for k in range(jobs[name].num_chains)],
                GAUSS,
                jobs[name],
                seed=seed,
                chain_method="threads",
                progress=counters[name][0],
            )
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(name, k)) for k, name in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for name, s in jobs.items():
        calls = counters[name][1]
        assert sum(calls) == chain_iterations(s, "threads") == s.num_chains * s.iterations, name
    assert chain_iterations(other, "threads") != chain_iterations(settings, "threads")


def test_vectorized_chains_report_one_counter():
    """Vectorised chains run as one program: the bar's total is one chain's iterations."""
    settings = SHORT._replace(num_chains=3)
    progress, calls = _counter()
    inits = [jnp.zeros(2), jnp.ones(2), -jnp.ones(2)]
    res = run_chains(_gaussian_gen, inits, GAUSS, settings, seed=2, chain_method="vectorized", progress=progress)
    assert np.asarray(res.samples).shape == (3, 200, 2)
    assert chain_iterations(settings, "vectorized") == settings.iterations == 300
    assert sum(calls) == 300
    progress, calls = _counter()
    run_chains(_gaussian_gen, inits, GAUSS, settings, seed=2, chain_method="sequential", progress=progress)
    assert sum(calls) == chain_iterations(settings, "sequential") == 900


@pytest.mark.gpu
def test_quadrature_and_cluster_fit_on_gpu():
    """Runs only where JAX sees a GPU (``pytest -m gpu``)."""
    import jax

    if not any(d.platform == "gpu" for d in jax.devices()):
        pytest.skip("JAX sees no GPU")
    import gaia_distances as gd
    from gaia_distances.core import EDSDPrior, summarize_posteriors

    rng = np.random.default_rng(0)
    n = 100_000
    w = rng.uniform(0.1, 3.0, n)
    s = rng.uniform(0.01, 1.0, n)
    out = summarize_posteriors(w, s, EDSDPrior(np.full(n, 1350.0)))
    cpu = jax.devices("cpu")[0]
    with jax.default_device(cpu):
        ref = summarize_posteriors(w[:1000], s[:1000], EDSDPrior(np.full(1000, 1350.0)))
    np.testing.assert_allclose(out["quantiles"][:1000], ref["quantiles"], rtol=1e-4)
    t = gd.simulate_field(2000, n_cluster=500, seed=1)
    fit = gd.fit_cluster(t, kinematics=False, field="edsd", zero_point="parallax_zeropoint_true")
    assert abs(fit.summary()["mean"][0] - 850.0) < 20.0


def test_extended_models_cap_the_tree_depth():
    """The extended models' trajectories stop at 255 leapfrog steps unless asked otherwise; others at 1 023."""
    from gaia_distances.core.sampling import EXTENDED_MAX_TREE_DEPTH, nuts_settings

    assert EXTENDED_MAX_TREE_DEPTH == 8
    assert nuts_settings("marginal").max_tree_depth == 8
    assert nuts_settings("marginal", max_tree_depth=10).max_tree_depth == 10
    assert nuts_settings("joint").max_tree_depth == 10
