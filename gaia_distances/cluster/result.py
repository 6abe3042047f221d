"""The results of a cluster fit: :class:`ClusterFit` (one cluster) and :class:`ClusterFits` (many)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
from astropy.table import QTable, Table

from gaia_distances.cluster.diagnostics import FitDiagnostics, checked_parameters, diagnose
from gaia_distances.cluster.fingerprint import FINGERPRINT_ATTR, check_posterior_belongs, fit_fingerprint
from gaia_distances.cluster.frozen import freeze, read_only, thaw
from gaia_distances.cluster.stars import FittedStars, select_stars
from gaia_distances.cluster.systematics import OFFSET_QUANTITIES
from gaia_distances.columns import META_KEY
from gaia_distances.core.diagnostics import ess_rhat
from gaia_distances.core.numerics import ONE_SIGMA_QUANTILES
from gaia_distances.core.population import (
    ClusterModel,
    ClusterPriors,
    from_population,
    population_from_physical,
)
from gaia_distances.core.sampling import checked_seed
from gaia_distances.core.terms import ALL_QUANTITIES, TERMS
from gaia_distances.errors import GaiaDistancesError
from gaia_distances.io import as_table

__all__ = ["ClusterFit", "ClusterFits", "parameter_summary"]

#: The reference model's reported quantities, in order.
REPORTED = tuple(q.name for q in ClusterModel(ClusterPriors()).quantities)
#: Every quantity a fit can report (the model's blocks', its terms' and the systematic offsets'), by name.
_QUANTITIES = {q.name: q for q in (*ALL_QUANTITIES, *OFFSET_QUANTITIES)}
#: The quantities reported first: the reference model's, then the other science quantities.
_LEAD = (*REPORTED, *(q.name for q in ALL_QUANTITIES if q.science and q.name not in REPORTED))

#: Suffix of the draws of a parameter without its systematic term (``D_stat``).
STAT = "_stat"
#: The systematic offsets themselves (their ``sd`` is all ``sd_sys``).
SYSTEMATIC_ONLY = tuple(q.name for q in OFFSET_QUANTITIES)


def _base(name: str) -> str:
    """``field_pmra_2`` -> ``field_pmra`` (the name of its :class:`~gaia_distances.core.parameters.Quantity`)."""
    head, _, tail = name.rpartition("_")
    return head if tail.isdigit() else name


def reported_parameters(posterior: Mapping[str, Any]) -> tuple[str, ...]:
    """The posterior's quantities in report order: the reference ones, then the others as stored."""
    first = [k for k in _LEAD if k in posterior]
    return (*first, *(k for k in posterior if k not in first and not k.endswith(STAT)))


