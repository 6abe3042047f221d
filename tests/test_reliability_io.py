"""Issue 13 (reliability on bad or unusual input): loading, columns, writing and the pandas accessor."""

from __future__ import annotations

import errno
import gzip
import json
import warnings

import numpy as np
import pandas as pd
import pytest
from astropy import units as u
from astropy.table import MaskedColumn, QTable, Table

import gaia_distances as gd
from gaia_distances.columns import distance_column_names
from gaia_distances.io import InvalidTableError, write_table
from gaia_distances.zeropoint import ZeroPointFlag

# ---------------------------------------------------------------- item 3: the pandas accessor keeps the index


def _zp_frame(index):
    n = len(index)
    return pd.DataFrame(
        {
            "parallax": np.linspace(0.5, 3.0, n),
            "parallax_error": np.full(n, 0.1),
            "phot_g_mean_mag": np.linspace(13.0, 18.0, n),
            "nu_eff_used_in_astrometry": np.linspace(1.4, 1.6, n),
            "pseudocolour": np.full(n, np.nan),
            "ecl_lat": np.linspace(-30.0, 30.0, n),
            "astrometric_params_solved": np.full(n, 31),
        },
        index=index,
    )


def test_issue13_item3_accessor_keeps_the_index():
    df = _zp_frame(pd.Index([40, 10, 30, 20], name=None))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gd.GaiaDistancesWarning)
        out = df.gaia.apply_zeropoint()
        ref = gd.apply_zeropoint(df)
    assert list(out.index) == [40, 10, 30, 20]
    df2 = df.copy()
    df2["zp"] = out["parallax_zeropoint"]  # aligned on the index, not on positions 0..3
    np.testing.assert_array_equal(df2["zp"].to_numpy(), ref["parallax_zeropoint"].value)
    assert "zp" not in df.columns  # the input is untouched


def test_issue13_item3_source_id_index_reaches_the_pipeline(data_file):
    ids = np.array([5957379014017251328, 5957379014017251329, 4295806720], dtype=np.int64)
    df = _zp_frame(pd.Index(ids, name="source_id"))
    table = gd.load_table(df)
    np.testing.assert_array_equal(np.asarray(table["source_id"]), ids)
    # the Bailer-Jones 2021 prior looks each star up by its source_id
    from gaia_distances.priors import resolve_prior

    path = data_file("bj2021_prior_summary.csv")
    core, _ = resolve_prior(gd.GGD.bailer_jones_2021(path), table)
    assert np.all(np.isfinite(np.asarray(core.length_scale)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gd.GaiaDistancesWarning)
        out = df.gaia.apply_zeropoint()
    assert out.index.name == "source_id" and list(out.index) == list(ids)
    assert "source_id" not in out.columns  # the index stays the index


# --------------------------------------------------------------------------- item 4: quantile names


def test_issue13_item4_quantile_names_unique_and_exact():
    names = list(distance_column_names("distance", (0.05, 0.051, 0.999, 0.95, 0.0005)).quantiles)[3:]
    assert names == ["distance_p05", "distance_p05_1", "distance_p99_9", "distance_p95", "distance_p00_05"]
    with pytest.raises(ValueError, match="repeats 0.05"):
        distance_column_names("distance", (0.05, 0.05))
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        distance_column_names("distance", (1.0,))
    from gaia_distances.scale import output_columns

    cols = output_columns(extra_quantiles=(0.05, 0.051))
    assert "distance_p05" in cols and "distance_p05_1" in cols


# --------------------------------------------------------------------------- item 5: atomic writes, no silent overwrite


def test_issue13_item5_write_refuses_to_overwrite(tmp_path):
    path = tmp_path / "out.ecsv"
    write_table(Table({"parallax": [1.0]}), path)
    with pytest.raises(FileExistsError, match="out.ecsv already exists; pass overwrite=True"):
        write_table(Table({"parallax": [2.0]}), path)
    assert gd.load_table(path)["parallax"].value[0] == 1.0
    write_table(Table({"parallax": [2.0]}), path, overwrite=True)
    assert gd.load_table(path)["parallax"].value[0] == 2.0
    assert [p.name for p in tmp_path.iterdir()] == ["out.ecsv"]


def test_issue13_item5_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "out.csv"
    write_table(Table({"parallax": [1.0]}), path)
    before = path.read_bytes()

    def disk_full(self, target, *args, **kwargs):
        with open(target, "w") as fh:
            fh.write("# %ECSV 1.0\n# trunc")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Table, "write", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_table(Table({"parallax": [2.0, 3.0]}), path, overwrite=True)
    with pytest.raises(OSError, match="No space left"):
        write_table(Table({"parallax": [2.0, 3.0]}), tmp_path / "new.csv")
    assert path.read_bytes() == before  # the old output is intact
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]  # no partial or temporary file


