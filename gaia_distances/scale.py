"""Catalogue scale: distances for tables beyond memory, on lsdb (HATS) and Dask.

Each partition runs :func:`~gaia_distances.estimate_distances` (and, if asked,
:func:`~gaia_distances.apply_zeropoint`): the same vectorised JAX quadrature as
for a table in memory, so every row gets exactly the numbers it would get
there. Needs the ``scale`` extra (``pip install "gaia-distances[scale]"``);
lsdb and Dask are imported only when these functions run.

- :func:`estimate_distances_hats` maps over an lsdb ``Catalog`` (a HATS copy
  of Gaia DR3 opened with ``lsdb.open_catalog``) and returns a ``Catalog``
  that can be written back with ``write_catalog`` (``to_hats`` in older lsdb);
- :func:`estimate_distances_dask` maps over a ``dask.dataframe`` (for example
  ``dd.read_parquet`` over files that are not HATS);
- :func:`estimate_partition` is the function both map: a pandas DataFrame in,
  the same rows with the new columns out.

Per-HEALPix priors (``GGD.bailer_jones_2021()``) are read once on the client
and, under ``dask.distributed``, broadcast once to every worker with
``Client.scatter``; tasks refer to that one copy.

Units are those of the package, dropped on the way back to pandas: distances
in pc, parallaxes and zero points in mas.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["estimate_distances_dask", "estimate_distances_hats", "estimate_partition", "output_columns"]

log = logging.getLogger(__name__)


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f'gaia_distances.scale needs {module.split(".")[0]}: pip install "gaia-distances[scale]"'
        ) from exc


def output_columns(
    *, prefix: str = "distance", extra_quantiles: Sequence[float] = (), apply_zeropoint: bool = False
) -> dict[str, np.dtype]:
    """Names and dtypes of the columns :func:`estimate_partition` appends, in order.

    The distance columns are named by
    :func:`~gaia_distances.columns.distance_column_names`, as in
    :func:`~gaia_distances.estimate_distances`.

    Examples
    --------
    >>> list(output_columns(extra_quantiles=(0.05,)))
    ['distance_median', 'distance_lo', 'distance_hi', 'distance_p05', 'distance_mode', 'distance_flag']
    """
    from gaia_distances.columns import distance_column_names

    cols: dict[str, np.dtype] = {}
    if apply_zeropoint:
        cols |= {
            "parallax_zeropoint": np.dtype("float64"),
            "parallax_corrected": np.dtype("float64"),
            "zeropoint_flag": np.dtype("int32"),
        }
    names = distance_column_names(prefix, extra_quantiles)
    cols |= {name: np.dtype("float64") for name in names.quantiles}
    cols |= {names.mode: np.dtype("float64"), names.flag: np.dtype("int16")}
    return cols


def estimate_partition(
    frame: Any,
    *,
    prior: Any = None,
    zero_point: float | str | None = None,
    apply_zeropoint: bool | dict[str, Any] = False,
    extra_quantiles: Sequence[float] = (),
    prefix: str = "distance",
    overwrite: bool = False,
) -> Any:
    """Distances for one partition: the same rows, in order, with the new columns.

    Parameters
    ----------
    frame
        A pandas (or nested-pandas) DataFrame; pyarrow and nullable dtypes are
        accepted, nulls become NaN and are flagged in ``<prefix>_flag``.
    prior, zero_point, extra_quantiles, prefix, overwrite
        As in :func:`~gaia_distances.estimate_distances`.
    apply_zeropoint
        Run :func:`~gaia_distances.apply_zeropoint` first (a dict gives its
        keyword arguments, e.g. ``{"fallback": -0.017}``); the CLI's
        ``--apply-zeropoint``.

    Returns
    -------
    DataFrame
        ``frame``'s rows, index and columns, plus the columns of
        :func:`output_columns`. A frame with zero rows gives zero rows.
    """
    from gaia_distances import zeropoint
    from gaia_distances.estimate import estimate_distances

    cols = output_columns(prefix=prefix, extra_quantiles=extra_quantiles, apply_zeropoint=bool(apply_zeropoint))
    if len(frame) == 0:  # lsdb and Dask infer metadata from empty frames
        return _meta(frame, cols)
    out = frame.copy()
    # a named index (source_id) reaches the pipeline as a column; a plain one is dropped
    table = frame if any(n is not None for n in frame.index.names) else frame.reset_index(drop=True)
    if apply_zeropoint:
        options = apply_zeropoint if isinstance(apply_zeropoint, dict) else {}
        table = zeropoint.apply_zeropoint(table, progress=False, **options)
    result = estimate_distances(
        table,
        prior=prior,
        zero_point=zero_point,
        extra_quantiles=extra_quantiles,
        prefix=prefix,
        progress=False,
        overwrite=overwrite,
    )
    for name, dtype in cols.items():
        col = result[name]
        out[name] = np.asarray(getattr(col, "value", col), dtype=dtype)
    return out


def _shared_prior(prior: Any, client: Any) -> Any:
    """The prior to hand to every task: loaded once, and broadcast to the workers when distributed."""
    from gaia_distances.priors import BailerJones2021Prior, resolve_prior

    if isinstance(prior, str) and prior.lower() in ("ggd", "bj2021", "bailer-jones-2021"):
        from gaia_distances.priors import GGD

        prior = GGD.bailer_jones_2021()
    if not isinstance(prior, BailerJones2021Prior):
        return prior  # small: travels inside each task
    prior = prior.loaded()  # read the table here, once
    resolve_prior(prior, _empty_source_table())  # fail early on a bad table
    if client is None:
        try:
            from distributed import get_client

            client = get_client()
        except (ImportError, ValueError):
            return prior  # no distributed scheduler: tasks share this process's memory
    log.info("broadcasting the Bailer-Jones 2021 prior table to %d workers", len(client.scheduler_info()["workers"]))
    return client.scatter(prior, broadcast=True, hash=False)


def _empty_source_table() -> Any:
    from astropy.table import Table

    return Table({"source_id": np.zeros(0, dtype=np.int64)})


def _meta(meta: Any, cols: dict[str, np.dtype]) -> Any:
    """An empty copy of ``meta`` (a zero-row frame) with the new columns appended."""
    out = meta.copy()
    for name, dtype in cols.items():
        out[name] = np.zeros(0, dtype=dtype)
    return out


def estimate_distances_hats(
    catalog: Any,
    *,
    prior: Any = None,
    zero_point: float | str | None = None,
    apply_zeropoint: bool | dict[str, Any] = False,
    extra_quantiles: Sequence[float] = (),
    prefix: str = "distance",
    client: Any = None,
    overwrite: bool = False,
) -> Any:
    """Per-star distances over an lsdb ``Catalog``, lazily, partition by partition.

    Parameters
    ----------
    catalog
        An ``lsdb.Catalog`` with ``parallax`` and ``parallax_error`` (and
        ``source_id`` for the Bailer-Jones 2021 priors; the zero-point inputs
        with ``apply_zeropoint=True``).
    prior, zero_point, extra_quantiles, prefix, overwrite
        As in :func:`~gaia_distances.estimate_distances` (a catalogue that
        already has the distance columns is refused before any partition runs,
        unless ``overwrite``).
    apply_zeropoint
        Apply the Lindegren et al. (2021) zero points in each partition first
        (a dict gives :func:`~gaia_distances.apply_zeropoint`'s keywords).
    client
        A ``distributed.Client``; default: the current one, if any. Used only
        to broadcast a per-HEALPix prior table.

    Returns
    -------
    lsdb.Catalog
        The input catalogue plus the columns of :func:`output_columns`; call
        ``.compute()`` or ``.write_catalog(path)``.

    Examples
    --------
    >>> import lsdb  # doctest: +SKIP
    >>> cat = lsdb.open_catalog("gaia_dr3/", columns=["source_id", "ra", "dec", "parallax",
    ...     "parallax_error", "phot_g_mean_mag", "nu_eff_used_in_astrometry", "pseudocolour",
    ...     "ecl_lat", "astrometric_params_solved"])  # doctest: +SKIP
    >>> out = estimate_distances_hats(cat, prior="ggd", apply_zeropoint={"fallback": -0.017})  # doctest: +SKIP
    >>> out.write_catalog("gaia_dr3_distances/")  # doctest: +SKIP
    """
    _require("lsdb")
    return _map(
        catalog,
        catalog.meta,
        prior=prior,
        client=client,
        zero_point=zero_point,
        apply_zeropoint=apply_zeropoint,
        extra_quantiles=extra_quantiles,
        prefix=prefix,
        overwrite=overwrite,
    )


def estimate_distances_dask(
    frame: Any,
    *,
    prior: Any = None,
    zero_point: float | str | None = None,
    apply_zeropoint: bool | dict[str, Any] = False,
    extra_quantiles: Sequence[float] = (),
    prefix: str = "distance",
    client: Any = None,
    overwrite: bool = False,
) -> Any:
    """Per-star distances over a ``dask.dataframe.DataFrame`` (or Parquet path), lazily.

    ``frame`` may also be a path or list of paths, read with
    ``dask.dataframe.read_parquet``. Other arguments are those of
    :func:`estimate_distances_hats`. Returns a Dask DataFrame with the columns
    of :func:`output_columns` appended; partitions keep their rows and order.
    """
    dd = _require("dask.dataframe")
    if isinstance(frame, str | list | tuple):
        frame = dd.read_parquet(frame)
    return _map(
        frame,
        frame._meta,
        prior=prior,
        client=client,
        zero_point=zero_point,
        apply_zeropoint=apply_zeropoint,
        extra_quantiles=extra_quantiles,
        prefix=prefix,
        overwrite=overwrite,
    )


def _map(
    collection: Any,
    meta: Any,
    *,
    prior: Any,
    client: Any,
    zero_point: float | str | None,
    apply_zeropoint: bool | dict[str, Any],
    extra_quantiles: Sequence[float],
    prefix: str,
    overwrite: bool,
) -> Any:
    """``collection.map_partitions(estimate_partition, ...)`` with the output meta and the shared prior.

    A collection that already has the distance columns is refused here, before any task runs, unless ``overwrite``.
    """
    from gaia_distances.columns import canonical_name, refuse_existing_columns

    cols = output_columns(prefix=prefix, extra_quantiles=extra_quantiles, apply_zeropoint=bool(apply_zeropoint))
    refuse_existing_columns(
        [canonical_name(str(c)) for c in meta.columns],
        list(output_columns(prefix=prefix, extra_quantiles=extra_quantiles)),
        overwrite=overwrite,
        step="estimate_distances",
        other="pass another prefix=",
    )
    return collection.map_partitions(
        _partition_task,
        _shared_prior(prior, client),
        zero_point=zero_point,
        apply_zeropoint=apply_zeropoint,
        extra_quantiles=tuple(extra_quantiles),
        prefix=prefix,
        overwrite=overwrite,
        meta=_meta(meta, cols),
    )


def _partition_task(frame: Any, prior: Any, **options: Any) -> Any:
    """:func:`estimate_partition` with the prior as a positional argument of the task.

    The prior may be a Dask ``Future`` (the broadcast prior table); it travels
    as a task argument that the scheduler resolves on the worker.
    """
    return estimate_partition(frame, prior=prior, **options)
