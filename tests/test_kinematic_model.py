"""The proper-motion terms and the flexible field, against dense linear algebra and float64 quadrature."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from astropy import units as u
from astropy.table import QTable
from scipy import integrate, stats

import gaia_distances as gd
from gaia_distances.cluster.flags import ClusterFlag
from gaia_distances.cluster.stars import select_stars
from gaia_distances.core import field_bins, kinematics
from gaia_distances.core.likelihood import pad_star_data, padded_size
from gaia_distances.core.population import ClusterModel, ClusterPriors, to_population
from tests.test_utils import x64


def _random_covariances(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random 3x3 astrometric covariances (mas, mas/yr) with correlations up to about 0.7."""
    out = []
    for _ in range(n):
        a = rng.normal(size=(3, 3))
        c = a @ a.T + 0.5 * np.eye(3)
        corr = c / np.sqrt(np.outer(np.diag(c), np.diag(c)))
        sd = rng.uniform([0.02, 0.02, 0.02], [0.5, 0.6, 0.6])
        out.append(corr * np.outer(sd, sd))
    return np.array(out)


def _kin_data(cov: np.ndarray, pm: np.ndarray) -> kinematics.KinematicData:
    sd = np.sqrt(np.einsum("nii->ni", cov))
    corr = cov / (sd[:, :, None] * sd[:, None, :])
    return kinematics.prepare_kinematic_data(
        sd[:, 0], pm[:, 0], pm[:, 1], sd[:, 1], sd[:, 2], corr[:, 0, 1], corr[:, 0, 2], corr[:, 1, 2]
    )


def _kinematics(rng: np.random.Generator, M: int = 2) -> kinematics.Kinematics:
    w = rng.uniform(0.2, 1.0, M)
    return kinematics.Kinematics(
        pm=np.array([-3.0, 0.5]),
        log_sigma_v=np.log(1.3),
        field_mean=rng.normal(0, 3, (M, 2)),
        field_trend=np.array([-1.5, 0.8]),
        field_log_sd=np.log(rng.uniform(0.3, 3.0, (M, 2))),
        field_corr=rng.uniform(-0.8, 0.8, M),
        field_log_sigma_v=np.log(rng.uniform(5, 40, M)),
        field_log_w=np.log(w / w.sum()),
    )


def test_cluster_term_times_the_parallax_likelihood_is_the_3d_gaussian():
    """N(w | w_t, s) x the conditional term = N3((w, pm) | (w_t, mu_c), C + diag(0, S, S)) at any distance."""
    rng = np.random.default_rng(1)
    n = 40
    cov = _random_covariances(rng, n)
    w_t = rng.uniform(0.2, 3.0, n)
    obs = np.column_stack([w_t, np.zeros(n), np.zeros(n)]) + rng.normal(0, 0.5, (n, 3))
    kin = _kinematics(rng)
    with x64():
        data = _kin_data(cov, obs[:, 1:])
        u_node = np.log(1000.0 / w_t)[None, :]  # (nodes, stars)
        log_D = np.log(900.0)  # the mean proper motion is that at 900 pc, scaled by D / r
        term = np.asarray(kinematics.cluster_pm_log_term(u_node, obs[:, 0], kin, data, log_D))[0]
    s_int = 1.3 * w_t / kinematics.A_V
    for i in range(n):
        full = cov[i] + np.diag([0.0, s_int[i] ** 2, s_int[i] ** 2])
        ref = stats.multivariate_normal([w_t[i], *(kin.pm * 0.9 * w_t[i])], full).logpdf(obs[i])
        plx = stats.norm(w_t[i], np.sqrt(cov[i][0, 0])).logpdf(obs[i, 0])
        assert plx + term[i] == pytest.approx(ref, abs=1e-9)


def test_the_field_term_and_the_figures_are_one_model():
    """The likelihood's field term at a known distance is the mixture of 3-D Gaussians (parallax and proper
    motion) whose proper-motion part is field_pm_moments; the figures' components are the same moments."""
    from gaia_distances.pm_plots import FieldProperMotions

    rng = np.random.default_rng(6)
    n = 30
    cov = _random_covariances(rng, n)
    w_t = rng.uniform(0.2, 3.0, n)
    obs = np.column_stack([w_t, rng.normal(-2, 4, n), rng.normal(1, 4, n)]) + rng.normal(0, 0.4, (n, 3))
    kin = _kinematics(rng, M=3)
    with x64():
        data = _kin_data(cov, obs[:, 1:])
        term = np.asarray(kinematics.field_pm_log_term_at(np.log(1000.0 / w_t), obs[:, 0], kin, data))
    mx, my, c11, c12, c22 = kinematics.field_pm_moments(
        kin.field_mean, kin.field_trend, kin.field_log_sd, kin.field_corr, kin.field_log_sigma_v, w_t[:, None], xp=np
    )  # (n, M); the correlation term has no distance in it
    c12 = np.broadcast_to(c12, c11.shape)
    for i in range(n):
        plx = stats.norm(w_t[i], np.sqrt(cov[i][0, 0])).logpdf(obs[i, 0])
        parts = []
        for m in range(3):
            full = cov[i] + np.array([[0.0, 0.0, 0.0], [0.0, c11[i, m], c12[i, m]], [0.0, c12[i, m], c22[i, m]]])
            mean = [w_t[i], mx[i, m], my[i, m]]
            parts.append(kin.field_log_w[m] + stats.multivariate_normal(mean, full).logpdf(obs[i]))
        assert plx + term[i] == pytest.approx(np.logaddexp.reduce(parts), abs=1e-8)
    # the figures draw the same components (from physical draws: sds, correlation, sigma_v, weights)
    figures = FieldProperMotions(
        mean=kin.field_mean[None],
        trend=kin.field_trend[None],
        sd=np.exp(kin.field_log_sd)[None],
        corr=kin.field_corr[None],
        sigma_v=np.exp(kin.field_log_sigma_v)[None],
        weight=np.exp(kin.field_log_w)[None],
    )
    mean, cov_m = figures.at(w_t[3])
    np.testing.assert_allclose(mean[0], np.stack([mx[3], my[3]], axis=-1), rtol=1e-12)
    np.testing.assert_allclose(cov_m[0, :, 0, 0], c11[3], rtol=1e-12)
    np.testing.assert_allclose(cov_m[0, :, 0, 1], c12[3], rtol=1e-12)


