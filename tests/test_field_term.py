"""The default model's field term with its gradient written out equals the automatic-differentiation reference."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from test_utils import x64

import gaia_distances as gd
from gaia_distances.cluster.stars import prepare_data, select_stars
from gaia_distances.core.field_bins import field_bins_log_likelihood
from gaia_distances.core.field_term import field_log_likelihood_pm
from gaia_distances.core.kinematics import field_pm_log_term
from gaia_distances.core.population import ClusterModel, ClusterPriors, to_population

jax = pytest.importorskip("jax")
jnp = jax.numpy


@pytest.fixture(scope="module")
def stars():
    """Stars of every kind: members, a deep field, 2-parameter solutions without proper motions."""
    t = gd.simulate_field(400, n_cluster=80, magnitude_limit=19.0, frac_2p=0.05, seed=21)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gd.GaiaDistancesWarning)
        return select_stars(t, zero_point="parallax_zeropoint_true", parallax_limits=None, kinematics=True).stars


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_values_and_gradients_equal_the_autodiff_composition(stars, dtype):
    model = ClusterModel(ClusterPriors(), "flexible", True)
    rng = np.random.default_rng(4)
    weights = rng.uniform(0.0, 1.0, stars.n_stars)  # a cotangent per star, as the mixture gives

    def check():
        dt = jnp.float64 if dtype == "float64" else jnp.float32
        data = prepare_data(stars, model)
        data = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dt) if hasattr(x, "dtype") else x, data)
        w = jnp.asarray(weights, dt)

        def reference(z):
            pop = to_population(z, model)
            v, m, var = field_bins_log_likelihood(pop.field_log_w, data.bins)
            return jnp.sum(w * (v + field_pm_log_term(m, var, data.parallax, pop.kin, data.kin)))

        def written_out(z):
            pop = to_population(z, model)
            return jnp.sum(w * field_log_likelihood_pm(pop.field_log_w, pop.kin, data.bins, data.kin, data.parallax))

        ref_fn, got_fn = jax.jit(jax.value_and_grad(reference)), jax.jit(jax.value_and_grad(written_out))
        for _ in range(3):
            z = 0.3 * rng.standard_normal(model.n_params)
            z[model.position("field_log_sd_ra")] = rng.normal(-0.5, 0.5)
            ref, ref_grad = ref_fn(jnp.asarray(z, dt))
            got, got_grad = got_fn(jnp.asarray(z, dt))
            tol = 1e-10 if dtype == "float64" else 2e-5
            assert float(got) == pytest.approx(float(ref), rel=tol)
            scale = float(jnp.max(jnp.abs(ref_grad)))
            np.testing.assert_allclose(np.asarray(got_grad), np.asarray(ref_grad), rtol=tol * 10, atol=tol * 10 * scale)

    if dtype == "float64":
        with x64():
            check()
    else:
        check()
