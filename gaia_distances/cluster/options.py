"""The options :func:`~gaia_distances.fit_cluster` and :func:`~gaia_distances.fit_clusters` share, checked once.

Both fits call :func:`checked_fit_options` before any work (no star is
selected, nothing compiled, no start searched), so a bad option fails at
once, with the same one-line message from either, naming the option and what
it must be.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from gaia_distances.core.numerics import checked_integer
from gaia_distances.core.population import FIELDS, ClusterPriors
from gaia_distances.core.sampling import checked_seed
from gaia_distances.core.systematics import SystematicsKernel
from gaia_distances.systematics import SystematicsSpec, resolve_offset_prior, resolve_systematics

__all__ = ["CLUSTER_METHODS", "FitOptions", "checked_fit_options"]

#: ``fit_cluster(method=...)``: the stars' distances integrated out, or sampled one per star.
CLUSTER_METHODS = ("marginal", "joint")


class FitOptions(NamedTuple):
    """The shared options once checked: the priors (the reference ones for ``None``), the seed as an ``int``,
    ``(n_membership_draws, n_quantile_draws)`` and the systematics kernel, checked once (``None``: none)."""

    prior: ClusterPriors
    seed: int
    n_per_star: tuple[int, int]
    kernel: SystematicsKernel | None


def checked_fit_options(
    *,
    prior: Any,
    kinematics: Any = "auto",
    field: Any,
    systematics: SystematicsSpec,
    parallax_offset_prior: Any,
    seed: Any,
    n_quantile_draws: Any,
    n_membership_draws: Any,
    num_warmup: Any = None,
    num_samples: Any = None,
    num_chains: Any = None,
) -> FitOptions:
    """Check the options both cluster fits take; raise ``ValueError`` (``TypeError`` for a prior that is not
    a :class:`~gaia_distances.ClusterPriors`) naming the first bad one.

    ``systematics`` and ``parallax_offset_prior`` are checked by resolving
    them (:func:`~gaia_distances.systematics.resolve_systematics`, whose
    kernel the fit then uses without checking it again;
    :func:`~gaia_distances.systematics.resolve_offset_prior`); the
    :class:`~gaia_distances.ClusterPriors` check their own fields when made.
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
    resolve_offset_prior(parallax_offset_prior)
    for name, value, least in (
        ("num_warmup", num_warmup, 0),
        ("num_samples", num_samples, 1),
        ("num_chains", num_chains, 1),
    ):
        if value is not None:  # None: the sampler's default
            checked_integer(name, value, least)
    n_member = checked_integer("n_membership_draws", n_membership_draws)
    n_quant = checked_integer("n_quantile_draws", n_quantile_draws)
    return FitOptions(prior, checked_seed(seed), (n_member, n_quant), kernel)
