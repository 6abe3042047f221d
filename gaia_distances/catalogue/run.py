"""``fit_catalogue``: refit every cluster of a list, each on its own field, resumably, in order.

Each cluster is one task (:func:`fit_one`): its field from the source
(:mod:`.sources`), :func:`~gaia_distances.fit_cluster` with the cluster's own
seed, and a row (:mod:`.rows`). Tasks run here or on Dask
(:mod:`.parallel`); the driver writes each result into ``out/`` as it
arrives (:mod:`.store`).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
import time
import warnings
from collections import Counter
from collections.abc import Mapping
from functools import partial
from typing import Any, NamedTuple

import numpy as np

from gaia_distances.catalogue.cluster_list import ClusterSpec, cluster_specs
from gaia_distances.catalogue.parallel import check_workers, run_tasks
from gaia_distances.catalogue.rows import FAILED_STATUSES, catalogue_table, failed_row, fitted_row
from gaia_distances.catalogue.sources import FieldError, FieldSource, field_source
from gaia_distances.catalogue.store import CatalogueStore, plain
from gaia_distances.cluster import fit_cluster
from gaia_distances.cluster.options import CLUSTER_METHODS, fit_options_from
from gaia_distances.cluster.stars import MIN_STARS
from gaia_distances.columns import update_provenance, warn
from gaia_distances.errors import TooFewStarsError, one_line

__all__ = ["ClusterResult", "RunSettings", "cluster_seed", "fit_catalogue", "fit_one"]

log = logging.getLogger(__name__)

#: ``fit_cluster``'s arguments ``fit_catalogue`` sets per cluster (or that are not options of the results).
_PER_CLUSTER = ("table", "seed", "distance_hint", "progress")
#: ``fit_cluster``'s signature: its options and their defaults.
_FIT_SIGNATURE = inspect.signature(fit_cluster)


class RunSettings(NamedTuple):
    """What every cluster's task shares: the field's cut and the fit's options (plain values, picklable)."""

    radius_scale: float
    magnitude_limit: float | None
    centre_epoch: float
    seed: int
    apply_zeropoint: bool | dict[str, Any]
    fit_options: dict[str, Any]


class ClusterResult(NamedTuple):
    """A task's result: the cluster's row, and its members table (``None`` when it was not fitted)."""

    row: dict[str, Any]
    members: Any


