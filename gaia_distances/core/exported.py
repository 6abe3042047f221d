"""Traced programs kept on disk with ``jax.export``, so that a fresh process skips tracing them.

The persistent compilation cache (:mod:`gaia_distances.compile_cache`) keeps
the compiled executables, but JAX finds an executable by its program, so a
fresh process still traces and lowers every program of a fit to find its key:
for the default fit of a 2 800-star field, about 10 s of Python, as long as
the fit itself. A :class:`Program` keeps its traced program
(``jax.export``'s serialised StableHLO) beside that cache, in
``<cache>/gaia_distances-exports``; a later process reads it back, lowers the
stored module (no Python tracing) and finds the executable in the cache.

A stored program is found by a key of its name, the model and settings it was
built for, its arguments' shapes and dtypes, and a fingerprint of everything
that shapes the trace: the package's source, the versions of jax, jaxlib,
numpyro and blackjax, and JAX's float64 flag. A stale entry is therefore
never used. With the compilation cache off, nothing is stored and programs
are traced as before; a program that cannot be exported or read back is
traced too. Writes go to a temporary file renamed into place, so concurrent
processes never read half a file.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import pickle
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

__all__ = ["KEEP_COMPILED", "MAX_FILES", "CompiledCache", "Program", "export_folder", "fingerprint", "signature"]

log = logging.getLogger(__name__)

#: Stored programs kept at most; the least recently used go first.
MAX_FILES = 256
#: Compiled sizes of one program kept in memory (fields of many sizes would otherwise hold every one).
KEEP_COMPILED = 8
_SUFFIX = ".jaxexport"


@functools.lru_cache(maxsize=1)
def fingerprint() -> str:
    """A hash of what shapes a trace besides the program's own arguments (see the module's docstring)."""
    from importlib import metadata

    h = hashlib.sha256()
    package = Path(__file__).resolve().parents[1]
    for path in sorted(package.rglob("*.py")):
        h.update(str(path.relative_to(package)).encode())
        h.update(path.read_bytes())
    for dist in ("jax", "jaxlib", "numpyro", "blackjax"):
        try:
            h.update(f"{dist}={metadata.version(dist)}".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{dist}=none".encode())
    return h.hexdigest()


def export_folder() -> Path | None:
    """Where programs are stored: beside JAX's persistent compilation cache (``None``: that cache is off)."""
    cache = jax.config.jax_compilation_cache_dir  # type: ignore[attr-defined]
    return Path(cache) / "gaia_distances-exports" if cache else None