# --------------------------------------------------------------------------- item 6: round trips


def _provenance_table():
    t = QTable()
    t["source_id"] = MaskedColumn(np.array([11, 22, 33], dtype=np.int64), mask=[False, True, False])
    t["parallax"] = [1.0, np.nan, 2.0] * u.mas
    t["nu_eff_used_in_astrometry"] = [1.5, 1.6, np.nan] * u.um**-1
    t["distance_median"] = [1000.0, 2000.0, 500.0] * u.pc
    t["cluster_flag"] = np.array([0, 1, 0], dtype=np.int16)
    t.meta["gaia_distances"] = {
        "version": "0.test",
        "cluster": {"prior": {"log_D": [6.8, 2.0]}, "parallax_limits": [0.2, 3.0], "zero_point_arg": None},
        "distances": {"method": "quadrature", "n": np.int64(3), "q": np.float64(0.5)},
    }
    return t


@pytest.mark.parametrize("ext", [".ecsv", ".csv", ".fits", ".fits.gz", ".vot", ".xml", ".parquet", ".hdf5", ".h5"])
def test_issue13_item6_round_trip_keeps_units_masks_and_provenance(tmp_path, ext):
    t = _provenance_table()
    path = tmp_path / f"members{ext}"
    write_table(t, path)
    back = gd.load_table(path)
    assert back.colnames == t.colnames
    sid = back["source_id"]
    assert np.ma.is_masked(sid[1]) and int(sid[0]) == 11 and int(sid[2]) == 33
    assert back["parallax"].unit == u.mas and back["distance_median"].unit == u.pc
    assert back["nu_eff_used_in_astrometry"].unit == u.um**-1
    np.testing.assert_array_equal(back["distance_median"].value, [1000.0, 2000.0, 500.0])
    assert np.isnan(back["parallax"].value[1])
    np.testing.assert_array_equal(np.asarray(back["cluster_flag"]), [0, 1, 0])
    prov = back.meta["gaia_distances"]
    assert prov["cluster"] == {"prior": {"log_D": [6.8, 2.0]}, "parallax_limits": [0.2, 3.0], "zero_point_arg": None}
    assert prov["distances"]["n"] == 3 and prov["version"] == "0.test"
    assert "GAIADIST" not in back.meta
    assert "gaia_distances" in t.meta and not any(k == "GAIADIST" for k in t.meta)  # input untouched


def test_issue13_item6_csv_stays_readable_as_plain_csv(tmp_path):
    path = tmp_path / "out.csv"
    write_table(_provenance_table(), path)
    df = pd.read_csv(path, comment="#")
    assert list(df.columns)[:2] == ["source_id", "parallax"] and len(df) == 3


# --------------------------------------------------------------------------- item 10: user column names


def test_issue13_item10_user_columns_keep_their_names():
    t = gd.load_table(
        Table({"SOURCE_ID": [1, 2], "Parallax": [1.0, 2.0], "B": [12.5, 13.0], "L": [1500.0, 900.0], "b": [3.0, 4.0]})
    )
    assert t.colnames == ["source_id", "parallax", "B", "L", "b"]
    assert getattr(t["B"], "unit", None) is None and getattr(t["L"], "unit", None) is None
    assert t["b"].unit == u.deg  # the archive's galactic latitude
    from gaia_distances.priors import resolve_prior

    core, _ = resolve_prior(gd.EDSD(length_scale="L"), t)
    np.testing.assert_allclose(np.asarray(core.length_scale).ravel(), [1500.0, 900.0])


