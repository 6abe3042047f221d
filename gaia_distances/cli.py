"""The ``gaia-distances`` command line.

Subcommands:

- ``query --name M67 --radius 0.5 -o m67.fits``: a Gaia DR3 cone (cached);
- ``zeropoint IN -o OUT``: add Lindegren et al. (2021) zero points;
- ``estimate IN -o OUT --prior edsd|ggd|uniform``: per-star distances;
- ``cluster IN -o OUT [--method marginal|joint] [--kinematics auto|on|off] [--field flexible|edsd]``:
  fit a cluster over a field, with proper motions where the table has them;
- ``report IN -o DIR [--posterior post.nc]``: figures and report.md for a table;
- ``demo``: simulate a Gaia field and run the whole pipeline, offline.

Table formats are chosen by file extension (.fits, .vot, .ecsv, .csv, .parquet).
Units: parallaxes in mas, distances in pc. ``distance_lo``/``distance_hi`` are
the 15.866th/84.134th posterior percentiles.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from gaia_distances.io import write_table

__all__ = ["main"]

log = logging.getLogger("gaia_distances")

#: ``cluster --kinematics`` -> ``fit_cluster(kinematics=...)``.
KINEMATICS_CHOICES: dict[str, bool | str] = {"auto": "auto", "on": True, "off": False}


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
    write_table(t, args.output)
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
    if not args.quiet:  # show the job's phases and the rows received
        logging.getLogger("gaia_distances.query").setLevel(logging.INFO)
    radius = args.radius * u.deg
    if args.name:
        t = query.query_cluster(args.name, radius, pmra=args.pmra, pmdec=args.pmdec, **kw)
    elif args.ra is not None and args.dec is not None:
        t = query.query_field(
            SkyCoord(args.ra * u.deg, args.dec * u.deg), radius, pmra=args.pmra, pmdec=args.pmdec, **kw
        )
    else:
        raise ValueError("give --name, or --ra and --dec")
    write_table(t, args.output)
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
        seed=args.seed,
        progress=not args.quiet,
    )
    write_table(t, args.output)
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
    fit = gd.fit_cluster(t, seed=args.seed)
    t = fit.table
    cluster_summary = fit.summary()
    rows = {str(r["parameter"]): r for r in cluster_summary}
    path = out / "demo_distances.ecsv"
    write_table(t, str(path))
    cluster_summary.write(out / "demo_cluster_summary.ecsv", format="ascii.ecsv", overwrite=True)
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
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2))
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

    t = gd.load_table(args.input)
    source: Any = gd.ClusterFit.from_table(t, args.posterior) if args.posterior else t
    path = write_report(source, args.output_dir, truths=_parse_truths(args.truth), title=args.title)
    figures = sorted(p.name for p in Path(args.output_dir).glob("*.png"))
    return {"rows": len(t), "report": str(path), "figures": figures}


def _cmd_cluster(args: argparse.Namespace) -> dict[str, Any]:
    import gaia_distances as gd

    t, zp = _load_with_zero_point(args)
    prior = gd.ClusterPriors.physical() if args.physical_prior else gd.ClusterPriors()
    limits = tuple(args.parallax_limits) if args.parallax_limits else None
    fit = gd.fit_cluster(
        t,
        method=args.method,
        kinematics=KINEMATICS_CHOICES[args.kinematics],
        field=args.field,
        prior=prior,
        zero_point=zp,
        parallax_limits=limits,
        distance_hint=args.distance_hint,
        num_warmup=args.num_warmup,
        num_samples=args.num_samples,
        num_chains=args.num_chains,
        seed=args.seed,
        progress=not args.quiet,
    )
    write_table(fit.table, args.output)
    if args.save_posterior:
        fit.to_netcdf(args.save_posterior)
    summ = fit.summary()
    if not args.quiet and not args.json:
        summ.pprint(max_width=-1)
    diag = {k: v for k, v in fit.diagnostics.items() if not k.startswith("_")}
    return {
        "method": args.method,
        "kinematics": bool(fit.diagnostics.get("kinematics", False)),
        "field": args.field,
        "stars_fitted": int(np.sum(np.asarray(fit.table["cluster_flag"]) == 0)),
        **{f"{r['parameter']}_mean": float(r["mean"]) for r in summ},
        **{f"{r['parameter']}_sd": float(r["sd"]) for r in summ},
        "min_ess_bulk": diag["min_ess_bulk"],
        "max_r_hat": max(diag["r_hat"].values()),
        "divergences": diag["divergences"],
        "wall_time_s": round(diag["wall_time_s"], 2),
        "warnings": diag["warnings"],
        "output": args.output,
    }


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gaia-distances",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars or printed summary (warnings still show)")
    p.add_argument("--json", action="store_true", help="print a machine-readable JSON summary")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level")
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("query", help="query a Gaia DR3 cone from the archive (async TAP job, cached)")
    q.add_argument("--name", default=None, help="object name resolved with astropy (Sesame), e.g. M67")
    q.add_argument("--ra", type=float, default=None, help="cone centre RA (deg, ICRS)")
    q.add_argument("--dec", type=float, default=None, help="cone centre Dec (deg, ICRS)")
    q.add_argument("--radius", type=float, required=True, help="cone radius (deg)")
    q.add_argument("--pmra", type=float, default=None, help="centre proper motion (mas/yr): propagate to 2016.0")
    q.add_argument("--pmdec", type=float, default=None, help="centre proper motion (mas/yr)")
    q.add_argument("-o", "--output", required=True, help="output table (format from extension)")
    q.add_argument("--tap-url", default="https://gea.esac.esa.int/", help="TAP server root")
    q.add_argument("--no-cache", action="store_true", help="do not read or write the query cache")
    q.add_argument("--offline", action="store_true", help="use only the cache")
    q.add_argument("--timeout", type=float, default=600.0, help="seconds per network operation")
    q.add_argument("--retries", type=int, default=2)
    q.set_defaults(func=_cmd_query)

    z = sub.add_parser("zeropoint", help="add Lindegren et al. (2021) parallax zero points")
    z.add_argument("input", help="input table (format from extension)")
    z.add_argument("-o", "--output", required=True, help="output table")
    z.add_argument(
        "--fallback", type=float, default=None, help="zero point (mas) where the recipe cannot be applied; e.g. -0.017"
    )
    z.add_argument(
        "--approximate-missing", action="store_true", help="approximate a missing nu_eff_used_in_astrometry from bp_rp"
    )
    z.set_defaults(func=_cmd_zeropoint)

    e = sub.add_parser("estimate", help="per-star distance posteriors (pc)")
    e.add_argument("input", help="input table (format from extension)")
    e.add_argument("-o", "--output", required=True, help="output table")
    e.add_argument(
        "--prior",
        choices=["edsd", "ggd", "uniform"],
        default="edsd",
        help="edsd: r^2 exp(-r/L); ggd: Bailer-Jones 2021 per-HEALPix table; uniform: r^2 to r_max",
    )
    e.add_argument("--length-scale", type=float, default=1350.0, help="EDSD length scale L (pc)")
    e.add_argument("--r-max", type=float, default=1e5, help="uniform-density prior limit (pc)")
    e.add_argument("--prior-table", default=None, help="local Bailer-Jones 2021 prior_summary.csv")
    e.add_argument("--method", choices=["quadrature", "nuts"], default="quadrature")
    e.add_argument(
        "--zero-point",
        default=None,
        help="zero point in mas (subtracted from parallax) or a column name; default: use parallax_corrected",
    )
    e.add_argument("--apply-zeropoint", action="store_true", help="run the zeropoint step first")
    e.add_argument("--fallback", type=float, default=None, help="with --apply-zeropoint: fallback (mas)")
    e.add_argument("--p05-p95", action="store_true", help="also write 5th and 95th percentiles")
    e.add_argument("--seed", type=int, default=0, help="random seed (method nuts)")
    e.set_defaults(func=_cmd_estimate)

    c = sub.add_parser(
        "cluster",
        help="fit a cluster (Gaussian in ln r, with proper motions where present) over a field",
        description="Fit a cluster, Gaussian in ln r, over a field population: distances from the parallaxes "
        "and, with --kinematics, the cluster's mean proper motion and velocity dispersion against a mixture "
        "of field proper motions. Writes membership_prob and cluster_distance_* per row.",
    )
    c.add_argument("input", help="input table (format from extension)")
    c.add_argument("-o", "--output", required=True, help="output table with membership_prob, cluster_distance_*")
    c.add_argument(
        "--method",
        choices=["marginal", "joint"],
        default="marginal",
        help="marginal: distances integrated out (fast); joint: one latent distance per star",
    )
    c.add_argument(
        "--kinematics",
        choices=list(KINEMATICS_CHOICES),
        default="auto",
        help="fit proper motions too: auto (default) when pmra, pmdec, pmra_error and pmdec_error are in the "
        "table; on: require them; off: parallaxes only",
    )
    c.add_argument(
        "--field",
        choices=["flexible", "edsd"],
        default="flexible",
        help="field distance model: flexible (default), a smooth mixture of log-normal distance bins; edsd, "
        "the exponentially decreasing space density (reference model, one length scale L)",
    )
    c.add_argument("--save-posterior", default=None, help="write the posterior (arviz netCDF) here")
    c.add_argument("--zero-point", default=None, help="zero point in mas or a column name")
    c.add_argument("--apply-zeropoint", action="store_true", help="run the zeropoint step first")
    c.add_argument("--fallback", type=float, default=None, help="with --apply-zeropoint: fallback (mas)")
    c.add_argument(
        "--parallax-limits",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        default=None,
        help="fit only stars with LO < parallax < HI (mas)",
    )
    c.add_argument("--distance-hint", type=float, default=None, help="rough cluster distance (pc)")
    c.add_argument(
        "--physical-prior",
        "--physical-priors",
        dest="physical_prior",
        action="store_true",
        help="prior on the cluster's size in pc (robust for small clusters in big fields)",
    )
    c.add_argument("--num-warmup", type=int, default=None)
    c.add_argument("--num-samples", type=int, default=None)
    c.add_argument("--num-chains", type=int, default=None)
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=_cmd_cluster)

    r = sub.add_parser(
        "report",
        help="figures (PNG) and report.md for a table from estimate or cluster",
        description="Colour-magnitude diagram (absolute G from the posterior distance, no extinction), "
        "sky map and distance posteriors for any table with distances; with --posterior (the netCDF "
        "of `cluster --save-posterior`) also the corner plot, the parallax predictive check, the "
        "summary table and the sampler diagnostics. Needs the plot extra.",
    )
    r.add_argument("input", help="table written by estimate or cluster (format from extension)")
    r.add_argument("-o", "--output-dir", required=True, help="directory for report.md and the PNGs")
    r.add_argument("--posterior", default=None, help="netCDF posterior of the cluster fit (cluster --save-posterior)")
    r.add_argument(
        "--truth",
        action="append",
        default=None,
        metavar="NAME=VALUE",
        help="known value for the corner plot, e.g. D=850",
    )
    r.add_argument("--title", default="gaia_distances report")
    r.set_defaults(func=_cmd_report)

    d = sub.add_parser("demo", help="simulate a Gaia field and run the pipeline (no network)")
    d.add_argument("--output-dir", default="gaia_distances_demo", help="where to write results")
    d.add_argument("--n-field", type=int, default=20000, help="simulated field stars")
    d.add_argument("--n-cluster", type=int, default=1500, help="simulated cluster members")
    d.add_argument("--seed", type=int, default=42)
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if not args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    from gaia_distances.errors import GaiaDistancesError

    try:
        summary = args.func(args)
    except (GaiaDistancesError, ImportError, KeyError, FileNotFoundError, ValueError, TypeError, OSError) as exc:
        print(f"gaia-distances {args.command}: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, default=str))
    elif not args.quiet:
        for k, v in summary.items():
            print(f"{k:>28}: {v}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
