"""What can be wrong with a cluster fit: pure checks, and the one place that warns.

:func:`diagnose` lists the problems (convergence by the package's one rule,
:func:`~gaia_distances.core.diagnostics.convergence_problems`, plus the
cluster-specific ones: chains in different modes, no cluster signal, a
members-only table) and summarises the run. :func:`warn_problems` issues them
as :class:`~gaia_distances.GaiaDistancesWarning`; only a fit that has just run
calls it, so rebuilding a saved fit is silent.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from gaia_distances.cluster.frozen import freeze, thaw
from gaia_distances.columns import warn
from gaia_distances.core.diagnostics import (
    RHAT_MAX,
    SIGMA_V_FIELD,
    SINGLE_CHAIN,
    convergence_problems,
    no_cluster_signal,
)
from gaia_distances.core.population import ClusterModel, ClusterPriors
from gaia_distances.core.terms import ALL_QUANTITIES

__all__ = [
    "CHECKED",
    "FitDiagnostics",
    "PARAMETERS",
    "SIGMA_V_FIELD",
    "checked_parameters",
    "cluster_problems",
    "diagnose",
    "status",
    "warn_problems",
]

#: The reference model's science quantities, checked and reported, in order.
PARAMETERS = tuple(q.name for q in ClusterModel(ClusterPriors()).quantities if q.science)
#: The science quantities (declared in :mod:`~gaia_distances.core.blocks` and by the model's terms), in order:
#: checked for degenerate draws, and summarised per cluster by ``fit_clusters`` (the convergence rule checks
#: every reported one).
CHECKED = tuple(q.name for q in ALL_QUANTITIES if q.science)


@dataclass(frozen=True)
class FitDiagnostics(Mapping[str, Any]):
    """A cluster fit's diagnostics, made once by :func:`diagnose`: read-only, and a mapping of its set fields
    (``fit.diagnostics["status"]``), as JSON in the fit's provenance (:meth:`to_dict`).

    ``r_hat``, ``ess_bulk`` and ``ess_tail`` are per reported parameter;
    ``warnings`` the problems (with ``notes``) when there are any; ``status``
    ``"ok"`` or what is wrong; ``sampler`` what the staged sampler ran;
    ``kinematics`` and ``field`` the model's; ``timings`` the fit's steps (s).
    Optional fields that a fit did not set are not among the keys.
    """

    num_chains: int
    divergences: int
    r_hat: Mapping[str, float]
    ess_bulk: Mapping[str, float]
    min_ess_bulk: float
    wall_time_s: float
    ess_per_s: float
    mean_steps_per_draw: float
    warnings: tuple[str, ...]
    notes: tuple[str, ...]
    status: str
    ess_tail: Mapping[str, float] | None = None
    min_ess_tail: float | None = None
    sampler: Mapping[str, Any] | None = None
    kinematics: bool | None = None
    field: str | None = None
    timings: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, freeze(getattr(self, f.name)))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> FitDiagnostics:
        """Diagnostics from their mapping (:meth:`to_dict`, a saved fit's provenance); unknown keys are refused."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise KeyError(f"not fields of FitDiagnostics: {unknown}")
        return cls(**dict(values))

    def _keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def __getitem__(self, key: str) -> Any:
        if key not in self._keys():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def to_dict(self) -> dict[str, Any]:
        """Plain types (dicts and lists), for JSON and pickling."""
        return {k: thaw(v) for k, v in self.items()}


def checked_parameters(posterior: Mapping[str, Any]) -> tuple[str, ...]:
    """The parameters of :data:`CHECKED` that ``posterior`` has."""
    return tuple(k for k in CHECKED if k in posterior)


def cluster_problems(posterior: Mapping[str, np.ndarray], r_hat: Mapping[str, float], n_stars: int) -> list[str]:
    """Problems of the model fit itself (not of the sampler), from the population draws (chains, draws)."""
    problems = []
    degenerate = []
    for name in checked_parameters(posterior):
        x = np.asarray(posterior[name], float)
        finite = x[np.isfinite(x)]
        if finite.size < x.size or finite.size == 0 or np.ptp(finite) <= 1e-12 * max(abs(float(finite[0])), 1e-300):
            degenerate.append(f"{name} = {float(finite[0]) if finite.size else math.nan:.3g}")
    if degenerate:
        problems.append(
            "degenerate posterior (every draw the same, or not finite): "
            + ", ".join(degenerate)
            + "; a parameter collapsed to a bound or the sampler never moved, so the fit is not usable"
        )
    log_d = np.log(posterior["D"])
    d_chain = log_d.mean(axis=1)
    if len(d_chain) > 1 and np.ptp(d_chain) > 5 * max(float(log_d.std()), 1e-12) and r_hat["D"] > RHAT_MAX:
        problems.append(
            "the chains disagree on D (chain means "
            + ", ".join(f"{math.exp(x):.0f}" for x in d_chain)
            + " pc): the posterior is multimodal; pass distance_hint= or ClusterPriors.physical()"
        )
    problems += no_cluster_signal(posterior, n_stars)
    q = posterior["Q"]
    if np.percentile(q, 16) > 0.97:
        problems.append(
            "Q piles at 1: the table looks like cluster members only, so the field length scale L "
            "is constrained by its prior alone; read L with care"
        )
    return problems


def status(problems: list[str], notes: list[str] | tuple[str, ...] = ()) -> str:
    """``"ok"``, or the problems joined by ``"; "``; ``notes`` (what was not checked) follow either.

    Examples
    --------
    >>> status([]), status(["bulk ESS < 400 for D"], ["R-hat not checked"])
    ('ok', 'bulk ESS < 400 for D; R-hat not checked')
    >>> status([], ["R-hat not checked"])
    'ok (R-hat not checked)'
    """
    if problems:
        return "; ".join([*problems, *notes])
    return f"ok ({'; '.join(notes)})" if notes else "ok"


def diagnose(
    posterior: Mapping[str, np.ndarray],
    r_hat: Mapping[str, float],
    ess_bulk: Mapping[str, float],
    sample_stats: Mapping[str, np.ndarray],
    *,
    n_stars: int,
    wall_time_s: float,
    extra_problems: tuple[str, ...] | list[str] = (),
    ess_tail: Mapping[str, float] | None = None,
    sampler: Mapping[str, Any] | None = None,
    kinematics: bool | None = None,
    field: str | None = None,
    timings: Mapping[str, float] | None = None,
) -> FitDiagnostics:
    """The fit's diagnostics (pure: nothing is warned): sampler statistics, problems and status.

    Every parameter in ``r_hat`` (the reported ones) is checked by the
    convergence rule, with its tail ESS where ``ess_tail`` gives it. A
    single chain (``sample_stats`` of shape ``(1, draws)``) is checked by its
    ESS and divergences alone: ``notes`` says that R-hat needs two or more
    chains (:data:`~gaia_distances.core.diagnostics.SINGLE_CHAIN`), and so do
    the status and, when the fit has problems, its warnings.
    ``sampler`` is what the staged sampler ran (its ``stages``); a fit that
    still fails the rule says what was tried. ``extra_problems`` (those of
    the MAP search) are listed first.
    """
    names = tuple(r_hat)
    r_hat = {k: float(r_hat[k]) for k in names}
    ess = {k: float(ess_bulk[k]) for k in names}
    tail = {k: float(ess_tail[k]) for k in names if k in ess_tail} if ess_tail is not None else {}
    div = int(np.sum(sample_stats["diverging"]))
    num_chains = int(np.shape(sample_stats["diverging"])[0])
    notes = [SINGLE_CHAIN] if num_chains < 2 else []
    convergence = convergence_problems(r_hat, ess, div, tail, num_chains=num_chains)
    if convergence and sampler and sampler.get("stages"):
        convergence.append(
            "the sampler stopped unconverged after: "
            + "; ".join(sampler["stages"])
            + "; rerun with a larger num_samples or num_warmup, or look for a second mode"
        )
    problems = list(extra_problems) + convergence + cluster_problems(posterior, r_hat, n_stars)
    min_ess = float(min(ess.values()))
    return FitDiagnostics(
        num_chains=num_chains,
        divergences=div,
        r_hat=r_hat,
        ess_bulk=ess,
        min_ess_bulk=min_ess,
        wall_time_s=wall_time_s,
        ess_per_s=min_ess / wall_time_s if wall_time_s > 0 else math.nan,
        mean_steps_per_draw=float(np.mean(sample_stats["n_steps"])),
        warnings=tuple([*problems, *notes] if problems else []),
        notes=tuple(notes),
        status=status(problems, notes),
        ess_tail=tail or None,
        min_ess_tail=float(min(tail.values())) if tail else None,
        sampler=dict(sampler) if sampler else None,
        kinematics=kinematics,
        field=field,
        timings=timings,
    )


def warn_problems(method: str, problems: Sequence[str]) -> None:
    """Warn once per problem (:class:`~gaia_distances.GaiaDistancesWarning`)."""
    for p in problems:
        warn(f"fit_cluster ({method}): {p}.")
