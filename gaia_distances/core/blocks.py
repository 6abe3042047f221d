"""The cluster model's blocks, each declaring its sampled parameters and the physical quantities it reports.

A model (:class:`~gaia_distances.core.population.ClusterModel`) is its
blocks, in order: the field's distance block (the EDSD's length scale, or the
flexible field's random-walk steps), the cluster's distance block (``D``, its
depth and ``Q``), and with proper motions the cluster's kinematic block (its
mean proper motion, velocity dispersion and, with the perspective projection,
radial velocity) and the field's (a mixture of ``M`` components). Each block
declares, once:

- its entries of ``z`` (:class:`~gaia_distances.core.parameters.Parameter`:
  name, prior, cluster or field, meaning);
- the physical quantities it reports
  (:class:`~gaia_distances.core.parameters.Quantity`: name, unit,
  description, and whether it is a science quantity, checked for degenerate
  draws and summarised per cluster).

The layout of ``z``, the prior density, the numpyro sites, the posterior's
units and descriptions and the checked quantities are all derived from these
declarations.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from gaia_distances.core.cluster_priors import ClusterPriors
from gaia_distances.core.field_bins import N_BINS
from gaia_distances.core.parameters import LogitBeta, Normal, Parameter, Quantity, StandardLogistic

__all__ = ["FIELD_PM_PRIORS", "FIELD_PM_SHARED", "QUANTITIES", "Block", "model_blocks"]


class Block(NamedTuple):
    """A block of the model: its entries of ``z`` and the physical quantities it reports."""

    parameters: tuple[Parameter, ...]
    quantities: tuple[str, ...]  # names in QUANTITIES (numbered per component where the block has several)
    #: quantities the block declares itself (a model term's, :mod:`~gaia_distances.core.term`), reported
    #: after those of :data:`QUANTITIES`
    declared: tuple[Quantity, ...] = ()


#: The field's proper-motion parameters that its components share: the constant (distance-independent)
#: part of the covariance, ``T`` (log sds in pmra and pmdec, and the atanh of their correlation).
FIELD_PM_SHARED = ("field_log_sd_ra", "field_log_sd_dec", "field_atanh_corr")

#: ``(mu, sd)`` of the Normal priors on the field's proper-motion parameters, by name prefix
#: (mas/yr, ln mas/yr, ln km/s, mas/yr per mas).
FIELD_PM_PRIORS = {
    "field_pmra": (0.0, 30.0),
    "field_pmdec": (0.0, 30.0),
    "field_log_sd_ra": (math.log(2.0), 2.0),
    "field_log_sd_dec": (math.log(2.0), 2.0),
    "field_atanh_corr": (0.0, 1.0),
    "field_log_sigma_v": (math.log(20.0), 1.5),
    "field_pm_trend": (0.0, 10.0),
    "field_logit_w": (0.0, 2.0),
}


def _field_distance_parameters(p: ClusterPriors, field: str) -> tuple[Parameter, ...]:
    if field == "edsd":
        return (Parameter("log_L", Normal(p.log_L_mu, p.log_L_sd), False, "ln(L / pc), the EDSD field's length scale"),)
    return tuple(
        Parameter(
            f"field_step_{j}",
            Normal(0.0, 1.0),
            False,
            f"the flexible field's random-walk step of its log weights into distance bin {j} (in units of "
            "field_smoothness)",
        )
        for j in range(1, N_BINS)
    )


def _cluster_distance_parameters(p: ClusterPriors) -> tuple[Parameter, ...]:
    if p.depth_prior == "size":
        depth = Parameter(
            "logit_size", StandardLogistic(), True, "logit of the cluster's ln size within log_size_range"
        )
    else:
        depth = Parameter(
            "log_sigma", Normal(p.log_sigma_mu, p.log_sigma_sd), True, "ln of the cluster's width in ln r"
        )
    return (
        Parameter("log_D", Normal(p.log_D_mu, p.log_D_sd), True, "ln(D / pc), the cluster's distance"),
        depth,
        Parameter("logit_Q", LogitBeta(p.Q_a, p.Q_b), True, "logit of Q, the cluster's fraction of the stars"),
    )


def _cluster_kinematics_parameters(p: ClusterPriors, perspective: bool) -> tuple[Parameter, ...]:
    out: tuple[Parameter, ...] = (
        Parameter("pmra", Normal(0.0, p.pm_sd), True, "the cluster's mean pmra (mas/yr)"),
        Parameter("pmdec", Normal(0.0, p.pm_sd), True, "the cluster's mean pmdec (mas/yr)"),
        Parameter(
            "log_sigma_v",
            Normal(math.log(p.sigma_v_median), p.sigma_v_log_sd),
            True,
            "ln of the members' internal velocity dispersion (km/s)",
        ),
    )
    if perspective:
        out += (Parameter("v_r", Normal(0.0, p.v_r_sd), True, "the cluster's radial velocity (km/s)"),)
    return out


def _field_kinematics_parameters(n_components: int) -> tuple[Parameter, ...]:
    def field(name: str, meaning: str, prior: str | None = None) -> Parameter:
        return Parameter(name, Normal(*FIELD_PM_PRIORS[prior or name]), False, meaning)

    out: list[Parameter] = []
    for k in range(1, n_components + 1):
        out += [
            field(f"field_pmra_{k}", f"field component {k}'s mean pmra (mas/yr)", "field_pmra"),
            field(f"field_pmdec_{k}", f"field component {k}'s mean pmdec (mas/yr)", "field_pmdec"),
            field(
                f"field_log_sigma_v_{k}", f"ln of field component {k}'s velocity dispersion (km/s)", "field_log_sigma_v"
            ),
        ]
    out += [
        field("field_log_sd_ra", "ln of the field's constant pmra spread, shared by its components (mas/yr)"),
        field("field_log_sd_dec", "ln of the field's constant pmdec spread, shared by its components (mas/yr)"),
        field("field_atanh_corr", "atanh of the correlation of the field's constant spread"),
        field("field_pm_trend_ra", "the field's pmra trend with parallax (mas/yr per mas)", "field_pm_trend"),
        field("field_pm_trend_dec", "the field's pmdec trend with parallax (mas/yr per mas)", "field_pm_trend"),
    ]
    out += [
        field(f"field_logit_w_{k}", f"log weight of field component {k} against component 1", "field_logit_w")
        for k in range(2, n_components + 1)
    ]
    return tuple(out)


_MASYR = "mas / yr"
#: Every physical quantity a cluster fit can report, in report order (a field component's quantities are
#: numbered ``field_pmra_1``, ``field_pmra_2``, ...; this is their common name).
QUANTITIES = (
    Quantity("D", "pc", "cluster distance exp(log_D)", True),
    Quantity("sigma", "pc", "cluster depth exp(log_sigma + log_D) (the reference's approx_size)", True),
    Quantity("Q", "", "cluster fraction", True),
    Quantity("L", "pc", "field EDSD length scale", True),
    Quantity("sigma_log", "", "cluster width in ln r, exp(log_sigma)", False),
    Quantity("field_median", "pc", "median distance of the flexible field", True),
    Quantity("pmra", _MASYR, "cluster mean proper motion in right ascension (mu_alpha*)", True),
    Quantity("pmdec", _MASYR, "cluster mean proper motion in declination", True),
    Quantity("sigma_v", "km / s", "cluster internal velocity dispersion (per proper-motion component)", True),
    Quantity("v_r", "km / s", "cluster radial velocity, from the perspective projection of its space velocity", False),
    Quantity("field_pmra", _MASYR, "field proper-motion component's mean pmra at zero parallax", False),
    Quantity("field_pmdec", _MASYR, "field proper-motion component's mean pmdec at zero parallax", False),
    Quantity(
        "field_sigma_v", "km / s", "field component's velocity dispersion (proper-motion spread sigma_v w / A_V)", False
    ),
    Quantity("field_pm_weight", "", "field component's weight", False),
    Quantity(
        "field_pm_sd_ra",
        _MASYR,
        "field's constant (distance-independent) pmra dispersion, shared by its components",
        False,
    ),
    Quantity(
        "field_pm_sd_dec",
        _MASYR,
        "field's constant (distance-independent) pmdec dispersion, shared by its components",
        False,
    ),
    Quantity("field_pm_corr", "", "correlation of the field's constant pmra-pmdec dispersion", False),
    Quantity(
        "field_pm_trend_ra",
        "mas / yr per mas",
        "change of the field's mean pmra per mas of true parallax (solar reflex)",
        False,
    ),
    Quantity(
        "field_pm_trend_dec",
        "mas / yr per mas",
        "change of the field's mean pmdec per mas of true parallax (solar reflex)",
        False,
    ),
)


def model_blocks(
    priors: ClusterPriors, field: str, kinematics: bool, n_field_pm: int, perspective: bool
) -> tuple[Block, ...]:
    """The blocks of a model, in the order of ``z``."""
    out: tuple[Block, ...] = (
        Block(_field_distance_parameters(priors, field), ("L",) if field == "edsd" else ("field_median",)),
        Block(_cluster_distance_parameters(priors), ("D", "sigma", "Q", "sigma_log")),
    )
    if kinematics:
        out += (
            Block(
                _cluster_kinematics_parameters(priors, perspective),
                ("pmra", "pmdec", "sigma_v", *(("v_r",) if perspective else ())),
            ),
            Block(
                _field_kinematics_parameters(n_field_pm),
                (
                    "field_pmra",
                    "field_pmdec",
                    "field_sigma_v",
                    "field_pm_weight",
                    "field_pm_sd_ra",
                    "field_pm_sd_dec",
                    "field_pm_corr",
                    "field_pm_trend_ra",
                    "field_pm_trend_dec",
                ),
            ),
        )
    return out
