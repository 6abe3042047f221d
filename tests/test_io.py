"""load_table: formats, archive quirks, masks and bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from astropy import units as u
from astropy.table import MaskedColumn, QTable, Table

import gaia_distances as gd
from gaia_distances.io import write_table


def test_archive_votable_with_upper_case_ids(data_file):
    t = gd.load_table(data_file("gaia_archive/gaia_source_2rows.vot"))
    assert len(t) == 2
    assert "source_id" in t.colnames and "parallax" in t.colnames
    assert all(c == c.lower() for c in t.colnames)
    assert t["parallax"].unit == u.mas and t["ra"].unit == u.deg
    assert t["source_id"].dtype.kind == "i"


def test_upper_case_ids_without_names(data_file):
    raw = Table.read(data_file("gaia_archive/gaia_source_2rows.vot"), format="votable")  # named by ID
    t = gd.load_table(raw)
    assert "source_id" in t.colnames and "parallax_error" in t.colnames


def test_archive_json(data_file):
    t = gd.load_table(data_file("gaia_archive/cone_search_50rows.json"))
    assert len(t) == 50 and t["parallax"].unit == u.mas
    assert np.isnan(t["parallax"].value).sum() == np.sum([v is None for v in _json_column(data_file, "parallax")])


def _json_column(data_file, name):
    import json

    doc = json.loads(data_file("gaia_archive/cone_search_50rows.json").read_text())
    j = [m["name"] for m in doc["metadata"]].index(name)
    return [row[j] for row in doc["data"]]


@pytest.mark.parametrize("ext", [".fits", ".ecsv", ".csv", ".vot", ".parquet", ".hdf5"])
def test_round_trip_formats(tmp_path, sim_field, ext):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gd.GaiaDistancesWarning)
        t = gd.estimate_distances(gd.apply_zeropoint(sim_field[:50]))
    path = tmp_path / f"t{ext}"
    write_table(t, path)
    back = gd.load_table(path)
    assert len(back) == 50
    np.testing.assert_allclose(back["distance_median"].value, t["distance_median"].value, equal_nan=True)
    assert back["parallax"].unit == u.mas and back["distance_median"].unit == u.pc
    assert back.meta["gaia_distances"]["distances"]["method"] == "quadrature"


def test_dataframe_with_missing_values():
    df = pd.DataFrame(
        {
            "SOURCE_ID": pd.array([1, 2, None], dtype="Int64"),
            "PARALLAX": [1.0, None, 3.0],
            "parallax_error": [0.1, 0.1, 0.1],
        }
    )
    t = gd.load_table(df)
    assert len(t) == 3
    assert np.isnan(t["parallax"].value[1])
    assert np.ma.is_masked(t["source_id"][2])


def test_masked_values_become_nan_and_rows_are_kept():
    t = Table({"parallax": MaskedColumn([1.0, 2.0, 3.0], mask=[False, True, False], unit="mas")})
    out = gd.load_table(t)
    assert np.isnan(out["parallax"].value[1]) and len(out) == 3
    assert isinstance(out, QTable) and out is not t
    assert t["parallax"].mask[1]  # input untouched


def test_units_converted_to_mas():
    t = QTable({"parallax": [0.001] * u.arcsec})
    assert gd.load_table(t)["parallax"].to_value(u.mas)[0] == pytest.approx(1.0)
    assert gd.load_table(t)["parallax"].unit == u.mas


def test_case_collision_is_an_error():
    with pytest.raises(ValueError, match="differ only in case"):
        gd.load_table(Table({"parallax": [1.0], "PARALLAX": [2.0]}))


def test_duplicate_ids_warn_and_are_kept():
    with pytest.warns(gd.GaiaDistancesWarning, match="1 row"):
        t = gd.load_table(Table({"source_id": [5, 5, 6], "parallax": [1.0, 1.0, 2.0]}))
    assert len(t) == 3


def test_bad_sources():
    with pytest.raises(FileNotFoundError):
        gd.load_table("/nonexistent/field.fits")
    with pytest.raises(TypeError, match="DataFrame"):
        gd.load_table(42)


# ------------------------------------------------------------------- user columns pass through untouched


def _user_table():
    from astropy.table import Column

    t = Table()
    t["source_id"] = np.array([1, 2, 3], dtype=np.int64)
    t["parallax"] = Column([1.0, 2.0, 3.0], unit="mas", description="Gaia parallax")
    t["logg"] = Column(
        [4.4, 4.1, 3.9], unit="dex(cm/s2)", description="surface gravity", format=".2f", meta={"ucd": "phys.gravity"}
    )
    t["mag_ab"] = Column([20.0, 21.0, 19.5], unit=u.ABmag, description="AB magnitude")
    t["teff"] = MaskedColumn([5000.0, 6000.0, 1.0], mask=[False, False, True], unit="K", description="Teff")
    t["note"] = MaskedColumn(["a", "bb", "c"], mask=[False, True, False], description="a note")
    t["count"] = MaskedColumn([1, 2, 3], mask=[False, True, False], description="an integer")
    return t


def _check_user_columns(back, *, formats=True, float_mask=True):
    assert back["logg"].unit == u.Unit("dex(cm/s2)") and back["mag_ab"].unit == u.ABmag
    assert back["teff"].unit == u.K and str(back["parallax"].unit) == "mas"
    for name, text in (("logg", "surface gravity"), ("mag_ab", "AB magnitude"), ("teff", "Teff"), ("note", "a note")):
        assert back[name].info.description == text, name
    assert back["parallax"].info.description == "Gaia parallax"
    assert back["logg"].info.meta["ucd"] == "phys.gravity"
    if formats:
        assert back["logg"].info.format == ".2f"
    np.testing.assert_allclose(np.asarray(getattr(back["logg"], "value", back["logg"])), [4.4, 4.1, 3.9])
    assert list(np.ma.getmaskarray(back["note"])) == [False, True, False] and str(back["note"][2]) == "c"
    assert list(np.ma.getmaskarray(back["count"])) == [False, True, False]
    teff = back["teff"]
    hidden = np.ma.is_masked(teff[2]) if float_mask else np.isnan(teff.value[2])
    assert hidden and float(teff[0].value) == 5000.0


def test_user_columns_keep_units_descriptions_formats_meta_and_masks():
    t = _user_table()
    _check_user_columns(gd.load_table(t))
    assert t["logg"].unit == u.Unit("dex(cm/s2)") and t["note"].mask[1]  # input untouched


@pytest.mark.parametrize(
    ("ext", "formats", "float_mask"),
    [
        (".ecsv", True, True),
        (".csv", True, True),
        (".parquet", True, True),
        (".hdf5", True, True),
        (".fits", False, False),  # FITS and VOTable hold a masked float as NaN, and no column format
        (".vot", False, False),
    ],
)
def test_user_columns_survive_writing_and_reading(tmp_path, ext, formats, float_mask):
    path = tmp_path / f"out{ext}"
    t = gd.load_table(_user_table())
    write_table(t, path)
    _check_user_columns(gd.load_table(path), formats=formats, float_mask=float_mask)
    assert t["logg"].unit == u.Unit("dex(cm/s2)")  # the written table untouched
