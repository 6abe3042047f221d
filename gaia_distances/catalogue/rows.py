"""The refitted catalogue's rows: one per cluster, the same columns whether its fit ran or failed.

A row is a plain dict (it travels back from a Dask worker and is written at
once); :func:`catalogue_table` makes the table, with units and descriptions,
in the order of the cluster list.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from astropy import units as u
from astropy.table import QTable

from gaia_distances.catalogue.cluster_list import ClusterSpec
from gaia_distances.core.terms import ALL_QUANTITIES, TERMS

__all__ = [
    "CATALOGUE_COLUMNS",
    "CATALOGUE_PARAMETERS",
    "DONE_STATUSES",
    "FAILED_STATUSES",
    "RefitCatalogue",
    "catalogue_table",
    "failed_row",
    "fitted_row",
]

#: The cluster's quantities the catalogue reports, each as median, 16 %, 84 %, sd_stat and sd_sys: the
#: distance, the motion and the fraction, then each model term's science quantities (``rv``; NaN for a
#: cluster whose fit did not use the term).
CATALOGUE_PARAMETERS = (
    "D",
    "pmra",
    "pmdec",
    "sigma_v",
    "Q",
    *(q.name for term in TERMS.values() for q in term.block_quantities() if q.science),
)

#: Statuses of a cluster whose fit ran to the end (a rerun skips it): converged, or with the fit's warnings.
DONE_STATUSES = ("ok", "warning")
#: Statuses of a cluster without a fit, and what each means (a rerun tries it again).
FAILED_STATUSES = {
    "no_field": "no field: no file for the cluster, or an unusable one",
    "query_error": "the field's query failed",
    "too_few_stars": "too few stars with a usable parallax in the field",
    "fit_error": "the fit raised an error",
}

_UNITS = {q.name: q.unit for q in ALL_QUANTITIES}
_PARAMETER_COLUMNS: dict[str, tuple[str, str]] = {}
for _p in CATALOGUE_PARAMETERS:
    _what = next(q.description for q in ALL_QUANTITIES if q.name == _p)
    _PARAMETER_COLUMNS |= {
        _p: (_UNITS[_p], f"posterior median of the {_what}"),
        f"{_p}_lo": (_UNITS[_p], f"15.866th posterior percentile of {_p}"),
        f"{_p}_hi": (_UNITS[_p], f"84.134th posterior percentile of {_p}"),
        f"{_p}_sd_stat": (_UNITS[_p], f"posterior sd of {_p} without Gaia's correlated systematics"),
        f"{_p}_sd_sys": (_UNITS[_p], f"sd of {_p} from Gaia's correlated systematics (0: none in the fit)"),
    }

#: Every column of the catalogue, in order: name -> (unit, description).
CATALOGUE_COLUMNS: dict[str, tuple[str, str]] = {
    "name": ("", "cluster name, as the input list spells it"),
    "key": ("", "normalised name (file names and matching)"),
    "ra": ("deg", "centre right ascension from the list (ICRS)"),
    "dec": ("deg", "centre declination from the list (ICRS)"),
    "radius": ("deg", "radius of the field searched (the list's times radius_scale)"),
    "list_parallax": ("mas", "the list's parallax of the cluster (NaN: none)"),
    "list_distance": ("pc", "the list's distance of the cluster (NaN: none)"),
    "list_pmra": ("mas / yr", "the list's proper motion in RA of the cluster (NaN: none)"),
    "list_pmdec": ("mas / yr", "the list's proper motion in Dec of the cluster (NaN: none)"),
    "status": ("", f"ok, warning (fitted; see reason) or a failure: {', '.join(FAILED_STATUSES)}"),
    "reason": ("", "why the status is not ok (empty when ok)"),
    **_PARAMETER_COLUMNS,
    "n_members": ("", "expected number of members: the sum of membership_prob"),
    "n_stars": ("", "stars fitted"),
    "n_rows": ("", "rows of the field"),
    "max_r_hat": ("", "largest R-hat of the reported quantities"),
    "min_ess_bulk": ("", "smallest bulk ESS of the reported quantities"),
    "divergences": ("", "divergent NUTS transitions"),
    "seed": ("", "the cluster's seed (from the global seed and its key)"),
    "wall_time_s": ("s", "wall time of the cluster's field and fit"),
    "field": ("", "where the field came from (file, archive job, lsdb cone)"),
}

_INTS = ("n_stars", "n_rows", "divergences", "seed")
_TEXT = ("name", "key", "status", "reason", "field")


def _base(spec: ClusterSpec, radius: float, seed: int) -> dict[str, Any]:
    row: dict[str, Any] = {c: math.nan for c in CATALOGUE_COLUMNS}
    row |= {c: "" for c in _TEXT} | {c: -1 for c in _INTS}
    row |= {"name": spec.name, "key": spec.key, "ra": spec.ra, "dec": spec.dec, "radius": radius, "seed": seed}
    row |= {f"list_{h}": getattr(spec, h) for h in ("parallax", "distance", "pmra", "pmdec")}
    return row


def failed_row(
    spec: ClusterSpec, status: str, reason: str, *, radius: float, seed: int, wall_time_s: float, field: str = ""
) -> dict[str, Any]:
    """The row of a cluster without a fit: its status (a key of :data:`FAILED_STATUSES`) and reason."""
    if status not in FAILED_STATUSES:
        raise ValueError(f"status must be one of {tuple(FAILED_STATUSES)}; got {status!r}")
    row = _base(spec, radius, seed)
    row |= {"status": status, "reason": reason, "wall_time_s": wall_time_s, "field": field, "n_stars": 0}
    return row


def fitted_row(
    spec: ClusterSpec, fit: Any, *, radius: float, seed: int, wall_time_s: float, n_rows: int, field: str
) -> dict[str, Any]:
    """The row of a fitted cluster: its quantities' percentiles and sd's, members, diagnostics."""
    row = _base(spec, radius, seed)
    summ = fit.summary()
    by_name = {str(r["parameter"]): r for r in summ}
    split = "sd_stat" in summ.colnames
    for p in CATALOGUE_PARAMETERS:
        r = by_name.get(p)
        if r is None:
            continue  # not in this model (no proper motions)
        row[p], row[f"{p}_lo"], row[f"{p}_hi"] = float(r["p50"]), float(r["p16"]), float(r["p84"])
        row[f"{p}_sd_stat"] = float(r["sd_stat"]) if split else float(r["sd"])
        row[f"{p}_sd_sys"] = float(r["sd_sys"]) if split else 0.0
    d = fit.diagnostics
    status = str(d["status"])
    member = np.asarray(getattr(fit.table["membership_prob"], "value", fit.table["membership_prob"]), dtype=float)
    r_hat = [float(v) for v in dict(d["r_hat"]).values()]
    row |= {
        "status": "ok" if status == "ok" else "warning",
        "reason": "" if status == "ok" else status,
        "n_members": float(np.nansum(member)),
        "n_stars": int(fit.stars.n_stars),
        "n_rows": int(n_rows),
        "max_r_hat": max(r_hat) if r_hat else math.nan,
        "min_ess_bulk": float(d["min_ess_bulk"]),
        "divergences": int(d["divergences"]),
        "wall_time_s": wall_time_s,
        "field": field,
    }
    return row


class RefitCatalogue(QTable):
    """The table :func:`~gaia_distances.fit_catalogue` returns: a ``QTable`` that can draw itself.

    ``RefitCatalogue(QTable.read("out/catalogue.ecsv"))`` makes one from a saved catalogue.
    """

    def plot(self, kind: str = "comparison", **kwargs: Any) -> Any:
        """A figure of the catalogue (needs the ``plot`` extra).

        ``kind``: ``"comparison"``, the refitted distances and proper
        motions against the list's own (or ``reference=``, another list;
        :func:`~gaia_distances.catalogue.plots.comparison_figure`).
        """
        from gaia_distances.catalogue.plots import comparison_figure

        if kind != "comparison":
            raise ValueError(f"kind must be 'comparison'; got {kind!r}")
        return comparison_figure(self, **kwargs)


def catalogue_table(rows: Sequence[Mapping[str, Any]]) -> RefitCatalogue:
    """The catalogue: one row per dict of ``rows``, in order, every column of :data:`CATALOGUE_COLUMNS`."""
    out = RefitCatalogue()
    for name, (unit, description) in CATALOGUE_COLUMNS.items():
        values = [r[name] for r in rows]
        if name in _TEXT:
            col: Any = np.array([str(v) for v in values], dtype=str) if values else np.zeros(0, dtype=str)
        elif name in _INTS:
            col = np.array(values, dtype=np.int64)
        else:
            col = np.array(values, dtype=float)
            if unit:
                col = col * u.Unit(unit)
        out[name] = col
        out[name].info.description = description
    return out
