"""``fit_cluster``: a cluster over a field, fitted to a table of parallaxes.

The model (:mod:`gaia_distances.core.cluster`) is that of the reference M67
analysis: the cluster is a Gaussian in ``ln r`` (``D``, ``sigma``), the field an
exponentially decreasing space density with free length scale ``L``, and ``Q``
is the cluster fraction. ``method="marginal"`` (default) integrates every
star's distance out of the likelihood and samples the four population
parameters with NUTS; ``method="joint"`` samples one latent distance per star,
as the reference does, and is kept for validation.
"""

from __future__ import annotations

import enum
import functools
import logging
import math
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from astropy import units as u
from astropy.table import QTable, Table

from gaia_distances.columns import (
    add_column,
    column_values,
    corrected_parallax,
    update_provenance,
    warn,
    zero_point_record,
)
from gaia_distances.core import cluster as core
from gaia_distances.core.parallel import usable_cores
from gaia_distances.core.sampling import aot_call, chain_runner, precompile, run_batched_chains, run_chains
from gaia_distances.errors import GaiaDistancesError
from gaia_distances.io import as_table

__all__ = ["ClusterFit", "ClusterFits", "ClusterFlag", "ClusterPriors", "fit_cluster", "fit_clusters"]

log = logging.getLogger(__name__)

ClusterPriors = core.ClusterPriors

#: Diagnostic thresholds: a warning names the parameters that fail them.
RHAT_MAX = 1.01
ESS_MIN = 400
MIN_STARS = 20

_PARAMS = ("D", "sigma", "Q", "L")
_UNITS = {"D": u.pc, "sigma": u.pc, "Q": u.dimensionless_unscaled, "L": u.pc, "sigma_log": u.dimensionless_unscaled}
_DESCRIPTIONS = {
    "D": "cluster distance exp(log_D)",
    "sigma": "cluster depth exp(log_sigma + log_D) (the reference's approx_size)",
    "Q": "cluster fraction",
    "L": "field EDSD length scale",
    "sigma_log": "cluster width in ln r, exp(log_sigma)",
}


class ClusterFlag(enum.IntFlag):
    """Bits of the ``cluster_flag`` column (0: the star was used in the fit)."""

    OK = 0
    #: no parallax, or a missing, zero or negative error: excluded, results NaN
    NO_PARALLAX = 1
    #: outside ``parallax_limits``: excluded, results NaN
    OUTSIDE_LIMITS = 2
    #: (fit_clusters) the row's cluster could not be fitted, or its group key is missing
    NOT_FITTED = 4


