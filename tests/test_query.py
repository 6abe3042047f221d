"""The query layer against a real TAP server on 127.0.0.1, faults included."""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import Table
from tap_server import TapServer

import gaia_distances as gd
from gaia_distances import query
from gaia_distances.cli import main


@pytest.fixture(scope="module")
def two_rows(data_file):
    return data_file("gaia_archive/gaia_source_2rows.vot").read_bytes()


@pytest.fixture(scope="module")
def m67_votable(data_file):
    """A VOTable made at test time from the M67 field, upper-case IDs like the archive's."""
    t = Table.read(data_file("m67.fits.gz"))
    buf = io.BytesIO()
    t.write(buf, format="votable")
    return buf.getvalue()


@pytest.fixture
def server(two_rows):
    srv = TapServer(two_rows)
    yield srv
    srv.close()


def _kw(tmp_path, srv, **extra):
    return {**dict(server=srv.url, cache_dir=tmp_path / "cache", timeout=5, retries=0, backoff=0.01), **extra}


def _no_files(tmp_path):
    folder = tmp_path / "cache"
    return not folder.exists() or not any(folder.iterdir())


def test_async_job_result_is_normalised_recorded_and_cached(server, tmp_path):
    adql = "SELECT TOP 20 * FROM gaiadr3.gaia_source WHERE source_id = 4583627001381815936"
    t = query.query_adql(adql, **_kw(tmp_path, server))
    assert len(t) == 2
    assert "source_id" in t.colnames and all(c == c.lower() for c in t.colnames)
    assert t["parallax"].unit == u.mas
    assert server.state.queries == [adql]
    prov = t.meta["gaia_distances"]["query"]
    assert prov["jobid"] and prov["from_cache"] is False and prov["server"] == server.url
    n = server.state.requests
    again = query.query_adql(adql, **_kw(tmp_path, server))
    assert server.state.requests == n  # served from the cache
    assert again.meta["gaia_distances"]["query"]["from_cache"] is True
    offline = query.query_adql(adql, **_kw(tmp_path, server, offline=True))
    assert len(offline) == 2
    with pytest.raises(gd.GaiaQueryError, match="offline"):
        query.query_adql(adql + " AND 1=1", **_kw(tmp_path, server, offline=True))


def test_field_query_feeds_the_pipeline_unchanged(m67_votable, m67, tmp_path):
    srv = TapServer(m67_votable)
    try:
        t = query.query_field(
            SkyCoord(132.846, 11.814, unit="deg"), 0.5 * u.deg, pmra=-10.97, pmdec=-2.94, **_kw(tmp_path, srv)
        )
        adql = srv.state.queries[-1]
        for col in query.PIPELINE_COLUMNS:
            assert col in adql
        assert "EPOCH_PROP_POS" in adql and "CIRCLE('ICRS'" in adql
        assert len(t) == 5331
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", gd.GaiaDistancesWarning)
            z = gd.apply_zeropoint(t, fallback=0.0)
            d = gd.estimate_distances(z)
        assert np.isfinite(d["distance_median"].value).sum() > 5000
        # what fit_cluster reads is exactly the reference file's (whose fit test_cluster checks)
        for col in ("source_id", "parallax", "parallax_error", "parallax_corrected"):
            np.testing.assert_array_equal(np.asarray(z[col]), np.asarray(m67[col]))
    finally:
        srv.close()


@pytest.mark.parametrize(
    ("fault", "match"),
    [
        ("http500", "HTTPError|500|failed"),
        ("error_phase", "Unknown column"),
        ("error_votable", "server reported an error: Query timed out"),
        ("truncated_body", "failed"),
        ("malformed", "failed"),
    ],
)
def test_faults_raise_clearly_and_leave_no_cache_file(server, tmp_path, fault, match):
    server.state.fault = fault
    with pytest.raises(gd.GaiaQueryError, match=match) as err:
        query.query_adql("SELECT * FROM gaiadr3.gaia_source", **_kw(tmp_path, server))
    assert server.url in str(err.value)
    assert _no_files(tmp_path)


