"""The gaia-distances command line, in process and as a console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

import gaia_distances as gd
from gaia_distances.cli import main
from gaia_distances.io import write_table

#: A small, quick cluster fit: the reference model (its programs compile fastest) and short chains. The demo
#: and the cluster test fit the same simulated field (DEMO_FIELD) with these settings, so that, in one process,
#: they share compiled programs.
SMALL_FIT = ["--kinematics", "off", "--field", "edsd", "--num-warmup", "150", "--num-samples", "200"]
DEMO_FIELD = {"n_field": 300, "n_cluster": 100, "seed": 42}


@pytest.fixture
def field_file(tmp_path, sim_field):
    path = tmp_path / "field.fits"
    write_table(sim_field[:400], path)
    return path


def test_zeropoint_then_estimate(tmp_path, field_file, capsys):
    zp = tmp_path / "zp.ecsv"
    assert main(["--quiet", "zeropoint", str(field_file), "-o", str(zp)]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert "gaia-distances zeropoint: warning: " in err and "calibrated range" in err  # --quiet keeps warnings
    out = tmp_path / "d.parquet"
    assert main(["--json", "estimate", str(zp), "-o", str(out), "--prior", "edsd", "--length-scale", "1500"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rows"] == 400
    t = gd.load_table(out)
    assert "distance_median" in t.colnames and len(t) == 400
    assert t.meta["gaia_distances"]["distances"]["prior"]["length_scale"] == 1500.0


def test_estimate_with_ggd_table_and_zero_point_float(tmp_path, field_file, data_file):
    prior_table = data_file("bj2021_prior_summary.csv")
    out = tmp_path / "d.fits"
    code = main(
        [
            "--quiet",
            "estimate",
            str(field_file),
            "-o",
            str(out),
            "--prior",
            "ggd",
            "--prior-table",
            str(prior_table),
            "--zero-point",
            "-0.017",
            "--p05-p95",
        ]
    )
    assert code == 0
    t = gd.load_table(out)
    assert "distance_p95" in t.colnames
    assert np.isfinite(t["distance_median"].value).sum() > 350


def test_bad_input_exits_non_zero_with_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("source_id,ra\n1,2.0\n")
    assert main(["estimate", str(bad), "-o", str(tmp_path / "x.fits")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "parallax_error" in err[0]
    assert main(["estimate", str(tmp_path / "missing.fits"), "-o", str(tmp_path / "x.fits")]) == 2
    assert main(["estimate", str(bad), "-o", str(tmp_path / "x.unknown")]) == 2


def test_demo_in_process(tmp_path, capsys):
    """The whole demo on a small field with a short fit; its own files in --output-dir are replaced."""
    (tmp_path / "demo_distances.ecsv").write_text("an earlier run's table\n")
    size = ["--n-field", str(DEMO_FIELD["n_field"]), "--n-cluster", str(DEMO_FIELD["n_cluster"])]
    argv = ["--json", "demo", "--output-dir", str(tmp_path), *size, "--seed", str(DEMO_FIELD["seed"]), *SMALL_FIT]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(argv)
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rows"] == 400 and summary["cluster_members_simulated"] == 100
    assert 0.5 < summary["truth_inside_68pc_interval"] < 0.85
    assert summary["cluster_distance_pc"].endswith("(true 850)")
    assert 800 < float(summary["cluster_distance_pc"].split()[0]) < 900
    assert len(gd.load_table(tmp_path / "demo_distances.ecsv")) == 400  # replaced, not refused
    assert json.loads((tmp_path / "demo_summary.json").read_text()) == summary
    report = tmp_path / "report" / "report.md"
    assert summary["report"] == str(report)
    text = report.read_text()
    for png in ("corner", "parallax_predictive", "colour_magnitude", "sky_map", "distance_posteriors"):
        assert (tmp_path / "report" / f"{png}.png").stat().st_size > 10_000
        assert f"]({png}.png)" in text


@pytest.mark.slow
def test_demo_full_size(tmp_path, capsys):
    """The demo's default model (proper motions, flexible field) and fit size on 1 000 stars."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["--json", "demo", "--output-dir", str(tmp_path), "--n-field", "800", "--n-cluster", "200"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rows"] == 1000
    assert 0.5 < summary["truth_inside_68pc_interval"] < 0.85
    assert (tmp_path / "demo_distances.ecsv").exists() and (tmp_path / "demo_summary.json").exists()
    report = tmp_path / "report" / "report.md"
    assert summary["report"] == str(report)
    text = report.read_text()
    for png in ("corner", "parallax_predictive", "colour_magnitude", "sky_map", "distance_posteriors"):
        assert (tmp_path / "report" / f"{png}.png").stat().st_size > 10_000
        assert f"]({png}.png)" in text


