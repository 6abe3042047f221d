"""``fit_cluster``: a cluster over a field, fitted to a table of parallaxes.

The steps: select the stars (:mod:`~gaia_distances.cluster.stars`), prepare
their likelihood data (:mod:`~gaia_distances.core.likelihood`), find a start
(:mod:`~gaia_distances.core.initialisation`), sample with NUTS
(:mod:`~gaia_distances.core.sampling`), and assemble the result: per-star
columns (:mod:`~gaia_distances.core.membership`), diagnostics and provenance.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np
from astropy import units as u

from gaia_distances.cluster.diagnostics import diagnose, warn_problems
from gaia_distances.cluster.fingerprint import fit_fingerprint
from gaia_distances.cluster.flags import ClusterFlag, flag_description
from gaia_distances.cluster.options import CLUSTER_METHODS, FitOptions, fit_options_from
from gaia_distances.cluster.result import ClusterFit, parameter_summary
from gaia_distances.cluster.stars import (
    FittedStars,
    Selection,
    kinematic_data,
    prepare_data,
    refuse_star_columns,
    select_stars,
    write_star_columns,
)
from gaia_distances.cluster.systematics import (
    DEFAULT_SYSTEMATICS,
    add_systematics,
    check_kernel_over_stars,
    fit_systematics,
)
from gaia_distances.cluster.term_columns import term_options_documented
from gaia_distances.columns import update_provenance
from gaia_distances.compile_cache import enable_compilation_cache
from gaia_distances.core.cluster_sampling import (
    Draws,
    compile_marginal,
    sample_joint,
    sample_marginal,
)
from gaia_distances.core.initialisation import MapResult
from gaia_distances.core.kinematics import field_centre
from gaia_distances.core.likelihood import StarData, pad_star_data, padded_size
from gaia_distances.core.membership import PerStarResults, joint_per_star, per_star_results, precompile_per_star
from gaia_distances.core.numerics import ONE_SIGMA_QUANTILES
from gaia_distances.core.population import ClusterModel, ClusterPriors, physical_draws
from gaia_distances.core.sampling import NutsSettings, chain_iterations
from gaia_distances.core.search import find_map_extended
from gaia_distances.core.terms import prepare_term_data
from gaia_distances.io import as_table
from gaia_distances.progress import progress_bar
from gaia_distances.systematics import SystematicsSpec

__all__ = ["Stopwatch", "assemble_fit", "find_start", "fit_cluster"]

log = logging.getLogger(__name__)


class Stopwatch:
    """Wall time of a whole fit (from ``start``, default now) and of its named steps."""

    def __init__(self, start: float | None = None) -> None:
        self.start = time.perf_counter() if start is None else start
        self.steps: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.steps[f"{name}_s"] = time.perf_counter() - t0

    def total(self) -> float:
        return time.perf_counter() - self.start


def _pm_frame_centre(stars: FittedStars) -> list[float] | None:
    """``[ra, dec]`` (deg) of the field centre whose frame ``pmra``/``pmdec`` are given in, when the fit has one."""
    if stars.ra is None or stars.dec is None:
        return None
    placed = np.isfinite(stars.ra) & np.isfinite(stars.dec)  # the others' proper motions are not used
    return list(field_centre(stars.ra[placed], stars.dec[placed]))


@term_options_documented
def fit_cluster(
    table: Any,
    *,
    method: str = "marginal",
    prior: ClusterPriors | None = None,
    kinematics: bool | str = "auto",
    field: str = "flexible",
    perspective: bool = False,
    zero_point: float | str | None = None,
    parallax_limits: tuple[float, float] | None = None,
    truncate: bool = True,
    distance_hint: float | u.Quantity | None = None,
    systematics: SystematicsSpec = DEFAULT_SYSTEMATICS,
    parallax_offset_prior: str | tuple[float, float] | None = None,
    num_warmup: int | None = None,
    num_samples: int | None = None,
    num_chains: int | None = None,
    target_accept_prob: float | None = None,
    extend: bool = True,
    seed: int = 0,
    progress: bool | None = None,
    n_quantile_draws: int = 32,
    n_membership_draws: int = 400,
    overwrite: bool = False,
    **term_options: bool | str,
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
    prior
        :class:`~gaia_distances.ClusterPriors`; defaults to the reference
        analysis. ``ClusterPriors.physical()`` puts the depth prior on the
        cluster's size in pc, which keeps a small cluster from swallowing a
        big field.
    kinematics
        ``"auto"`` (default): use proper motions when the table has
        ``pmra``, ``pmdec``, ``pmra_error`` and ``pmdec_error`` (with the
        correlations ``parallax_pmra_corr``, ``parallax_pmdec_corr``,
        ``pmra_pmdec_corr`` when present, else 0 with a warning); a table
        with proper motions but no errors, or with fewer than 20 fitted rows
        whose proper motions are usable (finite values, finite positive
        errors), gets a warning and a parallax-only fit. ``True`` requires
        those columns (:class:`~gaia_distances.MissingColumnsError`) and 20
        such rows (:class:`~gaia_distances.GaiaDistancesError`); ``False``
        fits the parallaxes alone. A star without a usable proper motion is
        fitted with its parallax alone and flagged. With ``ra`` and ``dec`` the
        proper motions are turned to the frame of the field's centre (the
        stars' mean direction, provenance ``pm_frame_centre_deg``), where
        the cluster's ``pmra``, ``pmdec`` and the field's parameters are
        given (which matters near a celestial pole, where the stars' own
        RA/Dec axes turn with right ascension).
    field
        The field's distance model: ``"flexible"`` (default), a smooth
        mixture of log-normal distance bins that fits magnitude-limited
        cones, or ``"edsd"``, the reference analysis's exponentially
        decreasing space density (``kinematics=False, field="edsd"`` is the
        reference model).
    perspective
        For wide or near fields (a cluster spanning degrees): the members
        share one space velocity, projected along each member's own line of
        sight (``mu_a* = w (p . v) / 4.74``, ``mu_d = w (q . v) / 4.74``, as
        in Kalkayotl), instead of one proper motion scaled by ``D / r``. The
        fit gains the cluster's radial velocity ``v_r`` (km/s; prior
        ``N(0, ClusterPriors.v_r_sd)``), constrained by the perspective
        contraction or expansion, and ``pmra``, ``pmdec`` are the proper
        motion at the field's centre. Needs proper motions and ``ra``,
        ``dec``.
    zero_point
        As in :func:`~gaia_distances.estimate_distances`.
    parallax_limits
        ``(lo, hi)`` in mas: fit only stars whose catalogue ``parallax`` lies
        strictly inside (the reference uses ``(0.2, 3.0)``); others are kept
        in the table, flagged and given NaN results.
    truncate
        Model the ``parallax_limits`` cut (default): each component's
        likelihood is that of stars that passed it, so the cut field is not
        mistaken for a cluster, and ``Q`` is the cluster's fraction of the
        fitted stars (:mod:`~gaia_distances.core.selection`). ``False`` cuts
        without renormalising, as the reference analysis did (needed to
        reproduce its M67 numbers, and by ``method="joint"``).
    distance_hint
        A rough cluster distance (pc, or a Quantity) to start the sampler near;
        it must be positive and finite (``ValueError`` otherwise).
    systematics
        Gaia's angularly correlated parallax (and proper-motion) systematics:
        ``"vasiliev2021"`` (default; Vasiliev & Baumgardt 2021, calibrated on
        star clusters), ``"lindegren2021"``, ``"maiz-apellaniz2021"``, a
        callable ``V(theta_deg) -> mas^2`` (checked before the fit: finite,
        ``V(0) > 0``, positive semi-definite over the fitted stars, else
        ``ValueError``; a scalar is a constant kernel), or ``None`` for the
        reference model as it was. The members share one offset whose variance is the
        weighted mean of ``V`` over their pairs; ``D`` (and ``pmra``/``pmdec``)
        then include it, and the summary splits ``sd`` into ``sd_stat`` and
        ``sd_sys`` and adds a ``parallax_offset`` row
        (:mod:`gaia_distances.cluster.systematics`). Needs ``ra``/``dec``
        (without them, or for stars whose position is NaN, the
        zero-separation variance is used, with a warning).
    parallax_offset_prior
        An optional prior on the members' mean parallax offset,
        ``"vasiliev2021"`` (+0.010 +- 0.003 mas for G > 13, after the
        Lindegren zero point) or ``(mean, sigma)`` in mas. ``None``: mean 0.
        With ``systematics`` its uncertainty adds to the kernel's variance;
        with ``systematics=None`` it is the offset's whole distribution (the
        summary then has the ``parallax_offset`` row and the ``sd`` split
        too).
    num_warmup, num_samples, num_chains
        Defaults (:data:`~gaia_distances.core.sampling.NUTS_DEFAULTS`):
        150 / 500 / 2 for the marginal method, sampled in
        stages (:mod:`~gaia_distances.core.staged`): two thirds of the
        warm-up is a pilot that corrects the Laplace whitening where it
        misjudges a parameter's scale, the rest adapts the step size, then
        ``num_samples`` draws per chain, extended (``extend``) until every
        reported parameter has R-hat <= 1.01 and bulk and tail ESS >= 400
        (a single chain: the ESS alone, as R-hat needs two or more chains).
        The reference model (``kinematics=False, field="edsd"``) is sampled
        the same way; ``method="joint"``: 2000 / 4000 / 2 (the reference
        analysis's settings). The chains run in
        parallel on the CPU cores (vectorised on an accelerator); their
        number never depends on the machine.
    target_accept_prob
        NUTS's target acceptance statistic: 0.65 for the staged sampler (its
        coordinates are whitened, where a unit-Gaussian-like posterior is
        sampled best near 0.65), 0.8 otherwise.
    extend
        Let the staged sampler extend the chains (up to four times
        ``num_samples``) and then re-whiten them once with their own
        covariance while the draws fail the convergence rule (default).
        ``False`` stops after ``num_samples`` draws, converged or not (the
        diagnostics still say which).
    seed
        A non-negative integer (Python or NumPy); equal seeds give equal results.
    progress
        Show a NUTS progress bar (default: only for ``method="joint"``).
    n_quantile_draws, n_membership_draws
        Posterior draws averaged (Rao-Blackwellised) for each star's
        cluster-model distance quantiles and membership probability:
        integers >= 1 (at most ``num_chains * num_samples``, evenly thinned
        from every draw, also when the sampler extended its chains).
    overwrite
        Replace columns the table already has under the names of the fit's
        per-star columns (``membership_prob``, ``cluster_distance_median``,
        ``_lo``, ``_hi`` and ``cluster_flag``), as when a fit's own output is
        fitted again. ``False`` (default):
        :class:`~gaia_distances.ExistingColumnsError` names them, before the fit.
    **term_options
        (the model terms' options)

    Raises
    ------
    ValueError
        An option out of range (``method``, ``field``, ``systematics``,
        ``parallax_offset_prior``, ``seed``, ``n_quantile_draws``,
        ``n_membership_draws``, ``distance_hint``), before any work; the
        message names it. :class:`~gaia_distances.ClusterPriors` check their
        own fields when they are made.
    ExistingColumnsError
        The table has a column the fit would write, and ``overwrite`` is
        ``False``.

    Returns
    -------
    ClusterFit

    Examples
    --------
    >>> import gaia_distances as gd
    >>> t = gd.simulate_field(1500, n_cluster=500, seed=2)
    >>> fit = gd.fit_cluster(t, kinematics=False, field="edsd", zero_point="parallax_zeropoint_true",
    ...                      num_samples=300, seed=1)
    >>> bool(800 < fit.summary()["mean"][0] < 900)
    True
    """
    options = fit_options_from(locals())  # every shared option, checked once, before anything else
    clock = Stopwatch()
    enable_compilation_cache()
    if method not in CLUSTER_METHODS:
        raise ValueError(f"method must be one of {CLUSTER_METHODS}; got {method!r}")
    if method == "joint" and options.models_truncation:
        raise ValueError(
            "method='joint' does not model a parallax cut: pass truncate=False to cut as the reference "
            "analysis did, or use method='marginal'"
        )
    return _fit(as_table(table), options, method, _checked_distance_hint(distance_hint), clock)