def signature(tree: Any) -> tuple[Any, tuple[Any, ...]]:
    """A pytree's structure and its leaves' shapes and dtypes: what a compiled program is specific to."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, tuple((np.shape(x), str(getattr(x, "dtype", type(x).__name__))) for x in leaves)


class CompiledCache(OrderedDict):
    """Compiled programs by key, least recently used dropped beyond ``maxsize``; each built once.

    Fitting many fields of different sizes one by one compiles a program per
    size; an unbounded cache would keep every executable (and its memory
    mappings) alive until the process runs out. Programs of different keys
    build side by side; a second caller of a key being built waits for it.
    """

    def __init__(self, maxsize: int = 48) -> None:
        super().__init__()
        self.maxsize = maxsize
        self.lock = threading.RLock()
        self._building: dict[Any, threading.Lock] = {}

    def get_or_compile(self, key: Any, build: Callable[[], Any]) -> Any:
        with self.lock:
            if key in self:
                self.move_to_end(key)
                return super().__getitem__(key)
            building = self._building.setdefault(key, threading.Lock())
        with building:
            with self.lock:
                if key in self:
                    return super().__getitem__(key)
            value = build()  # outside the cache's lock: compiles of different programs overlap
            with self.lock:
                self[key] = value
                self._building.pop(key, None)
                while len(self) > self.maxsize:
                    self.popitem(last=False)
        return value


class Program:
    """A jitted function whose traced form is stored on disk per argument signature.

    ``name`` and ``parts`` (whose ``repr`` must not depend on the process:
    model and settings, not functions) identify what ``fn`` computes. Call it
    like the jitted function, or take :meth:`compiled` for ahead-of-time use.
    """

    def __init__(self, name: str, fn: Callable[..., Any], *parts: Any) -> None:
        self.name = name
        self.parts = parts
        self.jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
        self._compiled = CompiledCache(KEEP_COMPILED)

    def __call__(self, *args: Any) -> Any:
        return self.compiled(args)(*args)

    def compiled(self, args: tuple[Any, ...]) -> Callable[..., Any]:
        """The program compiled for ``args``' shapes and dtypes (values are not used)."""
        sig = signature(args)
        return self._compiled.get_or_compile(sig, lambda: self._build(args, sig))

    def _key(self, sig: Any) -> str:
        x64 = jax.config.jax_enable_x64  # type: ignore[attr-defined]
        text = repr((self.name, self.parts, str(sig[0]), sig[1], x64, jax.default_backend(), fingerprint()))
        return hashlib.sha256(text.encode()).hexdigest()

    def _build(self, args: tuple[Any, ...], sig: Any) -> Callable[..., Any]:
        folder = export_folder()
        if folder is None:
            return self.jitted.lower(*args).compile()  # type: ignore[attr-defined]
        path = folder / f"{self._key(sig)}{_SUFFIX}"
        stored = _read(path)
        if stored is None:
            stored = self._export(args, sig)
            if stored is not None:
                _write(path, stored)
        if stored is None:
            return self.jitted.lower(*args).compile()  # type: ignore[attr-defined]
        try:
            exported, out_tree = stored
            leaves = jax.tree_util.tree_leaves(args)
            call = jax.jit(exported.call).lower(*leaves).compile()
        except Exception as exc:  # a stored program this JAX cannot run: trace it instead
            log.debug("stored program %s unusable (%s); tracing it", self.name, exc)
            return self.jitted.lower(*args).compile()  # type: ignore[attr-defined]

        def run(*a: Any) -> Any:
            return jax.tree_util.tree_unflatten(out_tree, call(*jax.tree_util.tree_leaves(a)))

        return run

    def _export(self, args: tuple[Any, ...], sig: Any) -> tuple[Any, Any] | None:
        in_tree = sig[0]
        out: dict[str, Any] = {}

        def flat(*leaves: Any) -> Any:
            result = self.jitted(*jax.tree_util.tree_unflatten(in_tree, leaves))
            flat_out, out["tree"] = jax.tree_util.tree_flatten(result)
            return flat_out

        specs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in jax.tree_util.tree_leaves(args)]
        try:
            exported = jax.export.export(jax.jit(flat))(*specs)
        except Exception as exc:  # e.g. a host callback: such a program is traced every time
            log.debug("program %s cannot be exported (%s)", self.name, exc)
            return None
        return exported, out["tree"]


def _read(path: Path) -> tuple[Any, Any] | None:
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    try:
        record = pickle.loads(blob)
        exported = jax.export.deserialize(bytearray(record["exported"]))
        os.utime(path)  # recently used
        return exported, record["out_tree"]
    except Exception as exc:  # a damaged or foreign file: trace again and replace it
        log.debug("unreadable stored program %s (%s)", path.name, exc)
        return None


def _write(path: Path, stored: tuple[Any, Any]) -> None:
    exported, out_tree = stored
    try:
        blob = pickle.dumps({"exported": bytes(exported.serialize()), "out_tree": out_tree})
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
        _prune(path.parent)
    except Exception as exc:  # a read-only or full disk: the program still runs
        log.debug("could not store program %s (%s)", path.name, exc)


def _prune(folder: Path) -> None:
    files = sorted(folder.glob(f"*{_SUFFIX}"), key=lambda p: p.stat().st_mtime)
    for old in files[: max(len(files) - MAX_FILES, 0)]:
        old.unlink(missing_ok=True)