def test_perspective_term_is_the_space_velocity_projected_on_each_line_of_sight():
    """With the geometry, the member mean is w_t (p . v, q . v) / A_V for v built at the field's centre."""
    from gaia_distances.core.astrometry import proper_motion_from_velocity

    rng = np.random.default_rng(4)
    n = 40
    cov = _random_covariances(rng, n)
    ra, dec = rng.uniform(50.0, 62.0, n), rng.uniform(18.0, 30.0, n)  # a field 12 degrees wide
    w_t = rng.uniform(4.0, 12.0, n)
    obs = np.column_stack([w_t, rng.normal(20, 5, n), rng.normal(-40, 5, n)])
    kin = _kinematics(rng)._replace(pm=np.array([20.0, -45.0]), v_r=6.0)
    log_D = np.log(135.0)
    with x64():
        data = _kin_data(cov, obs[:, 1:])._replace(geometry=kinematics.perspective_geometry(ra, dec))
        term = np.asarray(kinematics.cluster_pm_log_term(np.log(1000.0 / w_t)[None, :], obs[:, 0], kin, data, log_D))[0]
    # the space velocity that has proper motion kin.pm at 135 pc and v_r at the field's centre
    p, q, r = kinematics.sky_basis(ra, dec)
    c = r.mean(axis=0) / np.linalg.norm(r.mean(axis=0))
    ra0, dec0 = np.rad2deg(np.arctan2(c[1], c[0])), np.rad2deg(np.arcsin(c[2]))
    p0, q0, r0 = kinematics.sky_basis(ra0, dec0)
    v = kinematics.A_V * 135.0 / 1000.0 * (kin.pm[0] * p0 + kin.pm[1] * q0) + kin.v_r * r0
    mean = proper_motion_from_velocity(ra, dec, w_t, np.broadcast_to(v, (n, 3)))
    centre = proper_motion_from_velocity(ra0, dec0, 1000.0 / 135.0, v)
    assert (float(centre.pmra), float(centre.pmdec)) == pytest.approx((20.0, -45.0), abs=1e-9)
    s_int = 1.3 * w_t / kinematics.A_V
    for i in range(n):
        full = cov[i] + np.diag([0.0, s_int[i] ** 2, s_int[i] ** 2])
        ref = stats.multivariate_normal([w_t[i], mean.pmra[i], mean.pmdec[i]], full).logpdf(obs[i])
        plx = stats.norm(w_t[i], np.sqrt(cov[i][0, 0])).logpdf(obs[i, 0])
        assert plx + term[i] == pytest.approx(ref, abs=1e-8)
    # at the centre the projection is the identity: the scaled-mean model
    at_centre = kinematics.perspective_geometry(np.full(3, 56.0), np.full(3, 24.0))
    np.testing.assert_allclose(at_centre, [[1, 0, 0, 1, 0, 0]] * 3, atol=1e-12)


def test_field_term_at_a_known_distance_is_the_3d_gaussian_mixture():
    rng = np.random.default_rng(2)
    n = 30
    cov = _random_covariances(rng, n)
    w_t = rng.uniform(0.1, 4.0, n)
    obs = np.column_stack([w_t, rng.normal(0, 4, n), rng.normal(0, 4, n)]) + rng.normal(0, 0.3, (n, 3))
    kin = _kinematics(rng, M=3)
    with x64():
        data = _kin_data(cov, obs[:, 1:])
        term = np.asarray(kinematics.field_pm_log_term_at(np.log(1000.0 / w_t), obs[:, 0], kin, data))
    sd, rho = np.exp(kin.field_log_sd), kin.field_corr
    for i in range(n):
        comps = []
        for m in range(3):
            mean = kin.field_mean[m] + kin.field_trend * w_t[i]
            disp = (np.exp(kin.field_log_sigma_v[m]) * w_t[i] / kinematics.A_V) ** 2
            T = np.array([[sd[m, 0] ** 2, rho[m] * sd[m, 0] * sd[m, 1]], [rho[m] * sd[m, 0] * sd[m, 1], sd[m, 1] ** 2]])
            full = cov[i].copy()
            full[1:, 1:] += T + disp * np.eye(2)
            comps.append(kin.field_log_w[m] + stats.multivariate_normal([w_t[i], *mean], full).logpdf(obs[i]))
        plx = stats.norm(w_t[i], np.sqrt(cov[i][0, 0])).logpdf(obs[i, 0])
        assert plx + term[i] == pytest.approx(np.logaddexp.reduce(comps), abs=1e-9)


def test_a_star_without_proper_motion_has_a_parallax_only_likelihood():
    data = kinematics.prepare_kinematic_data(
        np.array([0.1, 0.1]), np.array([np.nan, 1.0]), np.array([1.0, 1.0]), np.array([0.1, 0.0]),
        np.array([0.1, 0.1]), np.zeros(2), np.zeros(2), np.zeros(2),
    )  # fmt: skip
    assert data.has_pm.tolist() == [0.0, 0.0]  # NaN pmra; zero pmra_error
    kin = _kinematics(np.random.default_rng(0))
    assert np.all(np.asarray(kinematics.cluster_pm_log_term(np.full((3, 2), 7.0), np.ones(2), kin, data, 7.0)) == 0)
    assert np.all(np.asarray(kinematics.field_pm_log_term(np.ones(2), np.ones(2), np.ones(2), kin, data)) == 0)


def test_correlations_that_are_not_positive_definite_are_shrunk():
    one = np.ones(1)
    data = kinematics.prepare_kinematic_data(one, one, one, one, one, 0.99 * one, 0.99 * one, -0.99 * one)
    c11, c12, c22 = np.asarray(data.cond_cov)[0]
    assert c11 > 0 and c22 > 0 and c11 * c22 - c12**2 > 0


