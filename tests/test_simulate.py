"""simulate_field: reproducible, realistic columns, known truth."""

from __future__ import annotations

import numpy as np
import pytest

import gaia_distances as gd
from gaia_distances.core.astrometry import parallax_error_dr3
from gaia_distances.query import PIPELINE_COLUMNS


def test_reproducible_from_seed():
    a = gd.simulate_field(300, n_cluster=50, seed=4)
    b = gd.simulate_field(300, n_cluster=50, seed=4)
    c = gd.simulate_field(300, n_cluster=50, seed=5)
    np.testing.assert_array_equal(a["parallax"], b["parallax"])
    assert not np.array_equal(a["parallax"], c["parallax"], equal_nan=True)


def test_columns_for_the_pipeline_and_truth():
    t = gd.simulate_field(2000, n_cluster=200, frac_2p=0.05, seed=1)
    # every column a real archive query returns for the pipeline, and the truth
    for c in [*PIPELINE_COLUMNS, "r_true", "is_member", "parallax_zeropoint_true"]:
        assert c in t.colnames
    sol = np.asarray(t["astrometric_params_solved"])
    assert set(np.unique(sol)) == {3, 31, 95}
    assert np.all(np.isnan(t["parallax"].value[sol == 3]))
    assert np.all(np.isfinite(t["nu_eff_used_in_astrometry"].value[sol == 31]))
    assert np.all(np.isfinite(t["pseudocolour"].value[sol == 95]))
    assert len(np.unique(t["source_id"])) == len(t)
    # the HEALPix level-5 pixel encoded in source_id matches the position
    from astropy_healpix import HEALPix

    pix = HEALPix(nside=32, order="nested").lonlat_to_healpix(t["ra"], t["dec"])
    np.testing.assert_array_equal(np.asarray(t["source_id"]) // 2**49, pix)
    members = np.asarray(t["is_member"])
    assert members.sum() == 200
    assert np.std(np.log(t["r_true"].value[members])) == pytest.approx(0.015, rel=0.2)


def test_members_of_a_cluster_wider_than_the_cone_fill_it_without_piling_up_on_its_edge():
    """The members' Rayleigh profile is truncated at the cone's edge, not clamped onto it."""
    from astropy.coordinates import SkyCoord
    from scipy import stats

    # 10 pc of Rayleigh scale at 500 pc is 1.15 deg: most of the profile lies outside the 0.5 deg cone
    t = gd.simulate_field(0, n_cluster=3000, cluster_distance=500.0, cluster_radius_pc=10.0, seed=6)
    sep = SkyCoord(t["ra"], t["dec"]).separation(SkyCoord(132.846, 11.814, unit="deg")).deg
    s, r = np.degrees(10.0 / 500.0), 0.5
    assert sep.max() < r and np.sum(sep > r - 1e-6) == 0

    def cdf(x):
        return np.expm1(-0.5 * (x / s) ** 2) / np.expm1(-0.5 * (r / s) ** 2)

    assert stats.kstest(sep, cdf).pvalue > 1e-3


def test_errors_grow_with_magnitude_like_dr3():
    assert parallax_error_dr3(12.0) == pytest.approx(0.013, abs=0.005)
    assert parallax_error_dr3(17.0) == pytest.approx(0.08, rel=0.25)
    assert parallax_error_dr3(20.0) == pytest.approx(0.55, rel=0.25)
    assert parallax_error_dr3(21.0) == pytest.approx(1.3, rel=0.25)
    t = gd.simulate_field(3000, seed=2)
    g, s = t["phot_g_mean_mag"].value, t["parallax_error"].value
    assert np.median(s[g > 19]) > 5 * np.median(s[g < 16])


def test_magnitude_limit_and_field_distances():
    t = gd.simulate_field(4000, magnitude_limit=19.0, seed=3)
    assert np.all(t["phot_g_mean_mag"].value < 19.0) and len(t) == 4000
    t = gd.simulate_field(20000, field_prior=gd.EDSD(800.0), magnitude_limit=None, seed=3)
    assert np.mean(t["r_true"].value) == pytest.approx(3 * 800.0, rel=0.03)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"n_field": -5}, "n_field"), ({"n_field": 10, "n_cluster": -3}, "n_cluster"), ({"n_field": 2.5}, "n_field")],
)
def test_issue13_item13_negative_sizes_raise_value_error_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        gd.simulate_field(**kwargs)


def test_parallax_systematics_none_keeps_every_column_of_a_seed():
    """Values of simulate_field(300, n_cluster=50, seed=4) before the option existed."""
    t = gd.simulate_field(300, n_cluster=50, seed=4, parallax_systematics=None)
    assert "true_parallax_offset" not in t.colnames
    assert np.asarray(t["source_id"][:3]).tolist() == [598888934598739285, 604892748774866872, 604908417159191378]
    np.testing.assert_allclose(t["r_true"].value[:3], [4300.2796508093825, 1850.7683021951161, 857.9825648848318])
    np.testing.assert_allclose(t["ruwe"][:3], [1.0560126441440458, 1.1312736315371528, 1.0880656363654344])
    np.testing.assert_allclose(t["parallax"].value[:3], [0.2709021844584728, 0.5023047609221071, 1.1158001046656416])
    np.testing.assert_allclose(
        t["parallax_error"].value[:3], [0.07500591568005723, 0.05471267782836165, 0.0585006529050115]
    )


def test_parallax_systematics_adds_one_correlated_offset_field_and_records_it():
    plain = gd.simulate_field(300, n_cluster=50, seed=4)
    t = gd.simulate_field(300, n_cluster=50, seed=4, parallax_systematics="lindegren2021")
    off = t["true_parallax_offset"].to_value("mas")
    for c in plain.colnames:  # drawn last: every other column is the same
        if c != "parallax":
            np.testing.assert_array_equal(np.asarray(plain[c]), np.asarray(t[c]))
    np.testing.assert_allclose(t["parallax"].value, plain["parallax"].value + off, atol=1e-15)
    truth = t.meta["gaia_distances"]["simulation"]
    assert truth["parallax_systematics"] == "lindegren2021"
    assert truth["parallax_offset_mean_mas"] == pytest.approx(np.mean(off))
    assert truth["parallax_offset_members_mean_mas"] == pytest.approx(np.mean(off[np.asarray(t["is_member"])]))
    # within 0.5 deg the Lindegren field is ~97 % one shared offset of sd 11.9 uas: stars scatter ~2 uas about it
    assert np.std(off) < 0.004 and abs(np.mean(off)) < 5 * 0.0119
    assert plain.meta["gaia_distances"]["simulation"]["parallax_systematics"] is None
    with pytest.raises(ValueError, match="valid names"):
        gd.simulate_field(10, parallax_systematics="lindegren")
