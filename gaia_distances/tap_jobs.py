"""Asynchronous TAP jobs on the Gaia archive: launch, wait, abort, and download the result within a deadline.

:func:`gaia_distances.query.query_adql` runs its queries through these. They
work on astroquery's job objects (``astroquery.utils.tap.model.job.Job``);
astroquery is imported only inside :func:`launch_job`, when a row limit is set.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from gaia_distances.errors import GaiaQueryError, one_line

__all__ = [
    "DOWNLOAD_CHUNK_BYTES",
    "RUNNING_PHASES",
    "DefinitiveError",
    "abort_job",
    "download_result",
    "launch_job",
    "read_timeout",
    "socket_timeout",
    "wait_for_job",
]

log = logging.getLogger("gaia_distances.query")


#: Job phases in which a TAP job has not finished yet.
RUNNING_PHASES = ("PENDING", "QUEUED", "EXECUTING", "HELD", "SUSPENDED", "")


class DefinitiveError(GaiaQueryError):
    """The server answered, and the answer is final: retrying cannot help."""


@contextlib.contextmanager
def socket_timeout(seconds: float | None) -> Iterator[None]:
    """astroquery's TAP connections take no timeout: set the default for this call."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def launch_job(arch: Any, adql: str, tmp: Path, maxrec: int | None) -> Any:
    """Submit ``adql`` as an asynchronous job of ``arch`` (a ``GaiaClass``-like archive), with TAP ``MAXREC``."""
    kw: dict[str, Any] = dict(dump_to_file=True, output_file=str(tmp), output_format="votable", background=True)
    if maxrec is None:
        return arch.launch_job_async(adql, **kw)
    from astroquery.utils.tap.core import TapPlus

    # GaiaClass.launch_job_async does not pass MAXREC on; its TapPlus base does
    launch = TapPlus.launch_job_async if isinstance(arch, TapPlus) else type(arch).launch_job_async
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # astroquery's note on compressed file names
        return launch(arch, adql, maxrec=maxrec, **kw)


def wait_for_job(job: Any, *, progress: bool, deadline: float | None = None, poll: float = 0.25) -> str:
    """The job's final phase, or its phase when ``deadline`` (monotonic s) passes; polls from ``poll`` to 5 s apart."""
    phase, shown = "", None
    while True:
        phase = str(job.get_phase(update=True)).strip().upper()
        if progress and phase != shown:
            log.info("job %s: %s", getattr(job, "jobid", "?"), phase)
            shown = phase
        if phase not in RUNNING_PHASES:
            return phase
        left = math.inf if deadline is None else deadline - time.monotonic()
        if left <= 0:
            return phase
        time.sleep(min(poll, left))
        poll = min(poll * 1.5, 5.0)


def abort_job(job: Any, timeout: float | None) -> str:
    """Ask the server to abort ``job`` (UWS: POST ``PHASE=ABORT`` to its phase); say how that went."""
    jobid = getattr(job, "jobid", None)
    try:
        with socket_timeout(10.0 if timeout is None else min(timeout, 10.0)):
            conn = getattr(job, "connHandler", None)
            if conn is None or jobid is None:  # astroquery's Job.abort works only before the job starts
                job.abort()
            else:
                response = conn.execute_tappost(f"async/{jobid}/phase", urlencode({"PHASE": "ABORT"}))
                response.read()
                if response.status not in (200, 303):
                    raise OSError(f"HTTP {response.status} {response.reason}")
    except Exception as exc:
        log.warning("could not abort Gaia archive job %s: %s", jobid, one_line(exc, with_type=True))
        return f"asking the server to abort it failed ({one_line(exc, with_type=True)})"
    log.info("asked the server to abort Gaia archive job %s", jobid)
    return "the server was asked to abort it"


#: Bytes asked for per read of a result: a read returns what has arrived, up to this.
DOWNLOAD_CHUNK_BYTES = 65536


def download_result(
    job: Any, path: Path, *, deadline: float | None, timeout: float | None, job_timeout: float | None, start: float
) -> None:
    """Save the job's result to ``path``, within ``deadline`` (monotonic s) for the whole download.

    Each read returns what has arrived (at most :data:`DOWNLOAD_CHUNK_BYTES` bytes) and the
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
    with socket_timeout(read_timeout(deadline, timeout)):
        response = conn.execute_tapget(f"async/{jobid}/results/result")
        if response.status != 200:
            response.read()
            raise GaiaQueryError(
                f"the result of job {jobid} could not be fetched: HTTP {response.status} {response.reason}"
            )
        received = 0
        read = getattr(response, "read1", response.read)
        with open(path, "wb") as fh:
            while chunk := read(DOWNLOAD_CHUNK_BYTES):
                fh.write(chunk)
                received += len(chunk)
                if deadline is not None and time.monotonic() > deadline:
                    response.close()
                    raise DefinitiveError(
                        f"the result of job {jobid} was still downloading after {time.monotonic() - start:.0f} s "
                        f"({received} bytes received), past job_timeout={job_timeout:g} s; the server sends it "
                        "slowly. Try again later, split the query (smaller cones, magnitude slices) or raise "
                        "job_timeout"
                    )


def read_timeout(deadline: float | None, timeout: float | None) -> float | None:
    """Seconds one network read may wait: ``timeout``, or less where the deadline comes first."""
    if deadline is None:
        return timeout
    left = max(deadline - time.monotonic(), 0.001)
    return left if timeout is None else min(timeout, left)
