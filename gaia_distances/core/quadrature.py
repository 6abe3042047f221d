"""Deterministic one-dimensional distance posteriors by adaptive quadrature.

For each star the posterior is ``p(r | w) ∝ p(r) N(w | 1000/r, s)`` with ``r``
in pc and the parallax ``w`` and its error ``s`` in mas. Work is done in
``u = ln r``:

1. *Bracket.* The likelihood holds all but ``exp(-k^2/2)`` of its peak inside a
   closed-form parallax interval
   (:func:`~gaia_distances.core.numerics.likelihood_bracket`), and the prior
   holds all but ``~1e-15`` of its mass inside a closed-form interval. Their
   intersection (their union when they conflict) bounds the posterior.
2. *Scan.* ``n_scan`` nodes over that bracket find where ``ln p`` is within
   ``scan_drop`` of its maximum; the fine grid spans that region plus one scan
   step on each side.
3. *Integrate.* ``n_nodes`` nodes on the fine grid. The cumulative integral uses
   the trapezoid rule with the Euler-Maclaurin end correction (error ``O(h^4)``;
   the density's derivative comes from forward-mode autodiff), and quantiles
   invert the cubic Hermite interpolant of the CDF (also ``O(h^4)``;
   :func:`~gaia_distances.core.numerics.invert_cdf`).
4. *Mode.* The grid maximum of ``ln p(r)`` is polished by Newton's method.

Everything is vectorised over stars and jit-compiled once per chunk shape
(:func:`~gaia_distances.core.numerics.padded_chunks`). The log density is
:func:`log_posterior_logr`, the one function the NUTS sampler and the plots
evaluate too.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gaia_distances.core.numerics import (
    ONE_SIGMA_QUANTILES,
    Array,
    Chunk,
    invert_cdf,
    likelihood_bracket,
    padded_chunks,
)
from gaia_distances.core.parallel import usable_cores
from gaia_distances.core.priors import GLOBAL_LOG_R_MAX, GLOBAL_LOG_R_MIN

__all__ = ["DistanceFlag", "log_posterior_logr", "summarize_posteriors", "x64_context"]


class DistanceFlag(enum.IntFlag):
    """Bits of the ``distance_flag`` column (0 means a clean result)."""

    OK = 0
    #: the parallax is missing or not finite; results are NaN
    NO_PARALLAX = 1
    #: the parallax error is missing, zero or negative; results are NaN
    BAD_ERROR = 2
    #: fractional parallax error above ``prior_dominated_threshold`` (or w <= 0)
    PRIOR_DOMINATED = 4
    #: the posterior has more than one significant peak
    MULTIMODAL = 8
    #: the prior and the likelihood barely overlap (strong tension)
    PRIOR_CONFLICT = 16
    #: the prior parameters for this row are missing or invalid; results are NaN
    INVALID_PRIOR = 32


def log_posterior_logr(log_r: Array, parallax: Array, parallax_error: Array, prior: Any) -> Array:
    """``ln p(ln r | w)`` up to a constant per star, at nodes ``log_r`` of shape ``(n, K)``.

    ``parallax`` and ``parallax_error`` (mas) and the prior's leaves have shape
    ``(n, 1)`` or broadcast against ``log_r``; ``r`` is in pc. The density is in
    ``ln r`` (it includes the Jacobian ``r``); divide by ``r`` for ``p(r | w)``.
    The likelihood's normalisation ``-ln(s sqrt(2 pi))``, constant per star, is
    left out. The quadrature, the per-star NUTS sampler and the posterior plots
    all evaluate this one function.

    Examples
    --------
    >>> import numpy as np
    >>> from gaia_distances.core import EDSDPrior
    >>> lp = log_posterior_logr(np.log([[500.0, 1000.0, 2000.0]]), np.array([[1.0]]),
    ...                         np.array([[0.1]]), EDSDPrior(np.array([[1350.0]])))
    >>> int(np.argmax(lp))
    1
    """
    inv_r = 1000.0 * jnp.exp(-log_r)
    z = (inv_r - parallax) / parallax_error
    return -0.5 * z * z + prior.log_prob_logr(log_r)


def _kernel(
    w: Array,
    s: Array,
    prior: Any,
    *,
    quantiles: tuple[float, ...],
    n_nodes: int,
    n_scan: int,
    k_like: float,
    scan_drop: float,
    log_eps: float,
    prior_dominated_threshold: float,
) -> tuple[Array, Array, Array]:
    dtype = w.dtype
    no_plx = ~jnp.isfinite(w)
    bad_err = ~(jnp.isfinite(s) & (s > 0))
    invalid = no_plx | bad_err
    w = jnp.where(invalid, 1.0, w)
    s = jnp.where(invalid, 0.1, s)

    # 1. bracket ---------------------------------------------------------
    ulo_l, uhi_l = likelihood_bracket(w, s, k_like)
    ulo_p, uhi_p = prior.log_support(log_eps)
    ulo_p = jnp.broadcast_to(ulo_p, w.shape).astype(dtype)
    uhi_p = jnp.broadcast_to(uhi_p, w.shape).astype(dtype)
    bad_prior = ~(jnp.isfinite(ulo_p) & jnp.isfinite(uhi_p) & (uhi_p > ulo_p))
    ulo_p = jnp.where(bad_prior, GLOBAL_LOG_R_MIN, ulo_p)
    uhi_p = jnp.where(bad_prior, GLOBAL_LOG_R_MAX, uhi_p)
    a = jnp.maximum(ulo_l, ulo_p)
    b = jnp.minimum(uhi_l, uhi_p)
    conflict = ~(b > a)
    a = jnp.where(conflict, jnp.minimum(ulo_l, ulo_p), a)
    b = jnp.where(conflict, jnp.maximum(jnp.minimum(uhi_l, GLOBAL_LOG_R_MAX), uhi_p), b)
    a = jnp.clip(a, GLOBAL_LOG_R_MIN, GLOBAL_LOG_R_MAX)
    b = jnp.clip(b, GLOBAL_LOG_R_MIN, GLOBAL_LOG_R_MAX)
    b = jnp.maximum(b, a + 1e-6)

    pb = jax.tree_util.tree_map(lambda p: jnp.asarray(p)[:, None], prior)
    wb, sb = w[:, None], s[:, None]
    logpost = partial(log_posterior_logr, parallax=wb, parallax_error=sb, prior=pb)

    # 2. scan --------------------------------------------------------------
    tc = jnp.linspace(0.0, 1.0, n_scan, dtype=dtype)
    uc = a[:, None] + (b - a)[:, None] * tc
    gc = logpost(uc)
    gc = jnp.where(jnp.isnan(gc), -jnp.inf, gc)
    gmax = jnp.max(gc, axis=1, keepdims=True)
    above = gc > gmax - scan_drop
    first = jnp.argmax(above, axis=1)
    last = n_scan - 1 - jnp.argmax(above[:, ::-1], axis=1)
    step = (b - a) / (n_scan - 1)
    ua = a + step * jnp.maximum(first - 1, 0)
    ub = a + step * jnp.minimum(last + 1, n_scan - 1)

    # 3. integrate ---------------------------------------------------------
    tf = jnp.linspace(0.0, 1.0, n_nodes, dtype=dtype)
    h = (ub - ua) / (n_nodes - 1)
    uf = ua[:, None] + (ub - ua)[:, None] * tf
    g, dg = jax.jvp(logpost, (uf,), (jnp.ones_like(uf),))
    g = jnp.where(jnp.isnan(g), -jnp.inf, g)
    gm = jnp.max(g, axis=1, keepdims=True)
    f = jnp.exp(g - gm)
    fp = jnp.where(f > 0, dg * f, 0.0)
    hb = h[:, None]
    trap = jnp.concatenate([jnp.zeros_like(f[:, :1]), jnp.cumsum(0.5 * (f[:, 1:] + f[:, :-1]), axis=1)], axis=1) * hb
    cdf = trap - hb * hb / 12.0 * (fp - fp[:, :1])
    z = cdf[:, -1:]
    cdf = cdf / z
    dens = f * (hb / z)  # dC/dt on each unit interval

    qs = []
    for q in quantiles:
        i, t = invert_cdf(cdf, q, dens)
        qs.append(jnp.exp(ua + (i + t) * h))
    qarr = jnp.stack(qs, axis=1)

    # 4. mode of p(r) = p(u) / r ---------------------------------------------
    phi = g - uf
    im = jnp.argmax(phi, axis=1)
    um = ua + im * h
    lo = ua + jnp.maximum(im - 1, 0) * h
    hi = ua + jnp.minimum(im + 1, n_nodes - 1) * h

    def d1(u: Array) -> Array:
        return jax.jvp(logpost, (u,), (jnp.ones_like(u),))[1]

    for _ in range(5):
        ub_ = um[:, None]
        g1, g2 = jax.jvp(d1, (ub_,), (jnp.ones_like(ub_),))
        g1, g2 = g1[:, 0] - 1.0, g2[:, 0]
        newton = jnp.where(g2 < 0, um - g1 / jnp.where(g2 < 0, g2, -1.0), um)
        um = jnp.clip(newton, lo, hi)
    mode = jnp.exp(um)

    # flags ----------------------------------------------------------------
    sig = f > 1e-2
    peaks = (f[:, 1:-1] > f[:, :-2]) & (f[:, 1:-1] >= f[:, 2:]) & sig[:, 1:-1]
    npeaks = jnp.sum(peaks, axis=1) + (f[:, 0] > f[:, 1]) * sig[:, 0] + (f[:, -1] > f[:, -2]) * sig[:, -1]
    frac = s / w
    flag = (
        no_plx * int(DistanceFlag.NO_PARALLAX)
        + bad_err * int(DistanceFlag.BAD_ERROR)
        + (~invalid & ((w <= 0) | (frac > prior_dominated_threshold))) * int(DistanceFlag.PRIOR_DOMINATED)
        + (~invalid & (npeaks > 1)) * int(DistanceFlag.MULTIMODAL)
        + (~invalid & conflict & ~bad_prior) * int(DistanceFlag.PRIOR_CONFLICT)
        + bad_prior * int(DistanceFlag.INVALID_PRIOR)
    ).astype(jnp.int32)
    nan_rows = invalid | bad_prior
    qarr = jnp.where(nan_rows[:, None], jnp.nan, qarr)
    mode = jnp.where(nan_rows, jnp.nan, mode)
    return qarr, mode, flag


_STATIC = (
    "quantiles",
    "n_nodes",
    "n_scan",
    "k_like",
    "scan_drop",
    "log_eps",
    "prior_dominated_threshold",
)
_kernel_jit = jax.jit(_kernel, static_argnames=_STATIC)


def x64_context(enabled: bool) -> Any:
    """A context manager setting JAX's x64 mode (thread-local) across JAX versions."""
    ctx = getattr(jax, "enable_x64", None)
    if ctx is None:  # pragma: no cover - older JAX
        from jax.experimental import disable_x64, enable_x64  # type: ignore[attr-defined]

        return enable_x64() if enabled else disable_x64()
    return ctx(enabled)


