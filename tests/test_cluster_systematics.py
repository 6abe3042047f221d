"""Gaia's correlated systematics in fit_cluster (issue 12): the shared offset of the members.

References: a dense generalised-least-squares solution (``C = V + diag(sigma^2)``
by Cholesky, float64) for the variance; the reference fit (``systematics=None``)
for the statistical part; the M67 field for the published size of the effect.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.linalg as sl

import gaia_distances as gd
from gaia_distances.cluster.result import parameter_summary
from gaia_distances.cluster.systematics import add_systematics, fit_systematics
from gaia_distances.core.systematics import covariance_matrix, get_kernel, weighted_offset_variance

KERNELS = ["lindegren2021", "vasiliev2021", "maiz-apellaniz2021"]


def gls_variance(ra, dec, sigma2, kernel, g=None):
    """Variance of the GLS mean under C = V(theta_ij) + diag(sigma^2), by Cholesky (float64)."""
    c = covariance_matrix(ra, dec, kernel, g=g) + np.diag(sigma2)
    ones = np.ones(len(ra))
    return 1.0 / (ones @ sl.cho_solve(sl.cho_factor(c), ones))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("radius", [0.1, 0.5])
def test_shared_offset_matches_the_dense_gls_variance(kernel, radius):
    """2 000 members within a cone: statistical + weighted shared variance against dense GLS, within 5 %."""
    rng = np.random.default_rng(11)
    n = 2000
    ra, dec = 120.0 + rng.normal(0, radius, n), -10.0 + rng.normal(0, radius, n)
    g = rng.uniform(12.0, 19.5, n)
    sigma2 = np.exp(rng.uniform(np.log(0.015), np.log(0.4), n)) ** 2 + 0.01**2  # errors and the cluster's spread
    w = 1.0 / sigma2
    ours = 1.0 / w.sum() + weighted_offset_variance(ra, dec, w, kernel, g)
    dense = gls_variance(ra, dec, sigma2, kernel, g=g if get_kernel(kernel).magnitude_scaling else None)
    assert math.sqrt(ours / dense) == pytest.approx(1.0, abs=0.05)
    # and the systematic part dominates: the members' mean is known no better than ~0.01 mas
    assert weighted_offset_variance(ra, dec, w, kernel, g) > 10 / w.sum()


def test_weighted_offset_variance_limits_and_subsampling():
    assert weighted_offset_variance([5.0], [5.0], [2.0], "lindegren2021") == pytest.approx(142e-6)
    assert math.isnan(weighted_offset_variance([5.0, np.nan], [5.0, 1.0], [0.0, 1.0], "lindegren2021"))
    far = weighted_offset_variance([0.0, 180.0], [0.0, 0.0], [1.0, 1.0], "lindegren2021")
    assert far == pytest.approx(0.5 * 142e-6 * (1 + math.exp(-180 / 16)), rel=1e-9)  # exp(-theta / 16 deg)
    rng = np.random.default_rng(3)
    ra, dec, w = rng.normal(0, 0.4, 4000), rng.normal(0, 0.4, 4000), rng.uniform(0.1, 1.0, 4000)
    exact = weighted_offset_variance(ra, dec, w, "vasiliev2021", max_exact=5000)
    sampled = weighted_offset_variance(ra, dec, w, "vasiliev2021", max_exact=1000, seed=1)
    assert sampled == pytest.approx(exact, rel=0.01)
    assert sampled == weighted_offset_variance(ra, dec, w, "vasiliev2021", max_exact=1000, seed=1)


@pytest.fixture(scope="module")
def small_fits():
    t = gd.simulate_field(500, n_cluster=250, seed=5)
    kw = dict(
        kinematics=False, field="edsd", zero_point="parallax_zeropoint_true", num_warmup=200, num_samples=200, seed=2
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gd.GaiaDistancesWarning)
        plain = gd.fit_cluster(t, systematics=None, progress=False, **kw)
        honest = gd.fit_cluster(t, progress=False, **kw)
    return t, plain, honest


def test_systematics_none_is_the_reference_and_the_default_adds_the_offset(small_fits):
    t, plain, honest = small_fits
    assert "D_stat" not in plain.posterior and "sd_sys" not in plain.summary().colnames
    # the sampled draws are those of the reference model, bit for bit
    np.testing.assert_array_equal(honest.posterior["D_stat"], plain.posterior["D"])
    np.testing.assert_array_equal(honest.posterior["Q"], plain.posterior["Q"])
    np.testing.assert_array_equal(honest.table["membership_prob"], plain.table["membership_prob"])
    rows = {str(r["parameter"]): r for r in honest.summary()}
    d = rows["D"]
    assert d["sd"] > 2 * d["sd_stat"] and d["sd"] ** 2 == pytest.approx(d["sd_stat"] ** 2 + d["sd_sys"] ** 2, rel=0.1)
    assert d["sd_stat"] == pytest.approx(float(np.std(plain.posterior["D"])), rel=1e-9)
    assert rows["Q"]["sd_sys"] == 0.0
    off = rows["parallax_offset"]
    rec = honest.table.meta["gaia_distances"]["cluster"]["systematics"]
    assert rec["kernel"] == "vasiliev2021" and rec["positions"] == "weighted pairs"
    assert off["sd"] == pytest.approx(rec["parallax_offset_sigma_mas"], rel=0.1) and off["sd_stat"] == 0.0
    # the offset's size: 0.01 mas at 850 pc is ~7 pc
    assert 0.007 < rec["parallax_offset_sigma_mas"] < 0.0125
    assert d["sd_sys"] == pytest.approx(850.0**2 / 1000 * rec["parallax_offset_sigma_mas"], rel=0.15)
    # convergence numbers are those of the sampled draws
    assert d["r_hat"] == pytest.approx({str(r["parameter"]): r for r in plain.summary()}["D"]["r_hat"])


def test_the_fit_round_trips_with_its_systematics(small_fits, tmp_path):
    _, _, honest = small_fits
    path = honest.to_netcdf(str(tmp_path / "post.nc"))
    again = gd.ClusterFit.from_table(honest.table, path)
    a, b = honest.summary(), again.summary()
    np.testing.assert_allclose(np.asarray(a["sd"], float), np.asarray(b["sd"], float), rtol=1e-12)
    assert list(a["parameter"]) == list(b["parameter"])


def test_options_are_checked_before_any_work():
    t = gd.simulate_field(60, n_cluster=20, seed=1)
    with pytest.raises(ValueError, match="vasiliev2021"):
        gd.fit_cluster(t, systematics="gaia")
    with pytest.raises(ValueError, match="parallax_offset_prior"):
        gd.fit_cluster(t, parallax_offset_prior="unknown")


def test_offset_prior_shifts_the_distance_outward(small_fits):
    """A positive mean offset (parallaxes too large) puts the cluster further away, and widens it."""
    t, plain, _ = small_fits
    stars = plain.stars
    member = np.asarray(plain.table["membership_prob"])[stars.rows]
    table = plain.table
    base = fit_systematics("lindegren2021", table, stars, member, plain.posterior)
    shifted = fit_systematics("lindegren2021", table, stars, member, plain.posterior, offset_prior="vasiliev2021")
    assert base.offset_mean == 0.0 and 0.0 < shifted.offset_mean <= 0.010
    a = add_systematics(plain.posterior, base, seed=1)
    b = add_systematics(plain.posterior, shifted, seed=1)
    assert b["D"].mean() > a["D"].mean() + 3.0 and b["D"].std() >= a["D"].std()


def test_without_positions_the_zero_separation_variance_is_used(small_fits):
    t, plain, _ = small_fits
    table = plain.table.copy()
    table.remove_columns(["ra", "dec"])
    member = np.asarray(plain.table["membership_prob"])[plain.stars.rows]
    with pytest.warns(gd.GaiaDistancesWarning, match="no ra/dec"):
        sys = fit_systematics("lindegren2021", table, plain.stars, member, plain.posterior)
    assert sys.positions == "no positions" and sys.parallax_variance == pytest.approx(142e-6)
    assert fit_systematics(None, table, plain.stars, member, plain.posterior) is None


def test_proper_motion_offsets_of_a_kinematic_fit():
    """The kinematic path of fit_cluster's post-sampling step, on the stars a kinematic fit selects."""
    from gaia_distances.cluster.stars import select_stars

    t = gd.simulate_field(400, n_cluster=200, seed=9)
    sel = select_stars(t, zero_point="parallax_zeropoint_true", kinematics=True)
    assert sel.stars.kinematic
    rng = np.random.default_rng(0)
    shape = (2, 300)
    post = {
        "D": 850.0 + rng.normal(0, 1.0, shape),
        "sigma": 10.0 + rng.normal(0, 0.5, shape),
        "sigma_log": 0.012 + rng.normal(0, 0.0005, shape),
        "Q": 0.33 + rng.normal(0, 0.01, shape),
        "pmra": -10.97 + rng.normal(0, 0.01, shape),
        "pmdec": -2.94 + rng.normal(0, 0.01, shape),
        "sigma_v": 0.8 + rng.normal(0, 0.05, shape),
    }
    member = np.asarray(t["is_member"], float)[sel.stars.rows]
    sys = fit_systematics("lindegren2021", sel.table, sel.stars, member, post)
    assert sys.pm_variance == pytest.approx(292e-6, rel=0.05)  # 17 uas/yr within a degree
    out = add_systematics(post, sys, seed=3)
    assert {"pmra_offset", "pmdec_offset", "pmra_stat", "pmdec_stat", "parallax_offset"} <= set(out)
    np.testing.assert_array_equal(out["pmra_stat"], post["pmra"])
    assert np.std(out["pmra"]) == pytest.approx(math.hypot(0.01, math.sqrt(292e-6)), rel=0.1)
    rows = {str(r["parameter"]): r for r in parameter_summary(out)}
    assert rows["pmra"]["sd_sys"] == pytest.approx(math.sqrt(292e-6), rel=0.1)
    assert rows["pmdec_offset"]["sd_stat"] == 0.0


