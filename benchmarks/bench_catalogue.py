"""A whole-sky catalogue refit on simulated clusters: two sources, calibration, throughput, resumability.

The figures of issue 24, on a simulated sky with known truth:

1. **Sky.** ``--n-clusters`` clusters at distances log-uniform in 0.3-8 kpc,
   at random sky positions at least ``--min-separation`` deg apart (no two
   cones overlap), each a G < 18 field of ``--n-field`` field stars and a
   cluster of 60-200 members with a random space velocity
   (``gd.simulate_field``, one seed per cluster), concatenated into one sky
   table with a ``source_id`` unique over the sky. The cluster list (name,
   ra, dec, radius and a parallax hint with ``--hint-noise`` relative
   scatter) is what the refit sees; the truth is kept aside.
2. **Two sources.** (a) ``source="archive"``: the local TAP test server of
   ``tests/tap_server.py``, taught here to answer the package's cone ADQL
   from the sky table (``CIRCLE('ICRS', ra, dec, r)`` and
   ``phot_g_mean_mag < x``), with a query cache in a temporary folder;
   (b) an lsdb ``Catalog`` of the same sky written as HATS in a temporary
   folder. Both runs use the same seed and must give the same catalogue: the
   largest difference in D, pmra, pmdec over the clusters is printed.
3. **Calibration.** Coverage of the true distance by D's 68 % interval
   (``D_lo``-``D_hi``, the catalogue's 15.866/84.134 % posterior
   percentiles) and by a 90 % interval from a normal approximation
   (``D +- 1.645 sd``, ``sd = hypot(D_sd_stat, D_sd_sys)``; the catalogue
   keeps no draws), with binomial standard errors; the same 68 % coverage
   for pmra and pmdec; the fraction of clusters by status.
4. **Throughput.** The first ``--throughput-clusters`` clusters of the list
   refitted with ``workers=2`` (a local Dask cluster of 2 processes) and with
   ``workers=None`` (one after another in this process), each into a fresh
   folder, compilation included, and with a plain loop over ``gd.fit_cluster``
   and one vectorised ``gd.fit_clusters`` call on the same fields (cut from
   the sky beforehand), all in one run; clusters per hour and the projected time for
   Hunt & Reffert's (2023) 7 167 clusters at each rate. The fields here are
   small (a few hundred stars, G < 18); real fields are larger.
5. **Resumability** (``--kill-test``): a run of ``--kill-clusters`` clusters
   in a separate Python process is killed (SIGKILL) when ``rows/`` holds
   half of them, then run again; the catalogue must equal the uninterrupted
   one, with no stray temporary files and no cluster fitted again that was
   done before the kill. Then a ``workers=2`` run on a Dask cluster whose
   worker process is killed (SIGKILL) halfway must complete with the same
   catalogue.

Every fit uses ``fit_cluster``'s default model (kinematics, flexible field)
with ``systematics=None`` (the mocks have no Gaia angular systematics) and
``zero_point="parallax_zeropoint_true"`` (the simulated per-star zero point;
``apply_zeropoint`` stays ``False``); ``--num-samples``/``--num-warmup``
change the draws. Run it with::

    python benchmarks/bench_catalogue.py [--n-clusters 200] [--n-field 400] [--sources archive,hats]
        [--workers 2] [--throughput-clusters 20] [--throughput-only] [--kill-test] [--kill-clusters 12] [--seed 0]

It prints Markdown tables (date, machine, CPU count) for ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.table import QTable, Table, vstack

import gaia_distances as gd

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
#: Hunt & Reffert (2023): the clusters of their catalogue.
HUNT2023_CLUSTERS = 7167
#: The simulation's truth columns, kept out of the served sky (``parallax_zeropoint_true`` stays: the fits use it).
TRUTH_COLUMNS = ("r_true", "is_member", "pmra_true", "pmdec_true", "radial_velocity_true", "is_binary")
#: Catalogue columns compared between two runs (besides ``status``).
COMPARED = ("D", "D_lo", "D_hi", "pmra", "pmdec", "sigma_v", "Q", "n_members")


# --------------------------------------------------------------------------- the simulated sky


def random_centres(n: int, min_sep: float, rng: np.random.Generator) -> list[tuple[float, float]]:
    """``n`` points uniform on the sphere (|dec| < 80), each at least ``min_sep`` deg from the others."""
    out: list[np.ndarray] = []
    cos_min = math.cos(math.radians(min_sep))
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 1000 * n:
            raise RuntimeError(f"could not place {n} clusters {min_sep} deg apart; lower --min-separation")
        ra = rng.uniform(0.0, 360.0)
        dec = math.degrees(math.asin(rng.uniform(-math.sin(math.radians(80)), math.sin(math.radians(80)))))
        v = _unit(np.array([ra]), np.array([dec]))[0]
        if out and np.max(np.asarray(out) @ v) > cos_min:
            continue
        out.append(v)
    return [_radec(v) for v in out]


def _unit(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    a, d = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)], axis=-1)


def _radec(v: np.ndarray) -> tuple[float, float]:
    return float(np.degrees(np.arctan2(v[1], v[0])) % 360.0), float(np.degrees(np.arcsin(v[2])))


def simulate_sky(args: argparse.Namespace) -> tuple[Table, Table, Table]:
    """The sky table (served), the cluster list (what the refit sees) and the truth (kept aside)."""
    rng = np.random.default_rng(args.seed)
    centres = random_centres(args.n_clusters, args.min_separation, rng)
    fields, names, truth = [], [], []
    for k, (ra, dec) in enumerate(centres):
        own = np.random.default_rng([args.seed, k])  # each cluster its own draws: a smaller sky is a prefix
        dist = float(np.exp(own.uniform(np.log(300.0), np.log(8000.0))))
        n_members = int(own.integers(60, 201))
        velocity = tuple(float(v) for v in own.normal(0.0, 25.0, 3))
        t = gd.simulate_field(
            args.n_field,
            n_cluster=n_members,
            cluster_distance=dist,
            centre=(ra, dec),
            radius=args.radius * u.deg,
            magnitude_limit=18.0,
            cluster_velocity=velocity,
            seed=args.seed * 100_000 + k,
        )
        name = f"Sim {k:04d}"
        sim = t.meta["gaia_distances"]["simulation"]
        truth.append(
            {
                "name": name,
                "D_true": dist,
                "pmra_true": float(sim["cluster_pmra"]),
                "pmdec_true": float(sim["cluster_pmdec"]),
                "n_members_true": int(np.sum(t["is_member"])),
                "n_rows": len(t),
            }
        )
        t = Table(t)
        t.remove_columns([c for c in TRUTH_COLUMNS if c in t.colnames])
        t.meta = {}
        t["source_id"] = np.int64(k) * 1_000_000 + np.arange(len(t), dtype=np.int64)  # unique over the sky
        fields.append(t)
        names.append(name)
    sky = vstack(fields, metadata_conflicts="silent")
    d_true = np.array([r["D_true"] for r in truth])
    columns = {
        "name": names,
        "ra": [c[0] for c in centres],
        "dec": [c[1] for c in centres],
        # a little beyond the simulated cone: a star within rounding of the edge would be kept by one source's
        # cone search and dropped by the other's (lsdb and the server round differently)
        "radius": [args.radius * 1.05] * len(names),
    }
    if args.hint_noise > 0:
        noise = np.array([np.random.default_rng([args.seed, k, 1]).standard_normal() for k in range(len(names))])
        columns["parallax"] = 1000.0 / d_true * (1.0 + args.hint_noise * noise)
        columns["parallax"] = np.where(columns["parallax"] > 0, columns["parallax"], np.nan)
    return sky, Table(columns), Table(rows=[tuple(r.values()) for r in truth], names=list(truth[0]))


# --------------------------------------------------------------------------- the two sources


_CIRCLE = re.compile(r"CIRCLE\('ICRS',\s*([-+0-9.eE]+),\s*([-+0-9.eE]+),\s*([-+0-9.eE]+)\)")
_GMAX = re.compile(r"phot_g_mean_mag\s*<\s*([-+0-9.eE]+)")


def cone_server(sky: Table):
    """A ``tests/tap_server.py`` ``TapServer`` whose jobs answer their ADQL's cone from ``sky``.

    The test server serves one payload to every job; here each job's query
    is kept by its id and its result is the rows of ``sky`` inside the
    query's ``CIRCLE`` (and below its ``phot_g_mean_mag`` limit). Only the
    centre-as-given form of the cone is understood (no ``EPOCH_PROP_POS``:
    the list has no proper-motion hints). Every column of ``sky`` is served.
    """
    sys.path.insert(0, str(TESTS))
    import gzip

    from tap_server import TapServer, _Handler

    xyz = _unit(np.asarray(sky["ra"], dtype=float), np.asarray(sky["dec"], dtype=float))
    gmag = np.asarray(sky["phot_g_mean_mag"], dtype=float)
    lock = threading.Lock()
    job_queries: dict[str, str] = {}

    class ConeHandler(_Handler):
        def do_POST(self) -> None:  # noqa: N802
            with lock:  # the new job is the last one the base class adds
                before = set(self.state.jobs)
                super().do_POST()
                new = [j for j in self.state.jobs if j not in before]
                if new:
                    job_queries[new[-1]] = self.state.queries[-1]

        def _result(self) -> None:
            parts = self.path.split("?")[0].rstrip("/").split("/")
            jobid = parts[parts.index("async") + 1]
            query = job_queries.get(jobid, "")
            m = _CIRCLE.search(query)
            if m is None:
                self._send(400, f"cannot read a cone from {query!r}".encode())
                return
            ra, dec, r = (float(x) for x in m.groups())
            inside = xyz @ _unit(np.array([ra]), np.array([dec]))[0] >= math.cos(math.radians(r))
            g = _GMAX.search(query)
            if g is not None:
                inside &= gmag < float(g.group(1))
            buf = io.BytesIO()
            sky[inside].write(buf, format="votable")
            self._send(200, gzip.compress(buf.getvalue()), "application/x-votable+xml", {"Content-Encoding": "gzip"})

    return TapServer(b"", handler=ConeHandler)


def write_hats(sky: Table, folder: Path) -> Path:
    """The sky as a HATS catalogue ``folder/sim_sky`` (lsdb ``from_dataframe``)."""
    import lsdb

    frame = sky.to_pandas(index=False)
    built = lsdb.from_dataframe(frame, catalog_name="sim_sky", ra_column="ra", dec_column="dec")
    write = getattr(built, "write_catalog", None) or built.to_hats  # to_hats in older lsdb
    write(folder / "sim_sky")
    return folder / "sim_sky"


def open_hats(path: Path):
    import lsdb

    return (getattr(lsdb, "open_catalog", None) or lsdb.read_hats)(path)


def source_kwargs(spec: dict) -> dict:
    """``fit_catalogue``'s ``source`` (and ``query_options``) from a plain description (it travels to a child)."""
    if spec["kind"] == "archive":
        query = {"server": spec["server"], "cache_dir": spec["cache_dir"], "timeout": 60, "retries": 1}
        return {"source": "archive", "query_options": query}
    return {"source": open_hats(Path(spec["path"]))}


