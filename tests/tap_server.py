"""A small TAP server on 127.0.0.1 that speaks enough TAP for astroquery's GaiaClass.

Endpoints under ``/tap-server/tap``: ``sync`` (POST), ``async`` (POST -> 303 to
the job), ``async/<id>/phase``, ``async/<id>/results/result`` (gzip VOTable,
via a 303 like the archive's), ``async/<id>/error``; a POST of ``PHASE=ABORT`` to
``async/<id>/phase`` aborts a job (UWS) and is recorded in ``state.aborted``. It
records every ADQL text it receives and can inject faults; fault ``"queued"``
keeps every job QUEUED until it is aborted; fault ``"trickle"`` sends the result
``trickle_bytes`` at a time, ``trickle_seconds`` apart (every read is quick, the whole is slow).
"""

from __future__ import annotations

import gzip
import http.server
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

FAULTS = (
    "ok",
    "http500",
    "error_phase",
    "error_votable",
    "slow",
    "truncated_body",
    "overflow",
    "malformed",
    "queued",
    "trickle",
)


@dataclass
class TapState:
    payload: bytes = b""
    fault: str = "ok"
    slow_seconds: float = 5.0
    trickle_bytes: int = 64
    trickle_seconds: float = 0.1
    queries: list[str] = field(default_factory=list)
    jobs: dict[str, int] = field(default_factory=dict)
    aborted: list[str] = field(default_factory=list)
    requests: int = 0


class _Handler(http.server.BaseHTTPRequestHandler):
    state: TapState
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def _send(self, status: int, body: bytes = b"", ctype: str = "text/plain", headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        st = self.state
        st.requests += 1
        n = int(self.headers.get("Content-Length", 0))
        form = urllib.parse.parse_qs(self.rfile.read(n).decode())
        parts = self.path.split("?")[0].rstrip("/").split("/")
        if parts[-1] == "phase" and "async" in parts:  # UWS phase change: only ABORT is supported
            jobid = parts[-2]
            if jobid not in st.jobs or form.get("PHASE", [""])[0].upper() != "ABORT":
                self._send(404 if jobid not in st.jobs else 400, b"cannot change the phase")
                return
            st.aborted.append(jobid)
            host = self.headers.get("Host")
            self._send(303, b"", headers={"Location": f"http://{host}/tap-server/tap/async/{jobid}"})
            return
        query = form.get("QUERY", form.get("query", [""]))[0]
        st.queries.append(query)
        if st.fault == "http500":
            self._send(500, b"Internal Server Error: the database is down")
            return
        path = self.path.rstrip("/")
        if path.endswith("/tap/sync"):
            self._send(200, st.payload, "application/x-votable+xml")
            return
        if path.endswith("/tap/async"):
            jobid = f"{int(time.time() * 1000)}{len(st.jobs)}O"
            st.jobs[jobid] = 0
            host = self.headers.get("Host")
            self._send(303, b"", headers={"Location": f"http://{host}/tap-server/tap/async/{jobid}"})
            return
        self._send(404, b"not found")

    def do_GET(self) -> None:  # noqa: N802
        st = self.state
        st.requests += 1
        parts = self.path.split("?")[0].rstrip("/").split("/")
        if "async" not in parts:
            self._send(404, b"not found")
            return
        i = parts.index("async")
        jobid = parts[i + 1] if len(parts) > i + 1 else ""
        rest = "/".join(parts[i + 2 :])
        if jobid not in st.jobs:
            self._send(404, b"no such job")
            return
        if rest == "phase":
            st.jobs[jobid] += 1
            if jobid in st.aborted:
                self._send(200, b"ABORTED")
            elif st.fault == "queued":
                self._send(200, b"QUEUED")
            elif st.fault == "error_phase":
                self._send(200, b"ERROR")
            elif st.jobs[jobid] == 1:
                self._send(200, b"EXECUTING")  # make the client poll once
            else:
                self._send(200, b"COMPLETED")
            return
        if rest == "error":
            self._send(200, b"Query error: Unknown column 'parallax_eror' in gaiadr3.gaia_source")
            return
        if rest == "results":
            host = self.headers.get("Host")
            self._send(303, b"", headers={"Location": f"http://{host}/tap-server/tap/async/{jobid}/results/result"})
            return
        if rest == "results/result":
            self._result()
            return
        self._send(200, f"<uws:job><uws:jobId>{jobid}</uws:jobId></uws:job>".encode(), "text/xml")

    def _result(self) -> None:
        st = self.state
        body = st.payload
        if st.fault == "overflow":
            body = body.replace(b"</TABLE>", b'</TABLE>\n<INFO name="QUERY_STATUS" value="OVERFLOW"/>', 1)
        if st.fault == "error_votable":
            body = (
                b"<?xml version='1.0'?><VOTABLE version='1.4' xmlns='http://www.ivoa.net/xml/VOTable/v1.3'>"
                b"<RESOURCE type='results'><INFO name='QUERY_STATUS' value='ERROR'>Query timed out on the "
                b"database side</INFO></RESOURCE></VOTABLE>"
            )
        if st.fault == "malformed":
            body = b"<?xml version='1.0'?><VOTABLE><RESOURCE><TABLE><DATA>garbage</TABLE>"
        data = gzip.compress(body)
        if st.fault == "slow":
            time.sleep(st.slow_seconds)
        if st.fault == "truncated_body":
            self.send_response(200)
            self.send_header("Content-Type", "application/x-votable+xml")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if st.fault == "trickle":
            self._trickle(data)
            return
        self._send(200, data, "application/x-votable+xml", {"Content-Encoding": "gzip"})

    def _trickle(self, data: bytes) -> None:
        """Send ``data`` a few bytes at a time; stop when the client goes away."""
        st = self.state
        self.send_response(200)
        self.send_header("Content-Type", "application/x-votable+xml")
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.close_connection = True
        try:
            for i in range(0, len(data), st.trickle_bytes):
                self.wfile.write(data[i : i + st.trickle_bytes])
                self.wfile.flush()
                time.sleep(st.trickle_seconds)
        except OSError:  # the client closed the connection
            pass


class TapServer:
    """Start with ``TapServer(payload)``; ``.url`` is the server root; ``.close()`` stops it.

    ``handler`` replaces the request handler with a subclass of the default one (a server that answers
    each job from its query, for example).
    """

    def __init__(self, payload: bytes, handler: type[_Handler] | None = None) -> None:
        self.state = TapState(payload=payload)
        handler = type("Handler", (handler or _Handler,), {"state": self.state})
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