def cluster_seed(seed: int, key: str) -> int:
    """The seed of one cluster's fit: from the global ``seed`` and the cluster's key, the same on every run.

    Examples
    --------
    >>> cluster_seed(0, "ngc2682") == cluster_seed(0, "ngc2682") != cluster_seed(1, "ngc2682")
    True
    """
    digest = hashlib.sha256(f"{int(seed)}:{key}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _usable_stars(field: Any) -> int:
    """Rows with a finite parallax and a positive error (what any fit needs at least :data:`MIN_STARS` of)."""
    from gaia_distances.columns import column_values

    if "parallax_error" not in field.colnames or "parallax" not in field.colnames:
        return 0
    plx, err = column_values(field, "parallax"), column_values(field, "parallax_error")
    with np.errstate(invalid="ignore"):
        return int(np.sum(np.isfinite(plx) & np.isfinite(err) & (err > 0)))


def fit_one(spec: ClusterSpec, source: FieldSource, settings: RunSettings) -> ClusterResult:
    """One cluster: its field, its fit, its row. Errors become the row's status and reason, never raised."""
    t0 = time.perf_counter()
    seed = cluster_seed(settings.seed, spec.key)
    radius = spec.radius * settings.radius_scale
    fail = partial(failed_row, spec, radius=radius, seed=seed)
    try:
        field = source.fetch(
            spec, radius=radius, magnitude_limit=settings.magnitude_limit, centre_epoch=settings.centre_epoch
        )
    except FieldError as exc:
        return ClusterResult(fail(exc.status, one_line(exc), wall_time_s=time.perf_counter() - t0), None)
    except Exception as exc:
        return ClusterResult(
            fail("no_field", one_line(exc, with_type=True), wall_time_s=time.perf_counter() - t0), None
        )
    where = str(field.meta.get("catalogue_field", ""))
    n_usable = _usable_stars(field)
    if n_usable < MIN_STARS:
        reason = f"{n_usable} of {len(field)} rows have a finite parallax and a positive error; a fit needs {MIN_STARS}"
        return ClusterResult(fail("too_few_stars", reason, wall_time_s=time.perf_counter() - t0, field=where), None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if settings.apply_zeropoint:
                from gaia_distances.zeropoint import apply_zeropoint

                zp = settings.apply_zeropoint if isinstance(settings.apply_zeropoint, dict) else {}
                field = apply_zeropoint(field, progress=False, **zp)
            fit = fit_cluster(
                field, seed=seed, distance_hint=spec.distance_hint, progress=False, **settings.fit_options
            )
        except Exception as exc:
            status = "too_few_stars" if isinstance(exc, TooFewStarsError) else "fit_error"
            reason = one_line(exc, with_type=status == "fit_error", limit=500)
            return ClusterResult(fail(status, reason, wall_time_s=time.perf_counter() - t0, field=where), None)
    row = fitted_row(
        spec, fit, radius=radius, seed=seed, wall_time_s=time.perf_counter() - t0, n_rows=len(field), field=where
    )
    said = dict.fromkeys(one_line(str(w.message)) for w in caught)
    extra = [m for m in said if m.partition(": ")[2].rstrip(".") not in row["reason"]]  # not the diagnostics again
    row["reason"] = "; ".join([r for r in (row["reason"], *extra) if r])
    return ClusterResult(row, fit.table)


def _lost(settings: RunSettings, spec: ClusterSpec, exc: BaseException) -> ClusterResult:
    seed = cluster_seed(settings.seed, spec.key)
    reason = f"the task was lost: {one_line(exc, with_type=True, limit=400)}"
    row = failed_row(spec, "fit_error", reason, radius=spec.radius * settings.radius_scale, seed=seed, wall_time_s=0)
    return ClusterResult(row, None)


def _checked_settings(
    fit_options: dict[str, Any],
    *,
    seed: Any,
    radius_scale: Any,
    magnitude_limit: Any,
    centre_epoch: Any,
    apply_zeropoint: Any,
) -> RunSettings:
    """Every option checked before any field is fetched; ``ValueError``/``TypeError`` naming the first bad one."""
    known = _FIT_SIGNATURE.parameters
    unknown = [k for k in fit_options if k not in known]
    if unknown:
        raise TypeError(f"fit_catalogue got options fit_cluster does not take: {', '.join(unknown)}")
    if "distance_hint" in fit_options:
        raise ValueError("distance_hint is per cluster: give the list a parallax or distance column instead")
    if "progress" in fit_options:
        raise ValueError("progress is fit_catalogue's own (a bar over clusters); the fits show none")
    method = fit_options.get("method", "marginal")
    if method not in CLUSTER_METHODS:
        raise ValueError(f"method must be one of {CLUSTER_METHODS}; got {method!r}")
    defaults = {k: p.default for k, p in _FIT_SIGNATURE.parameters.items()}
    checked = fit_options_from(defaults | fit_options | {"seed": seed})
    fit_options = {**fit_options, "prior": checked.prior}  # None is the default prior set: recorded as such
    scale = _finite("radius_scale", radius_scale)
    if scale <= 0:
        raise ValueError(f"radius_scale must be positive; got {radius_scale!r}")
    limit = None if magnitude_limit is None else _finite("magnitude_limit", magnitude_limit)
    if not isinstance(apply_zeropoint, bool | dict):
        raise TypeError(
            f"apply_zeropoint must be True, False or a dict of apply_zeropoint's options; got {apply_zeropoint!r}"
        )
    return RunSettings(scale, limit, _finite("centre_epoch", centre_epoch), int(seed), apply_zeropoint, fit_options)


def _finite(name: str, value: Any) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    if isinstance(value, bool) or not math.isfinite(x):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    return x


def _record(settings: RunSettings, source: FieldSource) -> dict[str, Any]:
    """The options a refit's results depend on, every default filled in, as ``out/`` records them."""
    bound = _FIT_SIGNATURE.bind_partial(None, **settings.fit_options)
    bound.apply_defaults()
    options = {k: v for k, v in bound.arguments.items() if k not in _PER_CLUSTER}
    options |= {
        "seed": settings.seed,
        "radius_scale": settings.radius_scale,
        "magnitude_limit": settings.magnitude_limit,
        "centre_epoch": settings.centre_epoch,
        "apply_zeropoint": settings.apply_zeropoint,
        "source": source.describe(),
    }
    return {"options": plain(options)}  # (plain types: the catalogue's meta and out/'s record alike)


class _Checkpoint:
    """``catalogue.ecsv`` rewritten after a result, unless its last rewrite took over a tenth of the time since.

    Each cluster's own files are written as it ends; the catalogue, which
    grows with the list, is rewritten at most about 10 % of the time (every
    result for a small list), and always at the end, or when a run stops.
    """

    def __init__(self, store: CatalogueStore) -> None:
        self.store = store
        self.ended = -math.inf
        self.cost = 0.0

    def write(self, table: Any, *, final: bool = False) -> None:
        start = time.perf_counter()
        if not final and start - self.ended < 10 * self.cost:
            return
        try:
            self.store.write_catalogue(table() if callable(table) else table)
        except Exception:
            if not final:
                raise
            log.exception("fit_catalogue: could not write %s", self.store.catalogue_path)
        self.ended = time.perf_counter()
        self.cost = self.ended - start


def _summary(rows: list[dict[str, Any]]) -> dict[str, int]:
    counts = Counter(r["status"] for r in rows)
    return {s: counts[s] for s in ("ok", "warning", *FAILED_STATUSES) if counts[s]}


def fit_catalogue(
    clusters: Any,
    *,
    source: Any,
    out: Any,
    workers: int | None = None,
    client: Any = None,
    refit: bool = False,
    radius_scale: float = 1.0,
    magnitude_limit: float | None = None,
    centre_epoch: float = 2000.0,
    apply_zeropoint: bool | dict[str, Any] = False,
    query_options: Mapping[str, Any] | None = None,
    seed: int = 0,
    progress: bool | None = None,
    **fit_options: Any,
) -> Any:
    """Refit every cluster of a list on its own field; one row per cluster, written into ``out/`` as it ends.

    Parameters
    ----------
    clusters
        A list from :func:`~gaia_distances.read_cluster_list` (or anything it
        reads: a file, a table); checked before any field is fetched.
    source
        Where each cluster's field comes from:

        - ``"archive"``: one cone per cluster from the Gaia archive
          (:func:`~gaia_distances.query_field`, cached), ``query_options``
          going to :func:`~gaia_distances.query_adql` (``server``,
          ``cache_dir``, ``timeout``, ...);
        - an lsdb ``Catalog`` (``lsdb.open_catalog`` of a HATS copy of
          Gaia): a cone search per cluster, computed with Dask;
        - a folder: one file per cluster, any format
          :func:`~gaia_distances.load_table` reads, matched by normalised
          name (``ngc2301_box.csv`` for ``NGC 2301``), used whole;
        - a :class:`~gaia_distances.catalogue.sources.FieldSource`.
    out
        The output folder: ``catalogue.ecsv``, ``members/<key>.ecsv``,
        ``rows/<key>.json`` and ``catalogue_meta.json``
        (:mod:`gaia_distances.catalogue.store`), each written whole (a
        temporary file, then ``os.replace``); a cluster's files as soon as it
        ends. Checked writable first.
    workers, client
        ``None`` or 1 (default): the clusters one after another in this
        process, without Dask. ``workers=N``: a local ``distributed`` cluster
        of N processes, one thread (one fit) each; ``client``: an existing
        ``distributed.Client`` or a scheduler's address, whose workers should
        run one thread each (``--nthreads 1``): each fit uses every core of
        its process, and a cluster's warnings, which its row quotes, are
        caught per process. Results are written by this process as they
        complete.
    refit
        Refit every cluster, even those ``out/`` holds, and record the new
        options. ``False`` (default): a rerun fits only the clusters without
        a done row (``ok`` or ``warning``) and members file, and refuses
        (:class:`~gaia_distances.catalogue.store.OptionsMismatchError`, naming
        them) options other than those recorded in ``out/``.
    radius_scale
        The field's radius is the list's ``radius`` times this (archive,
        lsdb; a folder's files are used whole).
    magnitude_limit
        Keep only ``phot_g_mean_mag`` below this (in the query for the archive).
    centre_epoch
        The epoch (Julian year) of the list's centres: with the list's
        ``pmra``/``pmdec`` hints the centre is moved to Gaia's 2016.0, as
        :func:`~gaia_distances.query_cluster` does (Hunt & Reffert 2023 give
        2016.0 centres: pass ``centre_epoch=2016.0``).
    apply_zeropoint
        Run :func:`~gaia_distances.apply_zeropoint` on each field first (a
        dict gives its options, e.g. ``{"fallback": -0.017}``).
    seed
        The global seed: each cluster's fit gets
        :func:`cluster_seed` ``(seed, key)``, the same on every run and
        whichever worker runs it.
    progress
        A progress bar over clusters (default: when standard error is a terminal).
    **fit_options
        :func:`~gaia_distances.fit_cluster`'s options (``method``,
        ``kinematics``, ``field``, ``systematics``, ``num_samples``, ...),
        the same for every cluster. The list's ``distance`` or ``parallax``
        hint becomes the fit's ``distance_hint``; its ``pmra``/``pmdec``
        hints only move the cone's centre (``fit_cluster`` takes no
        proper-motion hint).

    Returns
    -------
    RefitCatalogue
        A ``QTable``, one row per cluster, in the list's order
        (:data:`~gaia_distances.catalogue.rows.CATALOGUE_COLUMNS`): ``D``,
        ``D_lo``, ``D_hi`` (median, 15.866 and 84.134 %), ``D_sd_stat``,
        ``D_sd_sys`` and the same for ``pmra``, ``pmdec``, ``sigma_v``, ``Q``;
        ``n_members`` (the sum of ``membership_prob``), ``n_stars``,
        ``status`` (``ok``, ``warning`` or a failure of
        :data:`~gaia_distances.catalogue.rows.FAILED_STATUSES`), ``reason``,
        ``wall_time_s``, ``field`` (the field's provenance), and the list's
        own values (``list_parallax``, ``list_distance``, ``list_pmra``,
        ``list_pmdec``); ``cat.plot("comparison")`` draws the refit against
        them (:class:`~gaia_distances.catalogue.RefitCatalogue`). A cluster that
        fails gets its row and the run goes on. ``meta["gaia_distances"]
        ["catalogue"]`` holds the options, the source and ``summary``, the
        count of each status (also logged, and warned when any failed).

    Examples
    --------
    >>> import tempfile, gaia_distances as gd
    >>> from astropy.table import Table
    >>> folder = tempfile.mkdtemp()
    >>> gd.write_table(gd.simulate_field(300, n_cluster=150, seed=1), folder + "/sim_a.ecsv")
    >>> clusters = gd.read_cluster_list(Table({"name": ["Sim A"], "ra": [132.846], "dec": [11.814],
    ...                                        "radius": [0.5]}))
    >>> cat = gd.fit_catalogue(clusters, source=folder, out=folder + "/refit", kinematics=False, field="edsd",
    ...                        systematics=None, zero_point="parallax_zeropoint_true", num_warmup=50,
    ...                        num_samples=100, extend=False)  # doctest: +SKIP
    >>> cat["status"][0], bool(700 < cat["D"][0].value < 1000)  # doctest: +SKIP
    ('ok', True)
    """
    specs = cluster_specs(clusters)
    check_workers(workers, client)
    settings = _checked_settings(
        fit_options,
        seed=seed,
        radius_scale=radius_scale,
        magnitude_limit=magnitude_limit,
        centre_epoch=centre_epoch,
        apply_zeropoint=apply_zeropoint,
    )
    src = field_source(source, **dict(query_options or {}))
    src.check(specs)
    store = CatalogueStore(out)
    store.check_writable()
    with store.claimed():  # one run writes out/ at a time; a killed run's temporary files go
        record = _record(settings, src)
        store.check_options(record, refit=bool(refit))
        keys = [s.key for s in specs]
        previous = {} if refit else store.previous_rows()
        rows = {k: r for k, r in previous.items() if k in keys}  # failed ones too, until they are tried again
        todo = [s for s in specs if not store.is_done(rows.get(s.key))]
        log.info("fit_catalogue: %d clusters, %d done before, %d to fit", len(specs), len(specs) - len(todo), len(todo))
        checkpoint = _Checkpoint(store)

        def table_of_rows() -> Any:
            t = catalogue_table([rows[k] for k in keys if k in rows])
            update_provenance(t, "catalogue", {**record, "summary": _summary(list(rows.values()))})
            return t

        def on_result(spec: ClusterSpec, result: ClusterResult) -> None:
            store.write_result(spec.key, result.row, result.members)
            rows[spec.key] = result.row
            checkpoint.write(table_of_rows)
            log.info("fit_catalogue: %s %s %s", spec.name, result.row["status"], result.row["reason"])

        lost = partial(_lost, settings)
        try:
            run_tasks(
                todo,
                fit_one,
                on_result,
                lost,
                shared=(src, settings),
                workers=workers,
                client=client,
                progress=progress,
            )
        finally:
            cat = table_of_rows()
            checkpoint.write(cat, final=True)
    summary = cat.meta["gaia_distances"]["catalogue"]["summary"]
    text = ", ".join(f"{n} {s}" for s, n in summary.items())
    log.info("fit_catalogue: %d clusters: %s", len(cat), text)
    failed = {s: n for s, n in summary.items() if s in FAILED_STATUSES}
    if failed:
        warn(
            f"fit_catalogue: {sum(failed.values())} of {len(cat)} clusters were not fitted ({text}); "
            f"see the status and reason columns of {store.catalogue_path}"
        )
    return cat