def test_console_script(tmp_path, field_file):
    """The installed script runs a subcommand end to end (the demo itself runs in process above)."""
    exe = shutil.which("gaia-distances")
    cmd = [exe] if exe else [sys.executable, "-m", "gaia_distances.cli"]
    out = tmp_path / "zp.ecsv"
    res = subprocess.run(
        cmd + ["--json", "zeropoint", str(field_file), "-o", str(out)], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr
    assert len(gd.load_table(out)) == 400
    assert json.loads(res.stdout)["rows"] == 400  # standard output holds the summary alone


def test_help_names_units_and_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "mas" in text and "pc" in text and "--overwrite" in text
    for sub in ("query", "zeropoint", "estimate", "cluster", "report", "demo"):
        assert sub in text


def test_cluster_subcommand(tmp_path, capsys):
    """cluster --apply-zeropoint --save-posterior, then report, on the demo's field (the demo's simulation)."""
    n, n_cluster, seed = DEMO_FIELD["n_field"], DEMO_FIELD["n_cluster"], DEMO_FIELD["seed"]
    t = gd.simulate_field(n, n_cluster=n_cluster, magnitude_limit=20.7, frac_2p=0.01, seed=seed)
    src = tmp_path / "field.fits"
    write_table(t, src)
    out = tmp_path / "fit.ecsv"
    post = tmp_path / "post.nc"
    code = main(
        [
            "--json",
            "cluster",
            str(src),
            "-o",
            str(out),
            "--apply-zeropoint",
            "--save-posterior",
            str(post),
            # the parallax-only path (the kinematic one: test_cluster_passes_kinematics_and_field, test_demo_full_size)
            *SMALL_FIT,
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 800 < summary["D_mean"] < 900
    assert post.exists()
    back = gd.load_table(out)
    assert "membership_prob" in back.colnames and len(back) == 400
    # report: from the written table and posterior, and from the table alone
    assert (
        main(["--json", "report", str(out), "-o", str(tmp_path / "rep"), "--posterior", str(post), "--truth", "D=850"])
        == 0
    )
    rep = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "corner.png" in rep["figures"] and "parallax_predictive.png" in rep["figures"]
    assert "| D |" in (tmp_path / "rep" / "report.md").read_text()
    assert main(["--quiet", "report", str(out), "-o", str(tmp_path / "rep2")]) == 0
    assert not (tmp_path / "rep2" / "corner.png").exists() and (tmp_path / "rep2" / "sky_map.png").exists()
    assert main(["report", str(out), "-o", str(tmp_path / "rep3"), "--truth", "D"]) == 2
    assert "NAME=VALUE" in capsys.readouterr().err
    bad = tmp_path / "few.csv"
    bad.write_text("parallax,parallax_error\n1.0,0.1\n")
    assert main(["cluster", str(bad), "-o", str(tmp_path / "x.fits"), "--zero-point", "0"]) == 2
    assert "at least" in capsys.readouterr().err


class _RecordedFit:
    """What the cluster subcommand reads from a fit, for a fit_cluster stand-in that records its keywords."""

    def __init__(self, table, kinematic):
        self.table = table.copy()
        self.table["cluster_flag"] = np.zeros(len(table), dtype=np.int16)
        self.table["membership_prob"] = np.full(len(table), 0.5)
        self.diagnostics = {
            "kinematics": kinematic,
            "min_ess_bulk": 400.0,
            "r_hat": {"D": 1.001},
            "divergences": 0,
            "wall_time_s": 0.1,
            "warnings": [],
        }

    def summary(self):
        from astropy.table import Table

        return Table({"parameter": ["D"], "mean": [850.0], "sd": [4.0]})


@pytest.mark.parametrize(
    ("options", "kinematics", "field"),
    [
        ([], "auto", "flexible"),
        (["--kinematics", "on", "--field", "edsd"], True, "edsd"),
        (["--kinematics", "off", "--field", "flexible"], False, "flexible"),
        (["--kinematics", "auto"], "auto", "flexible"),
    ],
)
def test_cluster_passes_kinematics_and_field(tmp_path, field_file, monkeypatch, capsys, options, kinematics, field):
    """The options reach fit_cluster as its keywords (the fits themselves are tested in test_cluster)."""
    calls = []

    def fake_fit_cluster(table, **kwargs):
        calls.append(kwargs)
        return _RecordedFit(table, kinematic=kwargs["kinematics"] is True)

    monkeypatch.setattr(gd, "fit_cluster", fake_fit_cluster)
    out = tmp_path / "fit.ecsv"
    argv = ["--json", "cluster", str(field_file), "-o", str(out), "--zero-point", "0", *options]
    assert main(argv) == 0
    assert len(calls) == 1
    got = calls[0]["kinematics"]
    assert got == kinematics and type(got) is type(kinematics)  # True/False, not 1/0 or "on"/"off"
    assert calls[0]["field"] == field
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["field"] == field and summary["kinematics"] is (kinematics is True)
    assert out.exists()


def test_cluster_passes_prior_zero_point_and_fit_size(tmp_path, field_file, monkeypatch):
    calls = []

    def fake_fit_cluster(table, **kwargs):
        calls.append(kwargs)
        return _RecordedFit(table, kinematic=False)

    monkeypatch.setattr(gd, "fit_cluster", fake_fit_cluster)
    base = ["--quiet", "cluster", str(field_file), "-o", str(tmp_path / "fit.ecsv"), "--overwrite"]
    size = ["--num-warmup", "50", "--num-samples", "60", "--num-chains", "3", "--distance-hint", "850"]
    assert main([*base, "--zero-point", "parallax_zeropoint_true", "--physical-prior", *size]) == 0
    assert main([*base, "--zero-point", "-0.017", "--parallax-limits", "0.2", "3"]) == 0
    assert main([*base, "--parallax-limits", "0.2", "3", "--no-truncate", "--perspective"]) == 0
    first, second, third = calls
    assert first["truncate"] and second["truncate"] and not third["truncate"]
    assert third["perspective"] is True and first["perspective"] is False
    assert first["zero_point"] == "parallax_zeropoint_true" and second["zero_point"] == -0.017
    assert first["prior"] == gd.ClusterPriors.physical() and second["prior"] == gd.ClusterPriors()
    assert (first["num_warmup"], first["num_samples"], first["num_chains"]) == (50, 60, 3)
    assert first["distance_hint"] == 850.0 and second["parallax_limits"] == (0.2, 3.0)
    assert second["num_samples"] is None  # fit_cluster's defaults


def test_cluster_rejects_unknown_kinematics_and_field(tmp_path, field_file, capsys):
    for bad in (["--kinematics", "yes"], ["--field", "ggd"]):
        with pytest.raises(SystemExit) as exc:
            main(["cluster", str(field_file), "-o", str(tmp_path / "x.fits"), *bad])
        assert exc.value.code == 2
        assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["cluster", "--help"])
    text = capsys.readouterr().out
    assert "--kinematics {auto,on,off}" in text and "--field {flexible,edsd}" in text


def test_the_option_choices_are_the_package_tables():
    """Each choice list of the command line is the table the package itself checks against."""
    import argparse

    from gaia_distances.cli_parser import build_parser
    from gaia_distances.cluster.options import CLUSTER_METHODS
    from gaia_distances.core.population import FIELDS
    from gaia_distances.core.systematics import OFFSET_PRIORS, SYSTEMATICS_KERNELS
    from gaia_distances.estimate import ESTIMATE_METHODS
    from gaia_distances.priors import PRIOR_NAMES

    sub = next(a for a in build_parser("")._actions if isinstance(a, argparse._SubParsersAction))
    choices = {
        (name, action.dest): set(action.choices)
        for name, parser in sub.choices.items()
        for action in parser._actions
        if action.choices
    }
    assert choices[("estimate", "prior")] == set(PRIOR_NAMES)
    assert choices[("estimate", "method")] == set(ESTIMATE_METHODS)
    assert choices[("cluster", "method")] == set(CLUSTER_METHODS)
    assert choices[("cluster", "field")] == set(FIELDS)
    assert choices[("cluster", "systematics")] == {*SYSTEMATICS_KERNELS, "none"}
    assert choices[("cluster", "parallax_offset_prior")] == {*OFFSET_PRIORS, "none"}