def test_cli_cluster_systematics(tmp_path, capsys):
    from gaia_distances.cli import main
    from gaia_distances.io import write_table

    t = gd.simulate_field(300, n_cluster=150, seed=4)
    t["parallax_corrected"] = t["parallax"] - t["parallax_zeropoint_true"]
    src = tmp_path / "in.ecsv"
    write_table(t, src)
    args = ["--json", "cluster", str(src), "--kinematics", "off", "--field", "edsd"]
    args += ["--num-warmup", "100", "--num-samples", "50", "--num-chains", "1"]
    assert main([*args, "-o", str(tmp_path / "a.ecsv"), "--systematics", "none"]) == 0
    assert main([*args, "-o", str(tmp_path / "b.ecsv"), "--systematics", "lindegren2021"]) == 0
    capsys.readouterr()
    a, b = gd.load_table(tmp_path / "a.ecsv"), gd.load_table(tmp_path / "b.ecsv")
    assert a.meta["gaia_distances"]["cluster"]["systematics"] is None
    assert b.meta["gaia_distances"]["cluster"]["systematics"]["kernel"] == "lindegren2021"
    with pytest.raises(SystemExit):
        main([*args, "-o", str(tmp_path / "c.ecsv"), "--systematics", "gaia"])


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["lindegren2021", "vasiliev2021"])
def test_fitted_distance_sd_matches_the_dense_gls_on_a_2000_star_cone(kernel):
    """Must-show 2: D's sd from fit_cluster against the dense GLS of the members' mean parallax.

    A 0.5-degree cone of 2 000 stars (1 500 members) with the offsets drawn from the kernel;
    the GLS uses the true members, ``C = V(theta_ij) + diag(sigma_i^2 + s^2)`` (``s``: the
    cluster's parallax spread) by Cholesky in float64, and ``sd(D) = D^2 / 1000 sd(w)``.
    """
    t = gd.simulate_field(500, n_cluster=1500, cluster_distance=1200.0, parallax_systematics=kernel, seed=17)
    fit = _quiet_fit(t, kernel)
    d = float(np.mean(fit.posterior["D_stat"]))
    member = np.asarray(t["is_member"])
    spread = 1000.0 / d * float(np.median(fit.posterior["sigma_log_stat"]))
    sigma2 = np.asarray(t["parallax_error"].value)[member] ** 2 + spread**2
    var_w = gls_variance(t["ra"].value[member], t["dec"].value[member], sigma2, kernel)
    gls_sd = d**2 / 1000.0 * math.sqrt(var_w)
    assert float(np.std(fit.posterior["D"])) == pytest.approx(gls_sd, rel=0.05)


