"""Priors: normalisation, parameter resolution and the Bailer-Jones 2021 table."""

from __future__ import annotations

import functools
import http.server
import threading

import numpy as np
import pytest
from astropy import units as u
from astropy.table import QTable
from scipy import integrate
from test_utils import x64

import gaia_distances as gd
from gaia_distances.core import EDSDPrior, GGDPrior, UniformSpaceDensityPrior
from gaia_distances.priors import BJ2021_PRIOR_ENV, resolve_prior


@pytest.mark.parametrize(
    "prior",
    [
        EDSDPrior(np.array(1350.0)),
        EDSDPrior(np.array(30.0)),
        GGDPrior(np.array(1.4), np.array(2.6), np.array(2200.0)),
        GGDPrior(np.array(0.19), np.array(7.1), np.array(2.5e-6)),
        GGDPrior(np.array(0.6), np.array(0.3), np.array(600.0)),
        UniformSpaceDensityPrior(np.array(5000.0)),
    ],
)
def test_priors_integrate_to_one(prior):
    # integrate in u = ln r, where log_prob_logr includes the Jacobian
    with x64():
        _check_normalised(prior)


def _check_normalised(prior):
    lo, hi = (float(x) for x in prior.log_support(-34.5))
    f = lambda u: float(np.exp(prior.log_prob_logr(np.array(u))))  # noqa: E731
    total, _ = integrate.quad(f, lo - 5, hi + 5, limit=500, points=[lo, hi], epsabs=1e-12)
    assert total == pytest.approx(1.0, abs=1e-6)
    # and the support bounds hold essentially all of the mass
    inside, _ = integrate.quad(f, lo, hi, limit=500, epsabs=1e-12)
    assert inside == pytest.approx(1.0, abs=1e-8)


def test_log_prob_in_r_matches_closed_form():
    r = np.array([10.0, 500.0, 4000.0])
    L = 1350.0
    edsd = np.asarray(EDSDPrior(np.array(L)).log_prob(r))
    np.testing.assert_allclose(edsd, np.log(r**2 * np.exp(-r / L) / (2 * L**3)), rtol=1e-6)
    ggd = np.asarray(GGDPrior(alpha=np.array(1.0), beta=np.array(2.0), length_scale=np.array(L)).log_prob(r))
    np.testing.assert_allclose(ggd, edsd, rtol=1e-6)


def test_parameters_from_scalar_array_quantity_and_column():
    t = QTable({"parallax": [1.0, 2.0, 3.0] * u.mas, "myL": [1.0, 2.0, 3.0] * u.kpc})
    for spec, expect in [
        (gd.EDSD(1000.0), [1000.0] * 3),
        (gd.EDSD(np.array([1.0, 2.0, 3.0])), [1.0, 2.0, 3.0]),
        (gd.EDSD(2 * u.kpc), [2000.0] * 3),
        (gd.EDSD("myL"), [1000.0, 2000.0, 3000.0]),
        (gd.EDSD("MYL".lower()), [1000.0, 2000.0, 3000.0]),
    ]:
        core, desc = resolve_prior(spec, t)
        np.testing.assert_allclose(core.length_scale, expect)
        assert desc["name"] == "EDSD"
    with pytest.raises(ValueError, match="shape"):
        resolve_prior(gd.EDSD(np.array([1.0, 2.0])), t)
    with pytest.raises(gd.MissingColumnsError, match="nope"):
        resolve_prior(gd.EDSD("nope"), t)
    with pytest.raises(ValueError, match="unknown prior"):
        resolve_prior("flat", t)


def test_user_prior_needs_positive_support():
    import numpyro.distributions as dist

    t = QTable({"parallax": [1.0] * u.mas})
    with pytest.raises(ValueError, match="positive support"):
        resolve_prior(dist.Normal(1000.0, 10.0), t)
    core, desc = resolve_prior(dist.LogNormal(7.0, 0.5), t)
    assert "LogNormal" in desc["name"]
    with pytest.raises(ValueError, match="batch shape"):
        resolve_prior(dist.LogNormal(np.zeros(3), 1.0), t)


def test_bailer_jones_2021_lookup(data_file):
    path = data_file("bj2021_prior_summary.csv")
    table = gd.load_bailer_jones_2021_table(path)
    assert len(table) == 12288
    prior = gd.GGD.bailer_jones_2021(path)
    row = table[1234]
    sid = np.ma.MaskedArray([int(row["healpix"]) * 2**49 + 12345, 0], mask=[False, True])
    p = prior.parameters(sid)
    assert p["GGDrlen"][0] == pytest.approx(row["GGDrlen"])
    assert p["GGDalpha"][0] == pytest.approx(row["GGDalpha"])
    assert p["GGDbeta"][0] == pytest.approx(row["GGDbeta"])
    assert np.isnan(p["GGDrlen"][1])  # masked source_id -> NaN -> INVALID_PRIOR downstream
    edsd = gd.BailerJones2021Prior(kind="EDSD", path=path).parameters(sid)
    assert edsd["EDSDrlen"][0] == pytest.approx(row["EDSDrlen"])


def test_bailer_jones_2021_from_environment(data_file, monkeypatch):
    path = data_file("bj2021_prior_summary.csv")
    monkeypatch.setenv(BJ2021_PRIOR_ENV, str(path))
    assert len(gd.load_bailer_jones_2021_table()) == 12288


