"""The ``gaia-distances`` command line.

Subcommands:

- ``query --name M67 --radius 0.5 -o m67.fits``: a Gaia DR3 cone (cached);
- ``zeropoint IN -o OUT``: add Lindegren et al. (2021) zero points;
- ``estimate IN -o OUT --prior edsd|ggd|uniform``: per-star distances;
- ``cluster IN -o OUT [--method marginal|joint] [--kinematics auto|on|off] [--field flexible|edsd]
  [--perspective]``:
  fit a cluster over a field, with proper motions where the table has them;
- ``catalogue LIST -o DIR --source archive|FOLDER|HATS [--workers N]``: refit every cluster of a list,
  resumably (:mod:`gaia_distances.cli_catalogue`);
- ``report IN -o DIR [--posterior post.nc]``: figures and report.md for a table;
- ``demo``: simulate a Gaia field and run the whole pipeline, offline.

Table formats are chosen by file extension (.fits, .vot, .ecsv, .csv, .parquet).
Units: parallaxes in mas, distances in pc. ``distance_lo``/``distance_hi`` are
the 15.866th/84.134th posterior percentiles.

Every output is checked before any work starts (its format from the
extension, its folder, an existing file). An existing output file (or any file
of a report) is replaced only with ``--overwrite``, as are the columns
``estimate`` and ``cluster`` write when the input already has them; outputs
are written whole or not at all. ``--quiet``, ``--json`` and ``-v``
go before or after the subcommand. Standard output holds only the summary
(``--json``: strict JSON, ``null`` for NaN); the libraries' own messages
(numpyro, jax, astroquery) show only with ``-v``. Errors print one line on
standard error and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gaia_distances.cli_catalogue import cmd_catalogue
from gaia_distances.cli_outputs import check_outputs, refuse_existing
from gaia_distances.cli_parser import KINEMATICS_CHOICES, build_parser, fit_flag_options, term_options
from gaia_distances.compile_cache import set_compilation_cache
from gaia_distances.errors import GaiaDistancesError, GaiaDistancesWarning, one_line
from gaia_distances.io import write_table

__all__ = ["main"]

log = logging.getLogger("gaia_distances")

#: Loggers of the libraries underneath, shown only from ERROR up unless ``-v``.
LIBRARY_LOGGERS = ("jax", "jaxlib", "numpyro")


@contextlib.contextmanager
def _replacing(path: str | Path, overwrite: bool) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; it replaces ``path`` only when the block succeeds."""
    p = Path(path)
    refuse_existing([p], overwrite)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp{p.suffix}")
    try:
        yield tmp
        refuse_existing([p], overwrite)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)


