"""The cluster model's priors, :class:`ClusterPriors`: every field checked when they are made.

The priors are a hashable ``NamedTuple`` (the compiled programs are keyed on
them, closed over, never traced); :mod:`~gaia_distances.core.population`
turns them into the prior density of the unconstrained parameters.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, NamedTuple, Self

import numpy as np

__all__ = ["DEPTH_PRIORS", "ClusterPriors"]


class _PriorFields(NamedTuple):
    """The fields of :class:`ClusterPriors` and their defaults (unchecked: build a ``ClusterPriors``)."""

    log_L_mu: float = math.log(370.0)
    log_L_sd: float = 2.0
    log_D_mu: float = math.log(920.0)
    log_D_sd: float = 2.0
    log_sigma_mu: float = 0.0
    log_sigma_sd: float = 2.0
    Q_a: float = 1.0
    Q_b: float = 1.0
    depth_prior: str = "log_sigma"
    size_min_pc: float = 0.3
    size_max_pc: float = 40.0
    pm_sd: float = 50.0
    sigma_v_median: float = 1.0
    sigma_v_log_sd: float = 1.5
    field_smoothness: float = 1.0
    v_r_sd: float = 50.0


#: The depth priors :class:`ClusterPriors` knows: a log-normal ``sigma`` (in ``ln r``) or a log-uniform size (pc).
DEPTH_PRIORS = ("log_sigma", "size")
#: The prior means (any finite number); every other numeric field is a scale, shape or size: finite and > 0.
_PRIOR_MEANS = ("log_L_mu", "log_D_mu", "log_sigma_mu")


def _checked_prior_field(name: str, value: Any) -> float:
    """``value`` as a float, or ``ValueError`` naming ``ClusterPriors.<name>`` and what it must be."""
    what = "a finite number" if name in _PRIOR_MEANS else "a positive finite number"
    try:
        if isinstance(value, str | bytes | bool | np.bool_):
            raise TypeError
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"ClusterPriors.{name} must be {what}; got {value!r}") from None
    if not math.isfinite(x) or (name not in _PRIOR_MEANS and x <= 0):
        raise ValueError(f"ClusterPriors.{name} must be {what}; got {value!r}")
    return x


class ClusterPriors(_PriorFields):
    """Normal priors on ``ln L``, ``ln D`` (pc) and the depth; ``Q ~ Beta(a, b)``.

    The defaults are the reference analysis: ``ln L ~ N(ln 370, 2)``,
    ``ln D ~ N(ln 920, 2)``, ``ln sigma ~ N(0, 2)``, ``Q ~ Uniform(0, 1)``.

    With ``depth_prior="size"`` the depth prior is on the cluster's
    line-of-sight size ``sigma * D`` in pc instead: log-uniform between
    ``size_min_pc`` and ``size_max_pc`` (see :meth:`physical`).

    With proper motions the cluster's mean proper motion has a
    ``N(0, pm_sd)`` prior per component (mas/yr) and its velocity dispersion
    ``sigma_v`` a log-normal one with median ``sigma_v_median`` (km/s) and
    ``sigma_v_log_sd``. ``field_smoothness`` is the random-walk scale of the
    flexible field's log weights between neighbouring bins
    (:mod:`~gaia_distances.core.field_bins`). The field's proper-motion
    priors are fixed and broad (:data:`FIELD_PM_PRIORS`). With the
    perspective projection the cluster's radial velocity has a ``N(0,
    v_r_sd)`` prior (km/s).

    Every field is checked when the priors are made: the means
    (``log_L_mu``, ``log_D_mu``, ``log_sigma_mu``) must be finite, every
    other number (the sds, ``Q_a``, ``Q_b``, the sizes, ``pm_sd``,
    ``sigma_v_median``, ``sigma_v_log_sd``, ``field_smoothness``,
    ``v_r_sd``) finite and positive, ``size_min_pc < size_max_pc``, and
    ``depth_prior`` one of :data:`DEPTH_PRIORS`; a ``ValueError`` names the
    field otherwise. The numbers are kept as floats.

    Examples
    --------
    >>> ClusterPriors(log_D_sd=-1.0)
    Traceback (most recent call last):
    ...
    ValueError: ClusterPriors.log_D_sd must be a positive finite number; got -1.0
    """

    __slots__ = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> ClusterPriors:
        try:
            fields = _PriorFields(*args, **kwargs)
        except TypeError as exc:  # an unknown or repeated field
            raise TypeError(str(exc).replace("_PriorFields.__new__()", "ClusterPriors()")) from None
        values: dict[str, Any] = {
            k: v if k == "depth_prior" else _checked_prior_field(k, v) for k, v in fields._asdict().items()
        }
        if values["depth_prior"] not in DEPTH_PRIORS:
            raise ValueError(f"ClusterPriors.depth_prior must be one of {DEPTH_PRIORS}; got {values['depth_prior']!r}")
        if not values["size_min_pc"] < values["size_max_pc"]:
            raise ValueError(
                "ClusterPriors needs size_min_pc < size_max_pc; "
                f"got size_min_pc={values['size_min_pc']!r}, size_max_pc={values['size_max_pc']!r}"
            )
        return super().__new__(cls, **values)

    @classmethod
    def _make(cls, iterable: Iterable[Any]) -> Self:  # type: ignore[override]  # ``_replace`` calls it: checked
        return cls(*iterable)

    @classmethod
    def reference(cls) -> ClusterPriors:
        """The priors of the reference M67 analysis."""
        return cls()

    @classmethod
    def physical(cls, *, size_min_pc: float = 0.3, size_max_pc: float = 40.0, **kw: Any) -> ClusterPriors:
        """A cluster whose line-of-sight size ``sigma * D`` lies in ``[size_min_pc, size_max_pc]``.

        The size is log-uniform in that range. Open clusters are a few pc deep,
        so the cluster component can no longer swallow the bulk of a big field
        (which a soft prior cannot prevent: tens of thousands of field stars
        outweigh any prior). ``kw`` overrides the other fields.
        """
        return cls(depth_prior="size", size_min_pc=size_min_pc, size_max_pc=size_max_pc, **kw)

    @property
    def log_size_range(self) -> tuple[float, float]:
        """``ln`` of the allowed size range (pc) under ``depth_prior="size"``."""
        return math.log(self.size_min_pc), math.log(self.size_max_pc)
