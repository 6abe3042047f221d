"""The cluster fits' options: refused before any work, with one line naming the option.

Also the priors' own checks, the offset prior without a systematics kernel,
and what a single chain's diagnostics say. No test here runs a fit, except the
slow end-to-end single-chain one.
"""

from __future__ import annotations

import math
import pickle
import warnings

import numpy as np
import pytest

import gaia_distances as gd
import gaia_distances.cluster.fit as fit_module
import gaia_distances.estimate as estimate_module
from gaia_distances.cluster.diagnostics import diagnose
from gaia_distances.cluster.stars import select_stars
from gaia_distances.cluster.systematics import add_systematics, fit_systematics
from gaia_distances.core.cluster_sampling import convergence_check
from gaia_distances.core.diagnostics import SINGLE_CHAIN
from gaia_distances.core.population import ClusterModel
from gaia_distances.core.sampling import checked_seed
from gaia_distances.systematics import resolve_offset_prior

FITS = {"fit_cluster": gd.fit_cluster, "fit_clusters": lambda t, **kw: gd.fit_clusters([t], **kw)}


@pytest.fixture(scope="module")
def field():
    return gd.simulate_field(80, n_cluster=30, seed=1)


@pytest.fixture
def no_work(monkeypatch):
    """Selecting stars (the first work of either fit) fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the fit started work before checking its options")

    monkeypatch.setattr(fit_module, "select_stars", refuse)
    monkeypatch.setattr("gaia_distances.cluster.batch.parallax_rows", refuse)


def _message(fn, *args, **kwargs) -> str:
    with pytest.raises((ValueError, TypeError, KeyError)) as err:
        fn(*args, **kwargs)
    text = str(err.value)
    assert "\n" not in text
    return text


# --------------------------------------------------------------------------- ClusterPriors


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: gd.ClusterPriors(log_D_sd=-1), "log_D_sd"),
        (lambda: gd.ClusterPriors(Q_a=-2), "Q_a"),
        (lambda: gd.ClusterPriors(Q_b=0.0), "Q_b"),
        (lambda: gd.ClusterPriors(log_D_mu=math.nan), "log_D_mu"),
        (lambda: gd.ClusterPriors(log_L_sd=math.inf), "log_L_sd"),
        (lambda: gd.ClusterPriors(pm_sd="wide"), "pm_sd"),
        (lambda: gd.ClusterPriors(v_r_sd=True), "v_r_sd"),
        (lambda: gd.ClusterPriors(depth_prior="bogus"), "depth_prior"),
        (lambda: gd.ClusterPriors.physical(size_min_pc=50, size_max_pc=5), "size_min_pc < size_max_pc"),
        (lambda: gd.ClusterPriors.physical(size_min_pc=0), "size_min_pc"),
        (lambda: gd.ClusterPriors()._replace(field_smoothness=-1.0), "field_smoothness"),
    ],
)
def test_cluster_priors_refuse_a_bad_field_by_name(make, named):
    assert f"{named}" in _message(make)


def test_cluster_priors_that_are_valid_behave_as_before():
    p = gd.ClusterPriors.physical(size_min_pc=1, size_max_pc=20)
    assert p.depth_prior == "size" and p.log_size_range == (0.0, math.log(20.0))
    assert isinstance(p.size_min_pc, float) and p == gd.ClusterPriors(**p._asdict())
    assert pickle.loads(pickle.dumps(p)) == p and hash(p) == hash(gd.ClusterPriors(**p._asdict()))
    assert gd.ClusterPriors()._replace(Q_a=2).Q_a == 2.0
    with pytest.raises(TypeError, match="ClusterPriors"):
        gd.ClusterPriors(not_a_field=1.0)


# --------------------------------------------------------------------------- the fits' shared options


@pytest.mark.parametrize("fit", FITS)
@pytest.mark.parametrize("option", ["n_membership_draws", "n_quantile_draws"])
@pytest.mark.parametrize("value", [0, -3, 2.5, True, "400"])
def test_per_star_draw_counts_are_refused_before_any_work(field, no_work, fit, option, value):
    assert f"{option} must be an integer >= 1" in _message(FITS[fit], field, **{option: value})


@pytest.mark.parametrize("fit", FITS)
@pytest.mark.parametrize(
    ("option", "value", "least"),
    [
        ("num_samples", 2.5, 1),
        ("num_samples", 0, 1),
        ("num_chains", 0, 1),
        ("num_chains", 1.0, 1),
        ("num_warmup", -1, 0),
    ],
)
def test_sampler_sizes_that_are_not_whole_numbers_are_refused_before_any_work(
    field, no_work, fit, option, value, least
):
    assert f"{option} must be an integer >= {least}; got {value!r}" in _message(FITS[fit], field, **{option: value})


@pytest.mark.parametrize("fit", FITS)
@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("parallax_limits", (3.0, 0.2), "parallax_limits must be (lower, upper)"),
        ("parallax_limits", (0.2, np.nan), "parallax_limits must be (lower, upper)"),
        ("parallax_limits", 0.2, "parallax_limits must be (lower, upper)"),
        ("target_accept_prob", 1.0, "target_accept_prob must be between 0 and 1"),
        ("target_accept_prob", "high", "target_accept_prob must be between 0 and 1"),
    ],
)
def test_cuts_and_sampler_targets_out_of_range_are_refused_before_any_work(field, no_work, fit, option, value, words):
    assert words in _message(FITS[fit], field, **{option: value})


def test_both_fits_check_their_options_into_one_object(monkeypatch, field):
    """fit_cluster and fit_clusters build the same FitOptions from the same keywords, before any work."""
    import gaia_distances.cluster.batch as batch_module
    from gaia_distances.cluster.options import FitOptions, fit_options_from

    seen = []

    class Stop(Exception):
        pass

    def spy(arguments):
        seen.append(fit_options_from(arguments))
        return seen[-1]

    def stop(*args, **kwargs):
        raise Stop

    for module in (fit_module, batch_module):
        monkeypatch.setattr(module, "fit_options_from", spy)
    monkeypatch.setattr(fit_module, "select_stars", stop)
    monkeypatch.setattr(batch_module, "parallax_rows", stop)
    kw = {"kinematics": False, "field": "edsd", "zero_point": "parallax_zeropoint_true", "num_warmup": 50}
    kw |= {"num_samples": 50, "extend": False, "seed": 4, "systematics": None, "parallax_limits": (-5, 50)}
    with pytest.raises(Stop):  # the options are checked before the first work (selecting the stars)
        gd.fit_cluster(field, **kw)
    with pytest.raises(Stop):
        gd.fit_clusters([field], **kw)
    assert len(seen) == 2 and all(isinstance(o, FitOptions) for o in seen)
    assert seen[0] == seen[1] and seen[0].parallax_limits == (-5.0, 50.0) and seen[0].seed == 4


def test_nuts_settings_take_no_fraction_of_a_draw():
    from gaia_distances.core.sampling import nuts_settings

    with pytest.raises(ValueError, match="num_samples must be an integer >= 1; got 2.5"):
        nuts_settings("marginal", num_samples=2.5)
    assert nuts_settings("marginal", num_warmup=0, num_samples=np.int64(7), num_chains=1)[:3] == (0, 7, 1)


@pytest.mark.parametrize("fit", FITS)
@pytest.mark.parametrize("seed", [-1, 1.5, "7", True, np.float64(3.0), 2**63])
def test_a_bad_seed_is_refused_before_any_work(field, no_work, fit, seed):
    assert "seed must be a non-negative integer" in _message(FITS[fit], field, seed=seed)


def test_estimate_distances_refuses_a_bad_seed_before_any_work(field, monkeypatch):
    monkeypatch.setattr(estimate_module, "as_table", lambda *a, **k: pytest.fail("read the table first"))
    for seed in (-1, 1.5, "7", False):
        assert "seed must be" in _message(gd.estimate_distances, field, method="nuts", seed=seed)


def test_numpy_integer_seeds_are_accepted():
    assert checked_seed(np.int64(7)) == 7 and type(checked_seed(np.uint32(3))) is int
    assert checked_seed(2**63 - 1) == 2**63 - 1


def test_a_prior_that_is_not_cluster_priors_is_refused(field, no_work):
    assert "prior must be a ClusterPriors" in _message(gd.fit_cluster, field, prior=gd.EDSD())
    assert "prior must be a ClusterPriors" in _message(gd.fit_clusters, [field], prior={"log_D_sd": 1.0})


@pytest.mark.parametrize("spec", [(1, 2, 3), (0.01,), 5, ("a", 0.003), "bogus"])
def test_a_malformed_offset_prior_names_the_option(field, no_work, spec):
    expected = "parallax_offset_prior must be 'vasiliev2021', a (mean, sigma) pair in mas or None"
    assert expected in _message(resolve_offset_prior, spec)
    for fit in FITS.values():
        assert expected in _message(fit, field, parallax_offset_prior=spec)


def test_group_by_that_is_not_a_column_names_the_option(field, no_work):
    for group_by in ("nope", 3):
        text = _message(gd.fit_clusters, field, group_by=group_by)
        assert "group_by must name a column" in text and repr(group_by) in text
    with pytest.raises(gd.MissingColumnsError):
        gd.fit_clusters(field, group_by="nope")


# --------------------------------------------------------------------------- the offset prior alone


def test_the_offset_prior_applies_without_a_systematics_kernel():
    """``systematics=None`` with ``parallax_offset_prior`` draws the offset from that prior alone."""
    t = gd.simulate_field(200, n_cluster=100, seed=4)
    stars = select_stars(t, zero_point="parallax_zeropoint_true").stars
    rng = np.random.default_rng(0)
    posterior = {"D": 850.0 + rng.normal(0, 2.0, (2, 500)), "sigma": np.full((2, 500), 3.0)}
    member = np.full(stars.n_stars, 0.5)
    assert fit_systematics(None, t, stars, member, posterior) is None  # neither: the reference model
    sys = fit_systematics(None, t, stars, member, posterior, offset_prior=(0.02, 0.004))
    assert sys is not None and sys.kernel is None and sys.parallax_variance == 0.0 and sys.pm_variance is None
    assert (sys.offset_mean, sys.offset_sigma) == (0.02, 0.004)  # no magnitude limit: every member
    assert sys.record()["kernel"] is None and sys.positions == "no kernel"
    out = add_systematics(posterior, sys, seed=1)
    assert np.std(out["parallax_offset"]) == pytest.approx(0.004, rel=0.1)
    # a positive offset (parallaxes too large) puts the cluster further away: 0.02 mas at 850 pc is ~15 pc
    assert out["D"].mean() - out["D_stat"].mean() == pytest.approx(850.0**2 / 1000 * 0.02, rel=0.15)


# --------------------------------------------------------------------------- a single chain


def _single_chain_draws(n: int, rng: np.random.Generator, rho: float = 0.0) -> dict[str, np.ndarray]:
    """Well-identified population draws of one chain, AR(1) with correlation ``rho``."""
    x = rng.standard_normal((5, n))
    for i in range(1, n):
        x[:, i] = rho * x[:, i - 1] + math.sqrt(1 - rho**2) * x[:, i]
    d = 850.0 + 2.0 * x[0]
    sig_log = 0.004 + 0.0002 * x[1]
    return {
        "D": d[None],
        "sigma_log": sig_log[None],
        "sigma": (sig_log * d)[None],
        "Q": (0.4 + 0.01 * x[2])[None],
        "L": (1200.0 + 20.0 * x[3])[None],
    }


def _diagnose_one_chain(post: dict[str, np.ndarray]) -> dict:
    from gaia_distances.core.diagnostics import ess_rhat

    numbers = {k: ess_rhat(v) for k, v in post.items()}
    n = post["D"].shape[1]
    stats = {"diverging": np.zeros((1, n), bool), "n_steps": np.full((1, n), 7)}
    return diagnose(
        post,
        {k: v[2] for k, v in numbers.items()},
        {k: v[0] for k, v in numbers.items()},
        stats,
        n_stars=1000,
        wall_time_s=1.0,
        ess_tail={k: v[1] for k, v in numbers.items()},
    )


def test_a_single_chain_is_judged_by_its_ess_and_says_r_hat_needs_two_chains():
    rng = np.random.default_rng(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor does arviz complain about the one chain
        good = _diagnose_one_chain(_single_chain_draws(2000, rng))
    assert math.isnan(good["r_hat"]["D"]) and good["min_ess_bulk"] > 400
    assert good["warnings"] == () and good["status"].startswith("ok (") and "two or more chains" in good["status"]
    assert good["num_chains"] == 1 and good["notes"] == (SINGLE_CHAIN,)
    poor = _diagnose_one_chain(_single_chain_draws(400, rng, rho=0.9))
    assert any("bulk ESS < 400" in w for w in poor["warnings"]) and poor["warnings"][-1] == SINGLE_CHAIN
    assert "undefined" not in poor["status"] and "two or more chains" in poor["status"]


def test_the_staged_check_of_a_single_chain_asks_only_for_ess():
    """The staged sampler extends a chain while its verdict has problems: one chain must not fail on R-hat."""
    rng = np.random.default_rng(3)
    n = 1500
    z = np.stack(
        [
            np.log(1200.0) + 0.02 * rng.standard_normal(n),  # log_L
            np.log(850.0) + 0.002 * rng.standard_normal(n),  # log_D
            np.log(0.004) + 0.05 * rng.standard_normal(n),  # log_sigma
            -0.4 + 0.05 * rng.standard_normal(n),  # logit_Q
        ],
        axis=-1,
    )[None]
    check = convergence_check(ClusterModel(gd.ClusterPriors()), [1000])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        verdict = check(0, z)
    assert verdict.problems == () and math.isnan(verdict.max_r_hat) and verdict.min_ess > 400
    assert check(0, z[:, :100]).problems  # too few draws still fail, on their ESS
    assert check(0, np.concatenate([z, z[:, ::-1]])).problems == ()  # two chains: R-hat is checked


@pytest.mark.slow
def test_a_single_chain_fit_is_not_reported_as_failed():
    """End to end (about 15 s): one chain, a tiny field, the reference model."""
    t = gd.simulate_field(300, n_cluster=150, seed=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = gd.fit_cluster(
            t,
            kinematics=False,
            field="edsd",
            zero_point="parallax_zeropoint_true",
            systematics=None,
            num_chains=1,
            num_warmup=100,
            num_samples=200,
            seed=1,
            progress=False,
        )
    d = fit.diagnostics
    assert d["num_chains"] == 1 and d["status"].startswith("ok (") and "two or more chains" in d["status"]
    assert not [w for w in caught if issubclass(w.category, gd.GaiaDistancesWarning)]
    assert d["min_ess_bulk"] >= 400 and math.isnan(fit.summary()["r_hat"][0])


def test_the_fingerprint_tells_user_kernels_and_sampler_settings_apart():
    from gaia_distances.cluster.fingerprint import fit_options
    from gaia_distances.cluster.systematics import FitSystematics
    from gaia_distances.core.systematics import get_kernel

    def kernel_a(theta):
        return 1e-4 * np.exp(-theta)

    def kernel_b(theta):
        return 2e-4 * np.exp(-theta)

    def provenance(kernel, **settings):
        sys = FitSystematics(get_kernel(kernel), 1e-4, None, 0.0, 0.0, "weighted pairs")
        return {"target_accept_prob": 0.65, "extend": True, **settings, "systematics": sys.record()}

    a, b = fit_options(provenance(kernel_a)), fit_options(provenance(kernel_b))
    assert a["systematics"] != b["systematics"] and "kernel_a" in a["systematics"]
    assert fit_options(provenance("vasiliev2021"))["systematics"] == "vasiliev2021"
    assert fit_options(provenance(kernel_a, target_accept_prob=0.9)) != a
    assert fit_options(provenance(kernel_a, extend=False)) != a


@pytest.mark.parametrize("fit", FITS)
def test_a_table_with_the_fit_columns_is_refused_before_any_work(field, fit, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the fit selected stars before checking the table's columns")

    monkeypatch.setattr(fit_module, "select_stars", refuse)
    monkeypatch.setattr("gaia_distances.cluster.batch.parallax_rows", refuse)
    done = field.copy()
    done["membership_prob"] = np.zeros(len(done))
    with pytest.raises(gd.ExistingColumnsError, match="membership_prob"):
        if fit == "fit_clusters":  # the second cluster's table: before the first is selected
            gd.fit_clusters([field, done])
        else:
            gd.fit_cluster(done)


@pytest.mark.parametrize("seed", [-1, 1.5, True])
def test_simulations_and_predictives_refuse_a_bad_seed(seed):
    from gaia_distances import pm_plots

    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        gd.simulate_field(10, seed=seed)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        pm_plots.simulate_proper_motions(object(), seed=seed)


@pytest.mark.parametrize("fit", FITS)
@pytest.mark.parametrize("kinematics", ["yes", 1, None])
def test_a_bad_kinematics_option_is_refused_before_any_work(field, no_work, fit, kinematics):
    assert "kinematics must be True, False or 'auto'" in _message(FITS[fit], field, kinematics=kinematics)


def test_the_convergence_numbers_are_arviz_own():
    """``ess_rhat`` uses ArviZ's array estimators (arviz_stats, without importing ArviZ itself): the same
    bulk ESS, tail ESS and rank-normalised split R-hat as ``arviz.ess`` and ``arviz.rhat``."""
    import arviz as az

    from gaia_distances.core.diagnostics import ess_rhat

    rng = np.random.default_rng(5)
    for rho, n in ((0.0, 1000), (0.9, 400), (0.99, 300)):
        x = np.zeros((3, n))
        for i in range(1, n):
            x[:, i] = rho * x[:, i - 1] + rng.standard_normal(3)
        x[2] += 0.3  # a chain apart: R-hat above 1
        bulk, tail, rhat = ess_rhat(x)
        assert bulk == pytest.approx(float(az.ess(x, method="bulk")), rel=1e-9)
        assert tail == pytest.approx(float(az.ess(x, method="tail")), rel=1e-9)
        assert rhat == pytest.approx(float(az.rhat(x)), rel=1e-9)
    assert math.isnan(ess_rhat(np.ones((2, 100)))[2])  # draws that never change: R-hat undefined
    assert math.isnan(ess_rhat(rng.standard_normal((1, 100)))[2])  # R-hat of one chain