def _json_safe(value: Any) -> Any:
    """``value`` with NumPy scalars as Python ones and NaN/inf as ``None`` (JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value if value is None or isinstance(value, str) else str(value)


def to_json(summary: dict[str, Any], **kwargs: Any) -> str:
    """Strict JSON for a summary: NaN and inf become ``null``."""
    return json.dumps(_json_safe(summary), allow_nan=False, **kwargs)


def _summary(table: Any, prefix: str = "distance") -> dict[str, Any]:
    med = np.asarray(table[f"{prefix}_median"].value)
    flag = np.asarray(table[f"{prefix}_flag"])
    good = np.isfinite(med)
    return {
        "rows": len(table),
        "rows_with_distance": int(good.sum()),
        "median_distance_pc": float(np.median(med[good])) if good.any() else None,
        "flagged_rows": int(np.sum(flag != 0)),
        "prior_dominated_rows": int(np.sum((flag & 4) != 0)),
    }


def _prior_from_args(args: argparse.Namespace) -> Any:
    import gaia_distances as gd

    if args.prior == "edsd":
        return gd.EDSD(args.length_scale)
    if args.prior == "ggd":
        return gd.GGD.bailer_jones_2021(args.prior_table)
    return gd.UniformSpaceDensity(args.r_max)


def _cmd_zeropoint(args: argparse.Namespace) -> dict[str, Any]:
    import gaia_distances as gd

    t = gd.apply_zeropoint(
        gd.load_table(args.input),
        fallback=args.fallback,
        approximate_missing=args.approximate_missing,
        progress=not args.quiet,
    )
    write_table(t, args.output, overwrite=args.overwrite)
    flag = np.asarray(t["zeropoint_flag"])
    return {"rows": len(t), "flagged_rows": int(np.sum(flag != 0)), "output": args.output}


def _cmd_query(args: argparse.Namespace) -> dict[str, Any]:
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    from gaia_distances import query

    kw: dict[str, Any] = dict(
        server=args.tap_url,
        cache=not args.no_cache,
        offline=args.offline,
        timeout=args.timeout,
        retries=args.retries,
        progress=not args.quiet,
    )
    if args.job_timeout is not None:  # else query_adql's default
        kw["job_timeout"] = args.job_timeout
    if args.name is None and (args.ra is None or args.dec is None):
        raise ValueError("give --name, or --ra and --dec")
    if not args.quiet:  # show the job's phases and the rows received
        logging.getLogger("gaia_distances.query").setLevel(logging.INFO)
    radius = args.radius * u.deg
    if args.name:
        t = query.query_cluster(args.name, radius, pmra=args.pmra, pmdec=args.pmdec, **kw)
    else:
        centre = SkyCoord(args.ra * u.deg, args.dec * u.deg)
        t = query.query_field(centre, radius, pmra=args.pmra, pmdec=args.pmdec, **kw)
    write_table(t, args.output, overwrite=args.overwrite)
    prov = t.meta.get("gaia_distances", {}).get("query", {})
    return {"rows": len(t), "jobid": prov.get("jobid"), "from_cache": prov.get("from_cache"), "output": args.output}


def _load_with_zero_point(args: argparse.Namespace) -> tuple[Any, Any]:
    """The input table (zero-pointed with --apply-zeropoint) and the --zero-point value."""
    import gaia_distances as gd

    t = gd.load_table(args.input)
    if args.apply_zeropoint:
        t = gd.apply_zeropoint(t, fallback=args.fallback, progress=not args.quiet)
    zp: Any = args.zero_point
    if zp is not None:
        try:
            zp = float(zp)
        except ValueError:
            pass  # a column name
    return t, zp


def _cmd_estimate(args: argparse.Namespace) -> dict[str, Any]:
    import gaia_distances as gd

    t, zp = _load_with_zero_point(args)
    extra = (0.05, 0.95) if args.p05_p95 else ()
    t = gd.estimate_distances(
        t,
        prior=_prior_from_args(args),
        method=args.method,
        zero_point=zp,
        extra_quantiles=extra,
        parallax_error_inflation=args.parallax_error_inflation,
        seed=args.seed,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    write_table(t, args.output, overwrite=args.overwrite)
    return {**_summary(t), "output": args.output}


def _cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    import gaia_distances as gd

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    field = gd.simulate_field(
        args.n_field, n_cluster=args.n_cluster, magnitude_limit=20.7, frac_2p=0.01, seed=args.seed
    )
    t = gd.apply_zeropoint(field)
    t = gd.estimate_distances(t, prior=gd.EDSD(1350.0), progress=False if args.quiet else None)
    t_est = time.perf_counter() - t0
    good = np.isfinite(t["distance_median"].value)
    r_true = np.asarray(t["r_true"].value)
    lo, hi = np.asarray(t["distance_lo"].value), np.asarray(t["distance_hi"].value)
    inside = (r_true[good] >= lo[good]) & (r_true[good] <= hi[good])
    fit = gd.fit_cluster(
        t,
        kinematics=KINEMATICS_CHOICES[args.kinematics],
        **term_options(args),
        field=args.field,
        systematics=None if args.systematics == "none" else args.systematics,
        parallax_offset_prior=None if args.parallax_offset_prior == "none" else args.parallax_offset_prior,
        num_warmup=args.num_warmup,
        num_samples=args.num_samples,
        num_chains=args.num_chains,
        seed=args.seed,
        progress=False if args.quiet else None,
    )
    t = fit.table
    cluster_summary = fit.summary()
    rows = {str(r["parameter"]): r for r in cluster_summary}
    path = out / "demo_distances.ecsv"
    write_table(t, path, overwrite=True)  # the demo's own folder: its files are replaced on every run
    write_table(cluster_summary, out / "demo_cluster_summary.ecsv", overwrite=True)
    sim = field.meta["gaia_distances"]["simulation"]  # the truth, as simulated
    truths = {
        "D": sim["cluster_distance_pc"],
        "sigma": sim["cluster_distance_pc"] * sim["cluster_sigma_log"],
        "sigma_log": sim["cluster_sigma_log"],
        "Q": sim["n_cluster"] / (sim["n_field"] + sim["n_cluster"]),
    }
    summary = {
        **_summary(t),
        "cluster_members_simulated": int(np.sum(t["is_member"])),
        "truth_inside_68pc_interval": float(inside.mean()) if inside.size else None,
        "cluster_distance_pc": f"{rows['D']['mean']:.1f} +- {rows['D']['sd']:.1f} (true {truths['D']:.0f})",
        "cluster_fraction": f"{rows['Q']['mean']:.3f} +- {rows['Q']['sd']:.3f} "
        f"(true {truths['Q']:.3f}; the magnitude limit makes the field depart from the EDSD field model)",
        "distances_wall_time_s": round(t_est, 2),
        "output": str(path),
    }
    summary["report"] = _write_report(fit, out / "report", truths=truths)
    summary["total_wall_time_s"] = round(time.perf_counter() - t0, 2)
    with _replacing(out / "demo_summary.json", overwrite=True) as tmp:
        tmp.write_text(to_json(summary, indent=2))
    return summary


def _write_report(source: Any, directory: Path, **kwargs: Any) -> str:
    """``report.write_report``, or a note when the ``plot`` extra is missing."""
    try:
        from gaia_distances.report import write_report

        return str(write_report(source, directory, **kwargs))
    except ImportError as exc:
        log.warning("no report: %s", exc)
        return f"not written ({exc})"


def _parse_truths(items: list[str] | None) -> dict[str, float] | None:
    if not items:
        return None
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--truth takes NAME=VALUE (e.g. D=850); got {item!r}")
        out[name.strip()] = float(value)
    return out


def _cmd_report(args: argparse.Namespace) -> dict[str, Any]:
    import gaia_distances as gd
    from gaia_distances.report import write_report

    truths = _parse_truths(args.truth)
    if args.posterior:  # from the file, so that a posterior of another fit is refused naming both files
        source: Any = gd.ClusterFit.from_table(args.input, args.posterior)
        t = source.table
    else:
        source = t = gd.load_table(args.input)
    path = write_report(source, args.output_dir, truths=truths, title=args.title, overwrite=args.overwrite)
    figures = sorted(p.name for p in Path(args.output_dir).glob("*.png"))
    return {"rows": len(t), "report": str(path), "figures": figures}


def _cmd_cluster(args: argparse.Namespace) -> dict[str, Any]:
    import gaia_distances as gd

    options = {
        **fit_flag_options(args),
        "seed": args.seed,
        "progress": not args.quiet,
        "overwrite": args.overwrite,
    }
    _check_fit_options(options)  # before the table is read, by the fits' own check, in the flags' names
    t, zp = _load_with_zero_point(args)
    fit = gd.fit_cluster(t, method=args.method, zero_point=zp, distance_hint=args.distance_hint, **options)
    with contextlib.ExitStack() as stack:  # the posterior and the table are both written, or neither
        if args.save_posterior:
            fit.to_netcdf(str(stack.enter_context(_replacing(args.save_posterior, args.overwrite))))
        write_table(fit.table, args.output, overwrite=args.overwrite)
    summ = fit.summary()
    if not args.quiet and not args.json:
        print("\n".join(summ.pformat(max_width=-1, max_lines=-1)), file=args.stdout)
    diag = {k: v for k, v in fit.diagnostics.items() if not k.startswith("_")}
    return {
        "method": args.method,
        "kinematics": bool(fit.diagnostics.get("kinematics", False)),
        "field": args.field,
        "stars_fitted": int(np.sum(np.asarray(fit.table["cluster_flag"]) == 0)),
        **{f"{r['parameter']}_mean": float(r["mean"]) for r in summ},
        **{f"{r['parameter']}_sd": float(r["sd"]) for r in summ},
        "min_ess_bulk": diag["min_ess_bulk"],
        "max_r_hat": float(np.max(np.asarray(list(diag["r_hat"].values()), dtype=float))),  # NaN if any is
        "divergences": diag["divergences"],
        "wall_time_s": round(diag["wall_time_s"], 2),
        "warnings": diag["warnings"],
        "output": args.output,
    }


def _check_fit_options(options: dict[str, Any]) -> None:
    """The cluster fit's options checked as the fit checks them; a bad one's message names its flag."""
    from gaia_distances.cluster.options import fit_options_from

    try:
        fit_options_from(options)
    except ValueError as exc:
        message = str(exc)
        for name in options:
            if message.startswith(name):
                message = "--" + name.replace("_", "-") + message[len(name) :]
        raise ValueError(message) from None


def _build_parser() -> argparse.ArgumentParser:
    """The ``gaia-distances`` parser, whose description is this module's docstring."""
    return build_parser(__doc__ or "")


