"""The quadrature against float64 high-resolution references and analytic results."""

from __future__ import annotations

import functools

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


@functools.cache
def _references(name):
    """The float64 million-node quantiles of every case under prior ``name`` (shared by both dtypes)."""
    log_prior = PRIORS[name][1]
    w, s = _cases()
    return [
        reference_quantiles(w[i], s[i], log_prior, ONE_SIGMA_QUANTILES, r_min=1e-2, r_max=1e8, n=1_000_001)
        for i in range(len(w))
    ]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(PRIORS))
def test_quantiles_match_high_resolution_reference(name, dtype):
    make = PRIORS[name][0]
    w, s = _cases()
    with x64():
        out = summarize_posteriors(w, s, make(len(w)), dtype=dtype, n_threads=1)
    for i, ref in enumerate(_references(name)):
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


def test_multimodal_flag_does_not_depend_on_the_grid_resolution(rng):
    # EDSD posteriors over a range of fractional errors, and two that are bimodal (a likelihood
    # peak near 200-350 pc and the prior's near 4 kpc): a fine grid must not see extra peaks
    # in the rounding of a flat top
    n = 16
    r = rng.gamma(3.0, 1000.0, n)
    s = rng.uniform(0.005, 1.0, n) * 1000 / r
    w = 1000 / r + s * rng.standard_normal(n)
    w[:2], s[:2] = [5.0, 2.9], [1.5, 0.9]
    prior = EDSDPrior(np.full(n, 1350.0))
    coarse, fine = (summarize_posteriors(w, s, prior, n_nodes=k, chunk_size=16) for k in (128, 200_000))
    multimodal = [(out["flag"] & DistanceFlag.MULTIMODAL) != 0 for out in (coarse, fine)]
    np.testing.assert_array_equal(multimodal[1], multimodal[0])
    assert multimodal[0].tolist() == [True, True] + [False] * (n - 2)
    np.testing.assert_allclose(fine["quantiles"], coarse["quantiles"], rtol=1e-4)


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


# --------------------------------------------------------------------------- issue 13

#: Extreme Bailer-Jones 2021 GGD pixels (alpha, beta, L in pc): the smallest L
#: (8694), alpha (11579) and beta (11984), and the largest L (7208), alpha
#: (7296) and beta (149) of prior_summary.csv.
BJ2021_EXTREMES = [
    (0.177383298370138, 7.84376581660407, 2.63743330116198e-07),
    (0.174019121518422, 5.08687014352562, 1.7343749724656e-06),
    (2.41843139610194, 0.103976879525352, 7857.1118026762),
    (4.00461669066357, 0.752557761975833, 10405.067292308),
    (4.0208772215727, 1.85020238087389, 8243.4281255254),
    (0.193861015217556, 7.91900776939057, 2.54782200044828e-06),
]


def _ggd_log_prior(alpha, beta, L):
    return lambda r: beta * np.log(r) - (r / L) ** alpha


NEGATIVE_PRIORS = {
    "edsd": (lambda n: EDSDPrior(np.full(n, 1350.0)), lambda r: 2 * np.log(r) - r / 1350.0),
    "edsd_small_L": (lambda n: EDSDPrior(np.full(n, 30.0)), lambda r: 2 * np.log(r) - r / 30.0),
    "ggd": PRIORS["ggd"],
    "uniform": PRIORS["uniform"],
    **{
        f"bj2021_extreme_{k}": (
            lambda n, p=p: GGDPrior(alpha=np.full(n, p[0]), beta=np.full(n, p[1]), length_scale=np.full(n, p[2])),
            _ggd_log_prior(*p),
        )
        for k, p in enumerate(BJ2021_EXTREMES)
    },
}


