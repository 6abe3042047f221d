"""Gaia DR3 radial velocities as a model term: its likelihood, its columns, its option and a fit."""

from __future__ import annotations

import inspect
import math
import warnings

import numpy as np
import pytest
from scipy import optimize, stats
from test_utils import x64

import gaia_distances as gd
from gaia_distances.cli import _build_parser
from gaia_distances.core.kinematics import sky_basis
from gaia_distances.core.radial_velocity import (
    BINARY_SD_KMS,
    FIELD_DOF,
    RadialVelocityData,
    RadialVelocityValues,
)
from gaia_distances.core.terms import TERMS, term_log_likelihoods
from gaia_distances.simulate import M67_VELOCITY_KMS

TERM = TERMS["radial_velocities"]


def _values(v_r=34.0, sigma_v=0.8, f_b=0.3, mean=20.0, sd=30.0) -> RadialVelocityValues:
    return RadialVelocityValues(np.float64(v_r), np.log(sigma_v), np.log(f_b / (1 - f_b)), np.float64(mean), np.log(sd))


def test_log_terms_are_the_binary_mixture_and_the_student_t_with_each_star_error():
    v = np.array([34.2, 10.0, -80.0, 36.0])
    e = np.array([0.5, 2.0, 5.0, 1.0])
    data = RadialVelocityData(v, e, np.array([1.0, 1.0, 1.0, 0.0]))
    with x64():
        cluster, field = (np.asarray(x) for x in TERM.log_terms(_values(), data))
    var = 0.8**2 + e**2
    expected = np.log(
        0.7 * stats.norm.pdf(v, 34.0, np.sqrt(var)) + 0.3 * stats.norm.pdf(v, 34.0, np.sqrt(var + BINARY_SD_KMS**2))
    )
    t = stats.t.logpdf(v, FIELD_DOF, loc=20.0, scale=np.sqrt(30.0**2 + e**2))
    np.testing.assert_allclose(cluster[:3], expected[:3], rtol=1e-10)
    np.testing.assert_allclose(field[:3], t[:3], rtol=1e-10)
    assert cluster[3] == 0.0 and field[3] == 0.0  # no velocity: the same for both components


def test_binaries_inflate_a_gaussian_dispersion_but_not_the_term():
    """30 % binaries move the members' velocities by K sin(phase): a Gaussian alone (the old model, no
    binary component) takes the orbits for a dispersion of several km/s; the term recovers sigma_v."""
    t = gd.simulate_field(0, n_cluster=400, binary_fraction=0.3, seed=4, magnitude_limit=None)
    rv, err = (np.asarray(t[c].value) for c in ("radial_velocity", "radial_velocity_error"))
    ok = np.isfinite(rv)
    data = RadialVelocityData(rv[ok], err[ok], np.ones(ok.sum()))
    truth_rv = float(np.sum(sky_basis(132.846, 11.814)[2] * np.asarray(M67_VELOCITY_KMS)))

    def fit(binary: bool) -> tuple[float, float]:
        def nll(x):
            f_b = 0.3 if binary else 1e-12
            with x64():
                c, _ = TERM.log_terms(_values(x[0], math.exp(x[1]), f_b), data)
                return -float(np.asarray(c).sum())

        res = optimize.minimize(nll, [np.median(rv[ok]), 0.0], method="Nelder-Mead")
        return res.x[0], math.exp(res.x[1])

    v_mix, s_mix = fit(True)
    v_gauss, s_gauss = fit(False)
    assert ok.sum() > 100
    assert abs(v_mix - truth_rv) < 0.3 and 0.45 < s_mix < 1.0  # truth: 0.7 km/s
    assert s_gauss > 3.0  # the old model fails on binaries


def test_stars_without_a_velocity_add_nothing():
    data = RadialVelocityData(np.zeros(3), np.ones(3), np.zeros(3))
    c, f = term_log_likelihoods({"radial_velocities": _values()}, {"radial_velocities": data})
    assert np.all(np.asarray(c) == 0) and np.all(np.asarray(f) == 0)


def test_the_field_start_is_the_student_t_maximum_likelihood():
    """The term starts the field's mean and scale at their maximum likelihood (the search's optimiser then
    has nothing left in those weakly constrained directions): with negligible errors, scipy's own fit of a
    Student t with the term's degrees of freedom."""
    from gaia_distances.core.population import ClusterModel

    rng = np.random.default_rng(4)
    v = 12.0 + 28.0 * rng.standard_t(FIELD_DOF, 300)
    model = ClusterModel(field="flexible", kinematics=True, terms=("radial_velocities",))
    z = np.zeros(model.n_params)
    TERM.start(z, RadialVelocityData(v, np.full(v.size, 1e-6), np.ones(v.size)), model, None)
    _, loc, scale = stats.t.fit(v, fix_df=FIELD_DOF)
    assert z[model.position("field_rv_mean")] == pytest.approx(loc, abs=0.05)
    assert np.exp(z[model.position("field_log_rv_scale")]) == pytest.approx(scale, rel=2e-3)


