"""Where the sampler starts for the extended models (flexible field, proper motions).

The reference model's four parameters are searched on a grid
(:mod:`~gaia_distances.core.initialisation`); the extended models have tens,
so the search works in stages:

1. :func:`field_start`: the field alone (``Q`` near 0) fitted by L-BFGS,
   from robust statistics of the stars (:data:`FIELD_START_ITER` iterations;
   finished only where it decides whether there is a cluster);
2. :func:`cluster_candidates`: cluster distances from a grid over the
   stars' inverse parallaxes and the narrow overdensities among them, each
   with the densest proper-motion clump among the stars whose parallaxes
   are compatible with it (the cluster is found in joint parallax-proper
   motion space), times a few sizes and fractions; all scored with the
   full log posterior;
3. the best few distinct candidates polished by L-BFGS over the cluster's
   parameters on the field's optimum (:func:`polish_lbfgs`), and those
   still in contention then over every parameter (:func:`finish_candidate`:
   with proper motions the field's mixture is refitted around the cluster
   first);
4. :func:`compare_starts`: the starts must agree. When two distinct
   solutions score within :data:`AGREE_LOG_POST` of each other, or the best
   cluster gains less than :data:`MIN_EVIDENCE` in log likelihood over the
   field alone, the problem is reported (and warned by the fit).

:func:`find_map_extended` runs them and returns a
:class:`~gaia_distances.core.initialisation.MapResult` with the Laplace
covariance at the best.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax.numpy as jnp
import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.optimize import minimize

from gaia_distances.core.exported import Program
from gaia_distances.core.initialisation import (
    NEWTON_DECREMENT,
    MapResult,
    candidate_distances,
    hessian,
    polish,
    score_candidates,
    soft_inverse,
    value_and_grad,
    whitening,
)
from gaia_distances.core.kinematics import centre_frame_proper_motions
from gaia_distances.core.likelihood import StarData
from gaia_distances.core.parallel import usable_cores
from gaia_distances.core.parameters import Normal
from gaia_distances.core.population import ClusterModel, log_prior
from gaia_distances.core.terms import scanned_parameters, term_starts

__all__ = [
    "AGREE_LOG_POST",
    "CONTENDER_MARGIN",
    "FIELD_MARGIN",
    "FIELD_START_ITER",
    "MIN_EVIDENCE",
    "cluster_candidates",
    "compare_starts",
    "field_start",
    "find_map_extended",
    "finish_candidate",
    "polish_lbfgs",
    "scan_parameter",
    "soft_laplace_covariance",
]

#: Distinct solutions closer than this in log posterior mean the starts disagree.
AGREE_LOG_POST = 5.0
#: The least log-likelihood gain of a cluster over the field alone that counts as a detection.
MIN_EVIDENCE = 15.0
#: L-BFGS iterations of the search's field-only fit: within about 10 of its optimum in log posterior on the
#: shared cones (which takes 250-300 to reach), enough to score candidates on. The fit is finished where it
#: decides something: when the evidence for a cluster is within :data:`FIELD_MARGIN` of
#: :data:`MIN_EVIDENCE`, or when no cluster is found.
FIELD_START_ITER = 100
#: Evidence this far above :data:`MIN_EVIDENCE` needs no finished field-only fit to count as a detection.
FIELD_MARGIN = 50.0
#: Candidates whose cluster-only polish ends further than this below the best are not finished.
CONTENDER_MARGIN = 50.0
#: Values of a parameter the search scans (:func:`scan_parameter`), and of its finer second pass.
SCAN_NODES = 128
#: The scan reaches this many prior sds either side of the parameter's value; its nodes are densest there.
SCAN_SPAN = 4.0
#: logit(Q) of "no cluster" in the field-only fit.
_NO_CLUSTER = -12.0
#: The field's smoothing scale in the proper-motion clump finder, in bins (:func:`_pm_clump`).
_BACKGROUND_BINS = 6.0


def polish_lbfgs(
    z0: np.ndarray, data: StarData, model: ClusterModel, *, free: np.ndarray | None = None, max_iter: int = 300
) -> tuple[np.ndarray, float]:
    """L-BFGS ascent of the log posterior from ``z0`` over the entries ``free`` (default all)."""
    vg = value_and_grad(model)
    dtype = data.parallax.dtype
    z0 = np.asarray(z0, float)
    idx = np.arange(z0.size) if free is None else np.flatnonzero(free)

    def f(x: np.ndarray) -> tuple[float, np.ndarray]:
        z = z0.copy()
        z[idx] = x
        v, g = vg(jnp.asarray(z, dtype), data)
        v, g = float(v), np.asarray(g, float)[idx]
        if not np.isfinite(v) or not np.all(np.isfinite(g)):
            return 1e30, np.zeros_like(x)
        return -v, -g

    res = minimize(f, z0[idx], jac=True, method="L-BFGS-B", options={"maxiter": max_iter, "gtol": 1e-4})
    z = z0.copy()
    z[idx] = res.x
    return z, -float(res.fun)


def _robust_sd(x: np.ndarray) -> float:
    q = np.nanpercentile(x, [16, 84])
    return float(max((q[1] - q[0]) / 2.0, 1e-3))


def field_start(data: StarData, model: ClusterModel, *, max_iter: int = 300) -> tuple[np.ndarray, float]:
    """The field-only optimum (cluster fraction pinned near 0) after at most ``max_iter`` L-BFGS iterations:
    ``z`` and its log posterior."""
    z = np.zeros(model.n_params)
    real = data.real()
    w = np.asarray(data.parallax, float)[real]
    s = np.asarray(data.parallax_error, float)[real]
    if model.field == "edsd":
        table = data.field
        assert table is not None
        ll = np.sum(np.asarray(table.value, float)[real], axis=0)
        z[0] = float(table.log_L0) + float(table.step) * int(np.argmax(ll))
    good = w / s > 5
    med = np.median(w[good]) if good.sum() >= 10 else 1.0
    z[model.position("log_D")] = math.log(1000.0 / max(med, 0.05))
    z[model.position("logit_Q")] = _NO_CLUSTER
    term_starts(z, data, model)
    starts = field_pm_starts(data, model, z) if model.kinematics and data.kin is not None else [z]
    fits = _each(lambda z0: polish_lbfgs(z0, data, model, free=~_cluster_entries(model), max_iter=max_iter), starts)
    return max(fits, key=lambda fit: fit[1])


def _each(fn: Callable[[np.ndarray], tuple[np.ndarray, float]], starts: list[np.ndarray]) -> list[Any]:
    """``fn`` of every start, on the CPU cores at once (the optimisers are independent; XLA releases the GIL)."""
    if len(starts) < 2 or usable_cores() < 2:
        return [fn(z) for z in starts]
    with ThreadPoolExecutor(max_workers=min(len(starts), usable_cores())) as pool:
        return list(pool.map(fn, starts))


def _cluster_entries(model: ClusterModel) -> np.ndarray:
    """Boolean mask of the cluster's entries of ``z`` (the rest describe the field)."""
    return np.isin(model.names, model.cluster_names)


