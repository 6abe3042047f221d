"""``fit_clusters``: many independent clusters in one vectorised NUTS program."""

from __future__ import annotations

from typing import Any

import numpy as np
from astropy import units as u
from astropy.table import QTable

from gaia_distances.cluster.fit import Stopwatch, assemble_fit, find_start
from gaia_distances.cluster.flags import ClusterFlag, flag_description
from gaia_distances.cluster.options import fit_options_from
from gaia_distances.cluster.result import ClusterFit, ClusterFits
from gaia_distances.cluster.stars import (
    CLUSTER_DISTANCE_COLUMNS,
    MIN_STARS,
    ParallaxCandidates,
    Selection,
    finish_selection,
    parallax_rows,
    pm_columns_present,
    prepare_data,
    proper_motion_rows,
    refuse_star_columns,
    usable_count_text,
    write_star_columns,
)
from gaia_distances.cluster.systematics import DEFAULT_SYSTEMATICS, check_kernel_over_stars
from gaia_distances.cluster.term_columns import term_options_documented
from gaia_distances.columns import warn
from gaia_distances.compile_cache import enable_compilation_cache
from gaia_distances.core.cluster_sampling import sample_marginal_batch
from gaia_distances.core.likelihood import pad_star_data, padded_size
from gaia_distances.core.numerics import ONE_SIGMA_QUANTILES
from gaia_distances.core.population import ClusterModel, ClusterPriors
from gaia_distances.core.sampling import chain_iterations
from gaia_distances.errors import GaiaDistancesError, MissingColumnsError
from gaia_distances.io import as_table
from gaia_distances.progress import progress_bar
from gaia_distances.systematics import SystematicsSpec

__all__ = ["fit_clusters"]


def _split_groups(tables: Any, group_by: str | None) -> tuple[list[Any], list[Any], QTable | None, list[np.ndarray]]:
    """``(names, tables, whole, rows)``: the clusters, and for a grouped table the rows of each."""
    if isinstance(tables, dict):
        return list(tables), list(tables.values()), None, []
    if isinstance(tables, list | tuple):
        return list(range(len(tables))), list(tables), None, []
    if group_by is None:
        raise TypeError("fit_clusters takes a list or dict of tables, or one table with group_by=<column name>")
    whole = as_table(tables)
    if not isinstance(group_by, str) or group_by not in whole.colnames:
        raise MissingColumnsError(
            f"group_by must name a column of the table (its cluster names); got {group_by!r}, "
            f"the table has {whole.colnames}"
        )
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


def _merge_groups(whole: QTable, rows: list[np.ndarray], fits: list[ClusterFit | None]) -> QTable:
    """The grouped table with each cluster's per-star columns at its rows; other rows NaN, flagged."""
    out = whole.copy(copy_data=True)
    n = len(out)
    member = np.full(n, np.nan)
    dist = np.full((n, len(ONE_SIGMA_QUANTILES)), np.nan)
    flag = np.full(n, int(ClusterFlag.NOT_FITTED), dtype=np.int16)
    for r, fit in zip(rows, fits):
        if fit is None:
            continue
        member[r] = np.asarray(fit.table["membership_prob"])
        for name, j in CLUSTER_DISTANCE_COLUMNS.items():
            dist[r, j] = fit.table[name].to_value(u.pc)
        flag[r] = np.asarray(fit.table["cluster_flag"])
    write_star_columns(
        out,
        member,
        dist,
        flag,
        member_description="posterior probability of membership of the row's cluster",
        flag_description=flag_description([f for f in ClusterFlag if f]),
    )
    return out


def _not_fitted(errors: dict[Any, str], name: Any, exc: Exception) -> None:
    """Record, with a warning, that cluster ``name`` cannot be fitted."""
    errors[name] = str(exc)
    warn(f"fit_clusters: cluster {name!r} not fitted: {exc}")