def _fit(table: Any, options: FitOptions, method: str, distance_hint: float | None, clock: Stopwatch) -> ClusterFit:
    """:func:`fit_cluster` once its options are checked."""
    show = method == "joint" if options.progress is None else options.progress
    refuse_star_columns(table, overwrite=options.overwrite, step="fit_cluster")
    sel = select_stars(
        table,
        zero_point=options.zero_point,
        parallax_limits=options.parallax_limits,
        kinematics=options.kinematics,
        truncate=options.truncate,
        perspective=options.perspective,
        terms=options.terms,
    )
    check_kernel_over_stars(options.kernel, sel.table, sel.stars)
    model = ClusterModel(
        options.prior,
        options.field,
        sel.stars.kinematic,
        perspective=options.perspective,
        terms=sel.stars.term_names,
    )
    settings = options.nuts_settings(method)
    with clock.step("prepare"):
        # padded with zero-weight stars, so that fields of similar size share compiled programs
        data = prepare_data(sel.stars, model)
        data = pad_star_data(data, padded_size(sel.stars.n_stars))
    with clock.step("map"):
        n_draws = settings.num_chains * settings.num_samples
        n_per_star = options.n_per_star
        compiled = (min(n_draws, n_per_star[0]), min(n_draws, n_per_star[1]))
        start = _find_start(data, model, settings, method, distance_hint=distance_hint, n_per_star=compiled)
    log.info("fit_cluster: %d stars, MAP D = %.1f pc", sel.stars.n_stars, math.exp(start.z[model.position("log_D")]))
    with clock.step("sampling"), _nuts_progress(settings, show) as update:
        seed = options.seed
        if method == "marginal":
            draws = sample_marginal(data, model, start, settings, seed=seed, progress=update, extend=options.extend)
        else:
            stars = sel.stars
            args = (stars.parallax, stars.parallax_error, stars.zero_point)
            kin = kinematic_data(stars) if model.kinematics else None
            terms = prepare_term_data({name: stars.terms[name] for name in model.terms}, data.parallax.dtype)
            draws = sample_joint(
                *args,
                model,
                start,
                settings,
                seed=seed,
                progress=update,
                kin=kin,
                terms=terms,
            )
    return assemble_fit(
        sel,
        draws,
        data,
        model=model,
        options=options,
        method=method,
        search_problems=start.problems,
        settings=settings,
        n_per_star=compiled,  # what the per-star programs were compiled for, also after an extension
        clock=clock,
    )


