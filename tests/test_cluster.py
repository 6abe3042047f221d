"""fit_cluster: reproduction, agreement of the two methods, recovery and failure modes."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from astropy import units as u
from astropy.table import QTable
from test_utils import x64

import gaia_distances as gd
from gaia_distances.cluster.diagnostics import diagnose, warn_problems
from gaia_distances.core import initialisation, likelihood, population
from gaia_distances.core.models import marginal_model
from gaia_distances.core.population import ClusterPriors, Population

#: Published posterior of the reference analysis (../shared/data/README.md).
REFERENCE = {"L": (469.582, 7.079), "D": (836.914, 0.988), "sigma": (14.580, 1.245), "Q": (0.424, 0.011)}


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gd.GaiaDistancesWarning)
        return fn(*args, **kwargs)


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
    np.testing.assert_allclose(m67_fit.stars.catalogue_parallax, w)
    assert np.median(pred) == pytest.approx(np.median(w), rel=0.1)
    prior = m67_fit.predictive("prior", num_samples=5, seed=3)
    assert prior.shape == (5, 4300)


def test_component_integrals_match_brute_force_quadrature():
    w = np.array([1.19, 1.2, 0.5, 0.3, -0.2, 2.5, 1.1, 0.25])
    s = np.array([0.01, 0.1, 0.5, 0.02, 0.3, 1.0, 0.002, 0.05])
    u = np.linspace(np.log(1e-1), np.log(1e6), 2_000_001)
    h = u[1] - u[0]
    with x64():
        data = likelihood.prepare_star_data(w, s, L_range=(50.0, 10000.0), dtype=jnp.float64)
        components = jax.jit(likelihood.component_log_likelihoods)  # one program, not each operation
        for lL, lD, ls in [(np.log(470), np.log(837), np.log(0.0174)), (np.log(300), np.log(900), np.log(0.2))]:
            lc, lf = components(Population(*(jnp.float64(x) for x in (lL, lD, ls, 0.5))), data)
            for i in range(len(w)):
                ll = -0.5 * ((1000 * np.exp(-u) - w[i]) / s[i]) ** 2 - np.log(s[i]) - 0.5 * np.log(2 * np.pi)
                c = -0.5 * ((u - lD) / np.exp(ls)) ** 2 - ls - 0.5 * np.log(2 * np.pi)
                f = -np.log(2) + 3 * (u - lL) - np.exp(u) / np.exp(lL)
                assert float(lc[i]) == pytest.approx(np.log(np.sum(np.exp(ll + c)) * h), abs=1e-6)
                assert float(lf[i]) == pytest.approx(np.log(np.sum(np.exp(ll + f)) * h), abs=1e-5)


def test_cluster_integral_keeps_float32_accuracy_for_unresolved_depths():
    """A far cluster's depth can be far below its parallax errors (its posterior reaches sigma ~ 1e-6 in ln r):
    in float32 the integral and its gradient stay those of the float64 rule (the limit: ln N(w | w_D, s))."""
    from gaia_distances.core.cluster_integral import cluster_log_likelihood

    w = np.array([0.2, 0.21, 0.19, 0.25, 0.05])
    s = np.array([0.02, 0.01, 0.03, 0.05, 0.2])
    log_D = np.log(5000.0)

    def total(log_D, log_sigma, dtype):
        return cluster_log_likelihood(jnp.asarray(w, dtype), jnp.asarray(s, dtype), log_D, log_sigma).sum()

    # one program per precision (eager, each operation would compile on its own)
    value_and_grad = jax.jit(jax.value_and_grad(total, argnums=(0, 1)), static_argnums=2)
    for log_sigma in (-6.0, -9.0, -12.0):
        with x64():
            ref, ref_grad = value_and_grad(jnp.float64(log_D), jnp.float64(log_sigma), jnp.float64)
        val, grad = value_and_grad(jnp.float32(log_D), jnp.float32(log_sigma), jnp.float32)
        assert float(val) == pytest.approx(float(ref), abs=2e-4)
        assert float(grad[0]) == pytest.approx(float(ref_grad[0]), rel=1e-3, abs=1e-2)
        assert abs(float(grad[1]) - float(ref_grad[1])) < 1e-3
    limit = -0.5 * ((w - 1000.0 / 5000.0) / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi)
    assert float(ref) == pytest.approx(limit.sum(), abs=1e-6)


def test_numpyro_marginal_model_is_the_sampled_density():
    """The pure-JAX potential NUTS samples equals the numpyro model's."""
    from numpyro.infer.util import potential_energy

    rng = np.random.default_rng(0)
    w = rng.uniform(0.3, 2.0, 50)
    s = rng.uniform(0.02, 0.3, 50)
    for priors in (gd.ClusterPriors(), gd.ClusterPriors.physical()):
        model = population.ClusterModel(priors)
        data = likelihood.prepare_star_data(w, s)
        names = population.unconstrained_names(model)
        numpyro_pe = jax.jit(lambda z: potential_energy(marginal_model, (data, model), {}, dict(zip(names, z))))  # noqa: B023
        log_posterior = jax.jit(lambda z: likelihood.log_posterior(z, data, model))  # noqa: B023
        for _ in range(3):
            z = np.array([6.0, 6.7, -3.5 if names[2] == "log_sigma" else 2.0, 0.2]) + 0.1 * rng.standard_normal(4)
            pe = numpyro_pe(jnp.asarray(z, jnp.float32))
            lp = log_posterior(jnp.asarray(z, jnp.float32))
            assert float(pe) == pytest.approx(-float(lp), rel=1e-5)


