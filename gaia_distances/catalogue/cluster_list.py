"""Lists of clusters to refit: one row per cluster, its centre, radius and optional hints.

:func:`read_cluster_list` reads a file or table whatever the catalogue calls
its columns (``Name``/``Cluster``, ``RA_ICRS``/``RAJ2000``,
``DE_ICRS``/``DEJ2000``, ``r50``, ``pmRA*``, ``Plx``, ...) and checks every
row before any fit starts. :func:`cluster_key` is the one normalisation of a
cluster's name: ``"NGC_2682"``, ``"NGC 2682"`` and ``"ngc2682"`` are one
cluster, whose files are named by the key; the list keeps the name as given
for display. :func:`cluster_catalogue` fetches a published list by name.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from astropy import units as u
from astropy.table import QTable, Table

from gaia_distances.errors import GaiaDistancesError, MissingColumnsError

__all__ = [
    "CLUSTER_CATALOGUES",
    "LIST_COLUMNS",
    "MAX_RADIUS_DEG",
    "ClusterListError",
    "ClusterSpec",
    "cluster_catalogue",
    "cluster_key",
    "cluster_specs",
    "read_cluster_list",
]

#: Largest accepted cluster radius (deg): beyond it a "cluster" is a sky region, not a field to fit.
MAX_RADIUS_DEG = 20.0

#: The list's columns -> the spellings accepted for each (compared lower-case, without ``_``, ``*``, spaces).
LIST_COLUMNS: dict[str, tuple[str, ...]] = {
    "name": ("name", "cluster", "clustername", "cluster_name", "id", "object", "designation"),
    "ra": ("ra", "ra_icrs", "raj2000", "_raj2000", "radeg", "ra_deg", "ramdeg"),
    "dec": ("dec", "de", "de_icrs", "dej2000", "_dej2000", "dedeg", "dec_deg", "decdeg", "demdeg"),
    "radius": ("radius", "radius_deg", "r50", "r_50", "r50deg", "rad", "r"),
    "pmra": ("pmra", "pmra*", "pmracosde", "pmra_cosdec", "pmrastar"),
    "pmdec": ("pmdec", "pmde"),
    "parallax": ("parallax", "plx", "plxmean"),
    "distance": ("distance", "dist", "dist50", "distpc", "distance_pc", "dmode"),
}
#: Units of the list's columns, as read.
_UNITS = {
    "ra": u.deg,
    "dec": u.deg,
    "radius": u.deg,
    "pmra": u.mas / u.yr,
    "pmdec": u.mas / u.yr,
    "parallax": u.mas,
    "distance": u.pc,
}
_DESCRIPTIONS = {
    "name": "cluster name, as the input list spells it",
    "key": "normalised name: lower case, no separators, no leading zeros (file names and matching)",
    "ra": "centre right ascension (ICRS)",
    "dec": "centre declination (ICRS)",
    "radius": "field radius",
    "pmra": "hint: the cluster's proper motion in RA (times cos dec)",
    "pmdec": "hint: the cluster's proper motion in Dec",
    "parallax": "hint: the cluster's parallax",
    "distance": "hint: the cluster's distance",
}

#: Published cluster lists :func:`cluster_catalogue` knows: name -> (VizieR table, reference).
CLUSTER_CATALOGUES: dict[str, tuple[str, str]] = {
    "hunt2023": ("J/A+A/673/A114/clusters", "Hunt & Reffert 2023, A&A 673, A114"),
    "cantat-gaudin2020": ("J/A+A/640/A1/table1", "Cantat-Gaudin et al. 2020, A&A 640, A1"),
}


class ClusterListError(GaiaDistancesError, ValueError):
    """A cluster list that cannot be fitted as given: the message names every bad row and what to fix."""


class ClusterSpec(NamedTuple):
    """One cluster of a list, as a fit needs it (plain Python values; picklable for Dask workers).

    ``ra``, ``dec``, ``radius`` in deg; the hints ``pmra``, ``pmdec``
    (mas/yr), ``parallax`` (mas) and ``distance`` (pc) are NaN when absent.
    """

    name: str
    key: str
    ra: float
    dec: float
    radius: float
    pmra: float = math.nan
    pmdec: float = math.nan
    parallax: float = math.nan
    distance: float = math.nan

    @property
    def distance_hint(self) -> float | None:
        """A rough distance (pc) to start the fit near: ``distance``, else ``1000 / parallax``; ``None``."""
        if math.isfinite(self.distance) and self.distance > 0:
            return self.distance
        if math.isfinite(self.parallax) and self.parallax > 0:
            return 1000.0 / self.parallax
        return None


def cluster_key(name: Any) -> str:
    """The normalised name: lower case, letters and digits only, leading zeros of numbers dropped.

    Two numbers in a row keep a ``-`` between them, so that ``"ESO 93-8"``
    and ``"ESO 9-38"`` stay two clusters; a ``+`` or a decimal point between
    them is kept as it is (the digits after a point keep their zeros), so
    that coordinate names (``"J0924+58"``, ``"J0924-58"``) and ``"1.05"``,
    ``"1.5"`` stay apart too.

    Examples
    --------
    >>> cluster_key("NGC_2682"), cluster_key("NGC 2682"), cluster_key("ngc2682"), cluster_key("NGC 0752")
    ('ngc2682', 'ngc2682', 'ngc2682', 'ngc752')
    >>> cluster_key("ESO 093-08"), cluster_key("ESO 9-38")
    ('eso93-8', 'eso9-38')
    >>> cluster_key("X J0924+58"), cluster_key("X J0924-58"), cluster_key("G 1.05"), cluster_key("G 1.5")
    ('xj924+58', 'xj924-58', 'g1.05', 'g1.5')
    """
    text = str(name).casefold()
    out, joiner = "", ""
    for tok in re.findall(r"[^\W\d_]+|\d+|[+.]", text):
        if tok in "+.":
            joiner = tok if out and out[-1].isdigit() else ""
            continue
        if tok.isdigit():
            if joiner != ".":
                tok = tok.lstrip("0") or "0"
            if out and out[-1].isdigit():
                out += joiner or "-"
        out += tok
        joiner = ""
    return out


def _raw_table(source: Any) -> Table:
    """The list as given: a file read by its extension (its columns as spelled there), a table, a DataFrame."""
    from gaia_distances.io import guess_format, load_table

    if isinstance(source, Table):
        return source
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"no such cluster list: {path}")
        fmt = guess_format(path)
        if fmt is not None and fmt != "votable":
            if fmt == "ascii.csv" and path.read_bytes()[:7] == b"# %ECSV":
                fmt = "ascii.ecsv"
            return Table.read(path, format=fmt)
    return load_table(source)


def _spelling(name: str) -> str:
    return re.sub(r"[\s_*]", "", name.casefold())


def _find_columns(table: Table) -> dict[str, str]:
    """The list's column -> the table's column that holds it (the first accepted spelling present)."""
    by_spelling = {_spelling(c): c for c in reversed(table.colnames)}
    found = {}
    for col, spellings in LIST_COLUMNS.items():
        for s in spellings:
            if _spelling(s) in by_spelling:
                found[col] = by_spelling[_spelling(s)]
                break
    missing = [c for c in ("name", "ra", "dec", "radius") if c not in found]
    if missing:
        accepted = "; ".join(f"{c}: {', '.join(LIST_COLUMNS[c])}" for c in missing)
        raise MissingColumnsError(
            f"the cluster list has no {', '.join(missing)} column (accepted spellings, any case: {accepted}); "
            f"its columns are {table.colnames}"
        )
    return found


def _values(col: Any, unit: u.UnitBase, what: str) -> np.ndarray:
    """A column as floats in ``unit`` (its own unit converted when it has one), masked -> NaN."""
    filled = col.filled(np.nan) if hasattr(col, "filled") and getattr(col, "mask", None) is not None else col
    if isinstance(filled, u.Quantity) or getattr(col, "unit", None) is not None:
        q = filled if isinstance(filled, u.Quantity) else u.Quantity(np.asarray(filled, dtype=float), col.unit)
        try:
            return np.asarray(q.to_value(unit), dtype=float)
        except u.UnitsError:
            raise ClusterListError(f"the cluster list's {what} column is in {q.unit}, not a unit of {unit}") from None
    try:
        return np.asarray(filled, dtype=float)
    except (TypeError, ValueError):
        raise ClusterListError(f"the cluster list's {what} column holds text that is not a number") from None


def _coordinates(table: Table, ra_col: str, dec_col: str) -> tuple[np.ndarray, np.ndarray]:
    """RA and Dec in deg; sexagesimal text (``"08 51 18"``, ``"+11:48:00"``) is parsed too."""
    ra, dec = table[ra_col], table[dec_col]
    if np.asarray(ra).dtype.kind in "US" or np.asarray(dec).dtype.kind in "US":
        from astropy.coordinates import SkyCoord

        out_ra, out_dec = np.full(len(table), np.nan), np.full(len(table), np.nan)
        for i, (a, d) in enumerate(zip(np.asarray(ra, dtype=str), np.asarray(dec, dtype=str))):
            try:
                unit = (u.hourangle, u.deg) if re.search(r"[\s:hms]", a.strip()) else (u.deg, u.deg)
                c = SkyCoord(a, d, unit=unit)
                out_ra[i], out_dec[i] = c.ra.deg, c.dec.deg
            except ValueError:
                pass  # reported as a missing coordinate
        return out_ra, out_dec
    return _values(ra, u.deg, "ra"), _values(dec, u.deg, "dec")


def _names(col: Any) -> list[str]:
    values = col.filled("") if hasattr(col, "filled") and getattr(col, "mask", None) is not None else col
    return [str(v).strip() for v in np.asarray(values)]


def _problems(names: list[str], keys: list[str], ra: np.ndarray, dec: np.ndarray, radius: np.ndarray) -> list[str]:
    """Every row's problems, one line each (rows numbered from 1, as a person counts them)."""
    problems = []
    first: dict[str, int] = {}
    for i, (name, key) in enumerate(zip(names, keys)):
        row = f"row {i + 1} ({name!r})" if name else f"row {i + 1}"
        if not key:
            problems.append(f"{row}: no name")
        elif key in first:
            problems.append(f"{row}: the same cluster as row {first[key] + 1} ({names[first[key]]!r}; key {key!r})")
        else:
            first[key] = i
        if not (np.isfinite(ra[i]) and np.isfinite(dec[i])):
            problems.append(f"{row}: missing or NaN coordinates (ra={ra[i]}, dec={dec[i]})")
        elif not (-90.0 <= dec[i] <= 90.0):
            problems.append(f"{row}: dec={dec[i]} deg is outside [-90, 90]")
        if not (np.isfinite(radius[i]) and 0.0 < radius[i] < MAX_RADIUS_DEG):
            problems.append(f"{row}: radius {radius[i]} deg must be > 0 and < {MAX_RADIUS_DEG:g} deg")
    return problems


