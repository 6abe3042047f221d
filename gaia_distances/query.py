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
import warnings
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import QTable

from gaia_distances.columns import META_KEY, warn
from gaia_distances.errors import GaiaQueryError
from gaia_distances.io import as_table

__all__ = ["DEFAULT_SERVER", "PIPELINE_COLUMNS", "cone_adql", "query_adql", "query_cluster", "query_field"]

log = logging.getLogger(__name__)

#: The ESA Gaia archive (TAP service at ``<server>tap-server/tap``).
DEFAULT_SERVER = "https://gea.esac.esa.int/"

#: Default ``job_timeout`` (s): the archive's own limit for asynchronous jobs is two hours or less.
DEFAULT_JOB_TIMEOUT = 7200.0

#: Age (s) after which a partial result (``*.vot.part``) in the cache is removed even if its writer may live.
STALE_PART_AGE = 86400.0

#: Job phases in which a TAP job has not finished yet.
_RUNNING_PHASES = ("PENDING", "QUEUED", "EXECUTING", "HELD", "SUSPENDED", "")

#: Columns every later step needs: the zero point, distances, and the cluster fit with proper motions
#: (which reads the proper motions, their errors and the parallax-proper-motion correlations).
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


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _read_cached(path: Path, adql: str, server: str, *, offline: bool) -> QTable | None:
    """The cached result at ``path``; ``None`` if there is none or it cannot be read (then it is removed)."""
    if not path.exists():
        return None
    try:
        table = _finish(path, adql, server, jobid=None, cached=True)
    except Exception as exc:  # truncated, emptied or garbled by something outside this package
        if offline:
            raise GaiaQueryError(
                f"the cached query result {path} cannot be read ({_one_line(exc)}); "
                "run without offline to fetch it again, or delete the file"
            ) from exc
        warn(f"discarding the unreadable cached query result {path} ({_one_line(exc)}); querying {server} again")
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    log.info("query result read from the cache: %s", path)
    return table