@pytest.mark.slow
def test_recovers_a_simulated_cluster():
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
    fit = gd.fit_cluster(
        t, kinematics=False, field="edsd", zero_point="parallax_zeropoint_true", num_samples=300, seed=2
    )
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
    kw = dict(zero_point="parallax_zeropoint_true", seed=4, num_chains=2, systematics=None)
    marg = gd.fit_cluster(t, kinematics=False, field="edsd", num_samples=1000, **kw)
    joint = _quiet(
        gd.fit_cluster,
        t,
        kinematics=False,
        field="edsd",
        method="joint",
        num_warmup=400,
        num_samples=800,
        progress=False,
        **kw,
    )
    for name in ("D", "sigma", "Q", "L"):
        a, b = marg.posterior[name], joint.posterior[name]
        # Monte Carlo standard error of the difference of the means, from each run's ESS
        se = np.sqrt(np.var(a) / marg.diagnostics["ess_bulk"][name] + np.var(b) / joint.diagnostics["ess_bulk"][name])
        assert abs(a.mean() - b.mean()) < 4 * se + 0.05 * np.std(a), (name, a.mean(), b.mean(), se)
        assert np.std(a) == pytest.approx(np.std(b), rel=0.35), name
    m1 = np.asarray(marg.table["membership_prob"])
    m2 = np.asarray(joint.table["membership_prob"])
    assert np.mean(np.abs(m1 - m2)) < 0.03
    q1 = marg.table["cluster_distance_median"].value
    q2 = joint.table["cluster_distance_median"].value
    assert np.median(np.abs(q1 / q2 - 1)) < 0.02


