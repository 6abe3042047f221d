"""Which data and options a cluster fit used: a fingerprint that ties a saved posterior to its table.

:func:`~gaia_distances.fit_cluster` records a fingerprint in the table's
provenance (``meta["gaia_distances"]["cluster"]["fingerprint"]``) and
:meth:`~gaia_distances.ClusterFit.to_netcdf` copies it into the posterior
file. :meth:`~gaia_distances.ClusterFit.from_table` computes it again from
the table, selecting the stars as the fit did, and refuses a posterior whose
fingerprint differs: a posterior of another fit would otherwise be reported
as this table's.

The fingerprint has three parts, each a SHA-256 digest, so that a mismatch
can say what differs: ``rows`` (the fitted rows' positions and
``source_id``), ``data`` (the parallaxes, errors and zero points the fit
used, and the proper motions and positions where it used them) and
``options`` (the fit's options, also kept in full under ``fit_options``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from astropy.table import Table

from gaia_distances.cluster.stars import FittedStars
from gaia_distances.columns import warn
from gaia_distances.errors import PosteriorMismatchError
from gaia_distances.io import json_default

__all__ = [
    "FINGERPRINT_ATTR",
    "FIT_OPTIONS",
    "PosteriorMismatchError",
    "check_posterior_belongs",
    "describe_mismatch",
    "fit_fingerprint",
    "fit_options",
]

#: The provenance entries that decide a fit's result (besides its stars).
FIT_OPTIONS = (
    "method",
    "prior",
    "kinematics",
    "field",
    "n_field_pm",
    "perspective",
    "zero_point_arg",
    "parallax_limits",
    "truncate",
    "num_warmup",
    "num_samples",
    "num_chains",
    "target_accept_prob",
    "extend",
    "seed",
)

#: Attribute of a saved posterior (its ``posterior`` group) that holds its fit's fingerprint, as JSON.
FINGERPRINT_ATTR = "gaia_distances_fingerprint"

#: Version of the fingerprint's recipe, so that a later recipe is not mistaken for a mismatch.
RECIPE = 2


def _canonical(value: Any) -> str:
    """JSON with sorted keys, tuples as lists and NumPy scalars as Python numbers."""
    return json.dumps(value, sort_keys=True, default=json_default)


def fit_options(provenance: Mapping[str, Any]) -> dict[str, Any]:
    """The options of a fit, from its provenance record, in canonical (JSON) form.

    Includes the systematics kernel (a user's by its callable's qualified
    name) and the offset prior where the fit used them.
    """
    options = {k: provenance.get(k) for k in FIT_OPTIONS}
    if provenance.get("terms"):  # the model's terms (absent without: older digests stand)
        options["terms"] = list(provenance["terms"])
    sys = provenance.get("systematics") or {}
    options["systematics"] = sys.get("kernel") if isinstance(sys, Mapping) else str(sys)
    if isinstance(sys, Mapping) and sys.get("kernel_function"):  # a user's kernel: which one
        options["systematics"] = f"{sys.get('kernel')}: {sys['kernel_function']}"
    if isinstance(sys, Mapping):
        options["offset_prior"] = [sys.get("offset_prior_mean_mas"), sys.get("offset_prior_sigma_mas")]
    return json.loads(_canonical(options))


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def _float_bytes(values: np.ndarray | None) -> bytes:
    if values is None:
        return b"none"
    x = np.asarray(values, dtype="<f8").copy()
    x[np.isnan(x)] = np.nan  # one NaN pattern
    return x.tobytes()


def _source_ids(table: Table, rows: np.ndarray) -> bytes:
    if "source_id" not in table.colnames:
        return b"none"
    ids = np.ma.asarray(table["source_id"])[rows]
    if ids.dtype.kind not in "iu":
        return _canonical([str(v) for v in ids.tolist()]).encode()
    return np.ma.filled(ids.astype("<i8"), -1).tobytes()


def fit_fingerprint(table: Table, stars: FittedStars, provenance: Mapping[str, Any]) -> dict[str, Any]:
    """The fingerprint of a fit: digests of its rows, their data and its options.

    Parameters
    ----------
    table
        The fit's table (the fitted rows are ``stars.rows`` of it).
    stars
        The stars the fit used.
    provenance
        The fit's provenance record (``meta["gaia_distances"]["cluster"]``).

    Returns
    -------
    dict
        ``recipe``, ``n_stars``, ``rows``, ``data`` and ``options`` (hex
        digests), and ``fit_options`` (:func:`fit_options`).
    """
    rows = np.asarray(stars.rows, dtype="<i8")
    data = [_float_bytes(getattr(stars, name)) for name in stars._fields if name not in ("rows", "terms")]
    for term, columns in sorted((stars.terms or {}).items()):  # (absent without terms: older digests stand)
        data += [term.encode(), *(_float_bytes(columns[k]) for k in sorted(columns))]
    options = fit_options(provenance)
    return {
        "recipe": RECIPE,
        "n_stars": int(rows.size),
        "rows": _digest(rows.tobytes(), _source_ids(table, rows)),
        "data": _digest(*data),
        "options": _digest(_canonical(options).encode()),
        "fit_options": options,
    }


def describe_mismatch(saved: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    """What differs between two fingerprints, in words (empty if they agree)."""
    if saved.get("recipe") != now.get("recipe"):
        return ""  # another recipe: cannot be compared
    parts = []
    if saved.get("rows") != now.get("rows"):
        n0, n1 = saved.get("n_stars"), now.get("n_stars")
        count = f" ({n0} stars in the posterior's fit, {n1} in the table's)" if n0 != n1 else ""
        parts.append(f"the fitted rows (their order or source_id) differ{count}")
    if saved.get("data") != now.get("data"):
        parts.append("the fitted parallaxes, errors or zero points differ")
    if saved.get("options") != now.get("options"):
        a, b = saved.get("fit_options") or {}, now.get("fit_options") or {}
        keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        named = "; ".join(
            f"{k}: {_canonical(a.get(k))} in the posterior's fit, {_canonical(b.get(k))} in the table's" for k in keys
        )
        parts.append(f"the fit options differ ({named})" if named else "the fit options differ")
    return "; ".join(parts)


def check_posterior_belongs(idata: Any, now: Mapping[str, Any], table_name: str, post_name: str) -> None:
    """Refuse a posterior whose fingerprint is not ``now`` (the table's); warn if it has none.

    ``idata`` is the posterior (arviz ``InferenceData``); ``table_name`` and
    ``post_name`` name the table and the posterior in the messages.
    """
    text = idata.posterior.attrs.get(FINGERPRINT_ATTR)
    if text is None:
        warn(
            f"{post_name} records no fingerprint of its fit (saved by an earlier version), so it cannot be "
            f"checked against {table_name}; make sure it is the posterior of the fit that wrote the table"
        )
        return
    try:
        saved = json.loads(str(text))
    except ValueError:
        raise PosteriorMismatchError(f"{post_name} has an unreadable fit fingerprint ({FINGERPRINT_ATTR})") from None
    differs = describe_mismatch(saved, now)
    if differs:
        raise PosteriorMismatchError(
            f"the posterior {post_name} is not from the fit that wrote {table_name}: {differs}. "
            "Pass the posterior saved with this table (cluster --save-posterior, ClusterFit.to_netcdf)"
        )
