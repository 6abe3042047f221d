"""The command line's outputs, checked before any work starts.

Each subcommand that writes has its outputs checked as soon as its options
are parsed, before a table is read, a query sent or a fit started: a table's
extension must name a format :func:`~gaia_distances.write_table` writes, a
posterior's must be netCDF's, the folder must be one that exists or can be
created and written in, and an existing file is refused unless
``--overwrite``. The writers check again when they write (atomically), so
nothing that appeared in between is replaced.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable
from pathlib import Path

from gaia_distances.io import output_format

__all__ = ["POSTERIOR_EXTENSIONS", "check_outputs", "refuse_existing"]

#: Extensions accepted for ``cluster --save-posterior`` (arviz writes netCDF).
POSTERIOR_EXTENSIONS = (".nc", ".nc4", ".netcdf")

#: The subcommands whose ``-o`` is a table.
_TABLE_OUTPUT = ("query", "zeropoint", "estimate", "cluster")


def refuse_existing(paths: Iterable[Path], overwrite: bool, *, what: str = "") -> None:
    """Raise ``FileExistsError`` naming every path of ``paths`` that exists, unless ``overwrite``."""
    if overwrite:
        return
    existing = [str(p) for p in paths if p.exists()]
    if len(existing) == 1:
        raise FileExistsError(f"{existing[0]} already exists; pass --overwrite to replace it")
    if existing:
        raise FileExistsError(
            f"{what or 'outputs'} already exist: {', '.join(existing)}; pass --overwrite to replace them"
        )


def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_folder(folder: Path, option: str) -> None:
    """Refuse a folder that cannot be created or written in (``option`` names it in the message)."""
    there = _nearest_existing(folder)
    if not there.is_dir():
        raise NotADirectoryError(f"{option} {folder}: {there} is a file, not a folder")
    if not os.access(there, os.W_OK | os.X_OK):
        raise PermissionError(f"{option} {folder}: cannot write in {there} (permission denied)")


def check_file(path: Path, option: str, overwrite: bool) -> None:
    """Refuse a file path that is a folder, lies in a folder that cannot be written, or exists (without overwrite)."""
    if path.is_dir():
        raise IsADirectoryError(f"{option} {path} is a folder; give a file name")
    check_folder(path.parent, option)
    refuse_existing([path], overwrite)


def check_posterior_path(path: Path, overwrite: bool) -> None:
    """``--save-posterior``: a netCDF extension, and a file that can be written."""
    if path.suffix.lower() not in POSTERIOR_EXTENSIONS:
        raise ValueError(
            f"--save-posterior {path}: the posterior is written as netCDF; give a file name ending in "
            f"{', '.join(POSTERIOR_EXTENSIONS)}"
        )
    check_file(path, "--save-posterior", overwrite)


def check_outputs(args: argparse.Namespace) -> None:
    """Check every output of the parsed command line before any work; raise naming the option.

    ``report``'s figures depend on its input and are checked by
    :func:`~gaia_distances.report.write_report` before it draws anything;
    here only its folder and ``report.md``.
    """
    overwrite = bool(getattr(args, "overwrite", False))
    if args.command in _TABLE_OUTPUT:
        output = Path(args.output)
        output_format(output)
        check_file(output, "-o/--output", overwrite)
    posterior = getattr(args, "save_posterior", None)
    if posterior:
        check_posterior_path(Path(posterior), overwrite)
        if Path(posterior).absolute() == Path(args.output).absolute():
            raise ValueError(f"--save-posterior and -o name the same file, {posterior}; give two files")
    if args.command == "report":
        folder = Path(args.output_dir)
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"-o/--output-dir {folder} is a file, not a folder")
        check_folder(folder, "-o/--output-dir")
        refuse_existing([folder / "report.md"], overwrite)
    if args.command == "demo":  # the demo's own folder: its files are replaced on every run
        folder = Path(args.output_dir)
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"--output-dir {folder} is a file, not a folder")
        check_folder(folder, "--output-dir")