def _serve(directory):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))

    class Quiet(handler.func):  # type: ignore[name-defined,misc]
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_bailer_jones_2021_download_is_cached(data_file, monkeypatch, tmp_path):
    from astropy.config.paths import set_temp_cache

    path = data_file("bj2021_prior_summary.csv")
    monkeypatch.delenv(BJ2021_PRIOR_ENV, raising=False)
    server = _serve(path.parent)
    url = f"http://127.0.0.1:{server.server_address[1]}/{path.name}"
    try:
        with set_temp_cache(tmp_path):
            t1 = gd.load_bailer_jones_2021_table(url=url)
            server.shutdown()
            server.server_close()
            t2 = gd.load_bailer_jones_2021_table(url=url)  # served from the cache
        assert len(t1) == len(t2) == 12288
    finally:
        server.server_close()


def test_bailer_jones_2021_download_failure_is_clear(monkeypatch, tmp_path):
    from astropy.config.paths import set_temp_cache

    monkeypatch.delenv(BJ2021_PRIOR_ENV, raising=False)
    server = _serve(tmp_path)
    url = f"http://127.0.0.1:{server.server_address[1]}/missing.csv"
    try:
        with set_temp_cache(tmp_path / "cache"), pytest.raises(gd.PriorTableError, match="GAIA_DISTANCES_BJ2021_PRIOR"):
            gd.load_bailer_jones_2021_table(url=url)
    finally:
        server.shutdown()
        server.server_close()


def test_bad_prior_table_is_clear(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(gd.PriorTableError, match="lacks"):
        gd.load_bailer_jones_2021_table(bad)
    with pytest.raises(gd.PriorTableError, match="not found"):
        gd.load_bailer_jones_2021_table(tmp_path / "nothing.csv")


# --------------------------------------------------------------------------- issue 13


@pytest.mark.parametrize(
    "prior",
    [
        EDSDPrior(np.array([1350.0])),
        GGDPrior(np.array([1.4]), np.array([2.6]), np.array([2200.0])),
        GGDPrior(np.array([0.177]), np.array([7.84]), np.array([2.6e-7])),
        UniformSpaceDensityPrior(np.array([5000.0])),
    ],
)
def test_issue13_item2_log_prob_offset_is_the_difference_and_concave(prior):
    """What the quadrature's bound relies on: the offset form, concavity in ln r and the domain."""
    with x64():
        lo, hi = (float(np.asarray(x)[0]) for x in prior.log_domain())
        u0 = np.array([float(np.asarray(prior.log_support(-34.5)[1])[0]) - 2.0])
        d = np.linspace(-3.0, 0.0 if np.isfinite(hi) else 3.0, 61)
        exact = np.asarray(prior.log_prob_logr(u0 + d)) - np.asarray(prior.log_prob_logr(u0))
        np.testing.assert_allclose(np.asarray(prior.log_prob_logr_offset(u0, d)), exact, rtol=1e-9, atol=1e-9)
        assert prior.log_concave and np.all(np.diff(exact, 2) <= 1e-9)
    assert lo == -np.inf and (hi == np.inf or isinstance(prior, UniformSpaceDensityPrior))
    assert bool(np.all(prior.valid()))


def test_issue13_item13_core_validity_per_star():
    assert list(EDSDPrior(np.array([1.0, 0.0, -1.0, np.nan, np.inf])).valid()) == [True, False, False, False, False]
    ggd = GGDPrior(np.array([1.0, 0.0, 1.0, 1.0]), np.array([2.0, 2.0, -1.0, 2.0]), np.array([1.0, 1.0, 1.0, -2.0]))
    assert list(ggd.valid()) == [True, False, False, False]
    assert list(UniformSpaceDensityPrior(np.array([10.0, 0.0])).valid()) == [True, False]


def test_issue13_item13_per_star_parameters_out_of_range_warn_and_flag():
    t = QTable({"parallax_corrected": [1.0, 1.0, 1.0] * u.mas, "parallax_error": [0.1] * 3 * u.mas})
    t["alpha"] = [1.0, 0.0, -2.0]
    with pytest.warns(gd.GaiaDistancesWarning, match=r"GGD alpha: 2 of 3 column 'alpha' are not a positive"):
        core, _ = resolve_prior(gd.GGD(alpha="alpha"), t)
    assert list(np.asarray(core.valid())) == [True, False, False]
    with pytest.warns(gd.GaiaDistancesWarning, match="INVALID_PRIOR"):
        out = gd.estimate_distances(t, prior=gd.EDSD(np.array([1000.0, -1.0, 1000.0])))
    assert out["distance_flag"][1] & gd.DistanceFlag.INVALID_PRIOR and np.isnan(out["distance_median"][1])
    assert np.isfinite(out["distance_median"][[0, 2]]).all()


def test_issue13_item9_user_prior_checks():
    import numpyro.distributions as dist

    t = QTable({"parallax": [1.0, 2.0] * u.mas})
    with pytest.raises(ValueError, match="Poisson has the discrete support"):
        resolve_prior(dist.Poisson(3.0), t)
    with pytest.raises(ValueError, match=r"Gamma: parameter concentration .* got -1.0"):
        resolve_prior(dist.Gamma(-1.0, 1.0, validate_args=False), t)
    with pytest.raises(ValueError, match=r"Gamma: parameter rate .* -2.0"):
        resolve_prior(dist.Gamma(3.0, np.array([1e-3, -2.0]), validate_args=False), t)
    core, _ = resolve_prior(dist.Uniform(10.0, 1e4), t)
    lo, hi = core.log_domain()
    np.testing.assert_allclose([lo[0], hi[0]], np.log([10.0, 1e4]), rtol=1e-6)
    assert core.log_concave
    two = dist.LogNormal(np.array([5.0, 8.0]), 0.1)
    mix = dist.MixtureSameFamily(dist.Categorical(probs=np.array([0.5, 0.5])), two)
    assert not resolve_prior(mix, t)[0].log_concave  # takes the heuristic scan