def _library_loggers(command: str) -> list[logging.Logger]:
    """The loggers of :data:`LIBRARY_LOGGERS`, and astroquery's for ``query`` or once it is imported.

    astroquery's logger writes INFO ("Query finished.") to standard output. It
    is taken from the package, never created here: astroquery makes its
    logger its own class when it is first imported.
    """
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    if command == "query" or "astroquery" in sys.modules:
        with contextlib.suppress(ImportError):  # the query raises, naming the extra to install
            from astroquery import log as astroquery_log  # the package root contacts nobody (astroquery.gaia does)

            loggers.append(astroquery_log)
    return loggers


@contextlib.contextmanager
def _library_output(command: str, verbose: bool) -> Iterator[None]:
    """Keep the libraries' messages off standard output, and (unless ``verbose``) out of sight.

    Anything printed while a subcommand runs goes to standard error; unless
    ``verbose``, the libraries' loggers show only errors and of the warnings
    only the package's own (:class:`GaiaDistancesWarning`) show.
    """
    loggers = _library_loggers(command)
    levels = [lg.level for lg in loggers]
    with _warnings_as_lines(command, verbose), contextlib.redirect_stdout(sys.stderr):
        if not verbose:
            for lg in loggers:
                lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


@contextlib.contextmanager
def _warnings_as_lines(command: str, verbose: bool) -> Iterator[None]:
    """Show each warning as one line on standard error, ``gaia-distances CMD: warning: ...``, as pip does.

    Unless ``verbose``, only the package's own warnings show. Warning filters
    the user set (``python -W``, ``PYTHONWARNINGS``) are left to decide: with
    ``error`` a warning becomes an error (one line, exit status 2). The
    filters and ``warnings.showwarning`` are restored afterwards.
    """
    with warnings.catch_warnings():
        if not verbose and not sys.warnoptions:
            warnings.simplefilter("ignore")
            warnings.simplefilter("default", GaiaDistancesWarning)
        warnings.showwarning = _warning_line(command)
        yield