def _quiet_fit(t, kernel):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gd.GaiaDistancesWarning)
        return gd.fit_cluster(
            t, kinematics=False, field="edsd", zero_point="parallax_zeropoint_true", systematics=kernel,
            num_samples=1000, seed=4, progress=False,
        )  # fmt: skip


def _fake_fit(t):
    """The stars a parallax-only fit of ``t`` selects, the true memberships and a posterior near the truth."""
    from gaia_distances.cluster.stars import select_stars

    sel = select_stars(t, zero_point="parallax_zeropoint_true", kinematics=False)
    rng = np.random.default_rng(0)
    post = {"D": 850.0 + rng.normal(0, 1.0, (2, 100)), "sigma": 10.0 + rng.normal(0, 0.5, (2, 100))}
    return sel, np.asarray(t["is_member"], float)[sel.stars.rows], post


def test_a_user_kernel_that_is_not_a_covariance_is_refused_before_any_fit(monkeypatch):
    from gaia_distances.cluster import batch, fit

    def no_search(*args, **kwargs):
        raise AssertionError("the fit searched for a start before checking the kernel")

    monkeypatch.setattr(fit, "find_start", no_search)
    monkeypatch.setattr(batch, "find_start", no_search)
    t = gd.simulate_field(300, n_cluster=100, seed=4)
    with pytest.raises(ValueError, match=r"custom kernel .*<lambda>.*NaN or inf at 0-180 deg"):
        gd.fit_cluster(t, systematics=lambda theta: np.full_like(theta, np.nan), kinematics=False)
    with pytest.raises(ValueError, match=r"V\(0\) must be positive"):
        gd.fit_clusters([t, t], systematics=lambda theta: -1e-4 + 0 * theta, kinematics=False)
    with pytest.raises(ValueError, match="not positive semi-definite over the fitted stars"):
        gd.fit_cluster(
            t,
            systematics=lambda theta: np.where(theta < 0.1, 1e-4, -1e-4),
            kinematics=False,
            zero_point="parallax_zeropoint_true",
        )


