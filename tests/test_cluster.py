"""fit_cluster: reproduction, agreement of the two methods, recovery and failure modes."""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from astropy import units as u
from astropy.table import QTable
from conftest import x64

import gaia_distances as gd
from gaia_distances.core import cluster as core

#: Published posterior of the reference analysis (../shared/data/README.md).
REFERENCE = {"L": (469.582, 7.079), "D": (836.914, 0.988), "sigma": (14.580, 1.245), "Q": (0.424, 0.011)}


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gd.GaiaDistancesWarning)
        return fn(*args, **kwargs)


@pytest.fixture(scope="module")
def m67(data_file):
    t = gd.load_table(data_file("m67.fits.gz"))
    return _quiet(gd.apply_zeropoint, t, fallback=0.0)  # the reference sets NaN zero points to 0


@pytest.fixture(scope="module")
def m67_fit(m67):
    return gd.fit_cluster(m67, parallax_limits=(0.2, 3.0), seed=1)


def test_marginal_reproduces_the_reference_m67_posterior(m67_fit):
    summ = m67_fit.summary()
    rows = {str(r["parameter"]): r for r in summ}
    for name, (mean, sd) in REFERENCE.items():
        assert abs(rows[name]["mean"] - mean) < 2 * sd, (name, rows[name]["mean"], mean)
        assert rows[name]["sd"] == pytest.approx(sd, rel=0.25), name
    assert m67_fit.diagnostics["min_ess_bulk"] >= 400
    assert m67_fit.diagnostics["divergences"] == 0
    t = m67_fit.table
    assert len(t) == 5331
    fitted = np.asarray(t["cluster_flag"]) == 0
    assert fitted.sum() == 4300
    assert np.nanmean(t["membership_prob"][fitted]) == pytest.approx(0.424, abs=0.02)
    assert np.all(np.isnan(t["membership_prob"][~fitted]))
    assert t["cluster_distance_median"].unit == u.pc
    # confident members sit at the cluster's distance
    sure = fitted & (np.asarray(t["membership_prob"]) > 0.9)
    assert np.median(t["cluster_distance_median"].value[sure]) == pytest.approx(837, rel=0.01)
    prov = t.meta["gaia_distances"]["cluster"]
    assert prov["n_stars_fitted"] == 4300 and prov["method"] == "marginal"


def test_summary_inference_data_and_predictive(m67_fit, tmp_path):
    summ = m67_fit.summary()
    for c in ["mean", "sd", "p16", "p50", "p84", "ess_bulk", "ess_tail", "r_hat"]:
        assert c in summ.colnames
    assert list(summ["parameter"][:4]) == ["D", "sigma", "Q", "L"]
    idata = m67_fit.inference_data
    assert set(["D", "sigma", "Q", "L"]) <= set(idata.posterior.data_vars)
    path = m67_fit.to_netcdf(str(tmp_path / "post.nc"))
    import arviz as az

    assert float(az.from_netcdf(path).posterior["D"].mean()) == pytest.approx(float(summ["mean"][0]))
    pred = m67_fit.predictive("posterior", num_samples=20, seed=3)
    assert pred.shape == (20, 4300)
    # the posterior predictive parallaxes look like the data
    w = m67_fit.table["parallax"].value[np.asarray(m67_fit.table["cluster_flag"]) == 0]
    assert np.median(pred) == pytest.approx(np.median(w), rel=0.1)
    prior = m67_fit.predictive("prior", num_samples=5, seed=3)
    assert prior.shape == (5, 4300)


def test_component_integrals_match_brute_force_quadrature():
    w = np.array([1.19, 1.2, 0.5, 0.3, -0.2, 2.5, 1.1, 0.25])
    s = np.array([0.01, 0.1, 0.5, 0.02, 0.3, 1.0, 0.002, 0.05])
    u = np.linspace(np.log(1e-1), np.log(1e6), 2_000_001)
    h = u[1] - u[0]
    with x64():
        data = core.prepare_star_data(w, s, L_range=(50.0, 10000.0), dtype=jnp.float64)
        for lL, lD, ls in [(np.log(470), np.log(837), np.log(0.0174)), (np.log(300), np.log(900), np.log(0.2))]:
            lc, lf = core.component_log_likelihoods(lL, lD, ls, data)
            for i in range(len(w)):
                ll = -0.5 * ((1000 * np.exp(-u) - w[i]) / s[i]) ** 2 - np.log(s[i]) - 0.5 * np.log(2 * np.pi)
                c = -0.5 * ((u - lD) / np.exp(ls)) ** 2 - ls - 0.5 * np.log(2 * np.pi)
                f = -np.log(2) + 3 * (u - lL) - np.exp(u) / np.exp(lL)
                assert float(lc[i]) == pytest.approx(np.log(np.sum(np.exp(ll + c)) * h), abs=1e-6)
                assert float(lf[i]) == pytest.approx(np.log(np.sum(np.exp(ll + f)) * h), abs=1e-5)