@pytest.mark.parametrize("name", list(NEGATIVE_PRIORS))
def test_issue13_item2_strongly_negative_parallaxes_match_reference(name):
    """w / s from -20 to -1000 under every built-in prior, including the Bailer-Jones 2021 extremes."""
    make, log_prior = NEGATIVE_PRIORS[name]
    snr = np.array([-20.0, -100.0, -400.0, -1000.0])
    s = np.array([0.3, 0.05, 0.01])
    w = (snr[:, None] * s[None, :]).ravel()
    s = np.broadcast_to(s, (4, 3)).ravel()
    out = summarize_posteriors(w, s, make(len(w)), n_threads=1)
    assert not np.any(out["flag"] & DistanceFlag.INACCURATE)
    for i in range(len(w)):
        ref = reference_quantiles(w[i], s[i], log_prior, ONE_SIGMA_QUANTILES, r_min=1e-2, r_max=1e9, n=400_001)
        np.testing.assert_allclose(out["quantiles"][i], ref, rtol=1e-4, err_msg=f"{name} w={w[i]} s={s[i]}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_issue13_item2_negative_parallax_of_the_issue(dtype):
    """w = -2.0 +- 0.02 mas under EDSD(1350): 84 447 pc [77 159, 92 420] (was 100 721 pc, 20x too narrow)."""
    with x64():
        out = summarize_posteriors(np.array([-2.0]), np.array([0.02]), EDSDPrior(np.array([1350.0])), dtype=dtype)
    np.testing.assert_allclose(out["quantiles"][0], [77159.03, 84447.50, 92420.49], rtol=1e-5)


def test_issue13_item2_prior_likelihood_tension_matches_reference():
    """A precise parallax far beyond a short-scale prior: the posterior lies outside both the likelihood's
    bracket and the prior's support (w = 0.4 +- 0.01 mas, L = 30 pc gave 2239 pc for 2392 pc)."""
    w, s, L = np.array([0.4, 0.1, 2.0]), np.array([0.01, 0.01, 0.05]), np.array([30.0, 30.0, 5.0])
    out = summarize_posteriors(w, s, EDSDPrior(L), n_threads=1)
    for i in range(len(w)):
        ref = reference_quantiles(w[i], s[i], lambda r, L=L[i]: 2 * np.log(r) - r / L, r_min=1.0, r_max=1e6)
        np.testing.assert_allclose(out["quantiles"][i], ref, rtol=1e-4)


def test_issue13_item2_bailer_jones_2021_negative_parallaxes(data_file):
    """The issue's check: BJ2021 GGD priors of random pixels, w / s from -400 to -20 (62 of 600 were off)."""
    from astropy.table import Table

    table = Table.read(data_file("bj2021_prior_summary.csv"), format="ascii.csv")
    rng = np.random.default_rng(13)
    n = 16  # one chunk shape shared with the other tests
    row = rng.integers(0, len(table), n)
    alpha, beta, L = (np.asarray(table[c], float)[row] for c in ("GGDalpha", "GGDbeta", "GGDrlen"))
    s = 10 ** rng.uniform(-2.5, 0.0, n)
    w = rng.uniform(-400.0, -20.0, n) * s
    out = summarize_posteriors(w, s, GGDPrior(alpha, beta, L), n_threads=1)
    assert not np.any(out["flag"] & DistanceFlag.INACCURATE)
    for i in range(n):
        lp = _ggd_log_prior(alpha[i], beta[i], L[i])
        ref = reference_quantiles(w[i], s[i], lp, r_min=1.0, r_max=1e8, n=200_001)
        np.testing.assert_allclose(out["quantiles"][i], ref, rtol=1e-4, err_msg=f"row {row[i]} w={w[i]} s={s[i]}")


def test_issue13_item2_posterior_beyond_the_global_range_is_flagged():
    """Where the limits 1e-3..1e9 pc cut the posterior, the row says so (INACCURATE) instead of being silently off."""
    out = summarize_posteriors(
        np.array([0.0, 0.0, 1.0]), np.array([1.0, 1e6, 0.1]), EDSDPrior(np.array([1e8, 1e-4, 1e3]))
    )
    assert out["flag"][0] & DistanceFlag.INACCURATE and out["flag"][1] & DistanceFlag.INACCURATE
    assert not out["flag"][2] & DistanceFlag.INACCURATE


@pytest.mark.parametrize(
    ("option", "value"),
    [("n_nodes", 0), ("n_nodes", 1), ("n_nodes", 8.5), ("chunk_size", -1), ("chunk_size", 0), ("n_threads", 0),
     ("quantiles", (0.5, 1.0)), ("quantiles", (np.nan,)), ("n_scan", 1), ("scan_drop", -1.0),
     ("prior_dominated_threshold", np.nan), ("dtype", np.int32)],
)  # fmt: skip
def test_issue13_item9_options_are_validated(option, value):
    """n_nodes=1 and chunk_size=-1 gave NaN rows with flag 0, n_nodes=0 crashed inside JAX."""
    with pytest.raises(ValueError, match=option):
        summarize_posteriors(np.ones(3), np.full(3, 0.1), EDSDPrior(np.full(3, 1000.0)), **{option: value})


def test_issue13_item9_every_nan_result_has_a_flag():
    """A user prior whose density is NaN everywhere gives NaN flagged INACCURATE, never NaN with flag 0."""
    import numpyro.distributions as dist

    bad = DistributionPrior.from_distribution(dist.Gamma(-1.0, 1.0, validate_args=False), 2)
    out = summarize_posteriors(np.array([1.0, -1.0]), np.array([0.1, 0.5]), bad)
    assert np.all(np.isnan(out["quantiles"]))
    assert np.all(out["flag"] & DistanceFlag.INACCURATE)
    w = np.array([1.0, np.nan, 1.0, 1.0])
    s = np.array([0.1, 0.1, -1.0, 0.1])
    out = summarize_posteriors(w, s, EDSDPrior(np.array([1000.0, 1000.0, 1000.0, 0.0])))
    nan_causes = (
        DistanceFlag.NO_PARALLAX | DistanceFlag.BAD_ERROR | DistanceFlag.INVALID_PRIOR | DistanceFlag.INACCURATE
    )
    nan = ~np.isfinite(out["quantiles"]).all(axis=1) | ~np.isfinite(out["mode"])
    assert np.array_equal(nan, (out["flag"] & nan_causes) != 0)


def test_issue13_item9_flag_bits_are_distinct_and_documented():
    values = [f.value for f in DistanceFlag if f.value]
    assert len(set(values)) == len(values) and all(v & (v - 1) == 0 for v in values)
    assert DistanceFlag.INACCURATE == 64
    import gaia_distances as gd

    out = gd.estimate_distances(gd.simulate_field(5, n_cluster=0, seed=1), zero_point=0.0)
    described = out["distance_flag"].description
    assert all(f"{v} " in described for v in values), described


def test_issue13_item2_numerics_helpers():
    """The pieces the new range and grid use: bisection, the offset likelihood in float32, the CDF search."""
    from gaia_distances.core.numerics import bisect, invert_cdf, log_likelihood_offset

    lo, hi = bisect(lambda x: x * x < 2.0, np.zeros(3, np.float32), np.full(3, 2.0, np.float32), 30)
    np.testing.assert_allclose(np.asarray(hi), np.sqrt(2.0), rtol=1e-6)
    assert np.all(np.asarray(lo) ** 2 < 2.0) and np.all(np.asarray(hi) ** 2 >= 2.0)
    # w / s = -1000: the log likelihood itself is near -5e5, its change over 0.01 in ln r is ~ -1.2
    w, s, u0, d = -2.0, 0.002, np.log(8e5), np.linspace(-0.05, 0.05, 11)
    exact = -0.5 * ((1000 * np.exp(-(u0 + d)) - w) / s) ** 2 + 0.5 * ((1000 * np.exp(-u0) - w) / s) ** 2
    x0 = np.float32(1000 * np.exp(-u0))
    got = log_likelihood_offset(x0, d.astype(np.float32), np.float32(w), np.float32(s))
    np.testing.assert_allclose(np.asarray(got), exact, rtol=1e-5, atol=1e-5)
    rng = np.random.default_rng(1)
    cdf = np.cumsum(rng.uniform(0, 1, (50, 64)), axis=1)
    cdf = (cdf - cdf[:, :1]) / (cdf[:, -1:] - cdf[:, :1])
    for q in (0.01, 0.5, 0.99):
        a, b = invert_cdf(cdf, q), invert_cdf(cdf, q, binary_search=True)
        np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
