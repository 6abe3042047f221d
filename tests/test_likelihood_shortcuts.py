"""The marginal likelihood's shortcuts against the exact sum: the certain non-members' field-only terms, the
blocked sum of big fields, and the sampler's check that the skipped stars stayed non-members."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import gaia_distances as gd
from gaia_distances.cluster.stars import prepare_data, select_stars
from gaia_distances.core import cluster_sampling, likelihood
from gaia_distances.core.likelihood import log_posterior, pad_star_data, padded_size, split_star_data
from gaia_distances.core.membership import SKIP_LOG_ODDS, certain_non_members, max_log_odds
from gaia_distances.core.population import ClusterModel, ClusterPriors
from gaia_distances.core.sampling import nuts_settings
from gaia_distances.core.search import find_map_extended

jax = pytest.importorskip("jax")
jnp = jax.numpy

MODEL = ClusterModel(ClusterPriors(), "flexible", True)


@pytest.fixture(scope="module")
def field():
    """A 768-star field (one padding bucket) with a cluster well apart from the field in proper motion."""
    t = gd.simulate_field(560, n_cluster=150, cluster_distance=1200.0, magnitude_limit=18.0, seed=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gd.GaiaDistancesWarning)
        stars = select_stars(t, zero_point="parallax_zeropoint_true", parallax_limits=None, kinematics=True).stars
    data = pad_star_data(prepare_data(stars, MODEL), padded_size(stars.n_stars))
    return data, find_map_extended(data, MODEL)


def test_the_certain_non_members_terms_are_the_exact_ones(field):
    data, start = field
    skip = certain_non_members(data, MODEL, start.z, start.covariance)
    assert 0.3 < skip[data.real()].mean() < 0.95  # the screen finds many, and keeps every likely member
    split = split_star_data(data, skip)
    assert split.field_only is not None and split.field_only.real().sum() == skip.sum()
    lp = jax.jit(lambda z, d: log_posterior(z, d, MODEL))
    rng = np.random.default_rng(2)
    chol = np.linalg.cholesky(start.covariance)
    for _ in range(4):
        z = jnp.asarray(start.z + chol @ rng.standard_normal(MODEL.n_params), jnp.float32)
        # the skipped stars' cluster terms are below e^-30 each: the sums agree to float32 rounding
        assert float(lp(z, split)) == pytest.approx(float(lp(z, data)), abs=2e-3)
        odds = max_log_odds(np.asarray(z)[None].repeat(17, axis=0), data, MODEL)
        assert np.all(odds[skip] < SKIP_LOG_ODDS + 15)


def test_the_blocked_sum_equals_the_whole(field, monkeypatch):
    data, start = field
    monkeypatch.setattr(likelihood, "BLOCK", 256)
    monkeypatch.setattr(likelihood, "BLOCKS_ABOVE", 300)

    def lp(z, blocked):
        return log_posterior(z, data, MODEL, blocked=blocked)

    z = jnp.asarray(start.z, jnp.float32)
    whole = jax.jit(jax.value_and_grad(lambda z: lp(z, False)))(z)
    blocked = jax.jit(jax.value_and_grad(lambda z: lp(z, True)))(z)
    assert float(blocked[0]) == pytest.approx(float(whole[0]), abs=2e-3)
    np.testing.assert_allclose(np.asarray(blocked[1]), np.asarray(whole[1]), rtol=1e-4, atol=1e-2)


def test_a_wrong_screen_is_caught_and_the_field_sampled_again_control_flow(field, monkeypatch):
    """The screen's check without compiling a sampler: the sampler is replaced by draws about the MAP. Half
    the stars (members too) wrongly taken for certain non-members reach high log-odds at those draws, so
    the field is sampled again with every star's cluster term, and the stages say so; a right screen is
    kept. (The slow test below runs the real sampler.)"""
    data, start = field
    monkeypatch.setattr(cluster_sampling, "SPLIT_ABOVE", 0)
    runs = []

    def fake_batch(batch, model, starts, settings, *, seed, **kwargs):
        runs.append(batch[0])
        rng = np.random.default_rng(seed)
        z = starts[0].z + 0.01 * rng.standard_normal((2, 40, starts[0].z.size))
        return [cluster_sampling.Draws(z, None, {}, {"stages": ["fake"], "gradients_per_chain": 0})]

    monkeypatch.setattr(cluster_sampling, "sample_marginal_batch", fake_batch)
    settings = nuts_settings("marginal", num_warmup=30, num_samples=60)
    wrong = data.real() & (np.arange(data.n_stars) % 2 == 0)
    monkeypatch.setattr(cluster_sampling, "certain_non_members", lambda *a, **k: wrong)
    draws = cluster_sampling.sample_marginal(data, MODEL, start, settings, seed=1, extend=False)
    assert len(runs) == 2 and runs[0].field_only is not None and runs[1] is data
    assert "sampled again with every star" in draws.sampler["stages"][0]
    runs.clear()
    right = certain_non_members(data, MODEL, start.z, start.covariance)
    monkeypatch.setattr(cluster_sampling, "certain_non_members", lambda *a, **k: right)
    draws = cluster_sampling.sample_marginal(data, MODEL, start, settings, seed=1, extend=False)
    assert len(runs) == 1 and "sampled as certain field stars (largest" in draws.sampler["stages"][0]


@pytest.mark.slow
def test_a_wrong_screen_is_caught_and_the_field_sampled_again(field, monkeypatch):
    """Stars wrongly taken for certain non-members (here: every star, members too) reach high log-odds at
    the draws; the fit samples again with every star's cluster term, and says so."""
    data, start = field
    monkeypatch.setattr(cluster_sampling, "SPLIT_ABOVE", 0)
    wrong = data.real() & (np.arange(data.n_stars) % 2 == 0)
    monkeypatch.setattr(cluster_sampling, "certain_non_members", lambda *a, **k: wrong)
    settings = nuts_settings("marginal", num_warmup=30, num_samples=60)
    draws = cluster_sampling.sample_marginal(data, MODEL, start, settings, seed=1, extend=False)
    assert "sampled again with every star" in draws.sampler["stages"][0]