def _bin_reference(w: float, s: float, j: int) -> tuple[float, float, float]:
    centre = field_bins.bin_centres()[j]

    def f(u: float, k: int) -> float:
        like = stats.norm(w, s).pdf(1000.0 * np.exp(-u))
        return stats.norm(centre, field_bins.SPACING).pdf(u) * like * (1000.0 * np.exp(-u)) ** k

    lo, hi = centre - 9 * field_bins.SPACING, centre + 9 * field_bins.SPACING
    w_lo, w_hi = w - 12 * s, w + 12 * s
    pts = [np.log(1000.0 / x) for x in (w_lo, w, w_hi) if x > 0 and lo < np.log(1000.0 / x) < hi]
    m = [integrate.quad(f, lo, hi, args=(k,), points=pts or None, limit=400, epsabs=0)[0] for k in range(3)]
    if m[0] <= 0:  # underflows in float64: the bin is irrelevant to the star
        return -np.inf, np.nan, np.nan
    return np.log(m[0]), m[1] / m[0], m[2] / m[0]


@pytest.mark.parametrize(("w", "s"), [(1.5, 0.02), (0.3, 0.1), (0.05, 0.2), (-0.4, 0.15), (8.0, 0.05)])
def test_field_bin_integrals_and_moments_match_float64_quadrature(w, s):
    with x64():
        bins = field_bins.precompute_field_bins(np.array([w]), np.array([s]))
    log_mass = np.asarray(bins.log_mass)[:, 0]
    for j in range(0, field_bins.N_BINS, 3):
        ref = _bin_reference(w, s, j)
        if ref[0] < log_mass.max() - 20:  # negligible bins: only their smallness matters
            assert log_mass[j] < log_mass.max() - 15
            continue
        assert log_mass[j] == pytest.approx(ref[0], abs=1e-6)
        assert np.asarray(bins.mean)[j, 0] == pytest.approx(ref[1], rel=1e-6)
        assert np.asarray(bins.var)[j, 0] == pytest.approx(ref[2] - ref[1] ** 2, rel=1e-5)


def test_the_moment_form_of_the_field_term_is_close_to_the_exact_integral():
    """The marginal model's field proper-motion term (two moments) against exact integration over distance."""
    import jax

    rng = np.random.default_rng(3)
    n = 200
    w_t = 1000.0 / rng.uniform(300, 5000, n)
    s = rng.uniform(0.02, 0.3, n)
    w = w_t + s * rng.standard_normal(n)
    cov = np.zeros((n, 3, 3))
    cov[:, 0, 0], cov[:, 1, 1], cov[:, 2, 2] = s**2, (1.1 * s) ** 2, s**2
    kin = _kinematics(rng)
    pm = kin.field_mean[0] + kin.field_trend * w_t[:, None] + rng.normal(0, 1.0, (n, 2))
    model = ClusterModel(ClusterPriors(), "flexible", True)
    z = np.zeros(model.n_params)
    steps = [model.position(p.name) for p in model.parameters if p.name.startswith("field_step_")]
    z[steps] = 0.3 * rng.standard_normal(len(steps))
    log_w = np.asarray(to_population(z, model, xp=np).field_log_w)
    with x64():
        data = _kin_data(cov, pm)
        bins = field_bins.precompute_field_bins(w, s)
        _, mean_w, var_w = jax.jit(field_bins.field_bins_log_likelihood)(log_w, bins)
        approx = np.asarray(jax.jit(kinematics.field_pm_log_term)(mean_w, var_w, w, kin, data))
        # exact: the field's distance posterior of each star on a fine grid, times the exact term
        grid = np.linspace(3.0, 11.0, 3000)
        prior = np.asarray(field_bins.bins_log_density_u(grid, log_w))
        like = stats.norm(w[:, None], s[:, None]).logpdf(1000.0 * np.exp(-grid))
        post = np.exp(prior + like - np.max(prior + like, axis=1, keepdims=True))
        post /= post.sum(axis=1, keepdims=True)
        rep = kinematics.KinematicData(
            *(None if x is None else np.repeat(np.asarray(x), grid.size, axis=0) for x in data)
        )
        u_all = np.tile(grid, n)
        terms = np.asarray(jax.jit(kinematics.field_pm_log_term_at)(u_all, np.repeat(w, grid.size), kin, rep))
        exact = np.log(np.sum(post * np.exp(terms.reshape(n, grid.size)), axis=1))
    snr = w / s
    err = np.abs(approx - exact)
    assert np.max(err[snr > 5]) < 0.01
    assert np.median(err[(snr > 2) & (snr <= 5)]) < 0.05
    assert np.median(err[snr <= 2]) < 0.15


def _pm_table(n: int = 60, **drop: bool) -> QTable:
    rng = np.random.default_rng(4)
    cols = {
        "parallax": rng.uniform(0.5, 2.0, n) * u.mas,
        "parallax_error": np.full(n, 0.05) * u.mas,
        "pmra": rng.normal(0, 2, n) * u.mas / u.yr,
        "pmdec": rng.normal(0, 2, n) * u.mas / u.yr,
        "pmra_error": np.full(n, 0.05) * u.mas / u.yr,
        "pmdec_error": np.full(n, 0.05) * u.mas / u.yr,
        "parallax_pmra_corr": np.full(n, 0.1),
        "parallax_pmdec_corr": np.full(n, -0.1),
        "pmra_pmdec_corr": np.full(n, 0.2),
    }
    return QTable({k: v for k, v in cols.items() if not drop.get(k)})


def test_field_parallax_variance_does_not_cancel_in_float32_and_its_gradient_is_finite():
    """Precise parallaxes: Var[w_t] by total variance matches float64, and a zero variance has finite gradients.

    (E[w_t^2] - E[w_t]^2 cancelled in float32, and the square root's
    derivative at the clipped 0 made the gradient NaN on a GPU.)
    """
    import jax
    import jax.numpy as jnp

    w = np.array([40.0, 12.0, 3.0, 0.8])
    s = np.array([0.01, 0.01, 0.02, 0.05])  # S/N 4000 to 16
    log_w = np.log(np.full(field_bins.N_BINS, 1.0 / field_bins.N_BINS))
    like = jax.jit(field_bins.field_bins_log_likelihood)  # one program (eager, each operation compiles)
    with x64():
        ref = like(log_w, field_bins.precompute_field_bins(w, s))
    bins32 = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), field_bins.precompute_field_bins(w, s))
    _, mean32, var32 = like(jnp.asarray(log_w, jnp.float32), bins32)
    assert np.all(np.asarray(var32) > 0)
    np.testing.assert_allclose(np.asarray(var32), np.asarray(ref[2]), rtol=1e-3)
    assert np.asarray(ref[2])[0] == pytest.approx(s[0] ** 2, rel=1e-2)  # the likelihood dominates at S/N 4000

    rng = np.random.default_rng(5)
    cov = _random_covariances(rng, 4)
    data = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), _kin_data(cov, rng.normal(0, 2, (4, 2))))
    kin = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), _kinematics(rng))
    mean = jnp.asarray(w, jnp.float32)

    def total(var: jax.Array, k: kinematics.Kinematics) -> jax.Array:
        return jnp.sum(kinematics.field_pm_log_term(mean, var, mean, k, data))

    g_var, g_kin = jax.jit(jax.grad(total, argnums=(0, 1)))(jnp.zeros(4, jnp.float32), kin)
    assert np.all(np.isfinite(np.asarray(g_var)))
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves(g_kin))


