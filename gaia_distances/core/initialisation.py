"""The MAP search's pieces, which :func:`~gaia_distances.core.search.find_map_extended` runs for every model.

- :func:`candidate_distances`: cluster distances spanning the stars' inverse
  parallaxes (or around a hint), plus the narrow overdensities among them
  (:func:`parallax_overdensities`);
- :func:`score_candidates`: the log posterior of many candidates in a few
  vectorised calls;
- :func:`polish`: damped Newton steps, with the exact :func:`hessian`;
- :func:`laplace_covariance`: the posterior covariance of the Laplace
  approximation, which whitens NUTS (:func:`whitening`).

The result is a :class:`MapResult`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gaia_distances.core.exported import Program
from gaia_distances.core.likelihood import StarData, log_posterior
from gaia_distances.core.numerics import Array
from gaia_distances.core.population import ClusterModel

__all__ = [
    "CHORD_DECREMENT",
    "NEWTON_DECREMENT",
    "NEWTON_FLOOR",
    "Polished",
    "candidate_distances",
    "MapResult",
    "hessian",
    "laplace_covariance",
    "parallax_overdensities",
    "polish",
    "score_candidates",
    "soft_inverse",
    "value_and_grad",
    "whitening",
]

#: Most candidates scored per vectorised call, and the most candidate-star pairs per call (memory).
_SCORE_BATCH = 32
_SCORE_PAIRS = 1 << 21


class MapResult(NamedTuple):
    """The MAP: unconstrained ``z``, its log posterior and the Laplace covariance (``None`` if not definite).

    For the extended models (:mod:`~gaia_distances.core.search`) also the
    problems the search found (``problems``: starts that disagree, no
    cluster) and ``evidence``: the log-likelihood gain of the best cluster
    over the field alone.
    """

    z: np.ndarray
    log_posterior: float
    covariance: np.ndarray | None
    problems: tuple[str, ...] = ()
    evidence: float = math.nan


def parallax_overdensities(log_inv_parallax: np.ndarray, *, n_peaks: int = 3) -> list[float]:
    """``ln D`` of the strongest narrow overdensities among stars' ``ln(1000 / w)``.

    The density with a narrow kernel (0.02 in ln r) is divided by a broad one
    (0.3); the highest local maxima of that ratio, among those holding at
    least 10 stars, are returned.
    """
    x = np.asarray(log_inv_parallax, float)
    x = x[np.isfinite(x)]
    if x.size < 20 or not np.ptp(x) > 1e-6:  # too few stars, or all at one parallax: no overdensity to find
        return []
    grid = np.linspace(x.min(), x.max(), 800)
    step = grid[1] - grid[0]
    hist, _ = np.histogram(x, bins=np.append(grid - 0.5 * step, grid[-1] + 0.5 * step))

    def smooth(width: float) -> np.ndarray:
        k = np.arange(-int(4 * width / step) - 1, int(4 * width / step) + 2) * step
        kern = np.exp(-0.5 * (k / width) ** 2)
        full = np.convolve(hist, kern / kern.sum(), mode="full")
        start = (kern.size - 1) // 2
        return full[start : start + hist.size]

    narrow, broad = smooth(0.02), smooth(0.3)
    ratio = narrow / np.maximum(broad, 1e-12)
    counts = narrow * (0.02 * np.sqrt(2 * np.pi) / step)
    is_peak = (ratio[1:-1] > ratio[:-2]) & (ratio[1:-1] >= ratio[2:]) & (counts[1:-1] >= 10)
    idx = np.flatnonzero(is_peak) + 1
    idx = idx[np.argsort(ratio[idx])[::-1]][:n_peaks]
    return [float(grid[i]) for i in idx if ratio[i] > 1.5]


def candidate_distances(
    data: StarData, *, distance_hint: float | None = None, n_grid: int = 48, n_hint: int = 13
) -> tuple[np.ndarray, list[float]]:
    """Candidate ``ln D``: ``n_grid`` spanning the stars' inverse parallaxes plus their overdensities.

    The stars with parallax S/N above 5 are used (all positive parallaxes
    when fewer than 10 have it). With ``distance_hint`` (pc), ``n_hint``
    distances within 15 % of it instead. Returns the distances and the
    overdensities among them.
    """
    real = data.real()
    w = np.asarray(data.parallax, float)[real]
    s = np.asarray(data.parallax_error, float)[real]
    good = w / s > 5
    if good.sum() < 10:
        good = w > 0
    if distance_hint is not None:
        return math.log(distance_hint) + np.linspace(-0.15, 0.15, n_hint), []
    inv = np.log(1000.0 / w[good]) if good.any() else np.array([math.log(1000.0)])
    lo, hi = np.quantile(inv, [0.002, 0.998])
    peaks = parallax_overdensities(inv)
    return np.concatenate([np.linspace(lo, hi, n_grid), peaks]), peaks


def _blocked(z: Array, data: StarData, *, model: ClusterModel) -> Array:
    """The log posterior, summed block by block: what the search's programs differentiate."""
    return log_posterior(z, data, model, blocked=True)