def _checked_distance_hint(value: Any) -> float | None:
    """``distance_hint`` in pc as a float, or ``ValueError`` naming it (a Quantity is converted)."""
    if value is None:
        return None
    try:
        hint = float(value.to_value(u.pc)) if isinstance(value, u.Quantity) else float(value)
    except (TypeError, ValueError, u.UnitsError):
        raise ValueError(f"distance_hint must be a distance in pc; got {value!r}") from None
    if not (math.isfinite(hint) and hint > 0):
        raise ValueError(f"distance_hint must be a positive, finite distance in pc; got {value!r}")
    return hint


def find_start(data: StarData, model: ClusterModel, *, distance_hint: float | None = None) -> MapResult:
    """The MAP and the Laplace covariance there: the staged search (:mod:`~gaia_distances.core.search`), the same
    for every model."""
    return find_map_extended(data, model, distance_hint=distance_hint)


def _find_start(
    data: StarData,
    model: ClusterModel,
    settings: NutsSettings,
    method: str,
    *,
    distance_hint: float | None,
    n_per_star: tuple[int, int],
) -> MapResult:
    """The MAP; for the marginal method the sampler and the per-star programs compile meanwhile."""
    if method != "marginal":
        return find_start(data, model, distance_hint=distance_hint)
    with ThreadPoolExecutor(max_workers=1) as pool:  # one thread beside the search: it compiles in turn
        compiling = [
            pool.submit(_prepare_sampler, data, model, settings),
            pool.submit(precompile_per_star, data, model, n_member=n_per_star[0], n_quant=n_per_star[1]),
        ]
        start = find_start(data, model, distance_hint=distance_hint)
        for job in compiling:
            job.result()
    return start