def test_slow_answer_meets_the_client_timeout(server, tmp_path):
    server.state.fault = "slow"
    server.state.slow_seconds = 3.0
    with pytest.raises(gd.GaiaQueryError, match="timed out|timeout"):
        query.query_adql("SELECT * FROM gaiadr3.gaia_source", **_kw(tmp_path, server, timeout=0.5))
    assert _no_files(tmp_path)


def test_retries_with_backoff(server, tmp_path):
    server.state.fault = "http500"
    with pytest.raises(gd.GaiaQueryError, match="3 attempt"):
        query.query_adql("SELECT 1", **{**_kw(tmp_path, server), "retries": 2})
    assert len(server.state.queries) == 3


def test_truncated_results_raise_or_warn_and_are_not_cached(server, tmp_path):
    server.state.fault = "overflow"
    with pytest.raises(gd.GaiaQueryError, match="truncated at 2 rows"):
        query.query_adql("SELECT * FROM gaiadr3.gaia_source", **_kw(tmp_path, server))
    with pytest.warns(gd.GaiaDistancesWarning, match="truncated"):
        t = query.query_adql("SELECT * FROM gaiadr3.gaia_source", **_kw(tmp_path, server, on_truncation="warn"))
    assert t.meta["gaia_distances"]["query"]["truncated"] is True
    assert _no_files(tmp_path)
    server.state.fault = "ok"
    with pytest.raises(gd.GaiaQueryError, match="MAXREC 2"):
        query.query_adql("SELECT * FROM gaiadr3.gaia_source", **_kw(tmp_path, server, maxrec=2))


def test_cluster_name_resolution_is_injectable(server, tmp_path):
    t = query.query_cluster(
        "M67", 0.2 * u.deg, resolver=lambda name: SkyCoord(132.846, 11.814, unit="deg"), **_kw(tmp_path, server)
    )
    assert len(t) == 2 and "132.846" in server.state.queries[-1]

    def fail(name):
        raise OSError("name service unreachable")

    with pytest.raises(gd.GaiaQueryError, match="resolve"):
        query.query_cluster("M67", 0.2 * u.deg, resolver=fail, **_kw(tmp_path, server))


#: What fit_cluster's proper-motion model reads (besides parallax and parallax_error).
KINEMATIC_COLUMNS = (
    "pmra",
    "pmdec",
    "pmra_error",
    "pmdec_error",
    "parallax_pmra_corr",
    "parallax_pmdec_corr",
    "pmra_pmdec_corr",
)


def test_queries_select_every_column_of_the_kinematic_model(server, tmp_path):
    """The ADQL's select list names each column exactly (not as a prefix of another), once."""
    t = query.query_cluster(
        "M67", 0.2 * u.deg, resolver=lambda name: SkyCoord(132.846, 11.814, unit="deg"), **_kw(tmp_path, server)
    )
    adql = server.state.queries[-1]
    assert adql.startswith("SELECT ")
    selected = [c.strip() for c in adql[len("SELECT ") : adql.index(" FROM ")].split(",")]
    assert len(selected) == len(set(selected))
    assert selected == list(query.PIPELINE_COLUMNS)
    for col in (*KINEMATIC_COLUMNS, "ruwe", "parallax", "parallax_error", "source_id"):
        assert col in selected, col
    # the archive's answer carries them, with units where Gaia has them
    assert set(KINEMATIC_COLUMNS) <= set(t.colnames)
    assert t["pmra_error"].unit == u.mas / u.yr and t["pmdec"].unit == u.mas / u.yr
    # extra columns come after the pipeline's, without repeating one
    query.query_field(
        SkyCoord(1.0, 2.0, unit="deg"), 0.1 * u.deg, extra_columns=["pmra", "phot_bp_mean_mag"], **_kw(tmp_path, server)
    )
    again = server.state.queries[-1]
    selected = [c.strip() for c in again[len("SELECT ") : again.index(" FROM ")].split(",")]
    assert selected == [*query.PIPELINE_COLUMNS, "phot_bp_mean_mag"]