def test_bad_rows_are_kept_flagged_and_excluded(cluster_input, cluster_fit):
    t, out = cluster_input, cluster_fit.table
    assert len(out) == len(t)
    np.testing.assert_array_equal(out["source_id"], t["source_id"])
    flag = np.asarray(out["cluster_flag"])
    assert np.all(flag[:8] & gd.ClusterFlag.NO_PARALLAX)
    assert np.all(np.isnan(out["membership_prob"][:8]))
    assert np.all(np.isnan(out["cluster_distance_median"][:8]))
    plx = t["parallax"].value
    outside = (plx <= -1.0) | (plx >= 50.0)
    assert outside[8:].any() and np.all(flag[8:][outside[8:]] & gd.ClusterFlag.OUTSIDE_LIMITS)
    assert np.all(np.isfinite(np.asarray(out["membership_prob"])[flag == 0]))
    assert cluster_fit.stars.n_stars == int(np.sum(flag == 0))
    # the column says what each bit a fit sets means, in the words of ClusterFlag (written once)
    description = out["cluster_flag"].description
    for bit in gd.ClusterFlag:
        if bit and bit != gd.ClusterFlag.NOT_FITTED:
            assert f"{int(bit)} {bit.meaning}" in description
            assert f"``{bit.name}`` = {int(bit)}: " in gd.ClusterFlag.__doc__
    # and the cluster is found where it was simulated (850 pc, 400 of 1900 stars)
    rows = {str(r["parameter"]): r for r in cluster_fit.summary()}
    assert abs(rows["D"]["mean"] - 850.0) < 4 * rows["D"]["sd"] + 2.0, rows["D"]["mean"]
    member = np.asarray(out["membership_prob"])
    is_member = np.asarray(t["is_member"])
    ok = np.isfinite(member)
    assert member[ok & is_member].mean() > 3 * member[ok & ~is_member].mean()


def test_too_few_stars_is_a_clear_error():
    t = QTable({"parallax": [1.0] * 5 * u.mas, "parallax_error": [0.1] * 5 * u.mas})
    with pytest.raises(gd.GaiaDistancesError, match="at least"):
        _quiet(gd.fit_cluster, t)


def test_members_only_table_says_L_is_unconstrained():
    t = gd.simulate_field(0, n_cluster=400, cluster_distance=500.0, seed=6)
    with pytest.warns(gd.GaiaDistancesWarning, match="members only"):
        fit = gd.fit_cluster(t, kinematics=False, field="edsd", zero_point="parallax_zeropoint_true", num_samples=300)
    assert fit.summary()["mean"][0] == pytest.approx(500.0, rel=0.02)


def test_field_without_cluster_says_so():
    t = gd.simulate_field(2000, n_cluster=0, seed=7)  # pads to 2048 stars, as other fits of this model do
    with pytest.warns(gd.GaiaDistancesWarning, match="no cluster signal"):
        fit = gd.fit_cluster(t, kinematics=False, field="edsd", zero_point="parallax_zeropoint_true", num_samples=300)
    assert "no cluster signal" in fit.summary().meta["status"]
    assert "no cluster signal" in fit.diagnostics["status"]


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


@pytest.mark.slow
def test_small_cluster_in_a_big_field_is_found_with_physical_priors(small_cluster_field):
    fit = gd.fit_cluster(
        small_cluster_field,
        kinematics=False,
        field="edsd",
        zero_point="parallax_zeropoint_true",
        prior=gd.ClusterPriors.physical(),
        seed=3,
    )
    rows = {str(r["parameter"]): r for r in fit.summary()}
    assert rows["D"]["mean"] == pytest.approx(300.0, abs=4 * rows["D"]["sd"] + 1.0)
    assert rows["Q"]["mean"] == pytest.approx(0.01, abs=0.004)
    assert rows["sigma"]["mean"] < 10.0
    chains = np.log(fit.posterior["D"]).mean(axis=1)
    assert np.ptp(chains) < 0.01  # the chains agree
    member = np.asarray(fit.table["membership_prob"])
    assert member[np.asarray(small_cluster_field["is_member"])].mean() > 0.7


@pytest.mark.slow
def test_small_cluster_with_reference_priors_finds_it_or_says_why_not(small_cluster_field):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", gd.GaiaDistancesWarning)
        fit = gd.fit_cluster(
            small_cluster_field, kinematics=False, field="edsd", zero_point="parallax_zeropoint_true", seed=3
        )
    D = float(fit.summary()["mean"][0])
    found = abs(D - 300.0) < 5.0
    said = any("no cluster signal" in str(w.message) for w in caught)
    assert found or said, (D, [str(w.message) for w in caught])