#: Starting shapes of the field's proper-motion mixture: ``(sd scale, sigma_v km/s, weight)`` per
#: component. A mixture has local optima, so the search tries each (a narrow and a broad part of
#: equal weight; a dominant thin disc with a minor hot component).
_FIELD_PM_SHAPES = (((0.5, 5.0, 0.5), (1.0, 10.0, 0.5)), ((0.3, 20.0, 0.8), (0.3, 50.0, 0.2)))


def field_pm_starts(data: StarData, model: ClusterModel, z: np.ndarray) -> list[np.ndarray]:
    """``z`` with its field proper-motion block (and the cluster's mean) set from each of the starting shapes.

    The components are centred on the median proper motion, with sizes in
    units of its robust spread (:data:`_FIELD_PM_SHAPES`; components beyond
    those listed repeat the broadest); the cluster's mean on the median
    proper motion in the field centre's frame (:func:`centre_frame_proper_motions`).
    """
    real = data.real()
    assert data.kin is not None
    has = np.asarray(data.kin.has_pm, float)[real] > 0
    pm = np.asarray(data.kin.pm, float)[real][has]
    centre = np.median(pm, axis=0) if pm.size else np.zeros(2)
    spread = np.array([_robust_sd(pm[:, 0]), _robust_sd(pm[:, 1])]) if pm.size else np.ones(2)
    pm_centre = centre_frame_proper_motions(data.kin)[real][has]
    cluster_pm = np.median(pm_centre, axis=0) if pm.size else np.zeros(2)
    out = []
    for shape in _FIELD_PM_SHAPES:
        z = z.copy()
        z[model.position("pmra")], z[model.position("pmdec")] = cluster_pm
        weights = []
        for k in range(1, model.n_field_pm + 1):
            scale, sigma_v, weight = shape[min(k, len(shape)) - 1]
            z[model.position(f"field_pmra_{k}")], z[model.position(f"field_pmdec_{k}")] = centre
            if k == 1:  # the components share the constant part; the first (coldest) sets it
                z[model.position("field_log_sd_ra")] = math.log(scale * spread[0])
                z[model.position("field_log_sd_dec")] = math.log(scale * spread[1])
                z[model.position("field_atanh_corr")] = 0.0
            z[model.position(f"field_log_sigma_v_{k}")] = math.log(sigma_v)
            weights.append(weight)
            if k > 1:
                z[model.position(f"field_logit_w_{k}")] = math.log(weight / weights[0])
        out.append(z)
    return out