def _warning_line(command: str) -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints one line naming the subcommand (and the category, if not ours)."""

    def show(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        kind = "" if issubclass(category, GaiaDistancesWarning) else f" ({category.__name__})"
        print(f"gaia-distances {command}: warning: {one_line(message)}{kind}", file=sys.stderr)  # type: ignore[arg-type]

    return show


#: Subcommand name -> the function that runs it and returns its summary.
COMMANDS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "query": _cmd_query,
    "zeropoint": _cmd_zeropoint,
    "estimate": _cmd_estimate,
    "cluster": _cmd_cluster,
    "catalogue": cmd_catalogue,
    "report": _cmd_report,
    "demo": _cmd_demo,
}


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    0 on success; 2 for a usage error or any error in the input, the options
    or the output (one line on standard error, no traceback), or a warning
    that ``-W error`` turned into one; 130 when interrupted. Warnings print
    one line each on standard error: ``gaia-distances CMD: warning: ...``.
    """
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if not args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    args.stdout = sys.stdout
    try:
        if args.jax_cache is not None:
            set_compilation_cache(args.jax_cache or False)
        check_outputs(args)  # before any work: extension, folder, existing files
        with _library_output(args.command, args.verbose):
            summary = COMMANDS[args.command](args)
    except (GaiaDistancesError, ImportError, KeyError, ValueError, TypeError, OSError, Warning) as exc:
        print(f"gaia-distances {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gaia-distances {args.command}: interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(to_json(summary))
    elif not args.quiet:
        for k, v in summary.items():
            print(f"{k:>28}: {v}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