def read_cluster_list(source: Any, *, radius_unit: u.UnitBase | str = "deg") -> QTable:
    """Read a list of clusters and check it: a new QTable with normalised columns.

    Parameters
    ----------
    source
        A file any :func:`~gaia_distances.load_table` format reads (CSV,
        ECSV, FITS, VOTable, Parquet), an astropy table or a pandas
        DataFrame. Its columns may be spelled as catalogues spell them (any
        case): see :data:`LIST_COLUMNS` (``Name``, ``Cluster``; ``RA_ICRS``,
        ``RAJ2000``; ``DE_ICRS``, ``DEJ2000``; ``radius``, ``r50``;
        optional ``pmRA*``/``pmra``, ``pmDE``/``pmdec``, ``Plx``/``parallax``
        and ``dist50``/``distance``). Coordinates may be sexagesimal text.
    radius_unit
        The unit of a radius column that has none (default deg; ``"arcmin"``
        for lists in arcminutes). A column with a unit is converted.

    Returns
    -------
    QTable
        ``name`` (as given), ``key`` (:func:`cluster_key`), ``ra``, ``dec``,
        ``radius`` (deg) and, when the list has them, ``pmra``, ``pmdec``
        (mas/yr), ``parallax`` (mas), ``distance`` (pc); NaN where a hint is
        missing. Rows in the input's order.

    Raises
    ------
    MissingColumnsError
        No name, ra, dec or radius column (the message lists the accepted
        spellings).
    ClusterListError
        Duplicate clusters (after normalisation), missing or NaN
        coordinates, a radius of 0 or at least :data:`MAX_RADIUS_DEG`: every
        bad row is named in one message.

    Examples
    --------
    >>> from astropy.table import Table
    >>> t = read_cluster_list(Table({"Cluster": ["NGC_2682", "Alessi 1"], "RA_ICRS": [132.85, 13.34],
    ...                              "DEJ2000": [11.81, 49.54], "r50": [0.3, 0.1]}))
    >>> [str(k) for k in t["key"]], t["radius"].unit
    (['ngc2682', 'alessi1'], Unit("deg"))
    """
    raw = _raw_table(source)
    cols = _find_columns(raw)
    names = _names(raw[cols["name"]])
    keys = [cluster_key(n) for n in names]
    ra, dec = _coordinates(raw, cols["ra"], cols["dec"])
    r_col = raw[cols["radius"]]
    if getattr(r_col, "unit", None) is None:
        radius = (_values(r_col, u.Unit(radius_unit), "radius") * u.Unit(radius_unit)).to_value(u.deg)
    else:
        radius = _values(r_col, u.deg, "radius")
    problems = _problems(names, keys, ra, dec, radius)
    if problems:
        more = f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""
        raise ClusterListError("the cluster list cannot be fitted: " + "; ".join(problems[:20]) + more)
    out = QTable()
    out["name"] = names
    out["key"] = keys
    out["ra"] = ra * u.deg
    out["dec"] = dec * u.deg
    out["radius"] = radius * u.deg
    for hint in ("pmra", "pmdec", "parallax", "distance"):
        if hint in cols:
            out[hint] = _values(raw[cols[hint]], _UNITS[hint], hint) * _UNITS[hint]
    for c in out.colnames:
        out[c].info.description = _DESCRIPTIONS[c]
    out.meta["cluster_list"] = {"columns": {k: v for k, v in cols.items()}}
    return out


