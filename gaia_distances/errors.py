"""Warning and exception types raised by gaia_distances, and the one-line form of an exception in messages."""

from __future__ import annotations

__all__ = [
    "ExistingColumnsError",
    "GaiaDistancesError",
    "GaiaDistancesWarning",
    "GaiaQueryError",
    "MissingColumnsError",
    "PosteriorMismatchError",
    "PriorTableError",
    "TooFewStarsError",
    "one_line",
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


class TooFewStarsError(GaiaDistancesError):
    """A fit has too few stars with the data it needs (parallaxes, or the proper motions or a model term's
    columns that it was told to use)."""


class PosteriorMismatchError(GaiaDistancesError, ValueError):
    """A saved cluster posterior does not belong to the table it was given with."""


def one_line(exc: BaseException | str, *, with_type: bool = False, limit: int | None = None) -> str:
    r"""An exception's message on one line (its whitespace collapsed), for a message that quotes it.

    ``with_type`` prefixes the exception's class name; ``limit`` cuts the text
    to that many characters, ending in ``...``.

    Examples
    --------
    >>> one_line(ValueError("bad\n   value"), with_type=True)
    'ValueError: bad value'
    >>> one_line(OSError(), limit=7), one_line(KeyError("x" * 10), limit=8)
    ('OSError', "'xxxx...")
    """
    text = " ".join(str(exc).split()) or type(exc).__name__
    if with_type and isinstance(exc, BaseException):
        text = f"{type(exc).__name__}: {text}"
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."