# --------------------------------------------------------------------------- item 11: empty astrometric_params_solved


_ARCHIVE_ECSV = """\
# %ECSV 1.0
# ---
# delimiter: ','
# datatype:
# - {name: source_id, datatype: int64}
# - {name: parallax, unit: mas, datatype: float64}
# - {name: parallax_error, unit: mas, datatype: float32}
# - {name: phot_g_mean_mag, unit: mag, datatype: float32}
# - {name: nu_eff_used_in_astrometry, unit: 1 / um, datatype: float32}
# - {name: pseudocolour, unit: 1 / um, datatype: float32}
# - {name: ecl_lat, unit: deg, datatype: float64}
# - {name: astrometric_params_solved, datatype: int16}
# schema: astropy-2.0
source_id,parallax,parallax_error,phot_g_mean_mag,nu_eff_used_in_astrometry,pseudocolour,ecl_lat,astrometric_params_solved
1,1.2,0.05,15.0,1.5,,10.0,
2,0.8,0.10,18.5,,1.45,-35.0,
3,,,20.9,,,5.0,
4,2.0,0.2,17.0,,,5.0,
"""


def test_issue13_item11_empty_solution_type_is_inferred(tmp_path):
    path = tmp_path / "archive.ecsv"
    path.write_text(_ARCHIVE_ECSV)
    with pytest.warns(gd.GaiaDistancesWarning, match="inferred"):
        out = gd.apply_zeropoint(gd.load_table(path))
    flag = np.asarray(out["zeropoint_flag"])
    zp = out["parallax_zeropoint"].to_value(u.mas)
    from gaia_distances.zeropoint import load_recipe

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = load_recipe().get_zpt(
            np.array([15.0, 18.5]),
            np.array([1.5, np.nan]),
            np.array([np.nan, 1.45]),
            np.array([10.0, -35.0]),
            np.array([31, 95]),
            _warnings=True,
        )
    np.testing.assert_allclose(zp[:2], ref, rtol=1e-5)
    assert np.all(flag[:2] == ZeroPointFlag.INFERRED_SOLUTION)
    assert flag[2] & ZeroPointFlag.NO_PARALLAX and not flag[2] & ZeroPointFlag.INFERRED_SOLUTION
    # no colour input: the parallax is kept, the zero point is NaN and flagged
    assert flag[3] & ZeroPointFlag.MISSING_INPUTS and np.isnan(zp[3])
    assert out["parallax"].value[3] == 2.0
    assert out.meta["gaia_distances"]["zeropoint"]["n_inferred_solution"] == 2
    # the later steps can tell "no zero point" from "no parallax"
    from gaia_distances.columns import corrected_parallax, parallax_without_zero_point

    corrected, _ = corrected_parallax(out, None, step="test")
    assert parallax_without_zero_point(out, corrected).tolist() == [False, False, False, True]


def test_issue13_item11_absent_solution_column_is_inferred():
    t = Table(
        {
            "parallax": [1.0, 1.0],
            "phot_g_mean_mag": [15.0, 16.0],
            "nu_eff_used_in_astrometry": [1.5, np.nan],
            "pseudocolour": [np.nan, 1.5],
            "ecl_lat": [10.0, 10.0],
        }
    )
    with pytest.warns(gd.GaiaDistancesWarning, match="2 of 2 rows have no astrometric_params_solved"):
        out = gd.apply_zeropoint(t, fallback=-0.017)
    assert np.all(np.asarray(out["zeropoint_flag"]) == ZeroPointFlag.INFERRED_SOLUTION)
    assert np.all(np.isfinite(out["parallax_corrected"].value))


