"""Refitting a cluster catalogue: the list checked first, fields from a folder, resumable and atomic output.

Every fit is tiny (a few hundred simulated stars, the reference model, a few
dozen draws): the tests check the bookkeeping, not the posteriors, whose
accuracy test_cluster checks.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from astropy import units as u
from astropy.table import QTable, Table

import gaia_distances as gd
from gaia_distances.catalogue import run as run_module
from gaia_distances.catalogue.rows import CATALOGUE_COLUMNS
from gaia_distances.catalogue.run import cluster_seed

#: The cheapest fit that runs every step: the reference model, few draws, no extension.
FAST = dict(
    kinematics=False,
    field="edsd",
    systematics=None,
    zero_point="parallax_zeropoint_true",
    num_warmup=30,
    num_samples=40,
    extend=False,
    n_membership_draws=20,
    n_quantile_draws=8,
)
#: The simulated clusters: file name, distance (pc); the list names them in another order and spelling.
FIELDS = {"sim_a_field": 700.0, "Sim-B": 900.0, "simc": 1100.0}
LIST_NAMES = ["SIM C", "Sim_A", "sim b"]


def _cluster_list(names=LIST_NAMES, **extra):
    n = len(names)
    return Table({"Cluster": names, "RA_ICRS": [132.846] * n, "DEJ2000": [11.814] * n, "r50": [0.5] * n, **extra})


@pytest.fixture(scope="module")
def field_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fields")
    for i, (name, dist) in enumerate(FIELDS.items()):
        gd.write_table(gd.simulate_field(300, n_cluster=150, cluster_distance=dist, seed=i), folder / f"{name}.ecsv")
    return folder


@pytest.fixture(scope="module")
def reference_run(field_folder, tmp_path_factory):
    """An uninterrupted run over the three fields."""
    out = tmp_path_factory.mktemp("reference") / "refit"
    return gd.fit_catalogue(_cluster_list(), source=field_folder, out=out, **FAST), out


class FitCounter:
    """Wraps fit_cluster in fit_catalogue's module: counts fits per cluster seed, can fail on the n-th."""

    def __init__(self, monkeypatch, fail_at=None, error=KeyboardInterrupt):
        self.seeds: list[int] = []
        self.fail_at, self.error = fail_at, error
        real = gd.fit_cluster  # the package's, whatever another counter put in its place

        def counted(table, **kwargs):
            if self.fail_at is not None and len(self.seeds) + 1 == self.fail_at:
                raise self.error("interrupted")
            self.seeds.append(kwargs["seed"])
            return real(table, **kwargs)

        monkeypatch.setattr(run_module, "fit_cluster", counted)


def _without_times(cat):
    t = QTable(cat, copy=True)
    del t["wall_time_s"]
    t.meta = {}
    return t


def _assert_same_catalogue(got, want):
    got, want = _without_times(got), _without_times(want)
    assert got.colnames == want.colnames
    for c in got.colnames:
        a, b = np.asarray(getattr(got[c], "value", got[c])), np.asarray(getattr(want[c], "value", want[c]))
        if a.dtype.kind == "f":
            np.testing.assert_array_equal(a, b, err_msg=c)
        else:
            assert list(a) == list(b), c


def _stray_files(out):
    return [p.name for p in out.rglob("*") if p.name.startswith(".") or ".tmp" in p.name]


# --------------------------------------------------------------------------- the list


@pytest.mark.parametrize(
    ("names", "key"),
    [
        (["NGC_2682", "NGC 2682", "ngc2682", "NGC2682", "NGC 02682"], "ngc2682"),
        (["Collinder 135", "collinder_135"], "collinder135"),
        (["ESO 093-08", "ESO 93 8"], "eso93-8"),
    ],
)
def test_cluster_names_normalise_to_one_key(names, key):
    assert {gd.cluster_key(n) for n in names} == {key}
    assert gd.cluster_key("ESO 9-38") != gd.cluster_key("ESO 93-8")
    assert gd.cluster_key("Alessi 1") != gd.cluster_key("Alessi 12")


