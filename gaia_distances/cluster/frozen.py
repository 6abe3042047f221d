"""Read-only copies of a fit's results, and their plain (picklable, JSON-ready) form.

:func:`read_only` copies an array and marks it unwritable; :func:`freeze`
makes a read-only deep copy of nested results (mappings become
``MappingProxyType``, lists tuples, arrays read-only); :func:`thaw` gives
back plain dicts and lists.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

__all__ = ["freeze", "read_only", "thaw"]


def read_only(x: Any) -> np.ndarray:
    """A copy of ``x`` as an array that cannot be written to."""
    x = np.array(x)
    x.flags.writeable = False
    return x


def freeze(obj: Any) -> Any:
    """A read-only deep copy: mappings become ``MappingProxyType``, lists tuples, arrays read-only.

    Examples
    --------
    >>> frozen = freeze({"stages": ["pilot"], "r_hat": {"D": 1.0}})
    >>> frozen["stages"], type(frozen["r_hat"]).__name__
    (('pilot',), 'mappingproxy')
    """
    if isinstance(obj, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in obj.items()})
    if isinstance(obj, list | tuple):
        return tuple(freeze(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return read_only(obj)
    return obj


def thaw(obj: Any) -> Any:
    """The plain form of :func:`freeze`'s output: dicts and lists.

    Examples
    --------
    >>> thaw(freeze({"stages": ["pilot"], "r_hat": {"D": 1.0}}))
    {'stages': ['pilot'], 'r_hat': {'D': 1.0}}
    """
    if isinstance(obj, Mapping):
        return {k: thaw(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return [thaw(v) for v in obj]
    return obj
