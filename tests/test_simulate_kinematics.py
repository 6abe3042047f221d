"""simulate_field's proper motions: Gaia-like errors and correlations, a moving cluster, a rotating disc."""

from __future__ import annotations

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import CartesianDifferential, CartesianRepresentation, SkyCoord

import gaia_distances as gd
from gaia_distances.core.astrometry import correlated_astrometric_noise, proper_motion_error_dr3
from gaia_distances.core.kinematics import A_V
from gaia_distances.core.numerics import correlation_matrices, positive_definite_correlations

PM_COLUMNS = ["pmra", "pmdec", "pmra_error", "pmdec_error", "parallax_pmra_corr", "parallax_pmdec_corr"]
PM_COLUMNS += ["pmra_pmdec_corr"]
CORR = ["parallax_pmra_corr", "parallax_pmdec_corr", "pmra_pmdec_corr"]


def _v(t, name):
    return np.asarray(getattr(t[name], "value", t[name]), float)


def _astropy_pm(ra, dec, distance_pc, velocity_kms):
    """Proper motion (mas/yr) of a star moving with a barycentric ICRS Cartesian velocity, by astropy."""
    unit = SkyCoord(ra * u.deg, dec * u.deg).cartesian.xyz
    v = velocity_kms.to_value(u.km / u.s).reshape((3,) + (1,) * (unit.ndim - 1))
    vel = CartesianDifferential(np.broadcast_to(v, unit.shape) * (u.km / u.s))
    rep = CartesianRepresentation(unit * distance_pc * u.pc, differentials=vel)
    c = SkyCoord(rep, frame="icrs")
    return c.pm_ra_cosdec.to_value(u.mas / u.yr), c.pm_dec.to_value(u.mas / u.yr)


@pytest.fixture(scope="module")
def big_field():
    return gd.simulate_field(18_000, n_cluster=2000, frac_2p=0.02, seed=12)


@pytest.fixture(scope="module")
def deep_field():
    """No magnitude limit: field distances follow EDSD(1000 pc) exactly."""
    return gd.simulate_field(20_000, field_prior=gd.EDSD(1000.0), magnitude_limit=None, seed=5)


def test_proper_motion_errors_follow_dr3():
    g = np.linspace(6.0, 21.0, 61)
    pm = proper_motion_error_dr3(g)
    for s in (pm.pmra, pm.pmdec):
        assert np.all(np.diff(s) >= 0) and np.all(np.diff(s)[g[1:] > 13.5] > 0)
    # Gaia EDR3/DR3 summary: 0.02-0.03 mas/yr at G < 15, 0.07 at 17, 0.5 at 20, 1.4 at 21
    for mag, anchor in ((15.0, 0.025), (17.0, 0.07), (20.0, 0.5), (21.0, 1.4)):
        at = proper_motion_error_dr3(mag)
        assert float(at.pmra) == pytest.approx(anchor, rel=0.3), mag
        assert float(at.pmdec) == pytest.approx(anchor, rel=0.3), mag
    assert 0.005 < float(proper_motion_error_dr3(12.0).pmdec) < float(proper_motion_error_dr3(12.0).pmra) < 0.03


def test_table_errors_grow_with_g_and_track_the_parallax_error(big_field):
    t = big_field
    g, s = _v(t, "phot_g_mean_mag"), _v(t, "parallax_error")
    sa, sd = _v(t, "pmra_error"), _v(t, "pmdec_error")
    ok = np.isfinite(s)
    assert np.median(sa[ok & (g > 19)]) > 5 * np.median(sa[ok & (g < 16)])
    assert np.median(sa[ok] / s[ok]) == pytest.approx(1.03, rel=0.02)
    assert np.median(sd[ok] / s[ok]) == pytest.approx(0.89, rel=0.02)
    # 6-parameter solutions are inflated as their parallax errors are
    sol = np.asarray(t["astrometric_params_solved"])
    bright = ok & (g < 18)
    inflation = [
        np.median(sa[bright & (sol == k)] / proper_motion_error_dr3(g[bright & (sol == k)]).pmra) for k in (95, 31)
    ]
    assert inflation[0] / inflation[1] == pytest.approx(1.3, rel=0.1)
    for name in ("pmra", "pmdec", "pmra_error", "pmdec_error", "pmra_true", "pmdec_true"):
        assert t[name].unit == u.mas / u.yr, name
    for c in CORR:
        assert t[c].info.description


def test_correlations_are_realistic_and_positive_definite(big_field):
    rho = np.stack([_v(big_field, c) for c in CORR], axis=1)
    rho = rho[np.all(np.isfinite(rho), axis=1)]
    assert np.all(np.abs(rho) <= 0.95)
    assert np.linalg.eigvalsh(correlation_matrices(rho)).min() >= 0.05 - 1e-9
    # one base value per field plus a per-star scatter that grows with G
    assert np.all(np.abs(np.median(rho, axis=0)) < 0.45)
    g = _v(big_field, "phot_g_mean_mag")[np.all(np.isfinite(np.stack([_v(big_field, c) for c in CORR])), axis=0)]
    assert np.std(rho[g > 19, 0]) > 1.5 * np.std(rho[g < 14, 0])
    other = gd.simulate_field(200, seed=13)
    assert not np.isclose(np.nanmedian(_v(other, CORR[0])), np.median(rho[:, 0]), atol=0.02)


