"""The cluster model's parameters, declared once: the layout of z, the prior density and the numpyro sites."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from numpyro import handlers
from numpyro.infer.util import log_density
from test_utils import x64

from gaia_distances.core.cluster_priors import ClusterPriors
from gaia_distances.core.parameters import LogitBeta, Normal, Parameter, StandardLogistic, prior_log_density
from gaia_distances.core.population import ClusterModel, log_prior, sample_population, to_population

MODELS = [
    ClusterModel(ClusterPriors()),
    ClusterModel(ClusterPriors.physical(), "flexible"),
    ClusterModel(ClusterPriors(), "flexible", True),
    ClusterModel(ClusterPriors.physical(), "edsd", True, n_field_pm=3, perspective=True),
]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: f"{m.field}-{m.kinematics}-{m.perspective}")
def test_the_layout_is_the_declarations(model):
    names = [p.name for p in model.parameters]
    assert model.names == tuple(names) and len(set(names)) == len(names) == model.n_params
    assert all(model.position(n) == i for i, n in enumerate(names))
    assert model.cluster_names == tuple(p.name for p in model.parameters if p.cluster)
    assert all(p.meaning for p in model.parameters)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: f"{m.field}-{m.kinematics}-{m.perspective}")
def test_the_prior_density_is_the_numpyro_sites(model):
    """log_prior(z) is the log density numpyro gives the model's sites at z: one declaration, two uses."""
    z = 0.7 * np.random.default_rng(1).standard_normal(model.n_params)
    params = dict(zip(model.names, z, strict=True))
    with handlers.seed(rng_seed=0):
        numpyro_lp, trace = log_density(lambda: sample_population(model), (), {}, params)
    sites = [name for name, site in trace.items() if site["type"] == "sample"]
    assert sites == list(model.names)
    np.testing.assert_allclose(float(log_prior(jnp.asarray(z), model)), float(numpyro_lp), rtol=1e-5)


def test_each_kind_of_prior_is_its_own_density():
    """The vectorised Normal part and each other prior, entry by entry, against scipy."""
    from scipy import stats

    params = (
        Parameter("a", Normal(1.0, 2.0), True, "a"),
        Parameter("b", StandardLogistic(), True, "b"),
        Parameter("c", LogitBeta(2.0, 3.0), True, "c"),
        Parameter("d", Normal(-1.0, 0.5), False, "d"),
    )
    z = np.array([0.3, -1.2, 0.4, -0.8])
    q = 1.0 / (1.0 + np.exp(-z[2]))
    want = (
        stats.norm(1.0, 2.0).logpdf(z[0])
        + stats.logistic.logpdf(z[1])
        + stats.beta(2.0, 3.0).logpdf(q)
        + np.log(q * (1 - q))  # the logit's Jacobian
        + stats.norm(-1.0, 0.5).logpdf(z[3])
    )
    with x64():
        got = float(prior_log_density(jnp.asarray(z), params))
    assert got == pytest.approx(want, rel=1e-10)


def test_the_population_reads_every_entry_by_name():
    """Moving an entry's value moves exactly the population quantity it names."""
    model = ClusterModel(ClusterPriors(), "flexible", True, perspective=True)
    z = np.zeros(model.n_params)
    base = to_population(z, model, xp=np)
    for name, get in (
        ("log_D", lambda p: p.log_D),
        ("pmdec", lambda p: p.kin.pm[1]),
        ("v_r", lambda p: p.kin.v_r),
        ("field_pmra_2", lambda p: p.kin.field_mean[1, 0]),
        ("field_pm_trend_dec", lambda p: p.kin.field_trend[1]),
    ):
        moved = z.copy()
        moved[model.position(name)] = 0.25
        assert float(get(to_population(moved, model, xp=np))) == pytest.approx(float(get(base)) + 0.25), name