def test_numpyro_marginal_model_is_the_sampled_density():
    """The pure-JAX potential NUTS samples equals the numpyro model's."""
    from numpyro.infer.util import potential_energy

    rng = np.random.default_rng(0)
    w = rng.uniform(0.3, 2.0, 50)
    s = rng.uniform(0.02, 0.3, 50)
    for priors in (gd.ClusterPriors(), gd.ClusterPriors.physical()):
        data = core.prepare_star_data(w, s)
        names = core.unconstrained_names(priors)
        for _ in range(3):
            z = np.array([6.0, 6.7, -3.5 if names[2] == "log_sigma" else 2.0, 0.2]) + 0.1 * rng.standard_normal(4)
            pe = potential_energy(core.marginal_model, (data, priors), {}, dict(zip(names, jnp.asarray(z))))
            lp = core.log_posterior(jnp.asarray(z, jnp.float32), data, priors)
            assert float(pe) == pytest.approx(-float(lp), rel=1e-5)


def test_recovers_a_simulated_cluster_and_is_reproducible():
    t = gd.simulate_field(
        3000,
        n_cluster=600,
        cluster_distance=1200.0,
        cluster_sigma_log=0.02,
        field_prior=gd.EDSD(900.0),
        magnitude_limit=None,
        errors_independent_of_distance=True,
        seed=11,
    )
    kw = dict(zero_point="parallax_zeropoint_true", num_samples=400, seed=2)
    fit = gd.fit_cluster(t, **kw)
    again = gd.fit_cluster(t, **kw)
    np.testing.assert_array_equal(fit.posterior["D"], again.posterior["D"])
    rows = {str(r["parameter"]): r for r in fit.summary()}
    truth = {"D": 1200.0, "L": 900.0, "Q": 600 / 3600, "sigma_log": 0.02}
    for name, value in truth.items():
        assert abs(rows[name]["mean"] - value) < 4 * rows[name]["sd"], (name, rows[name]["mean"])
    member = np.asarray(fit.table["membership_prob"])
    is_member = np.asarray(t["is_member"])
    # parallax-only membership is soft at 1.2 kpc, but calibrated and informative
    assert member.sum() == pytest.approx(is_member.sum(), rel=0.1)
    assert member[is_member].mean() > 3 * member[~is_member].mean()


def test_joint_and_marginal_agree_on_a_small_field():
    t = gd.simulate_field(
        300,
        n_cluster=120,
        cluster_distance=700.0,
        cluster_sigma_log=0.03,
        field_prior=gd.EDSD(600.0),
        magnitude_limit=19.0,
        errors_independent_of_distance=True,
        seed=8,
    )
    kw = dict(zero_point="parallax_zeropoint_true", seed=4, num_chains=2)
    marg = gd.fit_cluster(t, num_samples=1000, **kw)
    joint = _quiet(gd.fit_cluster, t, method="joint", num_warmup=600, num_samples=1200, progress=False, **kw)
    for name in ("D", "sigma", "Q", "L"):
        a, b = marg.posterior[name], joint.posterior[name]
        sd = np.sqrt(np.var(a) + np.var(b)) / 4  # MC error scale
        assert abs(a.mean() - b.mean()) < 3 * np.std(a), name
        assert np.std(a) == pytest.approx(np.std(b), rel=0.35), name
        del sd
    m1 = np.asarray(marg.table["membership_prob"])
    m2 = np.asarray(joint.table["membership_prob"])
    assert np.mean(np.abs(m1 - m2)) < 0.03
    q1 = marg.table["cluster_distance_median"].value
    q2 = joint.table["cluster_distance_median"].value
    assert np.median(np.abs(q1 / q2 - 1)) < 0.02


