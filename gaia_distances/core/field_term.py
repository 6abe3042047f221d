"""The flexible field's per-star likelihood with its proper-motion term, and its gradient written out.

The default model's field term is, per star,

    f_i = ln sum_j w_j I_ij  +  ln sum_(m,k) a_k pi_m N(pm_i | mean_m(t_ik), C_i + A_m(t_ik)),

the distance bins' integrals (:mod:`~gaia_distances.core.field_bins`) and
the proper-motion mixture integrated over the star's field distance posterior
by a three-point Gauss-Hermite rule at ``t_ik = E[w_t] + x_k sd[w_t]``
(:mod:`~gaia_distances.core.kinematics`). It is most of the cost of a
gradient. Automatic differentiation of it keeps every ``(component, node,
star)`` intermediate and reduces each parameter's terms in its own pass;
:func:`field_log_likelihood_pm` gives the same values with the gradient
written out (a ``custom_vjp``), each row's partial derivatives computed in
one elementwise sweep and reduced together. It equals the composition of
:func:`~gaia_distances.core.field_bins.field_bins_log_likelihood` and
:func:`~gaia_distances.core.kinematics.field_pm_log_term` (tested, values
and gradients), which stay the definition.

The derivatives: with ``P = C + A`` and ``u = P^-1 (dx, dy)``, a row's
``L = ln N`` has ``dL/d(dx, dy) = -u`` and ``dL/dP = (u u^T - P^-1) / 2``; the
bins' posterior weights ``p_ij`` give ``d f_i / d ln w_j = p_ij`` and the
moments' ``d E[w_t] / d ln w_j = p_ij (M_ij - E)`` and
``d Var / d ln w_j = p_ij (V_ij + (M_ij - E)^2 - Var)``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from gaia_distances.core.field_bins import FieldBins, bins_posterior
from gaia_distances.core.kinematics import A_V, FIELD_PM_NODES, KinematicData, Kinematics
from gaia_distances.core.numerics import LOG_SQRT_2PI, Array, gauss_hermite

__all__ = ["field_log_likelihood_pm"]


def _rows(kin: Kinematics, obs: KinematicData, parallax: Array, mean: Array, sd: Array) -> dict[str, Any]:
    """Every (component, node) row's log term and what its derivatives need, shapes ``(M, K, n)``."""
    M = kin.field_mean.shape[0]
    x_nodes, log_w_nodes = gauss_hermite(FIELD_PM_NODES)
    x = jnp.asarray(x_nodes, mean.dtype)[None, :, None]
    t = mean + sd * x  # (1, K, n)
    t = jnp.broadcast_to(t, (M, *t.shape[1:]))
    m = (slice(None), None, None)
    gx = kin.field_trend[0] - obs.slope[:, 0]
    gy = kin.field_trend[1] - obs.slope[:, 1]
    dx = obs.pm[:, 0] - obs.slope[:, 0] * parallax - gx * t - kin.field_mean[:, 0][m]
    dy = obs.pm[:, 1] - obs.slope[:, 1] * parallax - gy * t - kin.field_mean[:, 1][m]
    s2 = (jnp.exp(2.0 * kin.field_log_sigma_v) / (A_V * A_V))[m]
    t11 = jnp.exp(2.0 * kin.field_log_sd[:, 0])[m]
    t22 = jnp.exp(2.0 * kin.field_log_sd[:, 1])[m]
    t12 = (kin.field_corr * jnp.exp(kin.field_log_sd[:, 0] + kin.field_log_sd[:, 1]))[m]
    disp = s2 * t * t
    a11, a22 = t11 + disp, t22 + disp
    c11, c12, c22 = obs.cond_cov[:, 0], obs.cond_cov[:, 1], obs.cond_cov[:, 2]
    # det(C + A) = det C + tr(adj(C) A) + det A: every term non-negative, det C from float64
    det = obs.cond_det + (c11 * a22 + c22 * a11 - 2.0 * c12 * t12) + (a11 * a22 - t12 * t12)
    p11, p12, p22 = c11 + a11, c12 + t12, c22 + a22
    ux = (p22 * dx - p12 * dy) / det
    uy = (p11 * dy - p12 * dx) / det
    log_a = jnp.asarray(log_w_nodes, mean.dtype)[None, :, None]
    term = log_a + kin.field_log_w[m] - 0.5 * (ux * dx + uy * dy) - 0.5 * jnp.log(det) - 2.0 * LOG_SQRT_2PI
    return {
        "term": term,
        "t": t,
        "x": x,
        "gx": gx,
        "gy": gy,
        "s2": s2,
        "t11": t11,
        "t22": t22,
        "t12": t12,
        "ux": ux,
        "uy": uy,
        "d11": 0.5 * (ux * ux - p22 / det),
        "d22": 0.5 * (uy * uy - p11 / det),
        "d12": ux * uy + p12 / det,
    }


