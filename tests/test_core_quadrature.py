"""The quadrature against float64 high-resolution references and analytic results."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_utils import edsd_mode_cubic, reference_quantiles, x64

from gaia_distances.core import (
    DistanceFlag,
    DistributionPrior,
    EDSDPrior,
    GGDPrior,
    UniformSpaceDensityPrior,
    summarize_posteriors,
)
from gaia_distances.core.numerics import ONE_SIGMA_QUANTILES

FRACTIONAL_ERRORS = [0.001, 0.003, 0.01, 0.03, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0]
TRUE_R = [30.0, 400.0, 1500.0, 6000.0]
NEGATIVE = [(-0.5, 0.1), (-2.0, 0.3), (-0.01, 1.0), (0.0, 0.5), (-5.0, 1.0), (-0.2, 0.05)]


def _cases():
    w, s = [], []
    for r in TRUE_R:
        for fe in FRACTIONAL_ERRORS:
            w.append(1000.0 / r)
            s.append(fe * 1000.0 / r)
    for a, b in NEGATIVE:
        w.append(a)
        s.append(b)
    return np.array(w), np.array(s)


PRIORS = {
    "edsd": (lambda n: EDSDPrior(np.full(n, 1350.0)), lambda r: 2 * np.log(r) - r / 1350.0),
    "ggd": (
        lambda n: GGDPrior(alpha=np.full(n, 1.4), beta=np.full(n, 2.6), length_scale=np.full(n, 2200.0)),
        lambda r: 2.6 * np.log(r) - (r / 2200.0) ** 1.4,
    ),
    "ggd_tiny_L": (  # HEALPix pixel 0 of the Bailer-Jones 2021 table
        lambda n: GGDPrior(alpha=np.full(n, 0.19), beta=np.full(n, 7.1), length_scale=np.full(n, 2.5e-6)),
        lambda r: 7.1 * np.log(r) - (r / 2.5e-6) ** 0.19,
    ),
    "uniform": (
        lambda n: UniformSpaceDensityPrior(np.full(n, 8000.0)),
        lambda r: np.where(r <= 8000.0, 2 * np.log(r), -np.inf),
    ),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(PRIORS))
def test_quantiles_match_high_resolution_reference(name, dtype):
    make, log_prior = PRIORS[name]
    w, s = _cases()
    with x64():
        out = summarize_posteriors(w, s, make(len(w)), dtype=dtype, n_threads=1)
    for i in range(len(w)):
        ref = reference_quantiles(w[i], s[i], log_prior, ONE_SIGMA_QUANTILES, r_min=1e-2, r_max=1e8, n=1_000_001)
        np.testing.assert_allclose(out["quantiles"][i], ref, rtol=1e-4, err_msg=f"{name} w={w[i]} s={s[i]}")


def test_edsd_mode_is_the_analytic_cubic_root():
    w, s = _cases()
    prior = EDSDPrior(np.full(len(w), 1350.0))
    with x64():
        out = summarize_posteriors(w, s, prior, dtype=np.float64, n_threads=1)
    np.testing.assert_allclose(out["mode"], edsd_mode_cubic(w, s, 1350.0), rtol=1e-6)


def test_float32_mode_is_close_to_cubic_root():
    w, s = _cases()
    prior = EDSDPrior(np.full(len(w), 1350.0))
    out = summarize_posteriors(w, s, prior, dtype=np.float32, n_threads=1)
    np.testing.assert_allclose(out["mode"], edsd_mode_cubic(w, s, 1350.0), rtol=1e-5)


def test_user_distribution_equals_builtin_edsd():
    import numpyro.distributions as dist

    w, s = _cases()
    n = len(w)
    user = DistributionPrior.from_distribution(dist.Gamma(3.0, 1.0 / 1350.0), n)
    per_star = DistributionPrior.from_distribution(dist.Gamma(np.full(n, 3.0), np.full(n, 1.0 / 1350.0)), n)
    ref = summarize_posteriors(w, s, EDSDPrior(np.full(n, 1350.0)))
    for p in (user, per_star):
        out = summarize_posteriors(w, s, p)
        np.testing.assert_allclose(out["quantiles"], ref["quantiles"], rtol=2e-4)
        np.testing.assert_allclose(out["mode"], ref["mode"], rtol=2e-4)


def test_invalid_inputs_give_nan_and_flags():
    w = np.array([1.0, np.nan, 1.0, 1.0, 1.0, -1.0, 1.0])
    s = np.array([0.1, 0.1, 0.0, -0.1, np.nan, 0.2, 0.1])
    L = np.array([1000.0, 1000.0, 1000.0, 1000.0, 1000.0, 1000.0, np.nan])
    out = summarize_posteriors(w, s, EDSDPrior(L))
    f = out["flag"]
    assert f[0] == 0
    assert f[1] & DistanceFlag.NO_PARALLAX
    assert f[2] & DistanceFlag.BAD_ERROR and f[3] & DistanceFlag.BAD_ERROR and f[4] & DistanceFlag.BAD_ERROR
    assert f[5] & DistanceFlag.PRIOR_DOMINATED and np.all(np.isfinite(out["quantiles"][5]))
    assert f[6] & DistanceFlag.INVALID_PRIOR
    assert np.all(np.isnan(out["quantiles"][[1, 2, 3, 4, 6]]))
    assert np.all(np.isnan(out["mode"][[1, 2, 3, 4, 6]]))


def test_bimodal_posterior_is_flagged():
    import numpyro.distributions as dist

    # a prior with two well separated peaks and an uninformative parallax
    mix = dist.MixtureSameFamily(
        dist.Categorical(probs=np.array([0.5, 0.5])), dist.LogNormal(np.log(np.array([300.0, 3000.0])), 0.05)
    )
    prior = DistributionPrior.from_distribution(mix, 1)
    out = summarize_posteriors(np.array([1.0]), np.array([5.0]), prior)
    assert out["flag"][0] & DistanceFlag.MULTIMODAL


def test_chunking_and_threads_do_not_change_results(rng):
    n = 5000
    r = rng.gamma(3.0, 1000.0, n)
    s = rng.uniform(0.02, 1.0, n)
    w = 1000 / r + s * rng.standard_normal(n)
    prior = EDSDPrior(np.full(n, 1000.0))
    a = summarize_posteriors(w, s, prior, chunk_size=512, n_threads=2)
    b = summarize_posteriors(w, s, prior, chunk_size=8192, n_threads=1)
    np.testing.assert_allclose(a["quantiles"], b["quantiles"], rtol=1e-6)
    np.testing.assert_array_equal(a["flag"], b["flag"])


def test_empty_input():
    out = summarize_posteriors(np.array([]), np.array([]), EDSDPrior(np.array([])))
    assert out["quantiles"].shape == (0, 3) and out["mode"].shape == (0,)


@settings(max_examples=60, deadline=None)
@given(
    w=st.floats(-50, 200, allow_nan=False),
    frac=st.floats(1e-3, 1e3),
    L=st.floats(10.0, 1e5),
)
def test_any_parallax_gives_ordered_finite_quantiles(w, frac, L):
    s = max(abs(w), 0.01) * frac
    out = summarize_posteriors(np.array([w]), np.array([s]), EDSDPrior(np.array([L])))
    q = out["quantiles"][0]
    assert np.all(np.isfinite(q)) and np.isfinite(out["mode"][0])
    assert q[0] <= q[1] <= q[2]
    assert q[0] > 0