def test_all_nan_positions_take_the_zero_separation_variance_with_a_warning():
    t = gd.simulate_field(300, n_cluster=100, seed=4)
    t["ra"] = np.full(len(t), np.nan) * t["ra"].unit
    t["dec"] = np.full(len(t), np.nan) * t["dec"].unit
    sel, member, post = _fake_fit(t)
    with pytest.warns(gd.GaiaDistancesWarning, match="no fitted star has a finite ra/dec"):
        sys = fit_systematics("lindegren2021", sel.table, sel.stars, member, post)
    assert sys.positions == "no positions" and sys.parallax_variance == pytest.approx(142e-6)
    assert sys.n_without_position == sel.stars.n_stars


def test_stars_without_a_position_count_at_zero_separation():
    """A few members without ra/dec raise the shared variance to what V(0) for their pairs gives, with a warning."""
    t = gd.simulate_field(300, n_cluster=100, seed=4)
    sel, member, post = _fake_fit(t)
    with warnings.catch_warnings():
        warnings.simplefilter("error", gd.GaiaDistancesWarning)
        placed = fit_systematics("lindegren2021", sel.table, sel.stars, member, post)
    lost = sel.stars.rows[np.flatnonzero(member > 0)[:10]]
    table = sel.table.copy()
    table["ra"][lost] = np.nan * table["ra"].unit
    with pytest.warns(gd.GaiaDistancesWarning, match="10 of .* fitted stars have no finite ra/dec"):
        sys = fit_systematics("lindegren2021", table, sel.stars, member, post)
    assert sys.positions == "weighted pairs" and sys.n_without_position == 10
    # the dense sum with theta = 0 for every pair that involves a star without a position
    ra = np.asarray(table["ra"].value)[sel.stars.rows]
    dec = np.asarray(table["dec"].value)[sel.stars.rows]
    w = member / (np.asarray(sel.stars.parallax_error) ** 2 + (1000 / 850 * 10 / 850) ** 2)
    cov = covariance_matrix(ra, dec, "lindegren2021")
    cov[np.isnan(cov)] = 142e-6
    assert sys.parallax_variance == pytest.approx(w @ cov @ w / w.sum() ** 2, rel=1e-3)
    assert sys.parallax_variance > placed.parallax_variance


def test_a_checked_kernel_is_not_checked_again_over_the_fit(monkeypatch):
    """The options resolve a user's kernel once; the star-level check and the offset use that kernel."""
    import gaia_distances.systematics as systematics_module
    from gaia_distances.cluster.options import checked_fit_options
    from gaia_distances.cluster.systematics import check_kernel_over_stars

    calls = []
    check = systematics_module.check_kernel
    monkeypatch.setattr(systematics_module, "check_kernel", lambda k: calls.append(k) or check(k))
    options = checked_fit_options(
        prior=None,
        field="edsd",
        systematics=lambda theta: 1e-4 * np.exp(-theta / 0.5),
        parallax_offset_prior=None,
        seed=0,
        n_quantile_draws=4,
        n_membership_draws=4,
    )
    assert len(calls) == 1 and options.kernel is calls[0]
    t = gd.simulate_field(300, n_cluster=100, seed=4)
    sel, member, post = _fake_fit(t)
    check_kernel_over_stars(options.kernel, sel.table, sel.stars)
    sys = fit_systematics(options.kernel, sel.table, sel.stars, member, post)
    assert len(calls) == 1 and sys.kernel is options.kernel


def test_the_zero_separation_warnings_name_the_step():
    t = gd.simulate_field(300, n_cluster=100, seed=4)
    sel, member, post = _fake_fit(t)
    del sel.table["ra"]
    with pytest.warns(gd.GaiaDistancesWarning, match=r"^fit_clusters: the table has no ra/dec"):
        fit_systematics("lindegren2021", sel.table, sel.stars, member, post, step="fit_clusters")
