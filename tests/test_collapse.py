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
from gaia_distances.core.collapse import (
    FINER,
    GRID_NODES,
    collapsed_model,
    draw_piecewise_linear,
    expand_draws,
    grid_check,
    parameter_grid,
    with_grid,
)
from gaia_distances.core.initialisation import MapResult
from gaia_distances.core.likelihood import log_posterior, pad_star_data, padded_size
from gaia_distances.core.population import ClusterModel
from gaia_distances.core.radial_velocity import RadialVelocityData, RadialVelocityValues
from gaia_distances.core.terms import TERMS, GridIntegral, integrated_log_likelihood

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


def _synthetic(n=12, seed=0):
    """Weighted component terms and radial velocities of ``n`` stars: half of them likely members near
    31 km/s (one a binary), half field stars."""
    rng = np.random.default_rng(seed)
    member = np.arange(n) < n // 2
    lc = np.where(member, rng.normal(0.0, 1.0, n), rng.normal(-9.0, 1.0, n))
    lf = rng.normal(-2.0, 0.5, n)
    rv = np.where(member, 31.0 + rng.normal(0, 1.0, n), rng.normal(10.0, 30.0, n))
    rv[0] += 15.0  # a binary's orbit
    err = rng.uniform(0.2, 3.0, n)
    values = {"radial_velocities": RadialVelocityValues(None, np.log(0.8), np.log(0.3 / 0.7), 12.0, np.log(25.0))}
    return lc, lf, RadialVelocityData(rv, err, np.ones(n)), values


def test_the_grid_integral_is_the_dense_quadrature_of_the_term():
    """``integrated_log_likelihood`` against a dense trapezoid rule in NumPy of ``prior(v) prod_j [(e^lc_j
    p_c(rv_j|v) + e^lf_j p_f(rv_j)) / (e^lc_j + e^lf_j)]``, with rows out of order and padding."""
    lc, lf, data, values = _synthetic()
    model = ClusterModel(field="flexible", kinematics=True, terms=("radial_velocities",))
    nodes, scale = parameter_grid(np.array([30.0]), np.array([[0.5]]), _OneParameter())
    rows = np.array([5, 2, 9, 0, 1, 3, 4, 6, 7, 8, 10, 11, 0, 0, 0, 0])
    mask = (np.arange(16) < 12).astype(float)
    compact = RadialVelocityData(*(np.asarray(x)[rows] for x in data))
    with x64():
        gridded = with_grid(_fake_data(data), model, (nodes, scale))
        grid = gridded.integration["radial_velocities"]
        grid = GridIntegral(rows, mask, compact, grid.nodes, grid.log_weights, grid.scale)
        mine = float(integrated_log_likelihood(jnp.asarray(lc), jnp.asarray(lf), values, "radial_velocities", grid))
        v = np.linspace(-250.0, 250.0, 200_001)
        c, f = (
            np.asarray(x)
            for x in TERMS["radial_velocities"].log_terms(
                values["radial_velocities"]._replace(v_r=jnp.asarray(v)[:, None]), data
            )
        )
    per_node = np.sum(np.logaddexp(lc + c, lf + f) - np.logaddexp(lc, lf), axis=1) + stats.norm.logpdf(v, 0.0, 50.0)
    top = per_node.max()
    assert mine == pytest.approx(top + np.log(np.trapezoid(np.exp(per_node - top), v)), abs=1e-6)


class _OneParameter:
    """A stand-in for a model whose only entry of ``z`` is ``v_r`` (for :func:`parameter_grid`)."""

    terms = ("radial_velocities",)
    perspective = False
    collapsed = False
    priors = gd.ClusterPriors()
    names = ("v_r",)

    def position(self, name):
        return 0

    def _replace(self, **kw):
        return self


def _fake_data(data):
    from gaia_distances.core.likelihood import StarData

    n = data.rv.size
    return StarData(np.zeros(n), np.ones(n), None, np.ones(n), terms={"radial_velocities": data})


def test_the_grid_checks_catch_a_grid_that_misses_or_blurs_the_conditional():
    """A Gaussian conditional on the sinh grid: held and resolved near its centre; at the grid's end its mass
    is on the edge; far out, where the nodes are sparse, it is not resolved (the finer grid says so)."""
    t = np.linspace(-6.0, 6.0, GRID_NODES)
    fine_t = np.linspace(-6.0, 6.0, FINER * (GRID_NODES - 1) + 1)

    def log_w(tt, mean, sd):
        nodes = 30.0 + np.sinh(tt)
        w = np.full(tt.size, tt[1] - tt[0])
        w[[0, -1]] *= 0.5
        return (stats.norm.logpdf(nodes, mean, sd) + np.log(w * np.cosh(tt)))[None, :]

    def check(mean, sd):
        return grid_check(log_w(t, mean, sd), log_w(fine_t, mean, sd))

    assert check(30.5, 0.8).ok  # resolved, held
    edge = check(30.0 + np.sinh(6.0), 5.0)  # centred on the grid's last node
    assert not edge.ok and edge.edge_mass > 0.1
    blurred = check(170.0, 0.05)  # far out, where the nodes are sparse
    assert not blurred.ok and blurred.resolution > 0.1 and blurred.edge_mass < 1e-3