def _batch_kinematics(kinematics: bool | str, groups: dict[Any, ParallaxCandidates]) -> bool:
    """Whether every cluster's fit uses proper motions (one model for all), decided from each one's rows to fit.

    ``True`` and ``False`` stand (a cluster that cannot meet ``True`` is
    reported by its own selection). ``"auto"`` uses proper motions when every
    cluster that has :data:`MIN_STARS` rows to fit has as many usable proper
    motions (:func:`~gaia_distances.cluster.stars.proper_motion_rows`), as
    :func:`~gaia_distances.fit_cluster` decides for one; else the parallaxes
    alone for all, with one warning naming the clusters short of them.
    """
    if not all(pm_columns_present(c.table, kinematics, step="fit_clusters") for c in groups.values()):
        return False
    if kinematics is True or not groups:
        return kinematics is True
    short = []
    for name, cand in groups.items():
        n_usable, n_rows = int(proper_motion_rows(cand).usable.sum()), int(np.sum(cand.flag == 0))
        if n_rows >= MIN_STARS and n_usable < MIN_STARS:
            short.append(f"{name!r} ({usable_count_text(n_usable, n_rows)})")
    if short:
        warn(
            f"fit_clusters: clusters {'; '.join(short)}; fitting every cluster's parallaxes alone "
            "(kinematics=False), as all share one model"
        )
    return not short


