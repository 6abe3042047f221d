"""Catalogue scale: lsdb (HATS) and Dask partitions give exactly the in-memory results.

A HATS catalogue is built at test time with hats-import from simulated stars
spread over the whole sky, and processed on a ``distributed.LocalCluster`` with
two worker processes.
"""

from __future__ import annotations

import os
import signal
import warnings

import astropy.units as u
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import gaia_distances as gd
from gaia_distances import scale

lsdb = pytest.importorskip("lsdb", reason="the scale extra (lsdb) is not installed")
hats_import = pytest.importorskip("hats_import", reason="the scale extra (hats-import) is not installed")
distributed = pytest.importorskip("distributed", reason="the scale extra (dask.distributed) is not installed")
dd = pytest.importorskip("dask.dataframe")

N_STARS = 4000
ZP = "parallax_zeropoint_true"
RESULT = list(scale.output_columns())


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1"
    )
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


@pytest.fixture(scope="module")
def sky_frame():
    """Simulated stars over the whole sky, with the awkward rows of real data."""
    t = gd.simulate_field(N_STARS, radius=180 * u.deg, frac_2p=0.02, seed=5)
    df = t.to_pandas(index=False) if hasattr(t, "to_pandas") else None
    df = gd.GaiaTable(t).to_pandas(index=False) if df is None else df
    df.loc[5, "parallax_error"] = 0.0  # zero error
    df.loc[6, "parallax_error"] = -0.1  # negative error
    df.loc[7, "parallax"] = -2.0  # negative parallax
    return df


@pytest.fixture(scope="module")
def expected(sky_frame):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "edsd": _frame(gd.estimate_distances(sky_frame, prior=gd.EDSD(1350.0), zero_point=ZP)),
        }


def _frame(table):
    return pd.DataFrame({c: np.asarray(getattr(table[c], "value", table[c])) for c in ["source_id", *RESULT]})


@pytest.fixture(scope="module")
def hats_catalog(tmp_path_factory, sky_frame, client):
    from hats_import.catalog.arguments import ImportArguments
    from hats_import.pipeline import pipeline_with_client

    root = tmp_path_factory.mktemp("hats")
    src = root / "input.parquet"
    sky_frame.to_parquet(src)
    args = ImportArguments(
        output_path=root,
        output_artifact_name="sim_gaia",
        input_file_list=[src],
        file_reader="parquet",
        ra_column="ra",
        dec_column="dec",
        pixel_threshold=300,
        highest_healpix_order=5,
        progress_bar=False,
        tmp_dir=root / "tmp",
    )
    pipeline_with_client(args, client)
    cat = lsdb.open_catalog(root / "sim_gaia")
    assert cat.npartitions > 8
    return cat