def test_parallax_overdensities_locate_a_spike():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(7.5, 0.6, 5000), rng.normal(np.log(300.0), 0.01, 60)])
    peaks = initialisation.parallax_overdensities(x)
    assert any(abs(p - np.log(300.0)) < 0.02 for p in peaks)
    # no spike, no overdensity; members only (narrower than the broad kernel): the members themselves
    assert initialisation.parallax_overdensities(rng.normal(7.5, 0.6, 5000)) == []
    members = initialisation.parallax_overdensities(rng.normal(6.7, 0.01, 500))
    assert members and all(abs(p - 6.7) < 0.02 for p in members)
    assert initialisation.parallax_overdensities(np.full(10, 6.7)) == []  # too few stars to judge


@pytest.mark.slow
def test_joint_reference_settings_reproduce_m67(m67, m67_fit):
    """The reference model itself, run as published (minutes)."""
    fit = _quiet(
        gd.fit_cluster,
        m67,
        kinematics=False,
        field="edsd",
        parallax_limits=(0.2, 3.0),
        truncate=False,
        systematics=None,
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
        name: gd.simulate_field(300, n_cluster=120, cluster_distance=d, seed=k)
        for k, (name, d) in enumerate((("near", 450.0), ("mid", 1100.0), ("far", 2000.0)))
    }