@term_options_documented
def fit_clusters(
    tables: Any,
    *,
    group_by: str | None = None,
    prior: ClusterPriors | None = None,
    kinematics: bool | str = "auto",
    field: str = "flexible",
    zero_point: float | str | None = None,
    parallax_limits: tuple[float, float] | None = None,
    truncate: bool = True,
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
) -> ClusterFits:
    """Fit many independent clusters in one vectorised program (the marginal method).

    Every cluster gets the model of :func:`~gaia_distances.fit_cluster`
    (``method="marginal"``) with its own population parameters. The fields are
    padded to a common size with masked stars, the MAP and Laplace whitening
    are found per cluster, and NUTS runs for all clusters at once (``vmap``
    over clusters; chains in threads on CPU, vectorised on an accelerator),
    compiled once.

    Parameters
    ----------
    tables
        A list or dict of tables (anything :func:`~gaia_distances.load_table`
        accepts), or one table with a column naming each row's cluster
        (``group_by``).
    group_by
        The cluster-name column of a single table (a column it lacks raises
        :class:`~gaia_distances.MissingColumnsError`). Rows with a missing
        name are kept, flagged ``NOT_FITTED``.
    prior, kinematics, field, zero_point, parallax_limits, truncate, systematics, parallax_offset_prior
        As in :func:`~gaia_distances.fit_cluster`, the same for every
        cluster; under ``kinematics="auto"`` proper motions are used only when
        every cluster has 20 rows to fit with usable ones, decided as there
        (all clusters share one model: else every cluster is fitted with its
        parallaxes alone, with one warning naming the clusters short of them);
        under ``kinematics=True`` a cluster without them is reported in
        ``errors``.
    num_warmup, num_samples, num_chains, target_accept_prob, extend, seed
        NUTS settings for every cluster, with the defaults of
        :func:`~gaia_distances.fit_cluster`'s marginal method; equal seeds give
        equal results. With the staged sampler each cluster is extended only
        as far as its own draws need.
    progress
        Show a progress bar over all clusters' iterations (default: more than
        20 clusters).
    n_quantile_draws, n_membership_draws, overwrite
        As in :func:`~gaia_distances.fit_cluster`; every option is checked
        as there, before any work, with the same messages, and a table that
        already has a per-star column of the fit is refused unless ``overwrite``.
    **term_options
        (the model terms' options)

    Returns
    -------
    ClusterFits
        ``summary()`` has one row per cluster; ``fits[i]`` is a full
        :class:`~gaia_distances.ClusterFit`; ``table`` (grouped input) holds
        every row with the per-star columns. A cluster with fewer than 20
        usable stars is reported in ``errors`` and its rows flagged, without
        stopping the others.

    Examples
    --------
    >>> import gaia_distances as gd
    >>> fields = [gd.simulate_field(300, n_cluster=150, cluster_distance=d, seed=i)
    ...           for i, d in enumerate((500.0, 1500.0))]
    >>> res = gd.fit_clusters(fields, kinematics=False, field="edsd", zero_point="parallax_zeropoint_true",
    ...                       num_warmup=300, num_samples=300)
    >>> [float(round(m, -2)) for m in res.summary()["D_mean"]]
    [500.0, 1500.0]
    """
    options = fit_options_from(locals())  # every shared option, checked once, before anything else
    clock = Stopwatch()
    enable_compilation_cache()
    names, parts, whole, rows = _split_groups(tables, group_by)
    if whole is not None:
        refuse_star_columns(whole, overwrite=options.overwrite, step="fit_clusters")
    else:
        parts = [as_table(p) for p in parts]
        for name, part in zip(names, parts):
            refuse_star_columns(part, overwrite=options.overwrite, step=f"fit_clusters (cluster {name!r})")
    fits: list[ClusterFit | None] = [None] * len(names)
    errors: dict[Any, str] = {}
    candidates: dict[int, ParallaxCandidates] = {}
    for i, (name, part) in enumerate(zip(names, parts)):
        try:
            candidates[i] = parallax_rows(
                part, zero_point=options.zero_point, parallax_limits=options.parallax_limits, step="fit_clusters"
            )
        except GaiaDistancesError as exc:
            _not_fitted(errors, name, exc)
    use_pm = _batch_kinematics(options.kinematics, {names[i]: c for i, c in candidates.items()})
    settings = options.nuts_settings("marginal")
    selected: dict[int, Selection] = {}
    for i, cand in candidates.items():
        try:
            selected[i] = finish_selection(
                cand, kinematics=use_pm, truncate=options.truncate, terms=options.terms, step="fit_clusters"
            )
        except GaiaDistancesError as exc:
            _not_fitted(errors, names[i], exc)
        if i in selected:
            check_kernel_over_stars(options.kernel, selected[i].table, selected[i].stars)
    # one model for all: a term that some cluster cannot use under "auto" is left out of every fit (and of
    # every cluster's stars, which the fingerprint and a later from_table select again as the model does)
    terms = tuple(t for t, _ in options.terms if all(t in sel.stars.term_names for sel in selected.values()))
    dropped = sorted({t for sel in selected.values() for t in sel.stars.term_names} - set(terms))
    if dropped:
        warn(
            f"fit_clusters: {', '.join(dropped)} left out of every cluster's fit, as some cluster cannot use "
            "them and all share one model (fit those clusters apart to use them)"
        )
    for i, sel in selected.items():
        kept = {t: sel.stars.terms[t] for t in terms}
        selected[i] = sel._replace(stars=sel.stars._replace(terms=kept or None))
    model = ClusterModel(options.prior, options.field, use_pm, terms=terms)
    if selected:
        order = sorted(selected)
        with clock.step("prepare"):
            n_pad = padded_size(max(sel.stars.n_stars for sel in selected.values()))
            data = {i: pad_star_data(prepare_data(sel.stars, model), n_pad) for i, sel in selected.items()}
        with clock.step("map"):
            starts = {i: find_start(d, model) for i, d in data.items()}
        show = len(order) > 20 if options.progress is None else options.progress
        desc = f"NUTS ({len(order)} clusters)"
        with clock.step("sampling"), progress_bar(chain_iterations(settings), show, desc, unit="it") as update:
            draws = sample_marginal_batch(
                [data[i] for i in order],
                model,
                [starts[i] for i in order],
                settings,
                seed=options.seed,
                progress=update,
                extend=options.extend,
            )
        for b, i in enumerate(order):
            fits[i] = assemble_fit(
                selected[i],
                draws[b],
                data[i],
                model=model,
                options=options,
                method="marginal",
                search_problems=starts[i].problems,
                settings=settings,
                n_per_star=options.n_per_star,
                clock=Stopwatch(start=clock.start),  # each fit's wall time counts from the batch's start
                batched_clusters=len(order),
            )
        clock.steps["per_star_s"] = sum(f.diagnostics["timings"]["per_star_s"] for f in fits if f is not None)
    out = _merge_groups(whole, rows, fits) if whole is not None else None
    diagnostics = {"wall_time_s": clock.total(), "timings": dict(clock.steps), "n_clusters": len(names)}
    return ClusterFits(names=tuple(names), fits=tuple(fits), errors=errors, table=out, diagnostics=diagnostics)
