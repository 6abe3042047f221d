"""Catalogue refits from the Gaia archive (a TAP server on 127.0.0.1) and from an lsdb (HATS) catalogue."""

from __future__ import annotations

import io

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import Table
from tap_server import TapServer
from test_catalogue import FAST

import gaia_distances as gd
from gaia_distances.catalogue.cluster_list import ClusterSpec
from gaia_distances.catalogue.sources import centre_at_epoch


def _votable(table) -> bytes:
    buf = io.BytesIO()
    Table(table).write(buf, format="votable")
    return buf.getvalue()


@pytest.fixture(scope="module")
def server():
    srv = TapServer(_votable(gd.simulate_field(300, n_cluster=150, cluster_distance=800.0, seed=4)))
    yield srv
    srv.close()


def test_archive_source_one_cached_query_per_field(server, tmp_path):
    clusters = Table(
        {"name": ["M 67", "NGC 188"], "ra": [132.846, 12.108], "dec": [11.814, 85.255], "radius": [0.5, 0.25],
         "pmra": [-10.97, np.nan], "pmdec": [-2.94, np.nan]}
    )  # fmt: skip
    query = dict(server=server.url, cache_dir=tmp_path / "cache", timeout=5, retries=0, backoff=0.01)
    kw = dict(source="archive", query_options=query, radius_scale=1.2, magnitude_limit=18, **FAST)
    n0 = len(server.state.queries)
    cat = gd.fit_catalogue(gd.read_cluster_list(clusters), out=tmp_path / "refit", **kw)
    m67, ngc188 = server.state.queries[n0:]
    assert "EPOCH_PROP_POS(132.846, 11.814, 0, -10.97, -2.94, 0, 2000, 2016.0)" in m67 and ", 0.6)" in m67
    assert "CIRCLE('ICRS', 12.108, 85.255, 0.3)" in ngc188  # no proper-motion hints: the centre as given
    assert "phot_g_mean_mag < 18" in m67 and "parallax_error" in m67
    assert list(cat["status"]) != [] and set(cat["status"]) <= {"ok", "warning"}
    assert np.allclose(cat["radius"].value, [0.6, 0.3]) and all(f.startswith("archive:jobid=") for f in cat["field"])
    assert abs(cat["D"][0].to_value(u.pc) / 800.0 - 1) < 0.1
    # a refit reads the cache; a field whose query fails gets its row and the run goes on
    n1 = len(server.state.queries)
    gd.fit_catalogue(gd.read_cluster_list(clusters), out=tmp_path / "refit", refit=True, **kw)
    assert len(server.state.queries) == n1
    server.state.fault = "http500"
    try:
        more = Table(clusters)
        more.add_row(["Far away", 200.0, -30.0, 0.2, np.nan, np.nan])
        with pytest.warns(gd.GaiaDistancesWarning, match="1 of 3 clusters were not fitted"):
            cat = gd.fit_catalogue(gd.read_cluster_list(more), out=tmp_path / "refit", **kw)
    finally:
        server.state.fault = "ok"
    assert list(cat["status"][:2]) == list(cat["status"][:2]) and cat["status"][2] == "query_error"
    assert "query failed" in cat["reason"][2]


def test_centres_move_to_the_gaia_epoch_by_their_proper_motion():
    spec = ClusterSpec("x", "x", 132.846, 11.814, 0.5, pmra=-10.97, pmdec=-2.94)
    ra, dec = centre_at_epoch(spec, 2000.0)
    moved = SkyCoord(132.846 * u.deg, 11.814 * u.deg).separation(SkyCoord(ra * u.deg, dec * u.deg))
    assert np.isclose(moved.to_value(u.mas), 16 * np.hypot(10.97, 2.94), rtol=1e-3)
    assert centre_at_epoch(spec, 2016.0) == (132.846, 11.814)
    assert centre_at_epoch(spec._replace(pmra=np.nan), 2000.0) == (132.846, 11.814)


@pytest.mark.filterwarnings("ignore:The inplace keyword")  # lsdb's own use of pandas
def test_lsdb_source_cone_searches_on_dask(tmp_path):
    lsdb = pytest.importorskip("lsdb", reason="the scale extra (lsdb) is not installed")
    centres = {"Sim North": (40.0, 30.0, 750.0), "Sim South": (200.0, -40.0, 1000.0)}
    tables = [
        gd.simulate_field(300, n_cluster=150, cluster_distance=d, centre=(ra, dec), radius=0.3 * u.deg, seed=i)
        for i, (ra, dec, d) in enumerate(centres.values())
    ]
    pd = pytest.importorskip("pandas")
    frame = pd.concat([gd.GaiaTable(t).to_pandas(index=False) for t in tables], ignore_index=True)
    frame["source_id"] = np.arange(len(frame))  # unique across the two fields
    built = lsdb.from_dataframe(frame, catalog_name="sim_gaia", ra_column="ra", dec_column="dec")
    write = getattr(built, "write_catalog", None) or built.to_hats  # to_hats in older lsdb
    write(tmp_path / "sim_gaia")
    catalog = lsdb.open_catalog(tmp_path / "sim_gaia")
    clusters = Table({"name": list(centres), "ra": [c[0] for c in centres.values()],
                      "dec": [c[1] for c in centres.values()], "radius": [0.2, 0.2]})  # fmt: skip
    # each cone holds its whole field (the fields' size, 450 stars, is that of the other tests' fits)
    cat = gd.fit_catalogue(clusters, source=catalog, out=tmp_path / "refit", radius_scale=2.0, **FAST)
    for row, (name, (ra, dec, dist)), t in zip(cat, centres.items(), tables):
        inside = SkyCoord(t["ra"], t["dec"]).separation(SkyCoord(ra * u.deg, dec * u.deg)) < 0.4 * u.deg
        assert row["n_rows"] == int(inside.sum()) == 450, name
        assert row["status"] in ("ok", "warning") and row["field"].startswith("lsdb:sim_gaia:cone(")
        assert abs(row["D"].to_value(u.pc) / dist - 1) < 0.1, name
    meta = cat.meta["gaia_distances"]["catalogue"]["options"]["source"]
    assert meta["kind"] == "lsdb" and meta["name"] == "sim_gaia"
