"""Issue 13 regressions in the cluster fit's diagnostics and reproducibility (items 7, 8 and 14)."""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
from astropy import units as u

import gaia_distances as gd
from gaia_distances.cluster.diagnostics import cluster_problems
from gaia_distances.core.diagnostics import convergence_problems, finite_or_nan
from gaia_distances.core.sampling import NUTS_DEFAULTS, nuts_settings


def test_issue13_item7_nan_diagnostics_fail_the_checks():
    problems = convergence_problems({"D": math.nan, "Q": 1.001}, {"D": 800.0, "Q": math.nan}, 0)
    assert problems and "undefined (NaN) for D, Q" in problems[0]


def test_issue13_item7_degenerate_posterior_is_a_problem():
    rng = np.random.default_rng(0)
    post = {
        "D": 47.0 + rng.normal(0, 0.1, (2, 50)),
        "sigma_log": np.full((2, 50), 0.01),
        "sigma": np.full((2, 50), 0.5) + rng.normal(0, 0.01, (2, 50)),
        "Q": rng.uniform(0.5, 0.6, (2, 50)),
        "L": np.zeros((2, 50)),  # collapsed to 0, as in the 47 pc case
    }
    problems = cluster_problems(post, {"D": 1.0}, n_stars=1000)
    assert any("degenerate posterior" in p and "L = 0" in p for p in problems)


def test_a_cluster_with_a_field_velocity_dispersion_is_no_cluster_signal():
    """A thin shell with a 20 km/s dispersion is the field's proper motions, not a cluster (1 km/s is)."""
    from gaia_distances.cluster.diagnostics import SIGMA_V_FIELD

    rng = np.random.default_rng(1)
    post = {
        "D": 4900.0 + rng.normal(0, 200, (2, 50)),
        "sigma_log": np.full((2, 50), 0.008) + rng.normal(0, 1e-3, (2, 50)),
        "Q": rng.uniform(0.14, 0.15, (2, 50)),
        "sigma_v": 2 * SIGMA_V_FIELD + rng.normal(0, 0.5, (2, 50)),
    }
    problems = cluster_problems(post, {"D": 1.0}, n_stars=40000)
    assert any("no cluster signal" in p and "velocity dispersion is 20 km/s" in p for p in problems)
    post["sigma_v"] = 1.0 + rng.normal(0, 0.1, (2, 50))
    assert cluster_problems(post, {"D": 1.0}, n_stars=40000) == []


def test_issue13_item7_too_few_draws_are_reported(cluster_input):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = gd.fit_cluster(
            cluster_input, kinematics=False, field="edsd", num_warmup=20, num_samples=3, seed=1, progress=False
        )
    assert "undefined (NaN)" in fit.diagnostics["status"]
    assert any("undefined (NaN)" in str(w.message) for w in caught)


def test_issue13_item14_ess_is_never_negative():
    assert math.isnan(finite_or_nan(-3.0)) and math.isnan(finite_or_nan(math.inf)) and finite_or_nan(12.0) == 12.0


def test_issue13_item8_chains_do_not_depend_on_the_machine(monkeypatch):
    import gaia_distances.core.parallel as parallel

    counts = []
    for cores in (1, 2, 4, 64):
        monkeypatch.setattr(os, "cpu_count", lambda cores=cores: cores)
        monkeypatch.setattr(parallel, "usable_cores", lambda cores=cores: cores)
        counts.append(tuple(nuts_settings(m).num_chains for m in NUTS_DEFAULTS))
    assert len(set(counts)) == 1


def test_issue13_item13_distance_hint_is_validated_before_any_work():
    """``distance_hint=0`` gave "math domain error" from deep inside the start search."""
    t = gd.simulate_field(60, n_cluster=20, seed=1)
    for hint, words in [
        (0.0, "positive, finite"),
        (-5.0, "positive, finite"),
        (math.nan, "positive, finite"),
        ("far", "a distance in pc"),
        (2 * u.deg, "a distance in pc"),
    ]:
        try:
            gd.fit_cluster(t, distance_hint=hint, progress=False)
        except ValueError as e:
            assert "distance_hint" in str(e) and words in str(e)
        else:  # pragma: no cover - the test fails here
            raise AssertionError(f"distance_hint={hint!r} was accepted")


def test_issue13_item13_identical_parallaxes_have_no_overdensity():
    """200 identical parallaxes made the start search's histogram step zero (OverflowError)."""
    from gaia_distances.core.initialisation import parallax_overdensities

    assert parallax_overdensities(np.full(200, math.log(1000.0))) == []
    assert parallax_overdensities(np.r_[np.full(199, 0.5), np.nan]) == []