def test_field_proper_motion_starts_have_the_listed_shapes():
    """Each starting shape of the field's mixture: the component weights and dispersions as listed."""
    from gaia_distances.core.search import _FIELD_PM_SHAPES, field_pm_starts

    t = gd.simulate_field(400, n_cluster=100, magnitude_limit=18.0, seed=3)
    sel = select_stars(t, zero_point="parallax_zeropoint_true", kinematics=True)
    model = ClusterModel(ClusterPriors(), "flexible", True)
    from gaia_distances.cluster.stars import prepare_data

    data = prepare_data(sel.stars, model)
    starts = field_pm_starts(data, model, np.zeros(model.n_params))
    assert len(starts) == len(_FIELD_PM_SHAPES)
    for z, shape in zip(starts, _FIELD_PM_SHAPES, strict=True):
        kin = to_population(z, model, xp=np).kin
        np.testing.assert_allclose(np.exp(kin.field_log_w), [c[2] for c in shape], rtol=1e-9)
        np.testing.assert_allclose(np.exp(kin.field_log_sigma_v), [c[1] for c in shape], rtol=1e-9)
        assert np.allclose(kin.field_mean[0], kin.field_mean[1])  # both at the median proper motion


def test_the_staged_search_reaches_the_mode_that_the_true_cluster_leads_to():
    """The cheap stages (cluster-only polishes, one finished contender, a short Newton) lose nothing.

    Reference: the field's optimum with the true cluster put in, finished over
    every parameter; the search, which never sees the truth, must do as well.
    """
    from gaia_distances.cluster.stars import prepare_data
    from gaia_distances.core.initialisation import polish
    from gaia_distances.core.search import field_start, find_map_extended, finish_candidate

    t = gd.simulate_field(500, n_cluster=200, cluster_distance=1500.0, magnitude_limit=18.0, seed=5)
    truth = t.meta["gaia_distances"]["simulation"]
    sel = select_stars(t, zero_point="parallax_zeropoint_true", kinematics=True)
    model = ClusterModel(ClusterPriors(), "flexible", True)
    # padded as fit_cluster pads it (zero-weight stars), so that it shares the fits' compiled programs
    data = pad_star_data(prepare_data(sel.stars, model), padded_size(sel.stars.n_stars))
    found = find_map_extended(data, model)
    z = field_start(data, model)[0]
    for name, value in [
        ("log_D", np.log(truth["cluster_distance_pc"])),
        ("log_sigma", np.log(truth["cluster_sigma_log"])),
        ("logit_Q", np.log(200 / sel.stars.n_stars / (1 - 200 / sel.stars.n_stars))),
        ("pmra", truth["cluster_pmra"]),
        ("pmdec", truth["cluster_pmdec"]),
        ("log_sigma_v", np.log(truth["cluster_sigma_v"])),
    ]:
        z[model.position(name)] = value
    _, f_truth = finish_candidate(z, data, model)
    assert found.problems == () and found.log_posterior >= f_truth - 0.5
    # at the end the Newton decrement is spent: further Newton steps gain nothing
    assert polish(found.z, data, model, max_iter=5)[1] - found.log_posterior < 0.05


def test_auto_uses_proper_motions_when_present_and_warns_without_their_errors():
    assert select_stars(_pm_table(), kinematics="auto").stars.kinematic
    with pytest.warns(gd.GaiaDistancesWarning, match="pmra_error, pmdec_error"):
        sel = select_stars(_pm_table(pmra_error=True, pmdec_error=True), kinematics="auto")
    assert not sel.stars.kinematic
    with pytest.raises(gd.MissingColumnsError, match="pmdec_error"):
        select_stars(_pm_table(pmdec_error=True), kinematics=True)
    with pytest.raises(ValueError, match="kinematics"):
        select_stars(_pm_table(), kinematics="yes")


def test_missing_correlations_count_as_zero_with_a_warning_and_nan_proper_motions_are_flagged():
    t = _pm_table(pmra_pmdec_corr=True)
    t["pmra"][[3, 7]] = np.nan * u.mas / u.yr
    with pytest.warns(gd.GaiaDistancesWarning, match="pmra_pmdec_corr"):
        sel = select_stars(t, kinematics=True)
    assert sel.stars.n_stars == len(t)  # nobody dropped
    assert np.flatnonzero(sel.flag & ClusterFlag.NO_PROPER_MOTION).tolist() == [3, 7]
    assert np.all(sel.stars.pmra_pmdec_corr == 0)


def test_fit_cluster_rejects_unknown_options():
    t = _pm_table()
    with pytest.raises(ValueError, match="field"):
        gd.fit_cluster(t, field="gaussian")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(gd.MissingColumnsError):
            gd.fit_cluster(_pm_table(pmra=True), kinematics=True)


