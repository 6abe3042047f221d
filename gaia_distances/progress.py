"""Progress bars for long steps (tqdm on standard error)."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["PROGRESS_THRESHOLD", "progress_bar"]

#: Row count above which a step shows a progress bar by default.
PROGRESS_THRESHOLD = 200_000


def progress_bar(total: int, enabled: bool | None, desc: str, unit: str = "star") -> Any:
    """A ``tqdm`` bar, or ``None`` when disabled.

    ``enabled=None`` shows one for ``total >= PROGRESS_THRESHOLD``.
    """
    if enabled is None:
        enabled = total >= PROGRESS_THRESHOLD
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False)
