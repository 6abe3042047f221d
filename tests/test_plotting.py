"""Figures and reports: every plot type draws, with labelled axes and units, from tables and fits."""

from __future__ import annotations

import numpy as np
import pytest

import gaia_distances as gd

matplotlib = pytest.importorskip("matplotlib", reason="the plot extra (matplotlib) is not installed")
matplotlib.use("Agg")
pytest.importorskip("corner", reason="the plot extra (corner) is not installed")
plt = pytest.importorskip("matplotlib.pyplot")
plotting = gd.plotting
from gaia_distances.pm_plots import is_kinematic  # noqa: E402  (after the Agg backend is chosen)


@pytest.fixture(scope="module")
def fit():
    """A quick fit of its own (the shared ``cluster_fit`` would be computed again on this file's worker)."""
    import warnings

    t = gd.simulate_field(500, n_cluster=200, seed=21)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gd.GaiaDistancesWarning)
        t = gd.estimate_distances(gd.apply_zeropoint(t, fallback=-0.017), prior=gd.EDSD(1350.0))
        return gd.fit_cluster(
            t, kinematics=False, field="edsd", num_warmup=150, num_samples=200, seed=3, progress=False
        )


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _labels(fig):
    return [(ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes if ax.get_xlabel()]


def test_corner_plot_with_truths(fit):
    fig = plotting.corner_plot(fit, truths={"D": 850.0, "Q": 400 / 1900})
    assert len(fig.axes) == 16
    xlabels = [ax.get_xlabel() for ax in fig.axes[-4:]]
    assert xlabels == [r"$D$ [pc]", r"$\sigma$ [pc]", r"$Q$", r"$L$ [pc]"]
    # the D truth line sits at 850 in the D marginal
    assert any(np.allclose(line.get_xdata(), 850.0) for line in fig.axes[0].get_lines())
    with pytest.raises(KeyError, match="no draws"):
        plotting.corner_plot(fit, parameters=("D", "nope"))


def test_corner_plot_from_plain_draws():
    rng = np.random.default_rng(0)
    fig = plotting.corner_plot({"D": rng.normal(800, 1, 500), "L": rng.normal(400, 5, 500)}, parameters=("D", "L"))
    assert len(fig.axes) == 4


def test_corner_plot_defaults_to_the_population_parameters_present():
    """A flexible field has no L: the default shows D, sigma and Q, not a KeyError."""
    rng = np.random.default_rng(1)
    draws = {k: rng.normal(v, 1.0, 400) for k, v in {"D": 800.0, "sigma": 12.0, "Q": 0.2, "pmra": -11.0}.items()}
    fig = plotting.corner_plot(draws)
    assert len(fig.axes) == 9
    assert [ax.get_xlabel() for ax in fig.axes[-3:]] == [r"$D$ [pc]", r"$\sigma$ [pc]", r"$Q$"]


def test_colour_magnitude_uses_posterior_distance_and_membership(fit):
    fig = plotting.colour_magnitude(fit.table)
    ax = fig.axes[0]
    assert ax.yaxis_inverted()
    assert "[mag]" in ax.get_xlabel() and "[mag]" in ax.get_ylabel()
    assert "cluster_distance_median" in ax.get_title()
    assert any(a.get_ylabel() == "membership probability" for a in fig.axes[1:])  # the colour bar
    # absolute magnitudes: G - 5 log10(r/10) of the drawn points
    pts = np.concatenate([c.get_offsets() for c in ax.collections])
    t = fit.table
    ok = np.isfinite(t["cluster_distance_median"].value)
    expect = t["phot_g_mean_mag"].value[ok] - 5 * np.log10(t["cluster_distance_median"].value[ok] / 10)
    assert np.allclose(np.sort(pts[:, 1]), np.sort(expect))


def test_colour_magnitude_without_fit_and_missing_columns():
    t = gd.estimate_distances(gd.simulate_field(200, seed=1), zero_point="parallax_zeropoint_true")
    fig = plotting.colour_magnitude(t)
    assert "distance_median" in fig.axes[0].get_title()
    with pytest.raises(KeyError, match="distance"):
        plotting.colour_magnitude(gd.simulate_field(50, seed=1))


def test_sky_map_ra_increases_to_the_left(fit):
    fig, ax = plt.subplots()
    out = plotting.sky_map(fit.table, ax=ax)
    assert out is fig
    assert ax.xaxis_inverted()
    assert ax.get_xlabel() == "RA [deg]" and ax.get_ylabel() == "Dec [deg]"


def test_parallax_predictive_has_log_counts_and_both_predictives(fit):
    fig = plotting.parallax_predictive(fit, num_samples=30)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert "[mas]" in ax.get_xlabel()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("posterior predictive" in s for s in labels) and any("prior predictive" in s for s in labels)
    assert f"observed ({fit.stars.n_stars} stars)" in labels
    # the observed histogram is the fitted stars' catalogue parallaxes
    (observed,) = [p for p in ax.patches if str(p.get_label()).startswith("observed")]
    data = observed.get_data()
    np.testing.assert_array_equal(data.values, np.histogram(fit.stars.catalogue_parallax, data.edges)[0])


def test_distance_posteriors_peak_near_the_quadrature_mode(fit):
    t = fit.table
    usable = np.isfinite(t["distance_mode"].value) & (np.asarray(t["cluster_flag"]) == 0)
    rows = [int(np.flatnonzero(usable)[0])]
    fig = plotting.distance_posteriors(t, rows)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "distance r [pc]"
    curve = ax.get_lines()[0]
    r, dens = curve.get_xdata(), curve.get_ydata()
    # the drawn density is p(ln r); the mode of p(r) is the catalogue mode, p(ln r) peaks at r * p(r)'s maximum
    r_mode = t["distance_mode"].value[rows[0]]
    peak = r[np.argmax(dens / r)]
    assert abs(peak / r_mode - 1) < 0.01
    assert "EDSD" in ax.get_title()


def test_distance_posteriors_needs_prior_when_provenance_cannot_rebuild_it(fit):
    t = fit.table.copy()
    t.meta["gaia_distances"]["distances"]["prior"] = {"name": "Bailer-Jones 2021 GGD (HEALPix level 5)"}
    with pytest.raises(ValueError, match="pass prior="):
        plotting.distance_posteriors(t)
    fig = plotting.distance_posteriors(t, prior=gd.EDSD(1350.0))
    assert "EDSD" in fig.axes[0].get_title() and len(fig.axes[0].get_lines()) >= 2


def test_fit_plot_kinds(fit):
    overview = fit.plot()
    xlabels = {ax.get_xlabel() for ax in overview.axes}
    assert {"RA [deg]", "distance r [pc]", r"catalogue parallax $\varpi$ [mas]"} <= xlabels
    expected = {
        "corner": r"$D$ [pc]",
        "parallax": r"catalogue parallax $\varpi$ [mas]",
        "sky": "RA [deg]",
        "distances": "distance r [pc]",
    }
    for kind, xlabel in expected.items():
        fig = fit.plot(kind)
        assert xlabel in {ax.get_xlabel() for ax in fig.axes}, kind
    assert "[mag]" in fit.plot("cmd").axes[0].get_ylabel()
    with pytest.raises(ValueError, match="kind"):
        fit.plot("nope")
    if is_kinematic(fit):
        assert "mas/yr" in fit.plot("proper_motions").axes[0].get_xlabel()
    else:
        with pytest.raises(ValueError, match="proper motions"):
            fit.plot("proper_motions")


def test_report_links_every_figure(fit, tmp_path):
    path = fit.report(tmp_path / "rep", truths={"D": 850.0})
    text = path.read_text()
    pngs = sorted(p.name for p in (tmp_path / "rep").glob("*.png"))
    expected = [
        "corner.png",
        "parallax_predictive.png",
        "colour_magnitude.png",
        "sky_map.png",
        "distance_posteriors.png",
    ]
    if is_kinematic(fit):
        expected += ["corner_kinematics.png", "proper_motions.png", "proper_motion_predictive.png"]
    assert pngs == sorted(expected)
    for name in pngs:
        assert f"]({name})" in text
    assert "| D |" in text and "R-hat" in text and "divergences" in text


def test_report_of_a_plain_distance_table(tmp_path):
    t = gd.estimate_distances(gd.simulate_field(300, seed=4), zero_point="parallax_zeropoint_true")
    path = gd.report.write_report(t, tmp_path)
    text = path.read_text()
    assert "## Distances" in text and "Cluster fit" not in text
    assert (tmp_path / "colour_magnitude.png").exists() and not (tmp_path / "corner.png").exists()


def test_fit_round_trips_through_files(fit, tmp_path):
    gd.write_table(fit.table, tmp_path / "fit.ecsv")
    fit.to_netcdf(str(tmp_path / "post.nc"))
    back = gd.ClusterFit.from_table(gd.load_table(tmp_path / "fit.ecsv"), str(tmp_path / "post.nc"))
    a, b = fit.summary(), back.summary()
    assert np.allclose(a["mean"], b["mean"]) and np.allclose(a["r_hat"], b["r_hat"], equal_nan=True)
    np.testing.assert_allclose(back.draws, fit.draws, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(back.stars.rows, fit.stars.rows)
    np.testing.assert_allclose(back.stars.zero_point, fit.stars.zero_point)
    np.testing.assert_allclose(back.stars.catalogue_parallax, fit.stars.catalogue_parallax)
    assert back.prior == fit.prior and back.method == fit.method
    with pytest.raises(gd.GaiaDistancesError, match="provenance"):
        gd.ClusterFit.from_table(gd.simulate_field(30, seed=1), str(tmp_path / "post.nc"))