def test_the_clump_finder_sees_a_one_percent_cluster_that_the_field_peak_hides():
    """The proper-motion clump is the peak of the contrast over the field, not the field's own peak."""
    from scipy.ndimage import gaussian_filter

    from gaia_distances.core.search import _pm_clump

    rng = np.random.default_rng(4)
    field = rng.normal([-1.5, -0.5], [2.0, 1.5], size=(20_000, 2))
    cluster = rng.normal([-7.8, -2.1], 0.1, size=(200, 2))
    pm = np.concatenate([field, cluster])
    found = _pm_clump(pm, bin_width=0.25)
    assert np.hypot(*(found - [-7.8, -2.1])) < 0.25
    # the smoothed histogram's peak (the clump finder before the contrast) is the field's
    hist, ex, ey = np.histogram2d(pm[:, 0], pm[:, 1], bins=(120, 100), range=[(-12, 6), (-7, 5)])
    i, j = np.unravel_index(np.argmax(gaussian_filter(hist, 1.0)), hist.shape)
    assert np.hypot(ex[i] + 1.5, ey[j] + 0.5) < 1.0


def test_candidates_of_a_deep_cone_include_a_one_percent_cluster():
    """G < 20, 1 % members at 1.2 kpc: a candidate sits on the cluster in distance and proper motion."""
    from gaia_distances.cluster.stars import prepare_data
    from gaia_distances.core.search import cluster_candidates

    t = gd.simulate_field(7920, n_cluster=80, cluster_distance=1200.0, magnitude_limit=20.0, seed=0)
    truth = t.meta["gaia_distances"]["simulation"]
    sel = select_stars(t, zero_point="parallax_zeropoint_true", kinematics=True)
    model = ClusterModel(ClusterPriors(), "flexible", True)
    data = prepare_data(sel.stars, model)
    cand = cluster_candidates(data, model, np.zeros(model.n_params))  # the field's part is only copied
    D = np.exp(cand[:, model.position("log_D")])
    pm = cand[:, [model.position("pmra"), model.position("pmdec")]]
    near = np.abs(D / 1200.0 - 1) < 0.1
    miss = np.hypot(pm[near, 0] - truth["cluster_pmra"], pm[near, 1] - truth["cluster_pmdec"])
    assert miss.min() < 0.3


def _polar_cone(dec: float, *, n_field: int = 150, n_cluster: int = 60, seed: int = 1):
    """A 180 pc cluster in a 4 deg cone centred at declination ``dec`` (deg): near a pole it surrounds it."""
    return gd.simulate_field(
        n_field,
        n_cluster=n_cluster,
        cluster_distance=180.0,
        centre=(0.0, dec),
        radius=4 * u.deg,
        magnitude_limit=18.0,
        seed=seed,
    )


def _true_pm_at_fit_centre(t, stars) -> np.ndarray:
    """The cluster's true proper motion at its distance, in the frame of the stars' mean direction."""
    from gaia_distances.core.astrometry import proper_motion_from_velocity

    truth = t.meta["gaia_distances"]["simulation"]
    r = kinematics.sky_basis(np.asarray(t["ra"])[stars.rows], np.asarray(t["dec"])[stars.rows])[2].mean(axis=0)
    ra0, dec0 = np.rad2deg(np.arctan2(r[1], r[0])), np.rad2deg(np.arcsin(r[2] / np.linalg.norm(r)))
    v = np.array(truth["cluster_velocity_kms"])
    pm = proper_motion_from_velocity(ra0, dec0, 1000.0 / truth["cluster_distance_pc"], v)
    return np.array([float(pm.pmra), float(pm.pmdec)])


@pytest.mark.parametrize("dec", [90.0, -89.5])
def test_field_centre_of_a_cone_around_a_pole_is_found_from_unit_vectors(dec):
    """Right ascensions are never averaged: a ring of stars around a pole has the pole as its centre."""
    ra = np.linspace(0.0, 360.0, 12, endpoint=False)
    ra0, dec0 = kinematics.field_centre(ra, np.full(ra.size, 88.0 * np.sign(dec)))
    assert dec0 == pytest.approx(90.0 * np.sign(dec), abs=1e-9) and 0.0 <= ra0 < 360.0
    # across RA = 0/360 the centre is at RA 0, not 180
    ra0, dec0 = kinematics.field_centre(np.array([359.0, 1.0]), np.array([10.0, 10.0]))
    assert min(ra0, 360.0 - ra0) == pytest.approx(0.0, abs=1e-9) and dec0 == pytest.approx(10.0, abs=0.01)


def test_proper_motions_are_turned_to_the_field_centre_frame_by_the_convergence_of_the_meridians():
    """The identity at the centre, about sep * tan(dec) off it, any angle around a pole; likelihoods unchanged."""
    frame = kinematics.frame_rotation(np.array([10.0, 11.0, 9.0]), np.array([60.0, 60.0, 60.0]))
    np.testing.assert_allclose(frame[0], [1.0, 0.0], atol=1e-12)  # the centre (the mean direction)
    np.testing.assert_allclose(np.abs(np.rad2deg(np.arctan2(frame[1:, 1], frame[1:, 0]))), np.sin(np.pi / 3), rtol=2e-3)
    # around the north pole, common-velocity members' (pmra, pmdec) turn through every angle; in the
    # centre's frame they agree, with and without the perspective projection
    from gaia_distances.core.astrometry import proper_motion_from_velocity

    rng = np.random.default_rng(3)
    n = 24
    ra, dec = np.linspace(0.0, 360.0, n, endpoint=False), np.full(n, 89.0)
    pm = proper_motion_from_velocity(ra, dec, 5.0, np.broadcast_to([8.0, 56.0, -4.0], (n, 3)))
    raw = np.column_stack([pm.pmra, pm.pmdec])
    cov = _random_covariances(rng, n)
    sd = np.sqrt(np.einsum("nii->ni", cov))
    corr = cov / (sd[:, :, None] * sd[:, None, :])
    cols = (sd[:, 0], raw[:, 0], raw[:, 1], sd[:, 1], sd[:, 2], corr[:, 0, 1], corr[:, 0, 2], corr[:, 1, 2])
    plain = kinematics.prepare_kinematic_data(*cols)
    for perspective in (False, True):
        data = kinematics.prepare_kinematic_data(*cols, ra=ra, dec=dec, perspective=perspective)
        carried = kinematics.centre_frame_proper_motions(data)
        assert np.ptp(raw, axis=0).min() > 50.0 and np.ptp(carried, axis=0).max() < 0.5
        np.testing.assert_allclose(kinematics.to_star_frame(data.pm, data.frame), raw, atol=1e-9)
        # a turn of the frame changes no likelihood: the field's isotropic term is the same in either frame
        kin = _kinematics(rng)
        sd = np.broadcast_to(kin.field_log_sd[:, :1], kin.field_log_sd.shape)  # isotropic about 0
        kin = kin._replace(
            field_mean=np.zeros((2, 2)), field_trend=np.zeros(2), field_corr=np.zeros(2), field_log_sd=sd
        )
        w = rng.uniform(4.0, 6.0, n)
        with x64():
            turned = kinematics.field_pm_log_term_at(np.log(1000.0 / w), w, kin, data)
            own = kinematics.field_pm_log_term_at(np.log(1000.0 / w), w, kin, plain)
        np.testing.assert_allclose(np.asarray(turned), np.asarray(own), rtol=1e-9)