def cluster_specs(clusters: Any) -> list[ClusterSpec]:
    """The rows of a list from :func:`read_cluster_list` (or anything it reads) as :class:`ClusterSpec`."""
    t = clusters if isinstance(clusters, QTable) and "key" in clusters.colnames else read_cluster_list(clusters)
    specs = []
    for row in t:
        hints = {
            h: float(row[h].to_value(_UNITS[h])) for h in ("pmra", "pmdec", "parallax", "distance") if h in t.colnames
        }
        specs.append(
            ClusterSpec(
                name=str(row["name"]),
                key=str(row["key"]),
                ra=float(row["ra"].to_value(u.deg)),
                dec=float(row["dec"].to_value(u.deg)),
                radius=float(row["radius"].to_value(u.deg)),
                **hints,
            )
        )
    keys = [s.key for s in specs]
    if len(set(keys)) != len(keys):
        raise ClusterListError("the cluster list has the same cluster twice; read it with read_cluster_list")
    return specs


def cluster_catalogue(name: str, *, fetch: Callable[[str], Any] | None = None) -> QTable:
    """A published cluster list by name, read with :func:`read_cluster_list`.

    Parameters
    ----------
    name
        A key of :data:`CLUSTER_CATALOGUES`: ``"hunt2023"`` (Hunt & Reffert
        2023, 7167 clusters, ``r50`` as the radius) or ``"cantat-gaudin2020"``.
    fetch
        A callable VizieR table id -> table (dependency injection, e.g. a
        local copy); default: astroquery's VizieR client, every row.

    Raises
    ------
    ValueError
        An unknown name; the message lists the known ones.

    Examples
    --------
    >>> cluster_catalogue("hunt2022")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown cluster catalogue 'hunt2022'; known: 'hunt2023', 'cantat-gaudin2020' (or ...)
    """
    entry = CLUSTER_CATALOGUES.get(str(name).strip().lower())
    if entry is None:
        known = ", ".join(repr(k) for k in CLUSTER_CATALOGUES)
        raise ValueError(
            f"unknown cluster catalogue {name!r}; known: {known} (or read your own list with read_cluster_list)"
        )
    table_id, reference = entry
    if fetch is None:
        fetch = _vizier_table
    t = read_cluster_list(fetch(table_id))
    t.meta["cluster_list"]["catalogue"] = {"name": str(name), "vizier": table_id, "reference": reference}
    return t


def _vizier_table(table_id: str) -> Table:
    """Every row and column of a VizieR table (astroquery, imported here: it is optional at import)."""
    from astroquery.vizier import Vizier

    catalogue = table_id.rpartition("/")[0]
    tables = Vizier(columns=["**"], row_limit=-1).get_catalogs(catalogue)
    for t in tables.values():
        if t.meta.get("name", "") == table_id or len(tables) == 1:
            return t
    return tables[0]
