"""The cluster fits' options: refused before any work, with one line naming the option.

Also the priors' own checks, the offset prior without a systematics kernel,
and what a single chain's diagnostics say. No test here runs a fit, except the
slow end-to-end single-chain one.
"""

from __future__ import annotations

import math
import pickle

import pytest

import gaia_distances as gd


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
