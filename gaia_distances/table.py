"""``GaiaTable`` and the pandas ``.gaia`` accessor: thin wrappers over the functions.

Neither adds logic of its own: each method calls the function of the same name
and returns a new object.
"""

from __future__ import annotations

from typing import Any

from astropy.table import QTable

__all__ = ["GaiaDataFrameAccessor", "GaiaTable", "register_pandas_accessor"]


class GaiaTable(QTable):
    """A ``QTable`` with the pipeline as chainable methods.

    Examples
    --------
    >>> import gaia_distances as gd
    >>> t = gd.GaiaTable(gd.simulate_field(100, seed=1))
    >>> out = t.apply_zeropoint().estimate_distances(prior=gd.EDSD(1500.0))  # doctest: +SKIP
    """

    @classmethod
    def read(cls, source: Any, *args: Any, **kwargs: Any) -> GaiaTable:  # type: ignore[override]
        """:func:`~gaia_distances.load_table` as a ``GaiaTable``."""
        from gaia_distances.io import load_table

        return cls(load_table(source, *args, **kwargs), copy=False)

    def apply_zeropoint(self, **kwargs: Any) -> GaiaTable:
        """:func:`~gaia_distances.apply_zeropoint`, returning a new ``GaiaTable``."""
        from gaia_distances.zeropoint import apply_zeropoint

        return GaiaTable(apply_zeropoint(self, **kwargs), copy=False)

    def estimate_distances(self, **kwargs: Any) -> GaiaTable:
        """:func:`~gaia_distances.estimate_distances`, returning a new ``GaiaTable``."""
        from gaia_distances.estimate import estimate_distances

        return GaiaTable(estimate_distances(self, **kwargs), copy=False)

    def fit_cluster(self, **kwargs: Any) -> Any:
        """:func:`~gaia_distances.fit_cluster`; returns the ``ClusterFit``."""
        from gaia_distances.cluster import fit_cluster

        return fit_cluster(self, **kwargs)


class GaiaDataFrameAccessor:
    """``df.gaia``: the pipeline on a pandas DataFrame, returning new DataFrames.

    The result keeps ``df``'s index, so its columns line up with ``df``'s
    rows (``df["d"] = df.gaia.estimate_distances()["distance_median"]``). A
    named index, such as ``source_id``, is passed to the pipeline as a column
    (the Bailer-Jones 2021 prior finds its HEALPix pixel from it) and stays the
    index of the result. Units are dropped on the way back to pandas
    (parallaxes in mas, distances in pc, as everywhere in the package);
    provenance is in ``df.attrs``.

    Examples
    --------
    >>> import pandas as pd
    >>> import gaia_distances as gd
    >>> df = pd.DataFrame({"parallax": [1.0, 2.0], "parallax_error": [0.1, 0.1]}, index=[7, 3])
    >>> out = df.gaia.estimate_distances(zero_point=0.0)
    >>> list(out.index)
    [7, 3]
    """

    def __init__(self, df: Any) -> None:
        self._df = df

    def _back(self, table: QTable) -> Any:
        from astropy.table import Table

        from gaia_distances.columns import canonical_name

        df = Table(table).to_pandas(index=False)
        index = self._df.index
        from_index = [canonical_name(str(n)) for n in index.names if n is not None and n not in self._df.columns]
        df = df.drop(columns=[c for c in from_index if c in df.columns])
        df.index = index.copy()
        df.attrs["gaia_distances"] = table.meta.get("gaia_distances", {})
        return df

    def to_table(self) -> GaiaTable:
        """The DataFrame as a normalised ``GaiaTable``."""
        return GaiaTable.read(self._df)

    def apply_zeropoint(self, **kwargs: Any) -> Any:
        from gaia_distances.zeropoint import apply_zeropoint

        return self._back(apply_zeropoint(self._df, **kwargs))

    def estimate_distances(self, **kwargs: Any) -> Any:
        from gaia_distances.estimate import estimate_distances

        return self._back(estimate_distances(self._df, **kwargs))

    def fit_cluster(self, **kwargs: Any) -> Any:
        from gaia_distances.cluster import fit_cluster

        return fit_cluster(self._df, **kwargs)


def register_pandas_accessor() -> None:
    """Register ``DataFrame.gaia`` (done when ``gaia_distances`` is imported)."""
    import pandas as pd

    if "gaia" not in getattr(pd.DataFrame, "_accessors", set()):
        pd.api.extensions.register_dataframe_accessor("gaia")(GaiaDataFrameAccessor)