@dataclass
class ClusterFit:
    """The result of :func:`fit_cluster`.

    Attributes
    ----------
    table
        The input rows, in order, with ``membership_prob``,
        ``cluster_distance_median``/``_lo``/``_hi`` (pc) and ``cluster_flag``.
    posterior
        Draws of ``D``, ``sigma`` (pc), ``sigma_log``, ``Q`` and ``L`` (pc),
        each of shape (chains, draws).
    diagnostics
        Divergences, R-hat, bulk and tail ESS, wall time and the warnings issued.
    """

    table: QTable
    posterior: dict[str, np.ndarray]
    diagnostics: dict[str, Any]
    method: str
    priors: core.ClusterPriors
    _model_args: dict[str, Any] = field(default_factory=dict, repr=False)

    def summary(self) -> Table:
        """D, sigma (pc), Q, L: mean, sd, 16/50/84 %, ess_bulk, ess_tail, r_hat."""
        import arviz as az

        rows = []
        for name in (*_PARAMS, "sigma_log"):
            x = self.posterior[name]
            ess_b = float(az.ess(x, method="bulk")) if x.shape[1] > 3 else math.nan
            ess_t = float(az.ess(x, method="tail")) if x.shape[1] > 3 else math.nan
            rhat = float(az.rhat(x)) if x.shape[0] > 1 and x.shape[1] > 3 else math.nan
            p16, p50, p84 = np.percentile(x, [15.865525, 50.0, 84.134475])
            rows.append(
                (
                    name,
                    float(np.mean(x)),
                    float(np.std(x)),
                    p16,
                    p50,
                    p84,
                    ess_b,
                    ess_t,
                    rhat,
                    str(_UNITS[name]) or "",
                    _DESCRIPTIONS[name],
                )
            )
        t = Table(
            rows=rows,
            names=(
                "parameter",
                "mean",
                "sd",
                "p16",
                "p50",
                "p84",
                "ess_bulk",
                "ess_tail",
                "r_hat",
                "unit",
                "description",
            ),
        )
        for c in ("mean", "sd", "p16", "p50", "p84", "ess_bulk", "ess_tail"):
            t[c].format = ".4g"
        t["r_hat"].format = ".4f"
        t.meta["method"] = self.method
        return t

    @property
    def inference_data(self) -> Any:
        """The posterior as an arviz ``InferenceData`` (with sampler statistics)."""
        import arviz as az

        stats = {"diverging": self.diagnostics["_diverging"], "n_steps": self.diagnostics["_num_steps"]}
        return az.from_dict(
            posterior=self.posterior, sample_stats=stats, attrs={"method": self.method, "package": "gaia_distances"}
        )

    def to_netcdf(self, path: str) -> str:
        """Write :attr:`inference_data` to a netCDF file; returns the path."""
        return str(self.inference_data.to_netcdf(path))

    def predictive(self, kind: str = "posterior", *, num_samples: int = 100, seed: int = 0) -> np.ndarray:
        """Simulated parallax catalogues (mas), shape (num_samples, n_fitted_stars).

        ``kind="posterior"`` draws population parameters from the posterior,
        ``"prior"`` from the prior; distances and parallaxes follow the model
        with each fitted star's own error and zero point.
        """
        from numpyro.infer import Predictive

        err = self._model_args["parallax_error"]
        zp = self._model_args["zero_point"]
        key = jax.random.PRNGKey(seed)
        if kind == "prior":
            pred = Predictive(core.joint_model, num_samples=num_samples)
        elif kind == "posterior":
            flat = {k: np.asarray(v).reshape(-1) for k, v in self._unconstrained.items()}
            idx = np.random.default_rng(seed).choice(len(flat["log_L"]), size=num_samples, replace=True)
            pred = Predictive(core.joint_model, posterior_samples={k: v[idx] for k, v in flat.items()})
        else:
            raise ValueError(f"kind must be 'posterior' or 'prior'; got {kind!r}")
        out = pred(key, jnp.asarray(err), None, jnp.asarray(zp), self.priors)
        return np.asarray(out["parallax"])

    @property
    def _unconstrained(self) -> dict[str, np.ndarray]:
        return self._model_args["unconstrained"]

    def plot(self, kind: str = "overview", **kwargs: Any) -> Any:
        """A figure of this fit; needs the ``plot`` extra.

        ``kind``: ``"overview"`` (CMD, sky map, distance posteriors and the
        parallax predictive check), ``"corner"``, ``"parallax"``, ``"cmd"``,
        ``"sky"`` or ``"distances"``. ``kwargs`` go to the function in
        :mod:`gaia_distances.plotting`.
        """
        from gaia_distances import plotting

        makers = {
            "overview": lambda: plotting.overview(self, **kwargs),
            "corner": lambda: plotting.corner_plot(self, **kwargs),
            "parallax": lambda: plotting.parallax_predictive(self, **kwargs),
            "cmd": lambda: plotting.colour_magnitude(self.table, **kwargs),
            "sky": lambda: plotting.sky_map(self.table, **kwargs),
            "distances": lambda: plotting.distance_posteriors(self.table, **kwargs),
        }
        if kind not in makers:
            raise ValueError(f"kind must be one of {sorted(makers)}; got {kind!r}")
        return makers[kind]()

    def report(self, directory: str, **kwargs: Any) -> Any:
        """Write PNGs and ``report.md`` (summary, diagnostics, figures); returns its path.

        See :func:`gaia_distances.plotting.write_report`.
        """
        from gaia_distances.plotting import write_report

        return write_report(self, directory, **kwargs)

    @classmethod
    def from_table(cls, table: Any, posterior: str | Any) -> ClusterFit:
        """Rebuild a fit from the table :func:`fit_cluster` returned and its saved posterior.

        ``table`` must keep its ``meta["gaia_distances"]["cluster"]`` provenance
        (ECSV, FITS and the other formats of :func:`~gaia_distances.write_table`
        do); ``posterior`` is the netCDF file of :meth:`to_netcdf` or an arviz
        ``InferenceData``. The rebuilt fit supports :meth:`summary`,
        :meth:`predictive`, :meth:`plot` and :meth:`report`.
        """
        import arviz as az

        out = as_table(table)
        prov = out.meta.get("gaia_distances", {}).get("cluster")
        if not prov or "cluster_flag" not in out.colnames:
            raise GaiaDistancesError("the table has no fit_cluster provenance or cluster_flag column")
        idata = az.from_netcdf(posterior) if isinstance(posterior, str) else posterior
        post = {k: np.asarray(idata.posterior[k]) for k in (*_PARAMS, "sigma_log")}
        priors = core.ClusterPriors(**prov["priors"])
        limits = prov.get("parallax_limits")
        # the stars the fit used, selected again exactly as fit_cluster did
        stars = _select_stars(out, prov.get("zero_point_arg"), tuple(limits) if limits else None)
        log_D = np.log(post["D"])
        if priors.depth_prior == "size":
            lo, hi = math.log(priors.size_min_pc), math.log(priors.size_max_pc)
            frac = np.clip((np.log(post["sigma"]) - lo) / (hi - lo), 1e-12, 1 - 1e-12)
            depth = np.log(frac / (1.0 - frac))
        else:
            depth = np.log(post["sigma_log"])
        z = np.stack([np.log(post["L"]), log_D, depth, np.log(post["Q"] / (1.0 - post["Q"]))], axis=-1)
        stats = getattr(idata, "sample_stats", None)
        diverging = np.asarray(stats["diverging"]) if stats is not None else np.zeros(post["D"].shape, bool)
        steps = np.asarray(stats["n_steps"]) if stats is not None else np.ones(post["D"].shape)
        fit = cls(
            table=out,
            posterior=post,
            diagnostics={},
            method=str(idata.posterior.attrs.get("method", prov.get("method", "marginal"))),
            priors=priors,
            _model_args=_model_args(stars, z, priors),
        )
        saved = prov.get("diagnostics", {})
        res = {"diverging": diverging, "num_steps": steps}
        with warnings.catch_warnings():  # the warnings were issued when the fit ran
            warnings.simplefilter("ignore")
            fit.diagnostics = _diagnose(
                fit, fit.summary(), res, float(saved.get("wall_time_s", math.nan)), stars.w.size
            )
        return fit