@functools.lru_cache(maxsize=16)
def value_and_grad(model: ClusterModel) -> Any:
    """The jitted ``(z, data) -> (log posterior, gradient)`` of a model (compiled once per model and shape)."""
    return Program("value_and_grad", jax.value_and_grad(functools.partial(_blocked, model=model)), model)


@functools.lru_cache(maxsize=16)
def _batched_value(model: ClusterModel) -> Any:
    return Program(
        "batched_value",
        jax.vmap(functools.partial(_blocked, model=model), in_axes=(0, None)),
        model,
    )


def score_candidates(z: np.ndarray, data: StarData, model: ClusterModel) -> np.ndarray:
    """The log posterior of every row of ``z`` (``-inf`` where not finite).

    Candidates are scored in fixed-size batches (up to 32, fewer for big
    fields so that a batch holds at most about 2 million candidate-star pairs).
    """
    fn = _batched_value(model)
    dtype = data.parallax.dtype
    m = z.shape[0]
    batch = int(np.clip(_SCORE_PAIRS // max(data.n_stars, 1), 1, _SCORE_BATCH))
    out = np.empty(m)
    for start in range(0, m, batch):
        idx = np.minimum(np.arange(start, start + batch), m - 1)  # fixed shape: one compile
        stop = min(start + batch, m)
        out[start:stop] = np.asarray(fn(jnp.asarray(z[idx], dtype), data), float)[: stop - start]
    return np.where(np.isfinite(out), out, -np.inf)


#: A polish stops once a full Newton step would raise the log posterior by less than this: the start is then
#: within about 0.15 posterior sds of the maximum (the decrement is half the squared step in posterior sds),
#: which is all the sampler's start and the Laplace covariance need; float32 sums of thousands of stars
#: resolve ln p to about 1e-3, and their gradients along weakly constrained directions (a field's mean
#: radial velocity, 5 km/s wide) are as noisy, so a much smaller bound is rounding, not ascent.
NEWTON_DECREMENT = 1e-2
#: Smallest curvature :func:`soft_inverse` keeps, relative to the largest, in coordinates scaled by the
#: Hessian's diagonal.
NEWTON_FLOOR = 1e-6


def soft_inverse(neg_hessian: np.ndarray) -> np.ndarray:
    """The inverse of ``-H`` with its curvatures taken by their absolute values and floored: saddle-free.

    The matrix is first scaled by its diagonal, ``S = D^-1/2 (-H) D^-1/2``, and the eigenvalues of ``S`` are
    replaced by their absolute values, floored at :data:`NEWTON_FLOOR` of the largest. The scaling keeps
    the signs of the curvatures (Sylvester's law of inertia) and makes the floor relative to each
    parameter's own curvature: the cluster model's raw curvatures span 1e-2 (the field's mean radial
    velocity, 5 km/s wide) to 2e5 (the cluster's distance), and a floor relative to the largest raw one
    cut the weak directions' variances (NGC 2437's field mean velocity: a Laplace sd of 2.1 km/s for a
    posterior sd of 5.4).

    Examples
    --------
    >>> a = np.diag([2e5, 0.03])
    >>> np.sqrt(np.diag(soft_inverse(a))).round(4)
    array([2.2000e-03, 5.7735e+00])
    """
    a = np.asarray(neg_hessian, float)
    d = np.sqrt(np.maximum(np.abs(np.diag(a)), 1e-12 * max(np.abs(np.diag(a)).max(), 1e-300)))
    lam, vec = np.linalg.eigh(a / np.outer(d, d))
    lam = np.maximum(np.abs(lam), NEWTON_FLOOR * max(np.abs(lam).max(), 1e-12))
    return (vec / lam) @ vec.T / np.outer(d, d)


@functools.lru_cache(maxsize=16)
def _hessian_program(model: ClusterModel) -> Any:
    return Program("hessian", jax.jacrev(jax.grad(functools.partial(_blocked, model=model))), model)


def hessian(z: np.ndarray, data: StarData, model: ClusterModel) -> np.ndarray:
    """The Hessian of the log posterior, differentiated twice in reverse mode (symmetrised).

    Exact up to float32 rounding. Central differences of float32 gradients
    were not: whitened by their inverse, the exact posterior precision of a
    2 500-star field had eigenvalues from 0.56 to 1.42 (all 1 when exact), and
    a 22 000-star field's was not even positive definite.
    """
    H = np.asarray(_hessian_program(model)(jnp.asarray(z, data.parallax.dtype), data), float)
    return 0.5 * (H + H.T)


class Polished(NamedTuple):
    """The end of :func:`polish`: ``z``, its log posterior and the Hessian it last used (at ``z``, or at the
    point one full Newton step of decrement below :data:`CHORD_DECREMENT` before it; ``None`` where it
    stopped otherwise)."""

    z: np.ndarray
    log_posterior: float
    hessian: np.ndarray | None


#: After a full Newton step whose decrement was below this (the step was under 1.4 posterior sds), the
#: next convergence check reuses that step's Hessian: one exact Hessian less per search.
CHORD_DECREMENT = 1.0


def polish(
    z0: np.ndarray,
    data: StarData,
    model: ClusterModel,
    *,
    max_iter: int = 50,
    decrement: float = 0.0,
) -> Polished:
    """Damped, saddle-free Newton ascent of the log posterior from ``z0`` (the step :func:`soft_inverse`
    times the gradient).

    It stops after ``max_iter`` steps, when a step changes neither the point
    nor the value, or when the Newton decrement ``g . H^-1 g / 2`` (what a
    full step would still gain on a quadratic) is below ``decrement``. After
    a short full step (:data:`CHORD_DECREMENT`) that check first uses the
    step's own Hessian, which the Laplace covariance then reuses.
    """
    vg = value_and_grad(model)
    dtype = data.parallax.dtype

    def at(x: np.ndarray) -> tuple[float, np.ndarray]:
        v, g = vg(jnp.asarray(x, dtype), data)
        return float(v), np.asarray(g, float)

    def newton(H: np.ndarray, g: np.ndarray) -> np.ndarray:
        try:
            # saddle-free: where the posterior curves upwards (a saddle) the step climbs at the scale of
            # that curvature too; a floor that shortens a weak direction's step makes the ascent linear
            return soft_inverse(-H) @ g
        except np.linalg.LinAlgError:
            return g * 1e-3

    x = np.asarray(z0, float)
    fx, g = at(x)
    H, short = None, False
    for _ in range(max_iter):
        if short and H is not None and 0.5 * float(g @ newton(H, g)) < decrement:
            break
        H = hessian(x, data, model)
        step = newton(H, g)
        gain = 0.5 * float(g @ step)
        if gain < decrement:
            break
        norm = np.linalg.norm(step)
        if norm > 1.0:
            step = step / norm
        t = 1.0
        while t > 1e-4:
            fn, gn = at(x + t * step)
            if np.isfinite(fn) and fn >= fx - 1e-6:
                break
            t *= 0.5
        else:
            break
        x, converged = x + t * step, abs(fn - fx) < 1e-4 and t * norm < 1e-4
        fx, g, short = fn, gn, bool(t == 1.0 and norm <= 1.0 and gain < CHORD_DECREMENT)
        if converged:
            H = None
            break
    else:
        H = None
    return Polished(x, fx, H)


def laplace_covariance(z: np.ndarray, data: StarData, model: ClusterModel) -> np.ndarray | None:
    """``(-H)^-1`` at ``z``; ``None`` when the Hessian is not negative definite."""
    try:
        H = hessian(z, data, model)
        if np.all(np.isfinite(H)) and np.all(np.linalg.eigvalsh(-H) > 0):
            return np.linalg.inv(-H)
    except np.linalg.LinAlgError:
        pass
    return None


def whitening(cov: np.ndarray | None, n: int) -> np.ndarray:
    """Cholesky factor of the Laplace covariance (a small ``n x n`` diagonal when there is none)."""
    return np.linalg.cholesky(cov) if cov is not None else np.diag(np.full(n, 0.05))
