"""Refit a whole cluster catalogue: a list of clusters in, one row per cluster out, resumable, on Dask.

- :func:`read_cluster_list`, :func:`cluster_catalogue`, :func:`cluster_key`
  (:mod:`.cluster_list`): the list, checked before any fit;
- :func:`fit_catalogue` (:mod:`.run`): each cluster's field from a source
  (:mod:`.sources`: a folder, the archive, an lsdb catalogue), its fit, its
  row (:mod:`.rows`), written into ``out/`` as it ends (:mod:`.store`), here
  or on Dask (:mod:`.parallel`); :class:`RefitCatalogue`, the table it
  returns, draws the refit against the list (:mod:`.plots`).
"""

from gaia_distances.catalogue.cluster_list import (
    ClusterListError,
    cluster_catalogue,
    cluster_key,
    read_cluster_list,
)
from gaia_distances.catalogue.rows import RefitCatalogue
from gaia_distances.catalogue.run import fit_catalogue
from gaia_distances.catalogue.sources import ArchiveSource, FieldSource, FolderSource, LsdbSource
from gaia_distances.catalogue.store import FolderInUseError, OptionsMismatchError

__all__ = [
    "ArchiveSource",
    "ClusterListError",
    "FieldSource",
    "FolderInUseError",
    "FolderSource",
    "LsdbSource",
    "OptionsMismatchError",
    "RefitCatalogue",
    "cluster_catalogue",
    "cluster_key",
    "fit_catalogue",
    "read_cluster_list",
]
