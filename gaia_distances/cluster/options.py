"""The options :func:`~gaia_distances.fit_cluster` and :func:`~gaia_distances.fit_clusters` share, checked once.

Both fits call :func:`checked_fit_options` before any work (no star is
selected, nothing compiled, no start searched), so a bad option fails at
once, with the same one-line message from either, naming the option and what
it must be.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

from gaia_distances.cluster.term_columns import TermOptions, checked_term_options
from gaia_distances.columns import zero_point_record
from gaia_distances.core.numerics import checked_integer
from gaia_distances.core.population import FIELDS, ClusterPriors
from gaia_distances.core.sampling import NutsSettings, checked_seed, nuts_settings
from gaia_distances.core.systematics import OffsetPrior, SystematicsKernel
from gaia_distances.core.terms import TERMS
from gaia_distances.systematics import SystematicsSpec, resolve_offset_prior, resolve_systematics

__all__ = ["CLUSTER_METHODS", "FitOptions", "checked_fit_options", "fit_options_from"]

#: ``fit_cluster(method=...)``: the stars' distances integrated out, or sampled one per star.
CLUSTER_METHODS = ("marginal", "joint")


class FitOptions(NamedTuple):
    """The options :func:`~gaia_distances.fit_cluster` and :func:`~gaia_distances.fit_clusters` share, each
    checked once (:func:`checked_fit_options`): the one object the fits pass on and record.

    ``prior`` is the prior set (the reference one for ``None``); ``kernel``
    and ``offset_prior`` the resolved ``systematics`` and
    ``parallax_offset_prior`` (``None``: none); ``seed`` an ``int``;
    ``parallax_limits`` two floats, the lower first; the sampler's settings
    ``None`` where the method's defaults apply.
    """

    prior: ClusterPriors
    kinematics: bool | str
    field: str
    perspective: bool
    zero_point: Any
    parallax_limits: tuple[float, float] | None
    truncate: bool
    kernel: SystematicsKernel | None
    offset_prior: OffsetPrior | None
    num_warmup: int | None
    num_samples: int | None
    num_chains: int | None
    target_accept_prob: float | None
    extend: bool
    seed: int
    progress: bool | None
    n_quantile_draws: int
    n_membership_draws: int
    overwrite: bool
    terms: TermOptions = ()  # each registered model term's option (cluster/term_columns.py)

    @property
    def n_per_star(self) -> tuple[int, int]:
        """``(n_membership_draws, n_quantile_draws)``."""
        return self.n_membership_draws, self.n_quantile_draws

    @property
    def models_truncation(self) -> bool:
        """Whether the parallax cut enters the likelihood (a cut, and ``truncate``)."""
        return bool(self.truncate and self.parallax_limits is not None)

    def nuts_settings(self, method: str) -> NutsSettings:
        """The sampler's settings for ``method`` (a key of ``NUTS_DEFAULTS``), the given ones kept.

        No mass matrix is adapted: the marginal models are whitened by the
        Laplace approximation (and the staged sampler's pilot), the joint
        model's thousands of distances adapt a diagonal.
        """
        return nuts_settings(
            method,
            num_warmup=self.num_warmup,
            num_samples=self.num_samples,
            num_chains=self.num_chains,
            target_accept_prob=self.target_accept_prob,
            dense_mass=False,
        )

    def record(self) -> dict[str, Any]:
        """The options as the fit's provenance records them (JSON types), so that a later step can repeat them."""
        return {
            "zero_point_arg": zero_point_record(self.zero_point),
            "parallax_limits": list(self.parallax_limits) if self.parallax_limits else None,
            "truncate": self.models_truncation,
            "extend": self.extend,
            "seed": self.seed,
            "term_options": dict(self.terms),
        }


def checked_fit_options(
    *,
    prior: Any,
    kinematics: Any = "auto",
    field: Any,
    systematics: SystematicsSpec,
    parallax_offset_prior: Any,
    seed: Any,
    n_quantile_draws: Any = 32,
    n_membership_draws: Any = 400,
    perspective: Any = False,
    zero_point: Any = None,
    parallax_limits: Any = None,
    truncate: Any = True,
    num_warmup: Any = None,
    num_samples: Any = None,
    num_chains: Any = None,
    target_accept_prob: Any = None,
    extend: Any = True,
    progress: Any = None,
    overwrite: Any = False,
    term_options: Mapping[str, Any] | None = None,
) -> FitOptions:
    """Check the options both cluster fits take; raise ``ValueError`` (``TypeError`` for a prior that is not
    a :class:`~gaia_distances.ClusterPriors`) naming the first bad one.

    ``systematics`` and ``parallax_offset_prior`` are checked by resolving
    them (:func:`~gaia_distances.systematics.resolve_systematics`, whose
    kernel the fit then uses without checking it again;
    :func:`~gaia_distances.systematics.resolve_offset_prior`); the
    :class:`~gaia_distances.ClusterPriors` check their own fields when made;
    ``term_options`` are the model terms' (:func:`checked_term_options`:
    ``TypeError`` for a name that is not a term).

    Examples
    --------
    >>> opts = checked_fit_options(prior=None, field="edsd", systematics=None, parallax_offset_prior=None,
    ...                            seed=3, n_quantile_draws=32, n_membership_draws=400, parallax_limits=(0.2, 3))
    >>> opts.parallax_limits, opts.n_per_star, opts.models_truncation
    ((0.2, 3.0), (400, 32), True)
    >>> checked_fit_options(prior=None, field="edsd", systematics=None, parallax_offset_prior=None, seed=0,
    ...                     n_quantile_draws=32, n_membership_draws=400, parallax_limits=(3, 0.2))
    Traceback (most recent call last):
    ...
    ValueError: parallax_limits must be (lower, upper) in mas with lower < upper, both finite; got (3, 0.2)
    """
    prior = ClusterPriors() if prior is None else prior
    if not isinstance(prior, ClusterPriors):
        raise TypeError(
            f"prior must be a ClusterPriors (e.g. ClusterPriors.physical()) or None; got {type(prior).__name__}"
        )
    if not any(kinematics is k for k in (True, False)) and kinematics != "auto":
        raise ValueError(f"kinematics must be True, False or 'auto'; got {kinematics!r}")
    if field not in FIELDS:
        raise ValueError(f"field must be one of {FIELDS}; got {field!r}")
    kernel = resolve_systematics(systematics)
    offset_prior = resolve_offset_prior(parallax_offset_prior)
    for name, value, least in (
        ("num_warmup", num_warmup, 0),
        ("num_samples", num_samples, 1),
        ("num_chains", num_chains, 1),
    ):
        if value is not None:  # None: the sampler's default
            checked_integer(name, value, least)
    if target_accept_prob is not None and not 0.0 < _float(target_accept_prob) < 1.0:
        raise ValueError(f"target_accept_prob must be between 0 and 1; got {target_accept_prob!r}")
    return FitOptions(
        prior=prior,
        kinematics=kinematics,
        field=field,
        perspective=bool(perspective),
        zero_point=zero_point,
        parallax_limits=_checked_limits(parallax_limits),
        truncate=bool(truncate),
        kernel=kernel,
        offset_prior=offset_prior,
        num_warmup=None if num_warmup is None else int(num_warmup),
        num_samples=None if num_samples is None else int(num_samples),
        num_chains=None if num_chains is None else int(num_chains),
        target_accept_prob=None if target_accept_prob is None else float(target_accept_prob),
        extend=bool(extend),
        seed=checked_seed(seed),
        progress=None if progress is None else bool(progress),
        n_quantile_draws=checked_integer("n_quantile_draws", n_quantile_draws),
        n_membership_draws=checked_integer("n_membership_draws", n_membership_draws),
        overwrite=bool(overwrite),
        terms=checked_term_options(term_options or {}),
    )


def fit_options_from(arguments: Mapping[str, Any]) -> FitOptions:
    """:func:`checked_fit_options` over the shared options among a fit's ``arguments`` (its ``locals()`` on
    entry), by name: each fit passes every option it takes, and none is written out twice. The model terms'
    options are read from ``term_options`` (a fit's ``**term_options``) and from the terms' own names among
    ``arguments`` (a mapping of ``fit_cluster``'s keywords)."""
    names = inspect.signature(checked_fit_options).parameters
    terms = {**{k: v for k, v in arguments.items() if k in TERMS}, **(arguments.get("term_options") or {})}
    shared = {k: v for k, v in arguments.items() if k in names and k != "term_options"}
    return checked_fit_options(**shared, term_options=terms)


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _checked_limits(limits: Any) -> tuple[float, float] | None:
    """``parallax_limits`` as two floats, lower first, or ``ValueError`` naming the option."""
    if limits is None:
        return None
    try:
        lo, hi = (_float(x) for x in limits)
    except (TypeError, ValueError):
        lo = hi = math.nan
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(
            f"parallax_limits must be (lower, upper) in mas with lower < upper, both finite; got {limits!r}"
        )
    return lo, hi
