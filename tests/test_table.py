"""GaiaTable methods and the pandas accessor equal the functions."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

import gaia_distances as gd


def test_method_chain_equals_the_functions(sim_field, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gd.GaiaDistancesWarning)
        ref = gd.estimate_distances(gd.apply_zeropoint(sim_field), prior=gd.EDSD(1500.0))
        chain = gd.GaiaTable(sim_field).apply_zeropoint().estimate_distances(prior=gd.EDSD(1500.0))
        path = tmp_path / "f.fits"
        gd.write_table(sim_field, path)
        read = gd.GaiaTable.read(path).apply_zeropoint().estimate_distances(prior=gd.EDSD(1500.0))
    assert isinstance(chain, gd.GaiaTable) and isinstance(read, gd.GaiaTable)
    for c in ["distance_median", "distance_lo", "distance_hi", "distance_mode"]:
        np.testing.assert_array_equal(chain[c].value, ref[c].value)
        np.testing.assert_array_equal(read[c].value, ref[c].value)


def test_pandas_accessor_equals_the_functions(sim_field):
    df = sim_field.to_pandas(index=False)
    assert hasattr(pd.DataFrame, "gaia")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gd.GaiaDistancesWarning)
        out = df.gaia.apply_zeropoint().gaia.estimate_distances(prior=gd.EDSD(1500.0))
        ref = gd.estimate_distances(gd.apply_zeropoint(df), prior=gd.EDSD(1500.0))
    assert isinstance(out, pd.DataFrame) and len(out) == len(df)
    np.testing.assert_array_equal(out["distance_median"].to_numpy(), ref["distance_median"].value)
    assert out.attrs["gaia_distances"]["distances"]["prior"]["name"] == "EDSD"
    assert "distance_median" not in df.columns  # the input is untouched
