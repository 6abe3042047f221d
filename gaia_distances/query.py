"""Gaia archive queries through astroquery: ADQL, async jobs, truncation checks, cache.

``astroquery.gaia`` contacts the archive when it is imported, so it is imported
only inside :func:`query_adql`, and only when a result is not already cached.
Every query runs as an asynchronous TAP job; its VOTable is parsed and checked
before it is moved, atomically, into the cache, so an interrupted or failed
query never leaves a file that a later call could read. A job still running
when ``job_timeout`` runs out is aborted on the server.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import re
import socket
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import QTable

from gaia_distances.columns import META_KEY, warn
from gaia_distances.core.terms import TERMS
from gaia_distances.errors import GaiaQueryError, one_line
from gaia_distances.io import as_table
from gaia_distances.tap_jobs import (
    RUNNING_PHASES,
    DefinitiveError,
    abort_job,
    download_result,
    launch_job,
    read_timeout,
    socket_timeout,
    wait_for_job,
)

__all__ = ["DEFAULT_SERVER", "PIPELINE_COLUMNS", "cone_adql", "query_adql", "query_cluster", "query_field"]

log = logging.getLogger(__name__)

#: The ESA Gaia archive (TAP service at ``<server>tap-server/tap``).
DEFAULT_SERVER = "https://gea.esac.esa.int/"

#: Default ``job_timeout`` (s): the archive's own limit for asynchronous jobs is two hours or less.
DEFAULT_JOB_TIMEOUT = 7200.0

#: Age (s) after which a partial result (``*.vot.part``) in the cache is removed even if its writer may live.
STALE_PART_AGE = 86400.0

#: Columns every later step needs: the zero point, distances, the cluster fit with proper motions
#: (which reads the proper motions, their errors and the parallax-proper-motion correlations) and the
#: columns of each of the cluster model's terms (:data:`~gaia_distances.core.terms.TERMS`, by their DR3 names).
PIPELINE_COLUMNS = (
    "source_id",
    "ra",
    "dec",
    "parallax",
    "parallax_error",
    "pmra",
    "pmdec",
    "pmra_error",
    "pmdec_error",
    "parallax_pmra_corr",
    "parallax_pmdec_corr",
    "pmra_pmdec_corr",
    "ruwe",
    "phot_g_mean_mag",
    "bp_rp",
    "nu_eff_used_in_astrometry",
    "pseudocolour",
    "ecl_lat",
    "astrometric_params_solved",
    *(column.name for term in TERMS.values() for column in term.columns),
)


def cone_adql(
    centre: SkyCoord,
    radius: u.Quantity,
    *,
    columns: Sequence[str] = PIPELINE_COLUMNS,
    extra_columns: Sequence[str] = (),
    where: str | None = None,
    table: str = "gaiadr3.gaia_source",
    pmra: float | None = None,
    pmdec: float | None = None,
    centre_epoch: float = 2000.0,
) -> str:
    """ADQL for every source of ``table`` within ``radius`` of ``centre``.

    With the centre's proper motion (``pmra``, ``pmdec`` in mas/yr) the centre
    is propagated from ``centre_epoch`` (Julian years) to the Gaia DR3 epoch
    2016.0 with ``EPOCH_PROP_POS``, as the reference M67 query does.

    Examples
    --------
    >>> from astropy.coordinates import SkyCoord
    >>> import astropy.units as u
    >>> q = cone_adql(SkyCoord(132.846, 11.814, unit="deg"), 0.5 * u.deg, columns=["source_id"])
    >>> "CIRCLE('ICRS', 132.846, 11.814, 0.5)" in q
    True
    """
    c = centre.icrs
    ra, dec = f"{c.ra.deg:.10g}", f"{c.dec.deg:.10g}"
    r = f"{radius.to_value(u.deg):.10g}"
    if pmra is not None and pmdec is not None:
        prop = f"EPOCH_PROP_POS({ra}, {dec}, 0, {pmra:.6g}, {pmdec:.6g}, 0, {centre_epoch:.6g}, 2016.0)"
        circle = f"CIRCLE('ICRS', COORD1({prop}), COORD2({prop}), {r})"
    else:
        circle = f"CIRCLE('ICRS', {ra}, {dec}, {r})"
    cols = ", ".join(dict.fromkeys([*columns, *extra_columns]))
    adql = f"SELECT {cols} FROM {table} WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), {circle})"
    if where:
        adql += f" AND ({where})"
    return adql


def _server_root(server: str) -> str:
    """``https://host/`` from a server root or a full ``.../tap-server/tap`` URL."""
    root = server.split("tap-server")[0]
    return root if root.endswith("/") else root + "/"


