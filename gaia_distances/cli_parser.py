"""The ``gaia-distances`` command line's grammar: subcommands, options and validated option types.

Numeric options are checked as they are parsed: a count that must be
positive, a length or a time that must be positive and finite; a bad value is
argparse's usage error (exit status 2) naming the option. ``--quiet``,
``--json`` and ``-v`` are accepted before and after the subcommand.
:mod:`gaia_distances.cli` runs the subcommands.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from gaia_distances.cluster.options import CLUSTER_METHODS
from gaia_distances.core.inflation import INFLATION_RECIPES
from gaia_distances.core.population import FIELDS
from gaia_distances.core.systematics import OFFSET_PRIORS, SYSTEMATICS_KERNELS
from gaia_distances.core.terms import TERMS
from gaia_distances.estimate import ESTIMATE_METHODS
from gaia_distances.priors import PRIOR_NAMES

__all__ = [
    "KINEMATICS_CHOICES",
    "build_parser",
    "fit_flag_options",
    "term_options",
    "finite_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
]

#: ``cluster --kinematics`` -> ``fit_cluster(kinematics=...)`` (and the same for every model term's flag).
KINEMATICS_CHOICES: dict[str, bool | str] = {"auto": "auto", "on": True, "off": False}


def term_options(args: argparse.Namespace) -> dict[str, bool | str]:
    """The model terms' options of ``fit_cluster`` from their flags."""
    return {name: KINEMATICS_CHOICES[getattr(args, name)] for name in TERMS}


def _number(kind: Callable[[str], Any], test: Callable[[Any], bool], what: str) -> Callable[[str], Any]:
    """An argparse ``type``: ``kind(text)``, finite, passing ``test``; else argparse's error (exit 2)."""

    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}; got {text!r}") from None
        if not (math.isfinite(value) and test(value)):
            raise argparse.ArgumentTypeError(f"must be {what}; got {text!r}")
        return value

    convert.__name__ = what  # argparse names the type in some messages
    return convert


positive_int = _number(int, lambda v: v > 0, "a positive integer")
non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: v > 0, "a positive number")
finite_float = _number(float, lambda v: True, "a finite number")


def inflation_recipe(text: str) -> str | float | None:
    """An argparse ``type`` for ``--parallax-error-inflation``: a recipe name, ``none`` or a factor > 0."""
    name = text.strip().lower()
    if name == "none":
        return None
    if name in INFLATION_RECIPES:
        return name
    try:
        return positive_float(text)
    except argparse.ArgumentTypeError:
        valid = ", ".join(INFLATION_RECIPES)
        raise argparse.ArgumentTypeError(f"must be one of {valid}, none or a factor > 0; got {text!r}") from None


def _global_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """Add ``--quiet``, ``--json``, ``-v`` and the compilation cache's ``--jax-cache`` / ``--no-jax-cache``, with
    ``default`` (``None`` for the cache where ``default`` is ``False``).

    The main parser has them with ``default=False``; every subcommand with
    ``default=argparse.SUPPRESS``, so that a subcommand sets only those given
    after it and leaves those given before it alone.
    """
    parser.add_argument(
        "--quiet", action="store_true", default=default, help="no progress bars or printed summary (warnings show)"
    )
    parser.add_argument("--json", action="store_true", default=default, help="print the summary as strict JSON")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default,
        help="log progress at INFO level, with the messages and warnings of numpyro, jax and astroquery",
    )
    cache_default = None if default is False else default
    parser.add_argument(
        "--jax-cache",
        metavar="DIR",
        default=cache_default,
        help="keep compiled programs in DIR (default: the user cache folder, or $GAIA_DISTANCES_JAX_CACHE)",
    )
    parser.add_argument(
        "--no-jax-cache",
        dest="jax_cache",
        action="store_const",
        const="",
        default=cache_default,
        help="compile every program anew (no persistent compilation cache)",
    )


def _overwrite_option(parser: argparse.ArgumentParser, what: str = "the output files") -> None:
    parser.add_argument("--overwrite", action="store_true", help=f"replace {what} if they exist (default: refuse)")


