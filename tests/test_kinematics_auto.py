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
