"""Catalogue refits on ``distributed``: two worker processes give the rows of a run in one process."""

from __future__ import annotations

import pytest
from astropy.table import Table
from test_catalogue import (  # noqa: F401 - the fixtures too
    FAST,
    LIST_NAMES,
    _assert_same_catalogue,
    _cluster_list,
    _stray_files,
    field_folder,
    reference_run,
)

import gaia_distances as gd

distributed = pytest.importorskip("distributed", reason="the scale extra (dask.distributed) is not installed")


@pytest.mark.slow
def test_two_workers_give_the_rows_of_one_process(reference_run, field_folder, tmp_path):  # noqa: F811
    want, _ = reference_run
    out = tmp_path / "refit"
    cat = gd.fit_catalogue(_cluster_list(), source=field_folder, out=out, workers=2, **FAST)
    assert list(cat["name"]) == LIST_NAMES
    _assert_same_catalogue(cat, want)
    assert _stray_files(out) == []
    # an existing client (here by its scheduler's address): a rerun has nothing left to fit
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None)
    try:
        again = gd.fit_catalogue(
            _cluster_list(), source=field_folder, out=out, client=cluster.scheduler_address, **FAST
        )
    finally:
        cluster.close()
    _assert_same_catalogue(again, want)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The inplace keyword")  # lsdb's own use of pandas
def test_lsdb_cone_searches_run_on_the_workers_scheduler(tmp_path):
    lsdb = pytest.importorskip("lsdb", reason="the scale extra (lsdb) is not installed")
    field = gd.simulate_field(300, n_cluster=150, cluster_distance=800.0, seed=3)
    built = lsdb.from_dataframe(gd.GaiaTable(field).to_pandas(index=False), catalog_name="sim", ra_column="ra",
                                dec_column="dec")  # fmt: skip
    built.write_catalog(tmp_path / "sim")
    catalog = lsdb.open_catalog(tmp_path / "sim")
    clusters = Table({"name": ["one", "two"], "ra": [132.846] * 2, "dec": [11.814] * 2, "radius": [0.6, 0.3]})
    cat = gd.fit_catalogue(clusters, source=catalog, out=tmp_path / "refit", workers=2, **FAST)
    assert list(cat["status"]) != [] and set(cat["status"]) <= {"ok", "warning"}
    assert cat["n_rows"][0] == 450 > cat["n_rows"][1] > 0


def test_workers_are_checked_before_any_fit(tmp_path, field_folder):  # noqa: F811
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="workers must be None or an integer >= 1"):
            gd.fit_catalogue(_cluster_list(), source=field_folder, out=tmp_path / "o", workers=bad, **FAST)
    with pytest.raises(ValueError, match="not both"):
        gd.fit_catalogue(_cluster_list(), source=field_folder, out=tmp_path / "o", workers=2, client="tcp://x:1")
