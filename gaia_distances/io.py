"""Load Gaia tables from files, astropy tables and pandas DataFrames, and write them back."""

from __future__ import annotations

import json
import logging
import os
import secrets
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import MaskedColumn, QTable, Table

from gaia_distances.columns import META_KEY, InvalidTableError, normalise_columns, warn
from gaia_distances.errors import GaiaDistancesWarning, one_line

__all__ = [
    "InvalidTableError",
    "as_table",
    "guess_format",
    "json_default",
    "load_table",
    "output_format",
    "read_archive_json",
    "write_table",
]

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

#: The extensions :func:`load_table` recognises, for messages.
SUPPORTED_EXTENSIONS = ".fits, .fits.gz, .vot, .xml, .ecsv, .csv, .parquet, .hdf5, .h5, .json"

#: Key under which formats without nested metadata hold the provenance, as JSON text.
PROVENANCE_KEY = "GAIADIST"

#: Key under which FITS and VOTable hold, as JSON text, what they cannot hold natively about the
#: columns: units FITS cannot write (function units such as ``dex(cm / s2)`` or ``ABmag``) and the
#: masks of text columns in a VOTable.
COLUMNS_KEY = "GAIACOLS"


def guess_format(path: Path) -> str | None:
    """The astropy format for a file name, from its extension (None if unknown)."""
    ext = _extension(path)
    return None if ext is None else _FORMATS[ext]


def output_format(path: str | os.PathLike[str]) -> str:
    """The astropy format :func:`write_table` writes ``path`` in, from its extension.

    Raises
    ------
    InvalidTableError
        If the extension names no format :func:`write_table` writes; the
        message names the file and the extensions it accepts.

    Examples
    --------
    >>> output_format("members.fits"), output_format("members.csv")
    ('fits', 'ascii.csv')
    """
    p = Path(path)
    ext = _extension(p)
    if ext is None:
        raise InvalidTableError(
            f"cannot tell the table format of {p} from its extension; use one of "
            f"{SUPPORTED_EXTENSIONS.replace(', .json', '')}"
        )
    return _FORMATS[ext]