def _sd(var: Array, mean: Array) -> tuple[Array, Array]:
    """``sd[w_t]``, floored above 0 so that its square root's derivative stays finite, and ``d sd / d var``."""
    floor = 1e-12 * jnp.square(mean) + 1e-30
    sd = jnp.sqrt(jnp.maximum(var, floor))
    return sd, jnp.where(var > floor, 0.5 / sd, 0.0)


@jax.custom_vjp
def field_log_likelihood_pm(
    log_w: Array, kin: Kinematics, bins: FieldBins, obs: KinematicData, parallax: Array
) -> Array:
    """``ln p(w_i, pm_i | field)`` per star: the flexible field's bins and its proper-motion mixture.

    ``log_w`` are the bins' normalised log weights, ``kin`` the population's
    proper-motion parameters, ``bins`` and ``obs`` the stars' precomputed
    bin integrals and proper motions, ``parallax`` their corrected
    parallaxes (mas). Stars without a proper motion get the bins' term alone.
    Differentiable in ``log_w`` and ``kin`` only.
    """
    value, _, mean, var = bins_posterior(log_w, bins)
    sd, _ = _sd(var, mean)
    rows = _rows(kin, obs, parallax, mean, sd)
    pm = jax.nn.logsumexp(rows["term"], axis=(0, 1))
    return value + jnp.where(obs.has_pm > 0, pm, 0.0)


def _forward(
    log_w: Array, kin: Kinematics, bins: FieldBins, obs: KinematicData, parallax: Array
) -> tuple[Array, tuple[Any, ...]]:
    return field_log_likelihood_pm(log_w, kin, bins, obs, parallax), (log_w, kin, bins, obs, parallax)


def _backward(res: tuple[Any, ...], g: Array) -> tuple[Any, ...]:
    log_w, kin, bins, obs, parallax = res
    value, post, mean, var = bins_posterior(log_w, bins)
    sd, dsd_dvar = _sd(var, mean)
    r = _rows(kin, obs, parallax, mean, sd)
    pm = jax.nn.logsumexp(r["term"], axis=(0, 1))
    g_pm = jnp.where(obs.has_pm > 0, g, 0.0)
    G = g_pm * jnp.exp(r["term"] - pm)  # each row's share of the star's cotangent, (M, K, n)
    t = r["t"]
    dP = r["d11"] + r["d22"]
    dL_dt = r["ux"] * r["gx"] + r["uy"] * r["gy"] + 2.0 * r["s2"] * t * dP

    def per_component(q: Array) -> Array:  # summed over the nodes and the stars
        return jnp.sum(G * q, axis=(1, 2))

    d_t11, d_t22, d_t12 = per_component(r["d11"]), per_component(r["d22"]), per_component(r["d12"])
    d_s2 = per_component(dP * t * t)
    lsd = kin.field_log_sd
    d_kin = kin._replace(
        pm=jnp.zeros_like(kin.pm),
        log_sigma_v=jnp.zeros_like(kin.log_sigma_v),
        field_mean=jnp.stack([per_component(r["ux"]), per_component(r["uy"])], axis=-1),
        field_trend=jnp.stack([jnp.sum(G * r["ux"] * t), jnp.sum(G * r["uy"] * t)]),
        field_log_sd=jnp.stack(
            [
                2.0 * r["t11"][:, 0, 0] * d_t11 + r["t12"][:, 0, 0] * d_t12,
                2.0 * r["t22"][:, 0, 0] * d_t22 + r["t12"][:, 0, 0] * d_t12,
            ],
            axis=-1,
        ),
        field_corr=jnp.exp(lsd[:, 0] + lsd[:, 1]) * d_t12,
        field_log_sigma_v=2.0 * r["s2"][:, 0, 0] * d_s2,
        field_log_w=jnp.sum(G, axis=(1, 2)),
        v_r=jnp.zeros_like(jnp.asarray(kin.v_r)),
    )
    # the moments' cotangents, then the bins' weights
    g_mean = jnp.sum(G * dL_dt, axis=(0, 1))
    g_var = jnp.sum(G * dL_dt * r["x"], axis=(0, 1)) * dsd_dvar
    dev = bins.mean - mean
    per_bin = g + g_mean * dev + g_var * (bins.var + dev * dev - var)
    d_log_w = jnp.sum(post * per_bin, axis=1)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, (bins, obs, parallax))
    return (d_log_w, d_kin, *zeros)


field_log_likelihood_pm.defvjp(_forward, _backward)
