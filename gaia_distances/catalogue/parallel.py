"""Running one task per cluster: in this process, or on a ``distributed`` cluster, results as they complete.

The driver (this process) receives each result as its task ends
(``as_completed``) and hands it to ``on_result``, which writes it: workers
never write, so each file has one writer. A progress bar counts clusters
(:mod:`gaia_distances.progress`).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from gaia_distances.progress import progress_bar

__all__ = ["check_workers", "run_tasks"]

log = logging.getLogger(__name__)


def check_workers(workers: Any, client: Any) -> int | None:
    """``workers`` as ``None`` or an integer >= 1, and not together with ``client``; else ``ValueError``."""
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be None or an integer >= 1; got {workers!r}")
        if client is not None:
            raise ValueError("give workers (a local cluster is started) or client (an existing one), not both")
    return workers


def _require_distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(
            'workers > 1 or a client needs dask.distributed: pip install "gaia-distances[scale]"'
        ) from exc
    return distributed


@contextlib.contextmanager
def _dask_client(workers: int | None, client: Any) -> Iterator[Any]:
    """The given client (a ``distributed.Client`` or a scheduler address), or a local cluster of processes."""
    distributed = _require_distributed()
    if client is not None and not isinstance(client, str):
        yield client
        return
    if isinstance(client, str):
        with distributed.Client(client) as c:
            yield c
        return
    cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    try:
        with distributed.Client(cluster) as c:
            yield c
    finally:
        cluster.close()


def run_tasks(
    items: Sequence[Any],
    task: Callable[..., Any],
    on_result: Callable[[Any, Any], None],
    on_lost: Callable[[Any, BaseException], Any],
    *,
    shared: Sequence[Any] = (),
    workers: int | None = None,
    client: Any = None,
    progress: bool | None = None,
) -> None:
    """``on_result(item, task(item, *shared))`` for each item, in the order the tasks end.

    ``shared`` are the arguments every task takes after its item (the
    source, the settings): on Dask they are sent to every worker once
    (``Client.scatter``), and each task refers to those copies.

    ``workers`` ``None`` or 1 without ``client``: one after another in this
    process, without Dask. Otherwise each task runs on a ``distributed``
    worker (a local cluster of ``workers`` processes with one thread each,
    so each runs one task at a time; or ``client``), and ``on_result`` runs
    here as each ends. A task whose worker died (or that raised despite
    catching its own errors) is given to ``on_lost(item, error)``, whose
    return value is then handed to ``on_result``.
    """
    shown = sys.stderr.isatty() if progress is None else progress
    with progress_bar(len(items), shown, "clusters", unit="cluster") as update:
        if client is None and (workers is None or workers == 1):
            for item in items:
                on_result(item, task(item, *shared))
                if update is not None:
                    update(1)
            return
        distributed = _require_distributed()
        with _dask_client(workers, client) as c:
            copies = c.scatter(list(shared), broadcast=True, hash=False) if shared else []
            futures = {c.submit(task, item, *copies, pure=False): item for item in items}
            log.info("fit_catalogue: %d clusters on %d workers", len(items), len(c.scheduler_info()["workers"]))
            try:
                for future in distributed.as_completed(list(futures)):
                    item = futures.pop(future)  # released once read: a dead worker's finished fits are not
                    try:  # recomputed, and the workers hold no result for the rest of the run
                        result = future.result()
                    except Exception as exc:  # a worker lost, a task that could not be pickled
                        result = on_lost(item, exc)
                    future.release()
                    on_result(item, result)
                    if update is not None:
                        update(1)
            finally:
                c.cancel(list(futures))