def _pm_clump(pm: np.ndarray, *, bin_width: float) -> np.ndarray:
    """The most significant clump of a 2-D proper-motion sample over its own smooth background.

    A histogram with bins of ``bin_width`` is smoothed on the clump's scale
    (one bin) and on the field's (:data:`_BACKGROUND_BINS` bins); the peak of
    ``(narrow - broad) / sqrt(broad)`` is the clump. The raw mode would be the
    field's own peak wherever the field outnumbers the cluster at its
    parallax (a 1 % cluster in a deep cone); the contrast is what a cluster
    adds to the field.
    """
    lo, hi = np.percentile(pm, [1, 99], axis=0)
    lo, hi = lo - 3 * bin_width, hi + 3 * bin_width
    nb = np.clip(((hi - lo) / bin_width).astype(int), 8, 400)
    hist, ex, ey = np.histogram2d(
        pm[:, 0], pm[:, 1], bins=(int(nb[0]), int(nb[1])), range=[(lo[0], hi[0]), (lo[1], hi[1])]
    )
    narrow = gaussian_filter(hist, 1.0, mode="constant")
    broad = gaussian_filter(hist, _BACKGROUND_BINS, mode="constant")
    # the floor: a background of one star spread over the narrow kernel's area
    significance = (narrow - broad) / np.sqrt(broad + 1.0 / (2.0 * np.pi))
    i, j = np.unravel_index(int(np.argmax(significance)), significance.shape)
    return np.array([0.5 * (ex[i] + ex[i + 1]), 0.5 * (ey[j] + ey[j + 1])])


def cluster_candidates(
    data: StarData,
    model: ClusterModel,
    z_field: np.ndarray,
    *,
    distance_hint: float | None = None,
    n_distances: int = 40,
) -> np.ndarray:
    """Candidate starting points: cluster distances, each with its proper-motion clump, x sizes x fractions."""
    real = data.real()
    w = np.asarray(data.parallax, float)[real]
    s = np.asarray(data.parallax_error, float)[real]
    log_D, _ = candidate_distances(data, distance_hint=distance_hint, n_grid=n_distances, n_hint=9)
    pm_at: list[np.ndarray | None] = []
    near_at: dict[int, np.ndarray] = {}  # each distance's stars near its candidate (over data's, padding False)
    if model.kinematics and data.kin is not None:
        has = np.asarray(data.kin.has_pm, float)[real] > 0
        # the members share one proper motion in the centre's frame (their own turn with RA near a pole)
        pm = centre_frame_proper_motions(data.kin)[real]
        pm_err = np.sqrt(np.asarray(data.kin.cond_cov, float)[real][:, [0, 2]].mean(axis=1))
        for i, ld in enumerate(log_D):
            w_c = 1000.0 * math.exp(-ld)
            near = has & (np.abs(w - w_c) < 2.0 * s + 0.03 * w_c) & (pm_err < 1.0)
            if near.sum() < 10:
                near = has & (np.abs(w - w_c) < 3.0 * s + 0.1 * w_c)
            if near.sum() < 5:
                pm_at.append(None)
                continue
            bw = float(np.clip(np.median(pm_err[near]), 0.05, 0.5))
            pm_at.append(_pm_clump(pm[near], bin_width=bw))
            if model.terms:
                close = near & (np.hypot(*(pm - pm_at[-1]).T) < 3.0 * bw + 2.0 * pm_err)
                near_at[i] = np.isin(np.arange(data.n_stars), np.flatnonzero(real)[close])
    rows = []
    depth_name = model.names[model.position("log_D") + 1]
    lo_s, hi_s = model.priors.log_size_range
    for i, ld in enumerate(log_D):
        for size in (3.0, 10.0):
            if depth_name == "logit_size":
                frac = np.clip((math.log(size) - lo_s) / (hi_s - lo_s), 0.02, 0.98)
                depth = math.log(frac / (1 - frac))
            else:
                depth = math.log(size) - ld
            for logit_q in (-3.0, -1.0):
                z = z_field.copy()
                z[model.position("log_D")], z[model.position("log_D") + 1] = ld, depth
                z[model.position("logit_Q")] = logit_q
                if pm_at:
                    p = pm_at[i]
                    if p is None:
                        continue
                    z[model.position("pmra")], z[model.position("pmdec")] = p
                    z[model.position("log_sigma_v")] = 0.0
                    if model.terms:
                        term_starts(z, data, model, near_at[i])
                rows.append(z)
    return np.array(rows)


