"""Per-star distance posteriors sampled with NUTS (the validation method).

The stars are independent, so one NUTS run over a block of stars samples the
product of their posteriors; a diagonal mass matrix adapts one scale per star.
Sampling is done in ``u = ln(r / pc)`` with the log density of the quadrature,
:func:`~gaia_distances.core.quadrature.log_posterior_logr`, and the chains are
run by the package's one NUTS runner, :func:`~gaia_distances.core.sampling.run_chains`.

- :func:`per_star_settings`: the sampler's settings for this method;
- :func:`sample_log_distances`: draws of ``ln r`` with per-star R-hat and ESS,
  as a :class:`LogDistanceDraws`;
- :func:`histogram_mode`: the mode of ``p(r)`` estimated from the draws.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gaia_distances.core.numerics import Array
from gaia_distances.core.quadrature import log_posterior_logr
from gaia_distances.core.sampling import NutsSettings, nuts_settings, run_chains

__all__ = ["LogDistanceDraws", "histogram_mode", "per_star_settings", "sample_log_distances"]


class LogDistanceDraws(NamedTuple):
    """Draws of ``ln(r / pc)`` and their convergence diagnostics, per star.

    Attributes
    ----------
    samples
        Shape ``(num_chains, num_samples, n)``.
    r_hat
        Split R-hat per star, shape ``(n,)``; NaN with a single chain.
    ess
        Effective sample size per star, shape ``(n,)``.
    divergences
        Divergent transitions after warm-up, over all chains.
    """

    samples: np.ndarray
    r_hat: np.ndarray
    ess: np.ndarray
    divergences: int


def per_star_settings(
    *, num_warmup: int | None = None, num_samples: int | None = None, num_chains: int | None = None
) -> NutsSettings:
    """The NUTS settings of the per-star method: the ``"per_star"`` defaults, a diagonal mass matrix, tree depth 8.

    ``None`` takes the default from :data:`~gaia_distances.core.sampling.NUTS_DEFAULTS`.

    Examples
    --------
    >>> per_star_settings(num_samples=200)[:3]
    (500, 200, 2)
    """
    return nuts_settings(
        "per_star",
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        dense_mass=False,
        max_tree_depth=8,
    )


def _potential_gen(parallax: Array, parallax_error: Array, prior: Any) -> Callable[[Array], Array]:
    """The negative log posterior of all stars' ``ln r`` (a vector of length ``n``); leaves have shape ``(1, n)``."""

    def potential(u: Array) -> Array:
        return -jnp.sum(log_posterior_logr(u[None, :], parallax, parallax_error, prior))

    return potential