def test_cli_query_writes_a_table_the_pipeline_accepts(m67_votable, data_file, tmp_path):
    srv = TapServer(m67_votable)
    try:
        out = tmp_path / "m67.fits"
        code = main(
            [
                "--quiet",
                "query",
                "--ra",
                "132.846",
                "--dec",
                "11.814",
                "--radius",
                "0.5",
                "--tap-url",
                srv.url,
                "-o",
                str(out),
                "--timeout",
                "10",
            ]
        )
        assert code == 0
        est = tmp_path / "d.fits"
        assert main(["--quiet", "estimate", str(out), "-o", str(est), "--apply-zeropoint", "--fallback", "0"]) == 0
        # the table written by the query is the reference field, row for row (the cluster subcommand
        # and fit_cluster on that field are tested in test_cli and test_cluster)
        got, ref = gd.load_table(out), gd.load_table(data_file("m67.fits.gz"))
        for col in ("source_id", "parallax", "parallax_error", "phot_g_mean_mag"):
            np.testing.assert_array_equal(np.asarray(got[col]), np.asarray(ref[col]))
        srv.state.fault = "http500"
        code = main(
            [
                "query",
                "--ra",
                "1",
                "--dec",
                "2",
                "--radius",
                "0.1",
                "--tap-url",
                srv.url,
                "-o",
                str(tmp_path / "x.fits"),
                "--no-cache",
                "--retries",
                "0",
            ]
        )
        assert code == 2
    finally:
        srv.close()


def test_query_module_imports_no_astroquery():
    code = "import sys, gaia_distances.query\nassert 'astroquery' not in sys.modules"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


@pytest.mark.network
def test_real_archive_small_cone(tmp_path):
    t = query.query_field(SkyCoord(132.846, 11.814, unit="deg"), 0.02 * u.deg, cache_dir=tmp_path)
    assert len(t) > 0 and "parallax" in t.colnames


def test_cache_survives_an_interrupted_query(server, tmp_path):
    adql = "SELECT * FROM gaiadr3.gaia_source WHERE 1=1"
    query.query_adql(adql, **_kw(tmp_path, server))
    cached = sorted((tmp_path / "cache").iterdir())

    class Interrupting:
        def launch_job_async(self, *args, **kwargs):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        query.query_adql(adql, **_kw(tmp_path, server, archive=Interrupting(), cache=False))
    assert sorted((tmp_path / "cache").iterdir()) == cached  # nothing partial left, cache intact
    assert len(query.query_adql(adql, **_kw(tmp_path, server, offline=True))) == 2


def test_sync_queries_through_astroquery_against_the_local_server(server):
    from astroquery.gaia import GaiaClass

    archive = GaiaClass(gaia_tap_server=server.url, gaia_data_server=server.url, show_server_messages=False)
    raw = archive.launch_job("SELECT TOP 2 * FROM gaiadr3.gaia_source").get_results()
    t = gd.load_table(raw)
    assert len(t) == 2 and "source_id" in t.colnames and t["parallax"].unit == u.mas


def test_issue13_item12_queued_job_is_aborted_at_job_timeout(server, tmp_path):
    """A job the server keeps QUEUED ends at job_timeout: aborted on the server, named in the error."""
    server.state.fault = "queued"
    t0 = time.monotonic()
    with pytest.raises(gd.GaiaQueryError, match=r"still QUEUED after \d+ s, past job_timeout=1 s") as err:
        query.query_adql("SELECT * FROM gaiadr3.gaia_source", **_kw(tmp_path, server, job_timeout=1.0, retries=2))
    assert time.monotonic() - t0 < 5
    assert len(server.state.jobs) == 1  # no retry of a job that ran out of time
    (jobid,) = server.state.jobs
    assert server.state.aborted == [jobid]
    assert f"job {jobid}" in str(err.value) and "abort" in str(err.value) and server.url in str(err.value)
    assert _no_files(tmp_path)


def test_issue13_item12_job_timeout_passes_through_query_field_and_is_validated(server, tmp_path):
    server.state.fault = "queued"
    with pytest.raises(gd.GaiaQueryError, match="job_timeout=0.5 s"):
        query.query_field(SkyCoord(1.0, 2.0, unit="deg"), 0.1 * u.deg, **_kw(tmp_path, server, job_timeout=0.5))
    assert len(server.state.aborted) == 1
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="job_timeout"):
            query.query_adql("SELECT 1", **_kw(tmp_path, server, job_timeout=bad))
    with pytest.raises(ValueError, match="timeout"):
        query.query_adql("SELECT 1", **_kw(tmp_path, server, timeout=0))


