"""Progress bars for long steps (tqdm on standard error)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["PROGRESS_THRESHOLD", "progress_bar", "show_progress"]

#: Row count above which a step shows a progress bar by default.
PROGRESS_THRESHOLD = 200_000


def show_progress(total: int, enabled: bool | None) -> bool:
    """Whether to show progress: ``enabled``, or for ``total >= PROGRESS_THRESHOLD`` when it is ``None``."""
    return total >= PROGRESS_THRESHOLD if enabled is None else bool(enabled)


@contextmanager
def progress_bar(
    total: int, enabled: bool | None, desc: str, unit: str = "star"
) -> Iterator[Callable[[int], None] | None]:
    """A ``tqdm`` bar's ``update`` (``None`` when disabled), closed on exit.

    ``enabled=None`` shows one for ``total >= PROGRESS_THRESHOLD``.
    """
    if not show_progress(total, enabled):
        yield None
        return
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False) as bar:
        yield bar.update