def _fit_size_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-warmup", type=positive_int, default=None, help="NUTS warm-up steps per chain")
    parser.add_argument("--num-samples", type=positive_int, default=None, help="NUTS draws per chain")
    parser.add_argument("--num-chains", type=positive_int, default=None, help="NUTS chains")


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kinematics",
        choices=list(KINEMATICS_CHOICES),
        default="auto",
        help="fit proper motions too: auto (default) when pmra, pmdec, pmra_error and pmdec_error are in the "
        "table and usable on at least 20 rows; on: require them; off: parallaxes only",
    )
    for name, term in TERMS.items():  # every model term's option, named as fit_cluster names it
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            choices=list(KINEMATICS_CHOICES),
            default="auto",
            help=f"{term.help} auto (default): when the table has {', '.join(c.name for c in term.columns)} "
            f"usable on at least {term.min_stars} fitted rows; on: require them; off: leave the term out",
        )
    parser.add_argument(
        "--field",
        choices=sorted(FIELDS, key=lambda f: f != "flexible"),  # the default first
        default="flexible",
        help="field distance model: flexible (default), a smooth mixture of log-normal distance bins; edsd, "
        "the exponentially decreasing space density (reference model, one length scale L)",
    )
    parser.add_argument(
        "--systematics",
        choices=[*SYSTEMATICS_KERNELS, "none"],
        default="vasiliev2021",
        help="Gaia's angularly correlated parallax and proper-motion systematics shared by the members "
        "(default vasiliev2021); none: the reference model, statistical errors only",
    )
    parser.add_argument(
        "--parallax-offset-prior",
        choices=["none", *OFFSET_PRIORS],
        default="none",
        help="prior on the members' mean parallax offset, with or without --systematics (with none it is the "
        "offset's whole uncertainty); vasiliev2021: +0.010 +- 0.003 mas for G > 13",
    )


def _fit_flags(parser: argparse.ArgumentParser, where: str) -> None:
    """The flags ``cluster`` and ``catalogue`` share for a fit's stars and priors (:func:`fit_flag_options`)."""
    parser.add_argument("--zero-point", default=None, help="zero point in mas or a column name")
    parser.add_argument("--apply-zeropoint", action="store_true", help=f"run the zeropoint step {where}first")
    parser.add_argument("--fallback", type=finite_float, default=None, help="with --apply-zeropoint: fallback (mas)")
    parser.add_argument(
        "--parallax-limits",
        type=finite_float,
        nargs=2,
        metavar=("LO", "HI"),
        default=None,
        help="fit only stars with LO < parallax < HI (mas); the likelihood models the cut",
    )
    parser.add_argument(
        "--no-truncate",
        action="store_true",
        help="cut by --parallax-limits without modelling the cut (the reference analysis; biased)",
    )
    parser.add_argument(
        "--perspective",
        action="store_true",
        help="wide or near fields: project the cluster's one space velocity along each member's line of sight "
        "(fits its radial velocity v_r too; needs proper motions, ra and dec)",
    )
    parser.add_argument(
        "--physical-prior",
        "--physical-priors",
        dest="physical_prior",
        action="store_true",
        help="prior on the cluster's size in pc (robust for small clusters in big fields)",
    )


