"""Proper-motion figures and reports on fits that satisfy ``plotting.FitLike``, drawn from the kinematic model itself.

The fake fits hold data simulated from the model that ``pm_plots`` documents,
with the posterior concentrated on the truth, so the figures and the
predictive check can be compared with what generated the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from astropy import units as u
from astropy.table import QTable, Table

import gaia_distances as gd

matplotlib = pytest.importorskip("matplotlib", reason="the plot extra (matplotlib) is not installed")
matplotlib.use("Agg")
pytest.importorskip("corner", reason="the plot extra (corner) is not installed")
plt = pytest.importorskip("matplotlib.pyplot")

from gaia_distances import pm_plots  # noqa: E402  (after the Agg backend is chosen)
from gaia_distances.core.kinematics import A_V  # noqa: E402

TRUTH: dict[str, float] = {
    "D": 850.0,
    "sigma": 17.0,
    "Q": 0.2,
    "L": 1350.0,
    "pmra": -11.0,
    "pmdec": -2.9,
    "sigma_v": 0.8,
    "field_pmra_1": -2.0,
    "field_pmdec_1": -1.0,
    "field_pm_sd_ra_1": 3.0,
    "field_pm_sd_dec_1": 2.0,
    "field_pm_corr_1": 0.3,
    "field_sigma_v_1": 20.0,
    "field_pm_weight_1": 0.7,
    "field_pmra_2": 1.0,
    "field_pmdec_2": 3.0,
    "field_pm_sd_ra_2": 6.0,
    "field_pm_sd_dec_2": 5.0,
    "field_pm_corr_2": -0.2,
    "field_sigma_v_2": 50.0,
    "field_pm_weight_2": 0.3,
    "field_pm_trend_ra": -1.5,
    "field_pm_trend_dec": 0.8,
}


@dataclass
class FakeFit:
    """Just what ``plotting.FitLike`` asks for."""

    table: Any
    stars: Any
    posterior: dict[str, np.ndarray]
    diagnostics: dict[str, Any]
    method: str = "marginal"
    _rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))

    def summary(self) -> Table:
        names = [k for k in ("D", "sigma", "Q", "L", "pmra", "pmdec", "sigma_v") if k in self.posterior]
        return Table(
            {
                "parameter": names,
                "description": ["-"] * len(names),
                "mean": [float(np.mean(self.posterior[k])) for k in names],
                "sd": [float(np.std(self.posterior[k])) for k in names],
                "r_hat": [1.0] * len(names),
            }
        )

    def predictive(self, kind: str = "posterior", *, num_samples: int = 100, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        w, s = self.stars.catalogue_parallax, self.stars.parallax_error
        return w + s * rng.standard_normal((num_samples, w.size))


def _posterior(truth: dict[str, float], rng: np.random.Generator, chains: int = 2, draws: int = 60) -> dict:
    """Draws tightly around the truth (relative scatter 0.5 %), with the weights summing to 1 per draw."""
    post = {k: v + 0.005 * (abs(v) + 0.05) * rng.standard_normal((chains, draws)) for k, v in truth.items()}
    m = [k for k in post if k.startswith("field_pm_weight_")]
    total = sum(post[k] for k in m)
    for k in m:
        post[k] = post[k] / total
    return post


def _simulate(n_field: int, n_cluster: int, seed: int, truth: dict[str, float] = TRUTH) -> tuple[QTable, dict]:
    """Parallaxes and proper motions from the documented model, at each star's true parallax."""
    rng = np.random.default_rng(seed)
    n = n_field + n_cluster
    member = np.arange(n) < n_cluster
    r = np.where(member, truth["D"] * np.exp(0.02 * rng.standard_normal(n)), rng.uniform(300.0, 4000.0, n))
    w_true = 1000.0 / r
    plx_err = rng.uniform(0.02, 0.15, n)
    pm_err = rng.uniform(0.02, 0.3, (n, 2))
    pm = np.empty((n, 2))
    disp = truth["sigma_v"] * w_true / A_V
    pm[member] = [truth["pmra"], truth["pmdec"]] + np.hypot(disp, pm_err.T).T[member] * rng.standard_normal(
        (n_cluster, 2)
    )
    comp = np.where(rng.random(n) < truth["field_pm_weight_1"], 1, 2)
    for i in np.flatnonzero(~member):
        m, w = comp[i], w_true[i]
        sa, sd, rho = truth[f"field_pm_sd_ra_{m}"], truth[f"field_pm_sd_dec_{m}"], truth[f"field_pm_corr_{m}"]
        iso = (truth[f"field_sigma_v_{m}"] * w / A_V) ** 2
        cov = np.array([[sa**2 + iso, rho * sa * sd], [rho * sa * sd, sd**2 + iso]]) + np.diag(pm_err[i] ** 2)
        mean = [truth[f"field_pmra_{m}"] + truth["field_pm_trend_ra"] * w, truth[f"field_pmdec_{m}"]]
        mean[1] += truth["field_pm_trend_dec"] * w
        pm[i] = rng.multivariate_normal(mean, cov)
    plx = w_true + plx_err * rng.standard_normal(n)
    t = QTable()
    t["source_id"] = np.arange(n, dtype=np.int64)
    t["ra"] = rng.uniform(132.3, 133.3, n) * u.deg
    t["dec"] = rng.uniform(11.3, 12.3, n) * u.deg
    t["parallax"] = plx * u.mas
    t["parallax_corrected"] = plx * u.mas
    t["parallax_error"] = plx_err * u.mas
    t["pmra"], t["pmdec"] = pm[:, 0] * u.mas / u.yr, pm[:, 1] * u.mas / u.yr
    t["pmra_error"], t["pmdec_error"] = pm_err[:, 0] * u.mas / u.yr, pm_err[:, 1] * u.mas / u.yr
    t["phot_g_mean_mag"] = rng.uniform(10.0, 19.0, n) * u.mag
    t["bp_rp"] = rng.uniform(0.3, 2.0, n) * u.mag
    t["membership_prob"] = np.where(member, 0.97, 0.01)
    t["cluster_distance_median"] = r * u.pc
    t["cluster_flag"] = np.zeros(n, dtype=np.int16)
    return t, {"member": member, "w_true": w_true}


