"""Where a cluster's field comes from: a folder of files, the Gaia archive, or an lsdb (HATS) catalogue.

Each source answers one question, :meth:`FieldSource.fetch`: the stars of
one cluster's field, as a table :func:`~gaia_distances.fit_cluster` reads.
Sources hold only plain settings (paths, a server, a lazy catalogue), so
they travel to Dask workers. :func:`field_source` turns what a user passes
(``"archive"``, a folder, an lsdb ``Catalog``) into one.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from astropy import units as u
from astropy.table import QTable

from gaia_distances.catalogue.cluster_list import ClusterSpec, cluster_key
from gaia_distances.errors import GaiaDistancesError

__all__ = [
    "GAIA_EPOCH",
    "ArchiveSource",
    "FieldError",
    "FieldSource",
    "FolderSource",
    "LsdbSource",
    "centre_at_epoch",
    "field_source",
]

#: Gaia DR3's reference epoch (Julian year).
GAIA_EPOCH = 2016.0


class FieldError(GaiaDistancesError):
    """A cluster's field could not be had; ``status`` says which kind of failure it is."""

    def __init__(self, message: str, status: str) -> None:
        super().__init__(message)
        self.status = status


def centre_at_epoch(spec: ClusterSpec, centre_epoch: float) -> tuple[float, float]:
    """The cluster's centre (deg) moved by its proper-motion hint from ``centre_epoch`` to :data:`GAIA_EPOCH`.

    Linear in time, on the sphere's tangent plane, as ``EPOCH_PROP_POS``
    without parallax or radial velocity (arcseconds over decades: exact for
    a cone's centre). Without both hints the centre is unchanged.

    Examples
    --------
    >>> from gaia_distances.catalogue.cluster_list import ClusterSpec
    >>> ra, dec = centre_at_epoch(ClusterSpec("x", "x", 10.0, 0.0, 0.5, pmra=3600.0, pmdec=0.0), 2015.0)
    >>> round(ra, 6), dec
    (10.001, 0.0)
    """
    if not (math.isfinite(spec.pmra) and math.isfinite(spec.pmdec)):
        return spec.ra, spec.dec
    dt = GAIA_EPOCH - float(centre_epoch)
    dec = spec.dec + spec.pmdec * dt / 3.6e6
    ra = spec.ra + spec.pmra * dt / 3.6e6 / max(math.cos(math.radians(spec.dec)), 1e-9)
    return ra % 360.0, max(-90.0, min(90.0, dec))


def _magnitude_cut(table: QTable, magnitude_limit: float | None) -> QTable:
    """The rows with ``phot_g_mean_mag < magnitude_limit`` (all rows for ``None``); NaN magnitudes leave."""
    if magnitude_limit is None:
        return table
    if "phot_g_mean_mag" not in table.colnames:
        raise FieldError("magnitude_limit needs a phot_g_mean_mag column, which the field lacks", "no_field")
    g = np.asarray(getattr(table["phot_g_mean_mag"], "value", table["phot_g_mean_mag"]), dtype=float)
    with np.errstate(invalid="ignore"):
        return table[g < magnitude_limit]


class FieldSource:
    """A source of fields. Subclasses define :meth:`fetch` and :meth:`describe`."""

    def fetch(
        self, spec: ClusterSpec, *, radius: float, magnitude_limit: float | None, centre_epoch: float
    ) -> QTable:  # pragma: no cover - abstract
        """The field of ``spec`` within ``radius`` (deg) of its centre, brighter than ``magnitude_limit``."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:  # pragma: no cover - abstract
        """The source as the catalogue's metadata records it (JSON types); equal records, equal fields."""
        raise NotImplementedError

    def check(self, specs: list[ClusterSpec]) -> None:
        """Refuse, before any fit, a source that cannot serve these clusters (default: nothing to check)."""


