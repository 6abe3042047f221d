"""``estimate_distances(parallax_error_inflation=...)`` (issue 12, must-show 4).

The published recipes are written out again here, from the papers, so that the
package's implementation is checked against an independent one: El-Badry, Rix
& Heintz (2021) eq. 16 and Maiz Apellaniz (2022)'s k(G) table with its
10.3 uas floor. The quantiles must match a float64 reference computed at those
inflated errors.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy import units as u
from astropy.table import QTable
from test_utils import reference_quantiles

import gaia_distances as gd
from gaia_distances import DistanceFlag
from gaia_distances.cli import main
from gaia_distances.io import write_table

G_TABLE = [6.50, 7.50, 8.50, 9.50, 10.25, 10.75, 11.25, 11.75, 12.25, 12.75, 13.25, 13.75, 14.25, 14.75, 15.25, 15.75,
           16.25, 16.75, 17.25, 17.75]  # fmt: skip
K_TABLE = [2.62, 2.38, 2.06, 1.66, 1.22, 1.41, 1.76, 1.76, 1.90, 1.92, 1.61, 1.50, 1.39, 1.35, 1.24, 1.20, 1.19, 1.18,
           1.18, 1.14]  # fmt: skip


def el_badry_2021(g, s):
    f = 0.21 * np.exp(-((g - 12.65) ** 2) / 0.90**2) - 0.00062 * g**2 + 0.0040 * g + 1.141
    return np.maximum(f, 1.0) * s


def maiz_apellaniz_2022(g, s, six):
    k = np.interp(np.clip(g, 6.0, 18.0), G_TABLE, K_TABLE) * np.where(six, 1.25, 1.0)
    return np.hypot(k * s, 0.0103)


def _table():
    g = np.array([7.0, 10.0, 12.65, 14.0, 16.0, 17.9, 19.5, 12.65])
    six = np.array([False, True, False, True, False, True, False, False])
    s = np.array([0.015, 0.02, 0.012, 0.03, 0.06, 0.15, 0.4, 0.012])
    w = np.array([2.0, 1.1, 0.8, 0.5, -0.05, 0.3, 0.2, 0.8])
    return QTable(
        {
            "parallax_corrected": w * u.mas,
            "parallax_error": s * u.mas,
            "phot_g_mean_mag": g * u.mag,
            "astrometric_params_solved": np.where(six, 95, 31).astype(np.int16),
        }
    )


@pytest.mark.parametrize("recipe", ["el-badry2021", "maiz-apellaniz2022", 1.3])
def test_inflated_quantiles_match_a_float64_reference_at_the_published_errors(recipe):
    t = _table()
    g, s = t["phot_g_mean_mag"].value, t["parallax_error"].value
    six = t["astrometric_params_solved"] == 95
    expected = {
        "el-badry2021": lambda: el_badry_2021(g, s),
        "maiz-apellaniz2022": lambda: maiz_apellaniz_2022(g, s, six),
        1.3: lambda: 1.3 * s,
    }[recipe]()
    assert np.all(expected >= s) and np.any(expected > 1.05 * s)
    out = gd.estimate_distances(t, prior=gd.EDSD(1350.0), parallax_error_inflation=recipe)
    assert np.all(out["distance_flag"] & (DistanceFlag.NOT_INFLATED | DistanceFlag.BAD_ERROR) == 0)
    got = np.column_stack([out[c].value for c in ("distance_lo", "distance_median", "distance_hi")])
    for i, (w_i, s_i) in enumerate(zip(t["parallax_corrected"].value, expected, strict=True)):
        ref = reference_quantiles(w_i, s_i, lambda r: 2 * np.log(r) - r / 1350.0)
        np.testing.assert_allclose(got[i], ref, rtol=1e-4, err_msg=f"row {i} (G = {g[i]})")
    record = out.meta["gaia_distances"]["distances"]["parallax_error_inflation"]
    assert record["recipe"] == recipe and record["n_not_applied"] == 0
    assert t["parallax_error"].value.tolist() == s.tolist()  # the input is not modified


def test_inflation_widens_the_posterior_and_off_is_the_default():
    t = _table()
    plain = gd.estimate_distances(t, prior=gd.EDSD(1350.0))
    off = gd.estimate_distances(t, prior=gd.EDSD(1350.0), parallax_error_inflation=None)
    on = gd.estimate_distances(t, prior=gd.EDSD(1350.0), parallax_error_inflation="el-badry2021")
    np.testing.assert_array_equal(plain["distance_median"].value, off["distance_median"].value)
    assert plain.meta["gaia_distances"]["distances"]["parallax_error_inflation"] is None
    width = lambda x: (x["distance_hi"] - x["distance_lo"]).value  # noqa: E731
    precise = (t["parallax_corrected"] / t["parallax_error"]).value > 5  # where the likelihood sets the width
    assert np.all(width(on)[precise] >= width(plain)[precise])
    assert np.any(width(on)[precise] > 1.1 * width(plain)[precise])


def test_rows_without_g_are_nan_and_flagged_not_inflated():
    t = _table()
    t["phot_g_mean_mag"][2] = np.nan * u.mag
    t["parallax_error"][3] = np.nan * u.mas  # a bad error stays BAD_ERROR
    with pytest.warns(gd.GaiaDistancesWarning, match="no phot_g_mean_mag"):
        out = gd.estimate_distances(t, prior=gd.EDSD(1350.0), parallax_error_inflation="maiz-apellaniz2022")
    flag = out["distance_flag"]
    assert flag[2] & DistanceFlag.NOT_INFLATED and not flag[2] & DistanceFlag.BAD_ERROR
    assert flag[3] & DistanceFlag.BAD_ERROR and not flag[3] & DistanceFlag.NOT_INFLATED
    assert np.isnan(out["distance_median"][2]) and np.isnan(out["distance_median"][3])
    assert len(out) == len(t) and np.all(np.isfinite(out["distance_median"][[0, 1, 4, 5, 6, 7]]))


@pytest.mark.parametrize("recipe", ["lindegren2021", 0.0, -1.0, float("nan"), "x"])
def test_unknown_recipes_raise(recipe):
    with pytest.raises(ValueError, match="inflation"):
        gd.estimate_distances(_table(), parallax_error_inflation=recipe)


def test_cli_estimate_parallax_error_inflation(tmp_path, capsys):
    src = tmp_path / "in.ecsv"
    write_table(_table(), src)
    out = tmp_path / "out.ecsv"
    assert main(["--json", "estimate", str(src), "-o", str(out), "--parallax-error-inflation", "el-badry2021"]) == 0
    capsys.readouterr()
    t = gd.load_table(out)
    assert t.meta["gaia_distances"]["distances"]["parallax_error_inflation"]["recipe"] == "el-badry2021"
    with pytest.raises(SystemExit) as exc:
        main(["estimate", str(src), "-o", str(tmp_path / "x.ecsv"), "--parallax-error-inflation", "vasiliev"])
    assert exc.value.code == 2
    assert "--parallax-error-inflation" in capsys.readouterr().err
    json.dumps(t.meta["gaia_distances"]["distances"])  # the record is JSON-ready


def _magnitudes_table(g, solved):
    n = len(g)
    return QTable(
        {
            "parallax_corrected": np.full(n, 1.0) * u.mas,
            "parallax_error": np.full(n, 0.05) * u.mas,
            "phot_g_mean_mag": np.asarray(g, dtype=float) * u.mag,
            "astrometric_params_solved": solved,
        }
    )


@pytest.mark.parametrize("recipe", ["el-badry2021", "maiz-apellaniz2022"])
def test_inflation_outside_its_calibrated_magnitudes_is_flagged_with_one_warning(recipe):
    g = [-3.0, 2.0, 12.0, 25.0, 1e6, 15.0]
    t = _magnitudes_table(g, np.full(len(g), 31, dtype=np.int16))
    with pytest.warns(gd.GaiaDistancesWarning) as record:
        out = gd.estimate_distances(t, prior=gd.EDSD(1350.0), parallax_error_inflation=recipe)
    calibration = [str(w.message) for w in record if "outside its calibration" in str(w.message)]
    assert len(calibration) == 1 and "4 of 6 rows" in calibration[0], calibration
    uncalibrated = (out["distance_flag"] & DistanceFlag.INFLATION_UNCALIBRATED) != 0
    assert uncalibrated.tolist() == [True, True, False, True, True, False]
    assert np.all(np.isfinite(out["distance_median"]))  # results as computed, only flagged
    assert out.meta["gaia_distances"]["distances"]["parallax_error_inflation"]["n_uncalibrated"] == 4


def test_maiz_apellaniz_without_a_solution_type_is_flagged():
    masked = np.ma.masked_array([31, 95, 31], mask=[True, True, True])
    t = _magnitudes_table([10.0, 12.0, 14.0], masked)
    with pytest.warns(gd.GaiaDistancesWarning, match="3 of 3 rows are outside its calibration.*5-parameter"):
        out = gd.estimate_distances(t, prior=gd.EDSD(1350.0), parallax_error_inflation="maiz-apellaniz2022")
    assert np.all(out["distance_flag"] & DistanceFlag.INFLATION_UNCALIBRATED)
    known = _magnitudes_table([10.0, 12.0, 14.0], np.array([31, 95, 31], dtype=np.int16))
    out = gd.estimate_distances(known, prior=gd.EDSD(1350.0), parallax_error_inflation="maiz-apellaniz2022")
    assert not np.any(out["distance_flag"] & DistanceFlag.INFLATION_UNCALIBRATED)


@pytest.mark.parametrize("flag", [True, False, np.True_])
def test_a_boolean_inflation_factor_is_refused(flag):
    with pytest.raises(ValueError, match="parallax error inflation must be .*a factor > 0 or None; got (True|False)$"):
        gd.estimate_distances(_table(), parallax_error_inflation=flag)