def _fit(t: QTable, *, kinematic: bool = True, seed: int = 1, truth: dict[str, float] = TRUTH) -> FakeFit:
    rows = np.arange(len(t))
    plx = np.asarray(t["parallax"].value)
    pm_cols: dict[str, Any] = {}
    if kinematic:
        pm_cols = {c: np.asarray(t[c].value) for c in ("pmra", "pmdec", "pmra_error", "pmdec_error")}
        pm_cols["pmra_pmdec_corr"] = np.zeros(len(t))
    stars = gd.FittedStars(
        rows=rows,
        parallax=plx,
        parallax_error=np.asarray(t["parallax_error"].value),
        zero_point=np.zeros(len(t)),
        **pm_cols,
    )
    keep = truth if kinematic else {k: truth[k] for k in ("D", "sigma", "Q", "L")}
    post = _posterior(keep, np.random.default_rng(seed))
    diag = {
        "kinematics": kinematic,
        "r_hat": {k: 1.0 for k in post},
        "min_ess_bulk": 100.0,
        "divergences": 0,
        "wall_time_s": 1.0,
        "ess_per_s": 100.0,
        "warnings": [],
    }
    return FakeFit(table=t, stars=stars, posterior=post, diagnostics=diag)


@pytest.fixture(scope="module")
def simulated():
    return _simulate(1500, 300, seed=3)


@pytest.fixture(scope="module")
def kin_fit(simulated):
    return _fit(simulated[0])


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_fake_fit_has_what_fitlike_asks_for(kin_fit):
    from gaia_distances import plotting

    wanted = [n for n in vars(plotting.FitLike) if not n.startswith("_")]
    assert {"table", "method", "posterior", "diagnostics", "summary", "stars", "predictive"} <= set(wanted)
    for name in wanted:
        assert hasattr(kin_fit, name), name
    assert pm_plots.is_kinematic(kin_fit)