# --------------------------------------------------------------------------- runs and comparisons


def fit_options(args: argparse.Namespace) -> dict:
    opts = {"systematics": None, "zero_point": "parallax_zeropoint_true"}
    if args.num_samples is not None:
        opts["num_samples"] = args.num_samples
    if args.num_warmup is not None:
        opts["num_warmup"] = args.num_warmup
    return opts


def run(clusters: Table, spec: dict, out: Path, args: argparse.Namespace, **kw):
    """``fit_catalogue`` on ``clusters`` from source ``spec`` into ``out``; (catalogue, wall seconds)."""
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cat = gd.fit_catalogue(
            gd.read_cluster_list(clusters),
            out=out,
            seed=args.seed,
            progress=False,
            **source_kwargs(spec),
            **fit_options(args),
            **kw,
        )
    return cat, time.perf_counter() - t0


def sky_fields(sky: Table, clusters: Table) -> list[Table]:
    """Each listed cluster's simulated cone, cut from the sky table by its ``source_id`` block."""
    cluster_of = np.asarray(sky["source_id"]) // 1_000_000
    return [sky[cluster_of == int(str(row["name"]).split()[-1])] for row in clusters]


def plain_loop(sky: Table, clusters: Table, args: argparse.Namespace) -> tuple[list, float]:
    """``gd.fit_cluster`` on each cluster's field, one after another in this process; (fits, wall seconds).

    The fields are cut from the sky table before the clock starts: this times the fits alone, the floor any
    catalogue runner is measured against.
    """
    fields = sky_fields(sky, clusters)
    plx = np.asarray(clusters["parallax"], float) if "parallax" in clusters.colnames else np.full(len(fields), np.nan)
    fits = []
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, field in enumerate(fields):
            hint = 1000.0 / plx[i] if np.isfinite(plx[i]) else None
            fits.append(gd.fit_cluster(field, seed=args.seed + i, distance_hint=hint, **fit_options(args)))
    return fits, time.perf_counter() - t0