def test_common_spellings_are_read_with_units_and_hints(tmp_path):
    t = gd.read_cluster_list(_cluster_list(**{"pmRA*": [1.0, 2.0, 3.0], "pmDE": [-1.0, 0, 1], "Plx": [1.0, 2, 4]}))
    assert t.colnames == ["name", "key", "ra", "dec", "radius", "pmra", "pmdec", "parallax"]
    assert list(t["name"]) == LIST_NAMES and list(t["key"]) == ["simc", "sima", "simb"]
    assert t["radius"].unit == u.deg and t["pmra"].unit == u.mas / u.yr and t["parallax"].unit == u.mas
    # a CSV as catalogues write it: other spellings, a radius in arcmin, sexagesimal coordinates
    path = tmp_path / "list.csv"
    path.write_text("Name,RAJ2000,DE_ICRS,radius\nNGC 2682,08 51 23.3,+11 48 50,30\nM 45,56.75,24.12,60\n")
    t = gd.read_cluster_list(path, radius_unit="arcmin")
    np.testing.assert_allclose(t["radius"].value, [0.5, 1.0])
    np.testing.assert_allclose([t["ra"][0].value, t["dec"][0].value], [132.847, 11.814], atol=1e-3)
    assert list(t["key"]) == ["ngc2682", "m45"]
    # a DataFrame with a unit-less "ra" that load_table knows
    pd = pytest.importorskip("pandas")
    t = gd.read_cluster_list(pd.DataFrame({"name": ["x"], "ra": [1.0], "dec": [2.0], "radius_deg": [0.1]}))
    assert t["ra"][0] == 1.0 * u.deg


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"Cluster": ["NGC_2682", "ngc2682", "Sim B"]}, r"row 2 \('ngc2682'\): the same cluster as row 1"),
        ({"RA_ICRS": [132.8, np.nan, 132.8]}, r"row 2 .*missing or NaN coordinates"),
        ({"DEJ2000": [11.8, 11.8, 95.0]}, r"row 3 .*dec=95.0 deg is outside"),
        ({"r50": [0.5, 0.0, 0.5]}, r"row 2 .*radius 0.0 deg must be > 0 and < 20"),
        ({"r50": [0.5, 0.5, 25.0]}, r"row 3 .*radius 25.0 deg"),
        ({"r50": [0.5, np.nan, 0.5]}, r"row 2 .*radius nan"),
        ({"Cluster": ["a", "", "b"]}, r"row 2: no name"),
    ],
)
def test_bad_lists_are_refused_before_any_fit(change, match, monkeypatch, tmp_path, field_folder):
    bad = _cluster_list()
    for col, values in change.items():
        bad[col] = values
    with pytest.raises(gd.ClusterListError, match=match):
        gd.read_cluster_list(bad)
    counter = FitCounter(monkeypatch)
    with pytest.raises(gd.ClusterListError, match=match):
        gd.fit_catalogue(bad, source=field_folder, out=tmp_path / "out", **FAST)
    assert counter.seeds == [] and not (tmp_path / "out").exists()


def test_missing_columns_name_the_accepted_spellings():
    with pytest.raises(gd.MissingColumnsError, match=r"no radius column .*r50"):
        gd.read_cluster_list(Table({"name": ["a"], "ra": [1.0], "dec": [1.0]}))


def test_published_lists_by_name_and_unknown_names():
    with pytest.raises(ValueError, match=r"unknown cluster catalogue 'hunt2022'; known: 'hunt2023'"):
        gd.cluster_catalogue("hunt2022")
    asked = []

    def fake_vizier(table_id):  # Hunt & Reffert 2023's spellings
        asked.append(table_id)
        return Table(
            {"Name": ["NGC_2301", "NGC_2437"], "RA_ICRS": [102.94, 115.46], "DE_ICRS": [0.46, -14.83],
             "r50": [0.2, 0.3], "pmRA": [-1.37, -3.87], "pmDE": [-2.19, 0.41], "Plx": [1.149, 0.599]}
        )  # fmt: skip

    t = gd.cluster_catalogue("hunt2023", fetch=fake_vizier)
    assert asked == ["J/A+A/673/A114/clusters"]
    assert list(t["key"]) == ["ngc2301", "ngc2437"] and "pmra" in t.colnames and "parallax" in t.colnames
    assert t.meta["cluster_list"]["catalogue"]["reference"].startswith("Hunt & Reffert 2023")


