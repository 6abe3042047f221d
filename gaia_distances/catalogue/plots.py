"""The refitted catalogue against a reference: distances and proper motions, cluster by cluster."""

from __future__ import annotations

from typing import Any

import numpy as np
from astropy import units as u

__all__ = ["comparison_figure"]

#: The panels: the refit's quantity, its unit, and the reference's column giving it.
_PANELS = (("D", u.pc, "distance"), ("pmra", u.mas / u.yr, "pmra"), ("pmdec", u.mas / u.yr, "pmdec"))


def _values(table: Any, name: str, unit: u.UnitBase) -> np.ndarray:
    col = table[name]
    return np.asarray(col.to_value(unit) if isinstance(col, u.Quantity) else col, dtype=float)


def _reference(cat: Any, reference: Any) -> dict[str, np.ndarray]:
    """The reference's distance (pc; else 1000 / parallax), pmra, pmdec for each row of ``cat``, NaN if none."""
    if reference is None:  # the list's own values, carried by the catalogue
        ref = {h: _values(cat, f"list_{h}", unit) for h, unit in (("distance", u.pc), ("parallax", u.mas))}
        ref |= {h: _values(cat, f"list_{h}", u.mas / u.yr) for h in ("pmra", "pmdec")}
    else:
        from gaia_distances.catalogue.cluster_list import read_cluster_list

        other = read_cluster_list(reference)
        rows = {str(k): i for i, k in enumerate(other["key"])}
        index = np.array([rows.get(str(k), -1) for k in cat["key"]])
        units = {"distance": u.pc, "parallax": u.mas, "pmra": u.mas / u.yr, "pmdec": u.mas / u.yr}
        ref = {}
        for h, unit in units.items():
            values = _values(other, h, unit) if h in other.colnames else np.full(len(other), np.nan)
            ref[h] = np.where(index >= 0, np.append(values, np.nan)[index], np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        plx = np.where(ref["parallax"] > 0, 1000.0 / ref["parallax"], np.nan)
    ref["distance"] = np.where(np.isfinite(ref["distance"]), ref["distance"], plx)
    return ref


def comparison_figure(cat: Any, *, reference: Any = None, label: str = "list") -> Any:
    """Refitted ``D``, ``pmra``, ``pmdec`` (medians, 15.866-84.134 % bars) against a reference, one point per cluster.

    ``reference``: another cluster list (anything
    :func:`~gaia_distances.read_cluster_list` reads, matched by normalised
    name) with ``distance`` or ``parallax`` and ``pmra``/``pmdec``; default:
    the values of the list that was refitted (the catalogue's ``list_*``
    columns). Clusters without a fit or a reference value are left out; a
    panel with none says so. Returns a matplotlib ``Figure`` (``plot`` extra).
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - exercised without the extra
        raise ImportError('the comparison figure needs matplotlib: pip install "gaia-distances[plot]"') from exc
    ref = _reference(cat, reference)
    fig, axes = plt.subplots(1, len(_PANELS), figsize=(4.2 * len(_PANELS), 4.0), layout="constrained")
    for ax, (name, unit, column) in zip(axes, _PANELS):
        y, lo, hi = (_values(cat, n, unit) for n in (name, f"{name}_lo", f"{name}_hi"))
        x = ref[column]
        ok = np.isfinite(x) & np.isfinite(y)
        ax.set_title(f"{name} [{unit:unicode}]")
        ax.set_xlabel(label)
        ax.set_ylabel("refit")
        if not ok.any():
            ax.text(0.5, 0.5, f"no cluster with a fitted and a {label} {name}", ha="center", transform=ax.transAxes)
            continue
        err = np.vstack([y[ok] - lo[ok], hi[ok] - y[ok]])
        ax.errorbar(x[ok], y[ok], yerr=np.where(np.isfinite(err), err, 0.0), fmt="o", ms=3, lw=0.8)
        span = [float(min(x[ok].min(), y[ok].min())), float(max(x[ok].max(), y[ok].max()))]
        ax.plot(span, span, color="0.5", lw=0.8, zorder=0)
        if name == "D" and span[0] > 0:
            ax.set_xscale("log")
            ax.set_yscale("log")
    return fig