def test_the_shared_constant_dispersion_enters_every_component(kin_fit):
    """A fit with the components' shared ``field_pm_sd_ra``, ``field_pm_sd_dec``, ``field_pm_corr`` (no ``_m``)
    gives every component that constant part."""
    post = {k: v for k, v in kin_fit.posterior.items() if not k.startswith(("field_pm_sd_", "field_pm_corr_"))}
    post["field_pm_sd_ra"], post["field_pm_sd_dec"] = np.full((2, 60), 0.4), np.full((2, 60), 0.9)
    post["field_pm_corr"] = np.full((2, 60), -0.5)
    shared = FakeFit(kin_fit.table, kin_fit.stars, post, kin_fit.diagnostics)
    w = 2.0
    model = pm_plots.proper_motion_model(shared, parallax=w)
    for m in (1, 2):
        iso = (float(np.mean(post[f"field_sigma_v_{m}"])) * w / A_V) ** 2
        t12 = -0.5 * 0.4 * 0.9
        np.testing.assert_allclose(model.field_cov[m - 1], [[0.16 + iso, t12], [t12, 0.81 + iso]], rtol=1e-12)


def test_model_at_a_parallax_follows_the_documented_formulas(kin_fit):
    w = 2.0
    model = pm_plots.proper_motion_model(kin_fit, parallax=w)
    post = {k: float(np.mean(v)) for k, v in kin_fit.posterior.items()}
    for m in (1, 2):
        mean = [post[f"field_pmra_{m}"] + post["field_pm_trend_ra"] * w, post[f"field_pmdec_{m}"]]
        mean[1] += post["field_pm_trend_dec"] * w
        np.testing.assert_allclose(model.field_mean[m - 1], mean, rtol=1e-12)
        sa, sd, rho = post[f"field_pm_sd_ra_{m}"], post[f"field_pm_sd_dec_{m}"], post[f"field_pm_corr_{m}"]
        iso = (post[f"field_sigma_v_{m}"] * w / A_V) ** 2
        np.testing.assert_allclose(
            model.field_cov[m - 1], [[sa**2 + iso, rho * sa * sd], [rho * sa * sd, sd**2 + iso]], rtol=1e-12
        )
    np.testing.assert_allclose(model.field_weight.sum(), 1.0)
    assert model.field_weight[0] == pytest.approx(0.7, abs=0.01)
    np.testing.assert_allclose(model.cluster_mean, [post["pmra"], post["pmdec"]], rtol=1e-12)
    # cluster: internal dispersion at D plus the likely members' median errors, per axis
    members = np.asarray(kin_fit.table["membership_prob"]) > 0.5
    err = np.median(np.column_stack([kin_fit.stars.pmra_error, kin_fit.stars.pmdec_error])[members], axis=0)
    disp = TRUTH["sigma_v"] * 1000.0 / TRUTH["D"] / A_V
    np.testing.assert_allclose(np.diag(model.cluster_cov), disp**2 + err**2, rtol=0.02)
    assert model.cluster_cov[0, 1] == 0.0
    # the default parallax is the fitted stars' median
    assert pm_plots.proper_motion_model(kin_fit).parallax == pytest.approx(np.median(kin_fit.stars.parallax))


def test_ellipse_points_sit_at_the_requested_mahalanobis_distance():
    cov = np.array([[4.0, 1.5], [1.5, 2.0]])
    mean = np.array([-3.0, 7.0])
    for n_sigma in (1.0, 2.0):
        d = pm_plots.ellipse(mean, cov, n_sigma) - mean
        maha = np.sqrt(np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d))
        np.testing.assert_allclose(maha, n_sigma, rtol=1e-10)