def batched(sky: Table, clusters: Table, args: argparse.Namespace):
    """``gd.fit_clusters`` over the same fields as :func:`plain_loop`, one call; (ClusterFits, wall seconds)."""
    fields = sky_fields(sky, clusters)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fits = gd.fit_clusters(fields, seed=args.seed, progress=False, **fit_options(args))
    return fits, time.perf_counter() - t0


def _values(cat, col: str) -> np.ndarray:
    c = cat[col]
    return np.asarray(getattr(c, "value", c), dtype=float)


def largest_differences(a, b, columns=COMPARED) -> dict[str, float]:
    """Max |a - b| per column over the clusters fitted in both (NaN == NaN); ``inf`` if the names differ."""
    if list(a["name"]) != list(b["name"]):
        return dict.fromkeys(columns, math.inf)
    out = {}
    for c in columns:
        x, y = _values(a, c), _values(b, c)
        both_nan = np.isnan(x) & np.isnan(y)
        d = np.where(both_nan, 0.0, np.abs(x - y))
        out[c] = float(np.max(np.where(np.isnan(d), np.inf, d))) if len(d) else 0.0
    out["status"] = float(sum(s != t for s, t in zip(a["status"], b["status"])))
    return out


def stray_files(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.name.startswith(".") or ".tmp" in p.name)