def _prepare_sampler(data: StarData, model: ClusterModel, settings: NutsSettings) -> None:
    """Compile what the sampler needs before the MAP is known, and import the convergence checks'
    estimators (``arviz_stats``, a second the first time)."""
    compile_marginal(data, model, settings)
    import arviz_stats.base  # noqa: F401


@contextmanager
def _nuts_progress(settings: NutsSettings, enabled: bool) -> Iterator[Callable[[int], None] | None]:
    desc = f"NUTS ({settings.num_chains} chains)"
    with progress_bar(chain_iterations(settings), enabled, desc, unit="it") as update:
        yield update


def assemble_fit(
    sel: Selection,
    draws: Draws,
    data: StarData,
    *,
    model: ClusterModel,
    options: FitOptions,
    method: str,
    search_problems: tuple[str, ...] = (),
    settings: NutsSettings,
    n_per_star: tuple[int, int],
    clock: Stopwatch,
    batched_clusters: int | None = None,
) -> ClusterFit:
    """Draws -> a :class:`ClusterFit`: per-star columns, diagnostics (warned once) and provenance.

    The options' ``kernel`` and ``offset_prior`` add the members' shared Gaia
    offsets to the posterior (:mod:`gaia_distances.cluster.systematics`);
    the convergence checks use the sampled draws without them.
    ``batched_clusters`` is how many clusters ``fit_clusters`` sampled together.

    ``data`` may be padded beyond the fitted stars (``fit_clusters``);
    ``n_per_star`` is ``(membership draws, quantile draws)``;
    ``search_problems`` are those the MAP search found (they join the
    diagnostics' warnings).
    """
    with clock.step("per_star"):
        n = sel.stars.n_stars
        if draws.r is None:
            res = per_star_results(draws.z, data, model, n_member=n_per_star[0], n_quant=n_per_star[1])
            res = PerStarResults(res.membership[:n], res.distance_quantiles[:n])
        else:
            st = sel.stars
            kin = (
                (st.parallax_error, st.catalogue_parallax, st.zero_point, kinematic_data(st))
                if model.kinematics
                else None
            )
            res = joint_per_star(draws.r, draws.z, model, kin)
        out = sel.table
        member = np.full(len(out), np.nan)
        dist = np.full((len(out), len(ONE_SIGMA_QUANTILES)), np.nan)
        member[sel.stars.rows] = res.membership
        dist[sel.stars.rows] = res.distance_quantiles
        write_star_columns(
            out,
            member,
            dist,
            sel.flag,
            member_description="posterior probability of cluster membership (NaN: not fitted)",
            flag_description=flag_description([f for f in ClusterFlag if f and f != ClusterFlag.NOT_FITTED]),
        )
    sampled = physical_draws(draws.z, model)
    step = "fit_clusters" if batched_clusters is not None else "fit_cluster"
    seed = options.seed
    sys = fit_systematics(
        options.kernel, out, sel.stars, res.membership, sampled, offset_prior=options.offset_prior, seed=seed, step=step
    )
    posterior = sampled if sys is None else add_systematics(sampled, sys, seed=seed, step=step)
    summ = parameter_summary(posterior, method=method)  # its ESS and R-hat are those of the sampled draws
    diagnostics = diagnose(
        sampled,
        {str(r["parameter"]): float(r["r_hat"]) for r in summ},
        {str(r["parameter"]): float(r["ess_bulk"]) for r in summ},
        draws.sample_stats,
        n_stars=n,
        wall_time_s=clock.total(),
        extra_problems=search_problems,
        ess_tail={str(r["parameter"]): float(r["ess_tail"]) for r in summ},
        sampler=draws.sampler,
        kinematics=model.kinematics,
        field=model.field,
        timings=dict(clock.steps),
    )
    warn_problems(method, diagnostics.warnings)
    record = options.record()
    provenance: dict[str, Any] = {
        "method": method,
        "prior": dict(model.priors._asdict()),
        "kinematics": model.kinematics,
        "field": model.field,
        "n_field_pm": model.n_field_pm,
        "perspective": model.perspective,
        "terms": list(model.terms),
        "term_options": record["term_options"],
        "pm_frame_centre_deg": _pm_frame_centre(sel.stars) if model.kinematics else None,
        "zero_point": sel.zero_point_source,
        "zero_point_arg": record["zero_point_arg"],
        "parallax_limits": record["parallax_limits"],
        "n_stars_fitted": n,
        "num_warmup": settings.num_warmup,
        "num_samples": settings.num_samples,
        "num_chains": settings.num_chains,
        "target_accept_prob": settings.target_accept_prob,
        "seed": seed,
        "truncate": record["truncate"],
        "extend": record["extend"],
        **({"batched_clusters": batched_clusters} if batched_clusters is not None else {}),
        "systematics": None if sys is None else sys.record(),
        "summary": {str(r["parameter"]): {"mean": float(r["mean"]), "sd": float(r["sd"])} for r in summ},
        "diagnostics": diagnostics.to_dict(),
    }
    provenance["fingerprint"] = fit_fingerprint(out, sel.stars, provenance)
    update_provenance(out, "cluster", provenance)
    return ClusterFit(
        out, posterior, diagnostics, method, model.priors, sel.stars, draws.z, draws.sample_stats, model=model
    )