class FolderSource(FieldSource):
    """One file per cluster in ``folder``, any format :func:`~gaia_distances.load_table` reads.

    A file belongs to a cluster when its name without extension, normalised
    with :func:`~gaia_distances.catalogue.cluster_key`, is the cluster's key,
    or begins with it followed by a separator (``ngc2301_edr3_box.csv`` for
    ``NGC 2301``). A file is a field as it is: no radius is cut (its rows
    are the user's choice); ``magnitude_limit`` applies.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"source folder {self.folder} does not exist or is not a folder")
        self._index: dict[str, list[Path]] | None = None

    def _files(self) -> dict[str, list[Path]]:
        """Each key a file could belong to -> its files: its whole stem's key and those of its leading parts.

        Made once, when the first field is fetched (one listing of the folder, however many clusters).
        """
        from gaia_distances.io import guess_format

        if self._index is not None:
            return self._index
        found: dict[str, list[Path]] = {}
        for path in sorted(self.folder.iterdir()):
            readable = guess_format(path) is not None or path.name.lower().endswith(".json")
            if not path.is_file() or path.name.startswith(".") or not readable:
                continue
            stem = path.name.split(".")[0]
            parts = [p for p in stem.replace("-", "_").replace(" ", "_").split("_") if p]
            keys = {cluster_key("_".join(parts[:n])) for n in range(1, len(parts) + 1)}
            for k in keys | {cluster_key(stem)}:
                found.setdefault(k, []).append(path)
        self._index = found
        return found

    def path_for(self, spec: ClusterSpec) -> Path:
        """The file of ``spec``; :class:`FieldError` when none or several match."""
        files = self._files().get(spec.key, [])
        exact = [p for p in files if cluster_key(p.name.split(".")[0]) == spec.key]
        files = exact or files
        if not files:
            raise FieldError(f"no file for {spec.name!r} (key {spec.key!r}) in {self.folder}", "no_field")
        if len(files) > 1:
            names = ", ".join(p.name for p in files)
            raise FieldError(f"several files in {self.folder} match {spec.name!r}: {names}", "no_field")
        return files[0]

    def fetch(self, spec: ClusterSpec, *, radius: float, magnitude_limit: float | None, centre_epoch: float) -> QTable:
        from gaia_distances.io import load_table

        path = self.path_for(spec)
        table = _magnitude_cut(load_table(path), magnitude_limit)
        table.meta["catalogue_field"] = f"file:{path.name}"
        return table

    def describe(self) -> dict[str, Any]:
        return {"kind": "folder", "folder": str(self.folder.absolute())}


class ArchiveSource(FieldSource):
    """One cone per cluster from a Gaia TAP server (:func:`~gaia_distances.query_field`, cached).

    ``query_options`` go to :func:`~gaia_distances.query_adql` (``server``,
    ``cache_dir``, ``timeout``, ``retries``, ...). The cone's centre is
    propagated from ``centre_epoch`` to 2016.0 on the server
    (``EPOCH_PROP_POS``) when the list has both proper-motion hints, as
    :func:`~gaia_distances.query_cluster` does; ``magnitude_limit`` becomes
    ``phot_g_mean_mag < limit`` in the query.
    """

    def __init__(self, **query_options: Any) -> None:
        query_options.setdefault("progress", False)
        self.query_options = query_options

    def fetch(self, spec: ClusterSpec, *, radius: float, magnitude_limit: float | None, centre_epoch: float) -> QTable:
        from astropy.coordinates import SkyCoord

        from gaia_distances.query import query_field

        pm = math.isfinite(spec.pmra) and math.isfinite(spec.pmdec)
        where = None if magnitude_limit is None else f"phot_g_mean_mag < {float(magnitude_limit):.6g}"
        try:
            table = query_field(
                SkyCoord(spec.ra * u.deg, spec.dec * u.deg),
                radius * u.deg,
                where=where,
                pmra=spec.pmra if pm else None,
                pmdec=spec.pmdec if pm else None,
                centre_epoch=centre_epoch,
                **self.query_options,
            )
        except (GaiaDistancesError, OSError) as exc:
            raise FieldError(f"query failed: {exc}", "query_error") from exc
        prov = table.meta.get("gaia_distances", {}).get("query", {})
        table.meta["catalogue_field"] = f"archive:jobid={prov.get('jobid')},cached={prov.get('from_cache')}"
        return table

    def describe(self) -> dict[str, Any]:
        from gaia_distances.query import DEFAULT_SERVER

        return {"kind": "archive", "server": str(self.query_options.get("server", DEFAULT_SERVER))}


class LsdbSource(FieldSource):
    """Cone searches on an lsdb ``Catalog`` (a HATS copy of Gaia), computed with Dask.

    The centre is moved to 2016.0 by the proper-motion hints
    (:func:`centre_at_epoch`); ``magnitude_limit`` cuts ``phot_g_mean_mag``
    after the cone search. Inside a ``distributed`` worker the search runs
    on the cluster's scheduler, the task seceding from its worker's thread
    while it waits (``worker_client``), so a fit never blocks the search.
    """

    def __init__(self, catalog: Any) -> None:
        self.catalog = catalog

    def fetch(self, spec: ClusterSpec, *, radius: float, magnitude_limit: float | None, centre_epoch: float) -> QTable:
        from gaia_distances.io import load_table

        ra, dec = centre_at_epoch(spec, centre_epoch)
        cone = self.catalog.cone_search(ra, dec, radius * 3600.0)
        frame = _compute(cone)
        if any(n is not None for n in frame.index.names) and frame.index.name not in frame.columns:
            frame = frame.reset_index()  # _healpix_29 or source_id as a column
        table = _magnitude_cut(load_table(frame), magnitude_limit)
        table.meta["catalogue_field"] = f"lsdb:{self.describe()['name']}:cone({ra:.6f},{dec:.6f},{radius:.6g})"
        return table

    def describe(self) -> dict[str, Any]:
        info = getattr(getattr(self.catalog, "hc_structure", None), "catalog_info", None)
        name = getattr(info, "catalog_name", None) or getattr(self.catalog, "name", None) or "catalog"
        path = getattr(getattr(self.catalog, "hc_structure", None), "catalog_path", None)
        return {"kind": "lsdb", "name": str(name), "path": None if path is None else str(path)}


def _compute(collection: Any) -> Any:
    """``collection.compute()``; inside a ``distributed`` task, on its scheduler with the task seceded."""
    try:
        from distributed import get_worker, worker_client

        get_worker()
    except (ImportError, ValueError):
        return collection.compute()
    with worker_client():
        return collection.compute()


def field_source(source: Any, **query_options: Any) -> FieldSource:
    """A :class:`FieldSource` from ``"archive"``, a folder path, an lsdb ``Catalog`` or a ``FieldSource``.

    ``query_options`` are for ``"archive"`` only.
    """
    if isinstance(source, FieldSource):
        if query_options:
            raise TypeError("query options go with source='archive', not with a FieldSource")
        return source
    if isinstance(source, str) and source.strip().lower() == "archive":
        return ArchiveSource(**query_options)
    if query_options:
        raise TypeError(f"query options ({', '.join(query_options)}) go with source='archive' only")
    if hasattr(source, "cone_search"):
        return LsdbSource(source)
    if isinstance(source, str | os.PathLike):
        return FolderSource(source)
    raise TypeError(
        "source must be 'archive', a folder of field files, an lsdb Catalog (lsdb.open_catalog) or a "
        f"FieldSource; got {type(source).__name__}"
    )
