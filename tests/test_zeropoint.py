"""apply_zeropoint against the recipe, on awkward rows."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from astropy import units as u
from astropy.table import MaskedColumn, Table

import gaia_distances as gd
from gaia_distances.zeropoint import ZeroPointFlag


def _recipe(g, nu, pc, beta, sol):
    from zero_point import zpt

    zpt.load_tables()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return zpt.get_zpt(g, nu, pc, beta, sol, _warnings=True)


def _table():
    return Table(
        {
            "SOURCE_ID": np.arange(9, dtype=np.int64),
            "PARALLAX": [1.0, 2.0, 0.5, np.nan, 1.0, 1.0, 1.0, 1.0, 1.0],
            "Parallax_Error": [0.1] * 9,
            "phot_g_mean_mag": [15.0, 17.0, 19.5, 20.0, 5.0, 16.0, np.nan, 16.0, 16.0],
            "nu_eff_used_in_astrometry": [1.5, 1.6, np.nan, np.nan, 1.5, 2.0, 1.5, np.nan, 1.5],
            "pseudocolour": [np.nan, np.nan, 1.5, np.nan, np.nan, np.nan, np.nan, np.nan, np.nan],
            "ecl_lat": [10.0, -40.0, 70.0, 0.0, 5.0, 5.0, 5.0, 5.0, 5.0],
            "astrometric_params_solved": [31, 31, 95, 3, 31, 31, 31, 31, 7],
        }
    )


def test_matches_recipe_and_flags_every_case():
    t = _table()
    before = t.copy()
    with pytest.warns(gd.GaiaDistancesWarning):
        out = gd.apply_zeropoint(t)
    # the input is untouched, rows in equal rows out
    assert t.colnames == before.colnames and all(np.array_equal(t[c], before[c], equal_nan=True) for c in t.colnames)
    assert len(out) == len(t) and list(out["source_id"]) == list(range(9))
    zp = out["parallax_zeropoint"].to_value(u.mas)
    flag = np.asarray(out["zeropoint_flag"])
    good = [0, 1, 2]
    ref = _recipe(
        np.array([15.0, 17.0, 19.5]),
        np.array([1.5, 1.6, np.nan]),
        np.array([np.nan, np.nan, 1.5]),
        np.array([10.0, -40.0, 70.0]),
        np.array([31, 31, 95]),
    )
    np.testing.assert_allclose(zp[good], ref, atol=1e-9)
    assert np.all(flag[good] == 0)
    np.testing.assert_allclose(out["parallax_corrected"].value[good], t["PARALLAX"][good] - ref)
    assert flag[3] & ZeroPointFlag.NO_PARALLAX and np.isnan(zp[3])  # 2-parameter solution
    assert flag[4] & ZeroPointFlag.EXTRAPOLATED_G and np.isfinite(zp[4])  # G = 5
    assert flag[5] & ZeroPointFlag.EXTRAPOLATED_COLOUR and np.isfinite(zp[5])  # nu_eff = 2.0
    for i in (6, 7, 8):  # NaN G, NaN nu_eff, unknown solution type
        assert flag[i] & ZeroPointFlag.MISSING_INPUTS and np.isnan(zp[i])
    assert out["parallax_zeropoint"].unit == u.mas and out["parallax_corrected"].unit == u.mas
    assert out.meta["gaia_distances"]["zeropoint"]["recipe"].startswith("Lindegren")


def test_fallback_fills_only_rows_the_recipe_cannot_handle():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gd.GaiaDistancesWarning)
        out = gd.apply_zeropoint(_table(), fallback=-0.017)
    zp = out["parallax_zeropoint"].to_value(u.mas)
    flag = np.asarray(out["zeropoint_flag"])
    np.testing.assert_allclose(zp[[6, 7, 8]], -0.017)
    assert np.all(flag[[6, 7, 8]] & ZeroPointFlag.FALLBACK)
    assert np.isnan(zp[3])  # no parallax: no zero point, even with a fallback
    assert not np.any(flag[[0, 1, 2, 4, 5]] & ZeroPointFlag.FALLBACK)


def test_masked_inputs_never_raise():
    t = _table()
    t["phot_g_mean_mag"] = MaskedColumn(t["phot_g_mean_mag"], mask=[False, True] + [False] * 7)
    t["astrometric_params_solved"] = MaskedColumn(t["astrometric_params_solved"], mask=[True] + [False] * 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gd.GaiaDistancesWarning)
        out = gd.apply_zeropoint(t)
    # a masked solution type with nu_eff alone is a 5-parameter solution (issue 13 item 11)
    assert out["zeropoint_flag"][0] == ZeroPointFlag.INFERRED_SOLUTION
    ref = _recipe(np.array([15.0]), np.array([1.5]), np.array([np.nan]), np.array([10.0]), np.array([31]))
    assert out["parallax_zeropoint"][0].value == pytest.approx(ref[0])
    assert out["zeropoint_flag"][1] & ZeroPointFlag.MISSING_INPUTS


def test_ecl_lat_computed_from_ra_dec_and_missing_columns_are_named():
    t = _table()
    t.remove_column("ecl_lat")
    with pytest.raises(gd.MissingColumnsError, match="ra"):
        gd.apply_zeropoint(t)
    t["ra"], t["dec"] = np.full(9, 132.846), np.full(9, 11.814)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gd.GaiaDistancesWarning)
        out = gd.apply_zeropoint(t)
    assert out["ecl_lat"][0].to_value(u.deg) == pytest.approx(-5.6, abs=0.3)  # M67 is near the ecliptic
    t.remove_column("nu_eff_used_in_astrometry")
    with pytest.raises(gd.MissingColumnsError, match="nu_eff_used_in_astrometry"):
        gd.apply_zeropoint(t)


def test_approximate_missing_from_bp_rp():
    t = Table(
        {
            "parallax": [1.0, 1.0],
            "parallax_error": [0.1, 0.1],
            "phot_g_mean_mag": [15.0, 15.0],
            "bp_rp": [0.8, np.nan],
            "ra": [10.0, 10.0],
            "dec": [20.0, 20.0],
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gd.GaiaDistancesWarning)
        out = gd.apply_zeropoint(t, approximate_missing=True, fallback=-0.017)
    flag = np.asarray(out["zeropoint_flag"])
    assert flag[0] & ZeroPointFlag.APPROXIMATED and not flag[0] & ZeroPointFlag.FALLBACK
    assert flag[1] & ZeroPointFlag.FALLBACK
    nu = gd.zeropoint.nu_eff_from_bp_rp(0.8)
    ref = _recipe(
        np.array([15.0]), np.array([nu]), np.array([np.nan]), np.asarray(out["ecl_lat"].value[:1]), np.array([31])
    )
    assert out["parallax_zeropoint"].value[0] == pytest.approx(ref[0])


def test_recovers_simulated_truth(sim_field):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gd.GaiaDistancesWarning)
        out = gd.apply_zeropoint(sim_field)
    ok = np.asarray(out["zeropoint_flag"]) == 0
    np.testing.assert_allclose(
        out["parallax_zeropoint"].value[ok], sim_field["parallax_zeropoint_true"].value[ok], atol=1e-6
    )


def test_m67_reference_zero_points(data_file):
    t = gd.load_table(data_file("m67.fits.gz"))
    out = gd.apply_zeropoint(t)
    sol = np.asarray(t["astrometric_params_solved"])
    ok = np.isin(sol, (31, 95))
    ref = _recipe(
        t["phot_g_mean_mag"].value[ok],
        t["nu_eff_used_in_astrometry"].value[ok],
        t["pseudocolour"].value[ok],
        t["ecl_lat"].value[ok],
        sol[ok],
    )
    np.testing.assert_allclose(out["parallax_zeropoint"].value[ok], ref, equal_nan=True)
    assert len(out) == len(t) == 5331
