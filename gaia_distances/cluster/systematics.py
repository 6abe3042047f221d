"""Gaia's angularly correlated systematics in a cluster fit: one latent offset shared by the members.

Gaia DR3 parallaxes of stars less than a few degrees apart share a systematic
error ``d`` (``parallax_corrected = true parallax + d``) with covariance
``V(theta)`` (:mod:`gaia_distances.core.systematics`); proper motions likewise.
However many members a cluster has, its mean parallax cannot be known better
than this shared part.

The model: every fitted star's parallax carries the offset ``d`` of the
members' sky region; given ``d`` the stars are independent, so the marginal
likelihood of :mod:`gaia_distances.core.likelihood` is unchanged in form. The
data cannot tell ``d`` from the cluster's parallax (the field's distance
distribution is itself fitted, and absorbs a shift), so the posterior of
``d`` is its prior, and the joint posterior factorises: the fit without
systematics gives the *apparent* cluster parallax ``1000 / D_stat``, and the
true one is ``1000 / D_stat - d``, with ``d`` drawn independently for every
posterior draw from ``N(m, V_c)``:

- ``V_c`` is the systematic variance of the members' weighted mean parallax,
  ``sum_ij w_i w_j V(theta_ij) / (sum w)^2``, with weights
  ``p_i / (sigma_i^2 + s^2)`` (membership probability ``p_i``, parallax error
  ``sigma_i``, the cluster's parallax spread ``s``;
  :func:`~gaia_distances.core.systematics.weighted_offset_variance`). Against
  the dense generalised least-squares variance of the mean parallax under
  ``C = V + diag(sigma^2)``, solved by Cholesky, it agrees to 2 % (Vasiliev &
  Baumgardt) and 0.1 % (Lindegren) for 2 000 members within a degree
  (``tests/test_cluster_systematics.py``);
- ``m`` is 0, or the optional prior of Vasiliev & Baumgardt (2021) on the
  residual zero point (``parallax_offset_prior="vasiliev2021"``: +0.010 +-
  0.003 mas for G > 13), whose uncertainty adds to ``V_c``. Without a kernel
  (``systematics=None``) such a prior is the offset's whole distribution
  (``V_c = 0``): the members share the prior's offset and nothing else.

The depth scales with the distance as a fixed parallax spread implies:
``sigma_log`` by ``D / D_stat`` and ``sigma`` (pc) by ``(D / D_stat)^2``. The
cluster's mean proper motion gets the same treatment with the proper-motion
kernel, per component. The per-star columns (membership, per-star distances)
are those of the apparent frame: memberships do not depend on ``d``; the
per-star distances are statistical only (their column descriptions say so).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
from astropy import units as u
from astropy.table import Table

from gaia_distances.cluster.stars import FittedStars
from gaia_distances.columns import column_values, sky_positions, warn
from gaia_distances.core.kernel_checks import check_covariance_psd, is_published
from gaia_distances.core.kinematics import A_V
from gaia_distances.core.parameters import Quantity
from gaia_distances.core.systematics import OffsetPrior, SystematicsKernel, weighted_offset_variance
from gaia_distances.core.user_kernel import callable_name
from gaia_distances.systematics import SystematicsSpec, resolve_offset_prior, resolve_systematics

__all__ = [
    "DEFAULT_SYSTEMATICS",
    "OFFSET_QUANTITIES",
    "FitSystematics",
    "add_systematics",
    "check_kernel_over_stars",
    "fit_systematics",
]

#: The shared offsets :func:`add_systematics` draws, as reported quantities (all of their spread is systematic).
OFFSET_QUANTITIES = (
    Quantity(
        "parallax_offset",
        "mas",
        "the members' shared Gaia parallax offset (catalogue minus true; from its prior)",
        False,
    ),
    Quantity("pmra_offset", "mas / yr", "the members' shared Gaia pmra offset (from its prior)", False),
    Quantity("pmdec_offset", "mas / yr", "the members' shared Gaia pmdec offset (from its prior)", False),
)

#: The default kernel of ``fit_cluster(systematics=...)``: Vasiliev & Baumgardt (2021), calibrated
#: on star clusters (globular clusters' internal parallax and proper-motion scatter) with a
#: magnitude scaling for G > 18; Lindegren et al. (2021) was fitted to quasars, mostly G > 17.
DEFAULT_SYSTEMATICS = "vasiliev2021"

#: Parallaxes (mas) a draw's true cluster parallax is kept above (a cluster at 1 Mpc).
_MIN_PARALLAX = 1e-3


class FitSystematics(NamedTuple):
    """What a fit adds for Gaia's correlated systematics.

    Attributes
    ----------
    kernel
        The covariance function of the offsets; ``None`` when only a prior on
        the mean offset is given (then ``parallax_variance`` is 0).
    parallax_variance
        ``V_c`` (mas^2): the systematic variance of the members' mean parallax.
    pm_variance
        The same for each proper-motion component ((mas/yr)^2); ``None``
        without proper motions.
    offset_mean, offset_sigma
        The prior on the mean offset (mas): 0 and 0 unless
        ``parallax_offset_prior`` was given.
    positions
        ``"weighted pairs"``, or ``"no positions"`` when the table has no
        ``ra``/``dec``, or none that is finite for a fitted star (then
        ``V(0)``: every member at one place, the largest value the kernel
        allows); ``"no kernel"`` without one.
    n_without_position
        Fitted stars without a finite ``ra``/``dec``: they are taken at zero
        separation from every other star (``V(0)``), so that the variance is
        not underestimated.
    """

    kernel: SystematicsKernel | None
    parallax_variance: float
    pm_variance: float | None
    offset_mean: float
    offset_sigma: float
    positions: str
    n_without_position: int = 0

    @property
    def parallax_sigma(self) -> float:
        """The total sd (mas) of the offset draws: ``sqrt(V_c + offset_sigma^2)``."""
        return math.sqrt(self.parallax_variance + self.offset_sigma**2)

    def record(self) -> dict[str, Any]:
        """JSON-ready provenance."""
        return {
            "kernel": None if self.kernel is None else self.kernel.name,
            "kernel_function": (
                None if self.kernel is None or is_published(self.kernel) else callable_name(self.kernel.parallax)
            ),
            "reference": None if self.kernel is None else self.kernel.reference,
            "parallax_offset_sigma_mas": math.sqrt(self.parallax_variance),
            "pm_offset_sigma_masyr": None if self.pm_variance is None else math.sqrt(self.pm_variance),
            "offset_prior_mean_mas": self.offset_mean,
            "offset_prior_sigma_mas": self.offset_sigma,
            "positions": self.positions,
            "n_without_position": self.n_without_position,
        }


def _column(table: Table, name: str, unit: u.UnitBase, rows: np.ndarray) -> np.ndarray | None:
    if name not in table.colnames:
        return None
    return column_values(table, name, unit)[rows]


def fit_systematics(
    spec: SystematicsSpec,
    table: Table,
    stars: FittedStars,
    membership: np.ndarray,
    posterior: Mapping[str, np.ndarray],
    *,
    offset_prior: str | OffsetPrior | tuple[float, float] | None = None,
    seed: int = 0,
    step: str = "fit_cluster",
) -> FitSystematics | None:
    """The members' shared-offset variances for a fit (``None`` when there are no systematics and no offset prior).

    ``step`` names the fit in warnings. ``spec`` is a kernel the fit resolved (used as it is) or an option for
    :func:`~gaia_distances.systematics.resolve_systematics`.
    ``table`` holds the fitted rows (``stars.rows``); ``membership`` their
    membership probabilities; ``posterior`` the physical draws of the fit
    without systematics (for the cluster's parallax and proper-motion spread).
    An ``offset_prior`` without a kernel (``spec`` ``None``) is applied alone:
    the offset is drawn from it, with no correlated variance.
    """
    kernel = spec if isinstance(spec, SystematicsKernel) else resolve_systematics(spec)
    prior = resolve_offset_prior(offset_prior)
    if kernel is None and prior is None:
        return None
    rows = stars.rows
    ra, dec = sky_positions(table, rows) or (None, None)
    g = _column(table, "phot_g_mean_mag", u.mag, rows)
    p = np.where(np.isfinite(membership), membership, 0.0)
    d = np.asarray(posterior["D"], float)
    plx = 1000.0 / float(np.median(d))
    spread = plx * float(np.median(np.asarray(posterior.get("sigma", 0.0 * d), float) / d))
    w = p / (np.asarray(stars.parallax_error, float) ** 2 + spread**2)
    if kernel is None:  # an offset prior alone
        ra, dec, positions, n_unplaced = np.zeros(len(rows)), np.zeros(len(rows)), "no kernel", 0
    else:
        ra, dec, positions, n_unplaced = _positions(ra, dec, len(rows), step)
    v_plx = 0.0 if kernel is None else weighted_offset_variance(ra, dec, w, kernel, g, seed=seed, unplaced="coincide")
    v_pm = None
    if (
        kernel is not None
        and stars.kinematic
        and "sigma_v" in posterior
        and stars.pmra_error is not None
        and stars.pmdec_error is not None
    ):
        pm_spread = float(np.median(np.asarray(posterior["sigma_v"], float))) * plx / A_V
        var_pm = 0.5 * (np.asarray(stars.pmra_error, float) ** 2 + np.asarray(stars.pmdec_error, float) ** 2)
        w_pm = p / (var_pm + pm_spread**2)
        v_pm = weighted_offset_variance(ra, dec, w_pm, kernel, component="proper_motion", unplaced="coincide")
        v_pm = 0.0 if not math.isfinite(v_pm) else v_pm
    mean, sigma = 0.0, 0.0
    if prior is not None:
        applies = np.ones(len(rows), bool) if g is None or not np.isfinite(prior.g_min) else g > prior.g_min
        share = float(np.sum(w * applies) / np.sum(w)) if np.sum(w) > 0 else 1.0
        mean, sigma = prior.mean * share, prior.sigma * share
    v_plx = 0.0 if not math.isfinite(v_plx) else v_plx  # no weighted member: nothing to shift
    return FitSystematics(kernel, v_plx, v_pm, mean, sigma, positions, n_unplaced)


def _positions(
    ra: np.ndarray | None, dec: np.ndarray | None, n: int, step: str
) -> tuple[np.ndarray, np.ndarray, str, int]:
    """The fitted stars' positions (deg; NaN where unknown), how they enter and how many are unknown.

    Stars without a finite ``ra``/``dec`` are counted at zero separation from
    every other star (``V(0)``, the kernel's largest value), with a warning:
    a table without positions, or with none finite, gets ``V(0)`` for the
    whole shared offset; a few unknown positions only raise it.
    """
    if ra is None or dec is None:
        warn(
            f"{step}: the table has no ra/dec, so the members' shared parallax offset takes the kernel's "
            "zero-separation variance V(0), its largest value"
        )
        return np.full(n, np.nan), np.full(n, np.nan), "no positions", n
    unplaced = ~(np.isfinite(ra) & np.isfinite(dec))
    n_unplaced = int(unplaced.sum())
    if n_unplaced == n:
        warn(
            f"{step}: no fitted star has a finite ra/dec, so the members' shared parallax offset takes the "
            "kernel's zero-separation variance V(0), its largest value"
        )
        return ra, dec, "no positions", n
    if n_unplaced:
        warn(
            f"{step}: {n_unplaced} of {n} fitted stars have no finite ra/dec; the members' shared parallax "
            "offset counts them at zero separation from every other star (V(0), the kernel's largest value)"
        )
    return ra, dec, "weighted pairs", n_unplaced


def check_kernel_over_stars(kernel: SystematicsKernel | None, table: Table, stars: FittedStars) -> None:
    """Refuse a user's kernel whose covariance over the fitted stars is not positive semi-definite.

    Before any fit, with the kernel the fit's options resolved (and whose
    values :func:`~gaia_distances.systematics.resolve_systematics` checked
    over 0-180 deg, :func:`~gaia_distances.core.kernel_checks.check_kernel`):
    its matrix over the stars with a position
    (:func:`~gaia_distances.core.kernel_checks.check_covariance_psd`; at most
    1 000 of them). The published kernels are not checked (Maiz Apellaniz
    et al. 2021 is known not to be positive semi-definite; its weighted
    variance is clipped at 0).

    Raises
    ------
    ValueError
        Naming the kernel and what fails.
    """
    if kernel is None or is_published(kernel):
        return
    rows = stars.rows
    ra, dec = sky_positions(table, rows) or (None, None)
    if ra is None or dec is None:
        return  # every star at one place: V(0) > 0 is all a covariance needs
    g = _column(table, "phot_g_mean_mag", u.mag, rows)
    check_covariance_psd(kernel, ra, dec, g)


def add_systematics(
    posterior: Mapping[str, np.ndarray], sys: FitSystematics, *, seed: int, step: str = "fit_cluster"
) -> dict[str, np.ndarray]:
    """The posterior with the shared offsets: ``D``, ``sigma``, ``sigma_log`` (and ``pmra``/``pmdec``) include them.

    Adds ``D_stat``, ``sigma_stat``, ``sigma_log_stat`` (and ``pmra_stat``/
    ``pmdec_stat``), the draws without the systematic term, and ``parallax_offset`` (and ``pmra_offset``/
    ``pmdec_offset``), the offsets drawn. Draws keep their shape
    ``(chains, draws)``; the offsets are independent of the chains, so they
    change no convergence diagnostic.
    """
    out = {k: np.asarray(v) for k, v in posterior.items()}
    rng = np.random.default_rng([seed, 12])
    d_app = out["D"]
    offset = sys.offset_mean + sys.parallax_sigma * rng.standard_normal(d_app.shape)
    plx = 1000.0 / d_app - offset
    if np.any(plx < _MIN_PARALLAX):
        warn(
            f"{step}: {np.mean(plx < _MIN_PARALLAX):.1%} of the draws put the cluster's true parallax at or "
            f"below 0 once the systematic offset is added; they are kept at {_MIN_PARALLAX} mas (1 Mpc). "
            "The distance is not bounded above by these data."
        )
    ratio = 1000.0 / np.maximum(plx, _MIN_PARALLAX) / d_app
    out["D_stat"] = d_app
    out["D"] = d_app * ratio
    for name, power in (("sigma_log", 1), ("sigma", 2)):
        if name in out:
            out[f"{name}_stat"] = out[name]
            out[name] = out[name] * ratio**power
    out["parallax_offset"] = offset
    if sys.pm_variance is not None and "pmra" in out:
        for name in ("pmra", "pmdec"):
            pm_offset = math.sqrt(sys.pm_variance) * rng.standard_normal(d_app.shape)
            out[f"{name}_stat"] = out[name]
            out[name] = out[name] - pm_offset
            out[f"{name}_offset"] = pm_offset
    return out