def test_an_unwritable_out_folder_is_refused_before_any_fit(tmp_path, field_folder, monkeypatch):
    counter = FitCounter(monkeypatch)
    afile = tmp_path / "a_file"
    afile.write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        gd.fit_catalogue(_cluster_list(), source=field_folder, out=afile, **FAST)
    with pytest.raises(PermissionError, match="cannot be written"):
        gd.fit_catalogue(_cluster_list(), source=field_folder, out=afile / "sub", **FAST)
    with pytest.raises(TypeError, match="does not take: num_sample"):
        gd.fit_catalogue(_cluster_list(), source=field_folder, out=tmp_path / "o", num_sample=3)
    with pytest.raises(ValueError, match="distance_hint is per cluster"):
        gd.fit_catalogue(_cluster_list(), source=field_folder, out=tmp_path / "o", distance_hint=800)
    with pytest.raises(ValueError, match="field must be one of"):
        gd.fit_catalogue(_cluster_list(), source=field_folder, out=tmp_path / "o", field="nope")
    with pytest.raises(ValueError, match="radius_scale must be positive"):
        gd.fit_catalogue(_cluster_list(), source=field_folder, out=tmp_path / "o", radius_scale=0)
    with pytest.raises(FileNotFoundError, match="source folder"):
        gd.fit_catalogue(_cluster_list(), source=tmp_path / "nowhere", out=tmp_path / "o")
    assert counter.seeds == []


# --------------------------------------------------------------------------- a run


def test_folder_source_end_to_end(reference_run, field_folder):
    cat, out = reference_run
    assert list(cat["name"]) == LIST_NAMES  # the list's order and spelling
    assert list(cat.colnames) == list(CATALOGUE_COLUMNS)
    assert set(cat["status"]) <= {"ok", "warning"}
    truth = {"simc": 1100.0, "sima": 700.0, "simb": 900.0}
    for row in cat:
        d = row["D"].to_value(u.pc)
        assert abs(d / truth[row["key"]] - 1) < 0.1, (row["key"], d)
        assert row["D_lo"] < row["D"] < row["D_hi"] and row["D_sd_sys"].value == 0.0
        assert row["seed"] == cluster_seed(0, row["key"])
        assert row["n_rows"] == 450 and row["n_stars"] == 450 and row["field"].startswith("file:")
        members = gd.load_table(out / "members" / f"{row['key']}.ecsv")
        for col in ("membership_prob", "cluster_distance_median", "cluster_distance_lo", "cluster_flag"):
            assert col in members.colnames
        assert math.isclose(row["n_members"], float(np.nansum(members["membership_prob"])), rel_tol=1e-9)
        assert 100 < row["n_members"] < 200  # 150 simulated members
    assert np.all(np.isnan(cat["pmra"].value))  # a parallax-only fit has no proper motions
    back = QTable.read(out / "catalogue.ecsv")
    _assert_same_catalogue(back, cat)
    prov = cat.meta["gaia_distances"]["catalogue"]
    assert prov["summary"] == {s: int(np.sum(cat["status"] == s)) for s in set(cat["status"])}
    assert prov["options"]["num_samples"] == 40 and prov["options"]["source"]["kind"] == "folder"
    assert json.loads((out / "catalogue_meta.json").read_text())["options"]["seed"] == 0
    assert sorted(p.name for p in (out / "rows").iterdir()) == ["sima.json", "simb.json", "simc.json"]
    assert _stray_files(out) == []


def test_the_comparison_figure_against_the_list_or_another(reference_run):
    pytest.importorskip("matplotlib", reason="the plot extra (matplotlib) is not installed")
    import matplotlib

    matplotlib.use("Agg")
    cat, _ = reference_run
    assert isinstance(cat, gd.catalogue.RefitCatalogue)
    fig = cat.plot("comparison")  # the list had no hints: every panel says so
    assert [a.texts[0].get_text() for a in fig.axes][0] == "no cluster with a fitted and a list D"
    published = Table({"name": ["SIM_A", "simc"], "ra": [1.0, 1.0], "dec": [1.0, 1.0], "radius": [0.1, 0.1],
                       "dist50": [710.0, 1090.0], "pmra": [1.0, 2.0], "pmdec": [0.0, 0.0]})  # fmt: skip
    fig = cat.plot("comparison", reference=published, label="published")
    d_axis = fig.axes[0]
    xs = np.sort(np.concatenate([line.get_xdata() for line in d_axis.lines if len(line.get_xdata()) == 2]))
    assert d_axis.get_xlabel() == "published" and d_axis.get_xscale() == "log" and not d_axis.texts
    assert [710.0, 1090.0] == [x for x in xs if x in (710.0, 1090.0)]
    assert fig.axes[1].texts  # no fitted proper motions
    with pytest.raises(ValueError, match="kind must be 'comparison'"):
        cat.plot("corner")


