"""A user's own columns are never replaced silently: the steps that append columns refuse a clash,
naming the columns, before any work, unless ``overwrite=True``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from astropy import units as u
from astropy.table import QTable

import gaia_distances as gd
from gaia_distances import scale
from gaia_distances.cli import main
from gaia_distances.io import write_table


def _stars(n=30):
    rng = np.random.default_rng(5)
    return QTable(
        {
            "parallax": rng.uniform(0.5, 2.0, n) * u.mas,
            "parallax_error": np.full(n, 0.05) * u.mas,
        }
    )


def test_existing_distance_columns_are_refused_unless_overwrite():
    t = _stars()
    t["distance_median"] = np.full(len(t), 123.0) * u.pc  # the user's own column
    before = t.copy()
    with pytest.raises(
        gd.ExistingColumnsError, match=r"estimate_distances would replace .*distance_median; .*overwrite=True"
    ):
        gd.estimate_distances(t, zero_point=0.0)
    out = gd.estimate_distances(t, zero_point=0.0, overwrite=True)
    assert not np.any(out["distance_median"].value == 123.0)
    assert np.array_equal(t["distance_median"], before["distance_median"])  # the input is untouched
    again = gd.estimate_distances(out, zero_point=0.0, overwrite=True)  # a re-run on its own output
    np.testing.assert_array_equal(again["distance_median"].value, out["distance_median"].value)
    with pytest.raises(gd.ExistingColumnsError, match="distance_lo, distance_hi, distance_mode, distance_flag"):
        gd.estimate_distances(out, zero_point=0.0)
    with pytest.raises(ValueError, match="overwrite must be True or False; got 'yes'"):
        gd.estimate_distances(_stars(), zero_point=0.0, overwrite="yes")


def test_a_prefix_naming_a_cluster_fits_columns_is_refused():
    t = _stars()
    for name in ("cluster_distance_median", "cluster_distance_lo", "cluster_distance_hi"):
        t[name] = np.full(len(t), 850.0) * u.pc
    with pytest.raises(
        gd.ExistingColumnsError, match="cluster_distance_median, cluster_distance_lo, cluster_distance_hi"
    ):
        gd.estimate_distances(t, zero_point=0.0, prefix="cluster_distance")
    extra = gd.estimate_distances(_stars(), zero_point=0.0, extra_quantiles=(0.05,))
    with pytest.raises(gd.ExistingColumnsError, match="distance_p05"):
        gd.estimate_distances(
            extra[["parallax", "parallax_error", "distance_p05"]], zero_point=0.0, extra_quantiles=(0.05,)
        )


def test_the_table_and_dataframe_methods_pass_overwrite_on():
    out = gd.GaiaTable(gd.estimate_distances(_stars(), zero_point=0.0))
    with pytest.raises(gd.ExistingColumnsError):
        out.estimate_distances(zero_point=0.0)
    assert "distance_median" in out.estimate_distances(zero_point=0.0, overwrite=True).colnames
    df = pd.DataFrame({"parallax": [1.0, 2.0], "parallax_error": [0.1, 0.1], "distance_flag": [7, 7]})
    with pytest.raises(gd.ExistingColumnsError, match="distance_flag"):
        df.gaia.estimate_distances(zero_point=0.0)
    assert df.gaia.estimate_distances(zero_point=0.0, overwrite=True)["distance_flag"].tolist() == [0, 0]


def test_a_partition_with_distance_columns_is_refused_unless_overwrite():
    frame = pd.DataFrame({"parallax": [1.0, 2.0], "parallax_error": [0.1, 0.1], "distance_median": [5.0, 5.0]})
    with pytest.raises(gd.ExistingColumnsError, match="distance_median"):
        scale.estimate_partition(frame, zero_point=0.0)
    out = scale.estimate_partition(frame, zero_point=0.0, overwrite=True)
    assert out["distance_median"].round(-2).tolist() == [1000.0, 500.0]


def test_fit_cluster_refuses_a_users_membership_column_before_fitting(monkeypatch):
    from gaia_distances.cluster import fit as fit_module

    def no_fit(*args, **kwargs):  # the refusal must come before any MAP search or sampling
        raise AssertionError("the fit started")

    monkeypatch.setattr(fit_module, "_find_start", no_fit)
    t = gd.simulate_field(60, n_cluster=30, seed=3)
    t["membership_prob"] = np.full(len(t), 0.9)  # e.g. a published membership
    with pytest.raises(
        gd.ExistingColumnsError, match=r"fit_cluster would replace the table's column\(s\) membership_prob"
    ):
        gd.fit_cluster(t, kinematics=False, zero_point=0.0)
    with pytest.raises(AssertionError, match="the fit started"):
        gd.fit_cluster(t, kinematics=False, zero_point=0.0, overwrite=True)


def test_fit_clusters_refuses_a_users_cluster_columns_before_fitting(monkeypatch):
    from gaia_distances.cluster import batch

    def no_fit(*args, **kwargs):
        raise AssertionError("the fit started")

    monkeypatch.setattr(batch, "find_start", no_fit)
    t = gd.simulate_field(60, n_cluster=30, seed=3)
    half = len(t) // 2
    t["group"] = np.where(np.arange(len(t)) < half, "a", "b")
    t["cluster_flag"] = np.zeros(len(t), dtype=np.int16)
    with pytest.raises(
        gd.ExistingColumnsError, match=r"fit_clusters would replace the table's column\(s\) cluster_flag"
    ):
        gd.fit_clusters(t, group_by="group", kinematics=False, zero_point=0.0)
    with pytest.raises(gd.ExistingColumnsError, match=r"fit_clusters \(cluster 0\) would replace .*cluster_flag"):
        gd.fit_clusters([t[:half], t[half:]], kinematics=False, zero_point=0.0)


def test_cli_estimate_refuses_its_own_output_without_overwrite(tmp_path, capsys):
    src = tmp_path / "in.ecsv"
    write_table(_stars(), src)
    first = tmp_path / "first.ecsv"
    assert main(["estimate", str(src), "-o", str(first), "--zero-point", "0"]) == 0
    capsys.readouterr()
    again = tmp_path / "again.ecsv"
    assert main(["estimate", str(first), "-o", str(again), "--zero-point", "0"]) == 2
    err = capsys.readouterr().err
    assert "distance_median" in err and "overwrite" in err and not again.exists()
    assert main(["estimate", str(first), "-o", str(again), "--zero-point", "0", "--overwrite"]) == 0