@pytest.mark.parametrize("perspective", [True, False])
@pytest.mark.parametrize("dec", [90.0, -89.5])
def test_candidates_of_a_cone_around_a_celestial_pole_include_its_cluster(dec, perspective):
    """The clump finder looks in the centre's frame: members around a pole share one proper motion there."""
    from gaia_distances.cluster.stars import prepare_data
    from gaia_distances.core.search import cluster_candidates

    t = _polar_cone(dec)
    sel = select_stars(t, zero_point="parallax_zeropoint_true", kinematics=True, perspective=perspective)
    model = ClusterModel(ClusterPriors(), "flexible", True, perspective=perspective)
    data = prepare_data(sel.stars, model)
    cand = cluster_candidates(data, model, np.zeros(model.n_params))  # the field's part plays no role here
    D = np.exp(cand[:, model.position("log_D")])
    pm = cand[:, [model.position("pmra"), model.position("pmdec")]]
    near = np.abs(D / 180.0 - 1) < 0.1
    true_pm = _true_pm_at_fit_centre(t, sel.stars)
    assert near.any() and np.hypot(*(pm[near] - true_pm).T).min() < 2.0


def test_a_proper_motion_no_star_could_have_is_flagged_and_not_fitted():
    """|mu| = 1e6 mas/yr: excluded with one warning; fast nearby stars (Barnard's star) are kept."""
    t = _pm_table()
    absurd = [2, 9, 30]
    t["pmra"][absurd] = 1e6 * u.mas / u.yr
    t["pmdec"][40] = -3e4 * u.mas / u.yr  # 3e4 mas/yr at 2 mas: 70 000 km/s
    t["parallax"][40] = 2.0 * u.mas
    near = [5, 6]  # Barnard's star (10 400 mas/yr at 548 mas) and 5 000 mas/yr at 100 mas: real
    t["parallax"][near] = [548.0, 100.0] * u.mas
    t["pmdec"][near] = [10_400.0, 5_000.0] * u.mas / u.yr
    original = t.copy()
    with pytest.warns(gd.GaiaDistancesWarning, match=r"4 stars have a proper motion no star could have") as rec:
        sel = select_stars(t, zero_point=0.0, kinematics=True)
    assert sum("proper motion no star" in str(w.message) for w in rec) == 1
    flagged = np.flatnonzero(sel.flag & ClusterFlag.IMPOSSIBLE_PROPER_MOTION).tolist()
    assert flagged == sorted([*absurd, 40])
    assert not set(flagged) & set(sel.stars.rows.tolist()) and set(near) <= set(sel.stars.rows.tolist())
    assert len(sel.table) == len(t) and np.all(np.asarray(t["pmra"]) == np.asarray(original["pmra"]))
    # a parallax-only fit does not read proper motions, so it flags nothing
    assert not np.any(select_stars(t, zero_point=0.0, kinematics=False).flag & ClusterFlag.IMPOSSIBLE_PROPER_MOTION)


def test_a_correlation_outside_minus_one_to_one_is_flagged_and_its_proper_motion_unused():
    """parallax_pmra_corr = 5 is no covariance: the star is fitted with its parallax alone, with one warning."""
    from gaia_distances.cluster.stars import kinematic_data

    t = _pm_table()
    t["parallax_pmra_corr"][[4, 8]] = 5.0
    t["pmra_pmdec_corr"][11] = -1.5
    t["parallax_pmdec_corr"][12] = 1.0  # the edge itself is a (degenerate) correlation: kept
    with pytest.warns(gd.GaiaDistancesWarning, match=r"3 stars have a correlation .* outside \[-1, 1\]"):
        sel = select_stars(t, zero_point=0.0, kinematics=True)
    assert np.flatnonzero(sel.flag & ClusterFlag.NO_PROPER_MOTION).tolist() == [4, 8, 11]
    assert sel.stars.n_stars == len(t)  # fitted, with the parallax alone
    has_pm = np.asarray(kinematic_data(sel.stars).has_pm)
    assert np.flatnonzero(has_pm == 0).tolist() == [4, 8, 11]
    assert float(t["parallax_pmra_corr"][4]) == 5.0  # the table keeps its values
    # the core's own guard: a correlation outside [-1, 1] is never clipped into a covariance
    ones = np.ones(3)
    data = kinematics.prepare_kinematic_data(
        ones, ones, ones, ones, ones, np.array([0.1, 5.0, -1.01]), 0 * ones, 0 * ones
    )
    assert np.asarray(data.has_pm).tolist() == [1.0, 0.0, 0.0]


def test_a_star_without_a_position_keeps_the_others_in_the_field_centre_frame():
    """One NaN ra in a cone around the pole: the others are still turned; that star is fitted on its parallax."""
    from gaia_distances.cluster.stars import kinematic_data

    t = _polar_cone(90.0)
    t["ra"][7] = np.nan * u.deg
    with pytest.warns(gd.GaiaDistancesWarning, match="1 stars have no finite ra/dec"):
        sel = select_stars(t, zero_point="parallax_zeropoint_true", kinematics=True)
    assert np.flatnonzero(sel.flag & ClusterFlag.NO_PROPER_MOTION).tolist() == [7]
    assert sel.stars.n_stars == len(t) and sel.stars.ra is not None
    data = kinematic_data(sel.stars)
    assert data.frame is not None and np.all(np.isfinite(data.frame)) and np.all(np.isfinite(data.pm))
    assert np.flatnonzero(np.asarray(data.has_pm) == 0).tolist() == [7]
    placed = np.arange(len(t)) != 7
    full = kinematics.frame_rotation(np.asarray(t["ra"])[placed], np.asarray(t["dec"])[placed])
    np.testing.assert_allclose(data.frame[placed], full, atol=1e-12)