def _extension(path: Path) -> str | None:
    name = path.name.lower()
    for ext in sorted(_FORMATS, key=len, reverse=True):
        if name.endswith(ext):
            return ext
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
        raise InvalidTableError(f"{path} is not a Gaia archive JSON result (no metadata/data)") from None
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
        ``Table``/``QTable`` or a pandas ``DataFrame`` (a named index, such as
        a ``source_id`` index, becomes a column).
    format
        An astropy ``Table.read`` format, or ``"json"`` for the archive's JSON.
    **read_kwargs
        Passed to ``Table.read``.

    Returns
    -------
    QTable
        A new table with the Gaia archive's columns under their lower-case
        names (other columns keep theirs), units on known Gaia columns
        (``parallax`` in mas, ``ra``/``dec`` in deg) and their masked
        floating-point values as NaN. Every other column passes through
        untouched: its unit (function units such as ``dex(cm / s2)`` or
        ``ABmag`` too), description, format, meta and mask (a mask that hides
        only NaN values is dropped). The provenance :func:`write_table` stored is back in
        ``meta["gaia_distances"]``. Every input row is kept, in order. A
        :class:`~gaia_distances.GaiaDistancesWarning` reports duplicate
        ``source_id`` values (the rows are kept).

    Raises
    ------
    FileNotFoundError
        If the path does not exist.
    InvalidTableError
        A ``ValueError`` (and :class:`~gaia_distances.GaiaDistancesError`)
        whose one-line message names the file and what is wrong: an unknown
        extension, a file that cannot be parsed (truncated or corrupt), or
        text in a numeric Gaia column (with the column, value and row).

    Examples
    --------
    >>> import pandas as pd
    >>> t = load_table(pd.DataFrame({"SOURCE_ID": [1, 2], "Parallax": [1.5, None]}))
    >>> t["parallax"]
    <Quantity [1.5, nan] mas>
    """
    where = ""
    if isinstance(source, Table):
        table = source
    elif _is_dataframe(source):
        table = Table.from_pandas(_index_as_columns(source))
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"no such table file: {path}")
        table = _restore_columns(_read_file(path, format, read_kwargs))
        where = f"{path}: "
        log.info("read %d rows from %s", len(table), path)
    else:
        raise TypeError(
            f"load_table takes a file path, an astropy Table/QTable or a pandas DataFrame; got {type(source).__name__}"
        )
    try:
        out = normalise_columns(table)
    except InvalidTableError as exc:
        raise InvalidTableError(f"{where}{exc}") from None
    prov = out.meta.pop(PROVENANCE_KEY, None) or out.meta.pop(PROVENANCE_KEY.lower(), None)
    if isinstance(prov, str):
        try:
            out.meta[META_KEY] = json.loads(prov)
        except ValueError:
            log.warning("could not parse the %s provenance in %s", PROVENANCE_KEY, source)
    check_duplicate_ids(out)
    return out


def _read_file(path: Path, format: str | None, read_kwargs: dict[str, Any]) -> Table:
    """``Table.read`` with one-line errors that name the file."""
    from astropy.io.registry import IORegistryError

    fmt = format or guess_format(path)
    if fmt == "json" or (fmt is None and path.name.lower().endswith(".json")):
        fmt = "json"
    elif fmt is None:
        raise InvalidTableError(
            f"cannot tell the table format of {path} from its extension; use one of {SUPPORTED_EXTENSIONS}, "
            "or pass format= (an astropy Table.read format such as 'ascii.basic')"
        )
    elif fmt == "ascii.csv" and _starts_with(path, b"# %ECSV"):
        fmt = "ascii.ecsv"  # write_table's CSV: comma-separated ECSV
    try:
        if fmt == "json":
            return read_archive_json(path)
        if fmt == "votable":
            return _read_votable(path, read_kwargs)
        return Table.read(path, format=fmt, **read_kwargs)
    except (ImportError, MemoryError, InvalidTableError):
        raise
    except IORegistryError as exc:
        raise InvalidTableError(
            f"cannot read {path}: astropy has no table format {fmt!r}; see astropy.table.Table.read.list_formats()"
        ) from exc
    except Exception as exc:
        if isinstance(exc, OSError) and exc.errno is not None:  # access to the file (permissions, I/O)
            raise
        raise InvalidTableError(
            f"could not read {path} as {fmt}: the file is truncated, corrupt or not {fmt} "
            f"({type(exc).__name__}: {one_line(exc, limit=200)})"
        ) from exc


def _starts_with(path: Path, prefix: bytes) -> bool:
    with open(path, "rb") as fh:
        return fh.read(len(prefix)) == prefix


def _read_votable(path: Path, read_kwargs: dict[str, Any]) -> Table:
    """A VOTable's table (columns by name), with the provenance :func:`write_table` kept in an ``INFO``."""
    from astropy.io.votable import parse

    kwargs = {"use_names_over_ids": True, **read_kwargs}
    select = {k: kwargs.pop(k) for k in ("table_id", "use_names_over_ids") if k in kwargs}
    vot = parse(path, table_id=select.get("table_id"), **kwargs)
    table = Table.read(vot, format="votable", **select)
    infos = [*vot.infos, *(i for r in vot.resources for i in r.infos), *(i for t in vot.iter_tables() for i in t.infos)]
    for info in infos:
        if info.name in (PROVENANCE_KEY, COLUMNS_KEY) and info.value:
            table.meta[info.name] = info.value
    return table


def _restore_columns(table: Table) -> Table:
    """Give back the units and masks :func:`write_table` kept under :data:`COLUMNS_KEY`."""
    text = table.meta.pop(COLUMNS_KEY, None) or table.meta.pop(COLUMNS_KEY.lower(), None)
    if not isinstance(text, str):
        return table
    try:
        extras = json.loads(text)
    except ValueError:
        log.warning("could not parse the %s column notes", COLUMNS_KEY)
        return table
    for name, unit in extras.get("units", {}).items():
        if name in table.colnames:
            table[name].unit = unit
    for name, rows in extras.get("masks", {}).items():
        if name in table.colnames:
            col = table[name]
            mask = np.zeros(len(col), dtype=bool)
            mask[np.asarray(rows, dtype=int)] = True
            masked = MaskedColumn(col, mask=np.ma.getmaskarray(col) | mask, copy=False)
            table.replace_column(name, masked)
    return table


def _index_as_columns(df: Any) -> Any:
    """``df`` with its named index levels (``source_id``) as columns, unless a column has that name."""
    names = [n for n in df.index.names if n is not None and n not in df.columns]
    return df.reset_index(level=names) if names else df


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