@contextlib.contextmanager
def _socket_timeout(seconds: float | None) -> Iterator[None]:
    """astroquery's TAP connections take no timeout: set the default for this call."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _make_archive(server: str, login: tuple[str, str] | None) -> Any:
    from astroquery.gaia import GaiaClass  # imported here: importing it contacts the archive

    root = _server_root(server)
    archive = GaiaClass(gaia_tap_server=root, gaia_data_server=root, show_server_messages=False)
    if login is not None:
        archive.login(user=login[0], password=login[1])
    return archive


class _Definitive(GaiaQueryError):
    """The server answered, and the answer is final: retrying cannot help."""


def _check_votable(path: Path) -> tuple[int, str]:
    """Parse the result fully; return (rows, QUERY_STATUS). Raises on malformed files."""
    from astropy.io.votable import parse

    vot = parse(str(path), verify="ignore")
    status = "OK"
    for resource in vot.resources:
        for info in resource.infos:
            if info.name == "QUERY_STATUS":
                if info.value == "ERROR":
                    raise _Definitive(f"the server reported an error: {info.content or info.value}")
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
            with _socket_timeout(_read_timeout(deadline, timeout)):
                arch = archive if archive is not None else _make_archive(server, login)
                if progress:
                    log.info("submitting Gaia archive job to %s", server)
                job = _launch(arch, adql, tmp, maxrec)
                running = True
                jobid = getattr(job, "jobid", None)
                phase = _wait(job, progress=progress, deadline=deadline)
                if phase in _RUNNING_PHASES:  # the deadline came first
                    running = False
                    note = _abort(job, timeout)
                    raise _Definitive(
                        f"job {jobid} was still {phase or 'running'} after {time.monotonic() - start:.0f} s, "
                        f"past job_timeout={job_timeout:g} s; {note}. Try again later, split the query "
                        "(smaller cones, magnitude slices) or raise job_timeout"
                    )
                running = False
                if phase != "COMPLETED":
                    detail = ""
                    with contextlib.suppress(Exception):
                        detail = str(job.get_error())
                    error = _Definitive if phase == "ERROR" else GaiaQueryError
                    raise error(f"job {jobid} ended in phase {phase}: {detail}".strip())
                _download(job, tmp, deadline=deadline, timeout=timeout, job_timeout=job_timeout, start=start)
            rows, status = _check_votable(tmp)
            truncated = status == "OVERFLOW" or (maxrec is not None and rows >= maxrec)
            if truncated:
                msg = (
                    f"the result of job {jobid} at {server} is truncated at {rows} rows "
                    f"(QUERY_STATUS {status}, MAXREC {maxrec}); split the query (smaller cones, "
                    "magnitude slices) or log in for a larger quota"
                )
                if on_truncation == "raise":
                    raise _Definitive(msg)
                warn(msg)
            if progress:
                log.info("job %s completed: %d rows", jobid, rows)
            if cache and not truncated:
                os.replace(tmp, path)
                return _finish(path, adql, server, jobid=jobid, cached=False)
            return _finish(tmp, adql, server, jobid=jobid, cached=False, truncated=truncated)
        except _Definitive as exc:
            raise GaiaQueryError(f"{exc} [server {server}, job {jobid}]") from exc
        except Exception as exc:  # network, HTTP and parse errors from astroquery / astropy
            last = exc
        finally:  # success, failure or Ctrl-C: leave nothing partial behind, here or on the server
            if running:
                _abort(job, timeout)
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
        f"{_one_line(last) if last else 'no answer'}. Check the server URL and your network, increase "
        "timeout= or job_timeout=, or use offline=True with a cached result."
    ) from last


#: Bytes asked for per read of a result: a read returns what has arrived, up to this.
_CHUNK = 65536


def _download(
    job: Any, path: Path, *, deadline: float | None, timeout: float | None, job_timeout: float | None, start: float
) -> None:
    """Save the job's result to ``path``, within ``deadline`` (monotonic s) for the whole download.

    Each read returns what has arrived (at most :data:`_CHUNK` bytes) and the
    deadline is checked between reads, so a server that trickles the result
    cannot hold the query past ``job_timeout``; each read waits at most
    ``timeout`` or the time left. A job without a connection handler (an
    injected archive) saves its result itself.
    """
    conn = getattr(job, "connHandler", None)
    jobid = getattr(job, "jobid", None)
    if conn is None or jobid is None:
        job.outputFile = str(path)
        job.save_results()
        return
    with _socket_timeout(_read_timeout(deadline, timeout)):
        response = conn.execute_tapget(f"async/{jobid}/results/result")
        if response.status != 200:
            response.read()
            raise GaiaQueryError(
                f"the result of job {jobid} could not be fetched: HTTP {response.status} {response.reason}"
            )
        received = 0
        read = getattr(response, "read1", response.read)
        with open(path, "wb") as fh:
            while chunk := read(_CHUNK):
                fh.write(chunk)
                received += len(chunk)
                if deadline is not None and time.monotonic() > deadline:
                    response.close()
                    raise _Definitive(
                        f"the result of job {jobid} was still downloading after {time.monotonic() - start:.0f} s "
                        f"({received} bytes received), past job_timeout={job_timeout:g} s; the server sends it "
                        "slowly. Try again later, split the query (smaller cones, magnitude slices) or raise "
                        "job_timeout"
                    )


def _read_timeout(deadline: float | None, timeout: float | None) -> float | None:
    """Seconds one network read may wait: ``timeout``, or less where the deadline comes first."""
    if deadline is None:
        return timeout
    left = max(deadline - time.monotonic(), 0.001)
    return left if timeout is None else min(timeout, left)


def _cleanup(tmp: Path) -> None:
    """Remove the partial result and anything astroquery wrote beside it (``.error``, ``.gz``)."""
    for p in tmp.parent.glob(tmp.name + "*"):
        with contextlib.suppress(OSError):
            p.unlink()


def _launch(arch: Any, adql: str, tmp: Path, maxrec: int | None) -> Any:
    kw: dict[str, Any] = dict(dump_to_file=True, output_file=str(tmp), output_format="votable", background=True)
    if maxrec is None:
        return arch.launch_job_async(adql, **kw)
    from astroquery.utils.tap.core import TapPlus

    # GaiaClass.launch_job_async does not pass MAXREC on; its TapPlus base does
    launch = TapPlus.launch_job_async if isinstance(arch, TapPlus) else type(arch).launch_job_async
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # astroquery's note on compressed file names
        return launch(arch, adql, maxrec=maxrec, **kw)


def _wait(job: Any, *, progress: bool, deadline: float | None = None, poll: float = 0.25) -> str:
    """The job's final phase, or its phase when ``deadline`` (monotonic s) passes; polls from ``poll`` to 5 s apart."""
    phase, shown = "", None
    while True:
        phase = str(job.get_phase(update=True)).strip().upper()
        if progress and phase != shown:
            log.info("job %s: %s", getattr(job, "jobid", "?"), phase)
            shown = phase
        if phase not in _RUNNING_PHASES:
            return phase
        left = math.inf if deadline is None else deadline - time.monotonic()
        if left <= 0:
            return phase
        time.sleep(min(poll, left))
        poll = min(poll * 1.5, 5.0)


def _abort(job: Any, timeout: float | None) -> str:
    """Ask the server to abort ``job`` (UWS: POST ``PHASE=ABORT`` to its phase); say how that went."""
    jobid = getattr(job, "jobid", None)
    try:
        with _socket_timeout(10.0 if timeout is None else min(timeout, 10.0)):
            conn = getattr(job, "connHandler", None)
            if conn is None or jobid is None:  # astroquery's Job.abort works only before the job starts
                job.abort()
            else:
                response = conn.execute_tappost(f"async/{jobid}/phase", urlencode({"PHASE": "ABORT"}))
                response.read()
                if response.status not in (200, 303):
                    raise OSError(f"HTTP {response.status} {response.reason}")
    except Exception as exc:
        log.warning("could not abort Gaia archive job %s: %s", jobid, _one_line(exc))
        return f"asking the server to abort it failed ({_one_line(exc)})"
    log.info("asked the server to abort Gaia archive job %s", jobid)
    return "the server was asked to abort it"


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
