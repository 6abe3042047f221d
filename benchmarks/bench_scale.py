"""Distances through lsdb/Dask against in-memory ``estimate_distances``, side by side.

Simulated stars over the whole sky are written as a HATS catalogue with
hats-import (not timed), then the same rows go through

1. ``estimate_distances`` on the table in memory, and
2. ``gaia_distances.scale.estimate_distances_hats`` on a ``distributed.LocalCluster``
   (one single-threaded worker process per core), reading the partitions from
   disk and computing the result,
3. ``estimate_distances_dask`` over the plain Parquet file.

Each is run twice and the second (warm: compiled) run is timed. The script
prints rows per second, the overhead ratio and an extrapolation to the
1.47 billion Gaia DR3 parallaxes, and checks that every row is identical.

    python benchmarks/bench_scale.py [--rows 400000] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import astropy.units as u
import numpy as np

import gaia_distances as gd
from gaia_distances import scale

GAIA_DR3_PARALLAXES = 1_467_744_818


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--pixel-threshold", type=int, default=50_000, help="rows per HATS partition (at most)")
    args = ap.parse_args()

    import distributed
    import lsdb
    from hats_import.catalog.arguments import ImportArguments
    from hats_import.pipeline import pipeline_with_client

    warnings.simplefilter("ignore")
    t = gd.simulate_field(args.rows, radius=180 * u.deg, magnitude_limit=None, seed=1)
    frame = t.to_pandas(index=False)
    prior = gd.EDSD(1350.0)
    zp = "parallax_zeropoint_true"

    def in_memory() -> object:
        return gd.estimate_distances(frame, prior=prior, zero_point=zp, progress=False)

    in_memory()
    t0 = time.perf_counter()
    ref = in_memory()
    t_mem = time.perf_counter() - t0

    with (
        tempfile.TemporaryDirectory() as tmp,
        distributed.LocalCluster(
            n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        root = Path(tmp)
        src = root / "stars.parquet"
        frame.to_parquet(src)
        pipeline_with_client(
            ImportArguments(
                output_path=root,
                output_artifact_name="sky",
                input_file_list=[src],
                file_reader="parquet",
                pixel_threshold=args.pixel_threshold,
                highest_healpix_order=7,
                progress_bar=False,
                tmp_dir=root / "tmp",
            ),
            client,
        )
        cat = lsdb.open_catalog(root / "sky")

        def through_lsdb() -> object:
            return scale.estimate_distances_hats(cat, prior=prior, zero_point=zp).compute(progress_bar=False)

        def through_dask() -> object:
            return scale.estimate_distances_dask(str(src), prior=prior, zero_point=zp).compute()

        def to_disk() -> None:
            out = scale.estimate_distances_hats(cat, prior=prior, zero_point=zp)
            write = getattr(out, "write_catalog", None) or out.to_hats
            write(root / "sky_distances", overwrite=True, progress_bar=False)

        through_lsdb()
        t0 = time.perf_counter()
        got = through_lsdb()
        t_lsdb = time.perf_counter() - t0
        to_disk()
        with distributed.get_task_stream(client) as stream:
            t0 = time.perf_counter()
            to_disk()
            t_disk = time.perf_counter() - t0
        busy = sum(
            s["stop"] - s["start"] for task in stream.data for s in task["startstops"] if s["action"] == "compute"
        )
        through_dask()
        t0 = time.perf_counter()
        got_dask = through_dask()
        t_dask = time.perf_counter() - t0
        n_parts = cat.npartitions

    want = np.asarray(ref["distance_median"].value)
    order = np.argsort(np.asarray(ref["source_id"]))
    for name, res in (("lsdb", got), ("dask", got_dask)):
        g = res.sort_values("source_id")
        assert len(g) == args.rows and g["source_id"].is_unique, name
        same = np.array_equal(g["distance_median"].to_numpy(float), want[order], equal_nan=True)
        print(f"{name}: every row identical to in-memory: {same}")

    rate_mem, rate_lsdb, rate_dask = args.rows / t_mem, args.rows / t_lsdb, args.rows / t_dask
    rate_disk = args.rows / t_disk
    per_worker = args.rows / busy  # rows per second of task compute time, reading and writing included
    rows_per_part = args.rows / n_parts
    print(f"rows {args.rows}, HATS partitions {n_parts} (mean {rows_per_part:.0f} rows), workers {args.workers}")
    print(f"in memory (threads over {os.cpu_count()} cores): {t_mem:6.2f} s  {rate_mem:10.3g} rows/s")
    print(f"lsdb (HATS, LocalCluster):                 {t_lsdb:6.2f} s  {rate_lsdb:10.3g} rows/s")
    print(f"lsdb, HATS in -> HATS out (write_catalog): {t_disk:6.2f} s  {rate_disk:10.3g} rows/s")
    print(f"dask (plain Parquet, LocalCluster):        {t_dask:6.2f} s  {rate_dask:10.3g} rows/s")
    print(
        f"overhead ratio in-memory / lsdb compute: {rate_mem / rate_lsdb:.2f}; / lsdb to disk: "
        f"{rate_mem / rate_disk:.2f}; / dask: {rate_mem / rate_dask:.2f}"
    )
    print(f"per-worker-core throughput, HATS in -> HATS out (task compute time): {per_worker:.3g} rows/s")
    for cores in (2, 64, 512):
        hours = GAIA_DR3_PARALLAXES / (per_worker * cores) / 3600
        print(f"Gaia DR3 ({GAIA_DR3_PARALLAXES:.3g} parallaxes) on {cores:4d} such cores: {hours:8.2f} h")


if __name__ == "__main__":
    main()