def compare_starts(
    solutions: list[tuple[np.ndarray, float]],
    model: ClusterModel,
    field: tuple[np.ndarray, float],
    log_prior_fn: Callable[[np.ndarray], float],
) -> tuple[int, tuple[str, ...], float]:
    """The best polished start, the problems among them, and the evidence for a cluster.

    ``solutions`` and ``field`` are ``(z, log posterior)`` pairs; ``evidence``
    is the best start's log-likelihood gain over the field-only fit (whose
    ``Q`` is pinned near 0).
    """
    i_best = int(np.argmax([fx for _, fx in solutions]))
    z_best, f_best = solutions[i_best]
    iD = model.position("log_D")
    problems = []
    for z, fx in solutions:
        if _distinct(z, z_best, model) and f_best - fx < AGREE_LOG_POST:
            problems.append(
                f"the starting points disagree: clusters at {math.exp(z_best[iD]):.0f} pc and "
                f"{math.exp(z[iD]):.0f} pc fit almost equally well (log posterior {f_best:.1f} and {fx:.1f}); "
                "pass distance_hint= to choose"
            )
            break
    z_field, f_field = field
    evidence = (f_best - log_prior_fn(z_best)) - (f_field - log_prior_fn(z_field))
    if evidence < MIN_EVIDENCE:
        problems.append(
            f"no cluster found: the best cluster improves the log posterior over the field alone by only "
            f"{evidence:.1f} (< {MIN_EVIDENCE:g})"
        )
    return i_best, tuple(problems), float(evidence)


def _distinct(z1: np.ndarray, z2: np.ndarray, model: ClusterModel) -> bool:
    """Whether two solutions describe different clusters (distance, or proper motion when modelled)."""
    iD = model.position("log_D")
    if abs(z1[iD] - z2[iD]) > 0.05:
        return True
    if model.kinematics:
        ipm = [model.position("pmra"), model.position("pmdec")]
        return bool(np.hypot(*(z1[ipm] - z2[ipm])) > 0.5)
    return False


@functools.lru_cache(maxsize=16)
def _log_prior_program(model: ClusterModel) -> Program:
    return Program("log_prior", lambda z: log_prior(z, model), model)


def _log_prior_fn(model: ClusterModel, dtype: Any) -> Callable[[np.ndarray], float]:
    fn = _log_prior_program(model)
    return lambda z: float(fn(jnp.asarray(z, dtype)))


def find_map_extended(
    data: StarData, model: ClusterModel, *, distance_hint: float | None = None, n_polish: int = 4
) -> MapResult:
    """The MAP of an extended model, the problems of the search and the Laplace covariance at the best.

    The ``n_polish`` best distinct candidates are first polished over the
    cluster's entries alone (the field held at its own optimum: a few
    parameters, a few tens of steps); those within :data:`CONTENDER_MARGIN`
    of the best are then finished over every parameter
    (:func:`finish_candidate`) and compared.
    """
    z_field, f_field = field_start(data, model, max_iter=FIELD_START_ITER)
    cand = cluster_candidates(data, model, z_field, distance_hint=distance_hint)
    dtype = data.parallax.dtype
    scores = score_candidates(cand, data, model) if len(cand) else np.zeros(0)
    iD = model.position("log_D")
    starts: list[int] = []
    for i in np.argsort(scores)[::-1]:
        if not np.isfinite(scores[i]):
            break
        if all(abs(cand[i, iD] - cand[j, iD]) > 0.1 for j in starts):
            starts.append(int(i))
        if len(starts) == n_polish:
            break
    cluster = _cluster_entries(model)
    rough = _each(lambda z0: polish_lbfgs(z0, data, model, free=cluster), [cand[i] for i in starts])
    top = max((fx for _, fx in rough), default=-np.inf)
    contenders: list[np.ndarray] = []  # distinct clusters, best first, within the margin of the best
    for z, fx in sorted(rough, key=lambda r: -r[1]):
        if fx > top - CONTENDER_MARGIN and all(_distinct(z, y, model) for y in contenders):
            contenders.append(z)
    solutions = [finish_candidate(z, data, model) for z in contenders]
    log_prior_fn = _log_prior_fn(model, dtype)
    problems: tuple[str, ...] = ()
    i_best, evidence = 0, -math.inf
    if solutions:
        i_best, problems, evidence = compare_starts(solutions, model, (z_field, f_field), log_prior_fn)
    if evidence < MIN_EVIDENCE + FIELD_MARGIN:  # the field-only fit decides: finish it
        z_field, f_field = polish_lbfgs(z_field, data, model, free=~cluster)
        solutions = solutions or [(z_field, f_field)]
        i_best, problems, evidence = compare_starts(solutions, model, (z_field, f_field), log_prior_fn)
    z_best, f_best = solutions[i_best]
    for name in scanned_parameters(model):
        z_best, f_best = scan_parameter(z_best, f_best, data, model, name)
    # Newton steps finish what L-BFGS (float32 gradients) leaves: the Laplace
    # covariance needs the maximum itself, not a point near a saddle
    end = polish(z_best, data, model, max_iter=8, decrement=NEWTON_DECREMENT)
    H = None
    if end.log_posterior >= f_best:
        z_best, f_best, H = end.z, end.log_posterior, end.hessian
    return MapResult(z_best, f_best, soft_laplace_covariance(z_best, data, model, H), problems, evidence)


