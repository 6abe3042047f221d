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
  so that a rerun with other options is refused instead of mixing them;
- ``.lock``, while a run writes there: the process and host that hold the
  folder, so that two runs never write one folder at once. A run killed
  outright leaves it behind; the next run on the same host sees that the
  process has gone, takes the folder over and removes the temporary files
  the killed run left half-written.

A cluster is done when its row has a done status and its members file
exists; a rerun skips it (unless ``refit``) and tries the others again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from gaia_distances.catalogue.rows import DONE_STATUSES
from gaia_distances.errors import GaiaDistancesError

__all__ = ["CatalogueStore", "FolderInUseError", "OptionsMismatchError", "plain"]

log = logging.getLogger(__name__)


class OptionsMismatchError(GaiaDistancesError, ValueError):
    """``out/`` holds fits made with other options than those given now."""


class FolderInUseError(GaiaDistancesError, RuntimeError):
    """Another run is writing ``out/`` now."""


#: The temporary files a write leaves only when its process is killed mid-write
#: (``.<name>.<8 hex digits>.tmp``, the table writer's with the format's extension after it).
_TEMPORARY = ".*.????????.tmp*"


def _process_alive(pid: int) -> bool:
    if pid <= 0:  # a lock without a process id: nothing holds it
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


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

    @contextmanager
    def claimed(self) -> Iterator[None]:
        """Hold ``out/.lock`` while a run writes ``out/``; raise :class:`FolderInUseError` if a live run holds it.

        A lock left by a process that has gone (a run killed outright) on this
        host is taken over, and the temporary files that run left are removed.
        A lock from another host cannot be checked: the message says how to
        remove it once that run has ended.
        """
        lock = self.out / ".lock"
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    holder = json.loads(lock.read_text())
                except (OSError, ValueError):
                    holder = {}
                if holder.get("host") == me["host"] and not _process_alive(int(holder.get("pid", -1))):
                    log.info("fit_catalogue: %s was held by process %s, which has ended", self.out, holder.get("pid"))
                    lock.unlink(missing_ok=True)
                    continue
                raise FolderInUseError(
                    f"{self.out} is being written by another run (process {holder.get('pid', '?')} on "
                    f"{holder.get('host', '?')} since {holder.get('since', '?')}); wait for it, use another out "
                    f"folder, or remove {lock} if that run has ended"
                ) from None
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me))
            break
        else:  # pragma: no cover - another run took the folder between our two tries
            raise FolderInUseError(f"{self.out} was taken by another run; try again")
        try:
            self.remove_temporary_files()
            yield
        finally:
            lock.unlink(missing_ok=True)

    def remove_temporary_files(self) -> list[Path]:
        """Remove the temporary files that a run killed mid-write left in ``out/``; the paths removed."""
        removed = []
        for folder in (self.out, self.members_dir, self.rows_dir):
            for path in sorted(folder.glob(_TEMPORARY)) if folder.is_dir() else ():
                path.unlink(missing_ok=True)
                removed.append(path)
        if removed:
            log.info("fit_catalogue: removed %d temporary files a stopped run left in %s", len(removed), self.out)
        return removed

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