@pytest.mark.slow
def test_fit_clusters_agrees_with_separate_fits(three_fields):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = gd.fit_clusters(
            three_fields, kinematics=False, field="edsd", zero_point="parallax_zeropoint_true", num_samples=500, seed=4
        )
        sep = {
            k: gd.fit_cluster(
                t, kinematics=False, field="edsd", zero_point="parallax_zeropoint_true", num_samples=500, seed=4
            )
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
        # batched chains mix as well as separate ones
        assert got.diagnostics["min_ess_bulk"] > 0.6 * fit.diagnostics["min_ess_bulk"], name
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
        res = gd.fit_clusters(
            whole,
            kinematics=False,
            field="edsd",
            group_by="cluster",
            zero_point="parallax_zeropoint_true",
            num_warmup=300,
            num_samples=300,
        )
    assert list(res.names) == list(dict.fromkeys(whole["cluster"]))
    assert res["tiny"] is None and "at least" in res.errors["tiny"]
    out = res.table
    assert len(out) == len(whole) and np.array_equal(out["source_id"], whole["source_id"])
    tiny_rows = np.asarray(out["cluster"]) == "tiny"
    assert np.all(np.asarray(out["cluster_flag"])[tiny_rows] & gd.ClusterFlag.NOT_FITTED)
    assert f"4 {gd.ClusterFlag.NOT_FITTED.meaning}" in out["cluster_flag"].description
    assert np.all(np.isnan(out["membership_prob"][tiny_rows]))
    truth = {"near": 450.0, "mid": 1100.0, "far": 2000.0}
    for row in res.summary():
        if row["cluster"] in truth:  # each cluster at its own distance
            assert abs(row["D_mean"] - truth[row["cluster"]]) < 5 * row["D_sd"] + 0.01 * truth[row["cluster"]], row
    for name in ("near", "mid", "far"):
        rows = np.asarray(out["cluster"]) == name
        fit_table = res[name].table
        np.testing.assert_array_equal(
            np.asarray(out["membership_prob"])[rows], np.asarray(fit_table["membership_prob"])
        )
    row = res.summary()[res.names.index("tiny")]
    assert row["n_stars"] == 0 and "at least" in row["status"]
    with pytest.raises(TypeError, match="group_by"):
        gd.fit_clusters(whole, kinematics=False, field="edsd")


def test_padding_changes_neither_the_start_nor_the_per_star_results(sim_field):
    """Zero-weight padding stars (fit_cluster pads every field) are invisible to the MAP and per-star steps."""
    from gaia_distances.core.membership import per_star_results

    w = sim_field["parallax"].value - sim_field["parallax_zeropoint_true"].value
    s = sim_field["parallax_error"].value
    rows = np.flatnonzero(np.isfinite(w) & np.isfinite(s))[:257]  # one star more than a padding step
    data = likelihood.prepare_star_data(w[rows], s[rows])
    n = data.n_stars
    padded = likelihood.pad_star_data(data, likelihood.padded_size(n))
    assert padded.n_stars == 512 and padded.real().sum() == n
    prior = ClusterPriors()
    (a, peaks_a), (b, peaks_b) = initialisation.candidate_distances(data), initialisation.candidate_distances(padded)
    np.testing.assert_allclose(a, b)
    assert peaks_a == peaks_b
    z = np.array([[[np.log(1200.0), np.log(850.0), np.log(0.02), -1.0]]])
    model = population.ClusterModel(prior)
    one, many = per_star_results(z, data, model), per_star_results(z, padded, model)
    np.testing.assert_allclose(many.membership[:n], one.membership, rtol=1e-5)
    np.testing.assert_allclose(many.distance_quantiles[:n], one.distance_quantiles, rtol=1e-5)


def test_padding_does_not_change_the_likelihood():
    t = gd.simulate_field(300, n_cluster=100, seed=8)
    w = np.asarray(t["parallax"].value - t["parallax_zeropoint_true"].value)
    s = np.asarray(t["parallax_error"].value)
    with x64():
        data = likelihood.prepare_star_data(w, s)
        padded = likelihood.pad_star_data(data, 512)
        z = jnp.array([np.log(1200.0), np.log(850.0), np.log(0.02), 0.0])
        log_posterior = jax.jit(lambda z, d: likelihood.log_posterior(z, d, population.ClusterModel(ClusterPriors())))
        a = float(log_posterior(z, data))
        b = float(log_posterior(z, padded))
    assert padded.parallax.shape == (512,) and float(np.sum(padded.weight)) == len(w)
    assert abs(a - b) < 1e-9 * abs(a)


# --------------------------------------------------------------------------- components of the stack


@pytest.mark.parametrize("prior", [ClusterPriors(), ClusterPriors.physical()], ids=["reference", "physical"])
def test_population_transform_and_its_inverse(prior):
    rng = np.random.default_rng(1)
    z = np.column_stack([rng.normal(6, 1, 50), rng.normal(7, 0.5, 50), rng.normal(-2, 1, 50), rng.normal(0, 2, 50)])
    model = population.ClusterModel(prior)
    pop = population.to_population(z, model, xp=np)
    np.testing.assert_allclose(population.from_population(pop, prior), z, rtol=1e-9, atol=1e-9)
    # the JAX and NumPy forms agree, and the physical draws invert to the same population
    np.testing.assert_allclose(np.asarray(population.to_population(jnp.asarray(z), model).Q), pop.Q, rtol=1e-5)
    back = population.population_from_physical(population.physical_draws(z, model))
    for a, b in zip(back[:4], pop[:4]):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)
    # a starting point outside the physical size range is pulled inside, not made infinite
    if prior.depth_prior == "size":
        wide = Population(6.0, 7.0, np.log(500.0) - 7.0, 0.5)
        assert np.all(np.isfinite(population.from_population(wide, prior, clip=0.02)))
        with np.errstate(invalid="ignore", divide="ignore"):
            assert not np.all(np.isfinite(population.from_population(wide, prior)))


def test_vectorised_candidate_scores_equal_one_at_a_time(sim_field):
    t = sim_field[:600]
    w = t["parallax"].value - t["parallax_zeropoint_true"].value
    ok = np.isfinite(w) & np.isfinite(t["parallax_error"].value)
    data = likelihood.prepare_star_data(w[ok], t["parallax_error"].value[ok])
    from gaia_distances.core.search import cluster_candidates, field_start, find_map_extended

    model = population.ClusterModel(ClusterPriors.physical())
    cand = cluster_candidates(data, model, field_start(data, model)[0])
    assert cand.shape[1] == 4 and cand.shape[0] >= 40 * 3  # distances x sizes x fractions
    idx = np.arange(0, cand.shape[0], 11)
    scores = initialisation.score_candidates(cand[idx], data, model)
    dt = data.parallax.dtype
    one_at_a_time = jax.jit(lambda z: likelihood.log_posterior(z, data, model))
    one = [float(one_at_a_time(jnp.asarray(z, dt))) for z in cand[idx]]
    np.testing.assert_allclose(scores, one, rtol=1e-5)
    res = find_map_extended(data, model)
    assert res.log_posterior >= scores.max() - 1e-3
    assert res.covariance is not None and np.all(np.linalg.eigvalsh(res.covariance) > 0)


