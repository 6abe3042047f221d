"""The members' mean radial velocity integrated out of the sampler on a grid, and drawn again afterwards.

The collapsed model's log posterior must be the full model's integrated over
``v_r`` (checked against a dense float64 quadrature of the full model), the
expanded draws must follow ``v_r``'s conditional, and a grid that does not
hold the conditional must fail its checks, so that ``v_r`` is sampled instead.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from test_utils import x64

import gaia_distances as gd
import gaia_distances.core.cluster_sampling as cluster_sampling
from gaia_distances.cluster.options import fit_options_from
from gaia_distances.cluster.stars import prepare_data, select_stars
from gaia_distances.core.collapse import GRID_NODES, collapsed_model, expand_draws, parameter_grid, with_grid
from gaia_distances.core.likelihood import log_posterior, pad_star_data, padded_size
from gaia_distances.core.population import ClusterModel

FIT = {
    "zero_point": "parallax_zeropoint_true",
    "num_warmup": 100,
    "num_samples": 100,
    "extend": False,
    "systematics": None,
}


def _field() -> object:
    return gd.simulate_field(300, n_cluster=100, seed=3, magnitude_limit=18, binary_fraction=0.3)


@pytest.fixture(scope="module")
def quick_fit():
    t = _field()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return t, gd.fit_cluster(t, seed=2, **FIT)


def _data(t, model: ClusterModel, dtype):
    opts = fit_options_from(
        {"prior": None, "field": "flexible", "systematics": None, "parallax_offset_prior": None, "seed": 0}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sel = select_stars(t, zero_point="parallax_zeropoint_true", kinematics="auto", terms=opts.terms)
    data = prepare_data(sel.stars, model)
    data = pad_star_data(data, padded_size(sel.stars.n_stars))
    return jax.tree_util.tree_map(lambda x: jnp.asarray(np.asarray(x, dtype)), data)


def _insert(z_collapsed: np.ndarray, model: ClusterModel, collapsed: ClusterModel, v: np.ndarray) -> np.ndarray:
    kept = {n: i for i, n in enumerate(collapsed.names)}
    return np.stack([v if n == "v_r" else np.full(v.shape, z_collapsed[kept[n]]) for n in model.names], axis=-1)


@pytest.fixture(scope="module")
def float64_setup(quick_fit):
    """The fit's stars in float64, its draws, the collapsed model and the full model's log posterior."""
    t, fit = quick_fit
    model = fit.model
    with x64():
        data = _data(t, model, np.float64)
        full = jax.jit(jax.vmap(lambda z: log_posterior(z, data, model)))
    z = np.asarray(fit.draws, float).reshape(-1, model.n_params)
    return data, z, model, collapsed_model(model), full


def _over(full, z_collapsed, model, collapsed, v, step=6000):
    """The full model's log posterior at ``z_collapsed`` with ``v_r`` at each of ``v``."""
    parts = [full(jnp.asarray(_insert(z_collapsed, model, collapsed, v[k : k + step]))) for k in range(0, v.size, step)]
    return np.concatenate([np.asarray(p) for p in parts])


def test_the_fit_integrates_v_r_out_and_reports_it(quick_fit):
    t, fit = quick_fit
    assert fit.model.terms == ("radial_velocities",) and not fit.model.collapsed
    assert "v_r" in fit.model.names  # the fit's draws are the full model's
    assert any("integrated out on a grid" in s for s in fit.diagnostics.sampler["stages"])
    rv = fit.summary()
    row = rv[list(rv["parameter"]).index("rv")]
    assert np.isfinite(row["p50"]) and row["p16"] < row["p50"] < row["p84"]
    assert np.unique(np.asarray(fit.draws)[..., fit.model.position("v_r")]).size > 100  # drawn, not a constant


def test_perspective_keeps_v_r_in_z():
    """With the perspective projection ``v_r`` enters every member's proper motion: nothing to collapse."""
    model = ClusterModel(field="flexible", kinematics=True, perspective=True, terms=("radial_velocities",))
    assert collapsed_model(model) is None
    plain = ClusterModel(field="flexible", kinematics=True, terms=("radial_velocities",))
    collapsed = collapsed_model(plain)
    assert collapsed is not None and "v_r" not in collapsed.names
    assert set(plain.names) - set(collapsed.names) == {"v_r"}
    assert collapsed_model(ClusterModel(field="flexible", kinematics=True)) is None


def test_the_collapsed_posterior_is_the_full_one_integrated_over_v_r(float64_setup):
    """At draws of the fit, the collapsed model's log posterior equals ``ln int exp(full log posterior) dv_r``
    by a dense trapezoid rule in float64 (24 001 nodes over the whole prior)."""
    data, z, model, collapsed, full = float64_setup
    with x64():
        keep = [model.position(n) for n in collapsed.names]
        gridded = with_grid(data, model, parameter_grid(z[0], np.cov(z.T), model))
        v = np.linspace(-300.0, 300.0, 24_001)
        for row in z[[0, 133]]:
            mine = float(log_posterior(jnp.asarray(row[keep]), gridded, collapsed))
            values = np.concatenate(
                [
                    np.asarray(full(jnp.asarray(_insert(row[keep], model, collapsed, v[k : k + 6000]))))
                    for k in range(0, v.size, 6000)
                ]
            )
            top = values.max()
            dense = top + np.log(np.trapezoid(np.exp(values - top), v))
            assert mine == pytest.approx(dense, abs=1e-6)


def test_v_r_draws_follow_their_conditional(float64_setup):
    """4 000 draws of ``v_r`` at one population follow its conditional (dense float64 quadrature), by a KS
    test, and the grid passes its checks."""
    data, z, model, collapsed, full = float64_setup
    with x64():
        keep = [model.position(n) for n in collapsed.names]
        gridded = with_grid(data, model, parameter_grid(z[0], np.cov(z.T), model))
        one = z[11, keep]
        draws, check = expand_draws(np.tile(one, (4000, 1)), gridded, collapsed, seed=5)
        assert check.ok, check
        assert np.all(draws[:, [model.position(n) for n in collapsed.names]] == one)
        v = np.linspace(-300.0, 300.0, 24_001)
        values = np.concatenate(
            [
                np.asarray(full(jnp.asarray(_insert(one, model, collapsed, v[k : k + 6000]))))
                for k in range(0, v.size, 6000)
            ]
        )
    p = np.exp(values - values.max())
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (p[1:] + p[:-1]) * np.diff(v))])
    cdf /= cdf[-1]
    result = stats.kstest(draws[:, model.position("v_r")], lambda x: np.interp(x, v, cdf))
    assert result.pvalue > 0.01, result


def test_a_grid_that_misses_the_conditional_fails_its_check_and_v_r_is_sampled(monkeypatch):
    """A grid far from every member's velocity (a stand-in for a MAP in the wrong place) holds none of the
    conditional's mass: the check fails, the note says so and the fit samples ``v_r`` in ``z`` instead."""

    def far(z, cov, model):
        return 400.0 + np.sinh(np.linspace(-1.0, 1.0, GRID_NODES)), 1.0

    monkeypatch.setattr(cluster_sampling, "parameter_grid", far)
    t = _field()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = gd.fit_cluster(t, seed=2, **FIT)
    stages = fit.diagnostics.sampler["stages"]
    assert any("fails its checks, so v_r was sampled instead" in s for s in stages), stages
    row = fit.summary()[list(fit.summary()["parameter"]).index("rv")]
    assert 0.0 < row["sd"] < 10.0