def test_vector_point_diagram_draws_stars_cluster_and_field(kin_fit):
    fig = gd.plotting.proper_motion_diagram(kin_fit)
    ax = fig.axes[0]
    assert "mas/yr" in ax.get_xlabel() and "mas/yr" in ax.get_ylabel()
    assert "pmra" in ax.get_xlabel() and "pmdec" in ax.get_ylabel()
    assert any("membership" in a.get_ylabel() for a in fig.axes[1:])  # the colour bar
    labels = [line.get_label() for line in ax.get_lines()]
    assert any(lab.startswith("cluster") for lab in labels) and sum(lab.startswith("field ") for lab in labels) == 2
    # field line widths grow with weight: component 1 (0.7) is drawn thicker than 2 (0.3)
    widths = {lab: line.get_linewidth() for lab, line in zip(labels, ax.get_lines(), strict=True)}
    w1 = next(v for k, v in widths.items() if k.startswith("field 1"))
    w2 = next(v for k, v in widths.items() if k.startswith("field 2"))
    assert w1 > w2
    # robust limits: the 1-99 % range of the stars, not the most extreme star, and the cluster inside
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    pm = np.column_stack([kin_fit.stars.pmra, kin_fit.stars.pmdec])
    assert x0 < TRUTH["pmra"] < x1 and y0 < TRUTH["pmdec"] < y1
    assert x0 <= np.percentile(pm[:, 0], 1) and x1 >= np.percentile(pm[:, 0], 99)
    assert (x1 - x0) < np.ptp(pm[:, 0]) or (y1 - y0) < np.ptp(pm[:, 1])
    # every star is drawn, members coloured by probability
    offsets = np.vstack([c.get_offsets() for c in ax.collections])
    assert len(offsets) == len(kin_fit.table)


def test_limits_always_hold_the_cluster_even_far_from_the_field():
    truth = {**TRUTH, "pmra": 40.0, "pmdec": -35.0}
    t, _ = _simulate(2000, 10, seed=5, truth=truth)  # 10 members: outside the stars' 1-99 % range
    fig = gd.plotting.proper_motion_diagram(_fit(t, truth=truth))
    (x0, x1), (y0, y1) = fig.axes[0].get_xlim(), fig.axes[0].get_ylim()
    assert x0 < 40.0 < x1 and y0 < -35.0 < y1


def test_parallax_only_fits_raise_a_clear_error(simulated):
    fit = _fit(simulated[0], kinematic=False)
    assert not pm_plots.is_kinematic(fit)
    for make in (gd.plotting.proper_motion_diagram, gd.plotting.proper_motion_predictive):
        with pytest.raises(ValueError, match="kinematics=True"):
            make(fit)
    # a kinematic posterior whose diagnostics say otherwise is not treated as kinematic either
    fake = _fit(simulated[0])
    fake.diagnostics = {**fake.diagnostics, "kinematics": False}
    with pytest.raises(ValueError, match="proper motions"):
        gd.plotting.proper_motion_diagram(fake)


def test_simulated_proper_motions_reproduce_the_generating_model(kin_fit, simulated):
    sims = pm_plots.simulate_proper_motions(kin_fit, num_samples=40, seed=2)
    n = len(kin_fit.table)
    assert sims.shape == (40, n, 2)
    again = pm_plots.simulate_proper_motions(kin_fit, num_samples=40, seed=2)
    np.testing.assert_array_equal(sims, again)
    obs = np.column_stack([kin_fit.stars.pmra, kin_fit.stars.pmdec])
    member = simulated[1]["member"]
    # members: mean and spread of the cluster; field: the mixture's quantiles (at the observed parallax)
    # (3 % of the members are simulated as field stars: their tails differ, so only their quartiles are compared)
    for sel, q, tol in ((member, [25, 50, 75], 0.05), (~member, [10, 25, 50, 75, 90], 0.1)):
        for k in (0, 1):
            q_obs = np.percentile(obs[sel, k], q)
            q_sim = np.percentile(sims[:, sel, k], q)
            spread = q_obs[-1] - q_obs[0]
            np.testing.assert_allclose(q_sim, q_obs, atol=tol * spread + 0.02)
    # a star without a proper motion stays NaN
    stars = kin_fit.stars._replace(pmra=np.where(np.arange(n) == 0, np.nan, kin_fit.stars.pmra))
    gap = pm_plots.simulate_proper_motions(
        FakeFit(kin_fit.table, stars, kin_fit.posterior, kin_fit.diagnostics), num_samples=3
    )
    assert np.all(np.isnan(gap[:, 0])) and np.all(np.isfinite(gap[:, 1:]))


