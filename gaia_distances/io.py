"""Load Gaia tables from files, astropy tables and pandas DataFrames."""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import MaskedColumn, QTable, Table

from gaia_distances.columns import META_KEY, normalise_columns, warn
from gaia_distances.errors import GaiaDistancesWarning

__all__ = ["as_table", "guess_format", "load_table", "read_archive_json", "write_table"]

log = logging.getLogger(__name__)

_FORMATS = {
    ".csv": "ascii.csv",
    ".ecsv": "ascii.ecsv",
    ".vot": "votable",
    ".xml": "votable",
    ".votable": "votable",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".fits": "fits",
    ".fit": "fits",
    ".fits.gz": "fits",
    ".fit.gz": "fits",
    ".hdf5": "hdf5",
    ".h5": "hdf5",
}


def guess_format(path: Path) -> str | None:
    """The astropy format for a file name, from its extension (None if unknown)."""
    name = path.name.lower()
    for ext in sorted(_FORMATS, key=len, reverse=True):
        if name.endswith(ext):
            return _FORMATS[ext]
    return None


def read_archive_json(path: str | os.PathLike[str]) -> Table:
    """Read the Gaia archive's JSON output format (``metadata`` + ``data``).

    Nulls become masked entries; units and descriptions are kept.
    """
    with open(path, encoding="utf-8") as fh:
        doc = json.load(fh)
    try:
        meta, rows = doc["metadata"], doc["data"]
    except (KeyError, TypeError):
        raise ValueError(f"{path} is not a Gaia archive JSON result (no metadata/data)") from None
    table = Table()
    kinds = {
        "long": np.int64,
        "int": np.int32,
        "short": np.int16,
        "boolean": bool,
        "double": np.float64,
        "float": np.float32,
        "char": object,
    }
    for j, field in enumerate(meta):
        vals = [row[j] for row in rows]
        mask = np.array([v is None for v in vals], dtype=bool)
        dtype = kinds.get(field.get("datatype"), object)
        if field.get("arraysize") not in (None, "*") and dtype is not object:
            dtype = object
        if dtype is object:
            data = np.array(["" if v is None else v for v in vals], dtype=object)
            if all(isinstance(v, str) or v is None for v in vals):
                data = data.astype(str)
        elif np.issubdtype(dtype, np.floating):
            data = np.array([np.nan if v is None else v for v in vals], dtype=dtype)
        else:
            data = np.array([0 if v is None else v for v in vals], dtype=dtype)
        col = MaskedColumn(
            data, name=field["name"], mask=mask, unit=field.get("unit") or None, description=field.get("description")
        )
        table[field["name"]] = col
    return table


def load_table(source: Any, *, format: str | None = None, **read_kwargs: Any) -> QTable:
    """Load a Gaia table and normalise it.

    Parameters
    ----------
    source
        A path (FITS, VOTable, ECSV, CSV, Parquet, HDF5 or the archive's JSON
        format; chosen by extension unless ``format`` is given), an astropy
        ``Table``/``QTable`` or a pandas ``DataFrame``.
    format
        An astropy ``Table.read`` format, or ``"json"`` for the archive's JSON.
    **read_kwargs
        Passed to ``Table.read``.

    Returns
    -------
    QTable
        A new table with lower-case column names, units on known Gaia columns
        (``parallax`` in mas, ``ra``/``dec`` in deg) and masked floating-point
        values as NaN. Every input row is kept, in order. A
        :class:`~gaia_distances.GaiaDistancesWarning` reports duplicate
        ``source_id`` values (the rows are kept).

    Examples
    --------
    >>> import pandas as pd
    >>> t = load_table(pd.DataFrame({"SOURCE_ID": [1, 2], "Parallax": [1.5, None]}))
    >>> t["parallax"]
    <Quantity [1.5, nan] mas>
    """
    if isinstance(source, Table):
        table = source
    elif _is_dataframe(source):
        table = Table.from_pandas(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"no such table file: {path}")
        fmt = format or guess_format(path)
        if fmt == "json" or (fmt is None and path.name.lower().endswith(".json")):
            table = read_archive_json(path)
        else:
            if fmt == "votable":
                read_kwargs.setdefault("use_names_over_ids", True)
            table = Table.read(path, format=fmt, **read_kwargs)
        log.info("read %d rows from %s", len(table), path)
    else:
        raise TypeError(
            f"load_table takes a file path, an astropy Table/QTable or a pandas DataFrame; got {type(source).__name__}"
        )
    out = normalise_columns(table)
    prov = out.meta.pop("GAIADIST", None) or out.meta.pop("gaiadist", None)
    if isinstance(prov, str):
        try:
            out.meta[META_KEY] = json.loads(prov)
        except ValueError:
            log.warning("could not parse the GAIADIST provenance in %s", source)
    check_duplicate_ids(out)
    return out


def check_duplicate_ids(table: Table) -> int:
    """Warn about repeated ``source_id`` values; return how many rows repeat."""
    if "source_id" not in table.colnames or len(table) == 0:
        return 0
    masked = np.ma.asarray(table["source_id"])
    ids = masked.compressed()
    _, counts = np.unique(ids, return_counts=True)
    ndup = int(np.sum(counts[counts > 1] - 1))
    if ndup:
        warn(
            f"{ndup} row(s) repeat a source_id already in the table; they are kept "
            "and processed independently. Deduplicate with astropy.table.unique(t, 'source_id') "
            "if that is not intended."
        )
    return ndup


def _is_dataframe(obj: Any) -> bool:
    # subclasses too, such as nested-pandas' NestedFrame from lsdb partitions
    return any(c.__module__.startswith("pandas") and c.__name__ == "DataFrame" for c in type(obj).__mro__)


def as_table(source: Any) -> QTable:
    """Normalise ``source`` like :func:`load_table`, without the duplicate-ID warning.

    Used by every pipeline step so that a table passed along a chain is
    normalised (and copied) once per step but warned about only on loading.
    """
    if isinstance(source, Table):
        return normalise_columns(source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GaiaDistancesWarning)
        return load_table(source)


def write_table(table: Table, path: str | os.PathLike[str]) -> None:
    """Write ``table`` in the format named by the extension of ``path``.

    Formats other than ECSV cannot hold nested metadata, so the provenance is
    stored as JSON text under the ``GAIADIST`` key, which :func:`load_table`
    reads back.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fmt = guess_format(p)
    if fmt is None:
        raise ValueError(f"cannot tell the table format of {p}; use .fits, .ecsv, .csv, .vot or .parquet")
    out = Table(table, copy=False)
    if fmt != "ascii.ecsv":
        prov = out.meta.get(META_KEY)
        out.meta = {k: v for k, v in out.meta.items() if not isinstance(v, (dict, list))}
        if prov:
            out.meta["GAIADIST"] = json.dumps(prov, default=str)
    out.write(p, format=fmt, overwrite=True)