def fit_flag_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options of ``fit_cluster`` that ``cluster`` and ``catalogue`` take from the same flags."""
    from gaia_distances.core.cluster_priors import ClusterPriors

    return {
        "kinematics": KINEMATICS_CHOICES[args.kinematics],
        **term_options(args),
        "field": args.field,
        "perspective": args.perspective,
        "prior": ClusterPriors.physical() if args.physical_prior else ClusterPriors(),
        "parallax_limits": tuple(args.parallax_limits) if args.parallax_limits else None,
        "truncate": not args.no_truncate,
        "systematics": None if args.systematics == "none" else args.systematics,
        "parallax_offset_prior": None if args.parallax_offset_prior == "none" else args.parallax_offset_prior,
        "num_warmup": args.num_warmup,
        "num_samples": args.num_samples,
        "num_chains": args.num_chains,
    }


def _catalogue_parser(add: Callable[..., argparse.ArgumentParser]) -> None:
    """``catalogue``: refit a list of clusters, each on its own field (:mod:`gaia_distances.cli_catalogue`)."""
    k = add(
        "catalogue",
        help="refit a list of clusters, each on its own field (archive, a folder of files or HATS); resumable",
        description="Refit every cluster of a list (name, ra, dec, radius; optional pmra, pmdec, parallax hints) "
        "on its own field: one row per cluster in OUT/catalogue.ecsv (D, pmra, pmdec, sigma_v, Q with 16/84 %, "
        "n_members, status, reason) and OUT/members/<name>.ecsv. A rerun fits only the clusters not done, "
        "with the options OUT was made with (other options are refused unless --refit).",
    )
    k.add_argument("input", help="cluster list (format from extension), or a published list's name (hunt2023)")
    k.add_argument("-o", "--output-dir", required=True, help="output folder (created; a rerun resumes it)")
    k.add_argument(
        "--source",
        required=True,
        help="archive (one cached cone query per cluster), a folder of field files (one per cluster, matched by "
        "name), or a HATS catalogue (a folder lsdb opens, or hats:PATH)",
    )
    k.add_argument("--workers", type=positive_int, default=None, help="worker processes on Dask (default: none)")
    k.add_argument("--scheduler", default=None, help="address of a running Dask scheduler to use instead")
    k.add_argument("--refit", action="store_true", help="refit every cluster, with these options")
    k.add_argument("--radius-scale", type=positive_float, default=1.0, help="field radius = list radius x this")
    k.add_argument("--radius-unit", default="deg", help="unit of a radius column without one (deg, arcmin)")
    k.add_argument("--magnitude-limit", type=finite_float, default=None, help="keep phot_g_mean_mag below this")
    k.add_argument(
        "--centre-epoch", type=finite_float, default=2000.0, help="epoch of the list's centres (default 2000.0)"
    )
    k.add_argument("--tap-url", default="https://gea.esac.esa.int/", help="archive: TAP server root")
    k.add_argument("--cache-dir", default=None, help="archive: query cache folder")
    k.add_argument("--offline", action="store_true", help="archive: use only the cache")
    k.add_argument("--timeout", type=positive_float, default=600.0, help="archive: seconds per network operation")
    k.add_argument("--retries", type=non_negative_int, default=2, help="archive: retries of a failed query")
    k.add_argument("--method", choices=list(CLUSTER_METHODS), default="marginal")
    _model_options(k)
    _fit_flags(k, "on each field ")
    _fit_size_options(k)
    k.add_argument("--seed", type=int, default=0, help="global seed; each cluster's comes from it and its name")


def build_parser(description: str) -> argparse.ArgumentParser:
    """The parser of ``gaia-distances`` and its subcommands (``args.command`` names the one given)."""
    p = argparse.ArgumentParser(
        prog="gaia-distances",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _global_options(p, False)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)

    q = add("query", help="query a Gaia DR3 cone from the archive (async TAP job, cached)")
    q.add_argument("--name", default=None, help="object name resolved with astropy (Sesame), e.g. M67")
    q.add_argument("--ra", type=finite_float, default=None, help="cone centre RA (deg, ICRS)")
    q.add_argument("--dec", type=finite_float, default=None, help="cone centre Dec (deg, ICRS)")
    q.add_argument("--radius", type=positive_float, required=True, help="cone radius (deg)")
    q.add_argument("--pmra", type=finite_float, default=None, help="centre proper motion (mas/yr): propagate to 2016.0")
    q.add_argument("--pmdec", type=finite_float, default=None, help="centre proper motion (mas/yr)")
    q.add_argument("-o", "--output", required=True, help="output table (format from extension)")
    _overwrite_option(q, "the output table")
    q.add_argument("--tap-url", default="https://gea.esac.esa.int/", help="TAP server root")
    q.add_argument("--no-cache", action="store_true", help="do not read or write the query cache")
    q.add_argument("--offline", action="store_true", help="use only the cache")
    q.add_argument("--timeout", type=positive_float, default=600.0, help="seconds per network operation")
    q.add_argument(
        "--job-timeout",
        type=positive_float,
        default=None,
        help="seconds the whole query may take, retries included; a job still queued or executing then is "
        "aborted on the server (default: query_adql's, two hours)",
    )
    q.add_argument("--retries", type=non_negative_int, default=2, help="retries of a failed attempt (default: 2)")

    z = add("zeropoint", help="add Lindegren et al. (2021) parallax zero points")
    z.add_argument("input", help="input table (format from extension)")
    z.add_argument("-o", "--output", required=True, help="output table")
    _overwrite_option(z, "the output table")
    z.add_argument(
        "--fallback",
        type=finite_float,
        default=None,
        help="zero point (mas) where the recipe cannot be applied; e.g. -0.017",
    )
    z.add_argument(
        "--approximate-missing", action="store_true", help="approximate a missing nu_eff_used_in_astrometry from bp_rp"
    )

    e = add("estimate", help="per-star distance posteriors (pc)")
    e.add_argument("input", help="input table (format from extension)")
    e.add_argument("-o", "--output", required=True, help="output table")
    _overwrite_option(e, "the output table and the input's own distance_* columns")
    e.add_argument(
        "--prior",
        choices=list(PRIOR_NAMES),
        default="edsd",
        help="edsd: r^2 exp(-r/L); ggd: Bailer-Jones 2021 per-HEALPix table; uniform: r^2 to r_max",
    )
    e.add_argument("--length-scale", type=positive_float, default=1350.0, help="EDSD length scale L (pc)")
    e.add_argument("--r-max", type=positive_float, default=1e5, help="uniform-density prior limit (pc)")
    e.add_argument("--prior-table", default=None, help="local Bailer-Jones 2021 prior_summary.csv")
    e.add_argument("--method", choices=list(ESTIMATE_METHODS), default="quadrature")
    e.add_argument(
        "--zero-point",
        default=None,
        help="zero point in mas (subtracted from parallax) or a column name; default: use parallax_corrected",
    )
    e.add_argument("--apply-zeropoint", action="store_true", help="run the zeropoint step first")
    e.add_argument("--fallback", type=finite_float, default=None, help="with --apply-zeropoint: fallback (mas)")
    e.add_argument(
        "--parallax-error-inflation",
        type=inflation_recipe,
        default=None,
        metavar="RECIPE",
        help="inflate the formal parallax errors: el-badry2021, maiz-apellaniz2022 (both need phot_g_mean_mag), "
        "a factor, or none (default)",
    )
    e.add_argument("--p05-p95", action="store_true", help="also write 5th and 95th percentiles")
    e.add_argument("--seed", type=int, default=0, help="random seed (method nuts)")

    c = add(
        "cluster",
        help="fit a cluster (Gaussian in ln r, with proper motions where present) over a field",
        description="Fit a cluster, Gaussian in ln r, over a field population: distances from the parallaxes "
        "and, with --kinematics, the cluster's mean proper motion and velocity dispersion against a mixture "
        "of field proper motions. Writes membership_prob and cluster_distance_* per row.",
    )
    c.add_argument("input", help="input table (format from extension)")
    c.add_argument("-o", "--output", required=True, help="output table with membership_prob, cluster_distance_*")
    _overwrite_option(c, "the output table, the --save-posterior file and the input's own cluster columns")
    c.add_argument(
        "--method",
        choices=list(CLUSTER_METHODS),
        default="marginal",
        help="marginal: distances integrated out (fast); joint: one latent distance per star",
    )
    _model_options(c)
    c.add_argument("--save-posterior", default=None, help="write the posterior (arviz netCDF) here")
    _fit_flags(c, "")
    c.add_argument("--distance-hint", type=positive_float, default=None, help="rough cluster distance (pc)")
    _fit_size_options(c)
    c.add_argument("--seed", type=int, default=0)

    _catalogue_parser(add)

    r = add(
        "report",
        help="figures (PNG) and report.md for a table from estimate or cluster",
        description="Colour-magnitude diagram (absolute G from the posterior distance, no extinction), "
        "sky map and distance posteriors for any table with distances; with --posterior (the netCDF "
        "of `cluster --save-posterior`) also the corner plot, the parallax predictive check, the "
        "summary table and the sampler diagnostics. Needs the plot extra.",
    )
    r.add_argument("input", help="table written by estimate or cluster (format from extension)")
    r.add_argument("-o", "--output-dir", required=True, help="directory for report.md and the PNGs")
    _overwrite_option(r, "report.md and the figures of an earlier report in --output-dir")
    r.add_argument("--posterior", default=None, help="netCDF posterior of the cluster fit (cluster --save-posterior)")
    r.add_argument(
        "--truth",
        action="append",
        default=None,
        metavar="NAME=VALUE",
        help="known value for the corner plot, e.g. D=850",
    )
    r.add_argument("--title", default="gaia_distances report")

    d = add(
        "demo",
        help="simulate a Gaia field and run the pipeline (no network)",
        description="Simulate a Gaia field with a cluster, then run zeropoint, estimate, cluster and report on "
        "it. The files in --output-dir (demo_*.ecsv, demo_summary.json, report/) are the demo's own and are "
        "replaced on every run. --n-field, --n-cluster and the fit size options make a quick small demo.",
    )
    d.add_argument("--output-dir", default="gaia_distances_demo", help="where to write results (replaced)")
    d.add_argument("--n-field", type=non_negative_int, default=20000, help="simulated field stars")
    d.add_argument("--n-cluster", type=non_negative_int, default=1500, help="simulated cluster members")
    _model_options(d)
    _fit_size_options(d)
    d.add_argument("--seed", type=int, default=42)
    return p