def _turned_to_star(kin: kinematics.Kinematics, frame: np.ndarray) -> kinematics.Kinematics:
    """``kin`` (given in the field centre's frame) in the frame of one star turned by ``frame`` ``(cos, sin)``."""
    rot = lambda x: kinematics.to_star_frame(np.asarray(x, float)[..., None, :], frame[None])[..., 0, :]  # noqa: E731
    sd, rho = np.exp(kin.field_log_sd), np.asarray(kin.field_corr)
    c, s = frame
    r = np.array([[c, s], [-s, c]])
    cov = np.stack(
        [
            np.stack([sd[:, 0] ** 2, rho * sd[:, 0] * sd[:, 1]], -1),
            np.stack([rho * sd[:, 0] * sd[:, 1], sd[:, 1] ** 2], -1),
        ],
        1,
    )
    cov = r @ cov @ r.T
    sd_t = np.sqrt(np.stack([cov[:, 0, 0], cov[:, 1, 1]], -1))
    return kin._replace(
        pm=rot(kin.pm),
        field_mean=rot(kin.field_mean),
        field_trend=rot(kin.field_trend),
        field_log_sd=np.log(sd_t),
        field_corr=cov[:, 0, 1] / (sd_t[:, 0] * sd_t[:, 1]),
    )


def test_the_turned_likelihood_is_each_star_own_frame_likelihood_with_the_model_turned_to_it():
    """Cluster and field (a non-zero, anisotropic mean and trend) terms in the centre's frame equal each star's
    terms in its own frame with the model turned there: a turn the wrong way, or none, changes them."""
    rng = np.random.default_rng(5)
    n = 12
    ra, dec = np.linspace(0.0, 360.0, n, endpoint=False), np.full(n, 88.5)
    cov = _random_covariances(rng, n)
    sd = np.sqrt(np.einsum("nii->ni", cov))
    corr = cov / (sd[:, :, None] * sd[:, None, :])
    pm = rng.normal(0.0, 5.0, (n, 2))
    cols = (sd[:, 0], pm[:, 0], pm[:, 1], sd[:, 1], sd[:, 2], corr[:, 0, 1], corr[:, 0, 2], corr[:, 1, 2])
    plain = kinematics.prepare_kinematic_data(*cols)
    turned = kinematics.prepare_kinematic_data(*cols, ra=ra, dec=dec, perspective=False)
    kin = _kinematics(rng)
    w = rng.uniform(4.0, 6.0, n)
    u_nodes = np.log(1000.0 / w)[None, :] + np.array([[-0.05], [0.0], [0.05]])
    with x64():
        cl = np.asarray(kinematics.cluster_pm_log_term(u_nodes, w, kin, turned, np.log(200.0)))
        fl = np.asarray(kinematics.field_pm_log_term_at(np.log(1000.0 / w), w, kin, turned))
        for i in range(n):
            own = _turned_to_star(kin, turned.frame[i])
            cl_i = np.asarray(kinematics.cluster_pm_log_term(u_nodes, w, own, plain, np.log(200.0)))[:, i]
            fl_i = float(np.asarray(kinematics.field_pm_log_term_at(np.log(1000.0 / w), w, own, plain))[i])
            np.testing.assert_allclose(cl[:, i], cl_i, rtol=1e-9)
            assert fl[i] == pytest.approx(fl_i, rel=1e-9)
        # the turn matters here: in the stars' own frames without it the terms differ
        unturned = np.asarray(kinematics.cluster_pm_log_term(u_nodes, w, kin, plain, np.log(200.0)))
    assert np.max(np.abs(unturned - cl)) > 1.0


def test_the_joint_model_integrated_over_each_distance_is_the_marginal_likelihood():
    """``method="joint"`` with proper motions samples one ``u = ln r`` per star with each component's exact
    proper-motion term at that distance. Its potential is the population prior and, per star, the mixture
    at ``u`` times the parallax likelihood; integrated over ``u`` it is the marginal model's star term: the
    cluster's exactly, the field's to the accuracy of the moment form (test above). (The joint fit itself:
    ``test_the_joint_method_takes_the_same_kinematic_likelihood``, slow.)"""
    import jax
    import jax.numpy as jnp
    from numpyro.infer.util import potential_energy

    from gaia_distances.cluster.stars import kinematic_data, prepare_data
    from gaia_distances.core.likelihood import log_posterior
    from gaia_distances.core.models import component_log_terms_at, joint_model
    from gaia_distances.core.population import log_prior

    t = gd.simulate_field(60, n_cluster=40, cluster_distance=1000.0, magnitude_limit=17.0, seed=3)
    truth = t.meta["gaia_distances"]["simulation"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gd.GaiaDistancesWarning)
        stars = select_stars(t, zero_point="parallax_zeropoint_true", parallax_limits=None, kinematics=True).stars
    model = ClusterModel(ClusterPriors(), "flexible", True)
    rng = np.random.default_rng(0)
    z = 0.2 * rng.standard_normal(model.n_params)
    pm = np.column_stack([np.asarray(stars.pmra), np.asarray(stars.pmdec)])
    for name, value in {
        "log_D": np.log(1000.0),
        "logit_Q": 0.0,
        "pmra": truth["cluster_pmra"],
        "pmdec": truth["cluster_pmdec"],
        "field_pmra_1": np.median(pm[:, 0]),
        "field_pmdec_1": np.median(pm[:, 1]),
        "field_pmra_2": np.median(pm[:, 0]) + 1.0,
        "field_pmdec_2": np.median(pm[:, 1]) - 1.0,
        "field_log_sd_ra": np.log(3.0),
        "field_log_sd_dec": np.log(3.0),
    }.items():
        z[model.position(name)] = value
    grid = np.linspace(4.5, 10.5, 4001)
    with x64():
        err, w, zp = (np.asarray(a, float) for a in (stars.parallax_error, stars.parallax, stars.zero_point))
        kin, data = kinematic_data(stars), prepare_data(stars, model)
        u0 = np.log(1000.0 / np.clip(w, 0.2, None))
        rep = lambda a: jnp.repeat(a, grid.size, axis=0)  # noqa: E731

        @jax.jit  # one program: eager, the same terms compile some 400 operations
        def terms(z, u0):
            pop = to_population(z, model)
            sites = {**{name: z[i] for i, name in enumerate(model.names)}, "u": u0}
            joint = -potential_energy(joint_model, (err, w + zp, zp, kin, model, None), {}, sites)
            at_u0 = component_log_terms_at(u0, err, w + zp, zp, kin, pop)
            kin_rep = type(kin)(*(None if a is None else rep(a) for a in kin))
            uu = jnp.tile(jnp.asarray(grid), w.size)
            on_grid = component_log_terms_at(uu, rep(err), rep(w + zp), rep(zp), kin_rep, pop)
            return joint, at_u0, on_grid, log_posterior(z, data, model) - log_prior(z, model), log_prior(z, model)

        joint_u0, (log_c, log_f), on_grid, marginal, prior = jax.tree.map(np.asarray, terms(z, u0))
    # the joint potential at one distance per star: its prior and per-star terms
    by_hand = prior + np.sum(np.logaddexp(log_c, log_f) + stats.norm(1000.0 * np.exp(-u0) + zp, err).logpdf(w + zp))
    np.testing.assert_allclose(joint_u0, by_hand, rtol=1e-10)
    # integrated over u on a fine grid: the marginal likelihood
    per_star = np.logaddexp(*(a.reshape(w.size, grid.size) for a in on_grid))
    per_star = per_star + stats.norm(w[:, None], err[:, None]).logpdf(1000.0 * np.exp(-grid))
    peak = per_star.max(axis=1, keepdims=True)
    joint = np.sum(peak[:, 0] + np.log(integrate.trapezoid(np.exp(per_star - peak), grid, axis=1)))
    assert abs(joint - marginal) < 0.01 * w.size


