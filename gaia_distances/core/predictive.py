"""Posterior predictive proper motions of a kinematic cluster fit.

For each population draw and each fitted star, a proper motion is simulated
from the model given the star's observed parallax: the component is drawn
with its parallax-only posterior probability (``Q p(w | cluster)`` against
``(1 - Q) p(w | field)``), the true parallax from that component's
distance posterior, and the proper motion from the component's model plus
the star's conditional Gaia errors. Compared with the observed proper
motions this checks the field's and the cluster's kinematic model
(:func:`proper_motion_check`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gaia_distances.core.field_bins import field_bins_log_likelihood
from gaia_distances.core.field_table import field_moments
from gaia_distances.core.kinematics import cluster_pm_mean, field_pm_moments, members_pm_variance, to_star_frame
from gaia_distances.core.likelihood import StarData, parallax_component_log_likelihoods
from gaia_distances.core.numerics import Array
from gaia_distances.core.population import ClusterModel, to_population

__all__ = ["proper_motion_check", "simulate_proper_motions"]


def _chol2(c11: Array, c12: Array, c22: Array, e: Array) -> tuple[Array, Array]:
    """``L @ e`` for the Cholesky factor ``L`` of ``[[c11, c12], [c12, c22]]`` (elementwise)."""
    l11 = jnp.sqrt(c11)
    l21 = c12 / l11
    l22 = jnp.sqrt(jnp.maximum(c22 - l21 * l21, 1e-12))
    return l11 * e[..., 0], l21 * e[..., 0] + l22 * e[..., 1]


@functools.lru_cache(maxsize=8)
def _simulator(model: ClusterModel) -> Any:
    def one(key: Array, z: Array, data: StarData) -> Array:
        pop = to_population(z, model)
        kin, obs = pop.kin, data.kin
        assert kin is not None and obs is not None
        n = data.parallax.shape[0]
        k_c, k_m, k_w, k_e = jax.random.split(key, 4)
        plx = parallax_component_log_likelihoods(pop, data)
        p_member = jax.nn.sigmoid(jnp.log(pop.Q) + plx.cluster - jnp.log1p(-pop.Q) - plx.field)
        member = jax.random.uniform(k_c, (n,)) < p_member
        if pop.field_log_w is not None and data.bins is not None:
            _, mean_w, var_w = field_bins_log_likelihood(pop.field_log_w, data.bins)
        else:
            assert data.field is not None
            mean_w, var_w = field_moments(pop.log_L, data.field)
        sd_w = jnp.sqrt(var_w)  # both fields' variances are non-negative by construction
        w_field = jnp.maximum(mean_w + sd_w * jax.random.normal(k_w, (n,)), 1e-3)
        comp = jax.random.categorical(k_m, kin.field_log_w, shape=(n,))
        w_cl = 1000.0 * jnp.exp(-pop.log_D)
        w_t = jnp.where(member, w_cl, w_field)
        resid = data.parallax - w_t
        # each star's field component at its true parallax, and the members at the cluster's (its proper
        # motion, projected per star with the perspective option): the model's own terms
        fx, fy, f11, f12, f22 = field_pm_moments(
            kin.field_mean[comp],
            kin.field_trend,
            kin.field_log_sd[comp],
            kin.field_corr[comp],
            kin.field_log_sigma_v[comp],
            w_t,
        )
        cluster_mean = jnp.stack(cluster_pm_mean(jnp.broadcast_to(w_cl, (n,)), kin, obs, pop.log_D), axis=1)
        mean = jnp.where(member[:, None], cluster_mean, jnp.stack([fx, fy], axis=1)) + obs.slope * resid[:, None]
        var_c = members_pm_variance(kin.log_sigma_v, w_t)
        a11, a12, a22 = jnp.where(member, var_c, f11), jnp.where(member, 0.0, f12), jnp.where(member, var_c, f22)
        c = obs.cond_cov
        dx, dy = _chol2(c[:, 0] + a11, c[:, 1] + a12, c[:, 2] + a22, jax.random.normal(k_e, (n, 2)))
        return mean + jnp.stack([dx, dy], axis=1)

    def simulate(key: Array, z_draws: Array, data: StarData) -> Array:
        keys = jax.random.split(key, z_draws.shape[0])
        return jax.lax.map(lambda kz: one(kz[0], kz[1], data), (keys, z_draws))

    return jax.jit(simulate)


def simulate_proper_motions(seed: int, z_draws: np.ndarray, data: StarData, model: ClusterModel) -> np.ndarray:
    """Simulated ``(pmra, pmdec)`` (mas/yr) of every star in ``data``, one set per draw: ``(draws, stars, 2)``."""
    if not model.kinematics or data.kin is None:
        raise ValueError("proper motions can only be simulated from a kinematic fit")
    z = jnp.asarray(np.asarray(z_draws, float), data.parallax.dtype)
    sim = np.asarray(_simulator(model)(jax.random.PRNGKey(seed), z, data), float)
    # the model works in the field centre's frame when the stars have positions: back to each star's own
    return sim if data.kin.frame is None else to_star_frame(sim, np.asarray(data.kin.frame, float))


def proper_motion_check(observed: np.ndarray, simulated: np.ndarray) -> dict[str, Any]:
    """Observed against simulated proper motions: for pmra and pmdec, the observed 5/25/50/75/95 % points,
    the simulated ones (median and 2.5-97.5 % over the simulated sets) and the Kolmogorov-Smirnov distance
    between the observed and the pooled simulated distribution.

    ``observed`` is ``(stars, 2)`` (NaN rows ignored), ``simulated``
    ``(draws, stars, 2)``.
    """
    from scipy import stats

    ok = np.all(np.isfinite(observed), axis=1)
    levels = np.array([5, 25, 50, 75, 95])
    out: dict[str, Any] = {"levels": levels.tolist()}
    for k, name in enumerate(("pmra", "pmdec")):
        obs = observed[ok, k]
        sim = simulated[:, ok, k]
        per_set = np.percentile(sim, levels, axis=1)  # (levels, draws)
        out[name] = {
            "observed": np.percentile(obs, levels).tolist(),
            "simulated": np.median(per_set, axis=1).tolist(),
            "simulated_lo": np.percentile(per_set, 2.5, axis=1).tolist(),
            "simulated_hi": np.percentile(per_set, 97.5, axis=1).tolist(),
            "ks": float(stats.ks_2samp(obs, sim.ravel()).statistic),
        }
    return out
