"""Reports: every figure of a fit or a distance table as a PNG, and ``report.md`` with the summary.

Needs the ``plot`` extra (``pip install "gaia-distances[plot]"``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gaia_distances.columns import META_KEY
from gaia_distances.plotting import (
    FitLike,
    colour_magnitude,
    corner_plot,
    distance_posteriors,
    fit_and_table,
    parallax_predictive,
    proper_motion_diagram,
    proper_motion_predictive,
    pyplot,
    sky_map,
    values,
)
from gaia_distances.pm_plots import PM_LABELS, is_kinematic

__all__ = ["write_report"]

log = logging.getLogger(__name__)


def _markdown_table(table: Any) -> str:
    cols = list(table.colnames)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in table:
        cells = []
        for c in cols:
            v = row[c]
            fmt = ".4f" if c == "r_hat" else ".4g"
            cells.append(format(v, fmt) if isinstance(v, float | np.floating) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(
    table_or_fit: Any,
    directory: str | Path,
    *,
    truths: Mapping[str, float] | None = None,
    title: str = "gaia_distances report",
    dpi: int = 120,
    overwrite: bool = True,
) -> Path:
    """Write every figure as a PNG and a ``report.md`` that links them.

    Parameters
    ----------
    table_or_fit
        A :class:`~gaia_distances.ClusterFit` (summary, diagnostics, corner
        plot, predictive checks and table figures; for a fit with proper
        motions also the corner plot of ``pmra``, ``pmdec`` and ``sigma_v``,
        the vector-point diagram and the proper-motion predictive check) or
        a table with distances.
    directory
        Created if needed.
    truths
        Known population parameters (simulations), drawn on the corner plot.
    overwrite
        Replace the files of an earlier report (the default). ``False``
        refuses, before anything is drawn or written, if any file this report
        would write (``report.md`` or a figure) exists, naming them.

    Returns
    -------
    Path
        The path of ``report.md``.

    Raises
    ------
    FileExistsError
        With ``overwrite=False``, if a file the report would write exists.
    """
    plt = pyplot()
    out = Path(directory)
    fit, table = fit_and_table(table_or_fit)
    figures: list[tuple[str, str, Any]] = []
    if fit is not None:
        figures.append(("corner.png", "Population posterior", lambda: corner_plot(fit, truths=truths)))
        figures.append(
            ("parallax_predictive.png", "Parallaxes against predictive catalogues", lambda: parallax_predictive(fit))
        )
    if fit is not None and is_kinematic(fit):
        kin = ("pmra", "pmdec", "sigma_v")
        labels = [*PM_LABELS, r"$\sigma_v$ [km/s]"]
        figures += [
            (
                "corner_kinematics.png",
                "Cluster proper motion and internal velocity dispersion",
                lambda: corner_plot(fit, parameters=kin, truths=truths, labels=labels),
            ),
            ("proper_motions.png", "Proper motions (vector-point diagram)", lambda: proper_motion_diagram(fit)),
            (
                "proper_motion_predictive.png",
                "Proper motions against predictive catalogues (at each star's observed parallax)",
                lambda: proper_motion_predictive(fit),
            ),
        ]
    figures += [
        ("colour_magnitude.png", "Colour-magnitude diagram", lambda: colour_magnitude(table)),
        ("sky_map.png", "Sky map", lambda: sky_map(table)),
        ("distance_posteriors.png", "Distance posteriors of single stars", lambda: distance_posteriors(table)),
    ]
    _refuse_existing([out / name for name, _, _ in figures] + [out / "report.md"], overwrite)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", ""]
    lines += _report_text(table, fit)
    lines += ["", "## Figures", ""]
    for fname, caption, make in figures:
        try:
            fig = make()
        except (KeyError, ValueError) as exc:  # a table without the needed columns
            lines += [f"- {caption}: not drawn ({exc})"]
            continue
        fig.savefig(out / fname, dpi=dpi, bbox_inches="tight")
        plt.close(fig)
        lines += [f"### {caption}", "", f"![{caption}]({fname})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    log.info("report written to %s", path)
    return path


def _refuse_existing(paths: list[Path], overwrite: bool) -> None:
    """Raise ``FileExistsError`` naming every one of ``paths`` that exists, unless ``overwrite``."""
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"the report would replace {', '.join(existing)}; pass overwrite=True (--overwrite on the command "
            "line) or choose another folder"
        )


def _report_text(table: Any, fit: FitLike | None) -> list[str]:
    prov = table.meta.get(META_KEY, {})
    lines = [f"{len(table)} rows; gaia_distances {prov.get('version', '?')}.", ""]
    if "distance_median" in table.colnames:
        med = values(table, "distance_median")
        flag = np.asarray(table["distance_flag"]) if "distance_flag" in table.colnames else np.zeros(len(table), int)
        lines += [
            "## Distances",
            "",
            f"- prior: {json.dumps(prov.get('distances', {}).get('prior', {}))}",
            f"- rows with a distance: {int(np.isfinite(med).sum())} of {len(table)}; "
            f"median of the medians {np.nanmedian(med) if np.isfinite(med).any() else float('nan'):.1f} pc",
            f"- flagged rows: {int(np.sum(flag != 0))} (prior-dominated: {int(np.sum((flag & 4) != 0))})",
            "",
        ]
    if fit is not None:
        d = fit.diagnostics
        pm = "with proper motions" if is_kinematic(fit) else "parallaxes only"
        lines += ["## Cluster fit", "", f"Method: {fit.method} ({pm}); stars fitted: {fit.stars.n_stars}.", ""]
        summ = fit.summary()
        summ.remove_column("description")
        lines += [_markdown_table(summ), "", "### Diagnostics", ""]
        lines += [
            f"- divergences: {d.get('divergences')}",
            f"- max R-hat: {max(d['r_hat'].values()):.4f}; min bulk ESS: {d['min_ess_bulk']:.0f}",
            f"- wall time: {d['wall_time_s']:.1f} s ({d['ess_per_s']:.0f} ESS/s)",
        ]
        warns = d.get("warnings") or []
        lines += [f"- **warning**: {w}" for w in warns] or ["- no warnings"]
    return lines