def sampled_draws(posterior: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The draws the sampler gave: each parameter without its systematic term, and no offsets."""
    return {
        k: np.asarray(posterior.get(k + STAT, v))
        for k, v in posterior.items()
        if not k.endswith(STAT) and k not in SYSTEMATIC_ONLY
    }


def parameter_summary(posterior: Mapping[str, np.ndarray], *, method: str = "", status: str = "") -> Table:
    """One row per reported parameter: mean, sd, 16/50/84 %, ess_bulk, ess_tail, r_hat, unit, description.

    When the fit carries Gaia's correlated systematics (the posterior holds
    ``D_stat``), two more columns split ``sd``: ``sd_stat``, the sd of the
    draws without the systematic term, and ``sd_sys``, the sd of the term
    itself (0 for parameters without one); ``sd^2 ~ sd_stat^2 + sd_sys^2``.
    ESS and R-hat are then those of the sampled (statistical) draws, as the
    offsets are independent draws that would mask a poorly mixed chain.
    """
    rows = []
    split = any(k.endswith(STAT) for k in posterior)
    for name in reported_parameters(posterior):
        x = np.asarray(posterior[name])
        stat = np.asarray(posterior.get(name + STAT, x))
        ess_b, ess_t, rhat = ess_rhat(stat)
        p16, p50, p84 = np.quantile(x, ONE_SIGMA_QUANTILES)
        sd = float(np.std(x))
        parts = (float(np.std(stat)), float(np.std(x - stat))) if split else ()
        if split and name in SYSTEMATIC_ONLY:  # the offsets themselves are all systematic
            parts = (0.0, sd)
        row = (name, float(np.mean(x)), sd, *parts, p16, p50, p84, ess_b, ess_t, rhat)
        quantity = _QUANTITIES[_base(name)]
        rows.append((*row, quantity.unit, quantity.description))
    sds = ("sd", "sd_stat", "sd_sys") if split else ("sd",)
    names = ("parameter", "mean", *sds, "p16", "p50", "p84", "ess_bulk", "ess_tail", "r_hat", "unit", "description")
    t = Table(rows=rows, names=names)
    for c in ("mean", *sds, "p16", "p50", "p84", "ess_bulk", "ess_tail"):
        t[c].format = ".4g"
    t["r_hat"].format = ".4f"
    t.meta["method"] = method
    t.meta["status"] = status
    return t


@dataclass(frozen=True)
class ClusterFit:
    """The result of :func:`~gaia_distances.fit_cluster` (immutable).

    Attributes
    ----------
    table
        The input rows, in order, with ``membership_prob``,
        ``cluster_distance_median``/``_lo``/``_hi`` (pc) and ``cluster_flag``:
        a new table, the caller's to use (the fit reads only :attr:`stars`).
    posterior
        Draws of ``D``, ``sigma`` (pc), ``sigma_log``, ``Q`` and ``L`` (pc),
        each of shape (chains, draws), read-only.
    diagnostics
        Divergences, R-hat, bulk ESS, wall time, the problems found
        (``warnings``) and ``status`` (``"ok"`` or the problems).
    method
        ``"marginal"`` or ``"joint"``.
    prior
        The :class:`~gaia_distances.ClusterPriors` of the fit.
    stars
        The fitted stars (:class:`~gaia_distances.cluster.FittedStars`): their
        rows in :attr:`table`, parallaxes, errors and zero points (mas).
    draws
        The unconstrained population draws (chains, draws, 4) the sampler
        returned, in the order of ``unconstrained_names(prior)``.
    sample_stats
        Per draw: ``diverging`` and ``n_steps`` (chains, draws).
    """

    table: QTable
    posterior: Mapping[str, np.ndarray]
    diagnostics: FitDiagnostics
    method: str
    prior: ClusterPriors
    stars: FittedStars
    draws: np.ndarray
    sample_stats: Mapping[str, np.ndarray]
    model: ClusterModel | None = None

    def __post_init__(self) -> None:
        for name in ("posterior", "sample_stats"):
            object.__setattr__(self, name, freeze(getattr(self, name)))
        if not isinstance(self.diagnostics, FitDiagnostics):  # unpickled, or built by hand
            object.__setattr__(self, "diagnostics", FitDiagnostics.from_mapping(self.diagnostics))
        object.__setattr__(self, "draws", read_only(self.draws))
        if self.model is None:
            object.__setattr__(self, "model", ClusterModel(self.prior))

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle (and deep-copy) through the constructor, which freezes again."""
        post, stats = thaw(self.posterior), thaw(self.sample_stats)
        diag = self.diagnostics.to_dict()
        args = (self.table, post, diag, self.method, self.prior, self.stars, self.draws, stats, self.model)
        return (type(self), args)

    @property
    def _spec(self) -> ClusterModel:
        return self.model or ClusterModel(self.prior)

    def summary(self) -> Table:
        """D, sigma (pc), Q, L (pc), sigma_log: mean, sd, 16/50/84 %, ess_bulk, ess_tail, r_hat.

        ``meta["status"]`` is ``"ok"`` or the problems the fit found.
        """
        return parameter_summary(self.posterior, method=self.method, status=self.diagnostics.get("status", ""))

    @property
    def inference_data(self) -> Any:
        """The posterior as an arviz ``InferenceData`` (with sampler statistics)."""
        import arviz as az

        posterior = dict(self.posterior)
        posterior["unconstrained"] = np.asarray(self.draws)  # what from_table rebuilds the fit from
        attrs = {"method": self.method, "package": "gaia_distances"}
        fingerprint = self._fingerprint()
        if fingerprint is not None:
            attrs[FINGERPRINT_ATTR] = json.dumps(fingerprint, sort_keys=True)
        idata = az.from_dict(posterior=posterior, sample_stats=dict(self.sample_stats), attrs=attrs)
        idata.posterior.attrs.update(attrs)  # from_dict does not set them on every arviz version
        return idata

    def _fingerprint(self) -> dict[str, Any] | None:
        """The fingerprint of the fit's data and options (:mod:`~gaia_distances.cluster.fingerprint`).

        The one ``fit_cluster`` recorded in the table's provenance, else one
        computed from :attr:`stars` and that provenance; ``None`` for a table
        without ``fit_cluster`` provenance.
        """
        prov = self.table.meta.get(META_KEY, {}).get("cluster")
        if not isinstance(prov, Mapping):
            return None
        saved = prov.get("fingerprint")
        return dict(saved) if isinstance(saved, Mapping) else fit_fingerprint(self.table, self.stars, prov)

    def to_netcdf(self, path: str) -> str:
        """Write :attr:`inference_data` to a netCDF file; returns the path.

        The file carries the fingerprint of the fit's rows, data and options
        (:mod:`~gaia_distances.cluster.fingerprint`), by which
        :meth:`from_table` refuses it with any other table.
        """
        return str(self.inference_data.to_netcdf(path))

    def predictive(self, kind: str = "posterior", *, num_samples: int = 100, seed: int = 0) -> np.ndarray:
        """Simulated catalogue parallaxes (mas), shape (num_samples, fitted stars).

        ``kind="posterior"`` draws population parameters from the posterior,
        ``"prior"`` from the prior; distances and parallaxes follow the model
        with each fitted star's own error and zero point.
        """
        from gaia_distances.core.models import prior_draws, simulate_parallaxes

        seed = checked_seed(seed)
        if kind == "prior":
            z = prior_draws(seed, num_samples, self._spec)
        elif kind == "posterior":
            flat = self.draws.reshape(-1, self.draws.shape[-1])
            z = flat[np.random.default_rng(seed).choice(len(flat), size=num_samples, replace=True)]
        else:
            raise ValueError(f"kind must be 'posterior' or 'prior'; got {kind!r}")
        return simulate_parallaxes(seed, z, self.stars.parallax_error, self.stars.zero_point, self._spec)

    def predictive_proper_motions(self, *, num_samples: int = 100, seed: int = 0) -> np.ndarray:
        """Posterior predictive ``(pmra, pmdec)`` (mas/yr) of the fitted stars: ``(num_samples, stars, 2)``.

        For each posterior draw every star's component is drawn from its
        parallax alone, its true parallax from that component's distance
        posterior and its proper motion from the component's model with the
        star's Gaia errors (:mod:`~gaia_distances.core.predictive`). Stars
        without a proper motion are NaN. Needs a kinematic fit.
        """
        from gaia_distances.cluster.stars import prepare_data
        from gaia_distances.core.predictive import simulate_proper_motions

        seed = checked_seed(seed)
        model = self.model or ClusterModel(self.prior)
        pmra, pmdec = self.stars.pmra, self.stars.pmdec
        if not model.kinematics or pmra is None or pmdec is None:
            raise ValueError("predictive_proper_motions needs a fit with proper motions (kinematics=True)")
        flat = self.draws.reshape(-1, self.draws.shape[-1])
        z = flat[np.random.default_rng(seed).choice(len(flat), size=num_samples, replace=True)]
        sim = simulate_proper_motions(seed, z, prepare_data(self.stars, model), model)
        ok = np.isfinite(pmra) & np.isfinite(pmdec)
        sim[:, ~ok] = np.nan
        return sim

    def plot(self, kind: str = "overview", **kwargs: Any) -> Any:
        """A figure of this fit; needs the ``plot`` extra.

        ``kind``: ``"overview"`` (CMD, sky map, distance posteriors and the
        parallax predictive check), ``"corner"``, ``"parallax"``, ``"cmd"``,
        ``"sky"``, ``"distances"``, ``"proper_motions"`` (the vector-point
        diagram of a kinematic fit) or ``"pm_predictive"`` (its proper-motion
        predictive check). ``kwargs`` go to the function in
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
            "proper_motions": lambda: plotting.proper_motion_diagram(self, **kwargs),
            "pm_predictive": lambda: plotting.proper_motion_predictive(self, **kwargs),
        }
        if kind not in makers:
            raise ValueError(f"kind must be one of {sorted(makers)}; got {kind!r}")
        return makers[kind]()

    def report(self, directory: str, **kwargs: Any) -> Any:
        """Write PNGs and ``report.md`` (summary, diagnostics, figures); returns its path.

        See :func:`gaia_distances.report.write_report`.
        """
        from gaia_distances.report import write_report

        return write_report(self, directory, **kwargs)

    @classmethod
    def from_table(cls, table: Any, posterior: str | Any) -> ClusterFit:
        """Rebuild a fit from the table :func:`~gaia_distances.fit_cluster` returned and its saved posterior.

        ``table`` must keep its ``meta["gaia_distances"]["cluster"]`` provenance
        (ECSV, FITS and the other formats of :func:`~gaia_distances.write_table`
        do); ``posterior`` is the netCDF file of :meth:`to_netcdf` or an arviz
        ``InferenceData``. The rebuilt fit supports :meth:`summary`,
        :meth:`predictive`, :meth:`plot` and :meth:`report`; its diagnostics
        are recomputed without warning again.

        The posterior must come from the fit that wrote the table: the
        fingerprint :meth:`to_netcdf` stored (the fitted rows and their
        ``source_id``, the parallaxes, errors and zero points the fit used,
        and its options) must match the one the table gives now. A posterior
        saved before fingerprints were recorded loads with a
        :class:`~gaia_distances.GaiaDistancesWarning` that it cannot be checked.

        Raises
        ------
        PosteriorMismatchError
            (a :class:`~gaia_distances.GaiaDistancesError`) If the posterior
            belongs to another fit; the message names both and what differs.
        """
        import arviz as az

        table_name = str(table) if isinstance(table, str | os.PathLike) else "the given table"
        post_name = str(posterior) if isinstance(posterior, str | os.PathLike) else "the given posterior"
        out = as_table(table)
        prov = out.meta.get(META_KEY, {}).get("cluster")
        if not prov or "cluster_flag" not in out.colnames:
            raise GaiaDistancesError(f"{table_name} has no fit_cluster provenance or cluster_flag column")
        idata = az.from_netcdf(str(posterior)) if isinstance(posterior, str | os.PathLike) else posterior
        prior = ClusterPriors(**prov.get("prior", prov.get("priors", {})))
        model = ClusterModel(
            prior,
            prov.get("field", "edsd"),
            bool(prov.get("kinematics", False)),
            int(prov.get("n_field_pm", 2)),
            bool(prov.get("perspective", False)),
            tuple(prov.get("terms", ())),
        )
        # the model's quantities (numbered per component), the offsets and their statistical parts; not the
        # deterministic sites older files kept beside them
        known = {q.name for q in model.quantities} | set(SYSTEMATIC_ONLY)
        keep = [k for k in idata.posterior.data_vars if _base(k.removesuffix(STAT)) in known]
        post = {k: np.asarray(idata.posterior[k]) for k in keep}
        limits = prov.get("parallax_limits")
        # the stars the fit used, selected again exactly as fit_cluster did
        sel = select_stars(
            out,
            zero_point=prov.get("zero_point_arg"),
            parallax_limits=tuple(limits) if limits else None,
            kinematics=model.kinematics,
            truncate=bool(prov.get("truncate", False)),
            perspective=model.perspective,
            terms=tuple((name, name in model.terms) for name in TERMS),
        )
        check_posterior_belongs(idata, fit_fingerprint(out, sel.stars, prov), table_name, post_name)
        sampled = sampled_draws(post)
        if "unconstrained" in idata.posterior.data_vars:
            z = np.asarray(idata.posterior["unconstrained"])
        else:  # a reference-model file written before the unconstrained draws were kept with every fit
            z = from_population(population_from_physical(sampled), prior, clip=1e-12)
        stats = getattr(idata, "sample_stats", None)
        shape = post["D"].shape
        sample_stats = {
            "diverging": np.asarray(stats["diverging"]) if stats is not None else np.zeros(shape, bool),
            "n_steps": np.asarray(stats["n_steps"]) if stats is not None else np.ones(shape),
        }
        summ = parameter_summary(post)
        saved = prov.get("diagnostics", {})
        diagnostics = diagnose(
            sampled,
            {str(r["parameter"]): float(r["r_hat"]) for r in summ},
            {str(r["parameter"]): float(r["ess_bulk"]) for r in summ},
            sample_stats,
            n_stars=sel.stars.n_stars,
            wall_time_s=float(saved.get("wall_time_s", math.nan)),
            ess_tail={str(r["parameter"]): float(r["ess_tail"]) for r in summ},
            sampler=saved.get("sampler"),
        )
        method = str(idata.posterior.attrs.get("method", prov.get("method", "marginal")))
        return cls(out, post, diagnostics, method, prior, sel.stars, z, sample_stats, model)


@dataclass(frozen=True)
class ClusterFits:
    """The result of :func:`~gaia_distances.fit_clusters`: one :class:`ClusterFit` per cluster.

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

    names: tuple[Any, ...]
    fits: tuple[ClusterFit | None, ...]
    errors: Mapping[Any, str]
    table: QTable | None
    diagnostics: Mapping[str, Any]

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "fits", tuple(self.fits))
        object.__setattr__(self, "errors", MappingProxyType(dict(self.errors)))
        object.__setattr__(self, "diagnostics", freeze(self.diagnostics))

    def __reduce__(self) -> tuple[Any, ...]:
        state = (self.names, self.fits, dict(self.errors), self.table, thaw(self.diagnostics))
        return (type(self), state)

    def __len__(self) -> int:
        return len(self.fits)

    def __getitem__(self, name: Any) -> ClusterFit | None:
        return self.fits[self.names.index(name)]

    def summary(self) -> Table:
        """One row per cluster: stars fitted, mean and sd of D, sigma (pc), Q, L (pc), diagnostics, status."""
        fitted = [f for f in self.fits if f is not None]
        params = checked_parameters(fitted[0].posterior) if fitted else ("D", "sigma", "Q", "L")
        stats = [f"{p}_{k}" for p in params for k in ("mean", "sd")]
        names = ["cluster", "n_stars", *stats, "min_ess_bulk", "max_r_hat", "divergences", "status"]
        rows = []
        for name, fit in zip(self.names, self.fits):
            if fit is None:
                values = [0, *[math.nan] * len(stats), math.nan, math.nan, -1, self.errors.get(name, "not fitted")]
            else:
                d = fit.diagnostics
                moments = [f(fit.posterior[p]) for p in params for f in (np.mean, np.std)]
                values = [fit.stars.n_stars, *moments, d["min_ess_bulk"], max(d["r_hat"].values())]
                values += [d["divergences"], d["status"]]
            rows.append([str(name), *values])
        t = Table(rows=rows, names=names) if rows else Table(names=names)
        for p in params:
            for k in ("mean", "sd"):
                t[f"{p}_{k}"].unit = _QUANTITIES[p].unit or None
        return t