def write_table(table: Table, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
    """Write ``table`` in the format named by the extension of ``path``.

    Every format keeps what a later step reads back with :func:`load_table`:
    the columns, their units, masked values (a masked ``source_id`` stays
    masked) and the provenance in ``meta["gaia_distances"]``.

    - ECSV holds all of it natively;
    - ``.csv`` is written as comma-separated ECSV: ``#`` header lines carry
      units, types and provenance above plain CSV rows (pandas reads it with
      ``pd.read_csv(path, comment="#")``);
    - FITS, Parquet and HDF5 hold the provenance as JSON text under the
      ``GAIADIST`` key (HDF5 with ``serialize_meta=True`` for units and
      masks); VOTable holds it in an ``INFO`` element named ``GAIADIST``.
    - what FITS and VOTable cannot hold natively is kept beside it, under
      ``GAIACOLS``: units outside their standards (``dex(cm / s2)``,
      ``ABmag``) and, in a VOTable, the masks of text columns. FITS and
      VOTable hold a masked floating-point value as NaN.

    The table is written to a temporary file in the same folder, which
    replaces ``path`` only once it is complete: a failed write (a full disk)
    leaves no partial file and any existing file untouched.

    Parameters
    ----------
    table
        The table to write; it is not modified.
    path
        The output file; its extension chooses the format (.fits, .fits.gz,
        .vot, .xml, .ecsv, .csv, .parquet, .hdf5, .h5). Missing folders are
        created.
    overwrite
        Replace ``path`` if it exists. The default refuses to.

    Raises
    ------
    FileExistsError
        If ``path`` exists and ``overwrite`` is false.
    InvalidTableError
        If the extension names no supported format.

    Examples
    --------
    >>> import tempfile
    >>> from astropy.table import Table
    >>> path = Path(tempfile.mkdtemp()) / "t.fits"
    >>> write_table(Table({"parallax": [1.0]}), path)
    >>> write_table(Table({"parallax": [2.0]}), path)
    Traceback (most recent call last):
    ...
    FileExistsError: ... already exists; pass overwrite=True (--overwrite on the command line) to replace it
    """
    p = Path(path)
    fmt = output_format(p)
    ext = _extension(p)
    if not overwrite and p.exists():
        raise _exists(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    out = _with_portable_meta(table, fmt)
    tmp = p.with_name(f".{p.name}.{secrets.token_hex(4)}.tmp{ext}")
    try:
        _write(out, tmp, fmt)
        if not overwrite and p.exists():
            raise _exists(p)
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _exists(path: Path) -> FileExistsError:
    return FileExistsError(
        f"{path} already exists; pass overwrite=True (--overwrite on the command line) to replace it"
    )


def _with_portable_meta(table: Table, fmt: str) -> Table:
    """A shallow copy of ``table`` whose meta the format can hold (provenance as JSON text)."""
    out = Table(table, copy=False)
    if fmt in ("ascii.ecsv", "ascii.csv"):  # both written as ECSV
        return out
    prov = out.meta.get(META_KEY)
    out.meta = {k: v for k, v in out.meta.items() if not isinstance(v, (dict, list))}
    if prov:
        out.meta[PROVENANCE_KEY] = json.dumps(prov, default=json_default)
    extras = _column_notes(out, fmt)
    if extras:
        out.meta[COLUMNS_KEY] = json.dumps(extras)
    return out


def _column_notes(out: Table, fmt: str) -> dict[str, Any]:
    """What ``fmt`` cannot hold about the columns of ``out`` (:data:`COLUMNS_KEY`).

    FITS and VOTable: units their standards cannot write (function units
    such as ``dex(cm / s2)`` or ``ABmag``; their columns in ``out`` lose the
    unit, which the notes carry instead). VOTable: the masked rows of text
    columns, whose masks astropy's VOTable reader does not give back.
    """
    notes: dict[str, dict[str, Any]] = {}
    standard = {"fits": "fits", "votable": "vounit"}.get(fmt)
    for name in out.colnames:
        col = out[name]
        unit = getattr(col, "unit", None)
        if standard and unit is not None and not _writable_unit(unit, standard):
            notes.setdefault("units", {})[name] = unit.to_string()
            bare = col.copy(copy_data=False)
            bare.unit = None
            out.replace_column(name, bare)
        mask = getattr(col, "mask", None)
        if fmt == "votable" and col.dtype.kind in "USO" and mask is not None and np.any(mask):
            notes.setdefault("masks", {})[name] = np.flatnonzero(mask).tolist()
    return notes


def _writable_unit(unit: Any, standard: str) -> bool:
    """Whether ``standard`` (``"fits"``, ``"vounit"``) can write ``unit`` (neither writes ``dex(cm / s2)``)."""
    try:
        unit.to_string(standard)
    except (ValueError, TypeError):
        return False
    return True


def json_default(value: Any) -> Any:
    """``json.dumps``'s ``default`` for provenance: NumPy scalars and arrays as numbers and lists, else ``str``."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _write(table: Table, path: Path, fmt: str) -> None:
    if fmt == "votable":
        from astropy.io.votable import from_table
        from astropy.io.votable.tree import Info

        vot = from_table(table)
        for key in (PROVENANCE_KEY, COLUMNS_KEY):
            if table.meta.get(key):
                vot.get_first_table().infos.append(Info(name=key, value=table.meta[key]))
        vot.to_xml(str(path))
    elif fmt == "hdf5":
        table.write(path, format="hdf5", path="data", serialize_meta=True)
    elif fmt == "ascii.csv":
        table.write(path, format="ascii.ecsv", delimiter=",")
    else:
        table.write(path, format=fmt)
