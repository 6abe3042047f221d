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
