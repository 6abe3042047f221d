"""Distance priors as users specify them, and the Bailer-Jones et al. (2021) table.

The classes here are descriptions: each parameter may be a scalar, an array with
one value per star, an astropy ``Quantity`` or the name of a table column.
:func:`resolve_prior` turns a description into a pure-JAX prior from
:mod:`gaia_distances.core.priors` with one parameter value per row.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Union

import numpy as np
from astropy import units as u
from astropy.table import Table

from gaia_distances.columns import column_values, find_column, require_columns, warn
from gaia_distances.core import priors as core
from gaia_distances.errors import PriorTableError

__all__ = [
    "BJ2021_PRIOR_ENV",
    "BJ2021_PRIOR_URL",
    "EDSD",
    "GGD",
    "PRIOR_ALIASES",
    "PRIOR_NAMES",
    "BailerJones2021Prior",
    "UniformSpaceDensity",
    "load_bailer_jones_2021_table",
    "resolve_prior",
]

log = logging.getLogger(__name__)

#: Environment variable naming a local copy of the prior summary table.
BJ2021_PRIOR_ENV = "GAIA_DISTANCES_BJ2021_PRIOR"
#: The publisher's copy of the Bailer-Jones et al. (2021) prior summary.
BJ2021_PRIOR_URL = "https://www2.mpia-hd.mpg.de/homes/calj/gedr3_distances/prior_summary.csv"
#: Gaia source_id -> HEALPix level 5 (nested): source_id // 2**49.
_HEALPIX5_DIVISOR = 2**49
_N_HEALPIX5 = 12 * 4**5

ParamLike = Union[float, np.ndarray, u.Quantity, str]  # noqa: UP007 (a runtime alias)


#: The priors named by a string (``estimate_distances(prior="...")``, the CLI's ``--prior``): the exponentially
#: decreasing space density, the Bailer-Jones et al. (2021) GGD table, and a uniform space density.
PRIOR_NAMES = ("edsd", "ggd", "uniform")
#: Other spellings of those names.
PRIOR_ALIASES = {"bj2021": "ggd", "bailer-jones-2021": "ggd", "usd": "uniform"}

#: What each prior parameter must be, as a test and in words (``GGD`` is proper for these).
_VALID: dict[str, tuple[Any, str]] = {
    "length_scale": (lambda x: np.isfinite(x) & (x > 0), "a positive finite distance (pc)"),
    "r_max": (lambda x: np.isfinite(x) & (x > 0), "a positive finite distance (pc)"),
    "alpha": (lambda x: np.isfinite(x) & (x > 0), "a positive finite number"),
    "beta": (lambda x: np.isfinite(x) & (x > -1), "a finite number above -1"),
}


def _param(value: ParamLike, table: Table, n: int, name: str, unit: u.UnitBase | None, prior: str) -> np.ndarray:
    """One float64 value per row from a scalar, array, Quantity or column name.

    A scalar outside the parameter's range raises ``ValueError``; per-star
    values outside it (or missing) are passed on, and the core flags those
    rows ``INVALID_PRIOR`` with NaN results; a warning says how many.
    """
    if isinstance(value, str):
        col = find_column(table, value, step=f"prior parameter {name}")
        arr = column_values(table, col, unit if isinstance(table[col], u.Quantity) else None)
        source = f"column {col!r}"
    elif isinstance(value, u.Quantity):
        arr = np.asarray(value.to_value(unit) if unit is not None else value.value, dtype=float)
        source = "values"
    else:
        try:
            arr = np.asarray(value, dtype=float)
        except (TypeError, ValueError):
            raise ValueError(
                f"{prior} {name} must be a number, an array, a Quantity or a column name; got {value!r}"
            ) from None
        source = "values"
    ok, what = _VALID[name]
    if arr.ndim == 0:
        if not ok(arr):
            raise ValueError(f"{prior} {name} must be {what}; got {float(arr)!r}")
        return np.full(n, float(arr))
    if arr.shape != (n,):
        raise ValueError(f"prior parameter {name} has shape {arr.shape}; expected a scalar or ({n},)")
    bad = int(np.sum(~ok(arr)))
    if bad:
        warn(
            f"{prior} {name}: {bad} of {n} {source} are not {what}; those rows get NaN distances flagged INVALID_PRIOR"
        )
    return arr


@dataclass(frozen=True)
class EDSD:
    """Exponentially decreasing space density prior, ``r^2 exp(-r/L) / (2 L^3)``.

    Parameters
    ----------
    length_scale
        ``L`` in pc (scalar, per-star array, Quantity or column name). The
        default 1350 pc is the Bailer-Jones (2015) / Astraatmadja & Bailer-Jones
        (2016) all-sky value. It must be positive and finite: a scalar that is
        not raises ``ValueError`` when the prior is used; per-star values that
        are not give those rows NaN distances flagged ``INVALID_PRIOR``, with a
        warning.

    Examples
    --------
    >>> EDSD(1000.0)
    EDSD(length_scale=1000.0)
    """

    length_scale: ParamLike = 1350.0

    def resolve(self, table: Table) -> core.EDSDPrior:
        return core.EDSDPrior(_param(self.length_scale, table, len(table), "length_scale", u.pc, "EDSD"))

    def describe(self) -> dict[str, Any]:
        return {"name": "EDSD", **_describe_params(asdict(self))}


@dataclass(frozen=True)
class GGD:
    """Generalized gamma prior of Bailer-Jones et al. (2021).

    ``P(r) = alpha / (L^(beta+1) Gamma((beta+1)/alpha)) r^beta exp(-(r/L)^alpha)``.
    ``alpha=1, beta=2`` is the EDSD prior. The parameters are in the same
    order as those of the core :class:`~gaia_distances.core.priors.GGDPrior`
    it resolves to. Use :meth:`bailer_jones_2021` for the published
    per-HEALPix parameters.

    Parameters
    ----------
    alpha, beta
        Shape parameters (dimensionless): scalars, per-star arrays or column names.
        The prior is proper for ``alpha > 0`` and ``beta > -1``.
    length_scale
        ``L`` in pc (scalar, per-star array, Quantity or column name), positive.

    A scalar parameter out of range raises ``ValueError`` when the prior is
    used; per-star values out of range (or missing) give those rows NaN
    distances flagged ``INVALID_PRIOR``, with a warning.

    Examples
    --------
    >>> GGD(alpha=1.3, beta=2.5, length_scale=1800.0)
    GGD(alpha=1.3, beta=2.5, length_scale=1800.0)
    """

    alpha: ParamLike = 1.0
    beta: ParamLike = 2.0
    length_scale: ParamLike = 1350.0

    def resolve(self, table: Table) -> core.GGDPrior:
        n = len(table)
        return core.GGDPrior(
            alpha=_param(self.alpha, table, n, "alpha", None, "GGD"),
            beta=_param(self.beta, table, n, "beta", None, "GGD"),
            length_scale=_param(self.length_scale, table, n, "length_scale", u.pc, "GGD"),
        )

    def describe(self) -> dict[str, Any]:
        return {"name": "GGD", **_describe_params(asdict(self))}

    @staticmethod
    def bailer_jones_2021(
        path: str | os.PathLike[str] | None = None, *, url: str = BJ2021_PRIOR_URL, cache: bool = True
    ) -> BailerJones2021Prior:
        """Per-HEALPix GGD priors from the Bailer-Jones et al. (2021) summary table.

        The table is read from ``path``, else from the file named by the
        ``GAIA_DISTANCES_BJ2021_PRIOR`` environment variable, else downloaded
        from ``url`` once and kept in astropy's download cache.
        """
        return BailerJones2021Prior(kind="GGD", path=path, url=url, cache=cache)


@dataclass(frozen=True)
class UniformSpaceDensity:
    """Constant space density out to ``r_max`` (pc): ``3 r^2 / r_max^3``.

    ``r_max`` (scalar, per-star array, Quantity or column name) must be
    positive and finite: a scalar that is not raises ``ValueError``; per-star
    values that are not give those rows NaN flagged ``INVALID_PRIOR``.

    Examples
    --------
    >>> UniformSpaceDensity(5000.0)
    UniformSpaceDensity(r_max=5000.0)
    """

    r_max: ParamLike = 1e5

    def resolve(self, table: Table) -> core.UniformSpaceDensityPrior:
        r_max = _param(self.r_max, table, len(table), "r_max", u.pc, "UniformSpaceDensity")
        return core.UniformSpaceDensityPrior(r_max)

    def describe(self) -> dict[str, Any]:
        return {"name": "UniformSpaceDensity", **_describe_params(asdict(self))}


@dataclass(frozen=True)
class BailerJones2021Prior:
    """Per-star priors looked up by HEALPix level 5 (``source_id // 2**49``).

    ``kind="GGD"`` uses GGDrlen, GGDalpha, GGDbeta; ``kind="EDSD"`` uses
    EDSDrlen. Rows whose ``source_id`` is missing get NaN results flagged
    ``INVALID_PRIOR``.
    """

    kind: str = "GGD"
    path: str | os.PathLike[str] | None = None
    url: str = BJ2021_PRIOR_URL
    cache: bool = True
    _table: Any = field(default=None, repr=False, compare=False)

    def table(self) -> Table:
        """The prior table (read once per process; kept in memory by :meth:`loaded`)."""
        if self._table is not None:
            return self._table
        return load_bailer_jones_2021_table(self.path, url=self.url, cache=self.cache)

    def loaded(self) -> BailerJones2021Prior:
        """A copy that carries its table in memory, to ship to other processes (Dask workers)."""
        return replace(self, _table=self.table())

    def parameters(self, source_id: Any) -> dict[str, np.ndarray]:
        """Prior parameters for each ``source_id`` (NaN where it is missing)."""
        prior_table = self.table()
        ids = np.ma.asarray(source_id)
        valid = ~np.ma.getmaskarray(ids)
        pix = np.full(len(ids), -1, dtype=np.int64)
        pix[valid] = np.asarray(ids.data[valid], dtype=np.int64) // _HEALPIX5_DIVISOR
        ok = valid & (pix >= 0) & (pix < _N_HEALPIX5)
        lookup = np.full(_N_HEALPIX5, -1, dtype=np.int64)
        lookup[np.asarray(prior_table["healpix"], dtype=np.int64)] = np.arange(len(prior_table))
        row = np.where(ok, lookup[np.clip(pix, 0, _N_HEALPIX5 - 1)], -1)
        ok &= row >= 0
        names = ("GGDrlen", "GGDalpha", "GGDbeta") if self.kind == "GGD" else ("EDSDrlen",)
        out = {}
        for name in names:
            vals = np.asarray(prior_table[name], dtype=float)[np.clip(row, 0, None)]
            out[name] = np.where(ok, vals, np.nan)
        out["healpix5"] = pix
        return out

    def resolve(self, table: Table) -> core.EDSDPrior | core.GGDPrior:
        require_columns(table, ["source_id"], step="the Bailer-Jones 2021 prior")
        p = self.parameters(table["source_id"])
        if self.kind == "GGD":
            return core.GGDPrior(alpha=p["GGDalpha"], beta=p["GGDbeta"], length_scale=p["GGDrlen"])
        return core.EDSDPrior(p["EDSDrlen"])

    def describe(self) -> dict[str, Any]:
        return {
            "name": f"Bailer-Jones 2021 {self.kind} (HEALPix level 5)",
            "table": str(_locate_table(self.path) or self.url),
        }


def _describe_params(params: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in params.items():
        if isinstance(v, str):
            out[k] = f"column {v}"
        elif isinstance(v, u.Quantity):
            out[k] = str(v) if v.isscalar else f"per-star array [{v.unit}]"
        elif np.ndim(v) == 0:
            out[k] = float(v)
        else:
            out[k] = "per-star array"
    return out


def _locate_table(path: str | os.PathLike[str] | None) -> Path | None:
    if path is not None:
        return Path(path)
    env = os.environ.get(BJ2021_PRIOR_ENV)
    return Path(env) if env else None


def load_bailer_jones_2021_table(
    path: str | os.PathLike[str] | None = None, *, url: str = BJ2021_PRIOR_URL, cache: bool = True
) -> Table:
    """Read the Bailer-Jones et al. (2021) prior summary (12288 HEALPix rows).

    Parameters
    ----------
    path
        A local copy. Defaults to ``$GAIA_DISTANCES_BJ2021_PRIOR``, then to a
        download from ``url`` kept in astropy's cache (``cache=True``).
    """
    local = _locate_table(path)
    if local is None:
        from astropy.utils.data import download_file

        try:
            local = Path(download_file(url, cache=cache, show_progress=False, pkgname="gaia_distances"))
        except Exception as exc:  # URLError, HTTPError, timeouts
            raise PriorTableError(
                f"could not download the Bailer-Jones 2021 prior table from {url} ({exc}). "
                f"Download prior_summary.csv by hand and pass its path, or set ${BJ2021_PRIOR_ENV}."
            ) from exc
    return _read_prior_table(str(local))


@functools.lru_cache(maxsize=4)
def _read_prior_table(path: str) -> Table:
    if not Path(path).exists():
        raise PriorTableError(f"Bailer-Jones 2021 prior table not found: {path}")
    try:
        table = Table.read(path, format="ascii.csv")
    except Exception as exc:
        raise PriorTableError(f"could not read {path} as a CSV prior table: {exc}") from exc
    need = ["healpix", "GGDrlen", "GGDalpha", "GGDbeta", "EDSDrlen"]
    missing = [c for c in need if c not in table.colnames]
    if missing:
        raise PriorTableError(f"{path} lacks prior table column(s) {missing}")
    if len(table) != _N_HEALPIX5:
        log.warning("prior table %s has %d rows, expected %d", path, len(table), _N_HEALPIX5)
    return table


def resolve_prior(prior: Any, table: Table) -> tuple[Any, dict[str, Any]]:
    """Turn a prior description into a core prior for every row of ``table``.

    ``prior`` may be an :class:`EDSD`, :class:`GGD`, :class:`UniformSpaceDensity`
    or :class:`BailerJones2021Prior` instance; one of the strings ``"edsd"``,
    ``"ggd"`` (Bailer-Jones 2021 table) or ``"uniform"``; or any numpyro
    ``Distribution`` over distance in pc with positive support.

    Returns the core prior and a description for provenance.

    Raises
    ------
    ValueError
        A scalar parameter out of range (e.g. ``EDSD(0)``), an unknown name, or
        a numpyro distribution that is discrete, lives on negative distances or
        has parameters outside its ``arg_constraints``; the message names it.
    """
    if isinstance(prior, str):
        name = PRIOR_ALIASES.get(prior.lower(), prior.lower())
        if name not in PRIOR_NAMES:
            raise ValueError(f"unknown prior {prior!r}; use one of {', '.join(map(repr, PRIOR_NAMES))}")
        named: dict[str, Any] = {"edsd": EDSD, "ggd": GGD.bailer_jones_2021, "uniform": UniformSpaceDensity}
        prior = named[name]()
    if hasattr(prior, "resolve"):
        return prior.resolve(table), prior.describe()
    try:
        from numpyro.distributions import Distribution
    except ImportError:  # pragma: no cover - numpyro is a dependency
        Distribution = ()  # type: ignore[assignment,misc]
    if isinstance(prior, Distribution):
        core.check_positive_support(prior)
        return (
            core.DistributionPrior.from_distribution(prior, len(table)),
            {"name": f"user: numpyro {type(prior).__name__}", "batch_shape": list(prior.batch_shape)},
        )
    raise TypeError(
        "prior must be EDSD, GGD, UniformSpaceDensity, GGD.bailer_jones_2021(), "
        f"'edsd'/'ggd'/'uniform' or a numpyro Distribution; got {type(prior).__name__}"
    )
