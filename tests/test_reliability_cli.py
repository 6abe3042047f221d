"""Issue 13 in the command line: outputs, option checks, global options, errors, strict JSON, quiet libraries.

Every test here is quick: the cluster fit is replaced by a stand-in where a
test is about the command line rather than the fit.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings

import numpy as np
import pytest
from astropy.table import Table

import gaia_distances as gd
from gaia_distances.cli import main
from gaia_distances.io import write_table


@pytest.fixture
def small_file(tmp_path):
    path = tmp_path / "small.ecsv"
    write_table(gd.simulate_field(40, n_cluster=10, seed=4), path)
    return path


def _strict_json(text):
    """``json.loads`` that refuses NaN and Infinity, as strict JSON parsers do."""

    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


class _Fit:
    """What the cluster subcommand reads from a fit (a stand-in for fit_cluster's result)."""

    def __init__(self, table, *, r_hat=1.001, ess=400.0, mean=850.0):
        self.table = Table(table, copy=True)
        self.table["cluster_flag"] = np.zeros(len(table), dtype=np.int16)
        self.table["membership_prob"] = np.full(len(table), 0.5)
        self.diagnostics = {
            "kinematics": False,
            "min_ess_bulk": ess,
            "r_hat": {"D": r_hat, "Q": 1.0},
            "divergences": 0,
            "wall_time_s": 0.1,
            "warnings": [],
        }
        self.mean = mean

    def summary(self):
        return Table({"parameter": ["D"], "mean": [self.mean], "sd": [4.0]})

    def to_netcdf(self, path):
        with open(path, "w") as f:
            f.write("posterior")
        return str(path)


def _fake_fit(monkeypatch, make=_Fit):
    calls = []

    def fit_cluster(table, **kwargs):
        calls.append(kwargs)
        return make(table)

    monkeypatch.setattr(gd, "fit_cluster", fit_cluster)
    return calls


# ----------------------------------------------------------------------------------------------- item 5: outputs


def test_issue13_item5_existing_output_is_kept_without_overwrite(tmp_path, small_file, capsys, monkeypatch):
    calls = _fake_fit(monkeypatch)
    out = tmp_path / "out.ecsv"
    out.write_text("keep me\n")
    cases = [
        ["zeropoint", str(small_file), "-o", str(out), "--fallback", "0"],
        ["estimate", str(small_file), "-o", str(out), "--zero-point", "0"],
        ["cluster", str(small_file), "-o", str(out), "--zero-point", "0"],
        # no network: the output is checked before the query
        ["query", "--ra", "1", "--dec", "2", "--radius", "0.1", "--tap-url", "http://127.0.0.1:9/", "-o", str(out)],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(out) in err[0] and "--overwrite" in err[0], err
        assert out.read_text() == "keep me\n"
    assert calls == []  # refused before the fit
    post = tmp_path / "post.nc"
    post.write_text("an earlier posterior")
    new = tmp_path / "new.ecsv"
    assert main(["cluster", str(small_file), "-o", str(new), "--zero-point", "0", "--save-posterior", str(post)]) == 2
    assert str(post) in capsys.readouterr().err and not new.exists() and calls == []
    rep = tmp_path / "rep"
    rep.mkdir()
    (rep / "report.md").write_text("an earlier report")
    assert main(["report", str(small_file), "-o", str(rep)]) == 2
    assert "report.md" in capsys.readouterr().err and (rep / "report.md").read_text() == "an earlier report"
    # --overwrite replaces them
    assert main(["--quiet", "zeropoint", str(small_file), "-o", str(out), "--overwrite"]) == 0
    assert len(gd.load_table(out)) == 50
    argv = ["--quiet", "cluster", str(small_file), "-o", str(out), "--zero-point", "0", "--save-posterior", str(post)]
    assert main([*argv, "--overwrite"]) == 0
    assert post.read_text() == "posterior" and "membership_prob" in gd.load_table(out).colnames


def test_issue13_item5_failed_run_leaves_no_partial_file(tmp_path, small_file, capsys, monkeypatch):
    class BrokenPosterior(_Fit):
        def to_netcdf(self, path):
            with open(path, "w") as f:
                f.write("half a posterior")
            raise OSError("No space left on device")

    class UnwritableTable(_Fit):
        def __init__(self, table):
            super().__init__(table)
            self.table["bad"] = [object()] * len(self.table)  # no table format holds Python objects

    out, post = tmp_path / "fit.fits", tmp_path / "post.nc"
    argv = ["cluster", str(small_file), "-o", str(out), "--zero-point", "0", "--save-posterior", str(post)]
    for make in (BrokenPosterior, UnwritableTable):
        _fake_fit(monkeypatch, make)
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "Traceback" not in err[0]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["small.ecsv"], make  # nothing, not even a temporary


# ------------------------------------------------------------------------------------ item 13: options and errors


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["cluster", "IN", "-o", "OUT", "--num-chains", "0"], "--num-chains"),
        (["cluster", "IN", "-o", "OUT", "--num-samples", "-10"], "--num-samples"),
        (["cluster", "IN", "-o", "OUT", "--num-warmup", "1.5"], "--num-warmup"),
        (["cluster", "IN", "-o", "OUT", "--distance-hint", "0"], "--distance-hint"),
        (["cluster", "IN", "-o", "OUT", "--parallax-limits", "0.2", "nan"], "--parallax-limits"),
        (["demo", "--n-field", "-5"], "--n-field"),
        (["demo", "--n-cluster", "many"], "--n-cluster"),
        (["demo", "--num-samples", "0"], "--num-samples"),
        (["estimate", "IN", "-o", "OUT", "--length-scale", "0"], "--length-scale"),
        (["estimate", "IN", "-o", "OUT", "--length-scale", "-1350"], "--length-scale"),
        (["estimate", "IN", "-o", "OUT", "--length-scale", "inf"], "--length-scale"),
        (["estimate", "IN", "-o", "OUT", "--r-max", "0"], "--r-max"),
        (["estimate", "IN", "-o", "OUT", "--fallback", "nan"], "--fallback"),
        (["query", "--ra", "1", "--dec", "2", "-o", "OUT", "--radius", "0"], "--radius"),
        (["query", "--ra", "1", "--dec", "2", "-o", "OUT", "--radius", "1", "--timeout", "0"], "--timeout"),
        (["query", "--ra", "1", "--dec", "2", "-o", "OUT", "--radius", "1", "--job-timeout", "-1"], "--job-timeout"),
        (["query", "--ra", "1", "--dec", "2", "-o", "OUT", "--radius", "1", "--retries", "-1"], "--retries"),
        (["query", "--ra", "nan", "--dec", "2", "-o", "OUT", "--radius", "1"], "--ra"),
    ],
)
def test_issue13_item13_bad_numbers_are_usage_errors_naming_the_option(tmp_path, capsys, argv, option):
    argv = [str(tmp_path / a) if a in ("IN", "OUT") else a for a in argv]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {option}" in err and "must be" in err
    assert not (tmp_path / "OUT").exists()