def test_the_cluster_integral_places_its_nodes_on_the_proper_motion_term_too():
    """A bright member of a far, cold cluster with a large proper motion: its proper motion, which scales
    as 1 / r, pins its distance (0.3 % in r) more tightly than the cluster's depth (1.7 %) or its parallax
    (6 %) do. The integral's nodes sit on that peak: the value is the brute-force integral's, and the
    gradient in ``(ln D, ln sigma)`` is the value's own (nodes placed on the parallax alone missed the
    peak, and the sampler then crawled with a collapsed step size)."""
    import jax
    import jax.numpy as jnp

    from gaia_distances.core.cluster_integral import cluster_log_likelihood

    w = np.array([0.36, 0.35, 0.37, 0.30])
    s = np.array([0.02, 0.02, 0.03, 0.1])
    pm_obs = np.array([10.02, 9.95, 10.1, 10.3])  # mas/yr; the cluster's is 10 at D
    e = 0.03  # the members' proper-motion spread (dispersion and error), mas/yr

    def value(log_D, log_sigma):
        def node(u):
            return normal_logpdf(pm_obs, 10.0 * jnp.exp(log_D - u), e)

        g = 10.0 * jnp.exp(log_D) / 1000.0  # the proper motion per unit true parallax
        gauss = (jnp.full(w.shape, (g / e) ** 2), pm_obs / g)  # the node term as a Gaussian in w_t
        return jnp.sum(cluster_log_likelihood(w, s, log_D, log_sigma, node_log_term=node, node_parallax=gauss))

    def normal_logpdf(x, mu, sd):
        return -0.5 * jnp.square((x - mu) / sd) - jnp.log(sd) - 0.5 * math.log(2.0 * math.pi)

    log_D, log_sigma = math.log(2800.0), math.log(0.017)
    with x64():
        got, grad = jax.jit(jax.value_and_grad(value, argnums=(0, 1)))(log_D, log_sigma)
        d = np.linspace(-0.2, 0.2, 400_001)

        def brute(log_D, log_sigma):
            sig = math.exp(log_sigma)
            u = log_D + d[:, None]
            log_f = (
                stats.norm(0.0, sig).logpdf(d)[:, None]
                + stats.norm(1000.0 * np.exp(-u), s).logpdf(w)
                + stats.norm(10.0 * np.exp(log_D - u), e).logpdf(pm_obs)
            )
            top = log_f.max(axis=0)
            return float(np.sum(top + np.log(integrate.trapezoid(np.exp(log_f - top), d, axis=0))))

        h = 1e-4
        fd = [
            (brute(log_D + h, log_sigma) - brute(log_D - h, log_sigma)) / (2 * h),
            (brute(log_D, log_sigma + h) - brute(log_D, log_sigma - h)) / (2 * h),
        ]
        assert float(got) == pytest.approx(brute(log_D, log_sigma), abs=1e-4)
    np.testing.assert_allclose(np.asarray(grad, float), fd, rtol=1e-3, atol=1e-3)


def test_the_cluster_proper_motion_term_is_a_gaussian_in_the_true_parallax():
    """What places the cluster integral's nodes: with the members' dispersion held fixed, the cluster's
    proper-motion term is a quadratic in the true parallax whose curvature and vertex
    ``cluster_pm_parallax_gaussian`` gives (correlations with the parallax error included)."""
    rng = np.random.default_rng(7)
    n = 6
    cov = _random_covariances(rng, n)
    w = rng.uniform(0.3, 2.0, n)
    data = _kin_data(cov, rng.normal(0, 3, (n, 2)))
    kin = _kinematics(rng)._replace(log_sigma_v=np.log(1e-4))  # no dispersion: an exact quadratic
    with x64():
        precision, mean = (
            np.asarray(a) for a in kinematics.cluster_pm_parallax_gaussian(w, np.full(n, 0.1), kin, data, np.log(900.0))
        )
        w_t = np.array([0.5, 1.0, 1.5])[:, None] * w
        term = np.asarray(kinematics.cluster_pm_log_term(np.log(1000.0 / w_t), w, kin, data, np.log(900.0)))
    for i in range(n):
        a, b, _ = np.polyfit(w_t[:, i], term[:, i], 2)
        assert precision[i] == pytest.approx(-2.0 * a, rel=1e-4)
        assert mean[i] == pytest.approx(-b / (2.0 * a), rel=1e-4, abs=1e-6)
