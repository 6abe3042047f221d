"""A user's covariance kernel ``V(theta_deg)``, evaluated as the package needs it (pure NumPy).

A user may give any callable: :func:`evaluate_kernel` makes its result one
float per separation (a scalar, a constant kernel, is broadcast) or raises a
``ValueError`` that names the callable. :class:`UserKernel` wraps a callable
so that every evaluation goes through it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["KernelFunction", "UserKernel", "callable_name", "evaluate_kernel"]

#: A covariance kernel: angular separation (deg) -> covariance (mas^2, or (mas/yr)^2 for proper motions).
KernelFunction = Callable[[np.ndarray], np.ndarray]


def callable_name(fn: object) -> str:
    """A user callable's qualified name (``my_kernel``, ``<lambda>``), else its repr."""
    if isinstance(fn, UserKernel):
        fn = fn.function
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn))


class UserKernel:
    """A user's ``V(theta_deg)``, evaluated with :func:`evaluate_kernel` (a scalar result is broadcast).

    Its repr is that of the user's callable, so messages name the user's own function.
    """

    def __init__(self, function: KernelFunction) -> None:
        self.function = function

    def __call__(self, theta_deg: np.ndarray) -> np.ndarray:
        return evaluate_kernel(self.function, theta_deg)

    def __repr__(self) -> str:
        return repr(self.function)


def evaluate_kernel(function: KernelFunction, theta_deg: np.ndarray | float) -> np.ndarray:
    """``function(theta_deg)`` as float64 of ``theta_deg``'s shape: a scalar result (a constant kernel) is broadcast.

    Raises
    ------
    ValueError
        When the result is neither a number nor an array of that shape, naming the function.

    Examples
    --------
    >>> evaluate_kernel(lambda theta: 2.0, np.zeros((2, 2))).tolist()
    [[2.0, 2.0], [2.0, 2.0]]
    """
    theta = np.asarray(theta_deg, dtype=float)
    if isinstance(function, UserKernel):
        return function(theta)
    name = callable_name(function)
    try:
        values = np.asarray(function(theta), dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"systematics kernel {name} must return numbers (mas^2) for separations in deg; it gave: {err}"
        ) from None
    if values.ndim == 0:
        return np.full(theta.shape, float(values))
    if values.shape != theta.shape:
        raise ValueError(
            f"systematics kernel {name} returned shape {values.shape} for separations of shape {theta.shape}; "
            "it must return one value per separation (or one number for a constant kernel)"
        )
    return values
