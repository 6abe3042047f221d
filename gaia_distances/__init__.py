"""gaia_distances: honest, fast Bayesian distances from Gaia parallaxes.

The pipeline works on astropy tables and returns new ones:

>>> import gaia_distances as gd
>>> t = gd.simulate_field(500, seed=0)              # or gd.load_table("field.fits")
>>> t = gd.apply_zeropoint(t)                        # Lindegren et al. (2021)
>>> t = gd.estimate_distances(t, prior=gd.EDSD(1350.0))
>>> sorted(c for c in t.colnames if c.startswith("distance_"))
['distance_flag', 'distance_hi', 'distance_lo', 'distance_median', 'distance_mode']

Distances are in pc, parallaxes in mas; ``distance_lo``/``distance_hi`` are
the 15.866th and 84.134th posterior percentiles. Provenance (prior, zero
point, method, version) is recorded in ``table.meta["gaia_distances"]``.

The numerical core, :mod:`gaia_distances.core`, needs only JAX and NumPy:
the names below are loaded on first use, so ``import gaia_distances.core``
works on a machine without astropy.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("gaia-distances")
except PackageNotFoundError:  # pragma: no cover - not installed
    __version__ = "0.0.0+unknown"

_EXPORTS = {
    "DistanceFlag": "gaia_distances.core.quadrature",
    "ExistingColumnsError": "gaia_distances.errors",
    "GaiaDistancesError": "gaia_distances.errors",
    "GaiaDistancesWarning": "gaia_distances.errors",
    "GaiaQueryError": "gaia_distances.errors",
    "MissingColumnsError": "gaia_distances.errors",
    "PosteriorMismatchError": "gaia_distances.errors",
    "TooFewStarsError": "gaia_distances.errors",
    "PriorTableError": "gaia_distances.errors",
    "estimate_distances": "gaia_distances.estimate",
    "fit_cluster": "gaia_distances.cluster",
    "ClusterFit": "gaia_distances.cluster",
    "ClusterFits": "gaia_distances.cluster",
    "fit_clusters": "gaia_distances.cluster",
    "ClusterFlag": "gaia_distances.cluster",
    "ClusterPriors": "gaia_distances.cluster",
    "FittedStars": "gaia_distances.cluster",
    "load_table": "gaia_distances.io",
    "write_table": "gaia_distances.io",
    "EDSD": "gaia_distances.priors",
    "GGD": "gaia_distances.priors",
    "BailerJones2021Prior": "gaia_distances.priors",
    "UniformSpaceDensity": "gaia_distances.priors",
    "load_bailer_jones_2021_table": "gaia_distances.priors",
    "simulate_field": "gaia_distances.simulate",
    "GaiaTable": "gaia_distances.table",
    "query_adql": "gaia_distances.query",
    "query_field": "gaia_distances.query",
    "query_cluster": "gaia_distances.query",
    "ZeroPointFlag": "gaia_distances.zeropoint",
    "apply_zeropoint": "gaia_distances.zeropoint",
    "set_compilation_cache": "gaia_distances.compile_cache",
    "read_cluster_list": "gaia_distances.catalogue",
    "cluster_catalogue": "gaia_distances.catalogue",
    "cluster_key": "gaia_distances.catalogue",
    "fit_catalogue": "gaia_distances.catalogue",
    "ClusterListError": "gaia_distances.catalogue",
    "OptionsMismatchError": "gaia_distances.catalogue",
    "FolderInUseError": "gaia_distances.catalogue",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def _register_accessor() -> None:
    """``DataFrame.gaia`` exists as soon as the package is imported (pandas is a dependency)."""
    try:
        from gaia_distances.table import register_pandas_accessor
    except ImportError:  # pragma: no cover - astropy missing: the core alone is in use
        return
    register_pandas_accessor()


_register_accessor()


#: Submodules with optional dependencies, imported on first attribute access.
_SUBMODULES = ("plotting", "report", "scale", "catalogue")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"gaia_distances.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gaia_distances' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from gaia_distances.catalogue import (
        ClusterListError,
        FolderInUseError,
        OptionsMismatchError,
        cluster_catalogue,
        cluster_key,
        fit_catalogue,
        read_cluster_list,
    )
    from gaia_distances.cluster import (
        ClusterFit,
        ClusterFits,
        ClusterFlag,
        ClusterPriors,
        FittedStars,
        fit_cluster,
        fit_clusters,
    )
    from gaia_distances.compile_cache import set_compilation_cache
    from gaia_distances.core.quadrature import DistanceFlag
    from gaia_distances.errors import (
        ExistingColumnsError,
        GaiaDistancesError,
        GaiaDistancesWarning,
        GaiaQueryError,
        MissingColumnsError,
        PosteriorMismatchError,
        PriorTableError,
        TooFewStarsError,
    )
    from gaia_distances.estimate import estimate_distances
    from gaia_distances.io import load_table, write_table
    from gaia_distances.priors import (
        EDSD,
        GGD,
        BailerJones2021Prior,
        UniformSpaceDensity,
        load_bailer_jones_2021_table,
    )
    from gaia_distances.query import query_adql, query_cluster, query_field
    from gaia_distances.simulate import simulate_field
    from gaia_distances.table import GaiaTable
    from gaia_distances.zeropoint import ZeroPointFlag, apply_zeropoint
