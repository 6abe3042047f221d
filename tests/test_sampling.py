"""The chain runner: threads on CPU, vectorised chains (the accelerator path), reuse."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from gaia_distances.core.sampling import run_chains


def _gaussian_gen(mu, sd):
    return lambda x: 0.5 * jnp.sum(((x - mu) / sd) ** 2)


@pytest.mark.parametrize("method", ["threads", "vectorized", "sequential"])
def test_chain_methods_sample_a_gaussian(method):
    mu = jnp.array([1.0, -2.0])
    sd = jnp.array([0.5, 3.0])
    inits = [jnp.zeros(2), jnp.ones(2)]
    res = run_chains(_gaussian_gen, inits, (mu, sd), num_warmup=300, num_samples=1500, seed=3, chain_method=method)
    x = np.asarray(res["samples"])
    assert x.shape == (2, 1500, 2)
    np.testing.assert_allclose(x.reshape(-1, 2).mean(0), [1.0, -2.0], atol=0.15)
    np.testing.assert_allclose(x.reshape(-1, 2).std(0), [0.5, 3.0], rtol=0.12)
    assert res["diverging"].shape == (2, 1500) and res["num_steps"].min() >= 1


def test_same_seed_same_draws_and_threads_equal_sequential():
    args = (jnp.array([0.0]), jnp.array([1.0]))
    a = run_chains(
        _gaussian_gen, [jnp.zeros(1)] * 2, args, num_warmup=100, num_samples=200, seed=7, chain_method="threads"
    )
    b = run_chains(
        _gaussian_gen, [jnp.zeros(1)] * 2, args, num_warmup=100, num_samples=200, seed=7, chain_method="sequential"
    )
    np.testing.assert_array_equal(np.asarray(a["samples"]), np.asarray(b["samples"]))


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
    fit = gd.fit_cluster(t, zero_point="parallax_zeropoint_true")
    assert abs(fit.summary()["mean"][0] - 850.0) < 20.0