def test_fit_is_immutable_and_its_stars_are_a_read_only_view(cluster_fit):
    import copy
    import dataclasses
    import pickle

    with pytest.raises(dataclasses.FrozenInstanceError):
        cluster_fit.method = "joint"
    with pytest.raises(TypeError):
        cluster_fit.posterior["D"] = np.zeros(3)
    with pytest.raises(ValueError, match="read-only"):
        cluster_fit.posterior["D"][0, 0] = 1.0
    with pytest.raises(TypeError):
        cluster_fit.diagnostics["r_hat"]["D"] = 9.0
    # it pickles and copies, and the copy is as frozen as the original
    for back in (pickle.loads(pickle.dumps(cluster_fit)), copy.deepcopy(cluster_fit)):
        np.testing.assert_array_equal(back.draws, cluster_fit.draws)
        assert back.diagnostics["r_hat"] == dict(cluster_fit.diagnostics["r_hat"]) and back.prior == cluster_fit.prior
        with pytest.raises(TypeError):
            back.posterior["D"] = np.zeros(3)
    stars = cluster_fit.stars
    with pytest.raises(ValueError, match="read-only"):
        stars.parallax[0] = 1.0
    flag = np.asarray(cluster_fit.table["cluster_flag"])
    np.testing.assert_array_equal(stars.rows, np.flatnonzero(flag == 0))
    assert stars.n_stars == int(np.sum(flag == 0))
    plx = cluster_fit.table["parallax"].value[stars.rows]
    np.testing.assert_allclose(stars.catalogue_parallax, plx, rtol=1e-12)