def test_issue13_item13_parallax_limits_must_be_ordered(tmp_path, small_file, capsys, monkeypatch):
    calls = _fake_fit(monkeypatch)
    argv = ["cluster", str(small_file), "-o", str(tmp_path / "x.fits"), "--parallax-limits", "3", "0.2"]
    assert main(argv) == 2
    assert "--parallax-limits" in capsys.readouterr().err and calls == []


@pytest.mark.parametrize("position", ["before", "after", "both"])
def test_issue13_item13_global_options_go_before_or_after_the_subcommand(tmp_path, small_file, capsys, position):
    out = tmp_path / "zp.ecsv"
    sub = ["zeropoint", str(small_file), "-o", str(out), "--fallback", "0"]
    argv = {
        "before": ["--quiet", "--json", "-v", *sub],
        "after": [*sub, "--quiet", "--json", "-v"],
        "both": ["--quiet", *sub, "--json", "-v"],
    }[position]
    assert main(argv) == 0
    summary = _strict_json(capsys.readouterr().out)  # --json: one JSON document
    assert summary["rows"] == 50
    out.unlink()
    assert main([*sub, "--quiet"]) == 0
    assert capsys.readouterr().out == ""  # --quiet after the subcommand: no summary


@pytest.mark.parametrize(
    "error",
    [
        gd.GaiaDistancesError("the first line\nand a second line"),
        gd.MissingColumnsError("needs column 'parallax_error'"),
        ValueError("num_chains must be at least 1; got 0"),
        OSError("No space left on device"),
        FileExistsError("out.fits already exists"),
        KeyError("parallax"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_issue13_item13_errors_exit_2_with_one_line_and_no_traceback(tmp_path, small_file, capsys, monkeypatch, error):
    def fit_cluster(table, **kwargs):
        raise error

    monkeypatch.setattr(gd, "fit_cluster", fit_cluster)
    assert main(["cluster", str(small_file), "-o", str(tmp_path / "x.fits"), "--zero-point", "0"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gaia-distances cluster: error: "), err
    assert "Traceback" not in captured.err and captured.out == ""
    assert " ".join(str(error).split()).strip("'") in err[0]


# ----------------------------------------------------------------------------------------------- item 14: output


def test_issue14_json_holds_null_for_nan_and_inf(tmp_path, small_file, capsys, monkeypatch):
    _fake_fit(monkeypatch, lambda table: _Fit(table, r_hat=float("nan"), ess=float("inf"), mean=np.float32("nan")))
    assert main(["--json", "cluster", str(small_file), "-o", str(tmp_path / "x.fits"), "--zero-point", "0"]) == 0
    out = capsys.readouterr().out
    assert "NaN" not in out and "Infinity" not in out
    summary = _strict_json(out)
    assert summary["max_r_hat"] is None and summary["min_ess_bulk"] is None and summary["D_mean"] is None
    assert summary["D_sd"] == 4.0 and summary["divergences"] == 0


def _noisy_fit(table, **kwargs):
    """A fit_cluster stand-in that makes the noise numpyro, jax and astroquery make, and warns as we do."""
    print("Compiling.. : 100%|##########| 400/400")
    warnings.warn(
        "There are not enough devices to run parallel chains: expected 2 but got 1.", UserWarning, stacklevel=2
    )
    logging.getLogger("jax._src.xla_bridge").warning("An NVIDIA GPU may be present on this machine, but no CUDA")
    from astroquery import log as astroquery_log

    astroquery_log.info("Query finished.")
    warnings.warn("3 stars have no usable parallax", gd.GaiaDistancesWarning, stacklevel=2)
    return _Fit(table)


@pytest.mark.parametrize("verbose", [False, True])
def test_issue14_library_messages_stay_off_stdout(tmp_path, small_file, capfd, caplog, monkeypatch, verbose):
    pytest.importorskip("astroquery")  # imported, as by a query earlier in the process: its logger is quietened too
    monkeypatch.setattr(gd, "fit_cluster", _noisy_fit)
    argv = ["--json", "cluster", str(small_file), "-o", str(tmp_path / "x.fits"), "--zero-point", "0"]
    assert main([*argv, "-v"] if verbose else argv) == 0
    out, err = capfd.readouterr()
    assert _strict_json(out)["D_mean"] == 850.0  # standard output: the summary alone
    assert "Compiling" in err  # what a library prints goes to standard error
    # warnings are one line each on standard error; our own always show
    assert "gaia-distances cluster: warning: 3 stars have no usable parallax\n" in err
    assert ("warning: There are not enough devices" in err) is verbose
    logged = caplog.text + err
    assert ("NVIDIA GPU" in logged) is verbose and ("Query finished" in logged) is verbose
    for noise in ("not enough devices", "NVIDIA GPU", "Query finished"):
        assert noise not in out
    # the libraries' loggers are left as they were
    assert logging.getLogger("jax").level == logging.NOTSET


def test_issue14_query_json_is_alone_on_stdout(tmp_path, capfd, data_file):
    from tap_server import TapServer

    srv = TapServer(data_file("gaia_archive/gaia_source_2rows.vot").read_bytes())
    try:
        argv = ["query", "--ra", "1", "--dec", "2", "--radius", "0.1", "--tap-url", srv.url, "--json"]
        assert main([*argv, "-o", str(tmp_path / "q.ecsv"), "--timeout", "5"]) == 0
    finally:
        srv.close()
    out, err = capfd.readouterr()
    assert _strict_json(out)["rows"] == 2
    assert "Query finished" not in out


def test_issue14_json_module_has_no_nan(capsys):
    """The demo's summary file uses the same strict encoder."""
    from gaia_distances.cli import to_json

    text = to_json({"a": float("nan"), "b": [np.float64(1.5), np.inf], "c": np.int64(3), "d": np.bool_(True)})
    assert _strict_json(text) == {"a": None, "b": [1.5, None], "c": 3, "d": True}
    assert sys.modules["gaia_distances.cli"].to_json is to_json


# ------------------------------------------------------------------------ outputs checked before any work


def _no_work(monkeypatch):
    """Make every step that reads, queries, simulates or fits fail the test if it starts."""
    from gaia_distances import query

    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the outputs were checked")

    for name in ("load_table", "fit_cluster", "estimate_distances", "apply_zeropoint", "simulate_field"):
        monkeypatch.setattr(gd, name, forbidden)
    for name in ("query_field", "query_cluster"):
        monkeypatch.setattr(query, name, forbidden)


def _bad_outputs(tmp_path, small_file):
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("not a folder")
    existing = tmp_path / "existing.fits"
    existing.write_text("keep me")
    a_folder = tmp_path / "folder.fits"
    a_folder.mkdir()
    src = str(small_file)
    query = ["query", "--ra", "1", "--dec", "2", "--radius", "0.1"]
    return [
        (["cluster", src, "-o", str(tmp_path / "members.txt")], "members.txt"),
        (["estimate", src, "-o", str(tmp_path / "d.dat")], "d.dat"),
        (["zeropoint", src, "-o", str(tmp_path / "zp")], "zp"),
        ([*query, "-o", str(tmp_path / "q.txt")], "q.txt"),
        (["cluster", src, "-o", str(tmp_path / "m.fits"), "--save-posterior", str(tmp_path / "p.fits")], "netCDF"),
        (["cluster", src, "-o", str(tmp_path / "m.fits"), "--save-posterior", str(a_file / "p.nc")], "not a folder"),
        (["estimate", src, "-o", str(a_file / "sub" / "d.fits")], "not a folder"),
        (["estimate", src, "-o", str(existing)], "already exists"),
        (["estimate", src, "-o", str(a_folder)], "is a folder"),
        (["report", src, "-o", str(a_file)], "not a folder"),
        (["demo", "--output-dir", str(a_file)], "not a folder"),
    ]


@pytest.mark.parametrize("case", range(11))
def test_outputs_are_checked_before_any_work(tmp_path, small_file, capsys, monkeypatch, case):
    argv, named = _bad_outputs(tmp_path, small_file)[case]
    _no_work(monkeypatch)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"gaia-distances {argv[0]}: error: ") and named in err[0]
    assert (tmp_path / "existing.fits").read_text() == "keep me"


def test_report_refuses_to_replace_any_file_of_an_earlier_report(tmp_path, small_file, capsys):
    pytest.importorskip("matplotlib")
    table = tmp_path / "d.ecsv"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gd.GaiaDistancesWarning)
        write_table(gd.estimate_distances(gd.load_table(small_file), zero_point=0.0), table)
    folder = tmp_path / "rep"
    folder.mkdir()
    for old in ("sky_map.png", "colour_magnitude.png"):
        (folder / old).write_text("an earlier figure")
    assert main(["report", str(table), "-o", str(folder)]) == 2
    err = capsys.readouterr().err
    assert str(folder / "sky_map.png") in err and str(folder / "colour_magnitude.png") in err and "--overwrite" in err
    assert sorted(p.name for p in folder.iterdir()) == ["colour_magnitude.png", "sky_map.png"]  # nothing written
    assert (folder / "sky_map.png").read_text() == "an earlier figure"
    assert main(["--quiet", "report", str(table), "-o", str(folder), "--overwrite"]) == 0
    assert (folder / "report.md").exists() and (folder / "sky_map.png").read_bytes().startswith(b"\x89PNG")


# ------------------------------------------------------------------------------- warnings as one-line messages


def _warning_fit(table, **kwargs):
    warnings.warn("3 stars have\n  no usable parallax", gd.GaiaDistancesWarning, stacklevel=2)
    return _Fit(table)


def test_warnings_print_as_one_line_each(tmp_path, small_file, capsys, monkeypatch):
    monkeypatch.setattr(gd, "fit_cluster", _warning_fit)
    shown = warnings.showwarning
    assert main(["--quiet", "cluster", str(small_file), "-o", str(tmp_path / "x.fits"), "--zero-point", "0"]) == 0
    err = capsys.readouterr().err
    assert "gaia-distances cluster: warning: 3 stars have no usable parallax\n" in err
    assert "GaiaDistancesWarning" not in err and "warnings.warn" not in err and "sys.exit" not in err
    assert warnings.showwarning is shown  # restored after the run


def test_warnings_made_errors_by_the_user_end_the_run_with_one_line(tmp_path, small_file, capsys, monkeypatch):
    monkeypatch.setattr(gd, "fit_cluster", _warning_fit)
    monkeypatch.setattr(sys, "warnoptions", ["error"])  # python -W error / PYTHONWARNINGS=error
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        code = main(["--quiet", "cluster", str(small_file), "-o", str(tmp_path / "x.fits"), "--zero-point", "0"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["gaia-distances cluster: error: 3 stars have no usable parallax"]
    assert not (tmp_path / "x.fits").exists()
