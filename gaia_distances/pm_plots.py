"""The proper-motion model of a kinematic cluster fit, read for figures: populations, ellipses, simulated catalogues.

NumPy only; matplotlib is reached through the ``Axes`` passed in.
:func:`gaia_distances.plotting.proper_motion_diagram` and
:func:`gaia_distances.plotting.proper_motion_predictive` draw from it.

The model of :func:`~gaia_distances.fit_cluster` with proper motions (mas/yr,
parallaxes ``w`` in mas, velocities in km/s, ``A_V`` = 4.7405, :data:`~gaia_distances.core.kinematics.A_V`):

- the cluster: mean ``(pmra, pmdec)`` and an isotropic internal dispersion
  ``sigma_v (1000 pc / D) / A_V``;
- field component ``m`` (weight ``field_pm_weight_m``) at true parallax
  ``w``: mean ``(field_pmra_m + field_pm_trend_ra w, field_pmdec_m +
  field_pm_trend_dec w)`` and covariance ``[[sd_ra^2, corr sd_ra sd_dec],
  [corr sd_ra sd_dec, sd_dec^2]] + (field_sigma_v_m w / A_V)^2 I``, where
  ``sd_ra``, ``sd_dec`` and ``corr`` (``field_pm_sd_ra``, ...) are shared by
  the components (per component, ``_m``, in fits saved before they were).

Each star's own errors (``pmra_error``, ``pmdec_error`` and, where the fit
carries it, ``pmra_pmdec_corr``) add to these; the parallax-proper-motion
correlations are left out, as the figures work at the observed parallax. A
fit whose stars have positions gives these in the field centre's frame
(:func:`star_frames`), so the stars are turned to it for the vector-point
diagram and the model's draws back to each star's frame for the predictive. A
fit without proper motions raises ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np

from gaia_distances.columns import column_values
from gaia_distances.core.kinematics import field_pm_moments, frame_rotation, members_pm_variance, to_star_frame
from gaia_distances.core.sampling import checked_seed

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes


class FitLike(Protocol):
    """What the plots and reports read from a cluster fit (:class:`~gaia_distances.ClusterFit` provides it)."""

    @property
    def table(self) -> Any: ...

    @property
    def method(self) -> str: ...

    @property
    def posterior(self) -> Mapping[str, np.ndarray]: ...

    @property
    def diagnostics(self) -> Mapping[str, Any]: ...

    def summary(self) -> Any: ...

    @property
    def stars(self) -> Any: ...

    def predictive(self, kind: str = "posterior", *, num_samples: int = 100, seed: int = 0) -> np.ndarray: ...


__all__ = [
    "PM_LABELS",
    "FitLike",
    "FieldProperMotions",
    "ObservedProperMotions",
    "ProperMotionModel",
    "draw_proper_motion_model",
    "ellipse",
    "in_centre_frame",
    "is_kinematic",
    "observed_proper_motions",
    "proper_motion_model",
    "simulate_proper_motions",
    "star_frames",
]

#: Axis labels of (pmra, pmdec).
PM_LABELS = (r"$\mu_{\alpha*}$ (pmra) [mas/yr]", r"$\mu_\delta$ (pmdec) [mas/yr]")
#: A star counts as a likely member above this membership probability.
LIKELY_MEMBER = 0.5
_CLUSTER_COLOUR = "C3"
_FIELD_COLOURS = ("C1", "C0", "C2", "C4", "C5", "C6", "C8", "C9")


class ObservedProperMotions(NamedTuple):
    """The fitted stars' proper motions, errors (mas/yr) and membership probabilities, in ``fit.stars`` order."""

    pm: np.ndarray  # (n, 2) pmra, pmdec; NaN where a star has none
    error: np.ndarray  # (n, 2) pmra_error, pmdec_error
    error_corr: np.ndarray  # (n,) pmra_pmdec_corr (0 where unknown)
    membership: np.ndarray  # (n,) membership_prob (NaN where the table has none)
    parallax: np.ndarray  # (n,) zero-point corrected parallax (mas)