def test_each_cluster_reproduces_a_direct_fit_with_its_seed(reference_run, field_folder):
    cat, _ = reference_run
    row = cat[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gd.GaiaDistancesWarning)  # a tiny fit's diagnostics
        fit = gd.fit_cluster(gd.load_table(field_folder / "sim_a_field.ecsv"), seed=cluster_seed(0, "sima"), **FAST)
    summ = {str(r["parameter"]): r for r in fit.summary()}
    assert row["D"].to_value(u.pc) == summ["D"]["p50"] and row["Q_hi"] == summ["Q"]["p84"]


def test_a_failing_cluster_gets_its_row_and_the_run_goes_on(field_folder, tmp_path, monkeypatch):
    folder = tmp_path / "fields"
    folder.mkdir()
    for name in FIELDS:
        (folder / f"{name}.ecsv").symlink_to(field_folder / f"{name}.ecsv")
    gd.write_table(gd.simulate_field(10, seed=1), folder / "tiny.ecsv")  # too few stars
    (folder / "broken.csv").write_text("parallax,parallax_error\n1.0,\n\x00\x00garbage")
    names = ["Sim A", "missing one", "tiny", "broken", "Sim B"]

    real = gd.fit_cluster

    def fit_or_fail(table, **kwargs):
        if len(table) == 450 and kwargs["seed"] == cluster_seed(0, "simb"):
            raise RuntimeError("the sampler broke")
        return real(table, **kwargs)

    monkeypatch.setattr(run_module, "fit_cluster", fit_or_fail)
    with pytest.warns(gd.GaiaDistancesWarning, match=r"4 of 5 clusters were not fitted"):
        cat = gd.fit_catalogue(_cluster_list(names), source=folder, out=tmp_path / "out", **FAST)
    status = dict(zip(cat["key"], cat["status"]))
    assert status["sima"] in ("ok", "warning")
    assert status["missingone"] == "no_field" and status["tiny"] == "too_few_stars"
    assert status["broken"] in ("no_field", "too_few_stars") and status["simb"] == "fit_error"
    reasons = dict(zip(cat["key"], cat["reason"]))
    assert "RuntimeError: the sampler broke" in reasons["simb"] and "no file for 'missing one'" in reasons["missingone"]
    assert "10 of 10 rows" in reasons["tiny"] and "needs 20" in reasons["tiny"]
    assert cat.meta["gaia_distances"]["catalogue"]["summary"]["fit_error"] == 1
    assert sorted(p.name for p in (tmp_path / "out" / "members").iterdir()) == ["sima.ecsv"]
    # a rerun tries the failed clusters again (only simb reaches a fit), and fits no done one twice
    counter = FitCounter(monkeypatch)
    with pytest.warns(gd.GaiaDistancesWarning, match=r"3 of 5 clusters were not fitted"):
        again = gd.fit_catalogue(_cluster_list(names), source=folder, out=tmp_path / "out", **FAST)
    assert counter.seeds == [cluster_seed(0, "simb")] and again["status"][4] in ("ok", "warning")
    assert list(again["status"][:4]) == list(cat["status"][:4])


# --------------------------------------------------------------------------- resume, refit, options


def test_an_interrupted_run_resumes_without_fitting_any_cluster_twice(
    reference_run, field_folder, tmp_path, monkeypatch
):
    want, _ = reference_run
    out = tmp_path / "refit"
    first = FitCounter(monkeypatch, fail_at=3)
    with pytest.raises(KeyboardInterrupt):
        gd.fit_catalogue(_cluster_list(), source=field_folder, out=out, **FAST)
    assert len(first.seeds) == 2
    partial = QTable.read(out / "catalogue.ecsv")
    assert list(partial["name"]) == LIST_NAMES[:2] and _stray_files(out) == []
    second = FitCounter(monkeypatch)
    cat = gd.fit_catalogue(_cluster_list(), source=field_folder, out=out, **FAST)
    assert second.seeds == [cluster_seed(0, "simb")]  # only the one not done
    _assert_same_catalogue(cat, want)
    # a members file lost: only that cluster is fitted again; all done: nothing is
    (out / "members" / "sima.ecsv").unlink()
    third = FitCounter(monkeypatch)
    cat = gd.fit_catalogue(_cluster_list(), source=field_folder, out=out, **FAST)
    assert third.seeds == [cluster_seed(0, "sima")]
    _assert_same_catalogue(cat, want)
    fourth = FitCounter(monkeypatch)
    gd.fit_catalogue(_cluster_list(), source=field_folder, out=out, **FAST)
    assert fourth.seeds == []


