"""``gaia-distances catalogue``: a list refitted from the shell, resumed, and its errors on one line."""

from __future__ import annotations

import json

import pytest
from astropy.table import QTable

import gaia_distances as gd
from gaia_distances.cli import main

SMALL = ["--kinematics", "off", "--field", "edsd", "--systematics", "none", "--num-warmup", "30", "--num-samples", "40"]


@pytest.fixture
def inputs(tmp_path):
    fields = tmp_path / "fields"
    gd.write_table(gd.simulate_field(300, n_cluster=150, cluster_distance=900.0, seed=2), fields / "ngc_0001.ecsv")
    clusters = tmp_path / "clusters.csv"
    clusters.write_text("Cluster,RA_ICRS,DE_ICRS,r50\nNGC_1,132.846,11.814,0.5\nNGC 2,132.846,11.814,0.5\n")
    return clusters, fields


def test_catalogue_subcommand_fits_resumes_and_refuses_other_options(inputs, tmp_path, capsys):
    clusters, fields = inputs
    out = tmp_path / "refit"
    args = ["catalogue", str(clusters), "-o", str(out), "--source", str(fields), "--zero-point",
            "parallax_zeropoint_true", *SMALL]  # fmt: skip
    assert main(["--json", *args]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["clusters"] == 2 and summary["status_no_field"] == 1
    assert summary.get("status_ok", 0) + summary.get("status_warning", 0) == 1
    assert "gaia-distances catalogue: warning: fit_catalogue: 1 of 2 clusters were not fitted" in captured.err
    cat = QTable.read(out / "catalogue.ecsv")
    assert list(cat["name"]) == ["NGC_1", "NGC 2"] and (out / "members" / "ngc1.ecsv").exists()
    # the printed table, then a rerun with other options: one line naming them, exit status 2
    assert main(args) == 0
    assert "NGC_1" in capsys.readouterr().out
    assert main([*args, "--seed", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "seed: 0 there, 3 now" in err[0] and "--refit" in err[0]


def test_catalogue_subcommand_checks_its_inputs_first(inputs, tmp_path, capsys):
    clusters, fields = inputs
    bad = tmp_path / "bad.csv"
    bad.write_text("name,ra,dec,radius\nA,1,2,0.5\na,1,2,0.5\n")
    assert main(["catalogue", str(bad), "-o", str(tmp_path / "o"), "--source", str(fields)]) == 2
    assert "the same cluster as row 1" in capsys.readouterr().err and not (tmp_path / "o").exists()
    afile = tmp_path / "file"
    afile.write_text("")
    assert main(["catalogue", str(clusters), "-o", str(afile), "--source", str(fields)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["catalogue", "hunt2022", "-o", str(tmp_path / "o"), "--source", "archive"]) == 2
    assert "no such cluster list: hunt2022 (neither a file nor a published list: hunt2023" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["catalogue", str(clusters), "-o", str(tmp_path / "o"), "--source", "archive", "--workers", "0"])
    assert exit_.value.code == 2
    assert "--workers: must be a positive integer" in capsys.readouterr().err