def test_predictive_figure_has_two_labelled_log_panels(kin_fit):
    fig = gd.plotting.proper_motion_predictive(kin_fit, num_samples=30)
    assert len(fig.axes) == 2
    for ax, name in zip(fig.axes, ("pmra", "pmdec"), strict=True):
        assert name in ax.get_xlabel() and "mas/yr" in ax.get_xlabel()
        assert ax.get_yscale() == "log" and "mas/yr bin" in ax.get_ylabel()
    assert "observed (1800 stars)" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_report_adds_the_proper_motion_figures_only_for_kinematic_fits(kin_fit, simulated, tmp_path):
    path = gd.report.write_report(kin_fit, tmp_path / "kin")
    text = path.read_text()
    pngs = ("proper_motions.png", "proper_motion_predictive.png", "corner_kinematics.png", "corner.png")
    for png in (*pngs, "parallax_predictive.png"):
        assert (tmp_path / "kin" / png).stat().st_size > 10_000, png
        assert f"]({png})" in text
    assert "with proper motions" in text and "| pmra |" in text
    flat = _fit(simulated[0], kinematic=False)
    text = gd.report.write_report(flat, tmp_path / "flat").read_text()
    assert not any((tmp_path / "flat" / png).exists() or png in text for png in pngs[:3])
    assert "parallaxes only" in text and (tmp_path / "flat" / "corner.png").exists()


def _polar_members(simulated) -> FakeFit:
    """Every star a member on a ring around the north pole, with the fitted motion given in the centre's frame."""
    from gaia_distances.core.kinematics import frame_rotation, to_star_frame

    t = simulated[0][:60].copy()
    n = len(t)
    ra, dec = np.linspace(0.0, 360.0, n, endpoint=False), np.full(n, 89.0)
    own = to_star_frame(np.broadcast_to([TRUTH["pmra"], TRUTH["pmdec"]], (n, 2)), frame_rotation(ra, dec))
    t["pmra"], t["pmdec"] = own[:, 0] * u.mas / u.yr, own[:, 1] * u.mas / u.yr
    t["pmra_error"], t["pmdec_error"] = np.full(n, 1e-3) * u.mas / u.yr, np.full(n, 1e-3) * u.mas / u.yr
    t["membership_prob"] = np.ones(n)
    fit = _fit(t, truth={**TRUTH, "sigma_v": 1e-3})
    fit.stars = fit.stars._replace(ra=ra, dec=dec)
    return fit


def test_the_approximate_predictive_turns_the_centre_frame_model_to_each_star_around_a_pole(simulated):
    fit = _polar_members(simulated)
    sims = pm_plots.simulate_proper_motions(fit, num_samples=20, seed=1)
    own = np.column_stack([np.asarray(fit.table["pmra"].value), np.asarray(fit.table["pmdec"].value)])
    assert np.ptp(own, axis=0).min() > 10.0  # the stars' own (pmra, pmdec) turn all the way round
    np.testing.assert_allclose(np.median(sims, axis=0), own, atol=0.2)


def test_the_vector_point_diagram_shows_the_stars_in_the_model_frame_around_a_pole(simulated):
    fit = _polar_members(simulated)
    pm = pm_plots.in_centre_frame(fit, pm_plots.observed_proper_motions(fit).pm)
    np.testing.assert_allclose(pm, np.broadcast_to([TRUTH["pmra"], TRUTH["pmdec"]], pm.shape), atol=1e-9)
    fig = gd.plotting.proper_motion_diagram(fit)
    x, y = np.asarray(fig.axes[0].collections[0].get_offsets()).T
    np.testing.assert_allclose(np.median(x), TRUTH["pmra"], atol=1e-6)