def sample_log_distances(
    parallax: np.ndarray,
    parallax_error: np.ndarray,
    prior: Any,
    u_init: np.ndarray,
    *,
    settings: NutsSettings | None = None,
    seed: int = 0,
    chain_method: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> LogDistanceDraws:
    """Draw ``ln(r / pc)`` for every star with NUTS.

    Parameters
    ----------
    parallax, parallax_error
        mas, shape ``(n,)``, all finite with positive errors.
    prior
        A core prior with leaves of shape ``(n,)``.
    u_init
        Starting ``ln r`` per star (e.g. the quadrature median); each chain
        starts from it jittered by 0.01.
    settings
        Default: :func:`per_star_settings`.
    seed
        Equal seeds give equal draws.
    chain_method
        As in :func:`~gaia_distances.core.sampling.run_chains`.
    progress
        Called with the number of iterations done; the total is
        :func:`~gaia_distances.core.sampling.chain_iterations`.

    Returns
    -------
    LogDistanceDraws

    Examples
    --------
    >>> import numpy as np
    >>> from gaia_distances.core import EDSDPrior
    >>> w, s = np.array([2.0, 0.5]), np.array([0.1, 0.2])
    >>> draws = sample_log_distances(w, s, EDSDPrior(np.full(2, 1350.0)), np.log(1000 / w),
    ...                              settings=per_star_settings(num_warmup=200, num_samples=200), seed=1)
    >>> draws.samples.shape, draws.r_hat.shape
    ((2, 200, 2), (2,))
    """
    from numpyro.diagnostics import effective_sample_size, split_gelman_rubin

    settings = per_star_settings() if settings is None else settings
    w = jnp.asarray(parallax)[None, :]
    s = jnp.asarray(parallax_error)[None, :]
    prior_row = jax.tree_util.tree_map(lambda p: jnp.asarray(p)[None, :], prior)
    n = w.shape[1]
    rng = np.random.default_rng(seed)
    jitter = 0.01 * rng.standard_normal((settings.num_chains, n))
    start = np.asarray(u_init, dtype=float)[None, :] + jitter
    inits = [jnp.asarray(row, dtype=w.dtype) for row in start]
    res = run_chains(
        _potential_gen,
        inits,
        (w, s, prior_row),
        settings,
        seed=seed,
        chain_method=chain_method,
        progress=progress,
    )
    draws = np.asarray(res.samples)  # (chains, samples, n)
    with np.errstate(all="ignore"):  # too few or constant draws: NaN, a failed check
        r_hat = np.asarray(split_gelman_rubin(draws), dtype=float) if draws.shape[1] >= 4 else np.full(n, np.nan)
        ess = np.asarray(effective_sample_size(draws), dtype=float)
    ess = np.where(ess >= 0, ess, np.nan)  # an estimate below zero is no estimate
    return LogDistanceDraws(draws, r_hat, ess, int(np.sum(res.diverging)))


def histogram_mode(log_r: np.ndarray, *, bins: int = 128, smooth: float = 2.0) -> np.ndarray:
    """Mode of ``p(r)`` estimated from ``ln r`` samples (columns are stars).

    Each star's samples are histogrammed in ``ln r``, smoothed with a Gaussian
    of ``smooth`` bins, divided by ``r`` (the Jacobian back to ``p(r)``) and the
    peak is refined by a parabola through the three highest bins.

    Parameters
    ----------
    log_r
        Samples of ``ln(r / pc)``, shape ``(draws, n)``.
    bins, smooth
        Histogram bins per star, and the width (in bins) of the smoothing kernel.

    Returns
    -------
    numpy.ndarray
        The mode in pc, shape ``(n,)``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(np.log(1000.0), 0.05, (20000, 1))
    >>> bool(abs(histogram_mode(x)[0] / (1000.0 * np.exp(-0.05**2)) - 1) < 0.01)
    True
    """
    lo = log_r.min(axis=0)
    hi = log_r.max(axis=0)
    width = np.maximum(hi - lo, 1e-12) / bins
    idx = np.clip(((log_r - lo) / width).astype(int), 0, bins - 1)
    n = log_r.shape[1]
    counts = np.zeros((n, bins))
    np.add.at(counts, (np.broadcast_to(np.arange(n), idx.shape), idx), 1.0)
    k = np.arange(-int(4 * smooth), int(4 * smooth) + 1)
    kern = np.exp(-0.5 * (k / smooth) ** 2)
    pad = len(k) // 2
    padded = np.pad(counts, ((0, 0), (pad, pad)))
    smoothed = np.stack([np.convolve(row, kern, mode="valid") for row in padded])
    centres = lo[:, None] + (np.arange(bins)[None, :] + 0.5) * width[:, None]
    dens_r = smoothed * np.exp(-centres)
    j = np.clip(np.argmax(dens_r, axis=1), 1, bins - 2)
    rows = np.arange(n)
    y0, y1, y2 = dens_r[rows, j - 1], dens_r[rows, j], dens_r[rows, j + 1]
    denom = y0 - 2 * y1 + y2
    off = np.where(denom < 0, 0.5 * (y0 - y2) / np.where(denom < 0, denom, -1.0), 0.0)
    return np.exp(centres[rows, j] + np.clip(off, -1, 1) * width)