def test_the_option_is_a_keyword_of_both_fits_of_the_cli_and_in_their_docs():
    for fn in (gd.fit_cluster, gd.fit_clusters):
        param = inspect.signature(fn).parameters["radial_velocities"]
        assert param.default == "auto" and param.kind is inspect.Parameter.KEYWORD_ONLY
        assert "radial_velocities\n" in fn.__doc__ and "dr2_radial_velocity" in fn.__doc__
    args = _build_parser().parse_args(["cluster", "in.fits", "-o", "out.fits", "--radial-velocities", "off"])
    assert args.radial_velocities == "off"
    with pytest.raises(TypeError, match="radial_velocity'.*the model's terms: radial_velocities"):
        gd.fit_cluster(gd.simulate_field(50, n_cluster=10), radial_velocity=True)
    with pytest.raises(ValueError, match="radial_velocities must be True, False or 'auto'"):
        gd.fit_cluster(gd.simulate_field(50, n_cluster=10), radial_velocities="yes")


def _selection(t, **options):
    from gaia_distances.cluster.options import fit_options_from
    from gaia_distances.cluster.stars import select_stars

    opts = fit_options_from(
        {
            "prior": None,
            "field": "flexible",
            "systematics": None,
            "parallax_offset_prior": None,
            "seed": 0,
            "term_options": options,
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return select_stars(t, zero_point="parallax_zeropoint_true", kinematics="auto", terms=opts.terms)


def test_columns_their_aliases_and_auto():
    t = gd.simulate_field(300, n_cluster=100, seed=3, magnitude_limit=18)
    n_rv = int(np.isfinite(t["radial_velocity"].value).sum())
    sel = _selection(t)
    assert sel.stars.term_names == ("radial_velocities",)
    assert np.array_equal(sel.flag, np.zeros(len(t)))  # stars without a velocity are neither flagged nor dropped
    assert int(TERM.usable(sel.stars.terms["radial_velocities"]).sum()) == n_rv < len(t)
    t.rename_columns(["radial_velocity", "radial_velocity_error"], ["dr2_radial_velocity", "dr2_radial_velocity_error"])
    assert _selection(t).stars.term_names == ("radial_velocities",)  # EDR3's DR2 velocities count
    assert _selection(t, radial_velocities=False).stars.term_names == ()
    del t["dr2_radial_velocity_error"]
    assert _selection(t).stars.term_names == ()  # auto: left out
    with pytest.raises(gd.MissingColumnsError, match="radial_velocity_error or dr2_radial_velocity_error"):
        _selection(t, radial_velocities=True)
    few = gd.simulate_field(300, n_cluster=100, seed=3, magnitude_limit=18)
    few["radial_velocity"][np.flatnonzero(np.isfinite(few["radial_velocity"].value))[5:]] = np.nan
    assert _selection(few).stars.term_names == ()
    with pytest.raises(gd.GaiaDistancesError, match="5 of 400 rows to fit have usable radial_velocities"):
        _selection(few, radial_velocities=True)
    with pytest.raises(gd.GaiaDistancesError, match="needs the proper-motion model"):
        from gaia_distances.cluster.stars import select_stars

        select_stars(few, zero_point="parallax_zeropoint_true", kinematics=False, terms=(("radial_velocities", True),))


class _Chosen(Exception):
    """Raised in place of the batch's fit, once its model is chosen."""


def test_fit_clusters_leaves_the_term_out_of_every_fit_when_one_cluster_cannot_use_it(monkeypatch):
    from gaia_distances.cluster import batch

    chosen = []

    def stop(*args, terms=(), **kwargs):
        chosen.append(terms)
        raise _Chosen

    monkeypatch.setattr(batch, "ClusterModel", stop)
    with_rv = gd.simulate_field(300, n_cluster=100, seed=3, magnitude_limit=18)
    without = with_rv.copy()
    without["radial_velocity"][:] = np.nan
    with pytest.raises(_Chosen):
        gd.fit_clusters({"a": with_rv, "b": with_rv}, zero_point="parallax_zeropoint_true")
    with pytest.warns(gd.GaiaDistancesWarning, match="radial_velocities left out of every cluster's fit"):
        with pytest.raises(_Chosen):
            gd.fit_clusters({"a": with_rv, "b": without}, zero_point="parallax_zeropoint_true")
    assert chosen == [("radial_velocities",), ()]


@pytest.mark.slow
def test_a_batch_without_the_term_reads_back_from_its_files(tmp_path):
    """The clusters that had velocities are saved as fitted, without them: from_table selects them again."""
    with_rv = gd.simulate_field(300, n_cluster=100, seed=3, magnitude_limit=18)
    without = with_rv.copy()
    without["radial_velocity"][:] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fits = gd.fit_clusters(
            {"a": with_rv, "b": without},
            zero_point="parallax_zeropoint_true",
            num_warmup=100,
            num_samples=100,
            extend=False,
            systematics=None,
        )
    fit = fits.fits[0]
    fit.to_netcdf(str(tmp_path / "a.nc"))
    back = gd.ClusterFit.from_table(fit.table, str(tmp_path / "a.nc"))
    assert back.model == fit.model and fit.model.terms == ()
