"""Figures and reports for distance tables and cluster fits.

Needs the ``plot`` extra (``pip install "gaia-distances[plot]"``); matplotlib
and corner are imported when a function is called, never at package import.

Every function takes an ``ax=`` (or, for multi-panel figures, ``fig=``) to draw
into, or makes a new figure, and returns the ``Figure``. Units follow the
package: parallaxes in mas, distances in pc, angles in deg, magnitudes in mag.

- :func:`corner_plot`: the cluster population parameters ``D``, ``sigma``,
  ``Q`` and ``L``, with optional truths;
- :func:`colour_magnitude`: BP-RP against absolute G from each star's
  posterior distance, coloured by membership probability;
- :func:`parallax_predictive`: the observed parallax histogram against
  posterior and prior predictive catalogues;
- :func:`distance_posteriors`: per-star distance posteriors with ``1/parallax``
  marked;
- :func:`sky_map`: positions coloured by membership probability;
- :func:`proper_motion_diagram`, :func:`proper_motion_predictive`: fits with proper motions;
- :func:`overview`: the four table panels in one figure.

:func:`gaia_distances.report.write_report` writes every figure as a PNG plus
``report.md``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from gaia_distances.columns import META_KEY, column_values, corrected_parallax
from gaia_distances.core.numerics import ONE_SIGMA_QUANTILES
from gaia_distances.pm_plots import FitLike

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


__all__ = [
    "colour_magnitude",
    "corner_plot",
    "distance_posteriors",
    "overview",
    "parallax_predictive",
    "proper_motion_diagram",
    "proper_motion_predictive",
    "sky_map",
]

log = logging.getLogger(__name__)

#: Labels (with units) of the population parameters.
PARAMETER_LABELS = {
    "D": r"$D$ [pc]",
    "sigma": r"$\sigma$ [pc]",
    "sigma_log": r"$\sigma_{\ln r}$",
    "Q": r"$Q$",
    "L": r"$L$ [pc]",
}
_MEMBERSHIP_CMAP = "viridis"


def pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - exercised without the extra
        raise ImportError('gaia_distances.plotting needs matplotlib: pip install "gaia-distances[plot]"') from exc
    return plt


def _axes(ax: Axes | None, figsize: tuple[float, float] = (6.0, 4.5)) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax  # type: ignore[return-value]
    fig, new = pyplot().subplots(figsize=figsize, layout="constrained")
    return fig, new


def values(table: Any, name: str, unit: Any = None) -> np.ndarray:
    return column_values(table, name, unit) if name in table.colnames else np.full(len(table), np.nan)


def _membership(table: Any, membership: str | None) -> np.ndarray | None:
    if membership is None or membership not in table.colnames:
        return None
    return np.asarray(values(table, membership), dtype=float)


def _scatter_by_membership(
    ax: Axes, x: np.ndarray, y: np.ndarray, prob: np.ndarray | None, *, size: float, label: str
) -> Any:
    """Scatter with the most probable members drawn last; NaN membership in grey."""
    ok = np.isfinite(x) & np.isfinite(y)
    if prob is None:
        ax.scatter(x[ok], y[ok], s=size, c="0.3", lw=0, alpha=0.6, rasterized=True, label=label)
        return None
    grey = ok & ~np.isfinite(prob)
    if grey.any():
        ax.scatter(x[grey], y[grey], s=size, c="0.75", lw=0, rasterized=True, label="not fitted")
    col = ok & np.isfinite(prob)
    order = np.flatnonzero(col)[np.argsort(prob[col], kind="stable")]
    return ax.scatter(
        x[order],
        y[order],
        s=size * (1.0 + 5.0 * prob[order]),  # members larger, so a small cluster shows in a big field
        c=prob[order],
        cmap=_MEMBERSHIP_CMAP,
        vmin=0.0,
        vmax=1.0,
        lw=0,
        rasterized=True,
        label=label,
    )


def _membership_colorbar(fig: Figure, ax: Axes, mappable: Any) -> None:
    if mappable is not None:
        fig.colorbar(mappable, ax=ax, label="membership probability")


def _marker_size(n: int) -> float:
    return float(np.clip(3000.0 / max(n, 1), 0.5, 12.0))


# --------------------------------------------------------------------------- corner


def corner_plot(
    fit: FitLike | Mapping[str, np.ndarray],
    *,
    parameters: Sequence[str] | None = None,
    truths: Mapping[str, float] | None = None,
    fig: Figure | None = None,
    **corner_kwargs: Any,
) -> Figure:
    """Corner plot of the cluster population parameters.

    Parameters
    ----------
    fit
        A :class:`~gaia_distances.ClusterFit`, or a mapping from parameter
        name to draws (any shape; flattened).
    parameters
        Names to show (``sigma_log``, ...); default: those of ``D``, ``sigma`` (pc), ``Q``, ``L`` (pc) it has.
    truths
        Known values by name (e.g. from a simulation), drawn as lines.
    fig
        A figure with ``len(parameters)**2`` axes to draw into.
    corner_kwargs
        Passed to ``corner.corner``.
    """
    try:
        import corner
    except ImportError as exc:  # pragma: no cover - exercised without the extra
        raise ImportError('corner_plot needs corner: pip install "gaia-distances[plot]"') from exc
    pyplot()
    post = fit.posterior if hasattr(fit, "posterior") else fit
    parameters = [p for p in ("D", "sigma", "Q", "L") if p in post] if parameters is None else parameters
    missing = [p for p in parameters if p not in post]
    if missing:
        raise KeyError(f"no draws for {missing}; available: {sorted(post)}")
    samples = np.column_stack([np.asarray(post[p], dtype=float).reshape(-1) for p in parameters])
    kw: dict[str, Any] = dict(
        labels=[PARAMETER_LABELS.get(p, p) for p in parameters],
        quantiles=list(ONE_SIGMA_QUANTILES),
        show_titles=True,
        title_fmt=".4g",
        title_kwargs={"fontsize": 10},
        label_kwargs={"fontsize": 11},
        smooth=0.8,
        truth_color="C3",
    )
    if truths is not None:
        kw["truths"] = [truths.get(p) for p in parameters]
    kw.update(corner_kwargs)
    out = corner.corner(samples, fig=fig, **kw)
    if hasattr(fit, "method"):
        out.suptitle(f"cluster population posterior ({fit.method} method, {samples.shape[0]} draws)", y=1.02)
    return out


# --------------------------------------------------------------------------- CMD


def _distance_column(table: Any, distance: str | None) -> str:
    if distance is not None:
        if distance not in table.colnames:
            raise KeyError(f"no column {distance!r} in the table")
        return distance
    for name in ("cluster_distance_median", "distance_median"):
        if name in table.colnames:
            return name
    raise KeyError("no posterior distance column: run estimate_distances or fit_cluster first, or pass distance=")


def colour_magnitude(
    table: Any,
    *,
    distance: str | None = None,
    membership: str | None = "membership_prob",
    ax: Axes | None = None,
) -> Figure:
    """Colour-magnitude diagram: BP-RP against absolute G from the posterior distance.

    ``M_G = G - 5 log10(r / 10 pc)``, with no extinction correction. ``r`` is
    ``distance`` (default: ``cluster_distance_median`` where ``fit_cluster``
    has run, else ``distance_median``). Points are coloured by ``membership``
    where that column exists.
    """
    col = _distance_column(table, distance)
    r = values(table, col)
    g = values(table, "phot_g_mean_mag")
    bp_rp = values(table, "bp_rp")
    if not np.isfinite(g).any() or not np.isfinite(bp_rp).any():
        raise KeyError("colour_magnitude needs phot_g_mean_mag and bp_rp")
    with np.errstate(invalid="ignore", divide="ignore"):
        abs_g = g - 5.0 * np.log10(r / 10.0)
    fig, ax = _axes(ax, (5.5, 6.0))
    prob = _membership(table, membership)
    m = _scatter_by_membership(ax, bp_rp, abs_g, prob, size=_marker_size(len(table)), label="stars")
    _membership_colorbar(fig, ax, m)
    ax.invert_yaxis()
    ax.set_xlabel(r"$G_\mathrm{BP} - G_\mathrm{RP}$ [mag]")
    ax.set_ylabel(r"$M_G = G - 5\,\log_{10}(r / 10\,\mathrm{pc})$ [mag]")
    n_ok = int(np.sum(np.isfinite(abs_g) & np.isfinite(bp_rp)))
    ax.set_title(f"{n_ok} stars; r = {col} (no extinction)", fontsize=10)
    return fig


# --------------------------------------------------------------------------- sky


def sky_map(table: Any, *, membership: str | None = "membership_prob", ax: Axes | None = None) -> Figure:
    """Positions (ICRS, deg) coloured by membership probability; RA increases to the left."""
    ra = values(table, "ra", "deg")
    dec = values(table, "dec", "deg")
    if not np.isfinite(ra).any():
        raise KeyError("sky_map needs ra and dec")
    fig, ax = _axes(ax, (6.0, 5.5))
    prob = _membership(table, membership)
    m = _scatter_by_membership(ax, ra, dec, prob, size=_marker_size(len(table)), label="stars")
    _membership_colorbar(fig, ax, m)
    dec0 = float(np.nanmedian(dec))
    ax.set_aspect(1.0 / max(math.cos(math.radians(dec0)), 1e-3), adjustable="datalim")
    if not ax.xaxis_inverted():
        ax.invert_xaxis()
    ax.set_xlabel("RA [deg]")
    ax.set_ylabel("Dec [deg]")
    ax.set_title(f"{int(np.isfinite(ra).sum())} stars", fontsize=10)
    return fig


def proper_motion_diagram(fit: FitLike, *, ax: Axes | None = None) -> Figure:
    """Vector-point diagram (pmra, pmdec in mas/yr) of the fitted stars, by membership, with the fitted populations.

    As :func:`gaia_distances.pm_plots.draw_proper_motion_model` draws them, in the model's frame
    (:func:`gaia_distances.pm_plots.in_centre_frame`); ``ValueError`` without proper motions.
    """
    from gaia_distances import pm_plots

    obs = pm_plots.observed_proper_motions(fit)
    fig, ax = _axes(ax, (6.5, 5.5))
    prob = obs.membership if np.isfinite(obs.membership).any() else None
    x, y = (pm := pm_plots.in_centre_frame(fit, obs.pm)).T
    _membership_colorbar(fig, ax, _scatter_by_membership(ax, x, y, prob, size=_marker_size(len(x)), label="stars"))
    pm_plots.draw_proper_motion_model(ax, pm_plots.proper_motion_model(fit), pm)
    return fig


# --------------------------------------------------------------------------- predictive


def _step_band(ax: Axes, edges: np.ndarray, sims: np.ndarray, colour: str, label: str, alpha: float) -> None:
    counts = np.stack([np.histogram(x, edges)[0] for x in sims])
    lo, med, hi = np.percentile(counts, [5.0, 50.0, 95.0], axis=0)
    ax.fill_between(edges, np.append(lo, lo[-1]), np.append(hi, hi[-1]), step="post", color=colour, alpha=alpha, lw=0)
    ax.stairs(med, edges, color=colour, lw=1.2, label=label)


def _histogram_edges(x: np.ndarray, bins: int | np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """``bins`` as given, or ``bins`` bins over the ``percentiles`` range of ``x`` padded by 5 % each side."""
    if np.ndim(bins) > 0:
        return np.asarray(bins, dtype=float)
    lo, hi = np.percentile(x, percentiles)
    pad = 0.05 * (hi - lo)
    return np.linspace(lo - pad, hi + pad, int(bins) + 1)


def _observed_over_bands(ax: Axes, edges: np.ndarray, observed: np.ndarray, unit: str) -> None:
    """The observed histogram over predictive bands, on a logarithmic count axis."""
    ax.stairs(np.histogram(observed, edges)[0], edges, color="k", lw=1.5, label=f"observed ({observed.size} stars)")
    ax.set(yscale="log", xlim=(edges[0], edges[-1]), ylabel=f"stars per {edges[1] - edges[0]:.3g} {unit} bin")
    ax.set_ylim(bottom=0.5)


def parallax_predictive(
    fit: FitLike,
    *,
    num_samples: int = 200,
    prior: bool = True,
    bins: int | np.ndarray = 80,
    seed: int = 0,
    ax: Axes | None = None,
) -> Figure:
    """Observed parallax histogram against posterior (and prior) predictive catalogues.

    Each predictive catalogue simulates every fitted star's catalogue parallax
    (mas) with its own error and zero point. Bands hold 90 % of the simulated
    histograms, lines are their medians; the count axis is logarithmic so the
    tails and the cluster peak read together.
    """
    observed = np.asarray(fit.stars.catalogue_parallax, dtype=float)
    edges = _histogram_edges(observed, bins, (0.2, 99.8))
    fig, ax = _axes(ax, (7.0, 4.5))
    if prior:
        sims = fit.predictive("prior", num_samples=num_samples, seed=seed)
        _step_band(ax, edges, sims, "0.55", "prior predictive (median, 90 %)", 0.25)
    sims = fit.predictive("posterior", num_samples=num_samples, seed=seed)
    _step_band(ax, edges, sims, "C0", "posterior predictive (median, 90 %)", 0.35)
    _observed_over_bands(ax, edges, observed, "mas")
    ax.set_xlabel(r"catalogue parallax $\varpi$ [mas]")
    ax.legend(fontsize=8, loc="upper right")
    return fig


def proper_motion_predictive(
    fit: FitLike, *, num_samples: int = 200, bins: int | np.ndarray = 60, seed: int = 0, fig: Figure | None = None
) -> Figure:
    """Observed pmra and pmdec histograms (two panels) against posterior predictive catalogues.

    A check at each star's observed parallax (:func:`gaia_distances.pm_plots.simulate_proper_motions`);
    ``ValueError`` for a fit without proper motions.
    """
    from gaia_distances import pm_plots

    obs = pm_plots.observed_proper_motions(fit)
    sims = pm_plots.simulate_proper_motions(fit, num_samples=num_samples, seed=seed)
    fig = pyplot().figure(figsize=(11.0, 4.2), layout="constrained") if fig is None else fig
    for k, ax in enumerate(fig.subplots(1, 2)):
        ok = np.isfinite(obs.pm[:, k])
        edges = _histogram_edges(obs.pm[ok, k], bins, (0.5, 99.5))
        _step_band(ax, edges, sims[:, ok, k], "C0", "posterior predictive (median, 90 %)", 0.35)
        _observed_over_bands(ax, edges, obs.pm[ok, k], "mas/yr")
        ax.set_xlabel(pm_plots.PM_LABELS[k])
    fig.axes[0].legend(fontsize=8, loc="upper left")
    return fig


# --------------------------------------------------------------------------- per-star posteriors


def _prior_from_provenance(table: Any) -> Any:
    import gaia_distances as gd

    desc = table.meta.get(META_KEY, {}).get("distances", {}).get("prior", {})
    name = str(desc.get("name", ""))
    params = {k: v for k, v in desc.items() if k != "name"}
    scalar = all(isinstance(v, int | float) for v in params.values())
    if not desc:
        return gd.EDSD()
    if scalar and name == "EDSD":
        return gd.EDSD(**params)
    if scalar and name == "GGD":
        return gd.GGD(**params)
    if scalar and name == "UniformSpaceDensity":
        return gd.UniformSpaceDensity(**params)
    raise ValueError(f"cannot rebuild the prior {name!r} from the table's provenance; pass prior=")


def _default_rows(w: np.ndarray, s: np.ndarray, n: int) -> np.ndarray:
    """Up to ``n`` stars spread in fractional error from 0.01 to 1, with finite distances."""
    f = s / np.abs(w)
    ok = np.flatnonzero(np.isfinite(f) & (s > 0))
    if ok.size == 0:
        return ok
    targets = np.geomspace(0.01, 1.0, n)
    rows = [int(ok[np.argmin(np.abs(np.log(f[ok] / t)))]) for t in targets]
    return np.array(list(dict.fromkeys(rows)))


def distance_posteriors(
    table: Any,
    rows: Sequence[int] | np.ndarray | None = None,
    *,
    prior: Any = None,
    zero_point: float | str | None = None,
    n: int = 6,
    n_grid: int = 600,
    ax: Axes | None = None,
) -> Figure:
    """Per-star distance posteriors on a logarithmic distance axis, with ``1000/parallax`` marked.

    Parameters
    ----------
    table
        A table with ``parallax_error`` and a (corrected) parallax.
    rows
        Row indices to draw; default: up to ``n`` stars spread in fractional
        parallax error from 1 % to 100 %.
    prior
        The prior used (anything :func:`~gaia_distances.estimate_distances`
        accepts). Default: rebuilt from the table's provenance when it holds
        a scalar EDSD, GGD or uniform prior, else ``EDSD()``.
    zero_point
        As in :func:`~gaia_distances.estimate_distances`; default: the one
        recorded in the table's provenance.
    n_grid
        Nodes in ``ln r`` per star.

    Each curve is ``p(ln r | w)`` scaled to a peak of 1; the dashed line of
    the same colour is the inverse parallax (absent when ``w <= 0``).
    """
    import jax
    import jax.numpy as jnp

    from gaia_distances.core.quadrature import log_posterior_logr, summarize_posteriors
    from gaia_distances.priors import resolve_prior

    if zero_point is None:  # as estimate_distances (or fit_cluster) was told
        prov = table.meta.get(META_KEY, {})
        zero_point = prov.get("distances", prov.get("cluster", {})).get("zero_point_arg")
    w_all, _ = corrected_parallax(table, zero_point, step="distance_posteriors")
    s_all = column_values(table, "parallax_error", "mas")
    idx = _default_rows(w_all, s_all, n) if rows is None else np.asarray(rows, dtype=int)
    if idx.size == 0:
        raise ValueError("no star with a finite parallax and a positive error to draw")
    sub = table[idx]
    prior = _prior_from_provenance(table) if prior is None else prior
    core_prior, desc = resolve_prior(prior, sub)
    w, s = w_all[idx], s_all[idx]
    span = summarize_posteriors(w, s, core_prior, quantiles=(1e-4, 0.5, 1 - 1e-4))["quantiles"]
    ok = np.all(np.isfinite(span), axis=1) & (s > 0)
    for k in np.flatnonzero(~ok):
        log.warning("row %d has no posterior to draw", idx[k])
    # every star's grid in ln r, from 0.2 below its 0.01th to 0.2 above its 99.99th percentile, in one call
    with np.errstate(invalid="ignore", divide="ignore"):
        lo, hi = np.log(span[:, 0]) - 0.2, np.log(span[:, 2]) + 0.2
    u = lo[:, None] + (hi - lo)[:, None] * np.linspace(0.0, 1.0, n_grid)
    column = jax.tree_util.tree_map(lambda x: jnp.asarray(np.asarray(x, float)[:, None]), core_prior)
    lp = np.asarray(log_posterior_logr(jnp.asarray(u), jnp.asarray(w[:, None]), jnp.asarray(s[:, None]), column))
    fig, ax = _axes(ax, (7.0, 4.5))
    for k in np.flatnonzero(ok):
        dens = np.exp(lp[k] - np.max(lp[k]))
        colour = f"C{k % 10}"
        label = f"{w[k]:.3f} ± {s[k]:.3f} mas ({100 * s[k] / abs(w[k]):.0f} %)"
        ax.plot(np.exp(u[k]), dens, color=colour, lw=1.4, label=label)
        if w[k] > 0:
            ax.axvline(1000.0 / w[k], color=colour, ls="--", lw=0.9)
    ax.set_xscale("log")
    ax.set_ylim(0, 1.08)
    ax.set_xlabel("distance r [pc]")
    ax.set_ylabel(r"posterior density in $\ln r$ (peak = 1)")
    ax.set_title(f"prior: {desc.get('name', '?')}; dashed: 1000 / parallax", fontsize=10)
    ax.legend(
        fontsize=7,
        loc="best",
        framealpha=0.85,
        title=r"$\varpi \pm \sigma_\varpi$ (fractional error)",
        title_fontsize=7,
    )
    return fig


# --------------------------------------------------------------------------- overview and report


def fit_and_table(table_or_fit: Any) -> tuple[Any, Any]:
    """``(fit, table)`` for a ClusterFit, ``(None, table)`` for a table."""
    if hasattr(table_or_fit, "posterior"):
        return table_or_fit, table_or_fit.table
    return None, table_or_fit


def overview(table_or_fit: Any, *, truths: Mapping[str, float] | None = None) -> Figure:
    """One figure with the CMD, sky map, distance posteriors and (for a fit) the parallax predictive."""
    fit, table = fit_and_table(table_or_fit)
    fig, axes = pyplot().subplots(2, 2, figsize=(12.0, 10.0), layout="constrained")
    colour_magnitude(table, ax=axes[0, 0])
    sky_map(table, ax=axes[0, 1])
    distance_posteriors(table, ax=axes[1, 0])
    if fit is not None:
        parallax_predictive(fit, ax=axes[1, 1])
    else:
        _parallax_histogram(table, axes[1, 1])
    return fig


def _parallax_histogram(table: Any, ax: Axes) -> None:
    w = values(table, "parallax", "mas")
    w = w[np.isfinite(w)]
    ax.hist(w, bins=80, histtype="step", color="k")
    ax.set_yscale("log")
    ax.set_xlabel(r"catalogue parallax $\varpi$ [mas]")
    ax.set_ylabel("stars per bin")