def test_bad_rows_are_kept_flagged_and_excluded(sim_field):
    t = sim_field[:800].copy()
    t["parallax"][:5] = np.nan * u.mas
    t["parallax_error"][5:8] = [0.0, -1.0, np.nan] * u.mas
    before = t.copy()
    fit = _quiet(gd.fit_cluster, t, zero_point="parallax_zeropoint_true", num_samples=200, parallax_limits=(-1.0, 50.0))
    out = fit.table
    assert len(out) == len(t)
    np.testing.assert_array_equal(out["source_id"], t["source_id"])
    assert np.array_equal(t["parallax"], before["parallax"], equal_nan=True)
    flag = np.asarray(out["cluster_flag"])
    assert np.all(flag[:8] & gd.ClusterFlag.NO_PARALLAX)
    assert np.all(np.isnan(out["membership_prob"][:8]))
    assert np.all(np.isnan(out["cluster_distance_median"][:8]))
    outside = (t["parallax"].value <= -1.0) | (t["parallax"].value >= 50.0)
    assert np.all(flag[8:][outside[8:]] & gd.ClusterFlag.OUTSIDE_LIMITS)


def test_too_few_stars_is_a_clear_error():
    t = QTable({"parallax": [1.0] * 5 * u.mas, "parallax_error": [0.1] * 5 * u.mas})
    with pytest.raises(gd.GaiaDistancesError, match="at least"):
        _quiet(gd.fit_cluster, t)


def test_bad_diagnostics_warn_and_name_the_parameters():
    t = gd.simulate_field(400, n_cluster=100, seed=3)
    with pytest.warns(gd.GaiaDistancesWarning, match=r"ESS < 400 for .*D"):
        gd.fit_cluster(t, zero_point="parallax_zeropoint_true", num_warmup=30, num_samples=40)


def test_members_only_table_says_L_is_unconstrained():
    t = gd.simulate_field(0, n_cluster=400, cluster_distance=500.0, seed=6)
    with pytest.warns(gd.GaiaDistancesWarning, match="members only"):
        fit = gd.fit_cluster(t, zero_point="parallax_zeropoint_true", num_samples=500)
    assert fit.summary()["mean"][0] == pytest.approx(500.0, rel=0.02)


def test_field_without_cluster_says_so():
    t = gd.simulate_field(1500, n_cluster=0, seed=7)
    with pytest.warns(gd.GaiaDistancesWarning, match="no cluster signal"):
        gd.fit_cluster(t, zero_point="parallax_zeropoint_true", num_samples=500)


@pytest.fixture(scope="module")
def small_cluster_field():
    """1 % members at 300 pc in a magnitude-limited 1.5 deg cone."""
    n = 10_000
    return gd.simulate_field(
        n - 100,
        n_cluster=100,
        cluster_distance=300.0,
        cluster_sigma_log=0.01,
        radius=1.5 * u.deg,
        field_prior=gd.EDSD(1000.0),
        magnitude_limit=20.0,
        seed=21,
    )


def test_small_cluster_in_a_big_field_is_found_with_physical_priors(small_cluster_field):
    fit = gd.fit_cluster(
        small_cluster_field, zero_point="parallax_zeropoint_true", priors=gd.ClusterPriors.physical(), seed=3
    )
    rows = {str(r["parameter"]): r for r in fit.summary()}
    assert rows["D"]["mean"] == pytest.approx(300.0, abs=4 * rows["D"]["sd"] + 1.0)
    assert rows["Q"]["mean"] == pytest.approx(0.01, abs=0.004)
    assert rows["sigma"]["mean"] < 10.0
    chains = np.log(fit.posterior["D"]).mean(axis=1)
    assert np.ptp(chains) < 0.01  # the chains agree
    member = np.asarray(fit.table["membership_prob"])
    assert member[np.asarray(small_cluster_field["is_member"])].mean() > 0.7


def test_small_cluster_with_reference_priors_finds_it_or_says_why_not(small_cluster_field):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", gd.GaiaDistancesWarning)
        fit = gd.fit_cluster(small_cluster_field, zero_point="parallax_zeropoint_true", seed=3)
    D = float(fit.summary()["mean"][0])
    found = abs(D - 300.0) < 5.0
    said = any("no cluster signal" in str(w.message) for w in caught)
    assert found or said, (D, [str(w.message) for w in caught])


def test_parallax_overdensities_locate_a_spike():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(7.5, 0.6, 5000), rng.normal(np.log(300.0), 0.01, 60)])
    peaks = core.parallax_overdensities(x)
    assert any(abs(p - np.log(300.0)) < 0.02 for p in peaks)
    # a narrow sample (members only) wider kernels than its range: no crash
    assert isinstance(core.parallax_overdensities(rng.normal(6.7, 0.01, 500)), list)


