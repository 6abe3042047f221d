"""Correlated parallax systematics and error inflation: kernels, offsets, modes, draws, inflation, table edge."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from astropy import units as u
from astropy.table import Table

from gaia_distances.core.inflation import (
    MAIZ_APELLANIZ_2022_G,
    MAIZ_APELLANIZ_2022_K,
    f_el_badry_2021,
    inflate_parallax_error,
    k_maiz_apellaniz_2022,
)
from gaia_distances.core.kernel_checks import check_covariance_psd, check_kernel
from gaia_distances.core.offset_field import clip_to_psd, draw_offset_field, leading_modes
from gaia_distances.core.systematics import (
    SYSTEMATICS_KERNELS,
    angular_separation,
    covariance_matrix,
    get_kernel,
    shared_offset_variance,
    weighted_offset_variance,
)
from gaia_distances.errors import GaiaDistancesWarning, MissingColumnsError
from gaia_distances.systematics import (
    field_offset_variance,
    parallax_error_inflation,
    resolve_offset_prior,
    resolve_systematics,
    systematics_record,
)

UAS2 = 1e-6  # mas^2


def _cone(n: int, radius: float, seed: int = 0, centre: tuple[float, float] = (132.8, 11.8)):
    """``n`` positions uniform on a cap of ``radius`` deg (ra, dec in deg)."""
    rng = np.random.default_rng(seed)
    pa = rng.uniform(0, 2 * np.pi, n)
    sep = np.arccos(1 - rng.uniform(0, 1, n) * (1 - np.cos(np.radians(radius))))
    d0, a0 = np.radians(centre[1]), np.radians(centre[0])
    dec = np.arcsin(np.sin(d0) * np.cos(sep) + np.cos(d0) * np.sin(sep) * np.cos(pa))
    ra = a0 + np.arctan2(np.sin(pa) * np.sin(sep) * np.cos(d0), np.cos(sep) - np.sin(d0) * np.sin(dec))
    return np.degrees(ra), np.degrees(dec)


# --- kernels -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "theta", "expected_uas2"),
    [
        ("lindegren2021", 0.0, 142.0),
        ("lindegren2021", 16.0, 142.0 / math.e),
        ("vasiliev2021", 0.0, 120.0),
        ("vasiliev2021", 0.3, 25.0 + 70.0 * math.exp(-0.01 - 0.006**2)),
        ("vasiliev2021", 30.0, 50.0 / 101.0 + 70.0 * math.exp(-1.0 - 0.36)),
        ("maiz-apellaniz2021", 0.0, 106.2),
        # at 1.05 deg the cosine term is exactly cos(-5 pi/18) / cos(5 pi/18) = 1; V_QSO = 60 below 3 deg
        ("maiz-apellaniz2021", 1.05, 46.2 * (0.6 * math.exp(-0.75) + 0.4 * (0.94 * math.exp(-(3.0**0.8)) + 0.06)) + 60),
        ("maiz-apellaniz2021", 10.0, None),  # V_QSO = 1.62 (40 - 10) = 48.6 plus V_LMC, checked below
        ("maiz-apellaniz2021", 45.0, None),  # V_QSO = 0 beyond 40 deg
    ],
)
def test_parallax_kernels_match_the_published_formulas(name, theta, expected_uas2):
    v = float(get_kernel(name).parallax(np.array(theta))) / UAS2
    if expected_uas2 is None:
        phase = 5 * math.pi / 18
        lmc = 46.2 * (
            0.6 * math.exp(-theta / 1.4)
            + 0.4
            * math.cos(2 * math.pi * theta / 1.05 - phase)
            / math.cos(phase)
            * (0.94 * math.exp(-((theta / 0.35) ** 0.8)) + 0.06)
        )
        expected_uas2 = lmc + (1.62 * (40.0 - theta) if theta <= 40 else 0.0)
    assert v == pytest.approx(expected_uas2, rel=1e-12)


def test_maiz_apellaniz_zero_separation_is_10_3_uas():
    assert math.sqrt(float(get_kernel("maiz-apellaniz2021").parallax(np.zeros(1))[0])) * 1000 == pytest.approx(
        10.305, abs=1e-3
    )


@pytest.mark.parametrize(
    ("name", "theta", "expected_uas2"),
    [
        ("lindegren2021", 0.0, 292.0),
        ("lindegren2021", 12.0, 292.0 / math.e),
        ("vasiliev2021", 0.0, 700.0),
        ("vasiliev2021", 12.0, 400.0 / 41.0 + 300.0 / math.e),
    ],
)
def test_proper_motion_kernels_match_the_published_formulas(name, theta, expected_uas2):
    v = float(get_kernel(name).function("proper_motion")(np.array(theta))) / UAS2
    assert v == pytest.approx(expected_uas2, rel=1e-12)


def test_kernel_registry_names_callables_and_errors():
    assert set(SYSTEMATICS_KERNELS) == {"lindegren2021", "vasiliev2021", "maiz-apellaniz2021"}
    with pytest.raises(ValueError, match="lindegren2021.*vasiliev2021|vasiliev2021.*lindegren2021") as err:
        resolve_systematics("lindegren2020")
    assert "'lindegren2020'" in str(err.value)
    with pytest.raises(ValueError, match="name a kernel"):
        resolve_systematics(True)
    with pytest.raises(ValueError, match="callable"):
        resolve_systematics(3.0)  # type: ignore[arg-type]
    for off in (None, False, "none", "None"):
        assert resolve_systematics(off) is None
    custom = resolve_systematics(lambda theta: 1e-4 * np.exp(-theta))
    assert custom is not None and custom.name == "custom" and not custom.positive_definite
    with pytest.raises(ValueError, match="no proper_motion covariance"):
        get_kernel("maiz-apellaniz2021").function("proper_motion")


def test_angular_separation_is_exact_at_small_and_large_separations():
    assert float(angular_separation(0.0, 0.0, 180.0, 0.0)) == pytest.approx(180.0, abs=1e-12)
    assert float(angular_separation(10.0, 89.0, 190.0, 89.0)) == pytest.approx(2.0, abs=1e-12)
    tiny = 1e-7  # deg: the arccos formula loses this entirely
    assert float(angular_separation(50.0, 20.0, 50.0, 20.0 + tiny)) == pytest.approx(tiny, rel=1e-8)


# --- the shared offset --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SYSTEMATICS_KERNELS))
def test_shared_offset_variance_exact_equals_brute_force_mean_over_pairs(name):
    ra, dec = _cone(40, 1.0, seed=2)
    g = np.linspace(15.0, 21.0, 40)
    kernel = get_kernel(name)
    pairs = []
    for i in range(40):
        for j in range(40):
            if i != j:
                theta = float(angular_separation(ra[i], dec[i], ra[j], dec[j]))
                s = min(max(1.0, g[i] - 17.0), max(1.0, g[j] - 17.0)) if kernel.magnitude_scaling else 1.0
                pairs.append(float(kernel.parallax(np.array(theta))) * s)
    got = shared_offset_variance(ra, dec, name, g)
    assert got.exact and got.n_pairs == 40 * 39 and got.standard_error == 0.0
    assert got.variance == pytest.approx(np.mean(pairs), rel=1e-12)


def test_shared_offset_variance_magnitude_scaling_is_vasiliev_only():
    ra, dec, g = [10.0, 10.0], [0.0, 0.5], [20.0, 21.0]  # s = 3 and 4: the pair counts min = 3
    v = float(get_kernel("vasiliev2021").parallax(np.array(0.5)))
    assert shared_offset_variance(ra, dec, "vasiliev2021", g).variance == pytest.approx(3 * v, rel=1e-12)
    assert shared_offset_variance(ra, dec, "vasiliev2021").variance == pytest.approx(v, rel=1e-12)
    lv = float(get_kernel("lindegren2021").parallax(np.array(0.5)))
    assert shared_offset_variance(ra, dec, "lindegren2021", g).variance == pytest.approx(lv, rel=1e-12)
    # a NaN magnitude is not scaled
    assert shared_offset_variance(ra, dec, "vasiliev2021", [np.nan, 21.0]).variance == pytest.approx(v, rel=1e-12)


def test_shared_offset_variance_subsample_is_unbiased_within_its_error():
    ra, dec = _cone(1200, 1.0, seed=3)
    g = np.random.default_rng(3).uniform(14.0, 21.0, 1200)
    exact = shared_offset_variance(ra, dec, "vasiliev2021", g)
    est = shared_offset_variance(ra, dec, "vasiliev2021", g, max_exact=1000, min_pairs=100_000)
    assert exact.exact and not est.exact and est.n_pairs == 100_000
    assert abs(est.variance - exact.variance) < 4 * est.standard_error
    assert est.variance == pytest.approx(exact.variance, rel=0.01)  # the documented tolerance
    again = shared_offset_variance(ra, dec, "vasiliev2021", g, max_exact=1000, min_pairs=100_000)
    assert again == est  # seeded: deterministic


def test_shared_offset_variance_edge_cases():
    one = shared_offset_variance([10.0], [5.0], "lindegren2021")
    assert one.variance == pytest.approx(142.0 * UAS2) and one.n_pairs == 0
    nan_rows = shared_offset_variance([10.0, np.nan, 10.0], [5.0, 5.0, 5.5], "lindegren2021")
    assert nan_rows.n_pairs == 2  # the star with no position takes no part


# --- modes and PSD clipping ---------------------------------------------------------------------------


def test_maiz_apellaniz_kernel_is_not_psd_and_is_clipped():
    ra, dec = _cone(60, 0.5, seed=1)
    k = covariance_matrix(ra, dec, "maiz-apellaniz2021")
    assert np.linalg.eigvalsh(k).min() < -1e-4 * np.linalg.eigvalsh(k).max()  # far beyond rounding
    clip = clip_to_psd(k)
    assert np.linalg.eigvalsh(clip.matrix).min() > -1e-12 * np.trace(k)
    assert 0 < clip.clipped_fraction < 0.05
    np.testing.assert_allclose(clip.factor @ clip.factor.T, clip.matrix, atol=1e-15)
    assert leading_modes(ra, dec, "maiz-apellaniz2021").clipped_fraction == pytest.approx(clip.clipped_fraction)
    assert leading_modes(ra, dec, "lindegren2021").clipped_fraction < 1e-12


def test_leading_modes_first_mode_is_the_shared_offset():
    ra, dec = _cone(100, 1.0, seed=4)
    for name in SYSTEMATICS_KERNELS:
        modes = leading_modes(ra, dec, name, 100)
        shared = shared_offset_variance(ra, dec, name).variance
        assert modes.total_variance == pytest.approx(float(get_kernel(name).parallax(np.zeros(1))[0]))
        assert modes.variances[0] == pytest.approx(shared, rel=0.01)
        assert np.mean(modes.loadings[:, 0] ** 2) == pytest.approx(1.0)
        assert np.all(np.abs(modes.loadings[:, 0] - 1) < 0.1)  # nearly constant, positive
        # all modes together rebuild the (clipped) matrix
        rebuilt = (modes.loadings * modes.variances) @ modes.loadings.T
        np.testing.assert_allclose(rebuilt, clip_to_psd(covariance_matrix(ra, dec, name)).matrix, atol=1e-12)
    assert leading_modes(ra, dec, "lindegren2021").fractions[0] > 0.9


def test_leading_modes_subsample_extends_to_every_star():
    ra, dec = _cone(200, 1.0, seed=5)
    ra[7] = np.nan
    full = leading_modes(ra, dec, "vasiliev2021", 2)
    sub = leading_modes(ra, dec, "vasiliev2021", 2, max_points=80)
    assert sub.n_points == 80 and sub.loadings.shape == (200, 2)
    assert np.all(np.isnan(sub.loadings[7])) and np.isfinite(np.delete(sub.loadings, 7, axis=0)).all()
    assert sub.variances[0] == pytest.approx(full.variances[0], rel=0.02)
    np.testing.assert_allclose(np.delete(sub.loadings[:, 0], 7), np.delete(full.loadings[:, 0], 7), atol=0.02)


# --- draws --------------------------------------------------------------------------------------------


def test_draw_offset_field_direct_has_the_kernel_covariance():
    ra = np.array([50.0, 50.0, 50.2, 51.0, 55.0])
    dec = np.array([10.0, 10.0, 10.0, 10.0, 10.0])
    n = 20_000
    draws = draw_offset_field(ra, dec, "vasiliev2021", np.random.default_rng(1), n_draws=n)
    assert draws.shape == (n, 5)
    k = covariance_matrix(ra, dec, "vasiliev2021")
    emp = draws.T @ draws / n
    v0 = k[0, 0]
    assert np.abs(emp - k).max() < 4 * v0 * math.sqrt(2 / n)
    assert np.abs(draws.mean(axis=0)).max() < 4 * math.sqrt(v0 / n)


def test_draw_offset_field_grid_keeps_variance_and_field_mean_variance():
    ra, dec = _cone(300, 0.5, seed=6)
    n = 8000  # the stars are ~75 % one mode, so ~n independent values: relative errors ~ sqrt(2 / n) = 1.6 %
    for name, v0 in (("vasiliev2021", 120.0 * UAS2), ("maiz-apellaniz2021", 106.2 * UAS2)):
        rng = np.random.default_rng(2)
        draws = draw_offset_field(ra, dec, name, rng, n_draws=n, max_direct=0, grid_side=12)
        # every star's variance is V(0) (for Maiz too, although its grid matrix is clipped)
        assert np.mean(draws**2) == pytest.approx(v0, rel=0.065)
        # the field mean's variance is (V(0) + (N - 1) <V_ij>) / N: the cross-covariances are right
        shared = shared_offset_variance(ra, dec, name).variance
        assert np.var(draws.mean(axis=1)) == pytest.approx((v0 + 299 * shared) / 300, rel=0.065)


def test_draw_offset_field_is_seeded_and_keeps_nan_rows():
    ra, dec = np.array([10.0, np.nan, 10.1]), np.array([0.0, 0.0, 0.1])
    a = draw_offset_field(ra, dec, "lindegren2021", np.random.default_rng(5))
    b = draw_offset_field(ra, dec, "lindegren2021", np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert np.isnan(a[1]) and np.isfinite(a[[0, 2]]).all()


# --- inflation ----------------------------------------------------------------------------------------


def test_f_el_badry_2021_formula_and_clip_at_one():
    g = np.array([10.0, 12.65, 15.0, 17.0])
    ref = 0.21 * np.exp(-(((g - 12.65) / 0.90) ** 2)) - 0.00062 * g**2 + 0.0040 * g + 1.141
    np.testing.assert_allclose(f_el_badry_2021(g), ref, rtol=1e-14)
    assert float(f_el_badry_2021(12.65)) == pytest.approx(1.302386, abs=1e-6)
    assert np.all(f_el_badry_2021([18.7, 19.5, 21.0]) == 1.0)  # the raw fit falls below 1 past G ~ 18.6
    assert np.isnan(f_el_badry_2021(np.nan))


def test_k_maiz_apellaniz_2022_table_interpolation_clamp_and_6p():
    np.testing.assert_allclose(k_maiz_apellaniz_2022(MAIZ_APELLANIZ_2022_G), MAIZ_APELLANIZ_2022_K, rtol=1e-14)
    assert float(k_maiz_apellaniz_2022(10.5)) == pytest.approx((1.22 + 1.41) / 2)
    assert float(k_maiz_apellaniz_2022(4.0)) == 2.62 and float(k_maiz_apellaniz_2022(20.5)) == 1.14
    np.testing.assert_allclose(k_maiz_apellaniz_2022([12.25, 12.25], [True, False]), [1.25 * 1.90, 1.90])
    assert np.isnan(k_maiz_apellaniz_2022(np.nan))


def test_inflate_parallax_error_recipes():
    sigma, g = np.array([0.05, 0.05, 0.05]), np.array([12.25, 16.0, np.nan])
    maiz = inflate_parallax_error(sigma, g, "maiz-apellaniz2022", six_parameter=np.array([True, False, False]))
    np.testing.assert_allclose(maiz.error[:2], np.hypot([1.25 * 1.90 * 0.05, 1.195 * 0.05], 0.0103))
    assert np.isnan(maiz.error[2]) and maiz.not_applied.tolist() == [False, False, True]
    bare = inflate_parallax_error(sigma, g, "maiz-apellaniz2022", include_floor=False)
    np.testing.assert_allclose(bare.error[:2], [1.90 * 0.05, 1.195 * 0.05])
    eb = inflate_parallax_error(sigma, g, "El-Badry2021")
    np.testing.assert_allclose(eb.error[:2], f_el_badry_2021(g[:2]) * 0.05)
    plain = inflate_parallax_error(sigma, None, 1.3)
    np.testing.assert_allclose(plain.error, 1.3 * sigma)
    same = inflate_parallax_error(sigma, g, None)
    np.testing.assert_array_equal(same.error, sigma)
    assert same.error is not sigma and not same.not_applied.any()
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="factor"):
            inflate_parallax_error(sigma, g, bad)
    with pytest.raises(ValueError, match="el-badry2021.*maiz-apellaniz2022"):
        inflate_parallax_error(sigma, g, "lindegren2021")
    with pytest.raises(ValueError, match="needs G"):
        inflate_parallax_error(sigma, None, "el-badry2021")


# --- the table edge -----------------------------------------------------------------------------------


def test_parallax_error_inflation_reads_the_table_and_flags_rows_without_g():
    t = Table(
        {
            "PARALLAX_ERROR": [0.05, 0.05, 0.05],
            "PHOT_G_MEAN_MAG": [12.25, 12.25, np.nan],
            "ASTROMETRIC_PARAMS_SOLVED": [95, 31, 31],
        }
    )
    before = t.copy()
    with pytest.warns(GaiaDistancesWarning, match="1 of 3 rows have no phot_g_mean_mag"):
        out = parallax_error_inflation(t, "maiz-apellaniz2022")
    assert out.error.unit == u.mas
    np.testing.assert_allclose(out.error.value[:2], np.hypot([1.25 * 1.90 * 0.05, 1.90 * 0.05], 0.0103))
    assert out.not_applied.tolist() == [False, False, True] and np.isnan(out.error.value[2])
    assert out.record == {
        "recipe": "maiz-apellaniz2022",
        "n_not_applied": 1,
        "n_uncalibrated": 0,
        "include_floor": True,
    }
    assert all(np.array_equal(t[c], before[c], equal_nan=True) for c in t.colnames)  # input untouched
    with pytest.warns(GaiaDistancesWarning, match="5-parameter"):
        parallax_error_inflation(Table({"parallax_error": [0.05], "phot_g_mean_mag": [12.0]}), "maiz-apellaniz2022")
    with pytest.raises(MissingColumnsError, match="phot_g_mean_mag"):
        parallax_error_inflation(Table({"parallax_error": [0.05]}), "el-badry2021")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = parallax_error_inflation(Table({"parallax_error": [0.05]}), 2.0)  # no G needed
    assert out.error.value.tolist() == [0.1] and out.record["recipe"] == 2.0
    with pytest.raises(ValueError, match="valid: 'el-badry2021'"):
        parallax_error_inflation(Table({"parallax_error": [0.05]}), "el-badry")


def test_field_offset_variance_reads_positions_and_magnitudes():
    t = Table({"ra": [10.0, 10.0], "dec": [0.0, 0.5], "phot_g_mean_mag": [20.0, 21.0]})
    v = float(get_kernel("vasiliev2021").parallax(np.array(0.5)))
    assert field_offset_variance(t, "vasiliev2021").variance == pytest.approx(3 * v)
    assert field_offset_variance(t, None) is None


def test_offset_prior_and_provenance_record():
    prior = resolve_offset_prior("vasiliev2021")
    assert prior is not None and (prior.mean, prior.sigma, prior.g_min) == (0.010, 0.003, 13.0)
    assert resolve_offset_prior(None) is None
    assert resolve_offset_prior((0.0, 0.01)).sigma == 0.01  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="'vasiliev2021'"):
        resolve_offset_prior("lindegren2021")
    with pytest.raises(ValueError, match="sigma > 0"):
        resolve_offset_prior((0.0, -1.0))
    ra, dec = _cone(30, 0.5)
    var = shared_offset_variance(ra, dec, "lindegren2021")
    rec = systematics_record("lindegren2021", offset_variance=var, inflation=1.2, offset_prior="vasiliev2021")
    assert rec["parallax_systematics"] == "lindegren2021" and rec["parallax_error_inflation"] == 1.2
    assert rec["shared_offset_sigma_mas"] == pytest.approx(math.sqrt(var.variance))
    assert rec["offset_prior"]["mean_mas"] == 0.010
    import json

    json.dumps(rec)  # JSON-ready for table.meta
    with pytest.warns(GaiaDistancesWarning, match="counted twice"):
        systematics_record("lindegren2021", inflation="maiz-apellaniz2022")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rec = systematics_record("lindegren2021", inflation="maiz-apellaniz2022", include_floor=False)
    assert rec["inflation_floor"] is False


def test_inflation_marks_magnitudes_and_solution_types_outside_its_calibration():
    sigma, g = np.full(5, 0.05), np.array([5.0, 6.0, 18.0, 18.5, 21.5])
    eb = inflate_parallax_error(sigma, g, "el-badry2021")
    assert eb.uncalibrated.tolist() == [True, False, False, False, True]
    ma = inflate_parallax_error(sigma, g, "maiz-apellaniz2022", six_parameter=np.array([0.0, 1.0, np.nan, 0.0, 0.0]))
    assert ma.uncalibrated.tolist() == [True, False, True, True, True]
    assert ma.error[2] == inflate_parallax_error(sigma, g, "maiz-apellaniz2022", six_parameter=False).error[2]
    assert inflate_parallax_error(sigma, g[[1, 1, 1, 1, 1]], "maiz-apellaniz2022").uncalibrated.all()  # no type
    assert not inflate_parallax_error(sigma, g, 1.3).uncalibrated.any()
    for flag in (True, False, np.bool_(True)):
        with pytest.raises(ValueError, match="a factor > 0 or None; got"):
            inflate_parallax_error(sigma, g, flag)


# --- a user's kernel, checked -----------------------------------------------------------------------------


def negative_kernel(theta):
    return -1e-4 * np.exp(-theta)


@pytest.mark.parametrize(
    ("kernel", "message"),
    [
        (negative_kernel, r"negative_kernel: V\(0\) must be positive"),
        (lambda theta: 0.0 * theta, r"V\(0\) must be positive"),
        (lambda theta: np.full_like(theta, np.nan), r"NaN or inf at 0-180 deg"),
        (lambda theta: np.where(theta > 40.0, np.inf, 1e-4), r"NaN or inf at 40\.5-180 deg"),
        (lambda theta: 1e-4 * np.exp(theta / 10.0), r"exceeds V\(0\) = 0\.0001 mas\^2 at 0\.0001-180 deg"),
        (lambda theta: np.ones(3), r"returned shape \(3,\)"),
        (lambda theta: "wide", r"must return numbers"),
    ],
)
def test_a_kernel_that_is_not_a_covariance_is_refused(kernel, message):
    with pytest.raises(ValueError, match=message) as err:
        resolve_systematics(kernel)
    assert "<lambda>" in str(err.value) or "negative_kernel" in str(err.value)


def test_a_constant_kernel_returning_one_number_is_broadcast():
    kernel = resolve_systematics(lambda theta: 1e-4)
    assert kernel is not None
    ra, dec = _cone(50, 0.5)
    np.testing.assert_array_equal(covariance_matrix(ra, dec, kernel), np.full((50, 50), 1e-4))
    assert shared_offset_variance(ra, dec, kernel).variance == pytest.approx(1e-4)
    assert shared_offset_variance(ra[:1], dec[:1], kernel).variance == pytest.approx(1e-4)
    assert weighted_offset_variance(ra, dec, np.ones(50), kernel) == pytest.approx(1e-4)


def test_the_published_kernels_meet_the_checks_but_maiz_apellaniz_which_is_exempt():
    """As a user's kernels (copies: not the registry's), the published ones are checked in full."""
    for name in SYSTEMATICS_KERNELS:
        assert resolve_systematics(name) is SYSTEMATICS_KERNELS[name]
    for name in ("lindegren2021", "vasiliev2021"):
        check_kernel(SYSTEMATICS_KERNELS[name]._replace(name="custom"))
    with pytest.raises(ValueError, match=r"is not a covariance: \|V\(theta\)\| exceeds V\(0\)"):
        check_kernel(SYSTEMATICS_KERNELS["maiz-apellaniz2021"]._replace(name="custom"))
    ra, dec = _cone(300, 1.0)
    for name in ("lindegren2021", "vasiliev2021"):  # both positive definite: they would pass the matrix check too
        check_covariance_psd(SYSTEMATICS_KERNELS[name], ra, dec)


def test_a_kernel_that_is_not_positive_semi_definite_over_the_stars_is_refused():
    """A step function passes the pointwise checks (|V| <= V(0)) but is no covariance over a field of stars."""

    def step(theta):
        return np.where(theta < 0.1, 1e-4, -1e-4)

    kernel = resolve_systematics(step)
    ra, dec = _cone(400, 0.5)
    with pytest.raises(ValueError, match="custom kernel .*step is not positive semi-definite over the fitted stars"):
        check_covariance_psd(kernel, ra, dec)
    check_covariance_psd(resolve_systematics(lambda theta: 1e-4 * np.exp(-theta / 0.3)), ra, dec)
    # stars without a position take no part; fewer than two placed stars leave nothing to check
    check_covariance_psd(kernel, np.full(5, np.nan), np.full(5, np.nan))
