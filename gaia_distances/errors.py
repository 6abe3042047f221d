"""Warning and exception types raised by gaia_distances."""

from __future__ import annotations

__all__ = [
    "ExistingColumnsError",
    "GaiaDistancesError",
    "GaiaDistancesWarning",
    "GaiaQueryError",
    "MissingColumnsError",
    "PosteriorMismatchError",
    "PriorTableError",
]


class GaiaDistancesWarning(UserWarning):
    """The one warning class of the package, so that users can filter it."""


class GaiaDistancesError(Exception):
    """Base class of the package's exceptions."""


class MissingColumnsError(GaiaDistancesError, KeyError):
    """A column the requested step needs is absent from the table."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ExistingColumnsError(GaiaDistancesError, ValueError):
    """The table already has a column the step would write; pass ``overwrite=True`` to replace it."""


class PriorTableError(GaiaDistancesError):
    """The Bailer-Jones et al. (2021) prior table could not be read or found."""


class GaiaQueryError(GaiaDistancesError):
    """A Gaia archive query failed or returned an incomplete result."""


class PosteriorMismatchError(GaiaDistancesError, ValueError):
    """A saved cluster posterior does not belong to the table it was given with."""