def test_shrinking_to_positive_definite():
    bad = np.array([[0.9, 0.9, -0.9], [0.95, -0.95, 0.95], [0.2, -0.1, 0.3]])
    fixed = positive_definite_correlations(bad)
    assert np.linalg.eigvalsh(correlation_matrices(bad)).min() < 0
    assert np.linalg.eigvalsh(correlation_matrices(fixed)).min(axis=1) == pytest.approx([0.05, 0.05, 0.4], abs=0.35)
    assert np.all(np.linalg.eigvalsh(correlation_matrices(fixed)).min(axis=1) >= 0.05 - 1e-12)
    np.testing.assert_array_equal(fixed[2], bad[2])
    # the signs and ratios are kept: only the off-diagonal part is scaled
    np.testing.assert_allclose(fixed[0] / fixed[0, 0], bad[0] / bad[0, 0])
    assert np.all(np.isnan(positive_definite_correlations(np.full((1, 3), np.nan))))


def test_the_parallax_part_of_the_joint_noise_is_the_parallax_noise():
    z = np.random.default_rng(1).standard_normal((1000, 3))
    sigma = np.abs(z) + 0.1
    rho = positive_definite_correlations(np.random.default_rng(2).uniform(-0.9, 0.9, (1000, 3)))
    e = correlated_astrometric_noise(z, sigma, rho)
    np.testing.assert_array_equal(e[:, 0], sigma[:, 0] * z[:, 0])


def test_pulls_have_unit_variance_and_the_stated_correlations(big_field):
    t = big_field
    w_true = 1000.0 / _v(t, "r_true") + _v(t, "parallax_zeropoint_true")
    pulls = np.stack(
        [
            (_v(t, "parallax") - w_true) / _v(t, "parallax_error"),
            (_v(t, "pmra") - _v(t, "pmra_true")) / _v(t, "pmra_error"),
            (_v(t, "pmdec") - _v(t, "pmdec_true")) / _v(t, "pmdec_error"),
        ]
    )
    ok = np.all(np.isfinite(pulls), axis=0)
    pulls, n = pulls[:, ok], int(ok.sum())
    assert n > 19_000
    np.testing.assert_allclose(np.mean(pulls, axis=1), 0.0, atol=4 / np.sqrt(n))
    np.testing.assert_allclose(np.var(pulls, axis=1), 1.0, atol=4 * np.sqrt(2 / n))
    for k, (i, j) in enumerate(((0, 1), (0, 2), (1, 2))):
        stated = _v(t, CORR[k])[ok]
        assert np.mean(pulls[i] * pulls[j]) == pytest.approx(np.mean(stated), abs=4 / np.sqrt(n)), CORR[k]
        # and star by star: the pulls of stars with larger stated correlations are more correlated
        hi = stated > np.median(stated)
        assert np.mean(pulls[i, hi] * pulls[j, hi]) > np.mean(pulls[i, ~hi] * pulls[j, ~hi])


def test_members_move_with_the_cluster_space_velocity():
    t = gd.simulate_field(0, n_cluster=3000, cluster_sigma_log=0.002, magnitude_limit=None, seed=3)
    meta = t.meta["gaia_distances"]["simulation"]
    # the default velocity is M67's motion at its position and 850 pc, checked with astropy
    pm0 = _astropy_pm(132.846, 11.814, 850.0, [8.13, 56.24, -4.63] * (u.km / u.s))
    assert meta["cluster_pmra"] == pytest.approx(pm0[0], abs=1e-6) and pm0[0] == pytest.approx(-10.97, abs=0.02)
    assert meta["cluster_pmdec"] == pytest.approx(pm0[1], abs=1e-6) and pm0[1] == pytest.approx(-2.94, abs=0.02)
    a, d = _v(t, "pmra_true"), _v(t, "pmdec_true")
    sig_pm = 0.7 * (1000.0 / 850.0) / A_V
    assert meta["cluster_sigma_v"] == 0.7 and meta["cluster_sigma_pm"] == pytest.approx(sig_pm)
    assert np.mean(a) == pytest.approx(pm0[0], abs=4 * sig_pm / np.sqrt(len(t)) + 0.01)
    assert np.mean(d) == pytest.approx(pm0[1], abs=4 * sig_pm / np.sqrt(len(t)) + 0.01)
    assert np.std(a) == pytest.approx(sig_pm, rel=0.08) and np.std(d) == pytest.approx(sig_pm, rel=0.08)
    obs = _v(t, "pmra") - a
    assert np.std(obs / _v(t, "pmra_error")) == pytest.approx(1.0, rel=0.05)