def _split(z: np.ndarray, priors: core.ClusterPriors) -> dict[str, np.ndarray]:
    names = core.unconstrained_names(priors)
    return {name: z[..., i] for i, name in enumerate(names)}


def _population_draws(z: np.ndarray, priors: core.ClusterPriors) -> dict[str, np.ndarray]:
    log_L, log_D, log_sigma, Q = core.to_population(z, priors, xp=np)
    return {
        "D": np.exp(log_D),
        "sigma": np.exp(log_sigma + log_D),
        "sigma_log": np.exp(log_sigma),
        "Q": Q,
        "L": np.exp(log_L),
    }


def fit_cluster(
    table: Any,
    *,
    method: str = "marginal",
    priors: core.ClusterPriors | None = None,
    zero_point: float | str | None = None,
    parallax_limits: tuple[float, float] | None = None,
    distance_hint: float | None = None,
    num_warmup: int | None = None,
    num_samples: int | None = None,
    num_chains: int | None = None,
    target_accept_prob: float = 0.8,
    seed: int = 0,
    progress: bool | None = None,
    n_quantile_draws: int = 32,
    n_membership_draws: int = 400,
) -> ClusterFit:
    """Fit the hierarchical cluster + field model to a table of parallaxes.

    Parameters
    ----------
    table
        Anything :func:`~gaia_distances.load_table` accepts, with
        ``parallax_error`` and ``parallax_corrected`` or ``parallax``.
    method
        ``"marginal"`` (default): distances integrated out, NUTS over
        ``(log_D, log_sigma, Q, log_L)``. ``"joint"``: one latent distance per
        star (the reference model; slow).
    priors
        :class:`ClusterPriors`; defaults to the reference analysis.
        ``ClusterPriors.physical()`` puts the depth prior on the cluster's size
        in pc, which keeps a small cluster from swallowing a big field.
    zero_point
        As in :func:`~gaia_distances.estimate_distances`.
    parallax_limits
        ``(lo, hi)`` in mas: fit only stars whose catalogue ``parallax`` lies
        strictly inside (the reference uses ``(0.2, 3.0)``); others are kept
        in the table, flagged and given NaN results.
    distance_hint
        A rough cluster distance (pc) to start the sampler near.
    num_warmup, num_samples, num_chains
        Defaults: marginal 400 / 1000 / max(2, cores) chains; joint 2000 /
        4000 / 2 (the reference settings).
    target_accept_prob, seed
        NUTS settings; equal seeds give equal results.
    progress
        Show NUTS progress bars (default: only for ``method="joint"``).
    n_quantile_draws, n_membership_draws
        Posterior draws averaged (Rao-Blackwellised) for each star's
        cluster-model distance quantiles and membership probability.

    Returns
    -------
    ClusterFit

    Examples
    --------
    >>> import gaia_distances as gd
    >>> t = gd.simulate_field(1500, n_cluster=500, seed=2)
    >>> fit = gd.fit_cluster(t, zero_point="parallax_zeropoint_true", num_samples=300, seed=1)
    >>> bool(800 < fit.summary()["mean"][0] < 900)
    True
    """
    t_start = time.perf_counter()
    priors = core.ClusterPriors() if priors is None else priors
    if method not in ("marginal", "joint"):
        raise ValueError(f"method must be 'marginal' or 'joint'; got {method!r}")
    stars = _select_stars(table, zero_point, parallax_limits)
    w, s, zp_used = stars.w, stars.s, stars.zp_used
    n_used = w.size

    cores = usable_cores()
    if num_chains is None:
        num_chains = max(2, min(4, cores)) if method == "marginal" else 2
    if num_warmup is None:
        num_warmup = 400 if method == "marginal" else 2000
    if num_samples is None:
        num_samples = 1000 if method == "marginal" else 4000
    if progress is None:
        progress = method == "joint"

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    data = core.prepare_star_data(w, s)
    timings["prepare_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    dt = data.parallax.dtype
    pool = ThreadPoolExecutor(max_workers=1)
    if method == "marginal":
        # compile the sampler while the MAP search runs
        example = (jnp.zeros(4, dt), jnp.eye(4, dtype=dt), data)
        compiling = pool.submit(
            chain_runner,
            core.whitened_potential_gen(priors),
            jnp.zeros(4, dt),
            example,
            num_warmup=num_warmup,
            num_samples=num_samples,
            target_accept_prob=target_accept_prob,
            n_chains=num_chains,
        )
    z_map, _, cov = core.find_map(data, priors, distance_hint=distance_hint)
    if method == "marginal":
        n_draws = num_chains * num_samples
        _precompile_per_star(
            data,
            priors,
            grid_width=_GRID_WIDTH,
            n_member=min(n_draws, n_membership_draws),
            n_quant=min(n_draws, n_quantile_draws),
        )
        compiling.result()
    pool.shutdown()
    timings["map_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    scale = np.sqrt(np.diag(cov)) if cov is not None else np.full(4, 0.01)
    inits = [z_map + 0.5 * scale * rng.standard_normal(4) for _ in range(num_chains)]
    log.info("fit_cluster: %d stars, MAP D = %.1f pc", n_used, math.exp(z_map[1]))

    if method == "marginal":
        # Sample in coordinates whitened by the Laplace approximation at the
        # MAP: NumPyro's mass-matrix adaptation shrinks towards 1e-3 * I, which
        # would otherwise swamp parameters as tight as ln D (sd ~ 1e-3).
        chol = _whitening(cov)
        x_inits = [jnp.asarray(0.5 * rng.standard_normal(4), dt) for _ in range(num_chains)]
        res = run_chains(
            core.whitened_potential_gen(priors),
            x_inits,
            (jnp.asarray(z_map, dt), jnp.asarray(chol, dt), data),
            num_warmup=num_warmup,
            num_samples=num_samples,
            seed=seed,
            target_accept_prob=target_accept_prob,
            progress=progress,
        )
        x = np.asarray(res["samples"], dtype=float)  # (chains, draws, 4)
        z = z_map + x @ chol.T
        r_draws = None
    else:
        z, r_draws, res = _run_joint(
            w,
            s,
            zp_used,
            priors,
            inits,
            z_map,
            num_warmup=num_warmup,
            num_samples=num_samples,
            seed=seed,
            target_accept_prob=target_accept_prob,
            progress=progress,
        )

    timings["sampling_s"] = time.perf_counter() - t0
    settings = {"num_warmup": num_warmup, "num_samples": num_samples, "num_chains": num_chains, "seed": seed}
    return _finish(
        stars,
        z,
        r_draws,
        res,
        data,
        priors=priors,
        method=method,
        settings=settings,
        zero_point=zero_point,
        parallax_limits=parallax_limits,
        n_membership_draws=n_membership_draws,
        n_quantile_draws=n_quantile_draws,
        t_start=t_start,
        timings=timings,
    )


@dataclass
class _Stars:
    """The rows a cluster fit uses: the output table, flags and the fitted stars' values (mas)."""

    out: QTable
    flag: np.ndarray
    used: np.ndarray
    w: np.ndarray  # corrected parallax of the fitted stars
    s: np.ndarray  # their errors
    zp_used: np.ndarray  # their zero points (catalogue parallax - w)
    zp_source: str


def _model_args(stars: _Stars, z: np.ndarray, priors: core.ClusterPriors) -> dict[str, Any]:
    """What :meth:`ClusterFit.predictive` and the plots need: the fitted stars and the unconstrained draws."""
    return {
        "parallax": stars.w + stars.zp_used,  # the catalogue parallax
        "parallax_error": stars.s,
        "zero_point": stars.zp_used,
        "unconstrained": _split(z, priors),
    }


def _select_stars(table: Any, zero_point: Any, parallax_limits: tuple[float, float] | None) -> _Stars:
    out = as_table(table)
    plx, zp_source = corrected_parallax(out, zero_point, step="fit_cluster")
    err = column_values(out, "parallax_error", u.mas)
    flag = np.zeros(len(out), dtype=np.int16)
    flag[~(np.isfinite(plx) & np.isfinite(err) & (err > 0))] |= ClusterFlag.NO_PARALLAX
    raw = column_values(out, "parallax", u.mas) if "parallax" in out.colnames else None
    if parallax_limits is not None:
        lo, hi = parallax_limits
        cut = raw if raw is not None else plx  # the catalogue parallax, as in the reference cuts
        inside = (cut > lo) & (cut < hi)
        flag[~inside & (flag == 0)] |= ClusterFlag.OUTSIDE_LIMITS
    used = flag == 0
    n_used = int(used.sum())
    if n_used < MIN_STARS:
        raise GaiaDistancesError(
            f"fit_cluster needs at least {MIN_STARS} stars with a finite parallax and a positive error"
            f"{' inside parallax_limits' if parallax_limits else ''}; {n_used} of {len(out)} qualify"
        )
    w, s = plx[used], err[used]
    zp_used = raw[used] - w if raw is not None else np.zeros(n_used)
    zp_used = np.where(np.isfinite(zp_used), zp_used, 0.0)
    return _Stars(out, flag, used, w, s, zp_used, zp_source)


def _finish(
    stars: _Stars,
    z: np.ndarray,
    r_draws: np.ndarray | None,
    res: dict[str, Any],
    data: core.StarData,
    *,
    priors: core.ClusterPriors,
    method: str,
    settings: dict[str, Any],
    zero_point: Any,
    parallax_limits: tuple[float, float] | None,
    n_membership_draws: int,
    n_quantile_draws: int,
    t_start: float,
    timings: dict[str, float],
) -> ClusterFit:
    """Population draws ``z`` (chains, draws, 4) -> a ClusterFit with per-star columns and diagnostics."""
    t0 = time.perf_counter()
    out, flag, used, w, s = stars.out, stars.flag, stars.used, stars.w, stars.s
    n_used = int(used.sum())
    dt = data.parallax.dtype
    posterior = _population_draws(z, priors)
    fit = ClusterFit(
        table=out,
        posterior=posterior,
        diagnostics={},
        method=method,
        priors=priors,
        _model_args=_model_args(stars, z, priors),
    )
    # per-star results --------------------------------------------------------
    flat = z.reshape(-1, 4)
    thin = flat[np.linspace(0, len(flat) - 1, min(len(flat), n_membership_draws)).astype(int)]
    member = np.full(len(out), np.nan)
    dist_q = np.full((len(out), 3), np.nan)
    if method == "marginal" or r_draws is None:
        membership, _ = core.per_star_functions(priors, _Q_LEVELS)
        member[used] = np.asarray(aot_call(membership, jnp.asarray(thin, dt), data))[:n_used]
        qd = flat[np.linspace(0, len(flat) - 1, min(len(flat), n_quantile_draws)).astype(int)]
        sig_max = float(np.max(posterior["sigma_log"]))
        grid = core.posterior_distance_grid(
            w, s, float(np.median(np.log(posterior["D"]))), sig_max, data.field.L_range()
        )
        grid = grid[np.minimum(np.arange(data.parallax.shape[0]), n_used - 1)]  # padded data (fit_clusters)
        dist_q[used] = _chunked_quantiles(qd, data, priors, grid)[:n_used]
    else:
        member[used], dist_q[used] = _joint_per_star(r_draws, z, priors)

    _add_star_columns(
        out,
        member,
        dist_q,
        flag,
        member_description="posterior probability of cluster membership (NaN: not fitted)",
        flag_description="ClusterFlag bits: 1 no parallax, 2 outside parallax_limits",
    )

    timings["per_star_s"] = time.perf_counter() - t0
    wall = time.perf_counter() - t_start
    summ = fit.summary()
    fit.diagnostics = _diagnose(fit, summ, res, wall, n_used)
    fit.diagnostics["timings"] = timings
    update_provenance(
        out,
        "cluster",
        {
            "method": method,
            "priors": dict(priors._asdict()),
            "zero_point": stars.zp_source,
            "zero_point_arg": zero_point_record(zero_point),
            "parallax_limits": list(parallax_limits) if parallax_limits else None,
            "n_stars_fitted": n_used,
            **settings,
            "summary": {str(r["parameter"]): {"mean": float(r["mean"]), "sd": float(r["sd"])} for r in summ},
            "diagnostics": {k: v for k, v in fit.diagnostics.items() if not k.startswith("_")},
        },
    )
    return fit


_Q_LEVELS = (0.5, 0.158655, 0.841345)
_GRID_WIDTH = 64 + 48 + 32  # nodes of core.posterior_distance_grid
_CHUNK = 4096


def _precompile_per_star(
    data: core.StarData, priors: core.ClusterPriors, *, grid_width: int, n_member: int, n_quant: int
) -> None:
    membership, quant = core.per_star_functions(priors, _Q_LEVELS)
    dt = data.parallax.dtype
    precompile(membership, jnp.zeros((n_member, 4), dt), data)
    _, idx, sub = next(_star_chunks(data))
    precompile(quant, jnp.zeros((n_quant, 4), dt), sub, jnp.zeros((idx.size, grid_width), dt))


def _chunked_quantiles(
    qd: np.ndarray, data: core.StarData, priors: core.ClusterPriors, grid: np.ndarray, chunk: int = _CHUNK
) -> np.ndarray:
    _, fn = core.per_star_functions(priors, _Q_LEVELS)
    out = np.empty((grid.shape[0], 3))
    dt = data.parallax.dtype
    zq = jnp.asarray(qd, dt)
    for rows, idx, sub in _star_chunks(data, chunk):
        q = aot_call(fn, zq, sub, jnp.asarray(grid[idx], dt))
        out[rows] = np.asarray(q)[: rows.stop - rows.start]
    return out


def _star_chunks(data: core.StarData, chunk: int = _CHUNK) -> Iterator[tuple[slice, np.ndarray, core.StarData]]:
    """``(rows, idx, sub)`` per chunk: output slice, padded row indices and the data at them.

    Every chunk has the same size (the last is padded by repeating its final
    row), a power of two for small tables, so one compiled program serves all.
    """
    n = data.parallax.shape[0]
    chunk = min(chunk, 1 << max(4, (n - 1).bit_length()))
    for start in range(0, n, chunk):
        idx = np.minimum(np.arange(start, start + chunk), n - 1)
        sub = jax.tree_util.tree_map(lambda x, i=idx: x[i] if np.ndim(x) and np.shape(x)[0] == n else x, data)
        yield slice(start, min(start + chunk, n)), idx, sub


def _run_joint(
    w: np.ndarray,
    s: np.ndarray,
    zp: np.ndarray,
    priors: core.ClusterPriors,
    inits: list[np.ndarray],
    z_map: np.ndarray,
    *,
    num_warmup: int,
    num_samples: int,
    seed: int,
    target_accept_prob: float,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    from gaia_distances.core.priors import EDSDPrior
    from gaia_distances.core.quadrature import summarize_posteriors

    raw = w + zp
    args = (jnp.asarray(s), jnp.asarray(raw), jnp.asarray(zp), priors)
    names = core.unconstrained_names(priors)
    L_map = math.exp(z_map[0])
    r0 = summarize_posteriors(w, s, EDSDPrior(np.full(len(w), L_map)))["quantiles"][:, 1]
    r0 = np.where(np.isfinite(r0), r0, 1000.0)

    def as_dict(z: np.ndarray) -> dict[str, Any]:
        d = {name: jnp.asarray(z[i]) for i, name in enumerate(names)}
        d["r"] = jnp.asarray(np.log(r0))
        return d

    # a diagonal mass matrix, as in the reference (a dense one has n_stars^2 entries)
    res = run_chains(
        _joint_potential_gen(priors),
        [as_dict(z) for z in inits],
        args[:3],
        dense_mass=False,
        num_warmup=num_warmup,
        num_samples=num_samples,
        seed=seed,
        target_accept_prob=target_accept_prob,
        progress=progress,
    )
    smp = res["samples"]
    z = np.stack([np.asarray(smp[name], float) for name in names], axis=-1)
    r = np.exp(np.asarray(smp["r"], float))  # unconstrained -> pc
    return z, r, res


@functools.lru_cache(maxsize=16)
def _joint_potential_gen(priors: core.ClusterPriors) -> Any:
    from numpyro.infer.util import potential_energy

    def gen(err: Any, plx: Any, zp: Any) -> Any:
        return lambda p: potential_energy(core.joint_model, (err, plx, zp, priors), {}, p)

    return gen


def _joint_per_star(r: np.ndarray, z: np.ndarray, priors: core.ClusterPriors) -> tuple[np.ndarray, np.ndarray]:
    flat_r = r.reshape(-1, r.shape[-1])
    log_L, log_D, log_sigma, Q = (x[:, None] for x in core.to_population(z.reshape(-1, 4), priors, xp=np))
    log_cl, log_fd = (np.asarray(x) for x in core.mixture_log_prior_u(np.log(flat_r), log_L, log_D, log_sigma, Q))
    member = np.mean(np.exp(log_cl - np.logaddexp(log_cl, log_fd)), axis=0)
    q = np.percentile(flat_r, [50.0, 15.865525, 84.134475], axis=0).T
    return member, q


def _diagnose(fit: ClusterFit, summ: Table, res: dict[str, Any], wall: float, n_used: int) -> dict[str, Any]:
    div = int(np.sum(res["diverging"]))
    rhat = {str(r["parameter"]): float(r["r_hat"]) for r in summ}
    ess = {str(r["parameter"]): float(r["ess_bulk"]) for r in summ}
    problems = []
    bad_rhat = [k for k in _PARAMS if rhat[k] > RHAT_MAX]
    bad_ess = [k for k in _PARAMS if ess[k] < ESS_MIN]
    if bad_rhat:
        problems.append(f"R-hat > {RHAT_MAX} for {', '.join(bad_rhat)}")
    if bad_ess:
        problems.append(f"bulk ESS < {ESS_MIN} for {', '.join(bad_ess)}")
    if div:
        problems.append(f"{div} divergent transitions")
    # chains that sit in different modes
    d_chain = np.log(fit.posterior["D"]).mean(axis=1)
    d_sd = np.log(fit.posterior["D"]).std()
    if len(d_chain) > 1 and np.ptp(d_chain) > 5 * max(d_sd, 1e-12) and "D" in bad_rhat:
        problems.append(
            "the chains disagree on D (chain means "
            + ", ".join(f"{math.exp(x):.0f}" for x in d_chain)
            + " pc): the posterior is multimodal; pass distance_hint= or ClusterPriors.physical()"
        )
    q = fit.posterior["Q"]
    if np.percentile(q, 84) * n_used < 3:
        problems.append(
            f"no cluster signal: Q piles at 0 (84th percentile {np.percentile(q, 84):.2g}, "
            f"fewer than 3 expected members among {n_used} stars)"
        )
    sig = float(np.median(fit.posterior["sigma_log"]))
    if sig > 0.25:
        problems.append(
            f"no cluster signal: the cluster component is as broad as a field (sigma = {sig:.2f} in ln r, "
            f"i.e. {100 * sig:.0f} % of D), so it models field structure rather than a cluster; "
            "try ClusterPriors.physical() or distance_hint="
        )
    if np.percentile(q, 16) > 0.97:
        problems.append(
            "Q piles at 1: the table looks like cluster members only, so the field length scale L "
            "is constrained by its prior alone; read L with care"
        )
    for p in problems:
        warn(f"fit_cluster ({fit.method}): {p}.")
    return {
        "divergences": div,
        "r_hat": rhat,
        "ess_bulk": ess,
        "min_ess_bulk": float(min(ess[k] for k in _PARAMS)),
        "wall_time_s": wall,
        "ess_per_s": float(min(ess[k] for k in _PARAMS)) / wall,
        "mean_steps_per_draw": float(np.mean(res["num_steps"])),
        "warnings": problems,
        "_diverging": np.asarray(res["diverging"]),
        "_num_steps": np.asarray(res["num_steps"]),
    }


# --------------------------------------------------------------------------- many clusters


@dataclass
class ClusterFits:
    """The result of :func:`fit_clusters`: one :class:`ClusterFit` per cluster.

    Attributes
    ----------
    names
        The cluster names (group keys, dict keys or list positions).
    fits
        One :class:`ClusterFit` per name; ``None`` where the cluster could not
        be fitted (see :attr:`errors`).
    errors
        Why a cluster was not fitted, by name.
    table
        For a grouped table: its rows, in order, with the per-star columns of
        every cluster (``membership_prob``, ``cluster_distance_*``,
        ``cluster_flag``); ``None`` for a list or dict of tables.
    diagnostics
        Wall time and its parts for the whole batch.
    """

    names: list[Any]
    fits: list[ClusterFit | None]
    errors: dict[Any, str]
    table: QTable | None
    diagnostics: dict[str, Any]

    def __len__(self) -> int:
        return len(self.fits)

    def __getitem__(self, name: Any) -> ClusterFit | None:
        return self.fits[self.names.index(name)]

    def summary(self) -> Table:
        """One row per cluster: stars fitted, mean and sd of D, sigma (pc), Q, L (pc), diagnostics."""
        rows = []
        for name, fit in zip(self.names, self.fits):
            row: dict[str, Any] = {"cluster": str(name)}
            if fit is None:
                row |= {"n_stars": 0, "min_ess_bulk": math.nan, "max_r_hat": math.nan, "divergences": -1}
                row |= {f"{p}_{k}": math.nan for p in _PARAMS for k in ("mean", "sd")}
                row["status"] = self.errors.get(name, "not fitted")
            else:
                d = fit.diagnostics
                row["n_stars"] = int(np.sum(np.asarray(fit.table["cluster_flag"]) == 0))
                for p in _PARAMS:
                    row[f"{p}_mean"] = float(np.mean(fit.posterior[p]))
                    row[f"{p}_sd"] = float(np.std(fit.posterior[p]))
                row |= {
                    "min_ess_bulk": d["min_ess_bulk"],
                    "max_r_hat": max(d["r_hat"][p] for p in _PARAMS),
                    "divergences": d["divergences"],
                    "status": "; ".join(d["warnings"]) or "ok",
                }
            rows.append(row)
        names = ["cluster", "n_stars"] + [f"{p}_{k}" for p in _PARAMS for k in ("mean", "sd")]
        names += ["min_ess_bulk", "max_r_hat", "divergences", "status"]
        t = Table(rows=[[r[n] for n in names] for r in rows], names=names) if rows else Table(names=names)
        for p in _PARAMS:
            for k in ("mean", "sd"):
                t[f"{p}_{k}"].unit = _UNITS[p] if _UNITS[p] is not u.dimensionless_unscaled else None
        return t


def _split_groups(tables: Any, group_by: str | None) -> tuple[list[Any], list[Any], QTable | None, list[np.ndarray]]:
    """``(names, tables, whole, rows)``: the clusters, and for a grouped table the rows of each."""
    if isinstance(tables, dict):
        return list(tables), list(tables.values()), None, []
    if isinstance(tables, list | tuple):
        return list(range(len(tables))), list(tables), None, []
    if group_by is None:
        raise TypeError("fit_clusters takes a list or dict of tables, or one table with group_by=<column name>")
    whole = as_table(tables)
    col = whole[group_by]
    missing = np.ma.getmaskarray(col) if hasattr(col, "mask") else np.zeros(len(whole), bool)
    keys = np.asarray(getattr(col, "value", col))
    if keys.dtype.kind == "f":
        missing |= ~np.isfinite(keys)
    names: list[Any] = []
    for k in keys[~missing]:
        k = k.item() if hasattr(k, "item") else k
        if k not in names:
            names.append(k)
    rows = [np.flatnonzero((keys == k) & ~missing) for k in names]
    return names, [whole[r] for r in rows], whole, rows


def fit_clusters(
    tables: Any,
    *,
    group_by: str | None = None,
    priors: core.ClusterPriors | None = None,
    zero_point: float | str | None = None,
    parallax_limits: tuple[float, float] | None = None,
    num_warmup: int = 400,
    num_samples: int = 1000,
    num_chains: int = 2,
    target_accept_prob: float = 0.8,
    seed: int = 0,
    progress: bool | None = None,
    n_quantile_draws: int = 32,
    n_membership_draws: int = 400,
) -> ClusterFits:
    """Fit many independent clusters in one vectorised program (the marginal method).

    Every cluster gets the model of :func:`fit_cluster` (``method="marginal"``)
    with its own population parameters. The fields are padded to a common size
    with masked stars, the MAP and Laplace whitening are found per cluster, and
    NUTS runs for all clusters at once (``vmap`` over clusters; chains in
    threads on CPU, vectorised on an accelerator), compiled once.

    Parameters
    ----------
    tables
        A list or dict of tables (anything :func:`~gaia_distances.load_table`
        accepts), or one table with a column naming each row's cluster
        (``group_by``).
    group_by
        The cluster-name column of a single table. Rows with a missing name
        are kept, flagged ``NOT_FITTED``.
    priors, zero_point, parallax_limits
        As in :func:`fit_cluster`, the same for every cluster.
    num_warmup, num_samples, num_chains, target_accept_prob, seed
        NUTS settings for every cluster; equal seeds give equal results.
    progress
        Show a progress bar over all clusters' iterations (default: more than
        20 clusters).
    n_quantile_draws, n_membership_draws
        As in :func:`fit_cluster`.

    Returns
    -------
    ClusterFits
        ``summary()`` has one row per cluster; ``fits[i]`` is a full
        :class:`ClusterFit`; ``table`` (grouped input) holds every row with the
        per-star columns. A cluster with fewer than 20 usable stars is reported
        in ``errors`` and its rows flagged, without stopping the others.

    Examples
    --------
    >>> import gaia_distances as gd
    >>> fields = [gd.simulate_field(600, n_cluster=200, cluster_distance=d, seed=i)
    ...           for i, d in enumerate((500.0, 1500.0))]
    >>> res = gd.fit_clusters(fields, zero_point="parallax_zeropoint_true", num_samples=300)
    >>> [float(round(m, -2)) for m in res.summary()["D_mean"]]
    [500.0, 1500.0]
    """
    t_start = time.perf_counter()
    priors = core.ClusterPriors() if priors is None else priors
    names, parts, whole, rows = _split_groups(tables, group_by)
    fits: list[ClusterFit | None] = [None] * len(names)
    errors: dict[Any, str] = {}
    selected: dict[int, _Stars] = {}
    for i, (name, part) in enumerate(zip(names, parts)):
        try:
            selected[i] = _select_stars(part, zero_point, parallax_limits)
        except GaiaDistancesError as exc:
            errors[name] = str(exc)
            warn(f"fit_clusters: cluster {name!r} not fitted: {exc}")
    timings: dict[str, float] = {}
    if selected:
        t0 = time.perf_counter()
        n_max = max(st.w.size for st in selected.values())
        n_pad = -(-n_max // 256) * 256  # a multiple of 256, so that similar batches reuse compiled programs
        data = {i: core.pad_star_data(core.prepare_star_data(st.w, st.s), n_pad) for i, st in selected.items()}
        timings["prepare_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        maps = {i: core.find_map(d, priors) for i, d in data.items()}
        timings["map_s"] = time.perf_counter() - t0
        order = sorted(selected)
        dt = data[order[0]].parallax.dtype
        centre = np.stack([maps[i][0] for i in order])
        chol = np.stack([_whitening(maps[i][2]) for i in order])
        rng = np.random.default_rng(seed)
        x0 = 0.5 * rng.standard_normal((len(order), num_chains, 4))
        t0 = time.perf_counter()
        res = run_batched_chains(
            core.whitened_potential_gen(priors),
            jnp.asarray(x0, dt),
            (jnp.asarray(centre, dt), jnp.asarray(chol, dt), core.stack_star_data([data[i] for i in order])),
            num_warmup=num_warmup,
            num_samples=num_samples,
            seed=seed,
            target_accept_prob=target_accept_prob,
            progress=len(order) > 20 if progress is None else progress,
        )
        timings["sampling_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        x = np.asarray(res["samples"], dtype=float)  # (B, C, draws, 4)
        settings = {"num_warmup": num_warmup, "num_samples": num_samples, "num_chains": num_chains, "seed": seed}
        for b, i in enumerate(order):
            z = centre[b] + x[b] @ chol[b].T
            one = {"diverging": res["diverging"][b], "num_steps": res["num_steps"][b]}
            fits[i] = _finish(
                selected[i],
                z,
                None,
                one,
                data[i],
                priors=priors,
                method="marginal",
                settings={**settings, "batched_clusters": len(order)},
                zero_point=zero_point,
                parallax_limits=parallax_limits,
                n_membership_draws=n_membership_draws,
                n_quantile_draws=n_quantile_draws,
                t_start=t_start,
                timings={},
            )
        timings["per_star_s"] = time.perf_counter() - t0
    out = _merge_groups(whole, rows, fits) if whole is not None else None
    diagnostics = {"wall_time_s": time.perf_counter() - t_start, "timings": timings, "n_clusters": len(names)}
    return ClusterFits(names=names, fits=fits, errors=errors, table=out, diagnostics=diagnostics)


def _whitening(cov: np.ndarray | None) -> np.ndarray:
    """Cholesky factor of the Laplace covariance (a small diagonal when there is none)."""
    return np.linalg.cholesky(cov) if cov is not None else np.diag(np.full(4, 0.05))


def _merge_groups(whole: QTable, rows: list[np.ndarray], fits: list[ClusterFit | None]) -> QTable:
    """The grouped table with each cluster's per-star columns at its rows; other rows NaN, flagged."""
    out = whole.copy(copy_data=True)
    n = len(out)
    member = np.full(n, np.nan)
    dist = np.full((n, 3), np.nan)
    flag = np.full(n, int(ClusterFlag.NOT_FITTED), dtype=np.int16)
    for r, fit in zip(rows, fits):
        if fit is None:
            continue
        member[r] = np.asarray(fit.table["membership_prob"])
        for j, name in enumerate(_DISTANCE_LEVELS):
            dist[r, j] = fit.table[f"cluster_distance_{name}"].to_value(u.pc)
        flag[r] = np.asarray(fit.table["cluster_flag"])
    _add_star_columns(
        out,
        member,
        dist,
        flag,
        member_description="posterior probability of membership of the row's cluster",
        flag_description="ClusterFlag bits: 1 no parallax, 2 outside limits, 4 not fitted",
    )
    return out


_DISTANCE_LEVELS = {"median": "50th", "lo": "15.866th", "hi": "84.134th"}  # order of _Q_LEVELS


def _add_star_columns(
    out: QTable,
    member: np.ndarray,
    dist: np.ndarray,
    flag: np.ndarray,
    *,
    member_description: str,
    flag_description: str,
) -> None:
    """``membership_prob``, ``cluster_distance_median/lo/hi`` (pc, from ``dist`` (n, 3)) and ``cluster_flag``."""
    add_column(out, "membership_prob", member, description=member_description)
    for j, (name, level) in enumerate(_DISTANCE_LEVELS.items()):
        add_column(
            out,
            f"cluster_distance_{name}",
            dist[:, j],
            unit=u.pc,
            description=f"cluster-model posterior {level} percentile of distance",
        )
    add_column(out, "cluster_flag", flag, description=flag_description)
