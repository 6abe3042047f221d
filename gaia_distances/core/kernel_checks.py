"""Checks that a user's systematics kernel is a covariance (pure NumPy).

:func:`check_kernel` checks its values on a grid of separations;
:func:`check_covariance_psd` checks its matrix over a set of stars. The
published kernels (:func:`is_published`) are known and pass unchecked.
"""

from __future__ import annotations

import numpy as np

from gaia_distances.core.systematics import (
    SYSTEMATICS_KERNELS,
    Component,
    SystematicsKernel,
    angular_separation,
    pair_covariance,
    star_scales,
)
from gaia_distances.core.user_kernel import callable_name, evaluate_kernel

__all__ = ["check_covariance_psd", "check_kernel", "is_published", "kernel_label"]


def kernel_label(kernel: SystematicsKernel) -> str:
    """How messages name a kernel: its registry name, or ``custom kernel <the callable's name>``.

    Examples
    --------
    >>> from gaia_distances.core.systematics import get_kernel
    >>> def my_kernel(theta):
    ...     return 1e-4 * np.exp(-theta)
    >>> kernel_label(get_kernel("vasiliev2021")), kernel_label(get_kernel(my_kernel))
    ("'vasiliev2021'", 'custom kernel my_kernel')
    """
    if kernel.name != "custom":
        return repr(kernel.name)
    return f"custom kernel {callable_name(kernel.parallax)}"


def _check_separations(max_separation: float) -> np.ndarray:
    """The separations (deg) a kernel is checked at: 0 to ``max_separation``, dense below a degree."""
    top = float(np.clip(max_separation, 1e-6, 180.0))
    return np.unique(np.concatenate([[0.0], np.geomspace(min(1e-4, top), top, 400), np.linspace(0.0, top, 361)]))


def _where(theta: np.ndarray, bad: np.ndarray) -> str:
    """The separations (deg) flagged in ``bad``, as ranges: ``0.3-2 deg, 40-180 deg``."""
    idx = np.flatnonzero(bad)
    runs = np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1)
    parts = [f"{theta[r[0]]:.4g}" if r.size == 1 else f"{theta[r[0]]:.4g}-{theta[r[-1]]:.4g}" for r in runs[:4]]
    return ", ".join(parts) + (", ..." if len(runs) > 4 else "") + " deg"


def is_published(kernel: SystematicsKernel) -> bool:
    """Whether ``kernel`` is one of :data:`SYSTEMATICS_KERNELS`, whose properties are known and tested.

    Examples
    --------
    >>> from gaia_distances.core.systematics import get_kernel
    >>> is_published(get_kernel("maiz-apellaniz2021")), is_published(get_kernel(lambda theta: 1e-4))
    (True, False)
    """
    return any(kernel is k for k in SYSTEMATICS_KERNELS.values())


def check_kernel(kernel: SystematicsKernel, max_separation: float = 180.0) -> None:
    """Check a user's kernel on a grid of separations from 0 to ``max_separation`` (deg).

    Each of its components (parallax, and proper motion if it has one) must
    return one finite number per separation (a scalar is broadcast), positive
    at 0, and no larger in magnitude than at 0 (``|V(theta)| <= V(0)``, which
    every covariance of two stars needs). The published kernels
    (:func:`is_published`) pass unchecked: Maiz Apellaniz et al. (2021) is
    known not to be a covariance (its oscillating term rises 0.4 % above
    ``V(0)`` near 0.04 deg), and is clipped where that matters.

    Raises
    ------
    ValueError
        Naming the kernel (:func:`kernel_label`) and the separations where it fails.

    Examples
    --------
    >>> from gaia_distances.core.systematics import get_kernel
    >>> def my_kernel(theta):
    ...     return -1e-4 + 0 * theta
    >>> check_kernel(get_kernel(my_kernel))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: parallax systematics custom kernel my_kernel: V(0) must be positive (mas^2), got -0.0001; ...
    """
    if is_published(kernel):
        return
    theta = _check_separations(max_separation)
    label = kernel_label(kernel)
    components: tuple[Component, ...] = ("parallax",) if kernel.proper_motion is None else ("parallax", "proper_motion")
    for component in components:
        what = f"{component.replace('_', '-')} systematics {label}"
        v = evaluate_kernel(kernel.function(component), theta)
        bad = ~np.isfinite(v)
        if bad.any():
            raise ValueError(f"{what} must return finite values; it gives NaN or inf at {_where(theta, bad)}")
        if not v[0] > 0:
            raise ValueError(f"{what}: V(0) must be positive (mas^2), got {v[0]:.4g}; pass None for no systematics")
        bad = np.abs(v) > v[0] * (1.0 + 1e-9)
        if bad.any():
            raise ValueError(
                f"{what} is not a covariance: |V(theta)| exceeds V(0) = {v[0]:.4g} mas^2 at {_where(theta, bad)}"
            )


def check_covariance_psd(
    kernel: SystematicsKernel,
    ra: np.ndarray,
    dec: np.ndarray,
    g: np.ndarray | None = None,
    *,
    max_stars: int = 1000,
    rtol: float = 1e-6,
    seed: int = 0,
) -> None:
    """Check that the kernel's covariance matrix over the stars at (ra, dec) [deg] is positive semi-definite.

    The smallest eigenvalue of ``V(theta_ij)`` (with the kernel's magnitude
    scaling when ``g`` is given) must be at least ``-rtol`` times its largest
    diagonal entry: the matrix plus that much on its diagonal must have a
    Cholesky factor (the eigenvalues are computed only to report a failure).
    Stars with a NaN position take no part; above ``max_stars`` a seeded
    random subset is checked (a principal submatrix: if it fails, the whole
    matrix does).

    Raises
    ------
    ValueError
        Naming the kernel, the most negative eigenvalue and the widest separation checked.

    Examples
    --------
    >>> from gaia_distances.core.systematics import get_kernel
    >>> check_covariance_psd(get_kernel("lindegren2021"), [10.0, 10.5], [0.0, 0.0])
    """
    ra, dec = np.asarray(ra, dtype=float).ravel(), np.asarray(dec, dtype=float).ravel()
    s_all = star_scales(kernel, g, ra.size)
    keep = np.flatnonzero(np.isfinite(ra) & np.isfinite(dec))
    if keep.size > max_stars:
        keep = np.sort(np.random.default_rng(seed).choice(keep, max_stars, replace=False))
    if keep.size < 2:
        return
    ra, dec = ra[keep], dec[keep]
    s = None if s_all is None else s_all[keep]
    scales = None if s is None else (s[:, None], s[None, :])
    c = pair_covariance(kernel, ra[:, None], dec[:, None], ra[None, :], dec[None, :], scales=scales)
    scale = float(np.max(np.diag(c)))
    try:  # positive semi-definite to within rtol: a Cholesky factor with that jitter exists
        np.linalg.cholesky(c + (rtol * scale) * np.eye(keep.size))
        return
    except np.linalg.LinAlgError:
        pass
    low = float(np.linalg.eigvalsh(c)[0])  # only to say by how much
    if low < -rtol * scale:
        widest = float(angular_separation(ra[:, None], dec[:, None], ra[None, :], dec[None, :]).max())
        raise ValueError(
            f"parallax systematics {kernel_label(kernel)} is not positive semi-definite over the fitted stars: "
            f"its covariance matrix over {keep.size} of them (separations up to {widest:.3g} deg) has an eigenvalue "
            f"{low:.3g} mas^2 ({low / scale:.2g} V(0)); a covariance needs none below 0"
        )