def scan_parameter(z: np.ndarray, f: float, data: StarData, model: ClusterModel, name: str) -> tuple[np.ndarray, float]:
    """``z`` (log posterior ``f``) with its entry ``name`` moved to the best of a grid of values, every other
    entry held, and its log posterior: a global search in one parameter whose posterior may have several
    modes (:meth:`~gaia_distances.core.term.Term.scanned`), where L-BFGS stops in the mode it starts in, or on
    a saddle between two.

    The :data:`SCAN_NODES` values are ``x + s sinh(t)`` for equally spaced ``t``, out to :data:`SCAN_SPAN`
    prior sds either side of the current value ``x``, with ``s`` a hundredth of the prior sd: 0.05 km/s
    apart near ``x`` for ``v_r``, 2 km/s apart 20 km/s away; then as many again between the best value's
    two neighbours. Both passes are scored in the batches of :func:`score_candidates` (nothing new to
    compile). ``z`` is returned unchanged unless a value beats it.
    """
    i = model.position(name)
    prior = model.parameters[i].prior
    sd = prior.sd if isinstance(prior, Normal) else 1.0
    x0 = float(z[i])
    t_max = math.asinh(SCAN_SPAN * 100.0)
    values = x0 + 0.01 * sd * np.sinh(np.linspace(-t_max, t_max, SCAN_NODES))
    best_z, best_f = z, f
    for _ in range(2):
        trial = np.repeat(z[None, :], values.size, axis=0)
        trial[:, i] = values
        scores = score_candidates(trial, data, model)
        k = int(np.argmax(scores))
        if scores[k] > best_f:
            best_z, best_f = trial[k], float(scores[k])
        values = np.linspace(values[max(k - 1, 0)], values[min(k + 1, values.size - 1)], SCAN_NODES)
    return best_z, best_f


def finish_candidate(z: np.ndarray, data: StarData, model: ClusterModel) -> tuple[np.ndarray, float]:
    """A candidate (cluster polished on the field-only optimum) polished over every parameter.

    With proper motions the field's mixture was fitted with the cluster's
    stars in it and has local optima, so it is refitted around the
    candidate's cluster from each starting shape (:func:`field_pm_starts`)
    before the whole is polished; the best is kept.
    """
    if not (model.kinematics and data.kin is not None):
        return polish_lbfgs(z, data, model)
    cluster = _cluster_entries(model)
    starts = field_pm_starts(data, model, z)
    for z0 in starts:
        z0[cluster] = z[cluster]
    fits = _each(lambda z0: polish_lbfgs(polish_lbfgs(z0, data, model, free=~cluster)[0], data, model), starts)
    return max(fits, key=lambda fit: fit[1])


def soft_laplace_covariance(
    z: np.ndarray, data: StarData, model: ClusterModel, H: np.ndarray | None = None
) -> np.ndarray:
    """``(-H)^-1`` at ``z``, saddle-free (:func:`~gaia_distances.core.initialisation.soft_inverse`); ``H``
    where the caller has it: the Hessian at ``z``, or the one the Newton polish that ended at ``z`` last used
    (:class:`~gaia_distances.core.initialisation.Polished`, one short step back at most).

    At a true maximum this is the Laplace covariance; elsewhere (a flat or
    saddle direction) it still gives the sampler a usable, positive-definite
    scale in every direction.
    """
    H = hessian(z, data, model) if H is None else H
    if np.all(np.isfinite(H)):
        try:
            return soft_inverse(-H)
        except np.linalg.LinAlgError:
            pass
    return whitening(None, z.size) ** 2