def test_other_options_are_refused_by_name_unless_refit(reference_run, field_folder, monkeypatch):
    _, out = reference_run
    counter = FitCounter(monkeypatch)
    with pytest.raises(gd.OptionsMismatchError, match=r"num_samples: 40 there, 50 now.*seed: 0 there, 1 now"):
        gd.fit_catalogue(_cluster_list(), source=field_folder, out=out, seed=1, **{**FAST, "num_samples": 50})
    with pytest.raises(gd.OptionsMismatchError, match=r"magnitude_limit: None there, 17.0 now"):
        gd.fit_catalogue(_cluster_list(), source=field_folder, out=out, magnitude_limit=17, **FAST)
    # an option given at its default is the same option
    gd.fit_catalogue(_cluster_list(), source=field_folder, out=out, method="marginal", truncate=True, **FAST)
    assert counter.seeds == []


def test_the_default_prior_given_by_name_is_the_same_option(reference_run, field_folder, monkeypatch):
    """A folder made with ``prior=None`` (the API's default) resumes with ``ClusterPriors()`` (the CLI's)."""
    _, out = reference_run
    counter = FitCounter(monkeypatch)
    gd.fit_catalogue(_cluster_list(), source=field_folder, out=out, prior=gd.ClusterPriors(), **FAST)
    assert counter.seeds == []
    with pytest.raises(gd.OptionsMismatchError, match=r"prior: .*there.*now"):
        gd.fit_catalogue(_cluster_list(), source=field_folder, out=out, prior=gd.ClusterPriors.physical(), **FAST)


def _ended_pid():
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_one_run_writes_a_folder_and_a_killed_runs_leftovers_are_cleared(
    reference_run, field_folder, tmp_path, monkeypatch
):
    import os
    import shutil
    import socket

    _, done = reference_run
    out = tmp_path / "copy"
    shutil.copytree(done, out)
    lock = out / ".lock"
    host = socket.gethostname()
    counter = FitCounter(monkeypatch)
    # a live run holds the folder: refused at once, naming it
    lock.write_text(json.dumps({"pid": os.getppid(), "host": host, "since": "2026-01-01T00:00:00"}))
    with pytest.raises(gd.FolderInUseError, match=rf"process {os.getppid()} on {host}.*remove .*\.lock"):
        gd.fit_catalogue(_cluster_list(), source=field_folder, out=out, **FAST)
    # a run killed mid-write: its lock and half-written files are cleared, its finished clusters stand
    lock.write_text(json.dumps({"pid": _ended_pid(), "host": host, "since": "2026-01-01T00:00:00"}))
    (out / "members" / ".sima.ecsv.0badcafe.tmp.ecsv").write_text("# %ECSV 1.0\n# partial")
    (out / "rows" / ".sima.json.deadbeef.tmp").write_text("{")
    (out / "members" / "sima.ecsv").unlink()  # the cluster whose write was cut short
    cat = gd.fit_catalogue(_cluster_list(), source=field_folder, out=out, **FAST)
    assert counter.seeds == [cluster_seed(0, "sima")] and _stray_files(out) == []
    _assert_same_catalogue(cat, reference_run[0])


def test_refit_fits_every_cluster_again_and_records_the_new_options(field_folder, tmp_path, monkeypatch):
    out = tmp_path / "refit"
    names = ["Sim A"]
    gd.fit_catalogue(_cluster_list(names), source=field_folder, out=out, **FAST)
    counter = FitCounter(monkeypatch)
    cat = gd.fit_catalogue(_cluster_list(names), source=field_folder, out=out, refit=True, seed=7, **FAST)
    assert counter.seeds == [cluster_seed(7, "sima")] == list(cat["seed"])
    assert json.loads((out / "catalogue_meta.json").read_text())["options"]["seed"] == 7