def _compare(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert len(got) == len(want)
    assert got["source_id"].is_unique
    got = got.sort_values("source_id").reset_index(drop=True)
    want = want.sort_values("source_id").reset_index(drop=True)
    np.testing.assert_array_equal(np.asarray(got["source_id"], dtype=np.int64), want["source_id"])
    for c in RESULT:
        np.testing.assert_array_equal(np.asarray(got[c], dtype=float), np.asarray(want[c], dtype=float), err_msg=c)


def test_hats_catalogue_equals_in_memory(hats_catalog, expected, tmp_path):
    out = scale.estimate_distances_hats(hats_catalog, prior=gd.EDSD(1350.0), zero_point=ZP)
    assert isinstance(out, lsdb.Catalog)
    assert list(out.columns[-len(RESULT) :]) == RESULT
    got = out.compute()
    _compare(got, expected["edsd"])
    flags = got.set_index("source_id")["distance_flag"]
    assert (flags != 0).sum() > 0  # the awkward rows are flagged, not dropped
    # written back as HATS and read again
    write = getattr(out, "write_catalog", None) or out.to_hats  # to_hats in lsdb < 0.7.3
    write(tmp_path / "with_distances", progress_bar=False)
    back = lsdb.open_catalog(tmp_path / "with_distances").compute()
    _compare(back, expected["edsd"])


def test_bailer_jones_prior_is_broadcast_once(hats_catalog, sky_frame, client, data_file):
    prior = gd.GGD.bailer_jones_2021(data_file("bj2021_prior_summary.csv"))
    shared = scale._shared_prior(prior, client)
    assert isinstance(shared, distributed.Future)
    assert len(client.who_has([shared])[shared.key]) == 2  # one copy on each worker
    got = scale.estimate_distances_hats(hats_catalog, prior=prior, zero_point=ZP).compute()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = _frame(gd.estimate_distances(sky_frame, prior=prior, zero_point=ZP))
    _compare(got, want)


def test_dask_dataframe_over_parquet(sky_frame, expected, tmp_path, client):
    for k in range(3):
        sky_frame.iloc[k::3].to_parquet(tmp_path / f"part{k}.parquet")
    out = scale.estimate_distances_dask(str(tmp_path / "*.parquet"), prior=gd.EDSD(1350.0), zero_point=ZP)
    _compare(out.compute(), expected["edsd"])


@pytest.mark.slow
def test_worker_killed_mid_run_loses_and_duplicates_nothing(hats_catalog, expected, client):
    out = scale.estimate_distances_hats(hats_catalog, prior=gd.EDSD(1350.0), zero_point=ZP)
    futures = client.compute(out.to_delayed())
    first = next(distributed.as_completed(futures))
    assert first.status == "finished"
    pids = client.run(os.getpid)
    victim = sorted(pids)[0]
    os.kill(pids[victim], signal.SIGKILL)  # the nanny restarts it; its tasks are recomputed elsewhere
    parts = client.gather(futures)
    got = pd.concat(parts)
    _compare(got, expected["edsd"])
    assert set(client.run(os.getpid).values()) != set(pids.values())  # a worker really died


def test_partition_with_zero_rows_and_meta_inference(hats_catalog):
    empty = hats_catalog.meta
    res = scale.estimate_partition(empty, prior=gd.EDSD(1000.0), zero_point=ZP)
    assert len(res) == 0 and list(res.columns[-len(RESULT) :]) == RESULT
    assert res["distance_flag"].dtype == np.int16
    # lsdb may infer meta by calling the function on an empty frame
    inferred = hats_catalog.map_partitions(scale.estimate_partition, prior=gd.EDSD(1000.0), zero_point=ZP)
    assert list(inferred.columns[-len(RESULT) :]) == RESULT


def test_pyarrow_nulls_become_nan_and_flags():
    frame = pd.DataFrame(
        {
            "source_id": pd.array([1, 2, 3, 4], dtype=pd.ArrowDtype(pa.int64())),
            "ra": [1.0, 2.0, 3.0, 4.0],
            "dec": [0.0, 0.0, 0.0, 0.0],
            "parallax": pd.array([1.0, None, 0.5, 2.0], dtype=pd.ArrowDtype(pa.float64())),
            "parallax_error": pd.array([0.1, 0.1, None, 0.2], dtype="Float64"),
        },
        index=pd.Index([10, 11, 12, 13], name="_healpix_29"),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = scale.estimate_partition(frame, prior=gd.EDSD(1000.0), zero_point=0.0)
    assert list(res.index) == [10, 11, 12, 13]  # index and order kept
    assert np.isfinite(res["distance_median"].to_numpy()).tolist() == [True, False, False, True]
    flag = res["distance_flag"].to_numpy()
    assert flag[1] & gd.DistanceFlag.NO_PARALLAX and flag[2] & gd.DistanceFlag.BAD_ERROR
    assert res["parallax"].dtype == frame["parallax"].dtype  # input columns untouched


def test_partition_applies_zero_points_on_request(sky_frame):
    part = sky_frame.iloc[:200]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = scale.estimate_partition(part, prior=gd.EDSD(1350.0), apply_zeropoint={"fallback": -0.017})
        want = gd.estimate_distances(gd.apply_zeropoint(part, fallback=-0.017), prior=gd.EDSD(1350.0))
    assert "parallax_corrected" in res.columns
    np.testing.assert_array_equal(res["distance_median"].to_numpy(), np.asarray(want["distance_median"].value))


def test_missing_extra_names_the_install_command(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "lsdb", None)  # as if not installed
    with pytest.raises(ImportError, match=r"gaia-distances\[scale\]"):
        scale.estimate_distances_hats(None)


def test_output_columns_are_those_estimate_distances_appends(sky_frame):
    part = sky_frame.iloc[:50]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = scale.estimate_partition(part, prior=gd.EDSD(1350.0), apply_zeropoint=True, extra_quantiles=(0.05, 0.95))
        want = gd.estimate_distances(gd.apply_zeropoint(part), prior=gd.EDSD(1350.0), extra_quantiles=(0.05, 0.95))
    cols = scale.output_columns(extra_quantiles=(0.05, 0.95), apply_zeropoint=True)
    assert list(res.columns[-len(cols) :]) == list(cols)
    assert [c for c in want.colnames if c not in part.columns] == list(cols)
    with pytest.raises(TypeError):
        scale.estimate_partition(part, gd.EDSD(1350.0))  # the prior is keyword-only


def test_partition_keeps_a_source_id_index(sky_frame):
    """A named index reaches the pipeline as a column and stays the index (issue 13, item 3)."""
    plain = scale.estimate_partition(sky_frame.head(50), prior=gd.EDSD(1350.0), zero_point=0.0)
    indexed = scale.estimate_partition(sky_frame.head(50).set_index("source_id"), prior=gd.EDSD(1350.0), zero_point=0.0)
    assert indexed.index.name == "source_id"
    assert list(indexed.index) == list(sky_frame.head(50)["source_id"])
    np.testing.assert_array_equal(indexed["distance_median"].to_numpy(), plain["distance_median"].to_numpy())


def test_a_dask_frame_with_distance_columns_is_refused_before_any_task():
    frame = pd.DataFrame({"parallax": [1.0, 2.0], "parallax_error": [0.1, 0.1], "distance_median": [5.0, 5.0]})
    ddf = dd.from_pandas(frame, npartitions=1)
    with pytest.raises(gd.ExistingColumnsError, match="distance_median"):
        scale.estimate_distances_dask(ddf, zero_point=0.0)
    lazy = scale.estimate_distances_dask(ddf, zero_point=0.0, overwrite=True)
    assert "distance_flag" in lazy.columns