class FieldProperMotions(NamedTuple):
    """The field mixture's parameters, per draw ``S`` and component ``M`` (mas/yr, km/s)."""

    mean: np.ndarray  # (S, M, 2) at zero parallax
    trend: np.ndarray  # (S, 2) mas/yr per mas of parallax
    sd: np.ndarray  # (S, M, 2)
    corr: np.ndarray  # (S, M)
    sigma_v: np.ndarray  # (S, M) km/s
    weight: np.ndarray  # (S, M)

    def at(self, parallax: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Each component's mean ``(S, M, 2)`` and covariance ``(S, M, 2, 2)`` at one parallax (mas) per draw."""
        w = np.broadcast_to(np.asarray(parallax, float), self.trend.shape[:1])[:, None]
        mx, my, c11, c12, c22 = field_pm_moments(
            self.mean, self.trend[:, None, :], np.log(self.sd), self.corr, np.log(self.sigma_v), w, xp=np
        )
        cov = np.empty((*self.corr.shape, 2, 2))
        cov[..., 0, 0], cov[..., 1, 1] = c11, c22
        cov[..., 0, 1] = cov[..., 1, 0] = c12
        return np.stack([mx, my], axis=-1), cov


class ProperMotionModel(NamedTuple):
    """The fitted populations in the vector-point diagram (posterior means; mas/yr)."""

    parallax: float  # mas: where the field components are evaluated
    cluster_mean: np.ndarray  # (2,)
    cluster_cov: np.ndarray  # (2, 2): internal dispersion at D plus the likely members' median error
    field_mean: np.ndarray  # (M, 2)
    field_cov: np.ndarray  # (M, 2, 2)
    field_weight: np.ndarray  # (M,)


def is_kinematic(fit: FitLike) -> bool:
    """Whether ``fit`` modelled proper motions (its posterior has the cluster's and its stars carry them)."""
    post, diag = fit.posterior, fit.diagnostics
    has_stars_pm = getattr(fit.stars, "pmra", None) is not None
    return bool(diag.get("kinematics", "pmra" in post)) and "pmra" in post and has_stars_pm


def observed_proper_motions(fit: FitLike) -> ObservedProperMotions:
    """The fitted stars' proper motions; raises ``ValueError`` for a fit without proper motions."""
    if not is_kinematic(fit):
        raise ValueError(
            "proper-motion plots need a fit with proper motions: fit_cluster(table, kinematics=True) on a table "
            "with pmra, pmdec, pmra_error and pmdec_error (this fit used parallaxes only)"
        )
    s = fit.stars
    pm = np.column_stack([np.asarray(s.pmra, float), np.asarray(s.pmdec, float)])
    err = np.column_stack([np.asarray(s.pmra_error, float), np.asarray(s.pmdec_error, float)])
    table = fit.table
    rows = np.asarray(s.rows, dtype=int)
    has_prob = "membership_prob" in table.colnames
    prob = column_values(table, "membership_prob")[rows] if has_prob else np.full(rows.size, np.nan)
    corr = getattr(s, "pmra_pmdec_corr", None)
    corr = np.zeros(rows.size) if corr is None else np.nan_to_num(np.asarray(corr, float))
    return ObservedProperMotions(pm, err, corr, prob, np.asarray(s.parallax, float))


def star_frames(fit: FitLike) -> np.ndarray | None:
    """``(cos, sin)`` of each fitted star's turn from the field centre's frame (``(n, 2)``), or None.

    The cluster's and the field's proper motions of a fit whose stars have
    positions are given in the frame of the field's centre
    (:func:`~gaia_distances.core.kinematics.frame_rotation`); None when they
    have none (the stars' own frames).
    """
    ra, dec = getattr(fit.stars, "ra", None), getattr(fit.stars, "dec", None)
    if ra is None or dec is None:
        return None
    return frame_rotation(np.asarray(ra, float), np.asarray(dec, float))


def in_centre_frame(fit: FitLike, pm: np.ndarray) -> np.ndarray:
    """The fitted stars' proper motions ``(..., n, 2)`` turned from their own frames to the model's."""
    frames = star_frames(fit)
    if frames is None:
        return np.asarray(pm, float)
    return to_star_frame(pm, frames * np.array([1.0, -1.0]))  # the inverse turn


def _n_components(post: Mapping[str, Any]) -> int:
    m = 0
    while f"field_pm_weight_{m + 1}" in post:
        m += 1
    return m


def _field(post: Mapping[str, Any], idx: np.ndarray | None) -> FieldProperMotions:
    """The field parameters at draws ``idx`` of the flattened chains, or their posterior means (``S = 1``)."""

    def get(key: str) -> np.ndarray:
        x = np.asarray(post[key], float).reshape(-1)
        return np.atleast_1d(x.mean()) if idx is None else x[idx]

    ms = range(1, _n_components(post) + 1)

    def comp(key: str) -> np.ndarray:
        if key in post:  # shared by the components
            return np.stack([get(key) for _ in ms], axis=-1)
        return np.stack([get(f"{key}_{m}") for m in ms], axis=-1)

    weight = comp("field_pm_weight")
    return FieldProperMotions(
        mean=np.stack([comp("field_pmra"), comp("field_pmdec")], axis=-1),
        trend=np.stack([get("field_pm_trend_ra"), get("field_pm_trend_dec")], axis=-1),
        sd=np.stack([comp("field_pm_sd_ra"), comp("field_pm_sd_dec")], axis=-1),
        corr=comp("field_pm_corr"),
        sigma_v=comp("field_sigma_v"),
        weight=weight / weight.sum(axis=-1, keepdims=True),
    )


def proper_motion_model(fit: FitLike, *, parallax: float | None = None) -> ProperMotionModel:
    """The cluster and the field components at ``parallax`` (mas; default: the fitted stars' median), for drawing.

    The cluster's covariance is its internal dispersion at ``D`` plus the
    median proper-motion error of the likely members (``membership_prob >
    0.5``; all stars with a proper motion when there are none).
    """
    obs = observed_proper_motions(fit)
    post = fit.posterior
    w = float(np.nanmedian(obs.parallax)) if parallax is None else float(parallax)
    w = max(w, 0.0)
    flat = {k: np.asarray(post[k], float).reshape(-1) for k in ("pmra", "pmdec", "sigma_v", "D")}
    disp = float(np.mean(np.sqrt(members_pm_variance(np.log(flat["sigma_v"]), 1000.0 / flat["D"], xp=np))))
    has = np.all(np.isfinite(obs.pm) & np.isfinite(obs.error), axis=1)
    likely = has & (np.nan_to_num(obs.membership) > LIKELY_MEMBER)
    err = np.median(obs.error[likely if likely.any() else has], axis=0) if has.any() else np.zeros(2)
    cluster_cov = np.diag(disp**2 + err**2)
    field = _field(post, None)
    mean, cov = field.at(w)
    cluster_mean = np.array([flat["pmra"].mean(), flat["pmdec"].mean()])
    return ProperMotionModel(w, cluster_mean, cluster_cov, mean[0], cov[0], field.weight[0])


def ellipse(mean: np.ndarray, cov: np.ndarray, n_sigma: float = 1.0, num: int = 121) -> np.ndarray:
    """``(num, 2)`` points where the Mahalanobis distance from ``mean`` under ``cov`` is ``n_sigma``.

    Examples
    --------
    >>> pts = ellipse(np.zeros(2), np.diag([4.0, 1.0]), 2.0)
    >>> bool(np.allclose(np.abs(pts).max(axis=0), [4.0, 2.0], atol=1e-3))
    True
    """
    vals, vecs = np.linalg.eigh(np.asarray(cov, float))
    t = np.linspace(0.0, 2.0 * np.pi, num)
    circle = np.stack([np.cos(t), np.sin(t)])
    return np.asarray(mean, float) + n_sigma * (vecs @ (np.sqrt(np.maximum(vals, 0.0))[:, None] * circle)).T


def _limits(pm: np.ndarray, model: ProperMotionModel) -> tuple[tuple[float, float], tuple[float, float]]:
    """Square limits over the 1-99 % range of the stars that always hold the cluster's 2-sigma ellipse."""
    box = ellipse(model.cluster_mean, model.cluster_cov, 2.0)
    ok = np.all(np.isfinite(pm), axis=1)
    pts = np.vstack([box, np.nanpercentile(pm[ok], [1.0, 99.0], axis=0)]) if ok.sum() > 1 else box
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    half = 0.55 * float(np.max(hi - lo)) or 1.0
    centre = 0.5 * (lo + hi)
    return (centre[0] - half, centre[0] + half), (centre[1] - half, centre[1] + half)


def draw_proper_motion_model(ax: Axes, model: ProperMotionModel, pm: np.ndarray) -> None:
    """Draw the cluster and the field components of ``model`` on ``ax``, with limits, labels and a legend.

    Ellipses are at Mahalanobis distances 1 (solid) and 2 (dashed); a field
    component's line width grows with its weight. ``pm`` (``(n, 2)``, mas/yr)
    sets the limits.
    """
    for m, (mean, cov, weight) in enumerate(zip(model.field_mean, model.field_cov, model.field_weight, strict=True)):
        colour, lw = _FIELD_COLOURS[m % len(_FIELD_COLOURS)], 0.6 + 3.0 * float(weight)
        label = f"field {m + 1} (weight {weight:.2f})"
        for n_sigma, ls in ((1.0, "-"), (2.0, "--")):
            xy = ellipse(mean, cov, n_sigma)
            ax.plot(xy[:, 0], xy[:, 1], color=colour, lw=lw, ls=ls, label=label if n_sigma == 1.0 else None)
        ax.plot(*mean, marker="x", color=colour, ms=6, ls="none")
    label = "cluster (dispersion + median error)"
    for n_sigma, ls in ((1.0, "-"), (2.0, "--")):
        xy = ellipse(model.cluster_mean, model.cluster_cov, n_sigma)
        ax.plot(xy[:, 0], xy[:, 1], color=_CLUSTER_COLOUR, lw=1.6, ls=ls, label=label if n_sigma == 1.0 else None)
    ax.plot(*model.cluster_mean, marker="+", color=_CLUSTER_COLOUR, ms=12, mew=2, ls="none")
    xlim, ylim = _limits(pm, model)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel(PM_LABELS[0])
    ax.set_ylabel(PM_LABELS[1])
    n_pm = int(np.all(np.isfinite(pm), axis=1).sum())
    ax.set_title(f"{n_pm} stars with proper motions; field at parallax {model.parallax:.3g} mas", fontsize=10)
    ax.legend(fontsize=7, loc="best", framealpha=0.85, title="1 and 2 sigma (dashed)", title_fontsize=7)


def simulate_proper_motions(fit: FitLike, *, num_samples: int = 200, seed: int = 0) -> np.ndarray:
    """Posterior predictive proper motions of the fitted stars, ``(num_samples, n, 2)`` in mas/yr.

    A :class:`~gaia_distances.ClusterFit` simulates them with its own model
    (:meth:`~gaia_distances.ClusterFit.predictive_proper_motions`: the
    component drawn from the parallax alone, the true parallax from the
    component's distance posterior). Other fit-like objects get this
    approximation, a check at the observed parallax: for each of ``num_samples`` posterior
    draws, every star is a cluster member with its ``membership_prob``, and

    - a member gets ``N((pmra, pmdec), (sigma_v (1000 / D) / A_V)^2 I + E)``;
    - a field star gets a component drawn by weight, evaluated at its own
      zero-point corrected parallax clipped at 0.01 mas (not at a true
      parallax), ``N(mean(w), cov(w) + E)``,

    with ``E`` the star's proper-motion error covariance (``pmra_error``,
    ``pmdec_error``, ``pmra_pmdec_corr``). The model's draws are in the field
    centre's frame when the stars have positions, and are turned to each
    star's own frame (:func:`star_frames`) before its errors are added, as
    the model's own predictive does. Stars without a proper motion are NaN.
    """
    seed = checked_seed(seed)
    if hasattr(fit, "predictive_proper_motions"):  # a ClusterFit: the model's own predictive
        return np.asarray(fit.predictive_proper_motions(num_samples=num_samples, seed=seed))
    obs = observed_proper_motions(fit)
    post = fit.posterior
    rng = np.random.default_rng(seed)
    total = np.asarray(post["pmra"]).size
    idx = rng.choice(total, num_samples, replace=num_samples > total)
    flat = {k: np.asarray(post[k], float).reshape(-1)[idx] for k in ("pmra", "pmdec", "sigma_v", "D")}
    n, s_idx = obs.pm.shape[0], np.arange(num_samples)[:, None]
    w = np.maximum(np.nan_to_num(obs.parallax, nan=0.01), 0.01)
    field = _field(post, idx)
    cum = np.cumsum(field.weight, axis=1)
    comp = np.minimum((rng.random((num_samples, n))[..., None] > cum[:, None, :]).sum(axis=-1), cum.shape[1] - 1)
    fx, fy, f11, f12, f22 = field_pm_moments(
        field.mean[s_idx, comp],
        field.trend[:, None, :],
        np.log(field.sd[s_idx, comp]),
        field.corr[s_idx, comp],
        np.log(field.sigma_v[s_idx, comp]),
        w[None, :],
        xp=np,
    )
    iso_c = members_pm_variance(np.log(flat["sigma_v"]), 1000.0 / flat["D"], xp=np)[:, None]
    member = rng.random((num_samples, n)) < np.nan_to_num(obs.membership)
    cluster_mean = np.stack([flat["pmra"], flat["pmdec"]], axis=-1)[:, None, :]
    mean = np.where(member[..., None], cluster_mean, np.stack([fx, fy], axis=-1))
    c11, c22 = np.where(member, iso_c, f11), np.where(member, iso_c, f22)
    c12 = np.where(member, 0.0, f12)
    true_pm = mean + _gaussian2(rng, c11, c12, c22)  # in the model's frame: the field centre's, with positions
    frames = star_frames(fit)
    if frames is not None:
        true_pm = to_star_frame(true_pm, frames)
    err = np.nan_to_num(obs.error)
    shape = (num_samples, n)
    e11, e22 = (np.broadcast_to(err[:, k] ** 2, shape) for k in (0, 1))
    out = true_pm + _gaussian2(rng, e11, np.broadcast_to(obs.error_corr * err[:, 0] * err[:, 1], shape), e22)
    out[:, ~np.all(np.isfinite(obs.pm), axis=1)] = np.nan
    return out


def _gaussian2(rng: np.random.Generator, c11: np.ndarray, c12: np.ndarray, c22: np.ndarray) -> np.ndarray:
    """Zero-mean 2-d Gaussian draws ``(..., 2)`` with covariance ``[[c11, c12], [c12, c22]]`` (one per element)."""
    z = rng.standard_normal((*np.shape(c11), 2))
    l11 = np.sqrt(c11)  # the 2x2 Cholesky factor
    with np.errstate(invalid="ignore", divide="ignore"):
        l21 = np.where(l11 > 0, c12 / l11, 0.0)
    l22 = np.sqrt(np.maximum(c22 - l21**2, 0.0))
    return np.stack([l11 * z[..., 0], l21 * z[..., 0] + l22 * z[..., 1]], axis=-1)