def summarize_posteriors(
    parallax: Array,
    parallax_error: Array,
    prior: Any,
    *,
    quantiles: Sequence[float] = ONE_SIGMA_QUANTILES,
    n_nodes: int = 128,
    n_scan: int = 48,
    chunk_size: int = 65536,
    n_threads: int | None = None,
    dtype: Any = None,
    k_like: float = 10.0,
    scan_drop: float = 30.0,
    log_eps: float = -34.5,
    prior_dominated_threshold: float = 0.2,
    progress: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Posterior quantiles, mode and flag for every star.

    Parameters
    ----------
    parallax, parallax_error
        Zero-point-corrected parallax and its standard error, mas, shape ``(n,)``.
        Negative and low signal-to-noise parallaxes are valid input.
    prior
        A prior from :mod:`gaia_distances.core.priors` whose parameter leaves
        have shape ``(n,)``.
    quantiles
        Probabilities at which to invert the posterior CDF; by default the
        15.866th, 50th and 84.134th percentiles
        (:data:`~gaia_distances.core.numerics.ONE_SIGMA_QUANTILES`).
    n_nodes, n_scan
        Fine-grid and scan-grid sizes per star.
    chunk_size
        Stars per compiled call; memory is ``O(chunk_size * n_nodes)``.
    n_threads
        Chunks dispatched concurrently (XLA releases the GIL). Defaults to the
        number of usable CPU cores.
    dtype
        ``numpy.float32`` or ``numpy.float64``. float64 switches on JAX's x64
        mode for this call only (thread-locally). Defaults to float64 when x64
        is enabled globally, else float32, which is about 3x faster on CPU and
        accurate to ~1e-5.
    progress
        Called with the number of stars finished after each chunk.

    Returns
    -------
    dict
        ``quantiles`` (n, len(quantiles)) in pc, ``mode`` (n,) in pc and
        ``flag`` (n,) with :class:`DistanceFlag` bits.

    Examples
    --------
    >>> import numpy as np
    >>> from gaia_distances.core import EDSDPrior, summarize_posteriors
    >>> out = summarize_posteriors(np.array([1.0]), np.array([0.01]),
    ...                            EDSDPrior(np.array([1000.0])))
    >>> bool(abs(out["quantiles"][0, 1] - 1000.0) < 1.0)
    True
    """
    w = np.asarray(parallax)
    s = np.asarray(parallax_error)
    n = w.shape[0]
    if dtype is None:
        dtype = np.float64 if jax.config.read("jax_enable_x64") else np.float32
    quantiles = tuple(float(q) for q in quantiles)
    out_q = np.full((n, len(quantiles)), np.nan, dtype=np.float64)
    out_mode = np.full(n, np.nan, dtype=np.float64)
    out_flag = np.zeros(n, dtype=np.int32)
    if n == 0:
        return {"quantiles": out_q, "mode": out_mode, "flag": out_flag}

    leaves, treedef = jax.tree_util.tree_flatten(prior)
    leaves = [np.broadcast_to(np.asarray(x, dtype=np.float64), (n,)) for x in leaves]
    static = dict(
        quantiles=quantiles,
        n_nodes=int(n_nodes),
        n_scan=int(n_scan),
        k_like=float(k_like),
        scan_drop=float(scan_drop),
        log_eps=float(log_eps),
        prior_dominated_threshold=float(prior_dominated_threshold),
    )
    use_x64 = np.dtype(dtype) == np.float64

    def run(chunk: Chunk) -> tuple[Chunk, Any]:
        idx = chunk.rows
        with x64_context(use_x64):
            wc = jnp.asarray(w[idx], dtype=dtype)
            sc = jnp.asarray(s[idx], dtype=dtype)
            pc = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(x[idx], dtype=dtype) for x in leaves])
            return chunk, jax.block_until_ready(_kernel_jit(wc, sc, pc, **static))

    chunks = list(padded_chunks(n, chunk_size))
    threads = n_threads or usable_cores()
    if threads > 1 and len(chunks) > 1:
        first = run(chunks[0])  # compiles once before fanning out
        pool = ThreadPoolExecutor(max_workers=threads)
        results: Iterator[tuple[Chunk, Any]] = itertools.chain([first], pool.map(run, chunks[1:]))
    else:
        pool = None
        results = map(run, chunks)
    try:
        for chunk, (q, mode, flag) in results:
            start, stop = chunk.start, chunk.stop
            m = stop - start
            out_q[start:stop] = np.asarray(q)[:m]
            out_mode[start:stop] = np.asarray(mode)[:m]
            out_flag[start:stop] = np.asarray(flag)[:m]
            if progress is not None:
                progress(m)
    finally:
        if pool is not None:
            pool.shutdown()
    return {"quantiles": out_q, "mode": out_mode, "flag": out_flag}