def test_piecewise_linear_draws_follow_their_density():
    """20 000 draws from a skewed two-mode density on unequal nodes, against its CDF (KS test)."""
    nodes = 30.0 + np.sinh(np.linspace(-4.0, 4.0, 257))
    log_p = np.logaddexp(stats.norm.logpdf(nodes, 28.0, 1.0), np.log(0.3) + stats.norm.logpdf(nodes, 33.0, 4.0))
    draws = draw_piecewise_linear(np.tile(log_p, (20_000, 1)), nodes, np.random.default_rng(3))

    def cdf(x):
        return 1.0 / 1.3 * stats.norm.cdf(x, 28.0, 1.0) + 0.3 / 1.3 * stats.norm.cdf(x, 33.0, 4.0)

    assert stats.kstest(draws, cdf).pvalue > 0.01


def test_perspective_keeps_v_r_in_z():
    """With the perspective projection ``v_r`` enters every member's proper motion: nothing to collapse."""
    model = ClusterModel(field="flexible", kinematics=True, perspective=True, terms=("radial_velocities",))
    assert collapsed_model(model) is None
    plain = ClusterModel(field="flexible", kinematics=True, terms=("radial_velocities",))
    collapsed = collapsed_model(plain)
    assert collapsed is not None and "v_r" not in collapsed.names
    assert set(plain.names) - set(collapsed.names) == {"v_r"}
    assert collapsed_model(ClusterModel(field="flexible", kinematics=True)) is None


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_grid_that_misses_the_conditional_fails_its_check_and_v_r_is_sampled(monkeypatch):
    """A grid far from every member's velocity (a stand-in for a MAP in the wrong place) holds none of the
    conditional's mass: the check fails, the stages say so and the fit samples ``v_r`` in ``z`` instead."""

    def far(z, cov, model):
        return 400.0 + np.sinh(np.linspace(-1.0, 1.0, GRID_NODES)), 1.0

    monkeypatch.setattr(cluster_sampling, "parameter_grid", far)
    monkeypatch.setattr(cluster_sampling, "worth_collapsing", lambda z, cov, model: True)  # (v_r is tight here)
    t = _field()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = gd.fit_cluster(t, seed=2, **FIT)
    stages = fit.diagnostics.sampler["stages"]
    assert any("fails its checks, so v_r was sampled instead" in s for s in stages), stages
    rv = {str(r["parameter"]): r for r in fit.summary()}["rv"]
    assert 0.0 < rv["sd"] < 10.0


def test_a_failed_grid_hands_the_fields_to_the_full_model_with_the_reason(monkeypatch):
    """The control flow alone (the samplers stubbed): where the collapsed run's grid fails, the full model is
    sampled from the same starts, and each field's stages begin with the reason."""
    calls = {}

    def collapsed(data, model, collapsed, starts, settings, seed, progress, extend):
        calls["collapsed"] = collapsed.names
        return None, "v_r integrated out on a grid (...): the grid fails its checks, so v_r was sampled instead"

    def full(data, model, starts, settings, seed, progress, extend, search_data):
        calls["full"] = (model.names, starts)
        return [cluster_sampling.Draws(np.zeros((2, 3, model.n_params)), None, {}, {"stages": ["pilot"]})]

    monkeypatch.setattr(cluster_sampling, "_sample_collapsed", collapsed)
    monkeypatch.setattr(cluster_sampling, "_sample_full", full)
    model = ClusterModel(field="flexible", kinematics=True, terms=("radial_velocities",))
    loose = MapResult(np.zeros(model.n_params), 0.0, np.eye(model.n_params))  # v_r's sd 1 km/s: collapsed
    out = cluster_sampling.sample_marginal_batch([None], model, [loose], None, seed=0)
    assert "v_r" not in calls["collapsed"] and calls["full"] == (model.names, [loose])
    assert out[0].sampler["stages"][0].endswith("so v_r was sampled instead") and out[0].sampler["stages"][1] == "pilot"
    calls.clear()  # v_r pinned down to 0.1 km/s: Gaussian, sampled in z at once
    tight = loose._replace(covariance=0.01 * np.eye(model.n_params))
    cluster_sampling.sample_marginal_batch([None], model, [tight], None, seed=0)
    assert "collapsed" not in calls and calls["full"][0] == model.names
    calls.clear()
    plain = ClusterModel(field="flexible", kinematics=True)  # nothing to integrate out
    cluster_sampling.sample_marginal_batch(
        [None], plain, [MapResult(np.zeros(plain.n_params), 0.0, None)], None, seed=0
    )
    assert "collapsed" not in calls and calls["full"][0] == plain.names