@pytest.mark.slow
def test_joint_reference_settings_reproduce_m67(m67, m67_fit):
    """The reference model itself, run as published (minutes)."""
    fit = _quiet(
        gd.fit_cluster,
        m67,
        parallax_limits=(0.2, 3.0),
        method="joint",
        num_warmup=2000,
        num_samples=4000,
        num_chains=2,
        seed=0,
        progress=False,
    )
    rows = {str(r["parameter"]): r for r in fit.summary()}
    for name, (mean, sd) in REFERENCE.items():
        assert abs(rows[name]["mean"] - mean) < 2 * sd, name
        assert abs(rows[name]["mean"] - m67_fit.posterior[name].mean()) < 0.5 * sd, name
    m1 = np.asarray(m67_fit.table["membership_prob"])
    m2 = np.asarray(fit.table["membership_prob"])
    ok = np.isfinite(m1)
    assert np.mean(np.abs(m1[ok] - m2[ok])) < 0.02


# --------------------------------------------------------------------------- fit_clusters


@pytest.fixture(scope="module")
def three_fields():
    return {
        name: gd.simulate_field(500, n_cluster=150, cluster_distance=d, seed=k)
        for k, (name, d) in enumerate((("near", 450.0), ("mid", 1100.0), ("far", 2000.0)))
    }


def test_fit_clusters_agrees_with_separate_fits(three_fields):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = gd.fit_clusters(three_fields, zero_point="parallax_zeropoint_true", num_samples=500, seed=4)
        sep = {
            k: gd.fit_cluster(t, zero_point="parallax_zeropoint_true", num_samples=500, seed=4)
            for k, t in three_fields.items()
        }
    summ = res.summary()
    assert list(summ["cluster"]) == ["near", "mid", "far"] and summ["D_mean"].unit == u.pc
    for name, fit in sep.items():
        got = res[name]
        for p in ("D", "sigma", "Q", "L"):
            a, b = got.posterior[p], fit.posterior[p]
            assert abs(a.mean() - b.mean()) < 0.3 * np.hypot(a.std(), b.std()), (name, p)
        m1, m2 = np.asarray(got.table["membership_prob"]), np.asarray(fit.table["membership_prob"])
        assert np.nanmean(np.abs(m1 - m2)) < 0.02
        assert got.diagnostics["min_ess_bulk"] > 400
        assert len(got.table) == len(three_fields[name])


def test_fit_clusters_on_a_grouped_table_keeps_rows_and_flags_the_unfittable(three_fields):
    from astropy.table import vstack

    parts = []
    for name, t in three_fields.items():
        t = t.copy()
        t["cluster"] = name
        parts.append(t)
    tiny = three_fields["near"][:10].copy()
    tiny["cluster"] = "tiny"  # too few stars
    whole = vstack([*parts, tiny])
    whole = whole[np.random.default_rng(0).permutation(len(whole))]  # groups interleaved
    with pytest.warns(gd.GaiaDistancesWarning, match="tiny"):
        res = gd.fit_clusters(whole, group_by="cluster", zero_point="parallax_zeropoint_true", num_samples=300)
    assert res.names == list(dict.fromkeys(whole["cluster"]))
    assert res["tiny"] is None and "at least" in res.errors["tiny"]
    out = res.table
    assert len(out) == len(whole) and np.array_equal(out["source_id"], whole["source_id"])
    tiny_rows = np.asarray(out["cluster"]) == "tiny"
    assert np.all(np.asarray(out["cluster_flag"])[tiny_rows] & gd.ClusterFlag.NOT_FITTED)
    assert np.all(np.isnan(out["membership_prob"][tiny_rows]))
    for name in ("near", "mid", "far"):
        rows = np.asarray(out["cluster"]) == name
        fit_table = res[name].table
        np.testing.assert_array_equal(
            np.asarray(out["membership_prob"])[rows], np.asarray(fit_table["membership_prob"])
        )
    row = res.summary()[res.names.index("tiny")]
    assert row["n_stars"] == 0 and "at least" in row["status"]
    with pytest.raises(TypeError, match="group_by"):
        gd.fit_clusters(whole)


def test_padding_does_not_change_the_likelihood():
    t = gd.simulate_field(300, n_cluster=100, seed=8)
    w = np.asarray(t["parallax"].value - t["parallax_zeropoint_true"].value)
    s = np.asarray(t["parallax_error"].value)
    with x64():
        data = core.prepare_star_data(w, s)
        padded = core.pad_star_data(data, 512)
        z = jnp.array([np.log(1200.0), np.log(850.0), np.log(0.02), 0.0])
        a = float(core.log_posterior(z, data, core.ClusterPriors()))
        b = float(core.log_posterior(z, padded, core.ClusterPriors()))
    assert padded.parallax.shape == (512,) and float(padded.weight.sum()) == len(w)
    assert abs(a - b) < 1e-9 * abs(a)