def test_a_given_velocity_is_projected_at_each_members_position():
    v = [-6.0, 28.0, -14.0] * (u.km / u.s)
    t = gd.simulate_field(
        0,
        n_cluster=400,
        centre=(56.75, 24.12),
        cluster_distance=136.0,
        cluster_radius_pc=3.0,
        radius=3 * u.deg,
        cluster_velocity=v,
        cluster_velocity_dispersion=0.0,
        seed=4,
    )
    # without internal motion each member's proper motion is the space velocity seen from where it is
    ra, dec, r = _v(t, "ra"), _v(t, "dec"), _v(t, "r_true")
    want = _astropy_pm(ra, dec, r, v)
    np.testing.assert_allclose(_v(t, "pmra_true"), want[0], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(_v(t, "pmdec_true"), want[1], rtol=1e-6, atol=1e-8)
    meta = t.meta["gaia_distances"]["simulation"]
    assert meta["cluster_velocity_kms"] == [-6.0, 28.0, -14.0]
    assert (meta["cluster_pmra"], meta["cluster_pmdec"]) == pytest.approx(_astropy_pm(56.75, 24.12, 136.0, v))
    # perspective: members spread over degrees do not share one proper motion
    assert np.ptp(_v(t, "pmra_true")) > 0.5


def test_field_proper_motions_depend_on_distance_like_a_rotating_disc(deep_field):
    r, a, d = _v(deep_field, "r_true"), _v(deep_field, "pmra_true"), _v(deep_field, "pmdec_true")
    near, far = r < 800, r > 3000
    for pm in (a, d):
        diff = np.mean(pm[near]) - np.mean(pm[far])
        se = np.sqrt(np.var(pm[near]) / near.sum() + np.var(pm[far]) / far.sum())
        assert abs(diff) > 5 * se
    # a constant velocity dispersion: the spread in mas/yr falls as 1/r
    spread_times_r = []
    for lo, hi in ((500, 700), (1000, 1300), (2000, 2500), (4000, 5000)):
        s = (r > lo) & (r < hi)
        spread_times_r.append(np.std(a[s]) * np.median(r[s]) / 1000.0 * A_V)  # km/s
    assert np.all(np.diff([np.std(a[(r > lo) & (r < hi)]) for lo, hi in ((500, 700), (4000, 5000))]) < 0)
    np.testing.assert_allclose(spread_times_r, np.mean(spread_times_r), rtol=0.2)
    assert 25 < np.mean(spread_times_r) < 45  # km/s: thin disc plus 10 % thick disc


def test_nearby_field_stars_show_the_solar_reflex_motion():
    t = gd.simulate_field(20_000, field_prior=gd.EDSD(40.0), magnitude_limit=None, seed=6)
    r = _v(t, "r_true")
    s = r < 200
    # the mean star lags the Sun by its (U, V, W) = (11.1, 12.24, 7.25) km/s plus the mean asymmetric drift
    drift = 0.9 * 35.0**2 / 80.0 + 0.1 * 60.0**2 / 80.0
    gal = SkyCoord(_v(t, "ra")[s] * u.deg, _v(t, "dec")[s] * u.deg).galactic
    unit = gal.cartesian.xyz
    rel = CartesianDifferential(np.broadcast_to([[-11.1], [-12.24 - drift], [-7.25]], unit.shape) * (u.km / u.s))
    c = SkyCoord(CartesianRepresentation(unit * r[s] * u.pc, differentials=rel), frame="galactic").icrs
    for col, want in (("pmra_true", c.pm_ra_cosdec), ("pmdec_true", c.pm_dec)):
        got_kms = _v(t, col)[s] * r[s] / 1000.0 * A_V
        want_kms = want.to_value(u.mas / u.yr) * r[s] / 1000.0 * A_V
        se = np.std(got_kms) / np.sqrt(s.sum())
        assert np.mean(got_kms) == pytest.approx(np.mean(want_kms), abs=4 * se + 1.5), col


def test_same_seed_same_proper_motions_and_rows():
    a = gd.simulate_field(300, n_cluster=50, magnitude_limit=19.0, seed=4)
    b = gd.simulate_field(300, n_cluster=50, magnitude_limit=19.0, seed=4)
    c = gd.simulate_field(300, n_cluster=50, magnitude_limit=19.0, seed=5)
    assert len(a) == 350 and np.all(_v(a, "phot_g_mean_mag") < 19.0)
    for name in [*PM_COLUMNS, "pmra_true", "pmdec_true"]:
        np.testing.assert_array_equal(_v(a, name), _v(b, name))
        assert np.all(np.isfinite(_v(a, name)))
    assert not np.array_equal(_v(a, "pmra"), _v(c, "pmra"))


def test_two_parameter_rows_have_no_proper_motion(big_field):
    t = big_field
    two = np.asarray(t["astrometric_params_solved"]) == 3
    assert 200 < two.sum() < 600
    np.testing.assert_array_equal(np.isnan(_v(t, "parallax")), two)
    for name in PM_COLUMNS:
        assert np.all(np.isnan(_v(t, name)[two])), name
        assert np.all(np.isfinite(_v(t, name)[~two])), name
    # the truth is known for every star
    assert np.all(np.isfinite(_v(t, "pmra_true"))) and np.all(np.isfinite(_v(t, "pmdec_true")))
