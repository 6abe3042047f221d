"""``gaia-distances catalogue``: refit a list of clusters (:func:`~gaia_distances.fit_catalogue`) from the shell.

``gaia-distances catalogue LIST -o OUT --source archive|FOLDER|HATS [--workers N]``: ``LIST`` is
a file :func:`~gaia_distances.read_cluster_list` reads, or the name of a
published list (:data:`~gaia_distances.catalogue.cluster_list.CLUSTER_CATALOGUES`,
e.g. ``hunt2023``) when no such file exists. ``--source`` is ``archive``, a
folder of field files, or a HATS catalogue (a folder lsdb opens, or
``hats:PATH``). The grammar is in :mod:`gaia_distances.cli_parser`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gaia_distances.catalogue.store import CatalogueStore
from gaia_distances.cli_outputs import check_folder
from gaia_distances.cli_parser import fit_flag_options

__all__ = ["cmd_catalogue"]

#: Files that mark a folder as a HATS catalogue.
_HATS_MARKERS = ("hats.properties", "properties", "catalog_info.json")


def _source(text: str) -> Any:
    """``archive``, an lsdb catalogue (``hats:PATH``, or a folder with HATS properties) or a folder of fields."""
    path = Path(text[5:] if text.startswith("hats:") else text)
    if text.strip().lower() == "archive":
        return "archive"
    if text.startswith("hats:") or any((path / m).exists() for m in _HATS_MARKERS):
        try:
            import lsdb
        except ImportError as exc:
            raise ImportError(
                f'--source {text} is a HATS catalogue, read with lsdb: pip install "gaia-distances[scale]"'
            ) from exc
        return lsdb.open_catalog(path)
    return path


def _clusters(text: str, radius_unit: str) -> Any:
    from gaia_distances.catalogue import cluster_catalogue, read_cluster_list
    from gaia_distances.catalogue.cluster_list import CLUSTER_CATALOGUES

    if not Path(text).exists():
        if text.strip().lower() in CLUSTER_CATALOGUES:
            return cluster_catalogue(text)
        known = ", ".join(CLUSTER_CATALOGUES)
        raise FileNotFoundError(f"no such cluster list: {text} (neither a file nor a published list: {known})")
    return read_cluster_list(text, radius_unit=radius_unit)


def _zero_point(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return text  # a column name


def cmd_catalogue(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``catalogue``; the summary: clusters, each status's count, the output files."""
    import gaia_distances as gd

    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"-o/--output-dir {out} is a file, not a folder")
    check_folder(out, "-o/--output-dir")  # before the list is read or any field fetched
    options: dict[str, Any] = {
        "method": args.method,
        **fit_flag_options(args),
        "zero_point": _zero_point(args.zero_point),
    }
    query: dict[str, Any] = {}
    if args.source.strip().lower() == "archive":
        query = {"server": args.tap_url, "timeout": args.timeout, "retries": args.retries, "offline": args.offline}
        if args.cache_dir:
            query["cache_dir"] = args.cache_dir
    zp: bool | dict[str, Any] = False
    if args.apply_zeropoint:
        zp = {"fallback": args.fallback} if args.fallback is not None else True
    cat = gd.fit_catalogue(
        _clusters(args.input, args.radius_unit),
        source=_source(args.source),
        out=out,
        workers=args.workers,
        client=args.scheduler,
        refit=args.refit,
        radius_scale=args.radius_scale,
        magnitude_limit=args.magnitude_limit,
        centre_epoch=args.centre_epoch,
        apply_zeropoint=zp,
        query_options=query or None,
        seed=args.seed,
        progress=not args.quiet,
        **options,
    )
    if not args.quiet and not args.json:
        shown = [c for c in ("name", "status", "D", "D_lo", "D_hi", "pmra", "pmdec", "n_members") if c in cat.colnames]
        print("\n".join(cat[shown].pformat(max_width=-1, max_lines=-1)), file=args.stdout)
    summary = cat.meta["gaia_distances"]["catalogue"]["summary"]
    store = CatalogueStore(out)
    return {
        "clusters": len(cat),
        **{f"status_{k}": v for k, v in summary.items()},
        "output": str(store.catalogue_path),
        "members": str(store.members_dir),
    }
