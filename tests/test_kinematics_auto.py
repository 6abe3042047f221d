"""``kinematics="auto"`` decides from the rows whose proper motions can be used, not from the columns alone."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import gaia_distances as gd
from gaia_distances.cluster.stars import MIN_STARS, select_stars, usable_proper_motions


def _spoiled(columns: tuple[str, ...], value: float, n_kept: int = 0):
    """A simulated field whose ``columns`` hold ``value`` on every row but the first ``n_kept``."""
    t = gd.simulate_field(200, n_cluster=100, seed=3)
    for name in columns:
        t[name][n_kept:] = value * t[name].unit
    return t


SPOILED = {
    "errors 0": (("pmra_error", "pmdec_error"), 0.0),
    "errors NaN": (("pmra_error", "pmdec_error"), np.nan),
    "negative error": (("pmdec_error",), -0.1),
    "pm NaN": (("pmra", "pmdec"), np.nan),
    "pmra inf": (("pmra",), np.inf),
}


@pytest.mark.parametrize("case", SPOILED)
def test_auto_fits_parallaxes_alone_when_no_row_has_a_usable_proper_motion(case):
    t = _spoiled(*SPOILED[case])
    assert not usable_proper_motions(t).any()
    with pytest.warns(gd.GaiaDistancesWarning, match="0 of 300 rows to fit have a usable proper motion"):
        sel = select_stars(t, zero_point="parallax_zeropoint_true", kinematics="auto")
    assert not sel.stars.kinematic
    with pytest.raises(gd.GaiaDistancesError, match=r"kinematics=True\) needs at least 20 stars with proper motions"):
        select_stars(t, zero_point="parallax_zeropoint_true", kinematics=True)
    with pytest.raises(gd.GaiaDistancesError, match="usable proper motion"):
        gd.fit_cluster(t, zero_point="parallax_zeropoint_true", kinematics=True)


def test_auto_counts_only_the_rows_that_will_be_fitted():
    """Enough usable proper motions, but only on rows without a parallax: the fit cannot use them."""
    t = _spoiled(("pmra_error", "pmdec_error"), np.nan, n_kept=MIN_STARS)
    t["parallax"][:MIN_STARS] = np.nan * t["parallax"].unit
    with pytest.warns(gd.GaiaDistancesWarning, match="0 of 280 rows to fit"):
        sel = select_stars(t, zero_point="parallax_zeropoint_true", kinematics="auto")
    assert not sel.stars.kinematic


def test_auto_uses_proper_motions_when_enough_rows_have_them():
    t = _spoiled(("pmra_error", "pmdec_error"), np.nan, n_kept=MIN_STARS)
    with warnings.catch_warnings():
        warnings.simplefilter("error", gd.GaiaDistancesWarning)
        sel = select_stars(t, zero_point="parallax_zeropoint_true", kinematics="auto")
    assert sel.stars.kinematic
    # the rest are fitted with their parallaxes alone and flagged, as before
    assert np.all(sel.flag[MIN_STARS:] & gd.ClusterFlag.NO_PROPER_MOTION)
    with pytest.warns(gd.GaiaDistancesWarning, match=f"{MIN_STARS - 1} of 300 rows"):
        t["pmra"][0] = np.nan * t["pmra"].unit
        assert not select_stars(t, zero_point="parallax_zeropoint_true", kinematics="auto").stars.kinematic


class _Decided(Exception):
    """Raised in place of the fit, once fit_clusters has chosen its model."""


@pytest.fixture
def batch_model(monkeypatch):
    """fit_clusters stops at its model: the list records whether it uses proper motions, and no fit runs."""
    from gaia_distances.cluster import batch

    chosen: list[bool] = []

    def stop(prior, field, kinematic, **kwargs):
        chosen.append(bool(kinematic))
        raise _Decided

    monkeypatch.setattr(batch, "ClusterModel", stop)
    return chosen


def _usable_only_without_parallax():
    """MIN_STARS usable proper motions, all on rows without a parallax; the fitted rows have none."""
    t = _spoiled(("pmra_error", "pmdec_error"), np.nan, n_kept=MIN_STARS)
    t["parallax"][:MIN_STARS] = np.nan * t["parallax"].unit
    return t


def test_fit_clusters_decides_auto_from_the_rows_it_fits_as_fit_cluster_does(batch_model):
    t = _usable_only_without_parallax()
    with pytest.warns(gd.GaiaDistancesWarning, match="0 of 280 rows to fit"):
        assert not select_stars(t, zero_point="parallax_zeropoint_true", kinematics="auto").stars.kinematic
    with pytest.warns(gd.GaiaDistancesWarning, match=r"clusters 'weak' \(0 of 280 rows to fit"):
        with pytest.raises(_Decided):
            gd.fit_clusters({"weak": t}, zero_point="parallax_zeropoint_true", kinematics="auto")
    assert batch_model == [False]


def test_fit_clusters_auto_fits_every_cluster_without_proper_motions_when_one_lacks_them(batch_model):
    good = _spoiled(("pmra_error", "pmdec_error"), np.nan, n_kept=MIN_STARS)
    with warnings.catch_warnings():
        warnings.simplefilter("error", gd.GaiaDistancesWarning)
        with pytest.raises(_Decided):
            gd.fit_clusters({"a": good, "b": good}, zero_point="parallax_zeropoint_true", kinematics="auto")
    with pytest.warns(gd.GaiaDistancesWarning, match=r"clusters 'b' .*every cluster's parallaxes alone") as rec:
        with pytest.raises(_Decided):
            gd.fit_clusters(
                {"a": good, "b": _usable_only_without_parallax()},
                zero_point="parallax_zeropoint_true",
                kinematics="auto",
            )
    assert batch_model == [True, False]
    assert sum("parallaxes alone" in str(w.message) for w in rec) == 1


def test_fit_clusters_reports_a_cluster_that_cannot_meet_kinematics_true_in_errors(monkeypatch):
    """One weak cluster does not stop the batch: it is reported, the other is selected and goes on to its fit."""
    from gaia_distances.cluster import batch

    def stop(*args, **kwargs):
        raise _Decided

    monkeypatch.setattr(batch, "padded_size", stop)  # the first step after every cluster is selected
    good = _spoiled(("pmra_error", "pmdec_error"), np.nan, n_kept=MIN_STARS)
    with pytest.warns(gd.GaiaDistancesWarning, match=r"cluster 'weak' not fitted: .*kinematics=True\) needs"):
        with pytest.raises(_Decided):
            gd.fit_clusters(
                {"good": good, "weak": _spoiled(("pmra_error", "pmdec_error"), np.nan, n_kept=MIN_STARS - 1)},
                zero_point="parallax_zeropoint_true",
                kinematics=True,
            )


def test_proper_motions_no_star_could_have_do_not_count_towards_the_twenty():
    """MIN_STARS + 3 usable proper motions, 5 of them absurd: 18 remain, too few for kinematics=True."""
    t = _spoiled(("pmra_error", "pmdec_error"), np.nan, n_kept=MIN_STARS + 3)
    t["pmra"][:5] = 1e6 * t["pmra"].unit
    with pytest.raises(gd.GaiaDistancesError, match=f"{MIN_STARS - 2} of 300 rows to fit have a usable"):
        select_stars(t, zero_point="parallax_zeropoint_true", kinematics=True)
    with pytest.warns(gd.GaiaDistancesWarning, match=f"{MIN_STARS - 2} of 300 rows to fit"):
        sel = select_stars(t, zero_point="parallax_zeropoint_true", kinematics="auto")
    assert not sel.stars.kinematic and not np.any(sel.flag & gd.ClusterFlag.IMPOSSIBLE_PROPER_MOTION)


def test_a_correlation_outside_minus_one_to_one_does_not_count_towards_the_twenty():
    t = _spoiled(("pmra_error", "pmdec_error"), np.nan, n_kept=MIN_STARS)
    t["pmra_pmdec_corr"][0] = 3.0
    assert usable_proper_motions(t).sum() == MIN_STARS - 1
    with pytest.raises(gd.GaiaDistancesError, match=f"{MIN_STARS - 1} of 300 rows to fit"):
        select_stars(t, zero_point="parallax_zeropoint_true", kinematics=True)


def test_too_few_stars_after_the_impossible_proper_motions_are_refused_as_too_few_proper_motions():
    """Not as too few parallaxes: every row has one."""
    t = _spoiled((), 0.0)[: MIN_STARS + 2]
    t["pmra"][:5] = 1e6 * t["pmra"].unit
    with pytest.raises(gd.GaiaDistancesError, match=f"{MIN_STARS - 3} of {MIN_STARS + 2} rows to fit have a usable"):
        select_stars(t, zero_point="parallax_zeropoint_true", parallax_limits=None, kinematics=True)