def test_issue13_item12_cli_query_job_timeout(server, tmp_path, capsys):
    server.state.fault = "queued"
    argv = ["query", "--ra", "1", "--dec", "2", "--radius", "0.1", "--tap-url", server.url, "--retries", "0"]
    argv += ["-o", str(tmp_path / "x.fits"), "--timeout", "5", "--job-timeout", "1", "--no-cache"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "job_timeout=1 s" in err[0] and server.state.aborted[0] in err[0]
    assert not (tmp_path / "x.fits").exists()


def _part(folder, writer, age_s=0.0):
    path = folder / f"{'0' * 32}~{writer}~abcd.vot.part"
    path.write_bytes(b"<VOTABLE")
    if age_s:
        os.utime(path, (time.time() - age_s, time.time() - age_s))
    return path


def test_issue13_item12_stale_partial_files_are_removed_when_the_cache_is_used(server, tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir()
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    host = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())
    dead = _part(folder, f"{host}~{ended.pid}")  # its writer was killed / has exited
    live = _part(folder, f"{host}~{os.getpid()}")  # a query running in this process
    other_host = _part(folder, f"elsewhere.example~{ended.pid}")  # cannot tell: kept until old
    old = _part(folder, "elsewhere.example~1", age_s=2 * query.STALE_PART_AGE)
    untagged_old = folder / "tmpx1y2.vot.part.gz"  # an earlier version's name
    untagged_old.write_bytes(b"")
    os.utime(untagged_old, (0, 0))
    query.query_adql("SELECT 1", **_kw(tmp_path, server))
    assert not dead.exists() and not old.exists() and not untagged_old.exists()
    assert live.exists() and other_host.exists()
    # the cache's own file is untouched, and reading it cleans too
    dead2 = _part(folder, f"{host}~{ended.pid}")
    assert query.query_adql("SELECT 1", **_kw(tmp_path, server, offline=True)).meta["gaia_distances"]["query"][
        "from_cache"
    ]
    assert not dead2.exists()


@pytest.mark.parametrize("damage", [b"", b"<?xml version='1.0'?><VOTABLE><RESOURCE><TABLE>"])
def test_issue13_item13_corrupt_cache_entry_is_discarded_and_fetched_again(server, tmp_path, damage):
    adql = "SELECT * FROM gaiadr3.gaia_source WHERE 2=2"
    query.query_adql(adql, **_kw(tmp_path, server))
    (entry,) = (tmp_path / "cache").glob("*.vot")
    entry.write_bytes(damage)
    with pytest.raises(gd.GaiaQueryError, match="cannot be read") as err:
        query.query_adql(adql, **_kw(tmp_path, server, offline=True))
    assert str(entry) in str(err.value)
    n = len(server.state.jobs)
    with pytest.warns(gd.GaiaDistancesWarning, match="discarding the unreadable cached query result") as rec:
        t = query.query_adql(adql, **_kw(tmp_path, server))
    assert str(entry) in str(rec[0].message)
    assert len(t) == 2 and len(server.state.jobs) == n + 1
    assert t.meta["gaia_distances"]["query"]["from_cache"] is False
    assert len(query.query_adql(adql, **_kw(tmp_path, server, offline=True))) == 2  # the new entry reads


def test_trickled_result_download_ends_at_job_timeout(server, tmp_path):
    """A result the server sends a few bytes at a time (each read quick, the whole ~9 s) ends at
    job_timeout: the deadline covers the download, not only the job."""
    server.state.fault = "trickle"
    with pytest.raises(gd.GaiaQueryError, match=r"still downloading after \d+ s .*past job_timeout=1.5 s") as err:
        query.query_adql("SELECT * FROM gaiadr3.gaia_source", **_kw(tmp_path, server, job_timeout=1.5, timeout=1))
    assert server.url in str(err.value) and "bytes received" in str(err.value)
    assert len(server.state.jobs) == 1  # no retry once out of time
    assert _no_files(tmp_path)


def test_result_download_without_job_timeout_reads_to_the_end(server, tmp_path):
    server.state.fault = "trickle"
    server.state.trickle_bytes = 2048  # three reads
    t = query.query_adql("SELECT * FROM gaiadr3.gaia_source", **_kw(tmp_path, server, job_timeout=None))
    assert len(t) == 2
