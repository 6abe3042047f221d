"""The ``cluster_flag`` column: its bits (:class:`ClusterFlag`) and their meanings, written once.

The enum's reference and the column's description (:func:`flag_description`)
are both made from :data:`_FLAG_MEANINGS`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

__all__ = ["ClusterFlag", "flag_description"]


class ClusterFlag(enum.IntFlag):
    """Bits of the ``cluster_flag`` column (0: the star was used in the fit); each bit's :attr:`meaning`."""

    OK = 0
    NO_PARALLAX = 1
    OUTSIDE_LIMITS = 2
    NOT_FITTED = 4
    NO_PROPER_MOTION = 8
    IMPOSSIBLE_PROPER_MOTION = 16

    @property
    def meaning(self) -> str:
        """What the bit means, in a few words (the column's description lists them)."""
        return _FLAG_MEANINGS[self][0]


#: Each bit's meaning: a few words (for the column's description) and the whole of it (for the reference).
_FLAG_MEANINGS = {
    ClusterFlag.NO_PARALLAX: (
        "no parallax (not fitted)",
        "no parallax, or a missing, zero or negative error: excluded, results NaN",
    ),
    ClusterFlag.OUTSIDE_LIMITS: (
        "outside parallax_limits (not fitted)",
        "outside ``parallax_limits``: excluded, results NaN",
    ),
    ClusterFlag.NOT_FITTED: (
        "its cluster not fitted",
        "(``fit_clusters``) the row's cluster could not be fitted, or its group key is missing",
    ),
    ClusterFlag.NO_PROPER_MOTION: (
        "no usable proper motion (parallax only)",
        "(kinematic fits) no usable proper motion (none, a bad error, a correlation outside [-1, 1], or no "
        "position where the other stars have one): fitted with its parallax alone",
    ),
    ClusterFlag.IMPOSSIBLE_PROPER_MOTION: (
        "impossible proper motion (not fitted)",
        "(kinematic fits) a proper motion no star could have (a tangential speed above "
        "``MAX_TANGENTIAL_SPEED_KMS`` even at the nearest distance its parallax allows; a spurious "
        "astrometric solution): excluded, results NaN",
    ),
}
ClusterFlag.__doc__ = "\n".join(
    [
        "Bits of the ``cluster_flag`` column (0: the star was used in the fit).",
        "",
        *(f"- ``{flag.name}`` = {int(flag)}: {whole}" for flag, (_, whole) in _FLAG_MEANINGS.items()),
    ]
)


def flag_description(flags: Sequence[ClusterFlag]) -> str:
    """The ``cluster_flag`` column's description, listing the bits ``flags`` a fit can set.

    Examples
    --------
    >>> flag_description([ClusterFlag.NO_PARALLAX, ClusterFlag.OUTSIDE_LIMITS])
    'ClusterFlag bits: 1 no parallax (not fitted), 2 outside parallax_limits (not fitted)'
    """
    return "ClusterFlag bits: " + ", ".join(f"{int(flag)} {flag.meaning}" for flag in flags)