def binomial(hits: np.ndarray) -> tuple[float, float, int]:
    n = int(hits.size)
    p = float(np.mean(hits)) if n else math.nan
    return p, math.sqrt(p * (1 - p) / n) if n else math.nan, n


def calibration(cat, truth: Table) -> list[tuple[str, float, float, int, float]]:
    """(what, coverage, s.e., n, nominal) over the clusters fitted (status ok or warning)."""
    t = {r["name"]: r for r in truth}
    done = np.array([s in ("ok", "warning") for s in cat["status"]])
    c = cat[done]
    d_true = np.array([t[n]["D_true"] for n in c["name"]])
    d, lo, hi = _values(c, "D"), _values(c, "D_lo"), _values(c, "D_hi")
    sd = np.hypot(_values(c, "D_sd_stat"), np.nan_to_num(_values(c, "D_sd_sys")))
    rows = [
        ("D in [D_lo, D_hi] (16-84 % percentiles)", *binomial((lo <= d_true) & (d_true <= hi)), 0.683),
        ("D in D +- 1.000 sd (normal approximation)", *binomial(np.abs(d_true - d) <= sd), 0.683),
        ("D in D +- 1.645 sd (normal approximation)", *binomial(np.abs(d_true - d) <= 1.645 * sd), 0.90),
    ]
    for p in ("pmra", "pmdec"):
        true = np.array([t[n][f"{p}_true"] for n in c["name"]])
        rows.append(
            (
                f"{p} in [{p}_lo, {p}_hi]",
                *binomial((_values(c, f"{p}_lo") <= true) & (true <= _values(c, f"{p}_hi"))),
                0.683,
            )
        )
    return rows


def hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "n/a"
    h, rem = divmod(int(round(seconds)), 3600)
    return f"{h} h {rem // 60:02d} min" if h else f"{rem // 60} min {rem % 60:02d} s"


# --------------------------------------------------------------------------- the kill tests


def child_main(spec_path: str) -> None:
    """The separate process of the kill test: one ``fit_catalogue`` run from a JSON spec."""
    spec = json.loads(Path(spec_path).read_text())
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("gaia_distances.catalogue").setLevel(logging.INFO)
    args = argparse.Namespace(**spec["args"])
    clusters = Table.read(spec["clusters"], format="ascii.ecsv")
    run(clusters, spec["source"], Path(spec["out"]), args)


def _rows_done(out: Path) -> int:
    rows = out / "rows"
    return len(list(rows.glob("*.json"))) if rows.is_dir() else 0


def _row_stamps(out: Path) -> dict[str, int]:
    return {p.stem: p.stat().st_mtime_ns for p in (out / "rows").glob("*.json")}