def default_cache_dir() -> Path:
    from astropy.config.paths import get_cache_dir

    return Path(get_cache_dir()) / "gaia_distances" / "queries"


def _cache_path(adql: str, server: str, cache_dir: Path) -> Path:
    key = hashlib.sha256(f"{_server_root(server)}\n{' '.join(adql.split())}".encode()).hexdigest()[:32]
    return cache_dir / f"{key}.vot"


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "host"


def _partial_file(path: Path) -> Path:
    """A new, empty partial result beside ``path``, named after its writer: ``<key>~<host>~<pid>~<random>.vot.part``."""
    fd, name = tempfile.mkstemp(prefix=f"{path.stem}~{_host()}~{os.getpid()}~", suffix=".vot.part", dir=path.parent)
    os.close(fd)
    return Path(name)


def _is_stale(part: Path, now: float) -> bool:
    """Whether ``part`` is older than :data:`STALE_PART_AGE`, or its writer (named in it) has exited on this host."""
    try:
        age = now - part.stat().st_mtime
    except OSError:
        return False
    if age > STALE_PART_AGE:
        return True
    fields = part.name.split("~")
    if len(fields) < 4 or fields[1] != _host() or os.name != "posix":
        return False
    try:
        os.kill(int(fields[2]), 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except (ValueError, OSError):  # not a process id; or alive, owned by another user
        pass
    return False


def _remove_stale_parts(folder: Path) -> None:
    """Remove the partial results (``*.vot.part*``) that a killed or crashed query left in ``folder``."""
    now = time.time()
    for part in folder.glob("*.vot.part*"):
        if _is_stale(part, now):
            with contextlib.suppress(OSError):
                part.unlink()
                log.info("removed a stale partial query result: %s", part)


def _read_cached(path: Path, adql: str, server: str, *, offline: bool) -> QTable | None:
    """The cached result at ``path``; ``None`` if there is none or it cannot be read (then it is removed)."""
    if not path.exists():
        return None
    try:
        table = _finish(path, adql, server, jobid=None, cached=True)
    except Exception as exc:  # truncated, emptied or garbled by something outside this package
        if offline:
            raise GaiaQueryError(
                f"the cached query result {path} cannot be read ({one_line(exc, with_type=True)}); "
                "run without offline to fetch it again, or delete the file"
            ) from exc
        reason = one_line(exc, with_type=True)
        warn(f"discarding the unreadable cached query result {path} ({reason}); querying {server} again")
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    log.info("query result read from the cache: %s", path)
    return table


def _make_archive(server: str, login: tuple[str, str] | None) -> Any:
    from astroquery.gaia import GaiaClass  # imported here: importing it contacts the archive

    root = _server_root(server)
    archive = GaiaClass(gaia_tap_server=root, gaia_data_server=root, show_server_messages=False)
    if login is not None:
        archive.login(user=login[0], password=login[1])
    return archive


def _check_votable(path: Path) -> tuple[int, str]:
    """Parse the result fully; return (rows, QUERY_STATUS). Raises on malformed files."""
    from astropy.io.votable import parse

    vot = parse(str(path), verify="ignore")
    status = "OK"
    for resource in vot.resources:
        for info in resource.infos:
            if info.name == "QUERY_STATUS":
                if info.value == "ERROR":
                    raise DefinitiveError(f"the server reported an error: {info.content or info.value}")
                if info.value == "OVERFLOW":
                    status = "OVERFLOW"
    tables = list(vot.iter_tables())
    if not tables:
        raise GaiaQueryError("the result VOTable holds no table")
    return len(tables[0].array), status


def query_adql(
    adql: str,
    *,
    server: str = DEFAULT_SERVER,
    archive: Any = None,
    cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    offline: bool = False,
    timeout: float | None = 600.0,
    job_timeout: float | None = DEFAULT_JOB_TIMEOUT,
    retries: int = 2,
    backoff: float = 2.0,
    maxrec: int | None = None,
    on_truncation: str = "raise",
    login: tuple[str, str] | None = None,
    progress: bool = True,
) -> QTable:
    """Run ``adql`` as an asynchronous job on a Gaia TAP server; return a normalised table.

    Parameters
    ----------
    adql
        The query. No row limit is added: astroquery's ``ROW_LIMIT`` applies to
        its convenience methods, not to this one.
    server
        TAP server root (``<server>tap-server/tap``), e.g. a mirror or a local
        test server.
    archive
        An ``astroquery.gaia.GaiaClass``-like object to use instead of one built
        for ``server`` (dependency injection).
    cache, cache_dir, offline
        Results are cached on disk, keyed by the server and the ADQL text
        (default folder: astropy's cache dir). ``offline=True`` only reads the
        cache and raises if the result is not there. A cached result that
        cannot be read is removed with a warning and fetched again (offline: a
        :class:`~gaia_distances.GaiaQueryError` naming the file). Partial
        results (``*.vot.part``) left in the folder by a killed query are
        removed: at once when their process has exited on this host, else
        after :data:`STALE_PART_AGE` seconds.
    timeout
        Seconds any one network operation (connection, read) may take.
    job_timeout
        Seconds the whole query may take, from the first submission to the
        end of the result's download, retries included (default
        :data:`DEFAULT_JOB_TIMEOUT`, two hours; ``None``: no limit). A job
        still queued or executing then is aborted on the server (UWS
        ``PHASE=ABORT``), a download still under way is stopped, and a
        :class:`~gaia_distances.GaiaQueryError` names the job.
    retries, backoff
        Failed attempts are retried ``retries`` times, waiting ``backoff *
        2**k`` s. A job abandoned by a failed or interrupted attempt is
        aborted on the server.
    maxrec
        TAP ``MAXREC``. A result that reached it, or that the server flags
        ``OVERFLOW``, is truncated.
    on_truncation
        ``"raise"`` (default) a :class:`~gaia_distances.GaiaQueryError`, or
        ``"warn"`` and return the partial table (flagged in its metadata).
    login
        ``(user, password)`` for the archive's larger quotas.
    progress
        Log the job's phases and the rows received at INFO level.

    Returns
    -------
    QTable
        Lower-case column names, units; provenance under
        ``meta["gaia_distances"]["query"]``.
    """
    if on_truncation not in ("raise", "warn"):
        raise ValueError(f"on_truncation must be 'raise' or 'warn'; got {on_truncation!r}")
    for name, seconds in (("timeout", timeout), ("job_timeout", job_timeout)):
        if seconds is not None and not (seconds > 0 and math.isfinite(seconds)):
            raise ValueError(f"{name} must be a positive number of seconds or None; got {seconds!r}")
    if retries < 0:
        raise ValueError(f"retries must be 0 or more; got {retries!r}")
    start = time.monotonic()
    deadline = None if job_timeout is None else start + job_timeout
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = _cache_path(adql, server, folder)
    if folder.is_dir():
        _remove_stale_parts(folder)
    cached = _read_cached(path, adql, server, offline=offline) if cache else None
    if cached is not None:
        return cached
    if offline:
        raise GaiaQueryError(
            f"offline mode and no cached result for this query at {server} (cache {folder}); "
            "run once with network access or pass offline=False"
        )
    folder.mkdir(parents=True, exist_ok=True)
    last: Exception | None = None
    jobid = None
    for attempt in range(retries + 1):
        tmp = _partial_file(path)
        job = None
        running = False  # a job of ours is queued or executing on the server
        try:
            with socket_timeout(read_timeout(deadline, timeout)):
                arch = archive if archive is not None else _make_archive(server, login)
                if progress:
                    log.info("submitting Gaia archive job to %s", server)
                job = launch_job(arch, adql, tmp, maxrec)
                running = True
                jobid = getattr(job, "jobid", None)
                phase = wait_for_job(job, progress=progress, deadline=deadline)
                if phase in RUNNING_PHASES:  # the deadline came first
                    running = False
                    note = abort_job(job, timeout)
                    raise DefinitiveError(
                        f"job {jobid} was still {phase or 'running'} after {time.monotonic() - start:.0f} s, "
                        f"past job_timeout={job_timeout:g} s; {note}. Try again later, split the query "
                        "(smaller cones, magnitude slices) or raise job_timeout"
                    )
                running = False
                if phase != "COMPLETED":
                    detail = ""
                    with contextlib.suppress(Exception):
                        detail = str(job.get_error())
                    error = DefinitiveError if phase == "ERROR" else GaiaQueryError
                    raise error(f"job {jobid} ended in phase {phase}: {detail}".strip())
                download_result(job, tmp, deadline=deadline, timeout=timeout, job_timeout=job_timeout, start=start)
            rows, status = _check_votable(tmp)
            truncated = status == "OVERFLOW" or (maxrec is not None and rows >= maxrec)
            if truncated:
                msg = (
                    f"the result of job {jobid} at {server} is truncated at {rows} rows "
                    f"(QUERY_STATUS {status}, MAXREC {maxrec}); split the query (smaller cones, "
                    "magnitude slices) or log in for a larger quota"
                )
                if on_truncation == "raise":
                    raise DefinitiveError(msg)
                warn(msg)
            if progress:
                log.info("job %s completed: %d rows", jobid, rows)
            if cache and not truncated:
                os.replace(tmp, path)
                return _finish(path, adql, server, jobid=jobid, cached=False)
            return _finish(tmp, adql, server, jobid=jobid, cached=False, truncated=truncated)
        except DefinitiveError as exc:
            raise GaiaQueryError(f"{exc} [server {server}, job {jobid}]") from exc
        except Exception as exc:  # network, HTTP and parse errors from astroquery / astropy
            last = exc
        finally:  # success, failure or Ctrl-C: leave nothing partial behind, here or on the server
            if running:
                abort_job(job, timeout)
            _cleanup(tmp)
        if attempt < retries:
            wait = backoff * 2**attempt
            if deadline is not None and time.monotonic() + wait >= deadline:
                break
            log.warning("Gaia query attempt %d failed (%s); retrying in %.1f s", attempt + 1, last, wait)
            time.sleep(wait)
    out_of_time = deadline is not None and time.monotonic() + backoff >= deadline
    limit = f" within job_timeout={job_timeout:g} s" if out_of_time and job_timeout is not None else ""
    raise GaiaQueryError(
        f"Gaia archive query failed after {attempt + 1} attempt(s){limit} at {server} (job {jobid}): "
        f"{one_line(last, with_type=True) if last else 'no answer'}. Check the server URL and your network, increase "
        "timeout= or job_timeout=, or use offline=True with a cached result."
    ) from last


def _cleanup(tmp: Path) -> None:
    """Remove the partial result and anything astroquery wrote beside it (``.error``, ``.gz``)."""
    for p in tmp.parent.glob(tmp.name + "*"):
        with contextlib.suppress(OSError):
            p.unlink()


def _finish(path: Path, adql: str, server: str, *, jobid: Any, cached: bool, truncated: bool = False) -> QTable:
    from astropy.table import Table

    table = as_table(Table.read(str(path), format="votable", use_names_over_ids=True))
    meta = dict(table.meta.get(META_KEY, {}))
    meta["query"] = {
        "adql": adql,
        "server": server,
        "jobid": jobid,
        "from_cache": cached,
        "truncated": truncated,
        "rows": len(table),
        "retrieved": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    table.meta[META_KEY] = meta
    return table


def query_field(
    centre: SkyCoord,
    radius: u.Quantity,
    *,
    extra_columns: Sequence[str] = (),
    where: str | None = None,
    pmra: float | None = None,
    pmdec: float | None = None,
    centre_epoch: float = 2000.0,
    **kwargs: Any,
) -> QTable:
    """Every Gaia DR3 source within ``radius`` of ``centre``, with the pipeline's columns.

    ``kwargs`` go to :func:`query_adql` (server, cache, timeout, job_timeout, ...).
    """
    adql = cone_adql(
        centre, radius, extra_columns=extra_columns, where=where, pmra=pmra, pmdec=pmdec, centre_epoch=centre_epoch
    )
    return query_adql(adql, **kwargs)


def query_cluster(name: str, radius: u.Quantity, *, resolver: Any = None, **kwargs: Any) -> QTable:
    """:func:`query_field` around a named object, resolved with astropy (Sesame).

    ``resolver`` (a callable name -> SkyCoord) replaces the name service, e.g.
    offline. Pass ``pmra``/``pmdec`` to propagate the centre to epoch 2016.0,
    and :func:`query_adql`'s options (``timeout``, ``job_timeout``, ...) as keywords.
    """
    try:
        centre = resolver(name) if resolver is not None else SkyCoord.from_name(name)
    except Exception as exc:
        raise GaiaQueryError(f"could not resolve the name {name!r} ({exc}); pass a SkyCoord to query_field") from exc
    return query_field(centre, radius, **kwargs)
