"""The output folder of a catalogue refit: what is done, with which options, each file written whole.

``out/`` holds:

- ``members/<key>.ecsv``: each fitted cluster's field with
  ``membership_prob`` and the cluster-model distance columns, then
  ``rows/<key>.json``, its row: each written whole (a temporary file in the
  same folder, then ``os.replace``) as the cluster ends;
- ``catalogue.ecsv``: the rows so far, in the list's order, rewritten whole
  as results arrive (:func:`~gaia_distances.catalogue.run.fit_catalogue`
  spends at most about a tenth of its time on it) and at the end;
- ``catalogue_meta.json``: the options the folder's fits were made with,
  so that a rerun with other options is refused instead of mixing them.

A cluster is done when its row has a done status and its members file
exists; a rerun skips it (unless ``refit``) and tries the others again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gaia_distances.catalogue.rows import DONE_STATUSES
from gaia_distances.errors import GaiaDistancesError

__all__ = ["CatalogueStore", "OptionsMismatchError", "plain"]

log = logging.getLogger(__name__)


class OptionsMismatchError(GaiaDistancesError, ValueError):
    """``out/`` holds fits made with other options than those given now."""


def plain(value: Any) -> Any:
    """``value`` in JSON types, so that recorded options compare equal after a round trip through a file.

    Named tuples (a :class:`~gaia_distances.ClusterPriors`) become dicts,
    tuples lists, NumPy scalars Python ones, non-finite floats text; a
    callable is named by its module and qualified name; anything else is
    its ``repr``.

    Examples
    --------
    >>> plain({"limits": (0.2, 3.0), "seed": np.int64(3), "x": float("nan")})
    {'limits': [0.2, 3.0], 'seed': 3, 'x': 'nan'}
    """
    if hasattr(value, "_asdict"):
        return {"type": type(value).__name__, **plain(dict(value._asdict()))}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if callable(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', type(value).__name__)}"
    return repr(value)


class CatalogueStore:
    """``out/``: its paths, its recorded options, the rows done, and atomic writes."""

    def __init__(self, out: str | os.PathLike[str]) -> None:
        self.out = Path(out)
        self.catalogue_path = self.out / "catalogue.ecsv"
        self.meta_path = self.out / "catalogue_meta.json"
        self.members_dir = self.out / "members"
        self.rows_dir = self.out / "rows"

    def members_path(self, key: str) -> Path:
        return self.members_dir / f"{key}.ecsv"

    def check_writable(self) -> None:
        """Create ``out/`` and ``out/members/`` and write a file there, or raise naming ``out``."""
        if self.out.exists() and not self.out.is_dir():
            raise NotADirectoryError(f"out {self.out} is a file, not a folder")
        try:
            self.members_dir.mkdir(parents=True, exist_ok=True)
            self.rows_dir.mkdir(exist_ok=True)
            for folder in (self.out, self.members_dir, self.rows_dir):
                with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
                    pass
        except OSError as exc:
            raise PermissionError(f"out {self.out} cannot be written: {exc.strerror or exc}") from None

    def check_options(self, record: Mapping[str, Any], *, refit: bool) -> None:
        """Refuse options that differ from those recorded in ``out/`` (unless ``refit``, which removes the earlier
        rows and members files first); record them.

        The message names each option that differs, with both values.
        """
        record = plain(record)
        if self.meta_path.exists() and not refit:
            try:
                old = json.loads(self.meta_path.read_text())
            except ValueError as exc:
                raise OptionsMismatchError(
                    f"{self.meta_path} cannot be read ({exc}); remove it, or pass refit=True to refit every cluster"
                ) from None
            old_options = old.get("options", {})
            new_options = record.get("options", {})
            names = sorted(set(old_options) | set(new_options))
            differ = [n for n in names if old_options.get(n) != new_options.get(n)]
            if differ:
                what = "; ".join(f"{n}: {old_options.get(n)!r} there, {new_options.get(n)!r} now" for n in differ)
                raise OptionsMismatchError(
                    f"{self.out} holds fits made with other options ({what}); pass the same options to resume, "
                    "refit=True (--refit) to refit every cluster with these, or another out folder"
                )
            return
        if refit:  # the earlier fits go first: a refit stopped halfway must not pass them off as made with these
            for folder, pattern in ((self.rows_dir, "*.json"), (self.members_dir, "*")):
                for path in folder.glob(pattern) if folder.is_dir() else ():
                    path.unlink()
        self.write_text(self.meta_path, json.dumps(record, indent=2, sort_keys=True))

    def row_path(self, key: str) -> Path:
        return self.rows_dir / f"{key}.json"

    def previous_rows(self) -> dict[str, dict[str, Any]]:
        """Every cluster's row written by an earlier run (``rows/<key>.json``), by key."""
        rows = {}
        for path in sorted(self.rows_dir.glob("*.json")) if self.rows_dir.is_dir() else []:
            try:
                row = json.loads(path.read_text())
            except ValueError:
                log.warning("fit_catalogue: %s cannot be read; its cluster is fitted again", path)
                continue
            rows[str(row.get("key", path.stem))] = row
        return rows

    def is_done(self, row: Mapping[str, Any] | None) -> bool:
        """Whether a previous row stands: a done status, and its members file is there."""
        return row is not None and row["status"] in DONE_STATUSES and self.members_path(row["key"]).exists()

    def write_result(self, key: str, row: Mapping[str, Any], members: Any) -> None:
        """A cluster's members table (if fitted), then its row: each whole, the row last (it says "done")."""
        from gaia_distances.io import write_table

        if members is not None:
            write_table(members, self.members_path(key), overwrite=True)  # a temporary file, then os.replace
        self.write_text(self.row_path(key), json.dumps(dict(row)))

    def write_catalogue(self, table: Any) -> None:
        from gaia_distances.io import write_table

        write_table(table, self.catalogue_path, overwrite=True)

    @staticmethod
    def write_text(path: Path, text: str) -> None:
        """Write ``text`` to a temporary file beside ``path``, then move it over ``path``."""
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            tmp.write_text(text)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