def kill_process_test(clusters: Table, spec: dict, work: Path, args: argparse.Namespace, reference) -> list[str]:
    """SIGKILL a child run halfway, rerun it, compare with ``reference``; Markdown lines."""
    n = len(clusters)
    out = work / "kill_process"
    clusters_path = work / "kill_clusters.ecsv"
    clusters.write(clusters_path, format="ascii.ecsv", overwrite=True)
    spec_path = work / "kill_spec.json"
    spec_path.write_text(
        json.dumps({"args": vars(args), "clusters": str(clusters_path), "source": spec, "out": str(out)})
    )
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path)]
    log1 = open(work / "kill_child1.log", "w")  # noqa: SIM115
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=log1, stderr=subprocess.STDOUT)
    half = max(1, n // 2)
    while child.poll() is None and _rows_done(out) < half:
        time.sleep(0.05)
    killed_at = _rows_done(out)
    was_running = child.poll() is None
    if was_running:
        os.kill(child.pid, signal.SIGKILL)
    child.wait()
    log1.close()
    t_kill = time.perf_counter() - t0
    strays_after_kill = stray_files(out)
    stamps = _row_stamps(out)
    from gaia_distances.catalogue.store import CatalogueStore

    store = CatalogueStore(out)
    done_before = {k for k, r in store.previous_rows().items() if store.is_done(r)}
    log2_path = work / "kill_child2.log"
    with open(log2_path, "w") as log2:
        t1 = time.perf_counter()
        rc = subprocess.run(cmd, stdout=log2, stderr=subprocess.STDOUT).returncode
        t_rerun = time.perf_counter() - t1
    said = log2_path.read_text()
    m = re.search(r"fit_catalogue: (\d+) clusters, (\d+) done before, (\d+) to fit", said)
    refitted = {k for k, s in _row_stamps(out).items() if stamps.get(k) != s}
    twice = sorted(refitted & done_before)
    cat = QTable.read(out / "catalogue.ecsv", format="ascii.ecsv") if (out / "catalogue.ecsv").exists() else None
    ref = reference[[k in set(clusters["name"]) for k in reference["name"]]]
    diff = largest_differences(cat, ref) if cat is not None else {}
    n_rows_files = _rows_done(out)
    return [
        f"| process killed (SIGKILL) after | {killed_at} of {n} rows written, {t_kill:.1f} s"
        f"{'' if was_running else ' (the child had already ended)'} |",
        f"| stray temporary files after the kill | {strays_after_kill or 'none'} |",
        f"| rerun | rc {rc}, {t_rerun:.1f} s; log: {m.group(0) if m else 'no summary line'} |",
        f"| clusters fitted by the rerun | {len(refitted)} (= {n} - {len(done_before)} done before: "
        f"{'yes' if len(refitted) == n - len(done_before) else 'NO'}); done before and fitted again: "
        f"{twice or 'none'} |",
        f"| rows files / catalogue rows / unique names | {n_rows_files} / {0 if cat is None else len(cat)} / "
        f"{0 if cat is None else len(set(cat['name']))} |",
        f"| stray files after the rerun | {stray_files(out) or 'none'} |",
        f"| largest difference from the uninterrupted run | {_fmt_diff(diff)} |",
    ]


def kill_worker_test(clusters: Table, spec: dict, work: Path, args: argparse.Namespace, reference) -> list[str]:
    """A ``workers=2`` run (an explicit ``LocalCluster``) whose worker is SIGKILLed halfway; Markdown lines."""
    import distributed

    n = len(clusters)
    out = work / "kill_worker"
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = distributed.Client(cluster)
    killed: dict = {}

    def killer() -> None:
        while _rows_done(out) < max(1, n // 2) and not killed.get("stop"):
            time.sleep(0.05)
        if killed.get("stop"):
            return
        pids = client.run(os.getpid)
        addr, pid = sorted(pids.items())[0]
        killed.update(at=_rows_done(out), pid=pid, addr=addr)
        os.kill(pid, signal.SIGKILL)

    watcher = threading.Thread(target=killer, daemon=True)
    watcher.start()
    try:
        cat, wall = run(clusters, spec, out, args, client=client)
    finally:
        killed["stop"] = True
        watcher.join(timeout=5)
        workers_after = len(client.scheduler_info()["workers"])
        client.close()
        cluster.close()
    ref = reference[[k in set(clusters["name"]) for k in reference["name"]]]
    statuses = _counts(cat["status"])
    lost = [f"{r['name']}: {r['reason'][:80]}" for r in cat if "lost" in str(r["reason"])]
    return [
        f"| worker killed (SIGKILL) | pid {killed.get('pid', 'none')} after {killed.get('at', '-')} of {n} rows |",
        f"| run | {wall:.1f} s, {len(cat)} rows, statuses {statuses}, workers at the end {workers_after} |",
        f"| tasks lost | {lost or 'none'} |",
        f"| stray files | {stray_files(out) or 'none'} |",
        f"| largest difference from the uninterrupted run | {_fmt_diff(largest_differences(cat, ref))} |",
    ]


def _counts(statuses) -> str:
    names, counts = np.unique(np.asarray(statuses, dtype=str), return_counts=True)
    return ", ".join(f"{n} {int(c)}" for n, c in zip(names, counts))


def _fmt_diff(diff: dict) -> str:
    if not diff:
        return "no catalogue"
    return ", ".join(f"{k} {v:.3g}" for k, v in diff.items())


# --------------------------------------------------------------------------- main


def print_calibration(cat, truth: Table, what: str) -> None:
    """Coverage of the truth by the catalogue's intervals, the statuses and the distance residuals, in Markdown."""
    # 3. calibration, on the first source's catalogue
    print(f"\n#### Calibration against the truth ({what}; 90 % from a normal approximation, D +- 1.645 sd)\n")
    print("| interval | coverage | binomial s.e. | clusters | nominal |")
    print("|---|---|---|---|---|")
    for what, p, se, n, nominal in calibration(cat, truth):
        print(f"| {what} | {p:.3f} | {se:.3f} | {n} | {nominal:.3f} |")
    statuses = np.asarray(cat["status"])
    print("\n| status | clusters | fraction |")
    print("|---|---|---|")
    for s in ("ok", "warning", "no_field", "query_error", "too_few_stars", "fit_error"):
        k = int(np.sum(statuses == s))
        if k or s in ("ok", "warning"):
            print(f"| {s} | {k} | {k / len(statuses):.3f} |")
    t = {r["name"]: r["D_true"] for r in truth}
    ok = np.array([s in ("ok", "warning") for s in statuses])
    if ok.any():
        rel = _values(cat, "D")[ok] / np.array([t[n] for n in cat["name"][ok]]) - 1
        relsd = _values(cat, "D_sd_stat")[ok] / _values(cat, "D")[ok]
        print(
            f"\nD / D_true - 1: median {np.median(rel):+.4f}, median |.| {np.median(np.abs(rel)):.4f}; "
            f"median D_sd_stat / D {np.median(relsd):.4f}"
        )
    warned = [r for r in cat if r["status"] == "warning"]
    if warned:
        print("warnings (first 3): " + "; ".join(f"{r['name']}: {str(r['reason'])[:120]}" for r in warned[:3]))


def compare_fields(clusters: Table, specs: dict) -> None:
    """Every cluster's field as ``fit_catalogue`` fetches it, from both sources, compared row by row.

    ``fit_cluster`` is deterministic given its table, seed and options: equal fields from the two sources
    mean equal catalogues, which the full runs show at a smaller scale.
    """
    from gaia_distances.catalogue.cluster_list import cluster_specs
    from gaia_distances.catalogue.sources import field_source

    if set(specs) != {"archive", "hats"}:
        raise SystemExit("--compare-fields needs --sources archive,hats")
    archive = source_kwargs(specs["archive"])
    sources = {
        "archive": field_source(archive["source"], **archive["query_options"]),
        "hats": field_source(source_kwargs(specs["hats"])["source"]),
    }
    n_same = n_rows = 0
    differ = []
    t0 = time.perf_counter()
    for spec in cluster_specs(gd.read_cluster_list(clusters)):
        fields = {}
        for name, src in sources.items():
            t = src.fetch(spec, radius=spec.radius, magnitude_limit=None, centre_epoch=2000.0)
            t = Table(t)[np.argsort(np.asarray(t["source_id"]))]
            fields[name] = t
        a, b = fields["archive"], fields["hats"]
        same = len(a) == len(b) and np.array_equal(np.asarray(a["source_id"]), np.asarray(b["source_id"]))
        columns = [c for c in a.colnames if c in b.colnames and a[c].dtype.kind in "fiub"]
        for c in columns if same else ():
            x, y = np.ma.filled(np.ma.asarray(a[c], float), np.nan), np.ma.filled(np.ma.asarray(b[c], float), np.nan)
            if not np.array_equal(x, y, equal_nan=True):
                same = False
                differ.append(f"{spec.name}: {c}")
                break
        else:
            if not same:
                differ.append(f"{spec.name}: rows {len(a)} / {len(b)}")
        n_same += same
        n_rows += len(a)
    print(
        f"\n#### The fields from the two sources ({len(clusters)} clusters, {time.perf_counter() - t0:.0f} s)\n\n"
        f"- fields equal row by row in every numeric column ({len(columns)} columns): {n_same} of {len(clusters)}; "
        f"{n_rows} rows in all\n- differing: {differ[:5] or 'none'}"
    )


def full_runs_and_calibration(clusters, specs, truth, server, work, args, workers):
    """Every cluster from each source, the sources compared, the first one's catalogue against the truth."""
    # the full runs the full runs, one per source
    cats, walls = {}, {}
    for name, spec in specs.items():
        cats[name], walls[name] = run(clusters, spec, work / f"refit_{name}", args, workers=workers)
        print(f"{name}: {len(clusters)} clusters in {walls[name]:.1f} s", flush=True)
    print("\n| source | clusters | wall [s] | wall / cluster [s] | median fit wall_time_s [s] | statuses |")
    print("|---|---|---|---|---|---|")
    for name, cat in cats.items():
        st = _counts(cat["status"])
        med = float(np.median(_values(cat, "wall_time_s")))
        print(f"| {name} | {len(cat)} | {walls[name]:.1f} | {walls[name] / len(cat):.2f} | {med:.2f} | {st} |")
    if len(cats) == 2:
        diff = largest_differences(cats["archive"], cats["hats"])
        print(f"\narchive vs hats, largest |difference| per column: {_fmt_diff(diff)}")
        n_rows_differ = int(np.sum(_values(cats["archive"], "n_rows") != _values(cats["hats"], "n_rows")))
        print(f"clusters whose field row count differs between the sources: {n_rows_differ}")
    if server is not None:
        print(f"TAP server: {len(server.state.queries)} queries received")

    # 3. calibration, on the first source's catalogue
    first = next(iter(cats))
    cat = cats[first]
    print_calibration(cat, truth, first)
    return cat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-clusters", type=int, default=200)
    ap.add_argument("--n-field", type=int, default=400, help="field stars per cluster's cone (G < 18)")
    ap.add_argument("--radius", type=float, default=0.3, help="each field's (and the list's) cone radius, deg")
    ap.add_argument("--min-separation", type=float, default=3.0, help="least distance between centres, deg")
    ap.add_argument("--hint-noise", type=float, default=0.1, help="relative scatter of the list's parallax (0: none)")
    ap.add_argument("--sources", default="archive,hats", help="archive, hats or both (comma-separated)")
    ap.add_argument("--workers", type=int, default=2, help="workers of the full runs (1: in this process)")
    ap.add_argument("--throughput-clusters", type=int, default=20, help="0: skip the throughput runs")
    ap.add_argument("--throughput-only", action="store_true", help="skip the full runs and the calibration")
    ap.add_argument(
        "--compare-fields",
        action="store_true",
        help="instead of the full runs: fetch every cluster's field from both sources and compare them row by row",
    )
    ap.add_argument(
        "--calibrate-from", default=None, help="instead of the full runs: the calibration of a saved catalogue.ecsv"
    )
    ap.add_argument("--kill-test", action="store_true")
    ap.add_argument("--kill-clusters", type=int, default=12)
    ap.add_argument("--num-samples", type=int, default=None)
    ap.add_argument("--num-warmup", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", default=None, help="a folder to keep the outputs in (default: a temporary one)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_main(args.child)
        return
    sources = [s.strip().lower() for s in args.sources.split(",") if s.strip()]
    if not sources or set(sources) - {"archive", "hats"}:
        ap.error("--sources takes archive, hats or archive,hats")
    if args.kill_test and args.throughput_only:
        ap.error("--kill-test compares with the full run's catalogue: drop --throughput-only")
    warnings.simplefilter("ignore")
    import jax
    import numpyro

    tmp = tempfile.TemporaryDirectory(prefix="bench_catalogue_") if args.keep is None else None
    work = Path(args.keep) if args.keep else Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"\n### Catalogue refit of a simulated sky, {now}, {platform.node()}, {os.cpu_count()} CPUs, "
        f"JAX {jax.__version__} / numpyro {numpyro.__version__} on {jax.default_backend()}\n"
    )
    t0 = time.perf_counter()
    sky, clusters, truth = simulate_sky(args)
    print(
        f"Sky: {len(clusters)} clusters, {len(sky)} stars (G < 18, {args.n_field} field stars + 60-200 members "
        f"per {args.radius} deg cone, list radius {args.radius * 1.05:.3g} deg, D log-uniform 0.3-8 kpc, "
        f"centres >= {args.min_separation} deg apart), "
        f"simulated in {time.perf_counter() - t0:.1f} s; fit options {fit_options(args)}, seed {args.seed}, "
        f"workers {args.workers}.\n",
        flush=True,
    )
    specs: dict[str, dict] = {}
    server = None
    if "archive" in sources:
        server = cone_server(sky)
        specs["archive"] = {"kind": "archive", "server": server.url, "cache_dir": str(work / "query_cache")}
    if "hats" in sources:
        t0 = time.perf_counter()
        specs["hats"] = {"kind": "hats", "path": str(write_hats(sky, work))}
        print(f"HATS catalogue written in {time.perf_counter() - t0:.1f} s.\n", flush=True)
    workers = None if args.workers <= 1 else args.workers

    first = next(iter(specs))
    cat = None
    if args.compare_fields:
        compare_fields(clusters, specs)
    if args.calibrate_from:
        cat = QTable.read(args.calibrate_from, format="ascii.ecsv")
        print_calibration(cat, truth, f"the saved catalogue {args.calibrate_from}")
    if not (args.throughput_only or args.compare_fields or args.calibrate_from):
        cat = full_runs_and_calibration(clusters, specs, truth, server, work, args, workers)

    # 4. throughput
    if args.throughput_clusters > 0:
        k = min(args.throughput_clusters, len(clusters))
        sub = clusters[:k]
        spec = specs[first]
        print(f"\n#### Throughput ({k} clusters from {first}, compilation included, fresh out folders)\n")
        print("| run | wall [s] | clusters / hour | projected for 7 167 clusters |")
        print("|---|---|---|---|")

        def timed_row(label: str, wall: float) -> None:
            rate = k / wall * 3600
            print(f"| {label} | {wall:.1f} | {rate:.0f} | {hms(HUNT2023_CLUSTERS / rate * 3600)} |", flush=True)

        loop, wall = plain_loop(sky, sub, args)
        timed_row("a plain loop over `gd.fit_cluster` (fields cut from the sky beforehand, not timed)", wall)
        batch, wall = batched(sky, sub, args)
        timed_row("`gd.fit_clusters`, one vectorised call over the same fields (no distance hints)", wall)
        agree = [
            abs(float(np.mean(a.posterior["D"])) - float(np.mean(b.posterior["D"]))) / float(np.std(a.posterior["D"]))
            for a, b in zip(loop, batch.fits)
            if b is not None
        ]
        print(
            f"| (loop vs fit_clusters: D means differ by {np.median(agree):.2f} sd median, "
            f"{np.max(agree):.2f} sd at most) | | | |"
        )
        for label, w in (("`workers=None` (in this process)", None), ("`workers=2` (local Dask cluster)", 2)):
            timed_row(label, run(sub, spec, work / f"throughput_{w}", args, workers=w)[1])
        print(
            f"\n(The fields are small: {args.n_field} field stars and 60-200 members, G < 18, in {args.radius} deg "
            "cones; Hunt & Reffert's fields hold up to tens of thousands of stars.)"
        )

    # 5. resumability
    if args.kill_test:
        k = min(args.kill_clusters, len(clusters))
        sub = clusters[:k]
        spec = specs[first]
        print(f"\n#### Resumability ({k} clusters from {first})\n")
        print("| check | result |")
        print("|---|---|")
        for line in kill_process_test(sub, spec, work, args, cat):
            print(line, flush=True)
        for line in kill_worker_test(sub, spec, work, args, cat):
            print(line, flush=True)
    if server is not None:
        server.close()
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
