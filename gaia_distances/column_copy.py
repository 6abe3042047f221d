"""Copies of table columns that keep everything they carry: unit, description, format, meta and mask.

:func:`~gaia_distances.columns.normalise_columns` passes the columns that
are not the Gaia archive's (the user's, or those a step of this package
added) through :func:`copy_column`, untouched.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from astropy.table import Column, MaskedColumn

__all__ = ["copy_column", "copy_info"]


def copy_column(col: Any, key: str) -> Any:
    """A copy of ``col`` named ``key``, with its unit, description, format, meta and mask.

    Function units such as ``dex(cm / s2)`` are kept too. Only the mask of
    a floating-point column that hides nothing but NaN (as FITS and VOTable
    readers put on every NaN, or on no row) is dropped, so that the column
    reads as the NaN it holds.
    """
    if not hasattr(col, "info"):
        return np.array(col, copy=True)
    new = col.copy()
    new.info.name = key
    if isinstance(new, Column) and new.unit is not None and str(new.unit) == "":
        new.unit = None  # an empty unit string: no unit
    mask = getattr(new, "mask", None)
    if mask is None or np.ndim(mask) == 0:
        return new
    values = np.asarray(getattr(new, "unmasked", np.ma.getdata(new)))
    if values.dtype.kind != "f" or not np.all(np.isnan(values[np.asarray(mask)])):
        return new
    plain = new.filled(np.nan) if isinstance(new, MaskedColumn) else new.unmasked
    copy_info(new, plain)
    return plain


def copy_info(src: Any, dst: Any) -> None:
    """Give ``dst`` the description, format and meta of ``src`` (where ``src`` has them)."""
    info = getattr(src, "info", None)
    if info is None:
        return
    for attr in ("description", "format"):
        value = getattr(info, attr, None)
        if value is not None:
            setattr(dst.info, attr, value)
    if info.meta:
        dst.info.meta = dict(info.meta)
