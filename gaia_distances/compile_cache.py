"""A persistent cache of compiled programs, like numba's ``cache=True``.

A cluster fit compiles a handful of XLA programs (the MAP search, the
sampler, the per-star results) for each padded field size; compiling them
takes longer than fitting a small field. The first fit, estimate or CLI call
of a process turns on JAX's persistent compilation cache, so that later
processes load those programs instead of compiling them again:

- the folder is ``gaia_distances/jax`` in the platform's user cache folder
  (``~/.cache/gaia_distances/jax`` on Linux, ``~/Library/Caches/...`` on
  macOS, ``%LOCALAPPDATA%\\...\\Cache`` on Windows), at most
  :data:`MAX_SIZE_BYTES`, least recently used entries dropped;
- ``$GAIA_DISTANCES_JAX_CACHE`` names another folder, or turns the cache off
  when it is empty, ``0``, ``off``, ``false`` or ``no``;
- :func:`set_compilation_cache` does either from Python (it wins over the
  environment), and the CLI's ``--jax-cache DIR`` / ``--no-jax-cache``;
- a folder the user has already given JAX (``jax_compilation_cache_dir``)
  is left alone.

Entries are keyed by the program, the JAX and XLA versions and the machine,
so a stale or foreign entry is never used; reads and writes hold a file lock,
so concurrent processes can share the folder. Nothing happens at import.

JAX finds a compiled program by the program itself, so a fresh process would
still trace every program of a fit (run the model's Python) to find it. The
fit's programs are therefore also kept traced, in the folder's
``gaia_distances-exports`` subfolder (:mod:`gaia_distances.core.exported`,
``jax.export``), keyed by the model, the shapes and a fingerprint of the
package's source and of the JAX, numpyro and blackjax versions; turning the
cache off turns that off too.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

__all__ = [
    "CACHE_ENV",
    "MAX_SIZE_BYTES",
    "compilation_cache_folder",
    "default_compilation_cache_folder",
    "enable_compilation_cache",
    "set_compilation_cache",
]

log = logging.getLogger(__name__)

#: Environment variable naming the cache folder ("" or "0"/"off"/"false"/"no": off).
CACHE_ENV = "GAIA_DISTANCES_JAX_CACHE"
#: Largest size of the cache folder; least recently used entries go beyond it.
MAX_SIZE_BYTES = 2 * 1024**3
#: Programs that compile faster than this (s) are not kept. Small ones are: reading one back takes
#: about 5 ms, compiling it about 17 ms, and a fresh process's fit compiles some seventy of them.
MIN_COMPILE_TIME_S = 0.0
_OFF = ("", "0", "off", "false", "no", "none")

_lock = threading.Lock()
_choice: Path | bool | None = None  # set_compilation_cache's argument (None: the environment's)
_active: Path | None = None  # the folder this module gave JAX


def default_compilation_cache_folder() -> Path:
    """``gaia_distances/jax`` in the platform's user cache folder.

    Examples
    --------
    >>> default_compilation_cache_folder().parts[-2:]
    ('gaia_distances', 'jax')
    """
    import platformdirs

    return Path(platformdirs.user_cache_dir("gaia_distances", appauthor=False)) / "jax"


def _wanted() -> Path | None:
    """The folder the user asks for (``None``: off)."""
    if _choice is not None:
        return _choice if isinstance(_choice, Path) else (default_compilation_cache_folder() if _choice else None)
    env = os.environ.get(CACHE_ENV)
    if env is None:
        return default_compilation_cache_folder()
    return None if env.strip().lower() in _OFF else Path(env).expanduser()


def _apply(folder: Path | None) -> Path | None:
    """Point JAX's persistent cache at ``folder`` (``None``: off); returns the folder in use."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc

    global _active
    if folder is not None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("compilation cache off: cannot create %s (%s)", folder, exc)
            folder = None
    if folder is not None:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_S)
        jax.config.update("jax_compilation_cache_max_size", MAX_SIZE_BYTES)
    jax.config.update("jax_compilation_cache_dir", None if folder is None else str(folder))
    cc.reset_cache()  # a folder changed after the first compile takes effect too
    _active = folder
    return folder


def set_compilation_cache(folder: str | os.PathLike[str] | bool | None = True) -> Path | None:
    """Turn the persistent compilation cache on (``True``: the default folder; or a folder) or off (``False``);
    ``None`` returns to what ``$GAIA_DISTANCES_JAX_CACHE`` (or its absence) says.

    It takes effect at once and wins over ``$GAIA_DISTANCES_JAX_CACHE``.
    Returns the folder in use (``None``: off).

    Examples
    --------
    >>> import tempfile
    >>> folder = set_compilation_cache(tempfile.mkdtemp())
    >>> compilation_cache_folder() == folder
    True
    >>> set_compilation_cache(False) is None
    True
    >>> _ = set_compilation_cache(None)  # back to the environment's choice
    """
    global _choice
    if folder is None or isinstance(folder, bool):
        choice: Path | bool | None = folder
    else:
        choice = Path(folder).expanduser()
    with _lock:
        _choice = choice
        return _apply(_wanted())


def enable_compilation_cache() -> Path | None:
    """Turn the cache on as the user asks, unless JAX already has a folder from elsewhere (called by each fit).

    Returns the folder in use (``None``: off).
    """
    import jax

    with _lock:
        current = jax.config.jax_compilation_cache_dir  # type: ignore[attr-defined]
        if current and (_active is None or Path(current) != _active) and _choice is None:
            return Path(current)  # the user's own JAX setting
        wanted = _wanted()
        if wanted == _active and (current or wanted is None):
            return _active
        return _apply(wanted)


def compilation_cache_folder() -> Path | None:
    """The folder of JAX's persistent compilation cache in use now (``None``: off)."""
    import jax

    current = jax.config.jax_compilation_cache_dir  # type: ignore[attr-defined]
    return Path(current) if current else None