def test_diagnose_is_pure_and_the_warning_comes_from_one_place():
    rng = np.random.default_rng(0)
    post = {k: np.abs(rng.normal(1, 0.1, (2, 50))) for k in ("D", "sigma", "Q", "L", "sigma_log")}
    post["Q"] = np.full((2, 50), 1e-6)  # no cluster
    stats = {"diverging": np.zeros((2, 50), bool), "n_steps": np.ones((2, 50))}
    r_hat = dict.fromkeys(("D", "sigma", "Q", "L"), 1.0)
    ess = dict.fromkeys(("D", "sigma", "Q", "L"), 50.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = diagnose(post, r_hat, ess, stats, n_stars=1000, wall_time_s=1.0)
    assert d["warnings"][0] == "bulk ESS < 400 for D, sigma, Q, L"
    assert any("no cluster signal" in p for p in d["warnings"]) and d["status"].startswith("bulk ESS")
    with pytest.warns(gd.GaiaDistancesWarning, match="no cluster signal"):
        warn_problems("marginal", d["warnings"])


def test_bad_diagnostics_warn_once_and_a_rebuilt_fit_does_not_warn_again(tmp_path, monkeypatch):
    import gaia_distances.cluster.fit as fit_module

    t = gd.simulate_field(400, n_cluster=100, seed=3)
    kw = dict(zero_point="parallax_zeropoint_true", num_warmup=30, num_samples=40, seed=5)
    counts = {}
    for name in ("precompile_per_star", "per_star_results"):
        real = getattr(fit_module, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            counts[_name] = (kwargs["n_member"], kwargs["n_quant"])
            return _real(*args, **kwargs)

        monkeypatch.setattr(fit_module, name, spy)
    with pytest.warns(gd.GaiaDistancesWarning, match=r"ESS < 400 for .*D"):
        fit = gd.fit_cluster(t, kinematics=False, field="edsd", **kw)
    # the chains were extended beyond 2 x 40 draws; the per-star programs still run with the
    # 80 draws they were compiled for during the search, instead of compiling again
    assert fit.draws.shape[1] > 40
    assert counts["per_star_results"] == counts["precompile_per_star"] == (80, 32)
    # equal seeds, equal results
    again = _quiet(gd.fit_cluster, t, kinematics=False, field="edsd", **kw)
    np.testing.assert_array_equal(fit.draws, again.draws)
    np.testing.assert_array_equal(np.asarray(fit.table["membership_prob"]), np.asarray(again.table["membership_prob"]))
    fit.to_netcdf(str(tmp_path / "post.nc"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = gd.ClusterFit.from_table(fit.table, str(tmp_path / "post.nc"))
    assert back.diagnostics["warnings"] == fit.diagnostics["warnings"]
    assert back.summary().meta["status"] == fit.summary().meta["status"] != "ok"


def test_m67_distance_is_dominated_by_the_systematic_term(m67_fit):
    """Must-show 1: M67 with the reference cuts. The statistical part is the reference's ~1 pc;
    the members' shared offset (their real positions, Vasiliev & Baumgardt 2021) adds ~7 pc.

    ``m67_fit`` is the reference fit (``systematics=None``); the two calls below are exactly
    what ``fit_cluster`` does with ``systematics="vasiliev2021"`` after sampling.
    """
    fit = m67_fit
    member = np.asarray(fit.table["membership_prob"])[fit.stars.rows]
    from gaia_distances.cluster.systematics import add_systematics, fit_systematics

    sys = fit_systematics("vasiliev2021", fit.table, fit.stars, member, fit.posterior)
    post = add_systematics(fit.posterior, sys, seed=1)
    stat, total = float(np.std(post["D_stat"])), float(np.std(post["D"]))
    assert 0.7 < stat < 1.3
    assert 6.0 < total < 8.5
    assert total > 5 * stat
    assert np.mean(post["D"]) == pytest.approx(np.mean(post["D_stat"]), abs=1.0)
    assert float(np.median(post["D"])) == pytest.approx(837.0, abs=3.0)


# ------------------------------------------------------------------ a saved posterior belongs to its table


@pytest.fixture(scope="module")
def saved_fit(cluster_fit, tmp_path_factory):
    """``cluster_fit``'s table and posterior, written to files."""
    folder = tmp_path_factory.mktemp("saved_fit")
    post = folder / "post.nc"
    cluster_fit.to_netcdf(str(post))
    table = folder / "fit.ecsv"
    gd.write_table(cluster_fit.table, table)
    return cluster_fit, table, post


@pytest.mark.parametrize("ext", [".ecsv", ".fits", ".vot", ".parquet"])
def test_posterior_loads_with_its_own_table_in_every_format(saved_fit, tmp_path, ext):
    fit, _, post = saved_fit
    path = tmp_path / f"fit{ext}"
    gd.write_table(fit.table, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = gd.ClusterFit.from_table(str(path), str(post))
    np.testing.assert_array_equal(back.posterior["D"], fit.posterior["D"])


def test_a_saved_reference_fit_keeps_its_draws_and_an_older_file_without_them_still_loads(saved_fit):
    """Every fit's file holds its unconstrained draws; a reference-model file written before that (without
    them) is rebuilt from the physical draws, to the same z."""
    import arviz as az

    fit, table, post = saved_fit
    idata = az.from_netcdf(str(post))
    assert "unconstrained" in idata.posterior.data_vars
    older = idata.copy()
    older.posterior = older.posterior.drop_vars("unconstrained")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        now, then = gd.ClusterFit.from_table(str(table), idata), gd.ClusterFit.from_table(str(table), older)
    np.testing.assert_allclose(now.draws, fit.draws, rtol=1e-12)
    np.testing.assert_allclose(then.draws, fit.draws, rtol=1e-6, atol=1e-6)


def _altered(fit, path, change):
    t = fit.table.copy()
    t.meta = {k: (dict(v) if isinstance(v, dict) else v) for k, v in t.meta.items()}
    t.meta["gaia_distances"]["cluster"] = dict(t.meta["gaia_distances"]["cluster"])
    t = change(t) or t
    gd.write_table(t, path)
    return path


def _shift_a_fitted_parallax(t):
    t["parallax_corrected"][100] += 0.3 * u.mas


def _reverse_rows(t):
    return t[::-1]


def _other_method(t):
    t.meta["gaia_distances"]["cluster"]["method"] = "joint"


@pytest.mark.parametrize(
    ("change", "differs"),
    [
        (_shift_a_fitted_parallax, "parallaxes, errors or zero points differ"),
        (_reverse_rows, "fitted rows"),
        (_other_method, 'method: "marginal" in the posterior\'s fit, "joint" in the table\'s'),
    ],
)
def test_posterior_from_another_fit_is_refused_naming_both_files(saved_fit, tmp_path, change, differs):
    fit, _, post = saved_fit
    other = _altered(fit, tmp_path / "other.ecsv", change)
    with pytest.raises(gd.GaiaDistancesError, match="is not from the fit that wrote") as err:
        gd.ClusterFit.from_table(str(other), str(post))
    assert isinstance(err.value, gd.errors.PosteriorMismatchError)
    assert str(other) in str(err.value) and str(post) in str(err.value) and differs in str(err.value)


def test_report_refuses_a_posterior_from_another_fit(saved_fit, tmp_path, capsys):
    from gaia_distances.cli import main

    fit, table, post = saved_fit
    other = _altered(fit, tmp_path / "other.ecsv", _shift_a_fitted_parallax)
    assert main(["report", str(other), "-o", str(tmp_path / "rep"), "--posterior", str(post)]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and str(other) in err and str(post) in err
    assert not (tmp_path / "rep" / "report.md").exists()


def test_posterior_without_a_fingerprint_loads_with_a_warning(saved_fit):
    import arviz as az

    from gaia_distances.cluster.fingerprint import FINGERPRINT_ATTR

    fit, table, post = saved_fit
    idata = az.from_netcdf(str(post))
    del idata.posterior.attrs[FINGERPRINT_ATTR]  # as an earlier version saved it
    with pytest.warns(gd.GaiaDistancesWarning, match="cannot be checked"):
        back = gd.ClusterFit.from_table(str(table), idata)
    np.testing.assert_array_equal(back.posterior["D"], fit.posterior["D"])


def test_the_diagnostics_are_typed_read_only_and_round_trip(cluster_fit):
    """A fit's diagnostics are one FitDiagnostics, made once: a read-only mapping of its set fields that
    survives JSON (the provenance) and pickling."""
    import copy
    import json

    from gaia_distances.cluster.diagnostics import FitDiagnostics

    d = cluster_fit.diagnostics
    assert isinstance(d, FitDiagnostics) and d["status"] == d.status
    assert {"kinematics", "field", "timings", "r_hat", "warnings"} <= set(d)
    assert "min_ess_tail" in d and d["field"] == cluster_fit.model.field
    with pytest.raises(TypeError):
        d["r_hat"]["D"] = 1.0  # type: ignore[index]
    assert isinstance(d["sampler"]["stages"], tuple)  # nested lists frozen too, as every result of a fit
    with pytest.raises(AttributeError):
        d.status = "ok"  # type: ignore[misc]
    again = FitDiagnostics.from_mapping(json.loads(json.dumps(d.to_dict())))
    assert again.to_dict() == json.loads(json.dumps(d.to_dict()))
    assert copy.deepcopy(cluster_fit).diagnostics.to_dict() == d.to_dict()
    saved = cluster_fit.table.meta["gaia_distances"]["cluster"]["diagnostics"]
    assert saved["status"] == d.status and saved["timings"] == dict(d.timings)
    with pytest.raises(KeyError, match="not fields"):
        FitDiagnostics.from_mapping({**d.to_dict(), "patched": 1})