# --------------------------------------------------------------------------- item 13: one-line loading errors


@pytest.mark.parametrize("name", ["field.txt", "field.xlsx"])
def test_issue13_item13_unknown_extension_names_file_and_formats(tmp_path, name):
    path = tmp_path / name
    path.write_text("parallax\n1.0\n")
    with pytest.raises(InvalidTableError) as info:
        gd.load_table(path)
    msg = str(info.value)
    assert name in msg and ".ecsv" in msg and "format=" in msg and "\n" not in msg
    assert isinstance(info.value, ValueError) and isinstance(info.value, gd.GaiaDistancesError)


@pytest.mark.parametrize("ext", [".fits", ".fits.gz", ".parquet", ".vot"])
def test_issue13_item13_truncated_file_is_named(tmp_path, ext):
    t = Table({"source_id": np.arange(2000), "parallax": np.linspace(0.1, 3.0, 2000)})
    full = tmp_path / f"full{ext}"
    write_table(t, full)
    data = gzip.decompress(full.read_bytes()) if ext == ".fits.gz" else full.read_bytes()
    cut = data[: len(data) * 2 // 3]
    path = tmp_path / f"cut{ext}"
    path.write_bytes(gzip.compress(cut) if ext == ".fits.gz" else cut)
    with pytest.raises(InvalidTableError, match="truncated") as info:
        gd.load_table(path)
    assert f"cut{ext}" in str(info.value) and "\n" not in str(info.value)


def test_issue13_item13_text_in_parallax_names_column_value_and_row(tmp_path):
    path = tmp_path / "field.csv"
    path.write_text("source_id,parallax,parallax_error\n1,1.5,0.1\n2,null,0.1\n3,abc,0.1\n")
    with pytest.raises(InvalidTableError) as info:
        gd.load_table(path)
    msg = str(info.value)
    assert "field.csv" in msg and "'parallax'" in msg and "'abc'" in msg and "row 2" in msg and "\n" not in msg
    path.write_text("source_id,parallax,parallax_error\n1,1.5,0.1\n2,null,0.1\n3, ,0.1\n")
    t = gd.load_table(path)  # null-like text is a missing value
    assert t["parallax"].unit == u.mas
    np.testing.assert_array_equal(np.isnan(t["parallax"].value), [False, True, True])


def test_issue13_item13_text_in_other_columns_names_column_value_and_row():
    t = Table({"parallax": [1.0, 2.0], "parallax_error": [0.1, 0.1], "zp": ["-0.02", "oops"]})
    with pytest.raises(InvalidTableError, match="column 'zp' holds 'oops' in row 1"):
        gd.columns.corrected_parallax(gd.load_table(t), "zp", step="test")


# --------------------------------------------------------------------------- item 14: warnings name the user's line


def test_issue13_item14_warnings_point_at_the_callers_line():
    t = Table({"source_id": [5, 5, 6], "parallax": [1.0, 1.0, 2.0]})
    with pytest.warns(gd.GaiaDistancesWarning, match="repeat a source_id") as record:
        gd.GaiaTable.read(t)  # GaiaTable.read -> load_table -> check_duplicate_ids -> warn
    assert [r.filename for r in record] == [__file__]
    t = Table({"parallax": [1.0], "phot_g_mean_mag": [15.0], "ecl_lat": [5.0]})
    t["nu_eff_used_in_astrometry"] = t["pseudocolour"] = [np.nan]
    with pytest.warns(gd.GaiaDistancesWarning, match="lack inputs") as record:
        gd.GaiaTable(t).apply_zeropoint()  # GaiaTable.apply_zeropoint -> apply_zeropoint -> warn
    assert {r.filename for r in record} == {__file__}


def test_issue13_item13_bad_json_names_file(tmp_path):
    path = tmp_path / "cone.json"
    path.write_text(json.dumps({"metadata": [{"name": "parallax"}]})[:-5])
    with pytest.raises(InvalidTableError, match="cone.json"):
        gd.load_table(path)