def test_a_refit_stopped_halfway_leaves_no_fit_of_the_old_options(reference_run, field_folder, tmp_path, monkeypatch):
    """The earlier rows go when a refit starts: resuming it fits every cluster with the new options."""
    import shutil

    _, done = reference_run
    out = tmp_path / "copy"
    shutil.copytree(done, out)
    first = FitCounter(monkeypatch, fail_at=2)
    with pytest.raises(KeyboardInterrupt):
        gd.fit_catalogue(_cluster_list(), source=field_folder, out=out, refit=True, seed=5, **FAST)
    second = FitCounter(monkeypatch)
    cat = gd.fit_catalogue(_cluster_list(), source=field_folder, out=out, seed=5, **FAST)
    assert len(first.seeds) == 1 and len(second.seeds) == len(LIST_NAMES) - 1
    assert set(cat["seed"]) == {cluster_seed(5, k) for k in cat["key"]}


def test_files_are_written_whole_or_not_at_all(field_folder, tmp_path, monkeypatch):
    """A write that fails half-way leaves neither a partial file nor a temporary one; earlier files stand."""
    import gaia_distances.io as io_module

    out = tmp_path / "refit"
    real = io_module._write
    calls = []

    def failing_write(table, path, fmt):
        calls.append(path)
        if len(calls) == 3:  # the second cluster's members file
            path.write_text("# %ECSV 1.0\n# partial")
            raise OSError(28, "No space left on device")
        return real(table, path, fmt)

    monkeypatch.setattr(io_module, "_write", failing_write)
    with pytest.raises(OSError, match="No space left"):
        gd.fit_catalogue(_cluster_list(), source=field_folder, out=out, **FAST)
    assert _stray_files(out) == []
    assert [p.name for p in (out / "members").iterdir()] == ["simc.ecsv"]
    assert list(QTable.read(out / "catalogue.ecsv")["key"]) == ["simc"]
    monkeypatch.setattr(io_module, "_write", real)
    with warnings.catch_warnings():
        warnings.simplefilter("error", gd.GaiaDistancesWarning)
        cat = gd.fit_catalogue(_cluster_list(), source=field_folder, out=out, **FAST)
    assert list(cat["key"]) == ["simc", "sima", "simb"]


# --------------------------------------------------------------------------- real fields

#: The shared cones (README of the shared data): name, file, centre, Hunt & Reffert 2023 parallax (mas),
#: distance (pc), pmra, pmdec (mas/yr).
CONES = {
    "NGC 2301": ("ngc2301_edr3_box.csv", 102.937, 0.462, 1.1487, 839.6, -1.368, -2.185),
    "NGC 2437": ("ngc2437_edr3_box.csv", 115.460, -14.834, 0.5992, 1554.5, -3.871, 0.407),
    "NGC 2506": ("ngc2506_edr3_box.csv", 120.002, -10.770, 0.2791, 3140.4, -2.561, 3.965),
}


@pytest.mark.slow
def test_shared_cones_refit_as_three_direct_fits(data_file, tmp_path):
    folder = data_file("cones/ngc2301_edr3_box.csv").parent
    clusters = Table(
        {
            "Name": list(CONES),
            "RA_ICRS": [c[1] for c in CONES.values()],
            "DE_ICRS": [c[2] for c in CONES.values()],
            "r50": [0.2] * 3,
            "Plx": [c[3] for c in CONES.values()],
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gd.GaiaDistancesWarning)
        cat = gd.fit_catalogue(clusters, source=folder, out=tmp_path / "refit", apply_zeropoint=True, seed=11)
    for row, (name, (file, _, _, plx, dist, pmra, pmdec)) in zip(cat, CONES.items()):
        assert row["name"] == name and row["status"] in ("ok", "warning"), (name, row["reason"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", gd.GaiaDistancesWarning)
            field = gd.apply_zeropoint(gd.load_table(folder / file), progress=False)
            fit = gd.fit_cluster(field, seed=cluster_seed(11, row["key"]), distance_hint=1000 / plx, progress=False)
        summ = {str(r["parameter"]): r for r in fit.summary()}
        for p in ("D", "pmra", "pmdec"):
            assert row[p].value == summ[p]["p50"], (name, p)
            assert row[f"{p}_sd_sys"].value == summ[p]["sd_sys"], (name, p)
        # and the published values, loosely (theirs exclude the systematics, and cover other stars)
        assert abs(row["D"].to_value(u.pc) / dist - 1) < 0.05, name
        assert abs(row["pmra"].value - pmra) < 0.1 and abs(row["pmdec"].value - pmdec) < 0.1, name
